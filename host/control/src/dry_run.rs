//! Dry runs: a candidate component replayed over the live log into tables of its own, compared
//! with what is live, and never put live. Owns `projection_dry_runs`.
//!
//! Why it exists: a team's golden tests say what a projection does with the events they thought
//! of; the log holds the ones they did not. Before a version goes live an author wants to know
//! what it would write against the real log: does it fail on some event, how many rows would each
//! table hold, which rows would change compared with the live version.
//!
//! How, in order (one task per run, on the instance that accepted it):
//! 1. **Compile and describe** the candidate, as a deploy does (stored artifacts included), and
//!    check the name it declares.
//! 2. **Replay** the log from its start into a shadow namespace of its own
//!    (`dry_<name>_<run>`), under the checkpoint `<name>#dry-run` — through the worker's own
//!    batch code ([`Track::DryRun`]): the real sandbox, limits, validator, planner and the poison
//!    search. A poison event is skipped and reported with its position, whatever the live
//!    version's policy (the live dead letters stay the live version's). When the name is live,
//!    the replay never goes past the live checkpoint; otherwise it stops at the log's end as it
//!    was when the replay started.
//! 3. **Cut** (name live): with the replay at the live checkpoint, the live checkpoint row is
//!    locked (`FOR UPDATE`: the live worker cannot commit its next batch), the last events up to
//!    it are replayed, and a repeatable-read snapshot is opened in which both checkpoints are
//!    equal; the lock is released at once. The drift check's cut, taken from outside the worker.
//! 4. **Compare** in that snapshot, per table of either version (see [`crate::recovery::drift`]'s
//!    comparison): rows on each side, and for a table both declare with the same key, the rows
//!    missing, extra and different over the columns both have, with a sample.
//! 5. **Report**: stored in the run's row; the shadow is dropped unless the run keeps it.
//!
//! Every run is bounded: time ([`DryRunLimits::timeout`]), events read, rows written, poison
//! events ([`MAX_POISON`]); it can be cancelled (`cancel_requested`, read by its heartbeat); one
//! per projection and [`MAX_RUNNING`] in the cluster run at once. A run whose instance stopped is
//! failed as abandoned and its shadow dropped by the next one to look ([`ABANDONED_AFTER`]).
//!
//! Architecture invariant: a dry run never writes the live tables, checkpoint, dead letters or
//! registry; what it creates (a namespace, a checkpoint) is removed when it ends unless kept.
//! API boundary: no HTTP; the report is typed ([`DryRun`]). The report's details are stored as
//! JSON in the run's row, the one place this module turns them into JSON.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgExecutor};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::outcome::{execute_ddl, OperationError};
use crate::recovery::drift::{open_snapshot, TableDiff};
use crate::Projections;
use wallex_core::outbox::{self, OutboxCursor};
use wallex_core::read_model_check::RowDrift;
use wallex_runtime::checkpoint;
pub use wallex_runtime::config::DryRunLimits;
use wallex_runtime::registry::{self, DeploymentState};
use wallex_runtime::schema::{is_identifier, quote, ProjectionSchema, TableSchema};
use wallex_runtime::worker::{Active, Desired, PoisonEvent, Projector, Track};

/// Dry runs running at once in the cluster (each replays the whole log).
pub const MAX_RUNNING: i64 = 4;
/// Poison events a run tolerates before it stops: a candidate that fails on everything is
/// reported quickly instead of searched event by event over the whole log.
pub const MAX_POISON: u64 = 1_000;
/// Poison events listed in the report (all are counted).
pub const POISON_LISTED: usize = 100;
/// Differing rows sampled in the report, over all tables.
pub const SAMPLE_ROWS: usize = 20;
/// How often a running dry run stores its progress and looks for a cancel request.
pub const HEARTBEAT: Duration = Duration::from_millis(250);
/// A run not heard of for this long is abandoned (its instance stopped).
pub const ABANDONED_AFTER: Duration = Duration::from_secs(60);
/// Longest the cut waits for the live checkpoint's row lock (a live batch commits meanwhile).
pub const CUT_LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// Batches replayed while the live checkpoint is held; more left means the cut is retried.
pub const CUT_MAX_BATCHES: usize = 4;
/// Attempts at the cut before the run gives up (the live projection kept moving).
pub const CUT_ATTEMPTS: usize = 50;
/// Pause while rows before the target are still hidden by a running transaction.
const HIDDEN_ROWS_WAIT: Duration = Duration::from_millis(5);
/// Prefix of a dry run's shadow namespace: `dry_<name>_<run>` (no projection's namespace starts
/// so: theirs are `proj_…` and `projection_…`).
pub const NAMESPACE_PREFIX: &str = "dry_";
/// The audit trail's action name.
pub const ACTION: &str = "dry-run";

/// What a client asks of a dry run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DryRunRequest {
    /// The name the component must declare (`None`: whatever it declares).
    pub name: Option<String>,
    /// Keep the shadow tables afterwards (dropped with [`Projections::discard_dry_run`]).
    pub keep: bool,
    /// Read at most this many outbox rows (at most the configured limit).
    pub max_events: Option<u64>,
}

