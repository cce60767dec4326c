//! `/admin/recovery`: stall status, the read-model check and the history of checks.
//!
//! Why it exists: operators ask "is the read side still what the write side says?" and "is any
//! projection stuck?" over the same authenticated admin API as every other operation (same
//! token, same problem types, same audit trail). The routes are mounted by [`crate::admin`] and
//! share its authorisation.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use super::admin::{actor, AdminState};
use super::problem::Problem;
use super::wire::{RecoveryRunBody, RecoveryStatusBody};
use wallex_runtime::recovery::{Recovery, RecoveryError};
use wallex_runtime::text::quoted;

fn problem(error: RecoveryError) -> Problem {
    match &error {
        RecoveryError::NoReadModel(_) => Problem::new(
            StatusCode::CONFLICT,
            "no-read-model",
            "No read model to check",
            error.to_string(),
        ),
        RecoveryError::Busy => Problem::new(
            StatusCode::CONFLICT,
            "check-running",
            "A check is already running",
            error.to_string(),
        )
        .with_retry_after(5),
        RecoveryError::Database(e) => Problem::from_sqlx(e),
        _ => Problem::internal(&error),
    }
}

fn service(state: &AdminState) -> Result<&Recovery, Problem> {
    state
        .recovery
        .as_ref()
        .ok_or_else(|| Problem::not_found("The recovery service is not running on this server."))
}

/// `GET /admin/recovery`: stalls, the oldest unprocessed event, the latest checks.
pub(crate) async fn status(
    State(state): State<AdminState>,
) -> Result<Json<RecoveryStatusBody>, Problem> {
    let recovery = service(&state)?;
    Ok(Json(recovery.status().await.map_err(problem)?.into()))
}

/// `POST /admin/recovery/read-model-check`: runs the check now (the answer waits for it) and
/// returns the stored run.
pub(crate) async fn check_read_model(
    State(state): State<AdminState>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<RecoveryRunBody>), Problem> {
    let recovery = service(&state)?;
    let run = recovery
        .check_read_model(&actor(&headers))
        .await
        .map_err(problem)?;
    Ok((StatusCode::CREATED, Json(run.into())))
}

/// `GET /admin/recovery/runs/{id}`: one stored run.
pub(crate) async fn run(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<RecoveryRunBody>, Problem> {
    let recovery = service(&state)?;
    let id: i64 = id.parse().map_err(|_| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-run-id",
            "Invalid run id",
            format!("{} is not a run number.", quoted(&id)),
        )
    })?;
    match recovery.run_by_id(id).await.map_err(problem)? {
        Some(run) => Ok(Json(run.into())),
        None => Err(Problem::not_found(format!("No recovery run {id}."))),
    }
}
