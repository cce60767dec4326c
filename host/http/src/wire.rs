//! The JSON shapes of the admin API and of `GET /projections`: typed bodies, serialised by the
//! server and deserialised by the CLI (`wallex projections …`), so both sides agree by
//! construction.
//!
//! Why it exists: the projection crates report typed values (`wallex_control::status`,
//! `wallex_runtime::dead_letters`, `wallex_control::outcome::Activation`) and know no JSON; this
//! module is the only place that decides field names and formats. Every body converts from the
//! runtime's value with `From`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use wallex_control::dry_run::{DryRun, TableChange};
use wallex_control::outcome::Activation;
use wallex_control::recovery::drift::ProjectionRepair;
use wallex_control::recovery::RecoveryStatus;
use wallex_control::recovery::Repair;
use wallex_control::recovery_runs::Run;
use wallex_control::stall::Stall;
use wallex_control::status::{
    CheckpointPosition, OutboxStats, ProjectionLag, ProjectionStatus, RebuildProgress, RunningHere,
};
use wallex_core::read_model_check::DriftedRow;
use wallex_runtime::config::{OnPoison, Policy, ProjectionSettings};
use wallex_runtime::dead_letters::{DeadLetter, ReplayOutcome};
use wallex_runtime::registry::AdminAction;

/// `GET /admin/projections`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionList {
    /// Every deployed projection.
    pub projections: Vec<ProjectionStatusBody>,
}

/// `GET /admin/projections/{name}`, and the `projection` of an action's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionStatusBody {
    /// The projection's name.
    pub name: String,
    /// `running`, `failing`, `failed`, `paused`, `rebuilding` or `stalled`.
    pub status: String,
    /// The live version's schema version.
    pub schema_version: i64,
    /// SHA-256 of the live component.
    pub sha256: String,
    /// SHA-256 a rollback returns to.
    pub previous_sha256: Option<String>,
    /// Where the live bytes came from.
    pub source: String,
    /// PostgreSQL schema of the live tables.
    pub namespace: String,
    /// Schema of the views readers use.
    pub stable_namespace: String,
    /// Bumped by every registry change of the projection.
    pub generation: i64,
    /// When the live version was deployed.
    pub deployed_at: DateTime<Utc>,
    /// Who deployed it.
    pub deployed_by: String,
    /// What the answering process runs, if it has the projection loaded.
    pub running_here: Option<RunningHereBody>,
    /// The live checkpoint.
    pub checkpoint: Option<CheckpointBody>,
    /// Outbox rows after the checkpoint.
    pub lag_events: i64,
    /// Age of the oldest of those rows, in seconds.
    pub lag_seconds: f64,
    /// Why the last batch failed.
    pub last_error: Option<String>,
    /// Failed batches since the last success.
    pub error_count: i32,
    /// Why the answering process could not load the directory's version.
    pub last_deploy_error: Option<String>,
    /// Limits and policy given with the deploy (the deploy's query keys).
    pub settings: ProjectionSettings,
    /// The limits and policy in force in the answering process.
    pub policy: Option<PolicyBody>,
    /// The rebuild in progress or failed.
    pub rebuild: Option<RebuildBody>,
    /// The stall, while the projection is stalled.
    #[serde(default)]
    pub stall: Option<StallBody>,
}

impl From<ProjectionStatus> for ProjectionStatusBody {
    fn from(s: ProjectionStatus) -> Self {
        Self {
            name: s.name,
            status: s.status.as_str().to_owned(),
            schema_version: s.schema_version,
            sha256: s.sha256,
            previous_sha256: s.previous_sha256,
            source: s.source,
            namespace: s.namespace,
            stable_namespace: s.stable_namespace,
            generation: s.generation,
            deployed_at: s.deployed_at,
            deployed_by: s.deployed_by,
            running_here: s.running_here.map(Into::into),
            checkpoint: s.checkpoint.map(Into::into),
            lag_events: s.lag_events,
            lag_seconds: s.lag_seconds,
            last_error: s.last_error,
            error_count: s.error_count,
            last_deploy_error: s.last_deploy_error,
            settings: s.settings,
            policy: s.policy.map(Into::into),
            rebuild: s.rebuild.map(Into::into),
            stall: s.stall.map(Into::into),
        }
    }
}

