//! What an operator sees of projections: status (registry, checkpoint, lag, rebuild progress,
//! policy, this process's worker) and outbox statistics.
//!
//! Architecture invariant: read-only. API boundary: typed values; the HTTP layer decides their
//! JSON shape.

use chrono::{DateTime, Utc};

use crate::outcome::OperationError;
use crate::Projections;
use wallex_runtime::checkpoint::{self, Checkpoint};
use wallex_runtime::config::{Policy, ProjectionSettings};
use wallex_runtime::registry::{self, Deployment, DeploymentState, Rebuild};
use wallex_runtime::worker::Projector;

/// What a projection is doing, as an operator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportedStatus {
    /// Applying batches normally.
    Running,
    /// Its last batch failed; it is retried after the backoff.
    Failing,
    /// It gave up after its retries and waits for an operator (deploy a fix, or reload).
    Failed,
    /// An operator paused it.
    Paused,
    /// A blue/green rebuild is filling new tables; the live version keeps serving.
    Rebuilding,
    /// Events wait, yet its checkpoint has not moved for `RECOVERY_STALL_SECS` without a failure
    /// (see [`crate::stall`]); its worker is being restarted.
    Stalled,
}

impl ReportedStatus {
    /// The status as reported (`running`, `failing`, `failed`, `paused`, `rebuilding`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Failing => "failing",
            Self::Failed => "failed",
            Self::Paused => "paused",
            Self::Rebuilding => "rebuilding",
            Self::Stalled => "stalled",
        }
    }
}

/// One projection, as `GET /admin/projections/{name}` shows it.
#[derive(Debug, Clone)]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// What it is doing.
    pub status: ReportedStatus,
    /// The live version's schema version.
    pub schema_version: i64,
    /// SHA-256 of the live component.
    pub sha256: String,
    /// SHA-256 a rollback returns to.
    pub previous_sha256: Option<String>,
    /// Where the live bytes came from (a file, an upload, a rollback).
    pub source: String,
    /// PostgreSQL schema of the live tables.
    pub namespace: String,
    /// The schema of the views readers use (`projection_<name>`).
    pub stable_namespace: String,
    /// Bumped by every registry change of the projection.
    pub generation: i64,
    /// When the live version was deployed.
    pub deployed_at: DateTime<Utc>,
    /// Who deployed it.
    pub deployed_by: String,
    /// What this process runs, if it has the projection loaded.
    pub running_here: Option<RunningHere>,
    /// The live checkpoint, once the projection has one.
    pub checkpoint: Option<CheckpointPosition>,
    /// Outbox rows after the checkpoint.
    pub lag_events: i64,
    /// Age of the oldest of those rows, in seconds (0 when caught up).
    pub lag_seconds: f64,
    /// Why the last batch failed, while it is failing or failed (clipped).
    pub last_error: Option<String>,
    /// Failed batches since the last success.
    pub error_count: i32,
    /// Why this process could not load the version the directory offered, if it could not.
    pub last_deploy_error: Option<String>,
    /// Limits and policy given with the deploy.
    pub settings: ProjectionSettings,
    /// The limits and policy in force in this process.
    pub policy: Option<Policy>,
    /// The rebuild in progress or failed, if any.
    pub rebuild: Option<RebuildProgress>,
    /// The stall, while the projection is stalled.
    pub stall: Option<crate::stall::Stall>,
}

/// What this process runs of a projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningHere {
    /// SHA-256 of the component this process runs.
    pub sha256: String,
    /// The namespace its batches write to.
    pub namespace: String,
    /// Whether this process's worker holds the lease.
    pub lease_held: bool,
    /// Bytes of compiled code this process keeps mapped for the component (`None`: a native
    /// handler).
    pub compiled_bytes: Option<usize>,
}

/// Where a checkpoint stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointPosition {
    /// Transaction id of the last row applied.
    pub xact_id: u64,
    /// Global position of the last row applied.
    pub position: i64,
    /// Rows applied since the checkpoint last started from the beginning.
    pub events_applied: i64,
    /// When it last moved or changed status.
    pub updated_at: DateTime<Utc>,
}

