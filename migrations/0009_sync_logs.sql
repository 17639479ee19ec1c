-- The sync log (`CrmSyncLog`): one row per poll, sweep or backfill of a connection's
-- object. `workspace_id` is the connection's workspace. Pruned after 14 days.
CREATE TABLE crm_sync_logs (
    id           bigserial   PRIMARY KEY,
    workspace_id text        NOT NULL,
    provider     text        NOT NULL,
    object       text,
    operation    text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('ok', 'error')),
    records      bigint      NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    message      text,
    detail       jsonb       NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX crm_sync_logs_workspace ON crm_sync_logs (workspace_id, id);
CREATE INDEX crm_sync_logs_finished ON crm_sync_logs (finished_at);