/// What the answering process runs of a projection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunningHereBody {
    /// SHA-256 of the component it runs.
    pub sha256: String,
    /// The namespace its batches write to.
    pub namespace: String,
    /// Whether its worker holds the lease.
    pub lease_held: bool,
    /// Bytes of compiled code it keeps mapped for the component (absent for a native handler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compiled_bytes: Option<u64>,
}

impl From<RunningHere> for RunningHereBody {
    fn from(r: RunningHere) -> Self {
        Self {
            sha256: r.sha256,
            namespace: r.namespace,
            lease_held: r.lease_held,
            compiled_bytes: r.compiled_bytes.map(|b| b as u64),
        }
    }
}

/// Where a checkpoint stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointBody {
    /// Transaction id of the last row applied, as text (xid8 exceeds JSON's safe integers).
    pub xact_id: String,
    /// Global position of the last row applied.
    pub position: i64,
    /// Rows applied since it last started from the beginning.
    pub events_applied: i64,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<CheckpointPosition> for CheckpointBody {
    fn from(c: CheckpointPosition) -> Self {
        Self {
            xact_id: c.xact_id.to_string(),
            position: c.position,
            events_applied: c.events_applied,
            updated_at: c.updated_at,
        }
    }
}

/// Limits and poison policy in force.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyBody {
    /// `pause` or `skip`.
    pub on_poison: OnPoison,
    /// Linear memory per call.
    pub memory_bytes: usize,
    /// Wall clock per call.
    pub call_timeout_ms: u64,
    /// Fuel per call, when metered.
    pub fuel: Option<u64>,
    /// Mutations one call may return.
    pub max_mutations: usize,
    /// Bytes of mutations one call may return.
    pub max_batch_bytes: usize,
    /// Host `log` calls per call.
    pub log_lines: u32,
    /// Bytes of host `log` messages per call.
    pub log_bytes: usize,
}

impl From<Policy> for PolicyBody {
    fn from(p: Policy) -> Self {
        Self {
            on_poison: p.on_poison,
            memory_bytes: p.limits.memory_bytes,
            call_timeout_ms: u64::try_from(p.limits.call_timeout.as_millis()).unwrap_or(u64::MAX),
            fuel: p.limits.fuel,
            max_mutations: p.limits.max_mutations,
            max_batch_bytes: p.limits.max_batch_bytes,
            log_lines: p.limits.log_lines,
            log_bytes: p.limits.log_bytes,
        }
    }
}

/// How far a rebuild is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RebuildBody {
    /// `running`, `failed`, or `held` (a drift check's shadow at its cut).
    pub status: String,
    /// `rebuild` or `drift` (a drift check's shadow: never cut over by itself).
    pub purpose: String,
    /// SHA-256 of the version being built.
    pub sha256: String,
    /// Its schema version.
    pub schema_version: i64,
    /// The namespace being filled.
    pub namespace: String,
    /// Rows applied so far.
    pub events_done: i64,
    /// Rows applied plus rows still to apply.
    pub events_total: i64,
    /// Rows per second since it started.
    pub events_per_second: f64,
    /// Seconds left at that rate.
    pub eta_seconds: Option<f64>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Who asked for it.
    pub requested_by: String,
    /// Why it failed.
    pub last_error: Option<String>,
}

impl From<RebuildProgress> for RebuildBody {
    fn from(r: RebuildProgress) -> Self {
        Self {
            status: r.status,
            purpose: r.purpose,
            sha256: r.sha256,
            schema_version: r.schema_version,
            namespace: r.namespace,
            events_done: r.events_done,
            events_total: r.events_total,
            events_per_second: r.events_per_second,
            eta_seconds: r.eta_seconds,
            started_at: r.started_at,
            requested_by: r.requested_by,
            last_error: r.last_error,
        }
    }
}

/// The answer to an admin action: what it did and the projection's status after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionAnswer {
    /// What the action did.
    pub outcome: Outcome,
    /// The projection afterwards.
    pub projection: ProjectionStatusBody,
}

