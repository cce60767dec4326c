//! Liveness and readiness probes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::problem::Problem;
use super::AppState;
use wallex_core::db;

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: the database is reachable and every migration is applied.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, Problem> {
    match db::migrations_applied(&state.pool).await {
        Ok(true) => Ok(Json(json!({"status": "ready"}))),
        Ok(false) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            "Database migrations are not all applied.",
        )),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-ready",
                "Not ready",
                "The database is unreachable.",
            )
            .with_retry_after(1))
        }
    }
}
