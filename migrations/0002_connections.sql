-- A workspace's connection to a provider. Tokens and keys live only in `secrets`,
-- encrypted with age (ENCRYPTION_KEY); `settings` holds what is not secret (api
-- domain, Odoo URL and database, ...).
CREATE TABLE crm_connections (
    workspace_id      text        NOT NULL,
    provider          text        NOT NULL,
    account_id        text,
    status            text        NOT NULL DEFAULT 'active'
                                  CHECK (status IN ('active', 'needs_reconnect')),
    secrets           bytea       NOT NULL,
    access_expires_at timestamptz,
    settings          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, provider)
);

CREATE INDEX crm_connections_account ON crm_connections (provider, account_id);

-- OAuth state nonces: a state is good once, before it expires.
CREATE TABLE crm_oauth_states (
    nonce        text        PRIMARY KEY,
    workspace_id text        NOT NULL,
    provider     text        NOT NULL,
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
