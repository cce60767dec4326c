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

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::checkpoint::{self, CheckpointError, Status};
use super::config::Policy;
use super::engine::{to_guest_event, wit, ComponentError, LoadedComponent, RuntimeLimits};
use super::guest_pool::{GuestPool, GuestPoolError};
use super::mutation::{self, MutationError};
use super::registry::REGISTRY_CHANNEL;
use super::schema::ProjectionSchema;
use super::search::Search;
use super::Projections;
use wallex_core::outbox::{self, OutboxCursor, OutboxError};

/// The channel PostgreSQL notifies on when outbox rows commit (see the projections migration).
pub const OUTBOX_CHANNEL: &str = "wallex_outbox";
/// Prefix of the advisory-lock name of a projection's lease.
pub const LEASE_PREFIX: &str = "wallex-projection:";
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
    /// The backoff after a failed batch doubles with every consecutive failure up to this.
    pub max_backoff: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            batch_size: 200,
            poll_interval: Duration::from_millis(1000),
            error_backoff: Duration::from_millis(5000),
            max_retries: 3,
            lease_retry: Duration::from_millis(1000),
            max_backoff: Duration::from_millis(super::config::DEFAULT_MAX_BACKOFF_MS),
        }
    }
}

impl WorkerConfig {
    /// The pause after `failures` consecutive failures: `error_backoff · 2^(failures-1)`, at most
    /// `max_backoff`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.error_backoff
            .saturating_mul(1_u32 << doublings)
            .min(self.max_backoff.max(self.error_backoff))
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
    #[error("event at position {position} ({event_type} {event_id}): {message}")]
    Poison {
        position: i64,
        event_id: String,
        event_type: String,
        message: String,
    },
    #[error(transparent)]
    Guest(#[from] GuestPoolError),
    /// PostgreSQL refused data of validated mutations (see [`mutation::data_rejection`]); the
    /// worker then applies the batch range by range to attribute it.
    #[error("{0}")]
    Data(String),
}

impl BatchError {
    /// Whether the component (not the database or the host) caused the failure: the kind a
    /// single poison event explains, found by searching the batch (see `search.rs`).
    fn is_component_failure(&self) -> bool {
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
}

impl BatchHandler for LoadedComponent {
    fn origin(&self) -> &str {
        LoadedComponent::origin(self)
    }

