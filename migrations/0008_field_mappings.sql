-- Field mappings (`CrmFieldMapping`): a workspace's rules for how one provider's
-- fields of one object type land, on top of the adapter's defaults. `workspace_id`
-- is the rows' (the CRM account). `revision` grows with every write, so a projector
-- sees a change by reading max(revision) and count(*) once per batch.
CREATE SEQUENCE crm_field_mappings_revision;

CREATE TABLE crm_field_mappings (
    workspace_id text        NOT NULL,
    provider     text        NOT NULL,
    object       text        NOT NULL,
    rules        jsonb       NOT NULL,
    revision     bigint      NOT NULL DEFAULT nextval('crm_field_mappings_revision'),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, provider, object)
);
