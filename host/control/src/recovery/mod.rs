//! The recovery service: what keeps the read side honest once it runs (the reference design's
//! Recovery Service).
//!
//! Why it exists: projections fail loudly (a failing batch is retried, then stops and says why),
//! but two failures are silent — a worker that stops moving without an error, and a read model
//! that no longer says what the write model says. This module finds both and reports them where
//! operators look (status, metrics, logs, the audit trail, the run history).
//!
//! # Layout
//! - [`stall`] — stall detection and the restart of a stalled worker, every
//!   `RECOVERY_INTERVAL_SECS`. Owns `projection_stalls`.
//! - [`runs`] — the history of checks. Owns `recovery_runs`.
//! - [`drift`] — drift detection for any projection (a replay into a shadow, compared at a
//!   consistent cut) and the whole-projection repair.
//! - [`stream_repair`] — one stream's rows re-derived in one transaction, for components that
//!   say which rows a stream owns (`wallex:projection@0.2.0`).
//! - this file — [`RecoveryConfig`], [`Recovery`] (the schedule, the read-model check, the status
//!   report).
//!
//! The read-model check (the reference design's `detectDataDrift`) compares the write model's
//! `wallets` with the bundled read model's `projection_read_model.wallets`, in SQL, in chunks
//! ([`wallex_core::read_model_check`]); it runs on demand (admin API, CLI).
//!
//! API boundary: typed values only; the HTTP layer decides their JSON shape.

pub mod drift;
pub mod stream_repair;

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::recovery_runs as runs;
use crate::stall;
use crate::Projections;
use wallex_core::read_model_check::{
    ReadModelCheck, ReadModelCheckError, ReadModelReport, ReadModelShape,
};
use wallex_runtime::registry;
use wallex_runtime::schema::stable_namespace;
use wallex_telemetry::catalogue::RECOVERY_RUNS_TOTAL;

/// The bundled read model's projection, which the read-model check compares with `wallets`.
pub const READ_MODEL_PROJECTION: &str = "read-model";
/// Its table of wallets, and which of its columns hold which snapshot field.
pub const READ_MODEL_WALLETS: (&str, &str, &[(&str, &str)]) = (
    "wallets",
    "id",
    &[
        ("owner_id", "owner"),
        ("balance", "balance"),
        ("currency", "currency"),
        ("version", "version"),
        ("created_at", "created_at"),
        ("updated_at", "updated_at"),
    ],
);
/// Most differing rows a report keeps (with their values).
pub const REPORT_SAMPLE: usize = 20;
/// Most runs the status report lists.
pub const STATUS_RUNS: i64 = 10;
/// Who starts scheduled drift checks, in the run history and the audit trail.
pub const SCHEDULE_ACTOR: &str = "recovery";
/// How long past [`drift::COMPARE_TIMEOUT`] a drift check may stay running before it is
/// presumed abandoned.
pub const ABANDON_GRACE: Duration = Duration::from_secs(60);

/// What a repair did.
#[derive(Debug, Clone, PartialEq)]
pub enum Repair {
    /// A whole projection: cut over to a drift check's shadow, or rebuilt.
    Projection(drift::ProjectionRepair),
    /// One stream's rows, re-derived.
    Stream(stream_repair::StreamRepair),
}

/// Seconds between two rounds of stall detection, by default (the reference design's 5 minutes).
pub const DEFAULT_INTERVAL_SECS: u64 = 300;
/// Seconds without checkpoint progress after which a projection is stalled, by default.
pub const DEFAULT_STALL_SECS: u64 = 120;
/// Wallet ids per transaction of the read-model check, by default.
pub const DEFAULT_CHECK_CHUNK: i64 = 10_000;
/// How recent a wallet the read-model check skips, in seconds, by default.
pub const DEFAULT_CHECK_MARGIN_SECS: u64 = 30;
/// Seconds between scheduled drift checks, by default: 0, only on demand.
pub const DEFAULT_DRIFT_INTERVAL_SECS: u64 = 0;

