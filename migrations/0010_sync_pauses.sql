-- Stopped syncs (`POST /crm/sync/stop`): crmsync does not call the CRM for these
-- (polls, hydration, backfill, pushes) until `POST /crm/sync/start`. `provider` and
-- `object` are '*' for all. Webhooks are still stored and projected.
CREATE TABLE crm_sync_pauses (
    workspace_id text        NOT NULL,
    provider     text        NOT NULL,
    object       text        NOT NULL,
    paused_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, provider, object)
);
