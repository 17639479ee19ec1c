-- Field mappings (`CrmFieldMapping`): a workspace's rules for how one provider's
-- fields of one object type land, on top of the adapter's defaults. `workspace_id`
-- is the rows' (the CRM account).
CREATE TABLE crm_field_mappings (
    workspace_id text        NOT NULL,
    provider     text        NOT NULL,
    object       text        NOT NULL,
    rules        jsonb       NOT NULL,
    revision     bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, provider, object)
);

-- The mappings' revision: every write bumps it in its own transaction, so writes
-- commit in revision order (the row lock queues them) and a projector that reads it
-- once per batch sees every change.
CREATE TABLE crm_field_mappings_revision (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    revision bigint  NOT NULL
);
INSERT INTO crm_field_mappings_revision (revision) VALUES (0);