    fn handle(
        &self,
        batch: &[wit::Event],
        limits: &RuntimeLimits,
    ) -> Result<Vec<wit::Mutation>, ComponentError> {
        LoadedComponent::handle(self, batch, limits)
    }
}

/// Runs the handler on (part of) a batch and validates its output against the limits and the
/// declaration.
fn attempt(
    handler: &dyn BatchHandler,
    schema: &ProjectionSchema,
    limits: &RuntimeLimits,
    batch: &[wit::Event],
) -> Result<(Vec<wit::Mutation>, mutation::Plan), BatchError> {
    let mutations = handler.handle(batch, limits)?;
    mutation::check_budget(&mutations, limits.max_mutations, limits.max_batch_bytes)?;
    let plan = mutation::plan(schema, &mutations)?;
    Ok((mutations, plan))
}

/// What a call on a range of the batch returned, and the guest time it took.
type CallOutcome = (
    Result<(Vec<wit::Mutation>, mutation::Plan), BatchError>,
    Duration,
);

/// What the evaluation of a batch settled (see [`Search`]).
struct Evaluation {
    /// Events `[0, settled)` of the guest batch are settled.
    settled: usize,
    /// What to apply for them (empty when applied range by range already).
    plan: mutation::Plan,
    /// Poison events (index in the guest batch, why) to dead-letter, under `skip`.
    poison: Vec<(usize, String)>,
    /// Under `pause`: the first poison event, reported after the prefix before it commits.
    paused: Option<BatchError>,
    /// Size the unresolved rest was narrowed to, when something is left.
    narrowed: Option<usize>,
}

impl Evaluation {
    fn whole(len: usize, plan: mutation::Plan) -> Self {
        Self {
            settled: len,
            plan,
            poison: Vec::new(),
            paused: None,
            narrowed: None,
        }
    }
}

/// The index in `batch` of the event a component's error names, if it names one.
fn named_event(error: &BatchError, batch: &[wit::Event]) -> Option<usize> {
    match error {
        BatchError::Component(ComponentError::Rejected {
            position: Some(position),
            ..
        }) => batch.iter().position(|e| e.global_position == *position),
        _ => None,
    }
}

/// One version of a projection as this process runs it: the declaration (with the namespace its
/// tables live in) and the code that handles batches.
#[derive(Clone)]
pub struct Active {
    pub schema: Arc<ProjectionSchema>,
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
    pub active: Active,
    /// A failed rebuild is left alone (the live version keeps running) until it is replaced or
    /// cancelled.
    pub failed: bool,
}

/// What the registry says a projection should run; swapped by reconciliation, read by the worker
/// at every batch boundary.
#[derive(Clone)]
pub struct Desired {
    pub active: Active,
    pub rebuild: Option<RebuildTarget>,
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
}

impl Track {
    fn index(self) -> usize {
        match self {
            Self::Live => 0,
            Self::Rebuild => 1,
        }
    }
}

/// What one batch of a track did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Outbox rows consumed (0 when caught up).
    pub consumed: usize,
    /// Whether more rows are known to wait (the batch was full, or only part of it settled).
    pub more: bool,
}

/// A projection and its worker's shared state.
pub struct Projector {
    name: String,
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
    /// Counters since this process started (`GET /metrics`).
    pub counters: Counters,
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
}

/// What a projector did in this process, for metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub batches_applied: AtomicU64,
    pub batches_failed: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Guest time of all calls, in microseconds.
    pub guest_micros: AtomicU64,
    /// Guest time of the calls that failed, in microseconds.
    pub failed_guest_micros: AtomicU64,
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
    pub fn new(desired: Desired, config: WorkerConfig, guests: Arc<GuestPool>) -> Self {
        Self {
            guests,
            counters: Counters::default(),
            burned_micros: AtomicU64::new(0),
            last_call_failed: AtomicBool::new(false),
            quarantined_until: std::sync::Mutex::new(None),
            size_hint: [AtomicUsize::new(0), AtomicUsize::new(0)],
            name: desired.active.schema.name.clone(),
            config,
            desired: std::sync::RwLock::new(desired),
            control: watch::Sender::new(0),
            stopped: CancellationToken::new(),
            progress: watch::Sender::new(OutboxCursor::START),
            lease_held: AtomicBool::new(false),
            events_applied: AtomicU64::new(0),
            last_deploy_error: std::sync::Mutex::new(None),
        }
    }

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

    /// Ends the worker for good (the projection was deleted).
    pub fn stop(&self) {
        self.stopped.cancel();
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.is_cancelled()
    }

    pub fn set_last_deploy_error(&self, error: Option<String>) {
        match self.last_deploy_error.lock() {
            Ok(mut slot) => *slot = error,
            Err(poisoned) => *poisoned.into_inner() = error,
        }
    }

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