/// When and how the recovery service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// Seconds between two rounds of stall detection: how long a silently stopped worker may go
    /// unnoticed at most (besides [`Self::recovery_stall_secs`]).
    pub recovery_interval_secs: u64,

    /// A running projection whose checkpoint has not moved for this many seconds while older
    /// events wait after it is stalled: its worker is restarted from its checkpoint.
    pub recovery_stall_secs: u64,

    /// Wallet ids per transaction of the read-model check, so that each of the check's
    /// transactions stays short on a large table.
    pub recovery_check_chunk: i64,

    /// The read-model check does not compare wallets written less than this many seconds before
    /// the read model's oldest unapplied event (or before the check, when it is caught up): a
    /// write transaction that began earlier may still commit while the check runs. Longer than
    /// any write transaction; they are counted as `inFlight`.
    pub recovery_check_margin_secs: u64,

    /// Seconds between scheduled drift checks of each running projection (a full replay of
    /// the log each): 0 runs them only on demand.
    pub recovery_drift_interval_secs: u64,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            recovery_interval_secs: DEFAULT_INTERVAL_SECS,
            recovery_stall_secs: DEFAULT_STALL_SECS,
            recovery_check_chunk: DEFAULT_CHECK_CHUNK,
            recovery_check_margin_secs: DEFAULT_CHECK_MARGIN_SECS,
            recovery_drift_interval_secs: DEFAULT_DRIFT_INTERVAL_SECS,
        }
    }
}

impl RecoveryConfig {
    fn interval(&self) -> Duration {
        Duration::from_secs(self.recovery_interval_secs)
    }

    fn stall_after(&self) -> Duration {
        Duration::from_secs(self.recovery_stall_secs)
    }
}

