-- Per-field last-writer-wins merge, the same rule as crmsync_schema::fields::FieldSet:
-- a field takes the incoming value only when its version is newer than the stored
-- one. Versions compare byte-wise ("C" collation): "<ms, 16 digits>:<event id>".
CREATE FUNCTION crm_merge_fields(
    old_fields jsonb, old_versions jsonb, new_fields jsonb, new_versions jsonb,
    OUT fields jsonb, OUT versions jsonb)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    k text;
    nv text;
BEGIN
    fields := coalesce(old_fields, '{}'::jsonb);
    versions := coalesce(old_versions, '{}'::jsonb);
    FOR k, nv IN SELECT key, value FROM jsonb_each_text(new_versions) LOOP
        IF NOT (versions ? k) OR nv COLLATE "C" > (versions ->> k) COLLATE "C" THEN
            fields := fields || jsonb_build_object(k, coalesce(new_fields -> k, 'null'::jsonb));
            versions := versions || jsonb_build_object(k, nv);
        END IF;
    END LOOP;
END
$$;

-- Contacts projected from every provider. Typed columns are derived from `fields`
-- (canonical names), so they can never disagree with it; `$deleted` and
-- `$merged_into` are the tombstone and merge pseudo-fields.
CREATE TABLE contacts (
    workspace_id      text        NOT NULL,
    provider          text        NOT NULL,
    remote_id         text        NOT NULL,
    fields            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    field_versions    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    email             text GENERATED ALWAYS AS (fields ->> 'email') STORED,
    first_name        text GENERATED ALWAYS AS (fields ->> 'first_name') STORED,
    last_name         text GENERATED ALWAYS AS (fields ->> 'last_name') STORED,
    phone             text GENERATED ALWAYS AS (fields ->> 'phone') STORED,
    mobile_phone      text GENERATED ALWAYS AS (fields ->> 'mobile_phone') STORED,
    job_title         text GENERATED ALWAYS AS (fields ->> 'job_title') STORED,
    company_name      text GENERATED ALWAYS AS (fields ->> 'company_name') STORED,
    lifecycle_stage   text GENERATED ALWAYS AS (fields ->> 'lifecycle_stage') STORED,
    owner_id          text GENERATED ALWAYS AS (fields ->> 'owner_id') STORED,
    deleted           boolean GENERATED ALWAYS AS (coalesce(fields ->> '$deleted' = 'true', false)) STORED,
    merged_into       text GENERATED ALWAYS AS (fields ->> '$merged_into') STORED,
    source_updated_at timestamptz,
    projected_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, provider, remote_id)
);

CREATE INDEX contacts_email ON contacts (workspace_id, lower(email)) WHERE email IS NOT NULL;
CREATE INDEX contacts_phone ON contacts (workspace_id, phone) WHERE phone IS NOT NULL;

-- The last stream sequence each consumer has committed, written in the same
-- transaction as the rows it produced.
CREATE TABLE projection_checkpoints (
    consumer       text        PRIMARY KEY,
    stream         text        NOT NULL,
    stream_seq     bigint      NOT NULL,
    events_applied bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
