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
//!
//! Layout: this file holds what a projector is ([`Projector`], [`Desired`], [`Active`]) and the
//! loop ([`run`]); [`batch`] applies one batch (the evaluation, the search for poison events, the
//! penalty); [`lease`] takes the lease; [`listener`] turns NOTIFY into wake-ups.
//!
//! Architecture invariant: a batch commits only on the connection holding the projection's
//! lease, with its checkpoint, and only from the checkpoint it read. API boundary: the worker
//! calls the owners of the tables it touches (`checkpoint`, `dead_letters`, `outbox`, `mutation`)
//! and never writes SQL of its own.

pub mod batch;
pub mod lease;
pub mod listener;

pub use listener::{spawn_listener, Signals, Wake, LISTENER_RETRY, OUTBOX_CHANNEL};

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::checkpoint;
use crate::checkpoint::{CheckpointError, Status};
use crate::config::{Policy, WorkerConfig};
use crate::mutation::MutationError;
use crate::schema::ProjectionSchema;
use wallex_core::outbox::{self, OutboxCursor, OutboxError};
use wallex_sandbox::engine::{wit, ComponentError, LoadedComponent, RuntimeLimits};
use wallex_sandbox::guest_pool::{GuestPool, GuestPoolError};

/// While live events flow, a drift check's shadow batch waits this many times its own duration
/// after the last one (the replay then takes at most 1/(1+`SHADOW_YIELD`) of the worker's time,
/// and of the CPU it and PostgreSQL spend on it). When the live track is idle it runs at full
/// speed.
pub const SHADOW_YIELD: u32 = 3;
/// How long to wait before re-checking when committed rows are not readable yet because an older
/// transaction is still running (the reader's gap-safety horizon).
pub const HIDDEN_ROWS_RETRY: Duration = Duration::from_millis(5);
/// After a batch in which calls failed, the worker waits at least this many times the guest time
/// those calls burned before its next batch (under `skip` too): a component failing at its limit
/// gets at most 1/(1+penalty) of a guest thread.
pub const FAILED_GUEST_TIME_PENALTY: u32 = 9;
/// A failing call that burned at least this much guest time sends its component to the
/// quarantine thread for [`QUARANTINE_WINDOW`].
pub const QUARANTINE_BURN: Duration = Duration::from_millis(100);
/// How long a component stays on the quarantine thread after an expensive failing call (renewed
/// by every further one), so that a component failing now and then (`skip`) cannot come back to
/// the shared guest threads between its failures.
pub const QUARANTINE_WINDOW: Duration = Duration::from_secs(60);

