-- Each connection's request allowance, shared by every worker and API process
-- (`crmsync_engine::budget`): the theoretical arrival time of its next request, as
-- in GCRA. Unlogged: after a crash the budgets simply start full.
CREATE UNLOGGED TABLE crm_rate_budgets (
    key text        PRIMARY KEY,
    tat timestamptz NOT NULL
);
