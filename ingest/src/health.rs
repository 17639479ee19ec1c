//! `/healthz` (the process is alive), `/readyz` (NATS and Postgres reachable,
//! migrations applied) and `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::openapi::{public, Documented};
use crate::AppState;

pub fn routes() -> Documented<Arc<AppState>> {
    Documented::default()
        .get("/healthz", public("The process is alive"), healthz)
        .get(
            "/readyz",
            public("NATS connected, Postgres reachable, migrations applied; 503 with the failing check"),
            readyz,
        )
        .get("/metrics", public("Prometheus series (OpenMetrics text)"), metrics)
}

pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let nats = match state.nats.connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        other => Err(format!("NATS is {other:?}")),
    };
    let postgres = sqlx::query_scalar::<_, Option<i64>>(
        "SELECT max(version) FROM _sqlx_migrations WHERE success",
    )
    .fetch_one(&state.pool)
    .await;
    let (postgres, migrations) = match postgres {
        Ok(Some(v)) if v >= state.latest_migration => (Ok(()), Ok(())),
        Ok(v) => (
            Ok(()),
            Err(format!(
                "migrations applied up to {}, this build needs {}",
                v.unwrap_or(0),
                state.latest_migration
            )),
        ),
        Err(e) => {
            // The detail stays in the log: this route answers anyone.
            tracing::warn!(error = %e, "readiness: Postgres check failed");
            (Err("unreachable".to_owned()), Err("unknown".to_owned()))
        }
    };
    let show = |r: &Result<(), String>| match r {
        Ok(()) => json!("ok"),
        Err(e) => json!(e),
    };
    let ready = nats.is_ok() && postgres.is_ok() && migrations.is_ok();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "checks": {"nats": show(&nats), "postgres": show(&postgres), "migrations": show(&migrations)},
    });
    (status, Json(body))
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
