//! The projection runtime in the test process: a fast configuration, loading and starting it over
//! a test database, and waiting for its checkpoints.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use wallex_control::Projections;
use wallex_core::outbox::OutboxCursor;
use wallex_runtime::ProjectionConfig;

use crate::db::PooledDb;

/// The default configuration with short poll, backoff and lease-retry intervals.
pub fn fast_config() -> ProjectionConfig {
    let mut config = ProjectionConfig::default();
    config.defaults.poll_interval = Duration::from_millis(200);
    config.defaults.error_backoff = Duration::from_millis(100);
    config.defaults.lease_retry = Duration::from_millis(100);
    config
}

/// Loads the projections (the bundled ones unless `config` says otherwise) over `db` and starts
/// their workers; cancel the token to stop them.
pub async fn start(db: &PooledDb, config: ProjectionConfig) -> (Projections, CancellationToken) {
    let projections = Projections::load(db.pool.clone(), config)
        .await
        .expect("load");
    let stop = CancellationToken::new();
    projections.start(stop.clone());
    (projections, stop)
}

/// How long an in-process projection may take to catch up.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until every listed projection's checkpoint equals `target`.
pub async fn wait_caught_up(pool: &PgPool, projections: &[&str], target: OutboxCursor) {
    let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let mut done = true;
        for name in projections {
            let checkpoint = wallex_runtime::checkpoint::read(pool, name)
                .await
                .expect("checkpoint");
            if checkpoint.map(|c| c.cursor) != Some(target) {
                done = false;
            }
        }
        if done {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "projections did not catch up to {target:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
