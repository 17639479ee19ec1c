-- When a push was last tried (an attempt's start, then its end while it stays queued).
-- Unlike `attempts`, a new push of the call or a retry from the DLQ does not reset it:
-- whatever the earlier attempt may have created in the CRM, the next one waits out the
-- CRM's search lag from then before looking for it. Sent pushes are never tried again,
-- so only the others are stamped: tried, pushed again, or settled.
ALTER TABLE crm_call_pushes ADD COLUMN tried_at timestamptz;
UPDATE crm_call_pushes SET tried_at = updated_at
 WHERE state <> 'sent' AND (attempts > 0 OR pushes > 1 OR state <> 'queued');