/// Where a dry run is, or how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DryRunStatus {
    /// The candidate is being compiled and described.
    Compiling,
    /// The log is being replayed into the shadow.
    Replaying,
    /// The shadow stands at the cut and is being compared.
    Comparing,
    /// The report is complete.
    Completed,
    /// It could not finish (see the error; what it found until then is kept).
    Failed,
    /// An operator cancelled it.
    Cancelled,
}

impl DryRunStatus {
    /// As stored and reported.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Compiling => "compiling",
            Self::Replaying => "replaying",
            Self::Comparing => "comparing",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "compiling" => Self::Compiling,
            "replaying" => Self::Replaying,
            "comparing" => Self::Comparing,
            "completed" => Self::Completed,
            "cancelled" => Self::Cancelled,
            _ => Self::Failed,
        }
    }

    /// Whether the run has ended.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// One dry run, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DryRun {
    /// The run's number.
    pub id: i64,
    /// The projection: the name asked for, then the one the candidate declares.
    pub projection: Option<String>,
    /// SHA-256 of the candidate.
    pub sha256: String,
    /// Who asked.
    pub requested_by: String,
    /// Where it is.
    pub status: DryRunStatus,
    /// Whether the shadow is kept afterwards.
    pub keep: bool,
    /// The shadow namespace, while it exists.
    pub namespace: Option<String>,
    /// SHA-256 of the live version compared with (`None`: the name was not live).
    pub live_sha256: Option<String>,
    /// Outbox rows when the replay started (the measure of its progress).
    pub events_total: i64,
    /// Outbox rows read so far.
    pub events_read: i64,
    /// Events given to the candidate (the subscribed ones) so far.
    pub events_handled: i64,
    /// Rows its statements wrote so far.
    pub rows_written: i64,
    /// The global position the replay stands at.
    pub position: i64,
    /// Poison events met so far.
    pub poison_count: i64,
    /// Whether an operator asked to cancel it.
    pub cancel_requested: bool,
    /// What it found.
    pub report: DryRunReport,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it was last heard of.
    pub updated_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// What a dry run found (stored as JSON in its row).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DryRunReport {
    /// What the candidate's `describe` declares.
    pub declared: Option<Declared>,
    /// The first [`POISON_LISTED`] poison events, in log order.
    pub poison: Vec<PoisonReport>,
    /// Per table of either version, candidate's first.
    pub tables: Vec<TableReport>,
    /// The first differing rows, over all tables.
    pub sample: Vec<SampleRow>,
    /// The global position both sides stood at when compared (`None`: not compared).
    pub compared_at: Option<i64>,
    /// How long the replay and the comparison took, in milliseconds.
    pub replay_ms: u64,
    /// How long the comparison took, in milliseconds.
    pub compare_ms: u64,
}

/// A candidate's declaration, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declared {
    /// Its name.
    pub name: String,
    /// The version of its tables.
    pub schema_version: u32,
    /// The event types it subscribes to.
    pub subscribes_to: Vec<String>,
    /// Its tables.
    pub tables: Vec<DeclaredTable>,
}

/// A declared table, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredTable {
    /// Its name.
    pub name: String,
    /// `name type[?]` per column (`?`: nullable).
    pub columns: Vec<String>,
    /// Its primary key's columns.
    pub primary_key: Vec<String>,
}

/// A poison event, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoisonReport {
    /// Its global position.
    pub position: i64,
    /// Its id.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// Why the candidate failed on it.
    pub error: String,
}

/// How a table differs between the versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TableChange {
    /// Only the candidate declares it (or nothing is live).
    Added,
    /// Only the live version declares it.
    Removed,
    /// Both declare it with the same columns and key.
    Same,
    /// Both declare it; columns differ (compared over the common ones).
    Changed,
    /// Both declare it with different keys: rows are counted, not compared.
    KeyChanged,
}

/// One table's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableReport {
    /// The table.
    pub table: String,
    /// How it differs between the versions.
    pub change: TableChange,
    /// Rows the candidate wrote into it (`None`: it does not declare it).
    pub rows: Option<i64>,
    /// Rows the live version has (`None`: not live, or not declared by it).
    pub live_rows: Option<i64>,
    /// Rows only the candidate has.
    pub missing: i64,
    /// Rows only the live version has.
    pub extra: i64,
    /// Rows on both sides that differ in a common column.
    pub different: i64,
    /// Columns only the candidate declares.
    pub columns_added: Vec<String>,
    /// Columns only the live version declares.
    pub columns_removed: Vec<String>,
}

/// A sampled differing row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleRow {
    /// The table.
    pub table: String,
    /// `column=value` pairs of its primary key.
    pub key: String,
    /// `missing` (only the candidate has it), `extra` (only live has it) or `different`.
    pub change: String,
    /// The columns that differ (every one for a missing or extra row).
    pub columns: Vec<SampleColumn>,
}

/// One column of a sampled row, as PostgreSQL writes it as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleColumn {
    /// The column.
    pub column: String,
    /// The candidate's value.
    pub candidate: Option<String>,
    /// The live value.
    pub live: Option<String>,
}

/// Why a run's task stopped before its report.
enum Stop {
    Cancelled,
    Failed(String),
}

