//! Projection checkpoints: where each projection stands in the outbox, and its reported health.
//!
//! Why it exists: a projection's tables and its checkpoint change in the same transaction, so
//! after any crash the checkpoint says exactly which events the tables include. The cursor is an
//! [`OutboxCursor`] (transaction id, global position), the order of the gap-safe reader.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use wallex_sandbox::guest_text::{clip, MAX_ERROR_BYTES};

use wallex_core::outbox::OutboxCursor;

/// What the worker holding a projection's lease last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Applying batches normally.
    Running,
    /// The last batch failed; it is retried after the error backoff.
    Failing,
    /// The retries are exhausted; the worker waits for a fixed deploy or a reload.
    Failed,
}

impl Status {
    /// The status as stored and reported (`running`, `failing`, `failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Failing => "failing",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "failing" => Self::Failing,
            "failed" => Self::Failed,
            _ => Self::Running,
        }
    }
}

/// A checkpoint row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The checkpoint's key: the projection's name, or [`rebuild_key`] of it for its rebuild.
    pub projection: String,
    /// The schema version of the declaration whose tables [`Checkpoint::namespace`] holds.
    pub schema_version: i64,
    /// The PostgreSQL schema whose tables this checkpoint describes.
    pub namespace: String,
    /// The last outbox row included in the tables; the next batch reads after it.
    pub cursor: OutboxCursor,
    /// Outbox rows applied under this checkpoint since it last started from the beginning.
    pub events_applied: i64,
    /// What the worker holding the lease last reported.
    pub status: Status,
    /// The last failure, clipped to [`MAX_ERROR_BYTES`]; `None` once a batch succeeds.
    pub last_error: Option<String>,
    /// Failed batches since the last successful one (or the last reload or resume).
    pub error_count: i32,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

/// Why a checkpoint could not be read or moved.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The database refused or could not be reached.
    #[error("checkpoint database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The projection (or rebuild) has no checkpoint row.
    #[error("checkpoint of {0} is missing")]
    Missing(String),
    /// The stored transaction id does not fit in a `u64`.
    #[error("checkpoint transaction id {0} is out of range")]
    XactIdOutOfRange(String),
    /// The checkpoint is no longer where the batch read it, or describes another namespace: a
    /// reset, a cut-over or another worker moved it. The batch rolls back and is retried.
    #[error(
        "checkpoint of {0} moved during the batch (reset or another worker); the batch is retried"
    )]
    Moved(String),
}

#[derive(sqlx::FromRow)]
struct Row {
    projection: String,
    schema_version: i64,
    namespace: String,
    events_applied: i64,
    last_xact_id: String,
    last_position: i64,
    status: String,
    last_error: Option<String>,
    error_count: i32,
    updated_at: DateTime<Utc>,
}

impl Row {
    fn into_checkpoint(self) -> Result<Checkpoint, CheckpointError> {
        Ok(Checkpoint {
            cursor: OutboxCursor {
                xact_id: self
                    .last_xact_id
                    .parse()
                    .map_err(|_| CheckpointError::XactIdOutOfRange(self.last_xact_id.clone()))?,
                position: self.last_position,
            },
            projection: self.projection,
            schema_version: self.schema_version,
            namespace: self.namespace,
            events_applied: self.events_applied,
            status: Status::parse(&self.status),
            last_error: self.last_error,
            error_count: self.error_count,
            updated_at: self.updated_at,
        })
    }
}

const SELECT: &str = "SELECT projection, schema_version, namespace, events_applied,
        last_xact_id::text AS last_xact_id, last_position, status, last_error, error_count, updated_at
    FROM projector_checkpoints";

/// Suffix of the checkpoint key of a projection's blue/green rebuild (`#` is not allowed in
/// projection names, so the keys cannot collide).
pub const REBUILD_SUFFIX: &str = "#rebuild";

/// The checkpoint key of `projection`'s rebuild.
pub fn rebuild_key(projection: &str) -> String {
    format!("{projection}{REBUILD_SUFFIX}")
}

/// Suffix of the checkpoint key of a drift check's shadow once it stopped at its cut: renamed
/// from [`rebuild_key`], so that no batch can move it any more (a batch of the rebuild key then
/// finds no checkpoint).
pub const SHADOW_SUFFIX: &str = "#shadow";

/// The checkpoint key of `projection`'s held drift shadow.
pub fn shadow_key(projection: &str) -> String {
    format!("{projection}{SHADOW_SUFFIX}")
}

/// Suffix of the checkpoint key of a projection's dry run (see `wallex-control`'s `dry_run`): one
/// at a time per projection.
pub const DRY_RUN_SUFFIX: &str = "#dry-run";

/// The checkpoint key of `projection`'s dry run.
pub fn dry_run_key(projection: &str) -> String {
    format!("{projection}{DRY_RUN_SUFFIX}")
}

/// Deletes `key`'s checkpoint only if it still describes `namespace` (a dry run's, when another
/// run of the same projection may have replaced it since).
pub async fn delete_for_namespace(
    conn: &mut PgConnection,
    key: &str,
    namespace: &str,
) -> Result<(), CheckpointError> {
    sqlx::query("DELETE FROM projector_checkpoints WHERE projection = $1 AND namespace = $2")
        .bind(key)
        .bind(namespace)
        .execute(conn)
        .await?;
    Ok(())
}

