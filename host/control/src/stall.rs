//! Stall detection (the reference design's "stale events"): a projection that stops moving
//! without failing.
//!
//! Why it exists: a worker can hang without an error — a statement waiting on a lock nobody
//! releases, a connection that silently stopped answering. Its status stays `running`, its lag
//! grows, and nothing retries. A live projection is stalled when
//! - its checkpoint says `running` (a failing or failed one is the worker's own business) and an
//!   operator has not paused it;
//! - events wait after its checkpoint, the oldest recorded more than `RECOVERY_STALL_SECS` ago;
//! - its checkpoint has not moved for `RECOVERY_STALL_SECS`.
//!
//! The instance whose worker holds the projection's lease finds it (only that instance can
//! restart the worker): it records the stall (`projection_stalls`, which every instance's status
//! reads), logs it, counts it, and restarts the worker from its checkpoint
//! ([`Projector::restart`]: the hung batch is abandoned, its connection terminated). If the
//! projection stays stalled, the next restart waits twice as long as the last (from
//! `RECOVERY_STALL_SECS` up to [`MAX_RESTART_BACKOFF`]). The stall ends when the checkpoint
//! moves. Owns `projection_stalls`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use wallex_runtime::checkpoint::{self, Status};
use wallex_runtime::registry;
use wallex_runtime::worker::Projector;
use wallex_telemetry::catalogue::PROJECTOR_STALL_RESTARTS_TOTAL;

/// Longest wait between two restarts of a projection that stays stalled.
pub const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(3_600);
/// The audit trail's actor for what stall detection does.
pub const ACTOR: &str = "recovery";

/// A stall as recorded.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Stall {
    /// The projection.
    pub projection: String,
    /// Global position of the checkpoint that does not move.
    pub stuck_position: i64,
    /// Since when it has not moved.
    pub stuck_since: DateTime<Utc>,
    /// When the stall was found.
    pub detected_at: DateTime<Utc>,
    /// Restarts of the worker since then.
    pub restarts: i32,
    /// When the worker was last restarted.
    pub last_restart_at: Option<DateTime<Utc>>,
}