/// Why a recovery operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The database refused or could not be reached.
    #[error("recovery: {0}")]
    Database(#[from] sqlx::Error),
    /// The read model to compare with is not deployed.
    #[error("the read model projection `{0}` is not deployed")]
    NoReadModel(String),
    /// Another read-model check is running in this process.
    #[error("a read-model check is already running")]
    Busy,
    /// Stall detection failed.
    #[error(transparent)]
    Stall(#[from] stall::StallError),
    /// An operation on a projection failed or does not fit its state (not found, a check or
    /// rebuild already running, not repairable one stream at a time, …).
    #[error(transparent)]
    Operation(#[from] crate::OperationError),
}

/// What `GET /admin/recovery` shows.
#[derive(Debug, Clone)]
pub struct RecoveryStatus {
    /// The settings in force.
    pub config: RecoveryConfig,
    /// Projections stalled now.
    pub stalls: Vec<stall::Stall>,
    /// When the oldest outbox row some projection has not applied was recorded.
    pub oldest_unprocessed_at: Option<DateTime<Utc>>,
    /// Its age, in seconds (0 when every projection is caught up).
    pub oldest_unprocessed_age_seconds: f64,
    /// The latest checks, newest first.
    pub runs: Vec<runs::Run>,
}

/// The recovery service of this process.
#[derive(Debug, Clone)]
pub struct Recovery {
    projections: Projections,
    config: RecoveryConfig,
    /// One read-model check at a time in this process.
    checking: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Recovery {
    /// The service over `projections`; starts nothing.
    pub fn new(projections: Projections, config: RecoveryConfig) -> Self {
        Self {
            projections,
            config,
            checking: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> RecoveryConfig {
        self.config
    }

    /// Runs stall detection every `RECOVERY_INTERVAL_SECS` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.config.interval());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let round = tracing::debug_span!("recovery.round");
            if let Err(error) = self.detect_stalls().instrument(round.clone()).await {
                tracing::warn!(%error, "stall detection failed; trying again next round");
            }
            if let Err(error) = self.sweep_abandoned().instrument(round.clone()).await {
                tracing::warn!(%error, "cannot sweep abandoned drift checks");
            }
            if self.config.recovery_drift_interval_secs > 0 {
                if let Err(error) = self.scheduled_drift().instrument(round).await {
                    tracing::warn!(%error, "cannot start scheduled drift checks");
                }
            }
        }
    }

    /// One round of stall detection over the projections this process runs.
    pub async fn detect_stalls(&self) -> Result<(), RecoveryError> {
        let pool = self.projections.pool();
        for projector in self.projections.all() {
            let paused = projector.desired().paused;
            stall::check(pool, &projector, paused, self.config.stall_after()).await?;
        }
        Ok(())
    }

    /// Starts a drift check of projection `name` ([`drift`]); returns the run, `running`.
    pub async fn start_drift(
        &self,
        name: &str,
        keep_shadow: Option<bool>,
        requested_by: &str,
    ) -> Result<runs::Run, RecoveryError> {
        let run = self
            .projections
            .start_drift(name, keep_shadow, requested_by)
            .await?;
        Ok(self.with_progress(run).await?)
    }

    /// Repairs projection `name`: one stream's rows ([`stream_repair`]) or the whole projection
    /// ([`drift`]).
    pub async fn repair(
        &self,
        name: &str,
        stream: Option<&str>,
        requested_by: &str,
    ) -> Result<Repair, RecoveryError> {
        Ok(match stream {
            Some(stream) => Repair::Stream(
                self.projections
                    .repair_stream(name, stream, requested_by)
                    .await?,
            ),
            None => Repair::Projection(
                self.projections
                    .repair_projection(name, requested_by)
                    .await?,
            ),
        })
    }

    /// Starts a drift check of every running projection whose last one started more than
    /// `RECOVERY_DRIFT_INTERVAL_SECS` ago (any instance may; the first wins).
    pub async fn scheduled_drift(&self) -> Result<(), RecoveryError> {
        let every = chrono::Duration::seconds(
            i64::try_from(self.config.recovery_drift_interval_secs).unwrap_or(i64::MAX),
        );
        let pool = self.projections.pool();
        for status in self.projections.admin_list().await? {
            if status.status != crate::status::ReportedStatus::Running {
                continue;
            }
            let last = runs::last_started(pool, runs::DRIFT_CHECK, &status.name).await?;
            if last.is_some_and(|at| Utc::now() - at < every) {
                continue;
            }
            match self
                .projections
                .start_drift(&status.name, None, SCHEDULE_ACTOR)
                .await
            {
                Ok(run) => {
                    tracing::info!(projection = %status.name, run = run.id, "scheduled drift check started")
                }
                Err(
                    crate::OperationError::Conflict(reason)
                    | crate::OperationError::NotFound(reason),
                ) => {
                    tracing::debug!(projection = %status.name, %reason, "scheduled drift check skipped")
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Fails drift checks nobody will finish: their shadow went without them noticing, or the
    /// instance comparing them stopped.
    pub async fn sweep_abandoned(&self) -> Result<u64, RecoveryError> {
        let pool = self.projections.pool();
        let replaying: Vec<i64> = registry::rebuilds(pool)
            .await?
            .into_iter()
            .filter(|r| r.is_drift() && r.in_progress())
            .filter_map(|r| r.drift_run)
            .collect();
        let swept = runs::fail_abandoned(
            pool,
            &replaying,
            Utc::now() - chrono::Duration::from_std(drift::COMPARE_TIMEOUT + ABANDON_GRACE).unwrap_or_default(),
            "abandoned: its replay or its comparison stopped (an instance stopped, or its shadow was dropped)",
        )
        .await?;
        if swept > 0 {
            tracing::warn!(runs = swept, "abandoned drift checks marked failed");
        }
        Ok(swept)
    }

    /// A running drift check with how far it is.
    async fn with_progress(&self, mut run: runs::Run) -> Result<runs::Run, sqlx::Error> {
        if run.outcome != runs::RunOutcome::Running || run.kind != runs::DRIFT_CHECK {
            return Ok(run);
        }
        let Some(projection) = run.projection.clone() else {
            return Ok(run);
        };
        let pool = self.projections.pool();
        let replaying = wallex_runtime::checkpoint::read(
            pool,
            &wallex_runtime::checkpoint::rebuild_key(&projection),
        )
        .await
        .ok()
        .flatten();
        let comparing = wallex_runtime::checkpoint::read(
            pool,
            &wallex_runtime::checkpoint::shadow_key(&projection),
        )
        .await
        .ok()
        .flatten();
        run.progress = match (replaying, comparing) {
            (Some(c), _) => Some(runs::DriftProgress {
                phase: runs::DriftPhase::Replaying,
                events_replayed: c.events_applied,
                events_total: run.events_total.max(c.events_applied),
            }),
            (None, Some(c)) => Some(runs::DriftProgress {
                phase: runs::DriftPhase::Comparing,
                events_replayed: c.events_applied,
                events_total: c.events_applied,
            }),
            (None, None) => None,
        };
        Ok(run)
    }

    /// Compares the write model's wallets with the read model's, stores the run and returns it.
    pub async fn check_read_model(&self, requested_by: &str) -> Result<runs::Run, RecoveryError> {
        let Ok(_permit) = self.checking.try_acquire() else {
            return Err(RecoveryError::Busy);
        };
        let pool = self.projections.pool();
        let started_at = Utc::now();
        let status = match self.projections.admin_status(READ_MODEL_PROJECTION).await {
            Ok(status) => status,
            Err(crate::OperationError::NotFound(_)) => {
                return Err(RecoveryError::NoReadModel(READ_MODEL_PROJECTION.to_owned()))
            }
            Err(error) => return Err(error.into()),
        };
        // Wallets the read model may not have applied yet are not compared.
        let applied_until = if status.lag_events > 0 {
            started_at - chrono::Duration::milliseconds((status.lag_seconds * 1000.0).ceil() as i64)
        } else {
            started_at
        };
        let horizon = applied_until
            - chrono::Duration::seconds(
                i64::try_from(self.config.recovery_check_margin_secs).unwrap_or(i64::MAX),
            );
        let schema = stable_namespace(READ_MODEL_PROJECTION);
        let (relation, id, columns) = READ_MODEL_WALLETS;
        let check = ReadModelCheck {
            shape: ReadModelShape {
                schema: &schema,
                relation,
                id,
                columns,
            },
            chunk: self.config.recovery_check_chunk,
            sample: REPORT_SAMPLE,
            horizon,
        };
        let span = tracing::info_span!("recovery.read_model_check", requested_by);
        let result: Result<ReadModelReport, ReadModelCheckError> =
            check.run(pool).instrument(span).await;
        let run = runs::record(
            pool,
            &runs::NewRun {
                kind: runs::READ_MODEL_CHECK,
                projection: Some(READ_MODEL_PROJECTION),
                requested_by,
                started_at,
                result: match &result {
                    Ok(report) => Ok(report),
                    Err(error) => Err(error.to_string()),
                },
            },
        )
        .await?;
        metrics::counter!(
            RECOVERY_RUNS_TOTAL,
            "kind" => runs::READ_MODEL_CHECK,
            "outcome" => run.outcome.as_str()
        )
        .increment(1);
        let detail = serde_json::json!({
            "run": run.id,
            "checked": run.report.checked,
            "missing": run.report.missing,
            "extra": run.report.extra,
            "different": run.report.different,
            "error": run.error,
        });
        let mut conn = pool.acquire().await?;
        registry::record_action(
            &mut conn,
            requested_by,
            runs::READ_MODEL_CHECK,
            Some(READ_MODEL_PROJECTION),
            run.outcome.as_str(),
            &detail,
        )
        .await?;
        match run.outcome {
            runs::RunOutcome::Drift => tracing::error!(
                run = run.id,
                missing = run.report.missing,
                extra = run.report.extra,
                different = run.report.different,
                "the read model differs from the write model"
            ),
            runs::RunOutcome::Failed => {
                tracing::warn!(run = run.id, error = ?run.error, "read-model check failed")
            }
            runs::RunOutcome::Clean | runs::RunOutcome::Running => tracing::info!(
                run = run.id,
                checked = run.report.checked,
                "the read model matches the write model"
            ),
        }
        Ok(run)
    }

    /// Stalls, the outbox's oldest unprocessed event and the latest runs.
    pub async fn status(&self) -> Result<RecoveryStatus, RecoveryError> {
        let pool = self.projections.pool();
        let stalls = stall::all_stalls(pool).await?;
        let oldest =
            crate::status::oldest_unprocessed_seconds(&self.projections.admin_list().await?);
        let oldest_unprocessed_at = (oldest > 0.0)
            .then(|| Utc::now() - chrono::Duration::milliseconds((oldest * 1000.0) as i64));
        Ok(RecoveryStatus {
            config: self.config,
            stalls,
            oldest_unprocessed_at,
            oldest_unprocessed_age_seconds: oldest,
            runs: runs::recent(pool, None, STATUS_RUNS).await?,
        })
    }

    /// One stored run (with its progress while a drift check runs).
    pub async fn run_by_id(&self, id: i64) -> Result<Option<runs::Run>, RecoveryError> {
        match runs::get(self.projections.pool(), id).await? {
            Some(run) => Ok(Some(self.with_progress(run).await?)),
            None => Ok(None),
        }
    }
}
