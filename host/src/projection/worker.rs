//! The claim loop: one worker per projection, holding a lease, applying batches transactionally.
//!
//! Why it exists: every outbox event must reach every projection exactly once in effect, even with
//! several `wallex serve` processes and crashes. A worker
//! 1. takes the projection's lease: a session-level advisory lock on a dedicated connection, so it
//!    dies with the connection (or the process) and another process takes over on its next try;
//! 2. applies each batch on that same connection in one transaction that locks the checkpoint,
//!    reads the events after it with the gap-safe reader, calls the component, validates and
//!    applies the mutations and advances the checkpoint. A worker whose lease connection is gone
//!    cannot commit anything;
//! 3. sleeps until PostgreSQL notifies a new outbox row (LISTEN/NOTIFY) or the poll interval
//!    elapses, whichever comes first.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::checkpoint::{self, CheckpointError, Status};
use super::engine::{to_guest_event, wit, ComponentError, LoadedComponent};
use super::mutation::{self, MutationError};
use super::schema::ProjectionSchema;
use crate::outbox::{self, OutboxCursor, OutboxError};

/// The channel PostgreSQL notifies on when outbox rows commit (see the projections migration).
pub const OUTBOX_CHANNEL: &str = "wallex_outbox";
/// Prefix of the advisory-lock name of a projection's lease.
pub const LEASE_PREFIX: &str = "wallex-projection:";
/// How long to wait before re-checking when committed rows are not readable yet because an older
/// transaction is still running (the reader's gap-safety horizon).
pub const HIDDEN_ROWS_RETRY: Duration = Duration::from_millis(5);
/// Pause after the listener connection fails, before it reconnects.
pub const LISTENER_RETRY: Duration = Duration::from_millis(500);

/// Tuning of one projection's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerConfig {
    pub batch_size: u32,
    pub poll_interval: Duration,
    pub error_backoff: Duration,
    /// Consecutive failures of a batch after which the worker gives up (status `failed`).
    pub max_retries: u32,
    /// How often a worker without the lease tries to take it.
    pub lease_retry: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            batch_size: 200,
            poll_interval: Duration::from_millis(1000),
            error_backoff: Duration::from_millis(5000),
            max_retries: 3,
            lease_retry: Duration::from_millis(1000),
        }
    }
}

/// Why a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Component(#[from] ComponentError),
    #[error("batch rejected: {0}")]
    Mutation(#[from] MutationError),
}

impl BatchError {
    /// Whether the lease connection is unusable (the lease is then presumed lost).
    fn is_connection_lost(&self) -> bool {
        let db = match self {
            Self::Database(e) => e,
            Self::Checkpoint(CheckpointError::Database(e)) => e,
            Self::Outbox(OutboxError::Database(e)) => e,
            _ => return false,
        };
        matches!(
            db,
            sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolClosed
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::WorkerCrashed
        )
    }
}

/// What turns a batch of events into mutations: a WebAssembly component in production; the
/// benchmark's native baseline implements it too, so both run through the same worker.
pub trait BatchHandler: Send + Sync + 'static {
    /// Where the handler came from (file name, `bundled:<name>`, `native:<name>`).
    fn origin(&self) -> &str;
    /// Handles one batch of subscribed events.
    fn handle(&self, batch: &[wit::Event]) -> Result<Vec<wit::Mutation>, ComponentError>;
}

impl BatchHandler for LoadedComponent {
    fn origin(&self) -> &str {
        LoadedComponent::origin(self)
    }

    fn handle(&self, batch: &[wit::Event]) -> Result<Vec<wit::Mutation>, ComponentError> {
        LoadedComponent::handle(self, batch)
    }
}