macro_rules! stop_from {
    ($($error:ty),*) => {$(
        impl From<$error> for Stop {
            fn from(error: $error) -> Self {
                Self::Failed(error.to_string())
            }
        }
    )*};
}
stop_from!(
    OperationError,
    sqlx::Error,
    checkpoint::CheckpointError,
    outbox::OutboxError,
    crate::LoadError
);

/// What a run has done so far (the heartbeat stores it).
#[derive(Debug, Default)]
struct Tally {
    status: Option<DryRunStatus>,
    events_read: u64,
    events_handled: u64,
    rows_written: u64,
    position: i64,
    poison_count: u64,
    poison: Vec<PoisonReport>,
}

impl Tally {
    fn add(&mut self, consumed: usize, handled: usize, rows: u64, poison: Vec<PoisonEvent>) {
        self.events_read += consumed as u64;
        self.events_handled += handled as u64;
        self.rows_written += rows;
        self.poison_count += poison.len() as u64;
        let room = POISON_LISTED.saturating_sub(self.poison.len());
        self.poison
            .extend(poison.into_iter().take(room).map(|p| PoisonReport {
                position: p.position,
                event_id: p.event_id,
                event_type: p.event_type,
                error: p.error,
            }));
    }
}

/// A run's shared state between its task and its heartbeat.
struct Running {
    id: i64,
    tally: Mutex<Tally>,
    cancel: AtomicBool,
}

impl Running {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        match self.tally.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

const COLUMNS: &str = "id, projection, sha256, requested_by, status, keep_shadow, namespace,
    live_sha256, events_total, events_read, events_handled, rows_written, position, poison_count,
    cancel_requested, report, error, started_at, updated_at, finished_at";

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    projection: Option<String>,
    sha256: String,
    requested_by: String,
    status: String,
    keep_shadow: bool,
    namespace: Option<String>,
    live_sha256: Option<String>,
    events_total: i64,
    events_read: i64,
    events_handled: i64,
    rows_written: i64,
    position: i64,
    poison_count: i64,
    cancel_requested: bool,
    report: serde_json::Value,
    error: Option<String>,
    started_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl From<Row> for DryRun {
    fn from(r: Row) -> Self {
        Self {
            id: r.id,
            projection: r.projection,
            sha256: r.sha256,
            requested_by: r.requested_by,
            status: DryRunStatus::parse(&r.status),
            keep: r.keep_shadow,
            namespace: r.namespace,
            live_sha256: r.live_sha256,
            events_total: r.events_total,
            events_read: r.events_read,
            events_handled: r.events_handled,
            rows_written: r.rows_written,
            position: r.position,
            poison_count: r.poison_count,
            cancel_requested: r.cancel_requested,
            // A report this version cannot read shows as empty rather than failing the listing.
            report: serde_json::from_value(r.report).unwrap_or_default(),
            error: r.error,
            started_at: r.started_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        }
    }
}

/// One stored run.
pub async fn get<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
) -> Result<Option<DryRun>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM projection_dry_runs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(Into::into))
}

/// The latest `limit` runs, newest first.
pub async fn recent<'e>(
    executor: impl PgExecutor<'e>,
    limit: i64,
) -> Result<Vec<DryRun>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM projection_dry_runs ORDER BY id DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(executor)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// The shadow namespace of run `id` of `name`, if it is an identifier.
pub fn namespace(name: &str, id: i64) -> Option<String> {
    let namespace = format!("{NAMESPACE_PREFIX}{}_{id}", name.replace('-', "_"));
    is_identifier(&namespace).then_some(namespace)
}

fn declared(schema: &ProjectionSchema) -> Declared {
    Declared {
        name: schema.name.clone(),
        schema_version: schema.schema_version,
        subscribes_to: schema.subscribes_to.clone(),
        tables: schema
            .tables
            .iter()
            .map(|t| DeclaredTable {
                name: t.name.clone(),
                columns: t
                    .columns
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {}{}",
                            c.name,
                            c.ty.name(),
                            if c.nullable { "?" } else { "" }
                        )
                    })
                    .collect(),
                primary_key: key_names(t),
            })
            .collect(),
    }
}

fn key_names(table: &TableSchema) -> Vec<String> {
    table
        .primary_key
        .iter()
        .map(|&i| table.columns[i].name.clone())
        .collect()
}

/// Drops a run's checkpoint, only if it is still this run's (another run of the name may have
/// started since).
async fn drop_checkpoint(
    conn: &mut PgConnection,
    projection: Option<&str>,
    namespace: Option<&str>,
) -> Result<(), OperationError> {
    if let (Some(name), Some(namespace)) = (projection, namespace) {
        checkpoint::delete_for_namespace(conn, &checkpoint::dry_run_key(name), namespace).await?;
    }
    Ok(())
}

