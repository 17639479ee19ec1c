-- CrmEntityLink: an app entity (a call) and the CRM record that stands for it, per
-- provider, projected from `crm.result` events.
CREATE TABLE crm_entity_links (
    workspace_id text        NOT NULL,
    entity_type  text        NOT NULL,
    app_id       text        NOT NULL,
    provider     text        NOT NULL,
    crm_id       text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, entity_type, app_id, provider)
);

CREATE INDEX crm_entity_links_crm ON crm_entity_links (provider, crm_id);

-- Each push of a call counts, so a push after a failure is a new command (JetStream
-- would drop a copy of the first one as a duplicate).
ALTER TABLE crm_call_pushes ADD COLUMN pushes integer NOT NULL DEFAULT 1;

-- The worker pushing a call holds it until then (renewed while it works), so two
-- workers never push one call at once.
ALTER TABLE crm_call_pushes ADD COLUMN lease_until timestamptz;