/// Why a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The database refused or could not be reached.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The checkpoint could not be read or moved.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The outbox could not be read.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The component could not be called, hit a limit, trapped or rejected the batch.
    #[error(transparent)]
    Component(#[from] ComponentError),
    /// The component's mutations exceed its budget or do not fit its declaration.
    #[error("batch rejected: {0}")]
    Mutation(#[from] MutationError),
    /// The component fails on this event (found by searching the batch); with `on_poison = pause`
    /// the projection stops at it.
    #[error("event at position {position} ({event_type} {event_id}): {message}")]
    Poison {
        /// Global position of the event.
        position: i64,
        /// The event's id.
        event_id: String,
        /// The event's type.
        event_type: String,
        /// Why the call on it failed.
        message: String,
    },
    /// The guest thread pool shut down, or guest code panicked a host thread.
    #[error(transparent)]
    Guest(#[from] GuestPoolError),
    /// PostgreSQL refused data of validated mutations (see [`crate::mutation::data_rejection`]);
    /// the worker then applies the batch range by range to attribute it.
    #[error("{0}")]
    Data(String),
    /// The search for the failing event settled nothing (it always settles at least one event
    /// or names the first poison event; this reports a broken promise instead of looping).
    #[error("no event of the batch could be settled")]
    Unsettled,
}

impl BatchError {
    /// Whether the component (not the database or the host) caused the failure: the kind a
    /// single poison event explains, found by searching the batch (see `poison_search.rs`).
    pub(crate) fn is_component_failure(&self) -> bool {
        matches!(
            self,
            Self::Component(
                ComponentError::Trap { .. }
                    | ComponentError::Limit { .. }
                    | ComponentError::Rejected { .. }
            ) | Self::Mutation(_)
                | Self::Data(_)
        )
    }

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
    /// Handles one batch of subscribed events under `limits`.
    fn handle(
        &self,
        batch: &[wit::Event],
        limits: &RuntimeLimits,
    ) -> Result<Vec<wit::Mutation>, ComponentError>;
    /// Bytes of compiled code the handler keeps mapped (`None` for native handlers).
    fn compiled_bytes(&self) -> Option<usize> {
        None
    }
}

impl BatchHandler for LoadedComponent {
    fn origin(&self) -> &str {
        LoadedComponent::origin(self)
    }

    fn compiled_bytes(&self) -> Option<usize> {
        Some(LoadedComponent::compiled_bytes(self))
    }

    fn handle(
        &self,
        batch: &[wit::Event],
        limits: &RuntimeLimits,
    ) -> Result<Vec<wit::Mutation>, ComponentError> {
        LoadedComponent::handle(self, batch, limits)
    }
}

/// One version of a projection as this process runs it: the declaration (with the namespace its
/// tables live in) and the code that handles batches.
#[derive(Clone)]
pub struct Active {
    /// The declaration, in the namespace its tables live in.
    pub schema: Arc<ProjectionSchema>,
    /// What handles the batches: the compiled component, or a native handler.
    pub handler: Arc<dyn BatchHandler>,
    /// SHA-256 of the component's bytes (`native:<name>` for native handlers).
    pub sha256: String,
    /// Where the registry says the bytes came from.
    pub source: String,
    /// Limits and poison policy.
    pub policy: Policy,
}

/// A blue/green rebuild as this process knows it.
#[derive(Clone)]
pub struct RebuildTarget {
    /// The version filling the fresh tables, with their namespace.
    pub active: Active,
    /// A failed rebuild is left alone (the live version keeps running) until it is replaced or
    /// cancelled; so is a drift shadow held at its cut.
    pub failed: bool,
    /// A drift check's shadow: filled only up to the live checkpoint, then compared instead of
    /// cut over.
    pub drift: bool,
}

/// What the registry says a projection should run; swapped by reconciliation, read by the worker
/// at every batch boundary.
#[derive(Clone)]
pub struct Desired {
    /// The live version.
    pub active: Active,
    /// The rebuild in progress, if one.
    pub rebuild: Option<RebuildTarget>,
    /// Whether an operator paused the projection: the worker applies nothing.
    pub paused: bool,
    /// The registry generation this reflects (0 for projections outside the registry).
    pub generation: i64,
}

/// Which checkpoint and tables a batch works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// The live tables, under the projection's checkpoint.
    Live,
    /// A rebuild's fresh tables, under `<name>#rebuild`.
    Rebuild,
    /// A drift check's shadow tables, under `<name>#rebuild`, never past the live checkpoint.
    Shadow,
    /// A dry run's tables (see `wallex-control`'s `dry_run`), under `<name>#dry-run`, never past
    /// the given cursor. Its poison events are reported in the outcome, never dead-lettered.
    DryRun(OutboxCursor),
}

impl Track {
    fn index(self) -> usize {
        match self {
            Self::Live => 0,
            Self::Rebuild | Self::Shadow | Self::DryRun(_) => 1,
        }
    }
}

/// What one batch of a track did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Outbox rows consumed (0 when caught up).
    pub consumed: usize,
    /// Whether more rows are known to wait (the batch was full, or only part of it settled).
    pub more: bool,
    /// Events the component was given (subscribed ones) among those consumed.
    pub handled: usize,
    /// Rows the batch's statements wrote.
    pub rows: u64,
    /// A dry run's poison events, skipped (other tracks dead-letter them).
    pub poison: Vec<PoisonEvent>,
}

/// An event the component failed on, skipped by a dry run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoisonEvent {
    /// Its global position.
    pub position: i64,
    /// Its id.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// Why it failed.
    pub error: String,
}

