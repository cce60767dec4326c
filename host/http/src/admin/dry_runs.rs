//! `/admin/dry-runs`: a candidate component replayed over the live log into a shadow of its own
//! and compared with the live version, never put live (see [`wallex_control::dry_run`]).
//!
//! Why it exists: `wallex projections deploy FILE --dry-run` asks "what would this version write
//! against the real log?" over the same authenticated admin API as a deploy (same token, upload
//! checks, problem types and audit trail). A run outlives its request: `POST` answers
//! `202 Accepted` with `Location: /admin/dry-runs/{id}` (or, with `Prefer: wait=N`, the ended run
//! if it ends within N seconds); runs are stored, so any instance answers `GET`.
//!
//! Routes (mounted by [`super`], under its authorisation):
//! - `POST /admin/dry-runs[?name=&keep=&max_events=]`, body `application/wasm`;
//! - `GET /admin/dry-runs[?limit=]`, `GET /admin/dry-runs/{id}`;
//! - `DELETE /admin/dry-runs/{id}`: cancels a running one, or drops a finished one's kept shadow.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::deploys::requested_wait;
use super::{actor, check_name, problem, read_component, AdminState};
use crate::problem::Problem;
use crate::wire::{DryRunBody, DryRunList};
use wallex_control::dry_run::DryRunRequest;
use wallex_control::OperationError;

/// How often a request waiting for a run (`Prefer: wait=N`) looks at it.
pub const WAIT_POLL: Duration = Duration::from_millis(100);
/// Runs listed by `GET /admin/dry-runs` by default, and at most.
pub const LISTED: i64 = 20;
/// Most runs one `GET /admin/dry-runs` lists.
pub const MAX_LISTED: i64 = 200;
/// `Retry-After` of a `202`: when a client should look again.
const POLL_AFTER_SECS: u32 = 1;

/// `POST /admin/dry-runs` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartQuery {
    /// The name the component must declare.
    name: Option<String>,
    /// Keep the shadow tables afterwards.
    #[serde(default)]
    keep: bool,
    /// Read at most this many outbox rows.
    max_events: Option<u64>,
}

/// `GET /admin/dry-runs` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    limit: Option<i64>,
}

fn invalid_query(rejection: &QueryRejection, keys: &str) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-query",
        "Invalid query",
        format!("{} (keys: {keys})", rejection.body_text()),
    )
}

/// `POST /admin/dry-runs`: starts a dry run.
pub(crate) async fn start(
    State(state): State<AdminState>,
    query: Result<Query<StartQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let arrived = tokio::time::Instant::now();
    let query = query
        .map_err(|r| invalid_query(&r, "name, keep=true|false, max_events"))?
        .0;
    if let Some(name) = &query.name {
        check_name(name)?;
    }
    if query.max_events == Some(0) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query",
            "max_events must be at least 1",
        ));
    }
    let bytes = read_component(&state, &headers, body).await?;
    let projections = &state.projections;
    let run = projections
        .start_dry_run(
            bytes,
            DryRunRequest {
                name: query.name,
                keep: query.keep,
                max_events: query.max_events,
            },
            &actor(&headers),
        )
        .await
        .map_err(problem)?;
    let wait = requested_wait(&headers)
        .unwrap_or(Duration::ZERO)
        .min(state.max_deploy_wait());
    // The request's budget runs from its arrival: reading the upload counts against it.
    let deadline = arrived + wait;
    let mut run = run;
    while !run.status.is_finished() && tokio::time::Instant::now() + WAIT_POLL <= deadline {
        tokio::time::sleep(WAIT_POLL).await;
        run = projections
            .dry_run(run.id)
            .await
            .map_err(problem)?
            .ok_or_else(|| Problem::internal(&"a dry run vanished while its request waited"))?;
    }
    if run.status.is_finished() {
        return Ok(Json(DryRunBody::from(run)).into_response());
    }
    let id = run.id;
    let mut response = (StatusCode::ACCEPTED, Json(DryRunBody::from(run))).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/admin/dry-runs/{id}")) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(header::RETRY_AFTER, HeaderValue::from(POLL_AFTER_SECS));
    Ok(response)
}

/// `GET /admin/dry-runs/{id}`.
pub(crate) async fn get(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<DryRunBody>, Problem> {
    let id = run_id(&id)?;
    let run = state
        .projections
        .dry_run(id)
        .await
        .map_err(problem)?
        .ok_or_else(|| Problem::not_found(format!("no dry run {id}")))?;
    Ok(Json(run.into()))
}

/// `GET /admin/dry-runs`.
pub(crate) async fn list(
    State(state): State<AdminState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<DryRunList>, Problem> {
    let query = query.map_err(|r| invalid_query(&r, "limit"))?.0;
    let limit = query.limit.unwrap_or(LISTED).clamp(1, MAX_LISTED);
    let runs = state.projections.dry_runs(limit).await.map_err(problem)?;
    Ok(Json(DryRunList {
        dry_runs: runs.into_iter().map(Into::into).collect(),
    }))
}

/// `DELETE /admin/dry-runs/{id}`: cancels a running run, or drops a finished one's kept shadow.
pub(crate) async fn discard(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<DryRunBody>, Problem> {
    let id = run_id(&id)?;
    let run = state
        .projections
        .discard_dry_run(id, &actor(&headers))
        .await
        .map_err(|e| match e {
            OperationError::NotFound(_) => Problem::not_found(format!("no dry run {id}")),
            other => problem(other),
        })?;
    Ok(Json(run.into()))
}

fn run_id(text: &str) -> Result<i64, Problem> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| Problem::not_found(format!("no dry run {text:?}")))
}
