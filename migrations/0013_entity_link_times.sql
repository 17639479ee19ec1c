-- When the CRM's answer that made a link came (its crm.result event's time): an older
-- result applied late (a redelivery) does not undo a newer link of the same app id.
ALTER TABLE crm_entity_links ADD COLUMN linked_at timestamptz;