/// What an admin action did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Outcome {
    /// `created`, `swapped`, `rebuild-started`, `unchanged`, `reloaded`, `paused`, `resumed`,
    /// `rebuild-cancelled`.
    Done(String),
    /// A dead-letter replay.
    Replay(ReplayBody),
}

impl From<Activation> for Outcome {
    fn from(activation: Activation) -> Self {
        Self::Done(activation.as_str().to_owned())
    }
}

/// Where a deploy stands: `GET /admin/deploys/{id}`, and the body of a deploy answered with
/// `202 Accepted` (its compile goes on after the answer).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeployJobBody {
    /// The deploy's id (its `Location` is `/admin/deploys/{id}`).
    pub id: String,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    /// The projection named in the request (`None` for `POST /admin/projections` until the
    /// component has described itself).
    pub projection: Option<String>,
    /// SHA-256 of the uploaded bytes.
    pub sha256: String,
    /// Size of the upload.
    pub size_bytes: u64,
    /// When the request arrived.
    pub started_at: DateTime<Utc>,
    /// When it succeeded or failed.
    pub finished_at: Option<DateTime<Utc>>,
    /// What the deploy did, once it succeeded: the same body a synchronous deploy answers.
    pub result: Option<ActionAnswer>,
    /// Why it failed: the RFC 9457 problem a synchronous deploy would have answered.
    pub problem: Option<serde_json::Value>,
}

/// `DELETE /admin/projections/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteAnswer {
    /// Always `deleted`.
    pub outcome: String,
    /// Whether its tables and checkpoint were dropped.
    pub drop_tables: bool,
}

/// What a dead-letter replay did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayBody {
    /// Letters applied and resolved.
    pub replayed: u32,
    /// Letters that failed again.
    pub still_failing: Vec<StillFailing>,
}

/// A letter that failed again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StillFailing {
    /// The event's position.
    pub position: i64,
    /// Why it failed.
    pub error: String,
}

impl From<ReplayOutcome> for ReplayBody {
    fn from(r: ReplayOutcome) -> Self {
        Self {
            replayed: r.replayed,
            still_failing: r
                .still_failing
                .into_iter()
                .map(|(position, error)| StillFailing { position, error })
                .collect(),
        }
    }
}

/// `GET /admin/projections/{name}/dead-letters`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterList {
    /// The letters, by position.
    pub dead_letters: Vec<DeadLetterBody>,
}

/// A recorded poison event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterBody {
    /// Row id.
    pub id: i64,
    /// The projection that skipped it.
    pub projection: String,
    /// The event's position.
    pub global_position: i64,
    /// The event's id.
    pub event_id: uuid::Uuid,
    /// The event's type.
    pub event_type: String,
    /// Why it failed the last time.
    pub error: String,
    /// How often it was tried.
    pub attempts: i32,
    /// When it was first skipped.
    pub recorded_at: DateTime<Utc>,
    /// When it was last tried.
    pub last_attempt_at: DateTime<Utc>,
    /// When a replay applied it.
    pub resolved_at: Option<DateTime<Utc>>,
}

impl From<DeadLetter> for DeadLetterBody {
    fn from(d: DeadLetter) -> Self {
        Self {
            id: d.id,
            projection: d.projection,
            global_position: d.global_position,
            event_id: d.event_id,
            event_type: d.event_type,
            error: d.error,
            attempts: d.attempts,
            recorded_at: d.recorded_at,
            last_attempt_at: d.last_attempt_at,
            resolved_at: d.resolved_at,
        }
    }
}

/// `GET /admin/outbox/stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxStatsBody {
    /// Rows in the outbox.
    pub events: i64,
    /// Highest global position.
    pub last_position: Option<i64>,
    /// When the oldest row some projection has not applied was recorded.
    pub oldest_unprocessed_at: Option<DateTime<Utc>>,
    /// Each projection's position and lag.
    pub projections: Vec<ProjectionLagBody>,
}

