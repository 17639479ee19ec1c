-- A numeric cast that yields NULL instead of failing: a provider sending "n/a" as
-- an amount must not make its event poison.
CREATE FUNCTION crm_try_numeric(v text) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN v::numeric;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;

-- Companies and deals, projected like contacts (see 0001): canonical `fields` with
-- per-field versions; typed columns generated from them.
CREATE TABLE companies (
    workspace_id      text        NOT NULL,
    provider          text        NOT NULL,
    remote_id         text        NOT NULL,
    fields            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    field_versions    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    name              text GENERATED ALWAYS AS (fields ->> 'name') STORED,
    domain            text GENERATED ALWAYS AS (fields ->> 'domain') STORED,
    phone             text GENERATED ALWAYS AS (fields ->> 'phone') STORED,
    city              text GENERATED ALWAYS AS (fields ->> 'city') STORED,
    country           text GENERATED ALWAYS AS (fields ->> 'country') STORED,
    industry          text GENERATED ALWAYS AS (fields ->> 'industry') STORED,
    owner_id          text GENERATED ALWAYS AS (fields ->> 'owner_id') STORED,
    deleted           boolean GENERATED ALWAYS AS (coalesce(fields ->> '$deleted' = 'true', false)) STORED,
    merged_into       text GENERATED ALWAYS AS (fields ->> '$merged_into') STORED,
    source_updated_at timestamptz,
    projected_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, provider, remote_id)
);

CREATE INDEX companies_domain ON companies (workspace_id, lower(domain)) WHERE domain IS NOT NULL;

CREATE TABLE deals (
    workspace_id      text        NOT NULL,
    provider          text        NOT NULL,
    remote_id         text        NOT NULL,
    fields            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    field_versions    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    name              text GENERATED ALWAYS AS (fields ->> 'name') STORED,
    amount            numeric GENERATED ALWAYS AS (crm_try_numeric(fields ->> 'amount')) STORED,
    stage             text GENERATED ALWAYS AS (fields ->> 'stage') STORED,
    pipeline          text GENERATED ALWAYS AS (fields ->> 'pipeline') STORED,
    close_date        text GENERATED ALWAYS AS (fields ->> 'close_date') STORED,
    owner_id          text GENERATED ALWAYS AS (fields ->> 'owner_id') STORED,
    deleted           boolean GENERATED ALWAYS AS (coalesce(fields ->> '$deleted' = 'true', false)) STORED,
    merged_into       text GENERATED ALWAYS AS (fields ->> '$merged_into') STORED,
    source_updated_at timestamptz,
    projected_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, provider, remote_id)
);