/// Renames a checkpoint (a drift shadow held at its cut, or taken up again by a repair).
pub async fn rename(conn: &mut PgConnection, from: &str, to: &str) -> Result<(), CheckpointError> {
    sqlx::query("DELETE FROM projector_checkpoints WHERE projection = $1")
        .bind(to)
        .execute(&mut *conn)
        .await?;
    let renamed = sqlx::query(
        "UPDATE projector_checkpoints SET projection = $2, updated_at = now() WHERE projection = $1",
    )
    .bind(from)
    .bind(to)
    .execute(conn)
    .await?
    .rows_affected();
    if renamed == 1 {
        Ok(())
    } else {
        Err(CheckpointError::Missing(from.to_owned()))
    }
}

/// Creates the checkpoint at the start of the outbox if missing. A checkpoint describing another
/// namespace (new tables) restarts from the beginning; one for the same namespace is kept.
pub async fn ensure(
    conn: &mut PgConnection,
    key: &str,
    schema_version: u32,
    namespace: &str,
) -> Result<(), CheckpointError> {
    sqlx::query(
        "INSERT INTO projector_checkpoints (projection, schema_version, namespace) VALUES ($1, $2, $3)
         ON CONFLICT (projection) DO UPDATE
            SET schema_version = EXCLUDED.schema_version, namespace = EXCLUDED.namespace,
                last_xact_id = '0', last_position = 0, events_applied = 0,
                status = 'running', last_error = NULL, error_count = 0, updated_at = now()
            WHERE projector_checkpoints.namespace <> EXCLUDED.namespace",
    )
    .bind(key)
    .bind(i64::from(schema_version))
    .bind(namespace)
    .execute(conn)
    .await?;
    Ok(())
}

/// Reads a checkpoint on a connection (inside the caller's transaction).
pub async fn read_in(
    conn: &mut PgConnection,
    projection: &str,
) -> Result<Option<Checkpoint>, CheckpointError> {
    let row: Option<Row> = sqlx::query_as(&format!("{SELECT} WHERE projection = $1"))
        .bind(projection)
        .fetch_optional(conn)
        .await?;
    row.map(Row::into_checkpoint).transpose()
}

/// Reads a checkpoint and locks it for the rest of the caller's transaction: no batch can commit
/// under it meanwhile (a one-stream repair).
pub async fn lock_in(
    conn: &mut PgConnection,
    projection: &str,
) -> Result<Option<Checkpoint>, CheckpointError> {
    let row: Option<Row> = sqlx::query_as(&format!("{SELECT} WHERE projection = $1 FOR UPDATE"))
        .bind(projection)
        .fetch_optional(conn)
        .await?;
    row.map(Row::into_checkpoint).transpose()
}

/// Reads a checkpoint.
pub async fn read<'e>(
    executor: impl PgExecutor<'e>,
    projection: &str,
) -> Result<Option<Checkpoint>, CheckpointError> {
    let row: Option<Row> = sqlx::query_as(&format!("{SELECT} WHERE projection = $1"))
        .bind(projection)
        .fetch_optional(executor)
        .await?;
    row.map(Row::into_checkpoint).transpose()
}

/// Reads all checkpoints, by name.
pub async fn read_all<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Vec<Checkpoint>, CheckpointError> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "{SELECT} WHERE projection NOT LIKE '%#%' ORDER BY projection"
    ))
    .fetch_all(executor)
    .await?;
    rows.into_iter().map(Row::into_checkpoint).collect()
}

/// The checkpoint's cursor, without locking it (the batch's [`advance_from`] checks it did not
/// move). Not locking keeps the batch transaction without a transaction id while it reads the
/// outbox, so it does not hold back the other projections' gap-safe horizon.
pub async fn cursor(
    conn: &mut PgConnection,
    projection: &str,
) -> Result<OutboxCursor, CheckpointError> {
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT last_xact_id::text, last_position FROM projector_checkpoints WHERE projection = $1",
    )
    .bind(projection)
    .fetch_optional(conn)
    .await?;
    let (xact, position) = row.ok_or_else(|| CheckpointError::Missing(projection.to_owned()))?;
    Ok(OutboxCursor {
        xact_id: xact
            .parse()
            .map_err(|_| CheckpointError::XactIdOutOfRange(xact.clone()))?,
        position,
    })
}

/// Moves the checkpoint from `from` to `to` (in the caller's transaction), adds `events` to its
/// count and marks the projection healthy; fails with [`CheckpointError::Moved`] if it is no
/// longer at `from` or no longer describes `namespace` (a cut-over or a reset happened meanwhile).
pub async fn advance_from(
    conn: &mut PgConnection,
    key: &str,
    namespace: &str,
    from: OutboxCursor,
    to: OutboxCursor,
    events: i64,
) -> Result<(), CheckpointError> {
    let updated = sqlx::query(
        "UPDATE projector_checkpoints
         SET last_xact_id = $4::text::xid8, last_position = $5, status = 'running',
             last_error = NULL, error_count = 0, updated_at = now(),
             events_applied = events_applied + $7
         WHERE projection = $1 AND last_xact_id = $2::text::xid8 AND last_position = $3
           AND namespace = $6",
    )
    .bind(key)
    .bind(from.xact_id.to_string())
    .bind(from.position)
    .bind(to.xact_id.to_string())
    .bind(to.position)
    .bind(namespace)
    .bind(events)
    .execute(conn)
    .await?
    .rows_affected();
    if updated == 1 {
        Ok(())
    } else {
        Err(CheckpointError::Moved(key.to_owned()))
    }
}

