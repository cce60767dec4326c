//! The projection's lease: a session-level advisory lock on the connection that applies the
//! batches, so it dies with the connection or the process and another process takes over.

use sqlx::{Connection, PgConnection};
use tokio::sync::watch;

use super::{Projector, WorkerContext};

/// Prefix of the advisory-lock name of a projection's lease.
pub const LEASE_PREFIX: &str = "wallex-projection:";

/// Takes the lease: the connection holding it and its backend pid. `None` when told to stop or
/// the projection's desired state changed while waiting (the caller re-checks it).
pub(super) async fn acquire(
    projector: &Projector,
    ctx: &WorkerContext,
    control: &mut watch::Receiver<u64>,
) -> Option<(PgConnection, i32)> {
    let lease = format!("{LEASE_PREFIX}{}", projector.name());
    loop {
        let attempt = async {
            let mut conn = PgConnection::connect_with(&ctx.connect).await?;
            let (held, pid): (bool, i32) = sqlx::query_as(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0)), pg_backend_pid()",
            )
            .bind(&lease)
            .fetch_one(&mut conn)
            .await?;
            Ok::<_, sqlx::Error>(held.then_some((conn, pid)))
        };
        match attempt.await {
            Ok(Some((conn, pid))) => return Some((conn, pid)),
            Ok(None) => tracing::trace!("lease held elsewhere"),
            Err(error) => tracing::warn!(%error, "cannot try the lease"),
        }
        tokio::select! {
            _ = tokio::time::sleep(projector.config.lease_retry) => {}
            _ = control.changed() => return None,
            _ = projector.stopped.cancelled() => return None,
            _ = ctx.shutdown.cancelled() => return None,
        }
    }
}

/// Terminates backend `pid` (a lease connection abandoned by a restart), so that its lease and
/// any lock its hung statement holds are released now rather than when PostgreSQL notices the
/// closed socket.
pub(super) async fn terminate(pool: &sqlx::PgPool, pid: i32) {
    if pid == 0 {
        return;
    }
    if let Err(error) = sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(pool)
        .await
    {
        tracing::warn!(%error, pid, "cannot terminate the abandoned lease connection");
    }
}