    /// Applies at most one live batch on `conn` (which must hold the lease); `pool` records a
    /// failure as soon as it is seen.
    pub async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        pool: &PgPool,
    ) -> Result<BatchOutcome, BatchError> {
        let active = self.active();
        self.apply_track(conn, pool, Track::Live, &active, self.config.batch_size)
            .await
    }

    /// Applies at most one batch of `track` with `version` on `conn`. When PostgreSQL refuses the
    /// data of a batch, it is applied again range by range (savepoints) so that the refusal is
    /// attributed to its event(s) like any failure of the component.
    pub async fn apply_track(
        &self,
        conn: &mut PgConnection,
        pool: &PgPool,
        track: Track,
        version: &Active,
        batch_size: u32,
    ) -> Result<BatchOutcome, BatchError> {
        let first = self
            .apply_track_once(conn, pool, track, version, batch_size, false)
            .await;
        let reason = match first {
            Err(BatchError::Data(reason)) => reason,
            other => return other,
        };
        tracing::info!(
            projection = self.name(),
            ?track,
            %reason,
            "PostgreSQL refused the batch's data; applying it range by range to find the events"
        );
        self.apply_track_once(conn, pool, track, version, batch_size, true)
            .await
    }

    async fn apply_track_once(
        &self,
        conn: &mut PgConnection,
        pool: &PgPool,
        track: Track,
        version: &Active,
        batch_size: u32,
        careful: bool,
    ) -> Result<BatchOutcome, BatchError> {
        let name = self.name();
        let key = match track {
            Track::Live => name.to_owned(),
            Track::Rebuild => checkpoint::rebuild_key(name),
        };
        let schema = &version.schema;
        let hint = self.size_hint[track.index()].load(Ordering::Relaxed);
        let limit = match u32::try_from(hint) {
            Ok(hint) if hint > 0 => hint.min(batch_size),
            _ => batch_size,
        };
        let started = std::time::Instant::now();
        let mut tx = conn.begin().await?;
        if track == Track::Rebuild {
            // A rebuild's tables are rebuilt from the log if lost: an asynchronous commit (the
            // checkpoint and tables commit or vanish together) saves a flush per batch.
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
        }
        let cursor = checkpoint::cursor(&mut tx, &key).await?;
        let events = outbox::read_batch(&mut *tx, cursor, limit).await?;
        let read = started.elapsed();
        if events.is_empty() {
            tx.rollback().await?;
            if track == Track::Live {
                // Another process may have moved the checkpoint while it held the lease.
                self.progress.send_if_modified(|known| {
                    let changed = *known != cursor;
                    *known = cursor;
                    changed
                });
            }
            return Ok(BatchOutcome {
                consumed: 0,
                more: false,
            });
        }
        // The guest batch, and where each of its events is in the outbox rows read.
        let mut rows_of = Vec::new();
        let batch: Vec<_> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| schema.subscriptions.includes(&e.event_type))
            .map(|(row, e)| {
                rows_of.push(row);
                to_guest_event(e)
            })
            .collect();
        let mut rows = 0;
        let (mut handled, mut applied) = (read, read);
        let mut consumed = events.len();
        let mut paused = None;
        let mut narrowed = None;
        if !batch.is_empty() {
            let batch = Arc::new(batch);
            let evaluation = self
                .evaluate(&mut tx, pool, &key, version, &batch, careful)
                .await?;
            handled = started.elapsed();
            paused = evaluation.paused;
            narrowed = evaluation.narrowed;
            if let Some(&row) = rows_of.get(evaluation.settled) {
                // Only the rows before the first unsettled event are consumed.
                consumed = row;
            }
            if consumed == 0 {
                // Nothing settled: the first event is the poison (under `pause`).
                tx.rollback().await?;
                self.size_hint[track.index()].store(1, Ordering::Relaxed);
                return Err(paused.unwrap_or_else(|| {
                    BatchError::Data("no event of the batch could be settled".to_owned())
                }));
            }
            rows = match mutation::apply(&mut tx, &evaluation.plan).await {
                Ok(rows) => rows,
                Err(error) => {
                    return Err(match mutation::data_rejection(&error) {
                        Some(reason) if !careful => BatchError::Data(reason),
                        _ => BatchError::Database(error),
                    })
                }
            };
            for (index, error) in &evaluation.poison {
                let event = &batch[*index];
                record_dead_letter(&mut tx, name, event, error).await?;
                tracing::warn!(
                    projection = name,
                    ?track,
                    position = event.global_position,
                    event_id = %event.event_id,
                    %error,
                    "poison event skipped and dead-lettered (on_poison = skip)"
                );
            }
            self.counters
                .dead_letters
                .fetch_add(evaluation.poison.len() as u64, Ordering::Relaxed);
            applied = started.elapsed();
        }
        let last = events[consumed - 1].cursor();
        wallex_core::failpoint::hit("projection-after-apply").await;
        let counted = i64::try_from(consumed).unwrap_or(i64::MAX);
        checkpoint::advance_from(&mut tx, &key, &schema.namespace, cursor, last, counted).await?;
        wallex_core::failpoint::hit("projection-before-commit").await;
        tx.commit().await?;
        wallex_core::failpoint::hit("projection-after-commit").await;
        let committed = started.elapsed();
        self.counters
            .batches_applied
            .fetch_add(1, Ordering::Relaxed);
        if track == Track::Live {
            self.events_applied
                .fetch_add(consumed as u64, Ordering::Relaxed);
            self.progress.send_replace(last);
        }
        // The next batch: as narrowed by the search, or growing back to the configured size.
        let next_hint = match (paused.is_some(), narrowed, hint) {
            (true, _, _) => 1,
            (false, Some(size), _) => size.max(1),
            (false, None, 0) => 0,
            (false, None, hint) => hint.saturating_mul(2),
        };
        let next_hint = if next_hint >= batch_size as usize {
            0
        } else {
            next_hint
        };
        self.size_hint[track.index()].store(next_hint, Ordering::Relaxed);
        tracing::debug!(
            projection = name,
            ?track,
            events = consumed,
            rows,
            to = ?last,
            read_us = read.as_micros(),
            handled_us = handled.as_micros(),
            applied_us = applied.as_micros(),
            committed_us = committed.as_micros(),
            "batch applied"
        );
        if let Some(poison) = paused {
            return Err(poison);
        }
        Ok(BatchOutcome {
            consumed,
            more: events.len() >= limit as usize || consumed < events.len(),
        })
    }

    /// Whether the component's calls run on the quarantine thread now.
    pub fn in_quarantine(&self) -> bool {
        if self.last_call_failed.load(Ordering::Relaxed) {
            return true;
        }
        let until = match self.quarantined_until.lock() {
            Ok(until) => *until,
            Err(poisoned) => *poisoned.into_inner(),
        };
        until.is_some_and(|until| Instant::now() < until)
    }

    /// Guest time burned by failing calls since the last look, and resets it.
    fn take_burned(&self) -> Duration {
        Duration::from_micros(self.burned_micros.swap(0, Ordering::Relaxed))
    }

    /// Calls the component on `range` of `batch` on a guest thread (the quarantine thread while
    /// it is quarantined) and keeps the books of failing calls.
    async fn call_range(
        &self,
        version: &Active,
        batch: &Arc<Vec<wit::Event>>,
        range: Range<usize>,
    ) -> Result<CallOutcome, BatchError> {
        let handler = Arc::clone(&version.handler);
        let schema = Arc::clone(&version.schema);
        let limits = version.policy.limits;
        let events = Arc::clone(batch);
        // The events travel to the guest thread by reference count (no copy).
        let job = move || {
            let started = Instant::now();
            let outcome = attempt(&*handler, &schema, &limits, &events[range]);
            (outcome, started.elapsed())
        };
        let (outcome, elapsed) = if self.in_quarantine() {
            self.guests.run_quarantined(job).await?
        } else {
            self.guests.run(job).await?
        };
        let failed = matches!(&outcome, Err(error) if error.is_component_failure());
        self.last_call_failed.store(failed, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.counters
            .guest_micros
            .fetch_add(micros, Ordering::Relaxed);
        if failed {
            self.burned_micros.fetch_add(micros, Ordering::Relaxed);
            self.counters
                .failed_guest_micros
                .fetch_add(micros, Ordering::Relaxed);
            if elapsed >= QUARANTINE_BURN {
                let until = Instant::now() + QUARANTINE_WINDOW;
                match self.quarantined_until.lock() {
                    Ok(mut slot) => *slot = Some(until),
                    Err(poisoned) => *poisoned.into_inner() = Some(until),
                }
            }
        }
        Ok((outcome, elapsed))
    }

    /// Evaluates a batch: the whole of it in one call, or, when that fails because of the
    /// component, a bounded [`Search`] for the poison events. With `careful`, every range's
    /// statements run in a savepoint as soon as its call succeeds, so that a refusal by PostgreSQL
    /// counts as that range failing.
    async fn evaluate(
        &self,
        conn: &mut PgConnection,
        pool: &PgPool,
        key: &str,
        version: &Active,
        batch: &Arc<Vec<wit::Event>>,
        careful: bool,
    ) -> Result<Evaluation, BatchError> {
        let len = batch.len();
        let (whole, _) = self.call_range(version, batch, 0..len).await?;
        let failure = match whole {
            Ok((_, plan)) => {
                if !careful {
                    return Ok(Evaluation::whole(len, plan));
                }
                let rejected = mutation::apply_or_reject(conn, &plan).await?;
                match rejected {
                    None => return Ok(Evaluation::whole(len, mutation::Plan::default())),
                    Some(reason) => BatchError::Data(reason),
                }
            }
            Err(error) if error.is_component_failure() => error,
            Err(error) => return Err(error),
        };
        let message = failure.to_string();
        // Shown from the first failed call on, not only once the search is over.
        if let Err(error) = checkpoint::mark_failing(pool, key, &message).await {
            tracing::warn!(%error, "cannot record the failing call");
        }
        let policy = version.policy;
        let mut search = Search::after_whole_failure(
            len,
            policy.limits.call_timeout,
            policy.on_poison,
            message,
            named_event(&failure, batch),
        );
        let mut good: Vec<wit::Mutation> = Vec::new();
        let mut good_bytes = 0_usize;
        while let Some(range) = search.next_range() {
            let (outcome, elapsed) = self.call_range(version, batch, range.clone()).await?;
            match outcome {
                Ok((_, plan)) if careful => {
                    let rejected = mutation::apply_or_reject(conn, &plan).await?;
                    match rejected {
                        None => search.succeeded(range, elapsed),
                        Some(reason) => search.failed(range, elapsed, reason, None),
                    }
                }
                Ok((mutations, _)) => {
                    let bytes = mutation::output_bytes(&mutations);
                    let over = good.len().saturating_add(mutations.len())
                        > policy.limits.max_mutations
                        || good_bytes.saturating_add(bytes) > policy.limits.max_batch_bytes;
                    if over && !good.is_empty() {
                        // What is kept stays within one call's output limits.
                        search.output_full(elapsed);
                        break;
                    }
                    good.extend(mutations);
                    good_bytes = good_bytes.saturating_add(bytes);
                    search.succeeded(range, elapsed);
                }
                Err(error) if error.is_component_failure() => {
                    let named = named_event(&error, batch);
                    search.failed(range, elapsed, error.to_string(), named);
                }
                Err(error) => return Err(error),
            }
        }
        tracing::info!(
            projection = self.name(),
            calls = search.calls(),
            guest_ms = search.spent().as_millis(),
            settled = search.settled(),
            of = len,
            "searched a failing batch for its poison events"
        );
        let plan = if careful {
            mutation::Plan::default()
        } else {
            mutation::plan(&version.schema, &good)?
        };
        let paused = search.paused_at().map(|(index, message)| {
            let event = &batch[*index];
            BatchError::Poison {
                position: event.global_position,
                event_id: event.event_id.clone(),
                event_type: event.event_type.clone(),
                message: message.clone(),
            }
        });
        let settled = search.settled();
        Ok(Evaluation {
            settled,
            plan,
            poison: search.take_poison(),
            paused,
            narrowed: (settled < len).then(|| search.narrowed()),
        })
    }

    /// Runs one event through `version` on a guest thread and validates the result (dead-letter
    /// replays): the plan to apply, or why it still fails.
    pub async fn evaluate_one(
        &self,
        version: &Active,
        event: wit::Event,
    ) -> Result<mutation::Plan, BatchError> {
        let (outcome, _) = self
            .call_range(version, &Arc::new(vec![event]), 0..1)
            .await?;
        let (_, plan) = outcome?;
        Ok(plan)
    }

    /// Records that this process's view of the live checkpoint moved (a cut-over).
    pub fn note_progress(&self, cursor: OutboxCursor) {
        self.progress.send_replace(cursor);
    }
}