/// Why a check could not run.
#[derive(Debug, thiserror::Error)]
pub enum StallError {
    /// The database refused or could not be reached.
    #[error("stall detection: {0}")]
    Database(#[from] sqlx::Error),
    /// The checkpoint could not be read.
    #[error("stall detection: {0}")]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// The outbox could not be read.
    #[error("stall detection: {0}")]
    Outbox(#[from] wallex_core::outbox::OutboxError),
}

/// How long to wait after restart number `restarts` (1-based) before the next one.
pub fn restart_backoff(stall: Duration, restarts: i32) -> Duration {
    let doublings = u32::try_from(restarts.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    stall
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(MAX_RESTART_BACKOFF)
}

/// The recorded stall of `projection`, if it is stalled.
pub async fn stall_of<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    projection: &str,
) -> Result<Option<Stall>, sqlx::Error> {
    sqlx::query_as(
        "SELECT projection, stuck_position, stuck_since, detected_at, restarts, last_restart_at
         FROM projection_stalls WHERE projection = $1",
    )
    .bind(projection)
    .fetch_optional(executor)
    .await
}

/// Every recorded stall, by projection.
pub async fn all_stalls<'e>(
    executor: impl sqlx::PgExecutor<'e>,
) -> Result<Vec<Stall>, sqlx::Error> {
    sqlx::query_as(
        "SELECT projection, stuck_position, stuck_since, detected_at, restarts, last_restart_at
         FROM projection_stalls ORDER BY projection",
    )
    .fetch_all(executor)
    .await
}

/// Checks `projector` (whose worker runs in this process) and acts on what it finds.
pub async fn check(
    pool: &PgPool,
    projector: &Projector,
    paused: bool,
    stall_after: Duration,
) -> Result<(), StallError> {
    let name = projector.name();
    if !paused && !projector.lease_held() {
        // Another instance's worker (or none, between two leases): not this one's to judge.
        return Ok(());
    }
    let recorded = stall_of(pool, name).await?;
    let checkpoint = checkpoint::read(pool, name).await?;
    let now = Utc::now();
    let stall_after_chrono =
        chrono::Duration::from_std(stall_after).unwrap_or(chrono::TimeDelta::MAX);
    let stalled_checkpoint = match &checkpoint {
        Some(c) if !paused && c.status == Status::Running => {
            let (waiting, oldest) = wallex_core::outbox::lag_after(pool, c.cursor).await?;
            let old_wait = oldest.is_some_and(|at| now - at >= stall_after_chrono);
            let still = now - c.updated_at >= stall_after_chrono;
            (waiting > 0 && old_wait && still).then_some(c)
        }
        _ => None,
    };
    let Some(stuck) = stalled_checkpoint else {
        if let Some(stall) = recorded {
            // Moving again, caught up, paused, or failing (the worker's own retries take over).
            sqlx::query("DELETE FROM projection_stalls WHERE projection = $1")
                .bind(name)
                .execute(pool)
                .await?;
            tracing::info!(
                projection = name,
                restarts = stall.restarts,
                "projection no longer stalled"
            );
            audit(pool, name, "stall-cleared", &stall).await?;
            return Ok(());
        }
        return Ok(());
    };
    // The stall and its restart are recorded in one statement, so that a status never shows a
    // stall whose restart is under way as not restarted.
    let stall: Stall = match recorded {
        Some(stall) if stall.stuck_position == stuck.cursor.position => {
            if let Some(at) = stall.last_restart_at {
                let wait = restart_backoff(stall_after, stall.restarts);
                if now - at < chrono::Duration::from_std(wait).unwrap_or(chrono::TimeDelta::MAX) {
                    return Ok(());
                }
            }
            sqlx::query_as(
                "UPDATE projection_stalls SET restarts = restarts + 1, last_restart_at = now()
                 WHERE projection = $1
                 RETURNING projection, stuck_position, stuck_since, detected_at, restarts,
                           last_restart_at",
            )
            .bind(name)
            .fetch_one(pool)
            .await?
        }
        _ => {
            // A new stall (or the checkpoint moved and stuck again further on): restart at once.
            let stall: Stall = sqlx::query_as(
                "INSERT INTO projection_stalls
                   (projection, stuck_position, stuck_since, restarts, last_restart_at)
                 VALUES ($1, $2, $3, 1, now())
                 ON CONFLICT (projection) DO UPDATE
                   SET stuck_position = EXCLUDED.stuck_position,
                       stuck_since = EXCLUDED.stuck_since, detected_at = now(),
                       restarts = 1, last_restart_at = now()
                 RETURNING projection, stuck_position, stuck_since, detected_at, restarts,
                           last_restart_at",
            )
            .bind(name)
            .bind(stuck.cursor.position)
            .bind(stuck.updated_at)
            .fetch_one(pool)
            .await?;
            tracing::error!(
                projection = name,
                position = stall.stuck_position,
                since = %stall.stuck_since,
                "projection stalled: events wait and its checkpoint has not moved; restarting its worker"
            );
            stall
        }
    };
    projector.restart();
    metrics::counter!(PROJECTOR_STALL_RESTARTS_TOTAL, "projection" => name.to_owned()).increment(1);
    tracing::warn!(
        projection = name,
        restarts = stall.restarts,
        "stalled projection's worker restarted from its checkpoint"
    );
    audit(pool, name, "stall-restart", &stall).await?;
    Ok(())
}

async fn audit(
    pool: &PgPool,
    projection: &str,
    action: &str,
    stall: &Stall,
) -> Result<(), sqlx::Error> {
    let detail = serde_json::json!({
        "stuckPosition": stall.stuck_position,
        "stuckSince": stall.stuck_since,
        "restarts": stall.restarts,
    });
    let mut conn = pool.acquire().await?;
    registry::record_action(&mut conn, ACTOR, action, Some(projection), "ok", &detail).await
}