/// A loaded projection and its worker's shared state.
pub struct Projector {
    pub schema: Arc<ProjectionSchema>,
    pub handler: Arc<dyn BatchHandler>,
    pub config: WorkerConfig,
    /// The last cursor this process committed for the projection (read-after-write wake-ups).
    progress: watch::Sender<OutboxCursor>,
    lease_held: AtomicBool,
    /// Outbox rows this process has committed for the projection since it started.
    events_applied: AtomicU64,
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("name", &self.schema.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Projector {
    pub fn new(
        schema: ProjectionSchema,
        handler: Arc<dyn BatchHandler>,
        config: WorkerConfig,
    ) -> Self {
        Self {
            schema: Arc::new(schema),
            handler,
            config,
            progress: watch::Sender::new(OutboxCursor::START),
            lease_held: AtomicBool::new(false),
            events_applied: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.schema.name
    }

    /// Whether this process's worker currently holds the lease.
    pub fn lease_held(&self) -> bool {
        self.lease_held.load(Ordering::Relaxed)
    }

    /// Outbox rows (subscribed or skipped) this process has committed for the projection.
    pub fn events_applied(&self) -> u64 {
        self.events_applied.load(Ordering::Relaxed)
    }

    /// Wakes whenever this process commits a batch of the projection.
    pub fn subscribe_progress(&self) -> watch::Receiver<OutboxCursor> {
        self.progress.subscribe()
    }

    /// Applies at most one batch on `conn` (which must hold the lease). Returns the number of
    /// outbox rows consumed (0 when caught up).
    pub async fn apply_batch(&self, conn: &mut PgConnection) -> Result<usize, BatchError> {
        let name = self.name();
        let started = std::time::Instant::now();
        let mut tx = conn.begin().await?;
        let cursor = checkpoint::cursor(&mut tx, name).await?;
        let events = outbox::read_batch(&mut *tx, cursor, self.config.batch_size).await?;
        let read = started.elapsed();
        let Some(last) = events.last().map(|e| e.cursor()) else {
            tx.rollback().await?;
            // Another process may have moved the checkpoint while it held the lease.
            self.progress.send_if_modified(|known| {
                let changed = *known != cursor;
                *known = cursor;
                changed
            });
            return Ok(0);
        };
        let batch: Vec<_> = events
            .iter()
            .filter(|e| self.schema.subscriptions.includes(&e.event_type))
            .map(to_guest_event)
            .collect();
        let mut rows = 0;
        let (mut handled, mut applied) = (read, read);
        if !batch.is_empty() {
            let handler = Arc::clone(&self.handler);
            let mutations = tokio::task::spawn_blocking(move || handler.handle(&batch))
                .await
                .map_err(|e| ComponentError::Join(e.to_string()))??;
            handled = started.elapsed();
            let plan = mutation::plan(&self.schema, &mutations)?;
            rows = mutation::apply(&mut tx, &plan).await?;
            applied = started.elapsed();
        }
        checkpoint::advance_from(&mut tx, name, cursor, last).await?;
        tx.commit().await?;
        let committed = started.elapsed();
        self.events_applied
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        self.progress.send_replace(last);
        tracing::debug!(
            projection = name,
            events = events.len(),
            rows,
            to = ?last,
            read_us = read.as_micros(),
            handled_us = handled.as_micros(),
            applied_us = applied.as_micros(),
            committed_us = committed.as_micros(),
            "batch applied"
        );
        Ok(events.len())
    }
}

/// Wake-ups for workers: bumped on every outbox notification.
pub type Wake = watch::Receiver<u64>;

/// Listens on [`OUTBOX_CHANNEL`] and bumps the returned counter on every notification (and after
/// every reconnect, since notifications may have been missed). Ends at shutdown.
pub fn spawn_listener(
    pool: PgPool,
    shutdown: CancellationToken,
) -> (Wake, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(0_u64);
    let task = tokio::spawn(
        async move {
            loop {
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::warn!(%error, "outbox listener cannot connect");
                        tokio::select! {
                            _ = tokio::time::sleep(LISTENER_RETRY) => continue,
                            _ = shutdown.cancelled() => return,
                        }
                    }
                };
                if let Err(error) = listener.listen(OUTBOX_CHANNEL).await {
                    tracing::warn!(%error, "outbox listener cannot LISTEN");
                    tokio::time::sleep(LISTENER_RETRY).await;
                    continue;
                }
                tx.send_modify(|n| *n = n.wrapping_add(1));
                loop {
                    tokio::select! {
                        received = listener.try_recv() => match received {
                            Ok(Some(_)) => tx.send_modify(|n| *n = n.wrapping_add(1)),
                            // The connection was lost; try_recv reconnects on the next call.
                            Ok(None) => tx.send_modify(|n| *n = n.wrapping_add(1)),
                            Err(error) => {
                                tracing::warn!(%error, "outbox listener failed");
                                break;
                            }
                        },
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
        .instrument(tracing::info_span!("outbox_listener")),
    );
    (rx, task)
}

/// Runs a projection's worker until shutdown (or until its retries are exhausted).
pub async fn run(
    projector: Arc<Projector>,
    connect: PgConnectOptions,
    pool: PgPool,
    mut wake: Wake,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("projection_worker", projection = projector.name());
    async move {
        let config = projector.config;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let Some(mut conn) = acquire_lease(&projector, &connect, &shutdown).await else {
                return;
            };
            projector.lease_held.store(true, Ordering::Relaxed);
            tracing::info!("lease acquired");
            let outcome = process(&projector, &mut conn, &pool, &mut wake, &shutdown).await;
            projector.lease_held.store(false, Ordering::Relaxed);
            // Closing the connection releases the advisory lock.
            let _ = conn.close().await;
            match outcome {
                Outcome::Shutdown => return,
                Outcome::GaveUp => {
                    tracing::error!(
                        retries = config.max_retries,
                        "projection stopped after repeated failures; fix and restart"
                    );
                    return;
                }
                Outcome::LeaseLost => {
                    tracing::warn!("lease connection lost; trying to take the lease again");
                }
            }
        }
    }
    .instrument(span)
    .await
}

enum Outcome {
    Shutdown,
    GaveUp,
    LeaseLost,
}

async fn acquire_lease(
    projector: &Projector,
    connect: &PgConnectOptions,
    shutdown: &CancellationToken,
) -> Option<PgConnection> {
    let lease = format!("{LEASE_PREFIX}{}", projector.name());
    loop {
        let attempt = async {
            let mut conn = PgConnection::connect_with(connect).await?;
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
            _ = shutdown.cancelled() => return None,
        }
    }
}

async fn process(
    projector: &Projector,
    conn: &mut PgConnection,
    pool: &PgPool,
    wake: &mut Wake,
    shutdown: &CancellationToken,
) -> Outcome {
    let config = projector.config;
    let mut failures = 0_u32;
    loop {
        if shutdown.is_cancelled() {
            return Outcome::Shutdown;
        }
        // Mark notifications up to here as seen: any later commit wakes the next wait.
        wake.borrow_and_update();
        match projector.apply_batch(conn).await {
            Ok(consumed) => {
                failures = 0;
                if consumed >= config.batch_size as usize {
                    continue;
                }
                let delay = match has_hidden_rows(pool, projector).await {
                    Ok(true) => HIDDEN_ROWS_RETRY,
                    Ok(false) => config.poll_interval,
                    Err(error) => {
                        tracing::warn!(%error, "cannot check for pending outbox rows");
                        config.poll_interval
                    }
                };
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Outcome::Shutdown,
                }
            }
            Err(BatchError::Checkpoint(CheckpointError::Moved(_))) => {
                // Reset by an operator (or applied elsewhere) while this batch ran: not a
                // failure of the projection, start again from the new checkpoint.
                tracing::info!("checkpoint moved during the batch; retrying from it");
            }
            Err(error) if error.is_connection_lost() => {
                tracing::warn!(%error, "batch failed on a lost connection");
                return Outcome::LeaseLost;
            }
            Err(error) => {
                failures += 1;
                let gave_up = failures > config.max_retries;
                let status = if gave_up {
                    Status::Failed
                } else {
                    Status::Failing
                };
                let message = error.to_string();
                tracing::error!(error = %message, attempt = failures, ?status, "batch failed; nothing applied");
                // On the lease connection: it first rolls back the failed transaction, which
                // still holds the checkpoint row lock.
                if let Err(error) =
                    checkpoint::record_failure(&mut *conn, projector.name(), status, &message).await
                {
                    tracing::warn!(%error, "cannot record the failure");
                    return Outcome::LeaseLost;
                }
                if gave_up {
                    return Outcome::GaveUp;
                }
                tokio::select! {
                    _ = tokio::time::sleep(config.error_backoff) => {}
                    _ = shutdown.cancelled() => return Outcome::Shutdown,
                }
            }
        }
    }
}

/// Whether committed outbox rows exist after the checkpoint that the gap-safe reader cannot return
/// yet (an older transaction is still running). Such rows become readable without a notification
/// when that transaction ends, so the worker re-checks soon instead of at the poll interval.
async fn has_hidden_rows(pool: &PgPool, projector: &Projector) -> Result<bool, sqlx::Error> {
    let cursor = *projector.progress.borrow();
    let (pending,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM outbox
                        WHERE (xact_id, global_position) > ($1::text::xid8, $2))",
    )
    .bind(cursor.xact_id.to_string())
    .bind(cursor.position)
    .fetch_one(pool)
    .await?;
    Ok(pending)
}
