-- Call outcomes pushed to CRMs: one row per (workspace, call, provider), the state
-- `GET /crm/calls/{call_id}` shows. A repeat push never moves a row back from `sent`.
CREATE TABLE crm_call_pushes (
    workspace_id text        NOT NULL,
    call_id      text        NOT NULL,
    provider     text        NOT NULL,
    state        text        NOT NULL
                             CHECK (state IN ('queued', 'sent', 'failed', 'dead_lettered')),
    crm_id       text,
    reason       text,
    attempts     integer     NOT NULL DEFAULT 0,
    outcome      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, call_id, provider)
);