/// One projection's place in the outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionLagBody {
    /// The projection.
    pub name: String,
    /// Its checkpoint's position.
    pub position: i64,
    /// Rows after it.
    pub lag_events: i64,
    /// When the oldest of those was recorded.
    pub oldest_unprocessed_at: Option<DateTime<Utc>>,
}

impl From<OutboxStats> for OutboxStatsBody {
    fn from(s: OutboxStats) -> Self {
        Self {
            events: s.events,
            last_position: s.last_position,
            oldest_unprocessed_at: s.oldest_unprocessed_at,
            projections: s.projections.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<ProjectionLag> for ProjectionLagBody {
    fn from(p: ProjectionLag) -> Self {
        Self {
            name: p.name,
            position: p.position,
            lag_events: p.lag_events,
            oldest_unprocessed_at: p.oldest_unprocessed_at,
        }
    }
}

/// `GET /admin/actions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionList {
    /// Newest first.
    pub actions: Vec<ActionBody>,
}

/// One entry of the audit trail.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionBody {
    /// Row id.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who (the admin token's holder, `startup`, `directory-watch`, `system`).
    pub actor: String,
    /// What.
    pub action: String,
    /// On which projection.
    pub projection: Option<String>,
    /// `ok`, `refused` or `failed`.
    pub outcome: String,
    /// The action's particulars, as recorded.
    pub detail: serde_json::Value,
}

impl From<AdminAction> for ActionBody {
    fn from(a: AdminAction) -> Self {
        Self {
            id: a.id,
            at: a.at,
            actor: a.actor,
            action: a.action,
            projection: a.projection,
            outcome: a.outcome,
            detail: a.detail,
        }
    }
}

/// A stalled projection (see `RECOVERY_STALL_SECS`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StallBody {
    /// The projection.
    pub projection: String,
    /// Global position of the checkpoint that does not move.
    pub stuck_position: i64,
    /// Since when it has not moved.
    pub stuck_since: DateTime<Utc>,
    /// When the stall was found.
    pub detected_at: DateTime<Utc>,
    /// Restarts of its worker since then.
    pub restarts: i32,
    /// When its worker was last restarted.
    pub last_restart_at: Option<DateTime<Utc>>,
}

impl From<Stall> for StallBody {
    fn from(s: Stall) -> Self {
        Self {
            projection: s.projection,
            stuck_position: s.stuck_position,
            stuck_since: s.stuck_since,
            detected_at: s.detected_at,
            restarts: s.restarts,
            last_restart_at: s.last_restart_at,
        }
    }
}

/// `GET /admin/recovery`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryStatusBody {
    /// `RECOVERY_INTERVAL_SECS` in force.
    pub interval_secs: u64,
    /// `RECOVERY_STALL_SECS` in force.
    pub stall_secs: u64,
    /// Projections stalled now.
    pub stalls: Vec<StallBody>,
    /// When the oldest outbox row some projection has not applied was recorded.
    pub oldest_unprocessed_at: Option<DateTime<Utc>>,
    /// Its age in seconds (0 when every projection is caught up).
    pub oldest_unprocessed_age_seconds: f64,
    /// The latest checks, newest first.
    pub runs: Vec<RecoveryRunBody>,
}

impl From<RecoveryStatus> for RecoveryStatusBody {
    fn from(s: RecoveryStatus) -> Self {
        Self {
            interval_secs: s.config.recovery_interval_secs,
            stall_secs: s.config.recovery_stall_secs,
            stalls: s.stalls.into_iter().map(Into::into).collect(),
            oldest_unprocessed_at: s.oldest_unprocessed_at,
            oldest_unprocessed_age_seconds: (s.oldest_unprocessed_age_seconds * 1000.0).round()
                / 1000.0,
            runs: s.runs.into_iter().map(Into::into).collect(),
        }
    }
}

