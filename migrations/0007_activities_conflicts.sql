-- Activities (calls logged in a CRM), projected like the other records (see 0001).
-- A call outcome the app pushed carries `app_call_id` and the fields crmsync wrote
-- (`app_fields`, as the CRM's mapping reads them): the app is the authority for
-- those, so a CRM edit to one of them is a conflict, not applied.
CREATE TABLE activities (
    workspace_id      text        NOT NULL,
    provider          text        NOT NULL,
    remote_id         text        NOT NULL,
    fields            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    field_versions    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    subject           text GENERATED ALWAYS AS (fields ->> 'subject') STORED,
    body              text GENERATED ALWAYS AS (fields ->> 'body') STORED,
    direction         text GENERATED ALWAYS AS (fields ->> 'direction') STORED,
    disposition       text GENERATED ALWAYS AS (fields ->> 'disposition') STORED,
    started_at        text GENERATED ALWAYS AS (fields ->> 'started_at') STORED,
    duration_secs     numeric GENERATED ALWAYS AS (crm_try_numeric(fields ->> 'duration_secs')) STORED,
    contact_id        text GENERATED ALWAYS AS (fields ->> 'contact_id') STORED,
    owner_id          text GENERATED ALWAYS AS (fields ->> 'owner_id') STORED,
    deleted           boolean GENERATED ALWAYS AS (coalesce(fields ->> '$deleted' = 'true', false)) STORED,
    merged_into       text GENERATED ALWAYS AS (fields ->> '$merged_into') STORED,
    app_workspace     text,
    app_call_id       text,
    app_fields        jsonb,
    app_version       text,
    source_updated_at timestamptz,
    projected_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, provider, remote_id)
);

CREATE INDEX activities_app_call ON activities (app_workspace, app_call_id)
    WHERE app_call_id IS NOT NULL;

-- Values a conflict rule did not apply, beside the value kept; one row per record,
-- field and losing value (the first version that carried it), so a redelivered,
-- re-read or replayed change adds nothing.
CREATE TABLE crm_conflicts (
    id            bigserial   PRIMARY KEY,
    workspace_id  text        NOT NULL,
    provider      text        NOT NULL,
    object        text        NOT NULL,
    remote_id     text        NOT NULL,
    app_workspace text,
    field         text        NOT NULL,
    kept_value    jsonb,
    kept_source   text        NOT NULL,
    kept_version  text,
    lost_value    jsonb,
    lost_source   text        NOT NULL,
    lost_version  text        NOT NULL,
    lost_digest   text GENERATED ALWAYS AS (md5(coalesce(lost_value::text, 'null'))) STORED,
    detected_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, provider, object, remote_id, field, lost_digest)
);

CREATE INDEX crm_conflicts_workspace ON crm_conflicts (workspace_id, id);
CREATE INDEX crm_conflicts_app_workspace ON crm_conflicts (app_workspace, id)
    WHERE app_workspace IS NOT NULL;

-- Who holds a push's lease, so that only its holder renews or releases it.
ALTER TABLE crm_call_pushes ADD COLUMN lease_owner uuid;
