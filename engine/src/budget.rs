//! Rate budgets shared by every process (`crm_rate_budgets`): a connection's allowance
//! (`CRM_SYNC_RPS`, bursts of `CRM_SYNC_BURST`) holds for all the workers and API
//! processes that call its CRM together, not for each of them.
//!
//! Each budget is a GCRA cell: the row keeps the theoretical arrival time (`tat`) of the
//! connection's next request. A request moves it one interval (`1 / rate`) on from
//! itself or from now, whichever is later, and waits until `burst` intervals before the
//! new value; a pause moves it past the pause. One row update a request, timed by
//! Postgres's clock alone, so the processes' clocks need not agree.

use std::time::Duration;

use sqlx::PgPool;

use crmsync_adapters::{BudgetFuture, SharedBudget};

/// The budgets in the engine's database.
#[derive(Debug, Clone)]
pub struct PgBudget {
    pool: PgPool,
}

impl PgBudget {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn reserve_slot(&self, key: &str, rate: f64, burst: f64) -> Result<Duration, String> {
        let interval = 1.0 / rate.max(0.001);
        // Seconds from now to the new arrival time.
        let ahead: f64 = sqlx::query_scalar(
            "INSERT INTO crm_rate_budgets AS b (key, tat)
             VALUES ($1, now() + make_interval(secs => $2))
             ON CONFLICT (key) DO UPDATE
                 SET tat = greatest(b.tat, now()) + make_interval(secs => $2)
             RETURNING extract(epoch FROM tat - now())::float8",
        )
        .bind(key)
        .bind(interval)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| e.to_string())?;
        Ok(Duration::from_secs_f64(
            (ahead - burst.max(1.0) * interval).max(0.0),
        ))
    }

    async fn pause_all(
        &self,
        key: &str,
        rate: f64,
        burst: f64,
        for_how_long: Duration,
    ) -> Result<(), String> {
        let interval = 1.0 / rate.max(0.001);
        // The next request's slot then comes `for_how_long` from now.
        let ahead = for_how_long.as_secs_f64() + (burst.max(1.0) - 1.0) * interval;
        sqlx::query(
            "INSERT INTO crm_rate_budgets AS b (key, tat)
             VALUES ($1, now() + make_interval(secs => $2))
             ON CONFLICT (key) DO UPDATE SET tat = greatest(b.tat, EXCLUDED.tat)",
        )
        .bind(key)
        .bind(ahead)
        .execute(&self.pool)
        .await
        .map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl SharedBudget for PgBudget {
    fn reserve<'a>(&'a self, key: &'a str, rate: f64, burst: f64) -> BudgetFuture<'a, Duration> {
        Box::pin(self.reserve_slot(key, rate, burst))
    }

    fn pause<'a>(
        &'a self,
        key: &'a str,
        rate: f64,
        burst: f64,
        for_how_long: Duration,
    ) -> BudgetFuture<'a, ()> {
        Box::pin(self.pause_all(key, rate, burst, for_how_long))
    }
}

/// The budget key of a CRM account (HubSpot portal, Zoho org, Odoo database) at
/// `provider`: the providers count requests by account, so every workspace connected
/// to it shares it. `what` names a budget of its own beside it, such as HubSpot's
/// searches. (Before 2026-11-29 the key named the workspace.)
pub fn budget_key(provider: crmsync_schema::Provider, account: &str, what: &str) -> String {
    format!("{provider}/{what}/{account}")
}