/// Records a skipped event in the batch's transaction (again: one more attempt).
async fn record_dead_letter(
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
    .bind(super::text::clip(error, super::text::MAX_ERROR_BYTES))
    .execute(conn)
    .await?;
    Ok(())
}

/// Wake-ups for workers: bumped on every outbox notification.
pub type Wake = watch::Receiver<u64>;

/// What the listener hands out: outbox wake-ups for workers, registry changes for reconciliation.
pub struct Signals {
    pub outbox: Wake,
    pub registry: watch::Receiver<u64>,
}

/// Listens on [`OUTBOX_CHANNEL`] and [`REGISTRY_CHANNEL`] and bumps the matching counter on every
/// notification (both after every reconnect, since notifications may have been missed). Ends at
/// shutdown.
pub fn spawn_listener(
    pool: PgPool,
    shutdown: CancellationToken,
) -> (Signals, tokio::task::JoinHandle<()>) {
    let (outbox_tx, outbox_rx) = watch::channel(0_u64);
    let (registry_tx, registry_rx) = watch::channel(0_u64);
    let bump = |tx: &watch::Sender<u64>| tx.send_modify(|n| *n = n.wrapping_add(1));
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
                if let Err(error) = listener
                    .listen_all([OUTBOX_CHANNEL, REGISTRY_CHANNEL])
                    .await
                {
                    tracing::warn!(%error, "outbox listener cannot LISTEN");
                    tokio::select! {
                        _ = tokio::time::sleep(LISTENER_RETRY) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
                bump(&outbox_tx);
                bump(&registry_tx);
                loop {
                    tokio::select! {
                        received = listener.try_recv() => match received {
                            Ok(Some(notification)) if notification.channel() == REGISTRY_CHANNEL => {
                                bump(&registry_tx)
                            }
                            Ok(Some(_)) => bump(&outbox_tx),
                            // The connection was lost; try_recv reconnects on the next call.
                            Ok(None) => {
                                bump(&outbox_tx);
                                bump(&registry_tx);
                            }
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
    (
        Signals {
            outbox: outbox_rx,
            registry: registry_rx,
        },
        task,
    )
}

/// What a worker needs besides its projector.
#[derive(Clone)]
pub struct WorkerContext {
    pub connect: PgConnectOptions,
    pub pool: PgPool,
    pub wake: Wake,
    pub shutdown: CancellationToken,
    /// Reconciles with the registry and cuts rebuilds over.
    pub projections: Projections,
}

/// Runs a projection's worker until shutdown or until the projection is deleted.
pub async fn run(projector: Arc<Projector>, mut ctx: WorkerContext) {
    let span = tracing::info_span!("projection_worker", projection = projector.name());
    async move {
        let mut control = projector.control.subscribe();
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
            let Some(mut conn) = acquire_lease(&projector, &ctx, &mut control).await else {
                continue;
            };
            projector.lease_held.store(true, Ordering::Relaxed);
            tracing::info!("lease acquired");
            // Another instance may have changed the projection while this one waited.
            if let Err(error) = ctx.projections.reconcile_one(projector.name()).await {
                tracing::warn!(%error, "cannot reconcile with the registry");
            }
            let outcome = process(&projector, &mut conn, &mut ctx, &mut control).await;
            projector.lease_held.store(false, Ordering::Relaxed);
            // Closing the connection releases the advisory lock.
            let _ = conn.close().await;
            match outcome {
                Outcome::Stop => return,
                Outcome::Paused => {}
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
}

/// Takes the lease, or returns `None` when told to stop or the projection's desired state
/// changed while waiting (the caller re-checks it).
async fn acquire_lease(
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
    let rebuild_batch = ctx.projections.config().rebuild_batch_size;
    let mut live = Failures::default();
    let mut rebuild = Failures::default();
    let mut control_seen = *control.borrow_and_update();
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
        let mut busy = false;
        let mut errored = false;
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
        if let Some(target) = desired.rebuild.filter(|t| !t.failed) {
            if !rebuild.gave_up {
                match projector
                    .apply_track(
                        conn,
                        &ctx.pool,
                        Track::Rebuild,
                        &target.active,
                        rebuild_batch,
                    )
                    .await
                {
                    Ok(outcome) if !outcome.more => {
                        rebuild = Failures::default();
                        // Caught up with the log: switch readers and the live checkpoint over.
                        match ctx
                            .projections
                            .cut_over(conn, projector, &target.active)
                            .await
                        {
                            Ok(()) => busy = true,
                            Err(error) => {
                                tracing::warn!(%error, "cut-over failed; retrying");
                                errored = true;
                                if let Err(error) =
                                    ctx.projections.reconcile_one(projector.name()).await
                                {
                                    tracing::warn!(%error, "cannot reconcile with the registry");
                                }
                            }
                        }
                    }
                    Ok(_) => {
                        rebuild = Failures::default();
                        busy = true;
                    }
                    Err(error) => match handle_failure(
                        projector,
                        conn,
                        ctx,
                        Track::Rebuild,
                        &mut rebuild,
                        error,
                    )
                    .await
                    {
                        Some(outcome) => return outcome,
                        None => errored = true,
                    },
                }
            }
        }
        // Calls that failed burned guest time (under `skip` too, where the batch itself
        // succeeds): the worker waits several times that long before its next batch, so a
        // component failing at its limit gets at most 1/(1+penalty) of a guest thread, whatever
        // the configured backoff.
        let burned = projector.take_burned();
        let penalised = !burned.is_zero();
        if busy && !errored && !penalised {
            continue;
        }
        let delay = if errored || penalised {
            let backoff = if errored {
                config.backoff(live.count.max(rebuild.count).max(1))
            } else {
                Duration::ZERO
            };
            backoff.max(burned.saturating_mul(FAILED_GUEST_TIME_PENALTY))
        } else {
            match has_hidden_rows(&ctx.pool, projector).await {
                Ok(true) => HIDDEN_ROWS_RETRY,
                Ok(false) => config.poll_interval,
                Err(error) => {
                    tracing::warn!(%error, "cannot check for pending outbox rows");
                    config.poll_interval
                }
            }
        };
        tokio::select! {
            _ = ctx.wake.changed(), if !errored && !penalised => {}
            _ = control.changed() => {}
            _ = tokio::time::sleep(delay) => {}
            _ = projector.stopped.cancelled() => return Outcome::Stop,
            _ = ctx.shutdown.cancelled() => return Outcome::Stop,
        }
    }
}

/// Records a failed batch of `track`. Returns an outcome if the worker must leave the loop.
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
        if let Err(error) = ctx.projections.reconcile_one(projector.name()).await {
            tracing::warn!(%error, "cannot reconcile with the registry");
        }
        return None;
    }
    if error.is_connection_lost() {
        tracing::warn!(%error, "batch failed on a lost connection");
        return Some(Outcome::LeaseLost);
    }
    let config = projector.config;
    projector
        .counters
        .batches_failed
        .fetch_add(1, Ordering::Relaxed);
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
        Track::Rebuild => {
            tracing::error!(error = %message, attempt = failures.count, gave_up, "rebuild batch failed; the live version is untouched");
            if gave_up {
                ctx.projections
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
