//! Running the service: start-up, background tasks and graceful shutdown.
//!
//! Why it exists: `serve` wires configuration, the pool, migrations, the HTTP server and the
//! background tasks together, and owns their lifecycle. On SIGTERM/SIGINT it stops accepting
//! connections, lets in-flight requests finish (bounded by the grace period), stops the background
//! tasks and closes the pool.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServeConfig;
use wallex_control as projection;
use wallex_core::eventstore::kurrent::{EventStoreSetupError, KurrentEventStore};
use wallex_core::eventstore::postgres::PgEventStore;
use wallex_core::eventstore::StreamReader;
use wallex_core::redis_lock_cache::{RedisLockCache, RedisSetupError};
use wallex_core::write_path::orphans::OrphanCompleter;
use wallex_core::write_path::WritePath;
use wallex_core::{db, idempotency};
use wallex_http::{AppState, HttpConfig};

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database could not be created, reached or migrated.
    #[error(transparent)]
    Database(#[from] db::DbError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured listen address.
        addr: std::net::SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The HTTP server stopped with an error.
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    /// The projection settings are invalid.
    #[error(transparent)]
    ProjectionConfig(#[from] wallex_runtime::config::ConfigError),
    /// The projections could not be loaded or registered.
    #[error("cannot load the projections: {0}")]
    Projections(#[from] projection::LoadError),
    /// The admin token is shorter than [`wallex_http::admin::MIN_TOKEN_LEN`].
    #[error(
        "WALLEX_ADMIN_TOKEN must be at least {} characters",
        wallex_http::admin::MIN_TOKEN_LEN
    )]
    WeakAdminToken,
    /// The Redis settings are invalid.
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
    /// The event store settings are invalid.
    #[error(transparent)]
    EventStore(#[from] EventStoreSetupError),
    /// The first start with this database could not read where KurrentDB's `$all` ends (the
    /// reconciliation's starting point).
    #[error("first start with this database: cannot read the end of KurrentDB's $all: {0}")]
    KurrentDbFirstStart(#[source] wallex_core::write_path::orphans::OrphanError),
}

/// Runs the server until `shutdown` is cancelled (or a signal arrives).
pub async fn serve(
    config: ServeConfig,
    telemetry: wallex_telemetry::Telemetry,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let admin_token = config.admin_token.as_deref().filter(|t| !t.is_empty());
    if admin_token.is_some_and(|t| t.len() < wallex_http::admin::MIN_TOKEN_LEN) {
        return Err(ServeError::WeakAdminToken);
    }
    let database = config.database.settings();
    let idempotency = config.idempotency.settings();
    let event_store = config.event_store.settings();
    let redis = RedisLockCache::from_config(&config.redis.settings())?;
    let kurrent = KurrentEventStore::from_config(&event_store)?;
    db::ensure_database(&database).await?;
    let pool = db::pool(&database)?;
    db::migrate(&pool).await?;
    tracing::info!("migrations applied");

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(ServeError::Http)?;

    let tasks = TaskTracker::new();
    let background = shutdown.child_token();
    tasks.spawn(idempotency::run_cleanup(
        pool.clone(),
        Duration::from_secs(idempotency.idempotency_cleanup_interval_secs),
        idempotency.idempotency_cleanup_batch_size,
        background.clone(),
    ));

    let events = match &kurrent {
        Some(store) => {
            tracing::info!("event store: KurrentDB");
            let reconciler = OrphanCompleter::new(
                pool.clone(),
                store.clone(),
                wallex_http::wallets::CREATE_WALLET_SCOPE,
                wallex_http::wallets::render_create_result,
                idempotency.ttl(),
                Duration::from_secs(event_store.kurrentdb_reconcile_grace_secs),
            );
            reconciler
                .prepare()
                .await
                .map_err(ServeError::KurrentDbFirstStart)?;
            tasks.spawn(reconciler.run(
                Duration::from_secs(event_store.kurrentdb_reconcile_interval_secs),
                background.clone(),
            ));
            StreamReader::Kurrent(store.clone())
        }
        None => StreamReader::Postgres(PgEventStore::new(pool.clone())),
    };

    let projections =
        projection::Projections::load(pool.clone(), config.projections.settings()?.resolve())
            .await?;
    if projections.config().auto_start {
        for worker in projections.start(background.clone()) {
            tasks.spawn(async move {
                if let Err(error) = worker.await {
                    tracing::error!(%error, "projection task panicked");
                }
            });
        }
    } else {
        tracing::info!("PROJECTORS_AUTO_START=false: projection workers not started");
    }
    let recovery =
        projection::recovery::Recovery::new(projections.clone(), config.recovery.settings());
    if projections.config().auto_start {
        // Stall detection watches the workers this process runs.
        tasks.spawn(recovery.clone().run(background.clone()));
    }

    let grace = Duration::from_secs(config.shutdown_grace_secs);
    if admin_token.is_none() {
        tracing::info!("WALLEX_ADMIN_TOKEN not set: the admin API is off");
    }
    let admin =
        wallex_http::admin::AdminState::new(projections.clone(), Some(recovery), admin_token)
            .with_request_timeout(config.request_timeout());
    let state = AppState {
        telemetry,
        admin,
        projections,
        write_path: WritePath::start(
            pool.clone(),
            &config.write_path.settings(),
            idempotency.ttl(),
            redis,
            kurrent,
        ),
        events,
        pool: pool.clone(),
        config: Arc::new(HttpConfig {
            request_timeout: config.request_timeout(),
            idempotency_key_required: idempotency.idempotency_key_required,
        }),
    };
    let app = wallex_http::router(state);

    tracing::info!("listening on http://{local_addr}");
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; finishing in-flight requests");
        signal_token.cancel();
    });
    let stop_accepting = shutdown.clone();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop_accepting.cancelled().await })
        .into_future();
    tokio::pin!(server);
    let result = tokio::select! {
        result = &mut server => result,
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs(), "grace period over; dropping unfinished requests");
            Ok(())
        }
    };

    background.cancel();
    tasks.close();
    tasks.wait().await;
    pool.close().await;
    tracing::info!("stopped");
    result.map_err(ServeError::Http)
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