/// One recovery check, as stored (`POST /admin/recovery/read-model-check`,
/// `GET /admin/recovery/runs/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryRunBody {
    /// The run's number.
    pub id: i64,
    /// `read-model-check`.
    pub kind: String,
    /// The projection checked.
    pub projection: Option<String>,
    /// Who asked.
    pub requested_by: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended (absent while it runs).
    pub finished_at: Option<DateTime<Utc>>,
    /// `running`, `clean`, `drift` or `failed`.
    pub outcome: String,
    /// A running drift check: how far it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<DriftProgressBody>,
    /// Rows compared.
    pub checked: i64,
    /// Rows written too recently to compare.
    pub in_flight: i64,
    /// Rows of the write model the read model lacks.
    pub missing: i64,
    /// Rows of the read model the write model lacks.
    pub extra: i64,
    /// Rows on both sides that differ.
    pub different: i64,
    /// The first differing rows, with the values that differ.
    pub sample: Vec<DriftedRowBody>,
    /// A drift check: the counts per table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableDriftBody>,
    /// A drift check: whether it keeps its shadow (absent: only when rows differ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_shadow: Option<bool>,
    /// A drift check: the shadow namespace kept for a repair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<String>,
    /// Why the check failed, if it did.
    pub error: Option<String>,
}

/// How far a running drift check is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftProgressBody {
    /// `replaying` or `comparing`.
    pub phase: String,
    /// Events replayed into the shadow.
    pub events_replayed: i64,
    /// Events to replay, as far as known.
    pub events_total: i64,
}

/// What a drift check found in one table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableDriftBody {
    /// The table.
    pub table: String,
    /// Rows compared.
    pub compared: i64,
    /// Rows the replay has and the live table lacks.
    pub missing: i64,
    /// Rows the live table has and the replay lacks.
    pub extra: i64,
    /// Rows on both sides that differ.
    pub different: i64,
}

/// `POST /admin/recovery/repair/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepairBody {
    /// The projection repaired.
    pub projection: String,
    /// `stream` (done), `shadow` (a drift check's shadow catches up and is cut over) or
    /// `rebuild` (a blue/green rebuild started).
    pub mode: String,
    /// `shadow`: the drift check whose shadow is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<i64>,
    /// `stream`: what the repair did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamRepairBody>,
}

/// What a one-stream repair did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamRepairBody {
    /// The stream.
    pub stream_id: String,
    /// Its events replayed.
    pub events: usize,
    /// The live checkpoint's position its rows now reflect.
    pub position: i64,
    /// Rows deleted.
    pub rows_deleted: u64,
    /// Rows written.
    pub rows_written: u64,
    /// Duration of the committed transaction, in milliseconds.
    pub millis: f64,
}

impl RepairBody {
    /// The body for `repair` of `projection`.
    pub fn new(projection: String, repair: Repair) -> Self {
        let (mode, run, stream) = match repair {
            Repair::Stream(s) => (
                "stream",
                None,
                Some(StreamRepairBody {
                    stream_id: s.stream,
                    events: s.events,
                    position: s.position,
                    rows_deleted: s.rows_deleted,
                    rows_written: s.rows_written,
                    millis: (s.millis * 1000.0).round() / 1000.0,
                }),
            ),
            Repair::Projection(ProjectionRepair::Shadow { run }) => ("shadow", Some(run), None),
            Repair::Projection(ProjectionRepair::Rebuild) => ("rebuild", None, None),
        };
        Self {
            projection,
            mode: mode.to_owned(),
            run,
            stream,
        }
    }
}

impl From<Run> for RecoveryRunBody {
    fn from(r: Run) -> Self {
        Self {
            id: r.id,
            kind: r.kind,
            projection: r.projection,
            requested_by: r.requested_by,
            started_at: r.started_at,
            finished_at: r.finished_at,
            outcome: r.outcome.as_str().to_owned(),
            progress: r.progress.map(|p| DriftProgressBody {
                phase: p.phase.as_str().to_owned(),
                events_replayed: p.events_replayed,
                events_total: p.events_total,
            }),
            checked: r.report.checked,
            in_flight: r.report.in_flight,
            missing: r.report.missing,
            extra: r.report.extra,
            different: r.report.different,
            sample: r.report.sample.into_iter().map(Into::into).collect(),
            tables: r
                .tables
                .into_iter()
                .map(|t| TableDriftBody {
                    table: t.table,
                    compared: t.compared,
                    missing: t.missing,
                    extra: t.extra,
                    different: t.different,
                })
                .collect(),
            keep_shadow: r.keep_shadow,
            shadow: r.shadow,
            error: r.error,
        }
    }
}