/// A projection and its worker's shared state.
pub struct Projector {
    name: String,
    /// Tuning of the worker.
    pub config: WorkerConfig,
    desired: std::sync::RwLock<Desired>,
    /// Bumped whenever `desired` changes: wakes the worker and clears a given-up state.
    control: watch::Sender<u64>,
    /// Cancelled when the projection is deleted (its worker ends).
    stopped: CancellationToken,
    /// The last cursor this process committed for the projection (read-after-write wake-ups).
    progress: watch::Sender<OutboxCursor>,
    lease_held: AtomicBool,
    /// Outbox rows this process has committed for the projection since it started.
    events_applied: AtomicU64,
    /// Why the last attempt to deploy this projection from the directory failed, if it did.
    last_deploy_error: std::sync::Mutex<Option<String>>,
    /// Where guest code runs.
    guests: Arc<GuestPool>,
    /// Guest time burned by failing calls since the worker last looked, in microseconds (the
    /// base of its penalty wait).
    burned_micros: AtomicU64,
    /// Whether the last call failed: the next runs on the quarantine thread.
    last_call_failed: AtomicBool,
    /// Until when the component runs on the quarantine thread after an expensive failure.
    quarantined_until: std::sync::Mutex<Option<Instant>>,
    /// Per track ([`Track::index`]): the batch size a search narrowed the next batch to (0: the
    /// configured size).
    size_hint: [AtomicUsize; 2],
    /// Bumped by [`Projector::restart`]: the worker drops whatever it is doing (a batch that
    /// hangs included) and starts again from its checkpoint.
    restart: watch::Sender<u64>,
    /// A dry run's projector: records no metrics under the projection's name (the live
    /// version's series stay its own).
    dry_run: bool,
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Projector {
    /// A projector for `desired`, whose worker runs guest code on `guests`. Starts no worker.
    pub fn new(desired: Desired, config: WorkerConfig, guests: Arc<GuestPool>) -> Self {
        Self {
            guests,
            burned_micros: AtomicU64::new(0),
            last_call_failed: AtomicBool::new(false),
            quarantined_until: std::sync::Mutex::new(None),
            size_hint: [AtomicUsize::new(0), AtomicUsize::new(0)],
            restart: watch::Sender::new(0),
            name: desired.active.schema.name.clone(),
            config,
            desired: std::sync::RwLock::new(desired),
            control: watch::Sender::new(0),
            stopped: CancellationToken::new(),
            progress: watch::Sender::new(OutboxCursor::START),
            lease_held: AtomicBool::new(false),
            events_applied: AtomicU64::new(0),
            last_deploy_error: std::sync::Mutex::new(None),
            dry_run: false,
        }
    }

    /// A projector that only runs a dry run's batches ([`Track::DryRun`]); it has no worker.
    pub fn for_dry_run(desired: Desired, config: WorkerConfig, guests: Arc<GuestPool>) -> Self {
        Self {
            dry_run: true,
            ..Self::new(desired, config, guests)
        }
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the projection should run now.
    pub fn desired(&self) -> Desired {
        match self.desired.read() {
            Ok(desired) => desired.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The live version.
    pub fn active(&self) -> Active {
        self.desired().active
    }

    /// Replaces what the projection should run; the worker picks it up at its next batch.
    pub fn set_desired(&self, desired: Desired) {
        match self.desired.write() {
            Ok(mut slot) => *slot = desired,
            Err(poisoned) => *poisoned.into_inner() = desired,
        }
        self.control.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes the worker and clears a given-up state (an operator's reload or resume).
    pub fn poke(&self) {
        self.control.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Makes the worker abandon what it is doing (a hung batch: nothing of it commits) and start
    /// again from its checkpoint, with a fresh lease connection. Used by stall detection.
    pub fn restart(&self) {
        self.restart.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Ends the worker for good (the projection was deleted).
    pub fn stop(&self) {
        self.stopped.cancel();
    }

    /// Whether the projection was deleted and its worker told to end.
    pub fn is_stopped(&self) -> bool {
        self.stopped.is_cancelled()
    }

    /// Records why the last deploy of this projection from the directory failed (`None`: it
    /// succeeded).
    pub fn set_last_deploy_error(&self, error: Option<String>) {
        match self.last_deploy_error.lock() {
            Ok(mut slot) => *slot = error,
            Err(poisoned) => *poisoned.into_inner() = error,
        }
    }

    /// Why the last deploy of this projection from the directory failed, if it did.
    pub fn last_deploy_error(&self) -> Option<String> {
        match self.last_deploy_error.lock() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
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

    /// Records that this process's view of the live checkpoint moved (a cut-over).
    pub fn note_progress(&self, cursor: OutboxCursor) {
        self.progress.send_replace(cursor);
    }
}

/// What a worker needs besides its projector.
#[derive(Clone)]
pub struct WorkerContext {
    /// How to open the dedicated connection that holds the lease and applies the batches.
    pub connect: PgConnectOptions,
    /// The shared pool, for what runs outside the batch's transaction.
    pub pool: PgPool,
    /// Outbox notifications: a new row may be waiting.
    pub wake: Wake,
    /// Cancelled when the process shuts down.
    pub shutdown: CancellationToken,
    /// Reconciles with the registry and cuts rebuilds over.
    pub supervisor: Arc<dyn Supervisor>,
}

/// A boxed future, for the [`Supervisor`] seam.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
/// Why a [`Supervisor`] request failed (the worker logs it and retries).
pub type SupervisorError = Box<dyn std::error::Error + Send + Sync>;

/// What a worker asks of the runtime around it. `wallex-control`'s `Projections` implements it;
/// through this seam the worker depends on neither the registry, reconciliation nor the rebuild
/// machinery.
pub trait Supervisor: Send + Sync + 'static {
    /// Makes this process run what the registry says for `projection` (after a lease is taken,
    /// a checkpoint moved under the worker, or a cut-over failed).
    fn reconcile<'a>(&'a self, projection: &'a str) -> BoxFuture<'a, Result<(), SupervisorError>>;
    /// Switches `projector`'s caught-up rebuild (`target`) live, on the lease connection.
    fn cut_over<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        projector: &'a Projector,
        target: &'a Active,
    ) -> BoxFuture<'a, Result<(), SupervisorError>>;
    /// `projector`'s drift shadow (`target`) stands at the live checkpoint: take the consistent
    /// cut (a snapshot of the live and the shadow tables, while the worker holds) and start
    /// comparing them; the worker goes on once the snapshot is taken.
    fn drift_cut<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        projector: &'a Projector,
        target: &'a Active,
    ) -> BoxFuture<'a, Result<(), SupervisorError>>;
    /// Marks `projection`'s rebuild failed with `error` after its retries.
    fn fail_rebuild<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        projection: &'a str,
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), SupervisorError>>;
    /// Events per batch of a rebuild.
    fn rebuild_batch_size(&self) -> u32;
}

/// Runs a projection's worker until shutdown or until the projection is deleted.
pub async fn run(projector: Arc<Projector>, mut ctx: WorkerContext) {
    let span = tracing::info_span!("projection_worker", projection = projector.name());
    async move {
        let mut control = projector.control.subscribe();
        let mut restart = projector.restart.subscribe();
        loop {
            if ctx.shutdown.is_cancelled() || projector.is_stopped() {
                return;
            }
            if projector.desired().paused {
                tracing::info!("paused");
                tokio::select! {
                    _ = control.changed() => continue,
                    _ = projector.stopped.cancelled() => return,
                    _ = ctx.shutdown.cancelled() => return,
                }
            }
            let Some((mut conn, pid)) = lease::acquire(&projector, &ctx, &mut control).await else {
                continue;
            };
            projector.lease_held.store(true, Ordering::Relaxed);
            tracing::info!("lease acquired");
            // Another instance may have changed the projection while this one waited.
            if let Err(error) = ctx.supervisor.reconcile(projector.name()).await {
                tracing::warn!(%error, "cannot reconcile with the registry");
            }
            restart.borrow_and_update();
            let outcome = tokio::select! {
                outcome = process(&projector, &mut conn, &mut ctx, &mut control) => outcome,
                _ = restart.changed() => Outcome::Restart,
            };
            projector.lease_held.store(false, Ordering::Relaxed);
            if matches!(outcome, Outcome::Restart) {
                // The abandoned batch may be stuck in a statement: its backend goes, and with it
                // the batch's transaction, its row locks and the lease. Terminated while the
                // connection is still open, so that the pid cannot have been reused meanwhile.
                lease::terminate(&ctx.pool, pid).await;
                drop(conn);
            } else {
                // Closing the connection releases the advisory lock.
                let _ = conn.close().await;
            }
            match outcome {
                Outcome::Stop => return,
                Outcome::Paused => {}
                Outcome::Restart => tracing::warn!("worker restarted from its checkpoint"),
                Outcome::LeaseLost => {
                    tracing::warn!("lease connection lost; trying to take the lease again");
                    tokio::select! {
                        _ = tokio::time::sleep(projector.config.lease_retry) => {}
                        _ = ctx.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }
    .instrument(span)
    .await
}

enum Outcome {
    Stop,
    Paused,
    LeaseLost,
    /// [`Projector::restart`] was called.
    Restart,
}

/// Consecutive failures of one track and whether the worker gave up on it.
#[derive(Default)]
struct Failures {
    count: u32,
    gave_up: bool,
}

async fn process(
    projector: &Projector,
    conn: &mut PgConnection,
    ctx: &mut WorkerContext,
    control: &mut watch::Receiver<u64>,
) -> Outcome {
    let config = projector.config;
    let rebuild_batch = ctx.supervisor.rebuild_batch_size();
    let mut live = Failures::default();
    let mut rebuild = Failures::default();
    let mut control_seen = *control.borrow_and_update();
    let mut shadow_not_before = tokio::time::Instant::now();
    loop {
        if ctx.shutdown.is_cancelled() || projector.is_stopped() {
            return Outcome::Stop;
        }
        let control_now = *control.borrow_and_update();
        if control_now != control_seen {
            // An operator changed something (deploy, reload, resume, a new rebuild): retry from
            // scratch.
            control_seen = control_now;
            live = Failures::default();
            rebuild = Failures::default();
        }
        let desired = projector.desired();
        if desired.paused {
            return Outcome::Paused;
        }
        // Mark notifications up to here as seen: any later commit wakes the next wait.
        ctx.wake.borrow_and_update();
        let started = tokio::time::Instant::now();
        let mut busy = false;
        let mut errored = false;
        let mut live_moved = false;
        if !live.gave_up {
            match projector
                .apply_track(
                    conn,
                    &ctx.pool,
                    Track::Live,
                    &desired.active,
                    config.batch_size,
                )
                .await
            {
                Ok(outcome) => {
                    live = Failures::default();
                    busy |= outcome.more;
                    live_moved = outcome.consumed > 0;
                }
                Err(error) => {
                    match handle_failure(projector, conn, ctx, Track::Live, &mut live, error).await
                    {
                        Some(outcome) => return outcome,
                        None => errored = true,
                    }
                }
            }
        }
        // A drift check's replay is background work: while events flow, it yields (see
        // [`SHADOW_YIELD`]).
        let shadow_waits = live_moved && tokio::time::Instant::now() < shadow_not_before;
        if let Some(target) = desired
            .rebuild
            .filter(|t| !t.failed)
            .filter(|t| !(t.drift && shadow_waits))
        {
            if !rebuild.gave_up {
                let step = rebuild_step(
                    projector,
                    conn,
                    ctx,
                    &target,
                    rebuild_batch,
                    &mut rebuild,
                    &mut shadow_not_before,
                )
                .await;
                match step {
                    Ok(Step::Busy) => busy = true,
                    Ok(Step::Errored) => errored = true,
                    Err(outcome) => return outcome,
                }
            }
        }
        // Guest time burned by failed calls is paid for with a wait (see `idle_delay`).
        let burned = projector.take_burned();
        let penalised = !burned.is_zero();
        if busy && !errored && !penalised {
            continue;
        }
        let delay = idle_delay(
            projector,
            ctx,
            errored,
            live.count.max(rebuild.count),
            burned,
        )
        .await;
        let delay = if shadow_waits {
            // The replay's turn comes back even if no event wakes the worker.
            delay.min(shadow_not_before.saturating_duration_since(tokio::time::Instant::now()))
        } else {
            delay
        };
        let notified = tokio::select! {
            _ = ctx.wake.changed(), if !errored && !penalised => true,
            _ = control.changed() => false,
            _ = tokio::time::sleep(delay) => false,
            _ = projector.stopped.cancelled() => return Outcome::Stop,
            _ = ctx.shutdown.cancelled() => return Outcome::Stop,
        };
        if notified {
            // Under load, commits notify faster than batches are worth starting: wait out the
            // rest of the interval so that the next batch takes them all at once.
            tokio::select! {
                _ = tokio::time::sleep_until(started + config.min_batch_interval) => {}
                _ = control.changed() => {}
                _ = projector.stopped.cancelled() => return Outcome::Stop,
                _ = ctx.shutdown.cancelled() => return Outcome::Stop,
            }
        }
    }
}

/// Records a failed batch of `track`. Returns an outcome if the worker must leave the loop.
/// What one batch of the rebuild (or drift shadow) track left to do.
enum Step {
    /// It moved or cut over: the next batch comes at once.
    Busy,
    /// It failed (counted in the track's [`Failures`]), or its cut-over did: the worker backs off.
    Errored,
}

/// One batch of `target`'s track (a rebuild, or a drift check's shadow) and, once it has caught
/// up, its cut-over (readers and the live checkpoint switch) or its drift cut (compared with the
/// live tables). A shadow's replay yields to the live track: `shadow_not_before` is pushed back
/// by [`SHADOW_YIELD`] times the batch's duration. `Err` ends the worker's loop.
async fn rebuild_step(
    projector: &Projector,
    conn: &mut PgConnection,
    ctx: &WorkerContext,
    target: &RebuildTarget,
    batch_size: u32,
    failures: &mut Failures,
    shadow_not_before: &mut tokio::time::Instant,
) -> Result<Step, Outcome> {
    let track = if target.drift {
        Track::Shadow
    } else {
        Track::Rebuild
    };
    let shadow_started = tokio::time::Instant::now();
    let result = projector
        .apply_track(conn, &ctx.pool, track, &target.active, batch_size)
        .await;
    if target.drift {
        *shadow_not_before = tokio::time::Instant::now() + shadow_started.elapsed() * SHADOW_YIELD;
    }
    match result {
        Ok(outcome) if !outcome.more => {
            *failures = Failures::default();
            // Caught up: a rebuild switches readers and the live checkpoint over; a drift
            // shadow, at the live checkpoint, is compared with the live tables.
            let done = if target.drift {
                ctx.supervisor
                    .drift_cut(conn, projector, &target.active)
                    .await
            } else {
                ctx.supervisor
                    .cut_over(conn, projector, &target.active)
                    .await
            };
            match done {
                Ok(()) => Ok(Step::Busy),
                Err(error) => {
                    tracing::warn!(%error, ?track, "cut-over failed; retrying");
                    if let Err(error) = ctx.supervisor.reconcile(projector.name()).await {
                        tracing::warn!(%error, "cannot reconcile with the registry");
                    }
                    Ok(Step::Errored)
                }
            }
        }
        Ok(_) => {
            *failures = Failures::default();
            Ok(Step::Busy)
        }
        Err(error) => match handle_failure(projector, conn, ctx, track, failures, error).await {
            Some(outcome) => Err(outcome),
            None => Ok(Step::Errored),
        },
    }
}

/// How long an idle or failing worker waits before its next batch (unless an outbox
/// notification wakes it first). After a failure, the configured backoff for `failures` in a
/// row; calls that failed burned guest time (under `skip` too, where the batch itself succeeds),
/// and the worker waits [`FAILED_GUEST_TIME_PENALTY`] times that long, so a component failing at
/// its limit gets at most 1/(1+penalty) of a guest thread whatever the backoff. Idle: the poll
/// interval, or [`HIDDEN_ROWS_RETRY`] while outbox rows wait behind an open transaction.
async fn idle_delay(
    projector: &Projector,
    ctx: &WorkerContext,
    errored: bool,
    failures: u32,
    burned: Duration,
) -> Duration {
    let config = projector.config;
    if errored || !burned.is_zero() {
        let backoff = if errored {
            config.backoff(failures.max(1))
        } else {
            Duration::ZERO
        };
        return backoff.max(burned.saturating_mul(FAILED_GUEST_TIME_PENALTY));
    }
    match has_hidden_rows(&ctx.pool, projector).await {
        Ok(true) => HIDDEN_ROWS_RETRY,
        Ok(false) => config.poll_interval,
        Err(error) => {
            tracing::warn!(%error, "cannot check for pending outbox rows");
            config.poll_interval
        }
    }
}

async fn handle_failure(
    projector: &Projector,
    conn: &mut PgConnection,
    ctx: &WorkerContext,
    track: Track,
    failures: &mut Failures,
    error: BatchError,
) -> Option<Outcome> {
    if let BatchError::Checkpoint(CheckpointError::Moved(_) | CheckpointError::Missing(_)) = error {
        // Reset by an operator, cut over, or applied elsewhere while this batch ran: not a
        // failure of the projection; reload what the registry says and start again.
        tracing::info!(
            ?track,
            "checkpoint moved during the batch; retrying from it"
        );
        if let Err(error) = ctx.supervisor.reconcile(projector.name()).await {
            tracing::warn!(%error, "cannot reconcile with the registry");
        }
        return None;
    }
    if error.is_connection_lost() {
        tracing::warn!(%error, "batch failed on a lost connection");
        return Some(Outcome::LeaseLost);
    }
    let config = projector.config;
    metrics::counter!(
        wallex_telemetry::catalogue::PROJECTOR_BATCHES_FAILED_TOTAL,
        "projection" => projector.name().to_owned()
    )
    .increment(1);
    failures.count += 1;
    let gave_up = failures.count > config.max_retries;
    let message = error.to_string();
    let recorded = match track {
        Track::Live => {
            let status = if gave_up {
                Status::Failed
            } else {
                Status::Failing
            };
            tracing::error!(error = %message, attempt = failures.count, ?status, "batch failed; nothing applied");
            // On the lease connection: it first rolls back the failed transaction, which
            // still holds the checkpoint row lock.
            checkpoint::record_failure(&mut *conn, projector.name(), status, &message)
                .await
                .map_err(|e| e.to_string())
        }
        Track::Rebuild | Track::Shadow | Track::DryRun(_) => {
            tracing::error!(error = %message, attempt = failures.count, gave_up, ?track, "rebuild batch failed; the live version is untouched");
            if gave_up {
                ctx.supervisor
                    .fail_rebuild(conn, projector.name(), &message)
                    .await
                    .map_err(|e| e.to_string())
            } else {
                Ok(())
            }
        }
    };
    if let Err(error) = recorded {
        tracing::warn!(%error, "cannot record the failure");
        return Some(Outcome::LeaseLost);
    }
    if gave_up {
        failures.gave_up = true;
        if track == Track::Live {
            tracing::error!(
                retries = config.max_retries,
                "projection stopped after repeated failures; deploy a fix or reload it"
            );
        }
    }
    None
}

/// Whether committed outbox rows exist after the checkpoint that the gap-safe reader cannot return
/// yet (an older transaction is still running). Such rows become readable without a notification
/// when that transaction ends, so the worker re-checks soon instead of at the poll interval.
async fn has_hidden_rows(pool: &PgPool, projector: &Projector) -> Result<bool, OutboxError> {
    let cursor = *projector.progress.borrow();
    outbox::has_rows_after(pool, cursor).await
}
