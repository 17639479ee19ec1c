-- The CRM account a link's record lives in: a workspace reconnected to another
-- account (a sandbox, then production) must not resolve the app's ids to the old
-- account's records. Rows from before this are call links, which nothing resolves.
ALTER TABLE crm_entity_links ADD COLUMN account_id text;
