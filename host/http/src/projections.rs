//! HTTP endpoints of the projections: status, and reads from projection tables with
//! read-after-write.
//!
//! Why it exists: a client that just wrote (the POST returned the event's global position in
//! `X-Global-Position`) must be able to read its own write from an eventually consistent
//! projection. `GET /projections/{projection}/{table}/{key}?minPosition=P` waits (bounded) until
//! the projection's checkpoint has passed the outbox row at position P, then reads the row.
//!
//! Shape:
//! - `GET /projections` → `{"projections": [status...]}`; `GET /projections/{projection}` → status.
//! - `GET /projections/{projection}/{table}/{key}` (tables with a one-column primary key) →
//!   `200` with the row as a JSON object and `X-Projection-Position` (the checkpoint position it
//!   was read at); `404` problem if no such row/table/projection; with `minPosition=P` (or header
//!   `X-Min-Position: P`) and optional `timeoutMs` (default `READ_AFTER_WRITE_TIMEOUT_MS`, capped
//!   at 30 s): `503` problem `projection-behind` with `Retry-After` if the checkpoint does not reach
//!   P in time. Errors are RFC 9457 `application/problem+json`.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::problem::Problem;
use wallex_control::Projections;
use wallex_core::outbox;
use wallex_runtime::checkpoint::{self, Checkpoint};
use wallex_runtime::guest_text::quoted;
use wallex_runtime::read::{self, ReadError};
use wallex_runtime::worker::Projector;

/// How often a waiting read re-reads the checkpoint (another process may hold the lease).
pub const READ_AFTER_WRITE_POLL: Duration = Duration::from_millis(20);
/// Request header alternative to the `minPosition` query parameter.
pub const MIN_POSITION_HEADER: &str = "x-min-position";
/// Response header: the checkpoint position the row was read at.
pub const PROJECTION_POSITION_HEADER: &str = "x-projection-position";

/// The projection routes, mergeable into any router.
pub fn router<S: Clone + Send + Sync + 'static>(projections: Projections) -> Router<S> {
    Router::new()
        .route("/projections", get(list))
        .route("/projections/{projection}", get(status))
        .route("/projections/{projection}/{table}/{key}", get(read_row))
        .with_state(projections)
}

/// One projection as `GET /projections` shows it (public: no policy, no deploy details).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicStatus {
    /// The projection's name.
    pub name: String,
    /// Its schema version.
    pub schema_version: u32,
    /// PostgreSQL schema of its live tables.
    pub namespace: String,
    /// Schema of the views readers use.
    pub stable_namespace: String,
    /// SHA-256 of the component this process runs.
    pub sha256: String,
    /// Where its bytes came from.
    pub origin: String,
    /// Event types it receives.
    pub subscribes_to: Vec<String>,
    /// Its tables.
    pub tables: Vec<String>,
    /// Where its checkpoint stands.
    pub checkpoint: Option<PublicCheckpoint>,
    /// `running`, `failing` or `failed`, as its worker reported.
    pub status: Option<String>,
    /// Why its last batch failed (clipped).
    pub last_error: Option<String>,
    /// Failed batches since the last success.
    pub error_count: Option<i32>,
    /// When its checkpoint last changed.
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Whether no committed outbox row waits after its checkpoint (`false` before its first
    /// batch while the outbox has rows). Positions alone cannot say it: with KurrentDB as the
    /// event store they are KurrentDB's, not the order in which PostgreSQL commits.
    #[serde(default)]
    pub caught_up: bool,
    /// Whether this process's worker holds its lease.
    pub lease_held_here: bool,
    /// Outbox rows this process has committed for it.
    pub events_applied_here: u64,
    /// Events per batch.
    pub batch_size: u32,
}

/// A checkpoint's place in the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicCheckpoint {
    /// Transaction id of the last row applied, as text.
    pub xact_id: String,
    /// Global position of the last row applied.
    pub position: i64,
}

/// `GET /projections`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublicList {
    /// Every projection this process has loaded.
    pub projections: Vec<PublicStatus>,
}

/// Whether a reader at `checkpoint` has read every committed outbox row.
async fn caught_up(
    projections: &Projections,
    checkpoint: Option<&Checkpoint>,
) -> Result<bool, Problem> {
    let cursor = checkpoint.map_or(outbox::OutboxCursor::START, |c| c.cursor);
    Ok(!outbox::has_rows_after(projections.pool(), cursor)
        .await
        .map_err(|e| Problem::internal(&e))?)
}

fn public_status(
    projector: &Projector,
    checkpoint: Option<&Checkpoint>,
    caught_up: bool,
) -> PublicStatus {
    let active = projector.active();
    let schema = &active.schema;
    PublicStatus {
        name: schema.name.clone(),
        schema_version: schema.schema_version,
        namespace: schema.namespace.clone(),
        stable_namespace: schema.stable_namespace(),
        sha256: active.sha256.clone(),
        origin: active.source.clone(),
        subscribes_to: schema.subscribes_to.clone(),
        tables: schema.tables.iter().map(|t| t.name.clone()).collect(),
        checkpoint: checkpoint.map(|c| PublicCheckpoint {
            xact_id: c.cursor.xact_id.to_string(),
            position: c.cursor.position,
        }),
        status: checkpoint.map(|c| c.status.as_str().to_owned()),
        last_error: checkpoint.and_then(|c| c.last_error.clone()),
        error_count: checkpoint.map(|c| c.error_count),
        updated_at: checkpoint.map(|c| c.updated_at),
        caught_up,
        lease_held_here: projector.lease_held(),
        events_applied_here: projector.events_applied(),
        batch_size: projector.config.batch_size,
    }
}

