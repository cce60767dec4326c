//! Dead letters: the events a projection skipped under `on_poison = skip`, and their replay.
//!
//! Why it exists: a poison event must not stop a projection that is told to carry on, and must
//! not be lost either. The worker records it in the transaction that applies the events around
//! it; an operator lists the open ones and re-runs them after a fix.
//!
//! Architecture invariant: the only module that reads or writes `projection_dead_letters`. API
//! boundary: rows only; listing and replaying by name are operations in `wallex-control`'s
//! `lifecycle`, which also calls the component.

use sqlx::PgConnection;

use wallex_sandbox::engine::wit;
use wallex_sandbox::guest_text::{clip, MAX_ERROR_BYTES};

/// Most dead letters one replay request re-runs.
pub const MAX_REPLAYED_DEAD_LETTERS: i64 = 1_000;
/// Most dead letters one listing returns.
pub const MAX_LISTED_DEAD_LETTERS: i64 = 10_000;

/// A recorded poison event.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadLetter {
    /// Row id.
    pub id: i64,
    /// The projection that skipped it.
    pub projection: String,
    /// The event's position in the log.
    pub global_position: i64,
    /// The event's id.
    pub event_id: uuid::Uuid,
    /// The event's type.
    pub event_type: String,
    /// Why it failed the last time it was tried (clipped).
    pub error: String,
    /// How often it was tried.
    pub attempts: i32,
    /// When it was first skipped.
    pub recorded_at: chrono::DateTime<chrono::Utc>,
    /// When it was last tried.
    pub last_attempt_at: chrono::DateTime<chrono::Utc>,
    /// When a replay applied it (`None`: still open).
    pub resolved_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// Letters applied and resolved.
    pub replayed: u32,
    /// Letters that failed again: (the event's position, why).
    pub still_failing: Vec<(i64, String)>,
}

/// Records a skipped event in the batch's transaction (a second time: one more attempt). The
/// error is clipped to [`MAX_ERROR_BYTES`].
pub async fn record(
    conn: &mut PgConnection,
    projection: &str,
    event: &wit::Event,
    error: &str,
) -> Result<(), sqlx::Error> {
    let event_id = uuid::Uuid::parse_str(&event.event_id).unwrap_or_default();
    sqlx::query(
        "INSERT INTO projection_dead_letters
            (projection, global_position, event_id, event_type, error)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (projection, event_id) DO UPDATE
            SET error = EXCLUDED.error, attempts = projection_dead_letters.attempts + 1,
                last_attempt_at = now(), resolved_at = NULL",
    )
    .bind(projection)
    .bind(event.global_position)
    .bind(event_id)
    .bind(&event.event_type)
    .bind(clip(error, MAX_ERROR_BYTES))
    .execute(conn)
    .await?;
    Ok(())
}

/// The letters of `projection` (open ones, or all with `include_resolved`), by position.
pub async fn list(
    pool: &sqlx::PgPool,
    projection: &str,
    include_resolved: bool,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, projection, global_position, event_id, event_type, error, attempts,
                recorded_at, last_attempt_at, resolved_at
         FROM projection_dead_letters
         WHERE projection = $1 AND ($2 OR resolved_at IS NULL)
         ORDER BY global_position LIMIT $3",
    )
    .bind(projection)
    .bind(include_resolved)
    .bind(MAX_LISTED_DEAD_LETTERS)
    .fetch_all(pool)
    .await
}

/// The open letters of `projection` to replay: (id, position), by position, at most
/// [`MAX_REPLAYED_DEAD_LETTERS`].
pub async fn open(pool: &sqlx::PgPool, projection: &str) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, global_position FROM projection_dead_letters
         WHERE projection = $1 AND resolved_at IS NULL ORDER BY global_position LIMIT $2",
    )
    .bind(projection)
    .bind(MAX_REPLAYED_DEAD_LETTERS)
    .fetch_all(pool)
    .await
}

/// Locks letter `id` in the caller's transaction; `false` when it is no longer open (another
/// replay resolved it).
pub async fn lock_open(conn: &mut PgConnection, id: i64) -> Result<bool, sqlx::Error> {
    let open: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM projection_dead_letters WHERE id = $1 AND resolved_at IS NULL FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(open.is_some())
}

/// Marks a letter replayed (in the transaction that applied it).
pub async fn resolve(conn: &mut PgConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_dead_letters
         SET resolved_at = now(), attempts = attempts + 1, last_attempt_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that a letter failed again, with why.
pub async fn failed_again(
    conn: &mut PgConnection,
    id: i64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_dead_letters
         SET error = $2, attempts = attempts + 1, last_attempt_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}
