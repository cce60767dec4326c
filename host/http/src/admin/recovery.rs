//! `/admin/recovery`: stall status, the read-model check, drift checks, repairs and the history
//! of checks.
//!
//! Why it exists: operators ask "is the read side still what the write side says?" and "is any
//! projection stuck?" over the same authenticated admin API as every other operation (same
//! token, same problem types, same audit trail). The routes are mounted by [`super`] and
//! share its authorisation.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;

use super::{actor, check_name, AdminState};
use crate::problem::Problem;
use crate::wire::{RecoveryRunBody, RecoveryStatusBody, RepairBody};
use wallex_control::recovery::{Recovery, RecoveryError};
use wallex_runtime::guest_text::quoted;

fn problem(error: RecoveryError) -> Problem {
    let error = match error {
        // Operations on a projection answer as the rest of `/admin` does.
        RecoveryError::Operation(e) => return super::problem(e),
        other => other,
    };
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

fn invalid_query(rejection: QueryRejection, keys: &str) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-query",
        "Invalid query",
        format!("{} (keys: {keys})", rejection.body_text()),
    )
}

/// `POST /admin/recovery/drift/{name}` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DriftQuery {
    /// Keep the shadow after the comparison (`true`), drop it (`false`); by default kept only
    /// when rows differ.
    keep: Option<bool>,
}

/// `POST /admin/recovery/drift/{name}`: starts a drift check; `202` with the run, `running`
/// (follow it at `Location`).
pub(crate) async fn drift(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    query: Result<Query<DriftQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<
    (
        StatusCode,
        [(header::HeaderName, String); 1],
        Json<RecoveryRunBody>,
    ),
    Problem,
> {
    check_name(&name)?;
    let query = query.map_err(|r| invalid_query(r, "keep=true|false"))?.0;
    let recovery = service(&state)?;
    let run = recovery
        .start_drift(&name, query.keep, &actor(&headers))
        .await
        .map_err(problem)?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/admin/recovery/runs/{}", run.id))],
        Json(run.into()),
    ))
}

/// `POST /admin/recovery/repair/{name}` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RepairQuery {
    /// Repair only this stream's rows.
    stream: Option<String>,
}

/// `POST /admin/recovery/repair/{name}[?stream=ID]`: one stream's rows (`200`, done), or the
/// whole projection (`202`: a shadow or a rebuild catches up and is cut over).
pub(crate) async fn repair(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    query: Result<Query<RepairQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<RepairBody>), Problem> {
    check_name(&name)?;
    let query = query.map_err(|r| invalid_query(r, "stream=ID"))?.0;
    let recovery = service(&state)?;
    let repair = recovery
        .repair(&name, query.stream.as_deref(), &actor(&headers))
        .await
        .map_err(problem)?;
    let status = match repair {
        wallex_control::recovery::Repair::Stream(_) => StatusCode::OK,
        wallex_control::recovery::Repair::Projection(_) => StatusCode::ACCEPTED,
    };
    Ok((status, Json(RepairBody::new(name, repair))))
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