async fn list(State(projections): State<Projections>) -> Result<Json<PublicList>, Problem> {
    let checkpoints = checkpoint::read_all(projections.pool())
        .await
        .map_err(|e| Problem::internal(&e))?;
    let mut items = Vec::new();
    for projector in projections.all() {
        let checkpoint = checkpoints
            .iter()
            .find(|c| c.projection == projector.name());
        let caught_up = caught_up(&projections, checkpoint).await?;
        items.push(public_status(&projector, checkpoint, caught_up));
    }
    Ok(Json(PublicList { projections: items }))
}

async fn status(
    State(projections): State<Projections>,
    Path(name): Path<String>,
) -> Result<Json<PublicStatus>, Problem> {
    let projector = projections
        .get(&name)
        .ok_or_else(|| Problem::not_found(format!("no projection named {name}")))?;
    let checkpoint = checkpoint::read(projections.pool(), &name)
        .await
        .map_err(|e| Problem::internal(&e))?;
    let caught_up = caught_up(&projections, checkpoint.as_ref()).await?;
    Ok(Json(public_status(
        &projector,
        checkpoint.as_ref(),
        caught_up,
    )))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadQuery {
    min_position: Option<i64>,
    timeout_ms: Option<u64>,
}

async fn read_row(
    State(projections): State<Projections>,
    Path((name, table_name, key)): Path<(String, String, String)>,
    Query(query): Query<ReadQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let projector = projections
        .get(&name)
        .ok_or_else(|| Problem::not_found(format!("no projection named {name}")))?;
    let active = projector.active();
    let schema = &active.schema;
    let table = schema.table(&table_name).ok_or_else(|| {
        Problem::not_found(format!("projection {name} has no table {table_name}"))
    })?;
    let bad_request = |detail: String| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid request",
            detail,
        )
    };
    let read_error = |error: ReadError| match error {
        ReadError::Database(e) => Problem::internal(&e),
        refused => bad_request(refused.to_string()),
    };
    let key_column = read::key_column(table).map_err(read_error)?;
    let min_position = match query.min_position {
        Some(p) => Some(p),
        None => headers
            .get(HeaderName::from_static(MIN_POSITION_HEADER))
            .map(|v| {
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .ok_or_else(|| bad_request("X-Min-Position must be an integer".to_owned()))
            })
            .transpose()?,
    };
    let config = projections.config();
    let timeout = query
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(config.read_after_write_timeout)
        .min(Duration::from_millis(
            wallex_runtime::config::MAX_READ_AFTER_WRITE_TIMEOUT_MS,
        ));
    let position = match min_position {
        Some(p) if p < 0 => return Err(bad_request("minPosition must be >= 0".to_owned())),
        Some(p) => wait_for(&projections, &projector, p, timeout).await?,
        None => checkpoint::read(projections.pool(), &name)
            .await
            .map_err(|e| Problem::internal(&e))?
            .map(|c| c.cursor.position)
            .unwrap_or(0),
    };
    let row = read::row_by_key(projections.pool(), schema, table, key_column, &key)
        .await
        .map_err(read_error)?
        .ok_or_else(|| {
            Problem::not_found(format!("no row {} in {name}/{table_name}", quoted(&key)))
        })?;
    let mut response = Json(row).into_response();
    response.headers_mut().insert(
        HeaderName::from_static(PROJECTION_POSITION_HEADER),
        HeaderValue::from(position),
    );
    Ok(response)
}

/// Waits until `projector`'s checkpoint is at or past the outbox row at `min_position`. Returns
/// the checkpoint position reached.
async fn wait_for(
    projections: &Projections,
    projector: &Projector,
    min_position: i64,
    timeout: Duration,
) -> Result<i64, Problem> {
    let deadline = Instant::now() + timeout;
    let mut progress = projector.subscribe_progress();
    let pool = projections.pool();
    let mut target = None;
    loop {
        if target.is_none() {
            target = outbox::cursor_of(pool, min_position)
                .await
                .map_err(|e| Problem::internal(&e))?;
        }
        if let Some(target) = target {
            let checkpoint = checkpoint::read(pool, projector.name())
                .await
                .map_err(|e| Problem::internal(&e))?;
            if let Some(checkpoint) = checkpoint.filter(|c| c.cursor >= target) {
                if !projector.config.synchronous_commit {
                    // The batch may have committed asynchronously: answer only once a
                    // PostgreSQL crash can no longer take it back.
                    wallex_core::db::flush_wal(pool)
                        .await
                        .map_err(|e| Problem::from_sqlx(&e))?;
                }
                return Ok(checkpoint.cursor.position);
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "projection-behind",
                "Projection has not caught up",
                format!(
                    "projection {} did not reach position {min_position} within {} ms",
                    projector.name(),
                    timeout.as_millis()
                ),
            )
            .with_retry_after(1));
        }
        let nap = READ_AFTER_WRITE_POLL.min(deadline - now);
        tokio::select! {
            _ = progress.changed() => {}
            _ = tokio::time::sleep(nap) => {}
        }
    }
}