/// Drops a run's namespace and checkpoint (either may be gone already).
async fn remove_shadow(
    conn: &mut PgConnection,
    projection: Option<&str>,
    namespace: Option<&str>,
    id: i64,
) -> Result<(), OperationError> {
    if let Some(namespace) = namespace {
        execute_ddl(
            &mut *conn,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", quote(namespace)),
        )
        .await?;
    }
    drop_checkpoint(conn, projection, namespace).await?;
    sqlx::query("UPDATE projection_dry_runs SET namespace = NULL WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl Projections {
    /// Starts a dry run of the component `bytes` (see the module docs): the cheap checks here,
    /// the rest in the background. Returns the run, `compiling`.
    pub async fn start_dry_run(
        &self,
        bytes: Vec<u8>,
        request: DryRunRequest,
        actor: &str,
    ) -> Result<DryRun, OperationError> {
        self.precheck(&bytes)?;
        self.sweep_dry_runs().await?;
        let sha256 = registry::sha256_hex(&bytes);
        let pool = self.pool();
        let mut tx = pool.begin().await?;
        sqlx::query("LOCK TABLE projection_dry_runs IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM projection_dry_runs WHERE finished_at IS NULL",
        )
        .fetch_one(&mut *tx)
        .await?;
        if running >= MAX_RUNNING {
            return Err(OperationError::Conflict(format!(
                "{running} dry runs are running (at most {MAX_RUNNING}); wait for one to end or cancel one"
            )));
        }
        if let Some(name) = &request.name {
            self.refuse_second(&mut tx, name).await?;
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO projection_dry_runs (projection, sha256, requested_by, status, keep_shadow)
             VALUES ($1, $2, $3, 'compiling', $4) RETURNING id",
        )
        .bind(&request.name)
        .bind(&sha256)
        .bind(actor)
        .bind(request.keep)
        .fetch_one(&mut *tx)
        .await?;
        registry::record_action(
            &mut tx,
            actor,
            ACTION,
            request.name.as_deref(),
            "started",
            &json!({ "run": id, "sha256": sha256, "keep": request.keep }),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(run = id, %sha256, name = ?request.name, "dry run started");
        let running = Arc::new(Running {
            id,
            tally: Mutex::new(Tally::default()),
            cancel: AtomicBool::new(false),
        });
        let projections = self.clone();
        let span = tracing::info_span!("projection.dry_run", run = id);
        self.inner.tasks.spawn(
            async move { projections.run_dry_run(running, bytes, request).await }.instrument(span),
        );
        get(pool, id)
            .await?
            .ok_or_else(|| OperationError::NotFound(format!("dry run {id}")))
    }

    /// Refuses a second running dry run of `name` (in the caller's transaction, which holds the
    /// table lock).
    async fn refuse_second(
        &self,
        conn: &mut PgConnection,
        name: &str,
    ) -> Result<(), OperationError> {
        let other: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM projection_dry_runs WHERE projection = $1 AND finished_at IS NULL",
        )
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
        match other {
            Some(other) => Err(OperationError::Conflict(format!(
                "dry run {other} of {name} is running; wait for it or cancel it"
            ))),
            None => Ok(()),
        }
    }

    /// One dry run, after failing it if its instance stopped.
    pub async fn dry_run(&self, id: i64) -> Result<Option<DryRun>, OperationError> {
        self.sweep_dry_runs().await?;
        Ok(get(self.pool(), id).await?)
    }

    /// The latest `limit` dry runs.
    pub async fn dry_runs(&self, limit: i64) -> Result<Vec<DryRun>, OperationError> {
        self.sweep_dry_runs().await?;
        Ok(recent(self.pool(), limit).await?)
    }

    /// Cancels a running dry run (it stops at its next batch and drops its shadow, kept or not),
    /// or drops the kept shadow of a finished one.
    pub async fn discard_dry_run(&self, id: i64, actor: &str) -> Result<DryRun, OperationError> {
        let pool = self.pool();
        let run = get(pool, id)
            .await?
            .ok_or_else(|| OperationError::NotFound(format!("dry run {id}")))?;
        let mut conn = pool.acquire().await?;
        let outcome = if run.status.is_finished() {
            if run.namespace.is_none() {
                return Err(OperationError::Conflict(format!(
                    "dry run {id} has ended and kept no shadow"
                )));
            }
            remove_shadow(
                &mut conn,
                run.projection.as_deref(),
                run.namespace.as_deref(),
                id,
            )
            .await?;
            "shadow-dropped"
        } else {
            sqlx::query("UPDATE projection_dry_runs SET cancel_requested = true WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            "cancel-requested"
        };
        registry::record_action(
            &mut conn,
            actor,
            ACTION,
            run.projection.as_deref(),
            outcome,
            &json!({ "run": id }),
        )
        .await?;
        tracing::info!(run = id, outcome, "dry run discarded");
        get(pool, id)
            .await?
            .ok_or_else(|| OperationError::NotFound(format!("dry run {id}")))
    }

    /// Fails the runs whose instance stopped, and drops what they left.
    async fn sweep_dry_runs(&self) -> Result<(), OperationError> {
        let pool = self.pool();
        let abandoned: Vec<(i64, Option<String>, Option<String>)> = sqlx::query_as(
            "UPDATE projection_dry_runs
             SET status = 'failed', finished_at = now(),
                 error = 'abandoned: the instance running it stopped'
             WHERE finished_at IS NULL AND updated_at < now() - make_interval(secs => $1)
             RETURNING id, projection, namespace",
        )
        .bind(ABANDONED_AFTER.as_secs_f64())
        .fetch_all(pool)
        .await?;
        if abandoned.is_empty() {
            return Ok(());
        }
        let mut conn = pool.acquire().await?;
        for (id, projection, namespace) in abandoned {
            tracing::warn!(
                run = id,
                "dry run abandoned by a stopped instance; dropping its shadow"
            );
            remove_shadow(&mut conn, projection.as_deref(), namespace.as_deref(), id).await?;
        }
        Ok(())
    }

    /// The run's task: replay, compare, report; and whatever happens, the heartbeat stops and
    /// the shadow is dropped unless kept.
    async fn run_dry_run(&self, running: Arc<Running>, bytes: Vec<u8>, request: DryRunRequest) {
        let id = running.id;
        let started = Instant::now();
        let heartbeat_done = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            self.pool().clone(),
            Arc::clone(&running),
            heartbeat_done.clone(),
        ));
        let result = self.dry_run_steps(&running, bytes, &request, started).await;
        heartbeat_done.cancel();
        if let Err(error) = heartbeat.await {
            tracing::warn!(%error, "dry run heartbeat ended abnormally");
        }
        if let Err(error) = self.finish_dry_run(&running, &request, result).await {
            tracing::error!(run = id, %error, "cannot record the end of the dry run");
        }
    }

    async fn dry_run_steps(
        &self,
        running: &Running,
        bytes: Vec<u8>,
        request: &DryRunRequest,
        started: Instant,
    ) -> Result<DryRunReport, Stop> {
        let id = running.id;
        let limits = self.inner.config.dry_run;
        let deadline = started + limits.timeout;
        let max_events = request
            .max_events
            .map_or(limits.max_events, |m| m.min(limits.max_events));
        let origin = format!("dry-run:{id}");
        let candidate = tokio::select! {
            compiled = tokio::time::timeout(limits.timeout, self.validate(bytes, &origin)) => {
                compiled.map_err(|_| {
                    Stop::Failed(format!(
                        "the compile took longer than the dry run's limit of {} s",
                        limits.timeout.as_secs()
                    ))
                })??
            }
            () = self.inner.stopping.cancelled() => {
                return Err(Stop::Failed(
                    "the instance running the dry run is shutting down".to_owned(),
                ));
            }
        };
        let name = candidate.schema.name.clone();
        if let Some(expected) = &request.name {
            if *expected != name {
                return Err(OperationError::NameMismatch {
                    expected: expected.clone(),
                    actual: name,
                }
                .into());
            }
        }
        let pool = self.pool();
        let live = registry::deployment(pool, &name)
            .await?
            .filter(|d| d.state() != DeploymentState::Deleted);
        let namespace = namespace(&name, id).ok_or_else(|| {
            Stop::Failed(format!(
                "dry run {id} of {name}: its namespace would not be an identifier"
            ))
        })?;
        let target = candidate.schema.clone().with_namespace(namespace.clone());
        let key = checkpoint::dry_run_key(&name);
        {
            let mut tx = pool.begin().await?;
            sqlx::query("LOCK TABLE projection_dry_runs IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
            if request.name.is_none() {
                self.refuse_second(&mut tx, &name).await?;
            }
            execute_ddl(
                &mut tx,
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", quote(&namespace)),
            )
            .await?;
            for statement in target.ddl() {
                execute_ddl(&mut tx, &statement).await?;
            }
            checkpoint::delete(&mut tx, &key).await?;
            checkpoint::ensure(&mut tx, &key, target.schema_version, &namespace).await?;
            let (total, _) = outbox::size(&mut *tx).await?;
            sqlx::query(
                "UPDATE projection_dry_runs
                 SET projection = $2, namespace = $3, live_sha256 = $4, events_total = $5,
                     status = 'replaying', report = $6, updated_at = now()
                 WHERE id = $1",
            )
            .bind(id)
            .bind(&name)
            .bind(&namespace)
            .bind(live.as_ref().map(|d| d.sha256.clone()))
            .bind(total)
            .bind(json!({ "declared": declared(&target) }))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        running.tally().status = Some(DryRunStatus::Replaying);
        let settings = live.as_ref().map(|d| d.settings()).unwrap_or_default();
        let mut policy = self.inner.config.policy(&name, &settings);
        // Every poison event is skipped and reported: the run sees the whole log.
        policy.on_poison = wallex_runtime::config::OnPoison::Skip;
        let active = Active {
            schema: Arc::new(target),
            handler: candidate.component.clone(),
            sha256: candidate.sha256.clone(),
            source: format!("dry-run:{id}"),
            policy,
        };
        let projector = Projector::for_dry_run(
            Desired {
                active: active.clone(),
                rebuild: None,
                paused: false,
                generation: 0,
            },
            self.inner.config.worker(&name),
            Arc::clone(&self.inner.guests),
        );
        let replay = Replay {
            projections: self,
            running,
            projector: &projector,
            active: &active,
            key: &key,
            batch: self.inner.config.rebuild_batch_size,
            deadline,
            max_events,
            max_rows: limits.max_rows,
        };
        let mut conn = pool.acquire().await?;
        let mut report = DryRunReport {
            declared: Some(declared(&active.schema)),
            ..DryRunReport::default()
        };
        let replay_started = Instant::now();
        match &live {
            None => {
                let head = outbox::last_cursor(pool)
                    .await?
                    .unwrap_or(OutboxCursor::START);
                replay.up_to(&mut conn, Some(head)).await?;
                report.replay_ms = millis(replay_started.elapsed());
                running.tally().status = Some(DryRunStatus::Comparing);
                let compare_started = Instant::now();
                for table in &active.schema.tables {
                    let rows = count(&mut conn, &active.schema.qualified(table)).await?;
                    report.tables.push(TableReport {
                        table: table.name.clone(),
                        change: TableChange::Added,
                        rows: Some(rows),
                        live_rows: None,
                        missing: rows,
                        extra: 0,
                        different: 0,
                        columns_added: Vec::new(),
                        columns_removed: Vec::new(),
                    });
                }
                report.compared_at = Some(checkpoint::cursor(&mut conn, &key).await?.position);
                report.compare_ms = millis(compare_started.elapsed());
            }
            Some(_) => {
                let (mut snapshot, live_schema, position) = replay.cut(&mut conn, &name).await?;
                report.replay_ms = millis(replay_started.elapsed());
                running.tally().status = Some(DryRunStatus::Comparing);
                let compare_started = Instant::now();
                let (tables, sample) =
                    compare_versions(&mut snapshot, &live_schema, &active.schema).await?;
                drop(snapshot);
                report.tables = tables;
                report.sample = sample;
                report.compared_at = Some(position);
                report.compare_ms = millis(compare_started.elapsed());
            }
        }
        Ok(report)
    }

    /// Stores how the run ended, drops the shadow unless kept, audits.
    async fn finish_dry_run(
        &self,
        running: &Running,
        request: &DryRunRequest,
        result: Result<DryRunReport, Stop>,
    ) -> Result<(), OperationError> {
        let id = running.id;
        let pool = self.pool();
        let stored = get(pool, id).await?;
        let (status, error, mut report) = match result {
            Ok(report) => (DryRunStatus::Completed, None, report),
            Err(Stop::Cancelled) => (DryRunStatus::Cancelled, None, DryRunReport::default()),
            Err(Stop::Failed(error)) => {
                (DryRunStatus::Failed, Some(error), DryRunReport::default())
            }
        };
        if report.declared.is_none() {
            report.declared = stored.as_ref().and_then(|r| r.report.declared.clone());
        }
        let tally = std::mem::take(&mut *running.tally());
        report.poison = tally.poison;
        let keep = request.keep && status == DryRunStatus::Completed;
        let mut conn = pool.acquire().await?;
        if !keep {
            if let Some(run) = &stored {
                remove_shadow(
                    &mut conn,
                    run.projection.as_deref(),
                    run.namespace.as_deref(),
                    id,
                )
                .await?;
            }
        } else if let Some(run) = &stored {
            // The kept tables need no checkpoint; the next run of the name starts its own.
            drop_checkpoint(
                &mut conn,
                run.projection.as_deref(),
                run.namespace.as_deref(),
            )
            .await?;
        }
        let report_json = serde_json::to_value(&report).map_err(|e| {
            OperationError::Conflict(format!("cannot store the dry run's report: {e}"))
        })?;
        sqlx::query(
            "UPDATE projection_dry_runs
             SET status = $2, error = $3, report = $4, events_read = $5, events_handled = $6,
                 rows_written = $7, position = $8, poison_count = $9,
                 finished_at = now(), updated_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(&error)
        .bind(report_json)
        .bind(to_i64(tally.events_read))
        .bind(to_i64(tally.events_handled))
        .bind(to_i64(tally.rows_written))
        .bind(tally.position)
        .bind(to_i64(tally.poison_count))
        .execute(&mut *conn)
        .await?;
        let projection = stored.as_ref().and_then(|r| r.projection.clone());
        let requested_by = stored.as_ref().map_or_else(
            || crate::outcome::SYSTEM_ACTOR.to_owned(),
            |r| r.requested_by.clone(),
        );
        let differing: i64 = report
            .tables
            .iter()
            .map(|t| t.missing + t.extra + t.different)
            .sum();
        registry::record_action(
            &mut conn,
            &requested_by,
            ACTION,
            projection.as_deref(),
            status.as_str(),
            &json!({
                "run": id,
                "events": tally.events_read,
                "poison": tally.poison_count,
                "rows_differing": differing,
                "kept": keep,
                "error": error,
            }),
        )
        .await?;
        match status {
            DryRunStatus::Failed => {
                tracing::warn!(run = id, projection = ?projection, error = ?error, "dry run failed")
            }
            _ => tracing::info!(
                run = id,
                projection = ?projection,
                status = status.as_str(),
                events = tally.events_read,
                poison = tally.poison_count,
                rows_differing = differing,
                "dry run ended"
            ),
        }
        Ok(())
    }
}

/// One run's replay: batches of the candidate into its shadow.
struct Replay<'a> {
    projections: &'a Projections,
    running: &'a Running,
    projector: &'a Projector,
    active: &'a Active,
    key: &'a str,
    batch: u32,
    deadline: Instant,
    max_events: u64,
    max_rows: u64,
}

impl Replay<'_> {
    /// Applies one batch up to `until`; checks the run's limits and cancellation.
    async fn step(&self, conn: &mut PgConnection, until: OutboxCursor) -> Result<usize, Stop> {
        if self.running.cancel.load(Ordering::Relaxed) {
            return Err(Stop::Cancelled);
        }
        if self.projections.inner.stopping.is_cancelled() {
            return Err(Stop::Failed(
                "the instance running the dry run is shutting down".to_owned(),
            ));
        }
        if Instant::now() >= self.deadline {
            return Err(Stop::Failed(format!(
                "the dry run took longer than its limit of {} s (WALLEX_DRY_RUN_TIMEOUT_MS)",
                self.projections.inner.config.dry_run.timeout.as_secs()
            )));
        }
        // Tests slow a dry run down here to cancel it mid-replay.
        wallex_core::failpoint::hit("dry-run-batch").await;
        let outcome = self
            .projector
            .apply_track(
                conn,
                self.projections.pool(),
                Track::DryRun(until),
                self.active,
                self.batch,
            )
            .await
            .map_err(|e| Stop::Failed(format!("the replay failed: {e}")))?;
        let consumed = outcome.consumed;
        let position = checkpoint::cursor(conn, self.key).await?.position;
        let mut tally = self.running.tally();
        tally.add(consumed, outcome.handled, outcome.rows, outcome.poison);
        tally.position = position;
        if tally.poison_count > MAX_POISON {
            let first = tally.poison.first().map_or(0, |p| p.position);
            return Err(Stop::Failed(format!(
                "the candidate failed on more than {MAX_POISON} events (the first at position {first}); stopped"
            )));
        }
        if tally.events_read > self.max_events {
            return Err(Stop::Failed(format!(
                "the log holds more than the dry run's limit of {} events (max_events, WALLEX_DRY_RUN_MAX_EVENTS)",
                self.max_events
            )));
        }
        if tally.rows_written > self.max_rows {
            return Err(Stop::Failed(format!(
                "the candidate wrote more than the dry run's limit of {} rows (WALLEX_DRY_RUN_MAX_ROWS)",
                self.max_rows
            )));
        }
        Ok(consumed)
    }

    /// Replays up to `until` (`None`: up to the live checkpoint as it moves) until caught up.
    async fn up_to(
        &self,
        conn: &mut PgConnection,
        until: Option<OutboxCursor>,
    ) -> Result<(), Stop> {
        let name = &self.active.schema.name;
        loop {
            let target = match until {
                Some(cursor) => cursor,
                None => checkpoint::cursor(conn, name).await?,
            };
            let ours = checkpoint::cursor(conn, self.key).await?;
            if ours >= target {
                return Ok(());
            }
            if self.step(conn, target).await? == 0 {
                // Rows before the target are still hidden by a transaction that is running.
                tokio::time::sleep(HIDDEN_ROWS_WAIT).await;
            }
        }
    }

    /// Replays up to the live checkpoint and takes the consistent cut (see the module docs):
    /// the snapshot both sides stand in, the live declaration in its namespace, and the position.
    async fn cut(
        &self,
        conn: &mut PgConnection,
        name: &str,
    ) -> Result<(PgConnection, ProjectionSchema, i64), Stop> {
        let pool = self.projections.pool();
        for _ in 0..CUT_ATTEMPTS {
            self.up_to(conn, None).await?;
            let mut hold = pool.begin().await?;
            sqlx::query(&format!(
                "SET LOCAL lock_timeout = {}",
                CUT_LOCK_TIMEOUT.as_millis()
            ))
            .execute(&mut *hold)
            .await?;
            let live = match checkpoint::lock_in(&mut hold, name).await {
                Ok(Some(live)) => live,
                Ok(None) => {
                    return Err(Stop::Failed(format!(
                        "{name} lost its live checkpoint during the dry run (deleted?)"
                    )))
                }
                // A live batch held the row longer than the lock timeout: try again.
                Err(_) => continue,
            };
            let mut batches = 0;
            loop {
                let ours = checkpoint::cursor(conn, self.key).await?;
                if ours == live.cursor {
                    break;
                }
                if ours > live.cursor {
                    return Err(Stop::Failed(format!(
                        "the live checkpoint of {name} moved back behind the replay (a reset)"
                    )));
                }
                if batches == CUT_MAX_BATCHES {
                    break;
                }
                batches += 1;
                if self.step(conn, live.cursor).await? == 0 {
                    tokio::time::sleep(HIDDEN_ROWS_WAIT).await;
                }
            }
            if checkpoint::cursor(conn, self.key).await? != live.cursor {
                hold.rollback().await?;
                continue;
            }
            // The live declaration in the namespace the live checkpoint describes.
            let live_schema = match self.projections.get(name) {
                Some(projector) => {
                    let active = projector.active();
                    (active.schema.namespace == live.namespace).then(|| (*active.schema).clone())
                }
                None => None,
            };
            let Some(live_schema) = live_schema else {
                // This instance has not reconciled a cut-over yet.
                hold.rollback().await?;
                self.projections.reconcile_one(name).await?;
                continue;
            };
            let mut snapshot = open_snapshot(pool).await?;
            // The snapshot is taken by its first query: these reads fix it.
            let live_now = checkpoint::read_in(&mut snapshot, name).await?;
            let ours_now = checkpoint::read_in(&mut snapshot, self.key).await?;
            hold.commit().await?;
            match (live_now, ours_now) {
                (Some(l), Some(o)) if l.cursor == o.cursor && l.cursor == live.cursor => {
                    return Ok((snapshot, live_schema, live.cursor.position));
                }
                _ => continue,
            }
        }
        Err(Stop::Failed(format!(
            "the live projection {name} kept moving: no consistent cut in {CUT_ATTEMPTS} attempts"
        )))
    }
}

/// Compares the live version's tables with the candidate's, in the caller's snapshot.
async fn compare_versions(
    conn: &mut PgConnection,
    live: &ProjectionSchema,
    candidate: &ProjectionSchema,
) -> Result<(Vec<TableReport>, Vec<SampleRow>), sqlx::Error> {
    let mut tables = Vec::new();
    let mut sample = Vec::new();
    for table in &candidate.tables {
        let rows = count(conn, &candidate.qualified(table)).await?;
        let Some(old) = live.table(&table.name) else {
            tables.push(TableReport {
                table: table.name.clone(),
                change: TableChange::Added,
                rows: Some(rows),
                live_rows: None,
                missing: rows,
                extra: 0,
                different: 0,
                columns_added: Vec::new(),
                columns_removed: Vec::new(),
            });
            continue;
        };
        let live_rows = count(conn, &live.qualified(old)).await?;
        let same_type = |name: &str| match (table.column(name), old.column(name)) {
            (Some(a), Some(b)) => table.columns[a].ty == old.columns[b].ty,
            _ => false,
        };
        let columns_added: Vec<String> = table
            .columns
            .iter()
            .filter(|c| old.column(&c.name).is_none())
            .map(|c| c.name.clone())
            .collect();
        let columns_removed: Vec<String> = old
            .columns
            .iter()
            .filter(|c| table.column(&c.name).is_none())
            .map(|c| c.name.clone())
            .collect();
        let keys = key_names(table);
        let mut report = TableReport {
            table: table.name.clone(),
            change: TableChange::Same,
            rows: Some(rows),
            live_rows: Some(live_rows),
            missing: 0,
            extra: 0,
            different: 0,
            columns_added,
            columns_removed,
        };
        if keys != key_names(old) || !keys.iter().all(|k| same_type(k)) {
            report.change = TableChange::KeyChanged;
            tables.push(report);
            continue;
        }
        if table.columns != old.columns {
            report.change = TableChange::Changed;
        }
        let common: Vec<String> = table
            .columns
            .iter()
            .filter(|c| same_type(&c.name))
            .map(|c| c.name.clone())
            .collect();
        let diff = TableDiff::new(
            live.qualified(old),
            candidate.qualified(table),
            &keys,
            &common,
        );
        let room = SAMPLE_ROWS.saturating_sub(sample.len());
        let (counts, rows_sampled) = diff.run(conn, &table.name, room).await?;
        report.missing = counts.missing;
        report.extra = counts.extra;
        report.different = counts.different;
        sample.extend(rows_sampled.into_iter().map(|row| {
            SampleRow {
                table: row.table.unwrap_or_default(),
                key: row.id,
                change: match row.drift {
                    RowDrift::Missing => "missing",
                    RowDrift::Extra => "extra",
                    RowDrift::Different => "different",
                }
                .to_owned(),
                columns: row
                    .columns
                    .into_iter()
                    .map(|(column, candidate, live)| SampleColumn {
                        column,
                        candidate,
                        live,
                    })
                    .collect(),
            }
        }));
        tables.push(report);
    }
    for old in &live.tables {
        if candidate.table(&old.name).is_none() {
            let live_rows = count(conn, &live.qualified(old)).await?;
            tables.push(TableReport {
                table: old.name.clone(),
                change: TableChange::Removed,
                rows: None,
                live_rows: Some(live_rows),
                missing: 0,
                extra: live_rows,
                different: 0,
                columns_added: Vec::new(),
                columns_removed: Vec::new(),
            });
        }
    }
    Ok((tables, sample))
}

async fn count(conn: &mut PgConnection, qualified: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {qualified}"))
        .fetch_one(conn)
        .await
}

/// Stores the run's progress every [`HEARTBEAT`] and reads whether it was cancelled, until `done`.
async fn heartbeat(pool: sqlx::PgPool, running: Arc<Running>, done: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = done.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (status, read, handled, rows, position, poison) = {
            let t = running.tally();
            (
                t.status.map(DryRunStatus::as_str),
                to_i64(t.events_read),
                to_i64(t.events_handled),
                to_i64(t.rows_written),
                t.position,
                to_i64(t.poison_count),
            )
        };
        let cancel: Result<Option<bool>, sqlx::Error> = sqlx::query_scalar(
            "UPDATE projection_dry_runs
             SET status = COALESCE($2, status), events_read = $3, events_handled = $4,
                 rows_written = $5, position = $6, poison_count = $7, updated_at = now()
             WHERE id = $1 AND finished_at IS NULL
             RETURNING cancel_requested",
        )
        .bind(running.id)
        .bind(status)
        .bind(read)
        .bind(handled)
        .bind(rows)
        .bind(position)
        .bind(poison)
        .fetch_optional(&pool)
        .await;
        match cancel {
            Ok(Some(true)) => running.cancel.store(true, Ordering::Relaxed),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot store the dry run's progress"),
        }
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
