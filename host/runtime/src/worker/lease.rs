//! The projection's lease: a session-level advisory lock on the connection that applies the
//! batches, so it dies with the connection or the process and another process takes over.

use sqlx::{Connection, PgConnection};
use tokio::sync::watch;

use super::{Projector, WorkerContext};

/// Prefix of the advisory-lock name of a projection's lease.
pub const LEASE_PREFIX: &str = "wallex-projection:";

/// Takes the lease, or returns `None` when told to stop or the projection's desired state
/// changed while waiting (the caller re-checks it).
pub(super) async fn acquire(
    projector: &Projector,
    ctx: &WorkerContext,
    control: &mut watch::Receiver<u64>,
) -> Option<PgConnection> {
    let lease = format!("{LEASE_PREFIX}{}", projector.name());
    loop {
        let attempt = async {
            let mut conn = PgConnection::connect_with(&ctx.connect).await?;
            let (held,): (bool,) =
                sqlx::query_as("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                    .bind(&lease)
                    .fetch_one(&mut conn)
                    .await?;
            Ok::<_, sqlx::Error>(held.then_some(conn))
        };
        match attempt.await {
            Ok(Some(conn)) => return Some(conn),
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