/// How far a rebuild is.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildProgress {
    /// `running`, `failed`, or `held` (a drift check's shadow at its cut).
    pub status: String,
    /// `rebuild` (cut over when caught up) or `drift` (a drift check's shadow, never cut over by
    /// itself).
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
    /// Rows per second since it started (one decimal).
    pub events_per_second: f64,
    /// Seconds left at that rate, when it is moving.
    pub eta_seconds: Option<f64>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Who asked for it.
    pub requested_by: String,
    /// Why it failed, if it did.
    pub last_error: Option<String>,
}

/// The log's size and how far behind each projection is.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxStats {
    /// Rows in the outbox.
    pub events: i64,
    /// Highest global position.
    pub last_position: Option<i64>,
    /// When the oldest row some projection has not applied was recorded.
    pub oldest_unprocessed_at: Option<DateTime<Utc>>,
    /// Each projection's position and lag.
    pub projections: Vec<ProjectionLag>,
}

/// One projection's place in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionLag {
    /// The projection's name.
    pub name: String,
    /// Global position of its checkpoint.
    pub position: i64,
    /// Rows after its checkpoint.
    pub lag_events: i64,
    /// When the oldest of those was recorded.
    pub oldest_unprocessed_at: Option<DateTime<Utc>>,
}

impl Projections {
    /// What an operator sees of one projection.
    pub async fn admin_status(&self, name: &str) -> Result<ProjectionStatus, OperationError> {
        let deployment = self.deployed(name).await?;
        self.status_of(&deployment).await
    }

    async fn status_of(&self, deployment: &Deployment) -> Result<ProjectionStatus, OperationError> {
        let pool = self.pool();
        let name = deployment.projection.as_str();
        // The rebuild row first, then the deployment again: a cut-over deletes the one and
        // re-points the other in one transaction, so in this order a status never shows the old
        // namespace without its rebuild (as two reads in the other order could, between them).
        let rebuild = registry::rebuild(&mut *pool.acquire().await?, name).await?;
        let fresh = registry::deployment(pool, name).await?;
        let deployment = fresh.as_ref().unwrap_or(deployment);
        let checkpoint = checkpoint::read(pool, name).await?;
        let rebuild_checkpoint = match &rebuild {
            Some(_) => checkpoint::read(pool, &checkpoint::rebuild_key(name)).await?,
            None => None,
        };
        let lag = match &checkpoint {
            Some(c) => Some(wallex_core::outbox::lag_after(pool, c.cursor).await?),
            None => None,
        };
        let rebuild_remaining = match &rebuild_checkpoint {
            Some(c) => Some(wallex_core::outbox::lag_after(pool, c.cursor).await?.0),
            None => None,
        };
        let stall = crate::stall::stall_of(pool, name).await?;
        Ok(status(
            deployment,
            self.get(name).as_deref(),
            checkpoint.as_ref(),
            lag,
            rebuild
                .as_ref()
                .map(|r| (r, rebuild_checkpoint.as_ref(), rebuild_remaining)),
            stall,
        ))
    }

    /// What an operator sees of every deployed projection.
    pub async fn admin_list(&self) -> Result<Vec<ProjectionStatus>, OperationError> {
        let mut items = Vec::new();
        for deployment in registry::deployments(self.pool()).await? {
            if deployment.state() == DeploymentState::Deleted {
                continue;
            }
            items.push(self.status_of(&deployment).await?);
        }
        Ok(items)
    }