/// One differing row of a check.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftedRowBody {
    /// A drift check: the table the row is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The wallet id, or a drift check's `column=value` primary key.
    pub id: String,
    /// `missing`, `extra` or `different`.
    pub drift: String,
    /// The compared columns (only those that differ, for `different`).
    pub columns: Vec<DriftedColumnBody>,
}

/// One column of a differing row.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftedColumnBody {
    /// The column (the write model's, for the read-model check).
    pub column: String,
    /// What the source of truth says, as text: the write model's value, or for a drift check
    /// the value replaying the log gives.
    pub write: Option<String>,
    /// What the checked side holds, as text: the read model's, or the live table's.
    pub read: Option<String>,
}

impl From<DriftedRow> for DriftedRowBody {
    fn from(r: DriftedRow) -> Self {
        Self {
            table: r.table,
            id: r.id,
            drift: r.drift.as_str().to_owned(),
            columns: r
                .columns
                .into_iter()
                .map(|(column, write, read)| DriftedColumnBody {
                    column,
                    write,
                    read,
                })
                .collect(),
        }
    }
}

/// An RFC 9457 problem as a client reads it (the server writes it in [`crate::problem`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProblemDocument {
    /// Short summary of the problem type.
    pub title: String,
    /// What happened in this case.
    pub detail: String,
}

/// A dry run (`POST /admin/dry-runs`, `GET /admin/dry-runs/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DryRunBody {
    /// The run's number (its `Location` is `/admin/dry-runs/{id}`).
    pub id: i64,
    /// The projection: the name asked for, then the one the candidate declares.
    pub projection: Option<String>,
    /// SHA-256 of the candidate.
    pub sha256: String,
    /// Who asked.
    pub requested_by: String,
    /// `compiling`, `replaying`, `comparing`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// Whether the shadow is kept afterwards.
    pub keep: bool,
    /// The shadow namespace, while it exists (query it; drop it with `DELETE`).
    pub shadow: Option<String>,
    /// The live version compared with (absent: the name was not live).
    pub live_sha256: Option<String>,
    /// How far it is.
    pub progress: DryRunProgressBody,
    /// What the candidate's `describe` declares.
    pub declared: Option<DeclaredBody>,
    /// The first poison events, in log order (all are counted in `progress.poisonEvents`).
    pub poison: Vec<PoisonEventBody>,
    /// Per table of either version.
    pub tables: Vec<DryRunTableBody>,
    /// The first differing rows.
    pub sample: Vec<DryRunRowBody>,
    /// The global position both sides stood at when compared.
    pub compared_at: Option<i64>,
    /// Milliseconds the replay took.
    pub replay_ms: u64,
    /// Milliseconds the comparison took.
    pub compare_ms: u64,
    /// Whether a cancel was asked for.
    pub cancel_requested: bool,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it was last heard of.
    pub updated_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// How far a dry run is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DryRunProgressBody {
    /// Outbox rows read.
    pub events_read: i64,
    /// Outbox rows when the replay started.
    pub events_total: i64,
    /// Events given to the candidate (the subscribed ones).
    pub events_handled: i64,
    /// Rows the candidate's statements wrote.
    pub rows_written: i64,
    /// The global position the replay stands at.
    pub position: i64,
    /// Poison events met.
    pub poison_events: i64,
}

/// A candidate's declaration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeclaredBody {
    /// Its name.
    pub name: String,
    /// The version of its tables.
    pub schema_version: u32,
    /// The event types it subscribes to.
    pub subscribes_to: Vec<String>,
    /// Its tables.
    pub tables: Vec<DeclaredTableBody>,
}

/// A declared table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeclaredTableBody {
    /// Its name.
    pub name: String,
    /// `name type` per column (`?`: nullable).
    pub columns: Vec<String>,
    /// Its primary key.
    pub primary_key: Vec<String>,
}