/// Moves the checkpoint (in the caller's transaction) and marks the projection healthy.
pub async fn advance(
    conn: &mut PgConnection,
    projection: &str,
    cursor: OutboxCursor,
) -> Result<(), CheckpointError> {
    sqlx::query(
        "UPDATE projector_checkpoints
         SET last_xact_id = $2::text::xid8, last_position = $3, status = 'running',
             last_error = NULL, error_count = 0, updated_at = now()
         WHERE projection = $1",
    )
    .bind(projection)
    .bind(cursor.xact_id.to_string())
    .bind(cursor.position)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a failed batch (outside the failed transaction, which rolled back). The error is
/// clipped to [`MAX_ERROR_BYTES`].
pub async fn record_failure<'e>(
    executor: impl PgExecutor<'e>,
    projection: &str,
    status: Status,
    error: &str,
) -> Result<(), CheckpointError> {
    sqlx::query(
        "UPDATE projector_checkpoints
         SET status = $2, last_error = $3, error_count = error_count + 1, updated_at = now()
         WHERE projection = $1",
    )
    .bind(projection)
    .bind(status.as_str())
    .bind(clip(error, MAX_ERROR_BYTES))
    .execute(executor)
    .await?;
    Ok(())
}

/// Marks a projection `failing` with `error` as soon as a call fails, while the worker still
/// looks for the poison event (a `failed` projection stays `failed`; the count of failed batches
/// is [`record_failure`]'s). Runs on its own connection: the batch's transaction is still open.
pub async fn mark_failing(
    pool: &sqlx::PgPool,
    projection: &str,
    error: &str,
) -> Result<(), CheckpointError> {
    sqlx::query(
        "UPDATE projector_checkpoints
         SET status = CASE WHEN status = 'failed' THEN status ELSE 'failing' END,
             last_error = $2, updated_at = now()
         WHERE projection = $1",
    )
    .bind(projection)
    .bind(clip(error, MAX_ERROR_BYTES))
    .execute(pool)
    .await?;
    Ok(())
}

/// Sets a checkpoint back to the start of the outbox (replay). The tables are kept: projections
/// must be idempotent.
pub async fn reset<'e>(
    executor: impl PgExecutor<'e>,
    projection: &str,
) -> Result<(), CheckpointError> {
    sqlx::query(
        "UPDATE projector_checkpoints
         SET last_xact_id = '0', last_position = 0, events_applied = 0, updated_at = now()
         WHERE projection = $1",
    )
    .bind(projection)
    .execute(executor)
    .await?;
    Ok(())
}

/// Marks a projection as running again after an operator's reload or resume (the next failure,
/// if any, is recorded afresh).
pub async fn clear_failure(conn: &mut PgConnection, key: &str) -> Result<(), CheckpointError> {
    sqlx::query(
        "UPDATE projector_checkpoints SET status = 'running', error_count = 0, updated_at = now()
         WHERE projection = $1",
    )
    .bind(key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets a checkpoint (a dropped rebuild's, or a projection deleted with its tables).
pub async fn delete(conn: &mut PgConnection, key: &str) -> Result<(), CheckpointError> {
    sqlx::query("DELETE FROM projector_checkpoints WHERE projection = $1")
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves a projection's live checkpoint to where its rebuild's stands, describing the rebuild's
/// namespace (the cut-over's checkpoint part), and forgets the rebuild's checkpoint.
pub async fn take_over(
    conn: &mut PgConnection,
    projection: &str,
    schema_version: i64,
    namespace: &str,
    rebuilt: &Checkpoint,
) -> Result<(), CheckpointError> {
    sqlx::query(
        "UPDATE projector_checkpoints
         SET schema_version = $2, namespace = $3, last_xact_id = $4::text::xid8,
             last_position = $5, events_applied = $6, status = 'running', last_error = NULL,
             error_count = 0, updated_at = now()
         WHERE projection = $1",
    )
    .bind(projection)
    .bind(schema_version)
    .bind(namespace)
    .bind(rebuilt.cursor.xact_id.to_string())
    .bind(rebuilt.cursor.position)
    .bind(rebuilt.events_applied)
    .execute(&mut *conn)
    .await?;
    delete(conn, &rebuilt.projection).await
}

/// Forgets every checkpoint (a benchmark starting from a clean registry).
pub async fn delete_all(conn: &mut PgConnection) -> Result<(), CheckpointError> {
    sqlx::query("DELETE FROM projector_checkpoints")
        .execute(conn)
        .await?;
    Ok(())
}
