-- Links between records (contact ↔ company, deal ↔ contact, ...), projected from
-- association changes with the same per-field versions as records: `$removed` is the
-- link's state, so any order of adds and removes ends the same. `remote_id` is
-- `<from type>|<from id>|<to type>|<to id>`, each part escaped as a subject token.
CREATE TABLE associations (
    workspace_id      text        NOT NULL,
    provider          text        NOT NULL,
    remote_id         text        NOT NULL,
    fields            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    field_versions    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    from_type         text GENERATED ALWAYS AS (split_part(remote_id, '|', 1)) STORED,
    from_id           text GENERATED ALWAYS AS (split_part(remote_id, '|', 2)) STORED,
    to_type           text GENERATED ALWAYS AS (split_part(remote_id, '|', 3)) STORED,
    to_id             text GENERATED ALWAYS AS (split_part(remote_id, '|', 4)) STORED,
    removed           boolean GENERATED ALWAYS AS (coalesce(fields ->> '$removed' = 'true', false)) STORED,
    deleted           boolean GENERATED ALWAYS AS (coalesce(fields ->> '$deleted' = 'true', false)) STORED,
    merged_into       text GENERATED ALWAYS AS (fields ->> '$merged_into') STORED,
    source_updated_at timestamptz,
    projected_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, provider, remote_id)
);

CREATE INDEX associations_from ON associations (workspace_id, provider, from_type, from_id) WHERE NOT removed;
CREATE INDEX associations_to ON associations (workspace_id, provider, to_type, to_id) WHERE NOT removed;