    /// The log's size and how far behind each projection is.
    pub async fn outbox_stats(&self) -> Result<OutboxStats, OperationError> {
        let pool = self.pool();
        let (events, last_position) = wallex_core::outbox::size(pool).await?;
        let mut projections = Vec::new();
        let mut oldest: Option<DateTime<Utc>> = None;
        for checkpoint in checkpoint::read_all(pool).await? {
            let (lag_events, oldest_unprocessed_at) =
                wallex_core::outbox::lag_after(pool, checkpoint.cursor).await?;
            if let Some(at) = oldest_unprocessed_at {
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
            projections.push(ProjectionLag {
                name: checkpoint.projection,
                position: checkpoint.cursor.position,
                lag_events,
                oldest_unprocessed_at,
            });
        }
        Ok(OutboxStats {
            events,
            last_position,
            oldest_unprocessed_at: oldest,
            projections,
        })
    }
}

/// Age in seconds of the oldest outbox row some of `statuses` has not applied (0 when all are
/// caught up).
pub fn oldest_unprocessed_seconds(statuses: &[ProjectionStatus]) -> f64 {
    statuses
        .iter()
        .filter(|status| status.lag_events > 0)
        .map(|status| status.lag_seconds)
        .fold(0.0, f64::max)
}

fn status(
    deployment: &Deployment,
    projector: Option<&Projector>,
    checkpoint: Option<&Checkpoint>,
    lag: Option<(i64, Option<DateTime<Utc>>)>,
    rebuild: Option<(&Rebuild, Option<&Checkpoint>, Option<i64>)>,
    stall: Option<crate::stall::Stall>,
) -> ProjectionStatus {
    let checkpoint_status = checkpoint.map(|c| c.status);
    let status = if deployment.state() == DeploymentState::Paused {
        ReportedStatus::Paused
    } else if checkpoint_status == Some(checkpoint::Status::Failed) {
        ReportedStatus::Failed
    } else if stall.is_some() {
        ReportedStatus::Stalled
    } else if rebuild.is_some_and(|(r, _, _)| r.in_progress() && !r.is_drift()) {
        ReportedStatus::Rebuilding
    } else if checkpoint_status == Some(checkpoint::Status::Failing) {
        ReportedStatus::Failing
    } else {
        ReportedStatus::Running
    };
    let now = Utc::now();
    let (lag_events, oldest) = lag.unwrap_or((0, None));
    let rebuild = rebuild.map(|(r, c, remaining)| {
        let done = c.map_or(0, |c| c.events_applied);
        let remaining = remaining.unwrap_or(0);
        let elapsed = (now - r.started_at).num_milliseconds().max(1) as f64 / 1000.0;
        let rate = done as f64 / elapsed;
        RebuildProgress {
            status: r.status.clone(),
            purpose: r.purpose.clone(),
            sha256: r.sha256.clone(),
            schema_version: r.schema_version,
            namespace: r.namespace.clone(),
            events_done: done,
            events_total: done + remaining,
            events_per_second: (rate * 10.0).round() / 10.0,
            eta_seconds: (rate > 0.0).then(|| (remaining as f64 / rate).ceil()),
            started_at: r.started_at,
            requested_by: r.requested_by.clone(),
            last_error: r.last_error.clone(),
        }
    });
    let active = projector.map(|p| p.active());
    ProjectionStatus {
        name: deployment.projection.clone(),
        status,
        schema_version: deployment.schema_version,
        sha256: deployment.sha256.clone(),
        previous_sha256: deployment.previous_sha256.clone(),
        source: deployment.source.clone(),
        namespace: deployment.namespace.clone(),
        stable_namespace: wallex_runtime::schema::stable_namespace(&deployment.projection),
        generation: deployment.generation,
        deployed_at: deployment.deployed_at,
        deployed_by: deployment.deployed_by.clone(),
        running_here: active.as_ref().map(|a| RunningHere {
            sha256: a.sha256.clone(),
            namespace: a.schema.namespace.clone(),
            lease_held: projector.is_some_and(|p| p.lease_held()),
            compiled_bytes: a.handler.compiled_bytes(),
        }),
        checkpoint: checkpoint.map(|c| CheckpointPosition {
            xact_id: c.cursor.xact_id,
            position: c.cursor.position,
            events_applied: c.events_applied,
            updated_at: c.updated_at,
        }),
        lag_events,
        lag_seconds: oldest
            .map(|at| ((now - at).num_milliseconds().max(0) as f64) / 1000.0)
            .unwrap_or(0.0),
        last_error: checkpoint.and_then(|c| c.last_error.clone()),
        error_count: checkpoint.map_or(0, |c| c.error_count),
        last_deploy_error: projector.and_then(|p| p.last_deploy_error()),
        settings: deployment.settings(),
        policy: active.as_ref().map(|a| a.policy),
        rebuild,
        stall,
    }
}
