//! `GET /metrics`: every metric of the process, in the Prometheus text format.
//!
//! Why it exists: operators watch wallet creation, idempotency, HTTP, the database pool and the
//! projections from one scrape. Counters and histograms are recorded where things happen,
//! through the `metrics` facade (names in [`wallex_telemetry::catalogue`]); the gauges that
//! describe shared state (projection lag and status, rebuilds, the pool) are read at scrape time
//! — from the database, so every process reports the same lag — and set just before rendering.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::problem::Problem;
use super::AppState;
use wallex_control::status::ReportedStatus;
use wallex_telemetry::catalogue::{
    DB_POOL_CONNECTIONS, DB_POOL_MAX_CONNECTIONS, OUTBOX_LAG_EVENTS, OUTBOX_LAG_SECONDS,
    OUTBOX_OLDEST_UNPROCESSED_AGE_SECONDS, PROJECTOR_COMPILED_BYTES,
    PROJECTOR_COMPILED_BYTES_TOTAL, PROJECTOR_QUARANTINED, PROJECTOR_REBUILD_PROGRESS_RATIO,
    PROJECTOR_REBUILD_STATUS, PROJECTOR_STATUS,
};

/// `Content-Type` of the text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every status a projection can report (one `projector_status` series each, 0 or 1).
const STATUSES: [ReportedStatus; 6] = [
    ReportedStatus::Running,
    ReportedStatus::Failing,
    ReportedStatus::Failed,
    ReportedStatus::Paused,
    ReportedStatus::Rebuilding,
    ReportedStatus::Stalled,
];
/// Every status a rebuild can have.
const REBUILD_STATUSES: [&str; 2] = ["running", "failed"];

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, Problem> {
    let Some(handle) = state.telemetry.prometheus() else {
        return Err(Problem::not_found(
            "Metrics are disabled on this server (METRICS_ENABLED=false).",
        ));
    };
    set_gauges(&state).await?;
    Ok((
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        handle.render(),
    ))
}

/// Sets the scrape-time gauges.
async fn set_gauges(state: &AppState) -> Result<(), Problem> {
    let pool = &state.pool;
    let size = f64::from(pool.size());
    let idle = pool.num_idle() as f64;
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "idle").set(idle);
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "in_use").set((size - idle).max(0.0));
    metrics::gauge!(DB_POOL_MAX_CONNECTIONS).set(f64::from(pool.options().get_max_connections()));

    let statuses = state
        .projections
        .admin_list()
        .await
        .map_err(|error| Problem::internal(&error))?;
    metrics::gauge!(OUTBOX_OLDEST_UNPROCESSED_AGE_SECONDS).set(
        wallex_control::status::oldest_unprocessed_seconds(&statuses),
    );
    for item in &statuses {
        let name = item.name.clone();
        metrics::gauge!(OUTBOX_LAG_EVENTS, "projection" => name.clone())
            .set(item.lag_events as f64);
        metrics::gauge!(OUTBOX_LAG_SECONDS, "projection" => name.clone()).set(item.lag_seconds);
        for candidate in STATUSES {
            metrics::gauge!(
                PROJECTOR_STATUS,
                "projection" => name.clone(),
                "status" => candidate.as_str()
            )
            .set(f64::from(u8::from(item.status == candidate)));
        }
        // Without a rebuild both statuses are 0 and the progress 0, so that an alert on a
        // failed rebuild clears as soon as it is cancelled or cut over.
        // A drift check's shadow is no rebuild: its runs are in `recovery_runs_total`.
        let rebuild = item
            .rebuild
            .as_ref()
            .filter(|r| r.purpose == wallex_runtime::registry::PURPOSE_REBUILD);
        for candidate in REBUILD_STATUSES {
            let current = rebuild.is_some_and(|r| r.status == candidate);
            metrics::gauge!(
                PROJECTOR_REBUILD_STATUS,
                "projection" => name.clone(),
                "status" => candidate
            )
            .set(f64::from(u8::from(current)));
        }
        let ratio = rebuild.map_or(0.0, |r| {
            if r.events_total > 0 {
                (r.events_done as f64 / r.events_total as f64).clamp(0.0, 1.0)
            } else {
                0.0
            }
        });
        metrics::gauge!(PROJECTOR_REBUILD_PROGRESS_RATIO, "projection" => name).set(ratio);
    }
    for projector in state.projections.all() {
        metrics::gauge!(PROJECTOR_QUARANTINED, "projection" => projector.name().to_owned())
            .set(f64::from(u8::from(projector.in_quarantine())));
        if let Some(bytes) = projector.active().handler.compiled_bytes() {
            metrics::gauge!(PROJECTOR_COMPILED_BYTES, "projection" => projector.name().to_owned())
                .set(bytes as f64);
        }
    }
    metrics::gauge!(PROJECTOR_COMPILED_BYTES_TOTAL)
        .set(state.projections.compiled_memory_bytes() as f64);
    Ok(())
}