/// An event the candidate failed on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoisonEventBody {
    /// Its global position.
    pub position: i64,
    /// Its id.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// Why it failed.
    pub error: String,
}

/// One table of a dry run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DryRunTableBody {
    /// The table.
    pub table: String,
    /// `added`, `removed`, `same`, `changed` (columns) or `key-changed` (not compared).
    pub change: String,
    /// Rows the candidate wrote (absent: it does not declare the table).
    pub rows: Option<i64>,
    /// Rows of the live version (absent: not live, or not declared by it).
    pub live_rows: Option<i64>,
    /// Rows only the candidate has.
    pub missing: i64,
    /// Rows only the live version has.
    pub extra: i64,
    /// Rows on both sides that differ.
    pub different: i64,
    /// Columns only the candidate declares.
    pub columns_added: Vec<String>,
    /// Columns only the live version declares.
    pub columns_removed: Vec<String>,
}

/// A differing row of a dry run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DryRunRowBody {
    /// The table.
    pub table: String,
    /// `column=value` pairs of its primary key.
    pub key: String,
    /// `missing` (only the candidate has it), `extra` (only live has it) or `different`.
    pub change: String,
    /// The columns that differ: `{column, candidate, live}`.
    pub columns: Vec<DryRunColumnBody>,
}

/// One column of a differing row, as PostgreSQL writes it as text.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DryRunColumnBody {
    /// The column.
    pub column: String,
    /// The candidate's value.
    pub candidate: Option<String>,
    /// The live value.
    pub live: Option<String>,
}

/// `GET /admin/dry-runs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DryRunList {
    /// The latest runs, newest first.
    pub dry_runs: Vec<DryRunBody>,
}

impl From<DryRun> for DryRunBody {
    fn from(r: DryRun) -> Self {
        let report = r.report;
        Self {
            id: r.id,
            projection: r.projection,
            sha256: r.sha256,
            requested_by: r.requested_by,
            status: r.status.as_str().to_owned(),
            keep: r.keep,
            shadow: r.namespace,
            live_sha256: r.live_sha256,
            progress: DryRunProgressBody {
                events_read: r.events_read,
                events_total: r.events_total,
                events_handled: r.events_handled,
                rows_written: r.rows_written,
                position: r.position,
                poison_events: r.poison_count,
            },
            declared: report.declared.map(|d| DeclaredBody {
                name: d.name,
                schema_version: d.schema_version,
                subscribes_to: d.subscribes_to,
                tables: d
                    .tables
                    .into_iter()
                    .map(|t| DeclaredTableBody {
                        name: t.name,
                        columns: t.columns,
                        primary_key: t.primary_key,
                    })
                    .collect(),
            }),
            poison: report
                .poison
                .into_iter()
                .map(|p| PoisonEventBody {
                    position: p.position,
                    event_id: p.event_id,
                    event_type: p.event_type,
                    error: p.error,
                })
                .collect(),
            tables: report
                .tables
                .into_iter()
                .map(|t| DryRunTableBody {
                    table: t.table,
                    change: match t.change {
                        TableChange::Added => "added",
                        TableChange::Removed => "removed",
                        TableChange::Same => "same",
                        TableChange::Changed => "changed",
                        TableChange::KeyChanged => "key-changed",
                    }
                    .to_owned(),
                    rows: t.rows,
                    live_rows: t.live_rows,
                    missing: t.missing,
                    extra: t.extra,
                    different: t.different,
                    columns_added: t.columns_added,
                    columns_removed: t.columns_removed,
                })
                .collect(),
            sample: report
                .sample
                .into_iter()
                .map(|s| DryRunRowBody {
                    table: s.table,
                    key: s.key,
                    change: s.change,
                    columns: s
                        .columns
                        .into_iter()
                        .map(|c| DryRunColumnBody {
                            column: c.column,
                            candidate: c.candidate,
                            live: c.live,
                        })
                        .collect(),
                })
                .collect(),
            compared_at: report.compared_at,
            replay_ms: report.replay_ms,
            compare_ms: report.compare_ms,
            cancel_requested: r.cancel_requested,
            error: r.error,
            started_at: r.started_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        }
    }
}
