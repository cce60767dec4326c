//! The projection registry: component bytes, deployments, rebuilds and the admin audit trail, in
//! PostgreSQL.
//!
//! Why it exists: every host instance must run the same bytes for a projection and a restart must
//! keep what an operator deployed. Components are stored content-addressed (SHA-256); one
//! deployment row per projection says which bytes are live, which ran before (rollback), whether
//! it is paused, and its `generation`, which grows with every change. Changes are made under one
//! advisory lock and announced on [`REGISTRY_CHANNEL`]; instances reconcile to the rows.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgExecutor};

/// Channel on which registry changes are announced (payload: the projection's name).
pub const REGISTRY_CHANNEL: &str = "wallex_registry";
/// Name of the transaction-scoped advisory lock that serialises registry changes.
const REGISTRY_LOCK: &str = "wallex-projection-registry";

/// The SHA-256 of component bytes, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What an operator wants a deployed projection to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentState {
    /// Its worker applies batches.
    Running,
    /// Its worker applies nothing until it is resumed; its tables keep being served.
    Paused,
    /// Stopped by `DELETE`; kept as a tombstone so a bundled or directory copy does not bring it
    /// back on restart. A new deploy of the name revives it.
    Deleted,
}

impl DeploymentState {
    /// The state as stored and reported (`running`, `paused`, `deleted`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Deleted => "deleted",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "paused" => Self::Paused,
            "deleted" => Self::Deleted,
            _ => Self::Running,
        }
    }
}

/// A deployment row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Deployment {
    /// The projection's name.
    pub projection: String,
    /// Hex SHA-256 of the live component.
    pub sha256: String,
    /// The live version's schema version.
    pub schema_version: i64,
    /// The PostgreSQL schema holding the live tables (readers use the stable `projection_<name>`
    /// views).
    pub namespace: String,
    /// Where the live bytes came from: `bundled:<name>`, `directory:<file>`, `upload` or
    /// `rollback`.
    pub source: String,
    /// Hex SHA-256 of the version that ran before: the rollback target.
    pub previous_sha256: Option<String>,
    /// What the operator wants it to do; read it with [`Deployment::state`].
    #[sqlx(try_from = "String")]
    pub state: StateText,
    /// Grows with every change of the row; an instance reloads a projection whose generation moved.
    pub generation: i64,
    /// The number of the last rebuild started: rebuilds fill `<namespace base>_b<n>`.
    pub build_seq: i64,
    /// When the live version was deployed.
    pub deployed_at: DateTime<Utc>,
    /// Who deployed it (an operator, or the host's own actor names in `wallex-control`'s `deploy`).
    pub deployed_by: String,
    /// Limits and poison policy given with the deploy ([`super::config::ProjectionSettings`]).
    pub settings: serde_json::Value,
}

/// [`DeploymentState`] as read from its text column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateText(pub DeploymentState);

impl From<String> for StateText {
    fn from(text: String) -> Self {
        Self(DeploymentState::parse(&text))
    }
}

impl Deployment {
    /// What the operator wants the projection to do.
    pub fn state(&self) -> DeploymentState {
        self.state.0
    }

    /// The deploy's settings (an unreadable value counts as none: the configuration applies).
    pub fn settings(&self) -> super::config::ProjectionSettings {
        serde_json::from_value(self.settings.clone()).unwrap_or_default()
    }
}

/// A rebuild row: a fresh copy of a projection's tables being filled.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Rebuild {
    /// The name of the projection being rebuilt.
    pub projection: String,
    /// Hex SHA-256 of the component filling the new tables.
    pub sha256: String,
    /// Its schema version.
    pub schema_version: i64,
    /// The PostgreSQL schema being filled.
    pub namespace: String,
    /// The deployment's source once the rebuild is cut over.
    pub source: String,
    /// `running` or `failed`.
    pub status: String,
    /// Why it failed, clipped; `None` while it runs.
    pub last_error: Option<String>,
    /// Outbox rows when it started: the measure of its progress.
    pub events_total: i64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Who started it; recorded as the deployer at the cut-over.
    pub requested_by: String,
    /// [`PURPOSE_REBUILD`] (cut over when caught up) or [`PURPOSE_DRIFT`] (a drift check's
    /// shadow: stops at the live checkpoint and is compared, never cut over by itself).
    pub purpose: String,
    /// The drift check (`recovery_runs.id`) a shadow belongs to.
    pub drift_run: Option<i64>,
}

/// A blue/green rebuild, cut over when caught up.
pub const PURPOSE_REBUILD: &str = "rebuild";
/// A drift check's shadow.
pub const PURPOSE_DRIFT: &str = "drift";

impl Rebuild {
    /// Whether batches still fill it (`running`; not `failed`, nor a drift shadow `held` at its
    /// cut).
    pub fn in_progress(&self) -> bool {
        self.status == "running"
    }

    /// Whether it is a drift check's shadow.
    pub fn is_drift(&self) -> bool {
        self.purpose == PURPOSE_DRIFT
    }

    /// Whether the rebuild failed (it waits for a reload, a cancel or a new deploy).
    pub fn failed(&self) -> bool {
        self.status == "failed"
    }
}

const DEPLOYMENT_COLUMNS: &str = "projection, sha256, schema_version, namespace, source,
    previous_sha256, state, generation, build_seq, deployed_at, deployed_by, settings";
const REBUILD_COLUMNS: &str = "projection, sha256, schema_version, namespace, source, status,
    last_error, events_total, started_at, requested_by, purpose, drift_run";

/// Takes the registry lock for the rest of the caller's transaction.
pub async fn lock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(REGISTRY_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

/// Stores component bytes under their digest (a no-op if they are already stored).
pub async fn store_component(
    conn: &mut PgConnection,
    sha256: &str,
    bytes: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_components (sha256, bytes, size_bytes) VALUES ($1, $2, $3)
         ON CONFLICT (sha256) DO NOTHING",
    )
    .bind(sha256)
    .bind(bytes)
    .bind(i32::try_from(bytes.len()).unwrap_or(i32::MAX))
    .execute(conn)
    .await?;
    Ok(())
}

/// The bytes stored under `sha256`.
pub async fn component_bytes<'e>(
    executor: impl PgExecutor<'e>,
    sha256: &str,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT bytes FROM projection_components WHERE sha256 = $1")
        .bind(sha256)
        .fetch_optional(executor)
        .await
}

/// Every deployment row, deleted ones included, by name.
pub async fn deployments<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Vec<Deployment>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM projection_deployments ORDER BY projection"
    ))
    .fetch_all(executor)
    .await
}

/// One deployment row (deleted ones included), without locking it.
pub async fn deployment(
    pool: &sqlx::PgPool,
    projection: &str,
) -> Result<Option<Deployment>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM projection_deployments WHERE projection = $1"
    ))
    .bind(projection)
    .fetch_optional(pool)
    .await
}

/// Replaces a deployment's settings (in the caller's transaction).
pub async fn set_settings(
    conn: &mut PgConnection,
    projection: &str,
    settings: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE projection_deployments SET settings = $2 WHERE projection = $1")
        .bind(projection)
        .bind(settings)
        .execute(conn)
        .await?;
    Ok(())
}

/// One deployment row, locked for the caller's transaction.
pub async fn deployment_for_update(
    conn: &mut PgConnection,
    projection: &str,
) -> Result<Option<Deployment>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM projection_deployments WHERE projection = $1 FOR UPDATE"
    ))
    .bind(projection)
    .fetch_optional(conn)
    .await
}

/// Every rebuild in progress (or failed), by name.
pub async fn rebuilds<'e>(executor: impl PgExecutor<'e>) -> Result<Vec<Rebuild>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {REBUILD_COLUMNS} FROM projection_rebuilds ORDER BY projection"
    ))
    .fetch_all(executor)
    .await
}

/// The rebuild of one projection, if any.
pub async fn rebuild(
    conn: &mut PgConnection,
    projection: &str,
) -> Result<Option<Rebuild>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {REBUILD_COLUMNS} FROM projection_rebuilds WHERE projection = $1"
    ))
    .bind(projection)
    .fetch_optional(conn)
    .await
}

/// Announces a change of `projection` to every instance (delivered at commit).
pub async fn notify(conn: &mut PgConnection, projection: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(REGISTRY_CHANNEL)
        .bind(projection)
        .execute(conn)
        .await?;
    Ok(())
}

/// Bumps a deployment's generation (every instance reloads it).
pub async fn bump(conn: &mut PgConnection, projection: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_deployments SET generation = generation + 1, updated_at = now()
         WHERE projection = $1",
    )
    .bind(projection)
    .execute(&mut *conn)
    .await?;
    notify(conn, projection).await
}

/// One entry of the admin audit trail.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AdminAction {
    /// The entry's number; later entries have higher ones.
    pub id: i64,
    /// When the action happened.
    pub at: DateTime<Utc>,
    /// Who did it: an operator, or the host's own actor names in `wallex-control`'s `deploy`.
    pub actor: String,
    /// What was done (`deploy`, `pause`, `rebuild`, …).
    pub action: String,
    /// The projection it concerned, if one.
    pub projection: Option<String>,
    /// How it ended: `ok`, `failed`, `rejected`, or a deploy's
    /// `wallex-control`'s `outcome::Activation::as_str`.
    pub outcome: String,
    /// What else the action recorded, as a JSON object (for a deploy: digest, schema version,
    /// source, size, settings).
    pub detail: serde_json::Value,
}

/// Appends to the admin audit trail.
pub async fn record_action(
    conn: &mut PgConnection,
    actor: &str,
    action: &str,
    projection: Option<&str>,
    outcome: &str,
    detail: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO admin_actions (actor, action, projection, outcome, detail)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(actor)
    .bind(action)
    .bind(projection)
    .bind(outcome)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// The latest entries of the audit trail, newest first, optionally of one projection.
pub async fn recent_actions<'e>(
    executor: impl PgExecutor<'e>,
    projection: Option<&str>,
    limit: i64,
) -> Result<Vec<AdminAction>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, actor, action, projection, outcome, detail FROM admin_actions
         WHERE $1::text IS NULL OR projection = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(projection)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// Another live projection whose name maps to the same schema names as `name` (`-` and `_` are
/// one), if any.
pub async fn colliding_name(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT projection FROM projection_deployments
         WHERE projection <> $1 AND state <> 'deleted'
           AND replace(projection, '-', '_') = replace($1, '-', '_')",
    )
    .bind(name)
    .fetch_optional(conn)
    .await
}

/// Records a new deployment of `projection`, or revives a deleted one, running `sha256` in
/// `namespace` (a first version's tables).
#[allow(clippy::too_many_arguments)] // One column each, all needed for the row.
pub async fn upsert_deployment(
    conn: &mut PgConnection,
    projection: &str,
    sha256: &str,
    schema_version: u32,
    namespace: &str,
    source: &str,
    previous_sha256: Option<&str>,
    actor: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_deployments
            (projection, sha256, schema_version, namespace, source, previous_sha256, deployed_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (projection) DO UPDATE
            SET sha256 = EXCLUDED.sha256, schema_version = EXCLUDED.schema_version,
                namespace = EXCLUDED.namespace, source = EXCLUDED.source,
                previous_sha256 = EXCLUDED.previous_sha256, state = 'running',
                deployed_at = now(), deployed_by = EXCLUDED.deployed_by,
                generation = projection_deployments.generation + 1, updated_at = now()",
    )
    .bind(projection)
    .bind(sha256)
    .bind(i64::from(schema_version))
    .bind(namespace)
    .bind(source)
    .bind(previous_sha256)
    .bind(actor)
    .execute(conn)
    .await?;
    Ok(())
}

/// Swaps the live version in place (same tables): the old sha becomes the rollback target.
pub async fn swap_version(
    conn: &mut PgConnection,
    projection: &str,
    sha256: &str,
    source: &str,
    actor: &str,
    settings: Option<&serde_json::Value>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_deployments
         SET previous_sha256 = sha256, sha256 = $2, source = $3,
             deployed_at = now(), deployed_by = $4,
             settings = COALESCE($5, settings),
             generation = generation + 1, updated_at = now()
         WHERE projection = $1",
    )
    .bind(projection)
    .bind(sha256)
    .bind(source)
    .bind(actor)
    .bind(settings)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets a deployment's state (running, paused, deleted).
pub async fn set_state(
    conn: &mut PgConnection,
    projection: &str,
    state: DeploymentState,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE projection_deployments SET state = $2 WHERE projection = $1")
        .bind(projection)
        .bind(state.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

/// Records a started rebuild of `projection` into `namespace`, numbered `build`.
#[allow(clippy::too_many_arguments)] // One column each, all needed for the row.
pub async fn insert_rebuild(
    conn: &mut PgConnection,
    projection: &str,
    build: i64,
    sha256: &str,
    schema_version: u32,
    namespace: &str,
    source: &str,
    events_total: i64,
    actor: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_rebuilds
            (projection, sha256, schema_version, namespace, source, events_total, requested_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(projection)
    .bind(sha256)
    .bind(i64::from(schema_version))
    .bind(namespace)
    .bind(source)
    .bind(events_total)
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE projection_deployments
         SET build_seq = $2, generation = generation + 1, updated_at = now()
         WHERE projection = $1",
    )
    .bind(projection)
    .bind(build)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets a failed rebuild running again (an operator's reload).
pub async fn retry_rebuild(conn: &mut PgConnection, projection: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_rebuilds SET status = 'running', last_error = NULL
         WHERE projection = $1 AND status = 'failed'",
    )
    .bind(projection)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks a rebuild failed with `error` (clipped).
pub async fn fail_rebuild(
    conn: &mut PgConnection,
    projection: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_rebuilds SET status = 'failed', last_error = $2 WHERE projection = $1",
    )
    .bind(projection)
    .bind(wallex_sandbox::guest_text::clip(
        error,
        wallex_sandbox::guest_text::MAX_ERROR_BYTES,
    ))
    .execute(conn)
    .await?;
    Ok(())
}

/// Makes a just-started rebuild a drift check's shadow for run `run`.
pub async fn set_drift(
    conn: &mut PgConnection,
    projection: &str,
    run: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_rebuilds SET purpose = 'drift', drift_run = $2 WHERE projection = $1",
    )
    .bind(projection)
    .bind(run)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stops a drift shadow at its cut: no more batches fill it.
pub async fn hold_shadow(conn: &mut PgConnection, projection: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE projection_rebuilds SET status = 'held' WHERE projection = $1")
        .bind(projection)
        .execute(conn)
        .await?;
    Ok(())
}

/// Turns a held drift shadow into a rebuild (a repair): it catches up from its cut and is cut
/// over like any rebuild.
pub async fn promote_shadow(
    conn: &mut PgConnection,
    projection: &str,
    actor: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_rebuilds
         SET purpose = 'rebuild', status = 'running', drift_run = NULL, last_error = NULL,
             requested_by = $2
         WHERE projection = $1",
    )
    .bind(projection)
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    bump(conn, projection).await
}

/// Forgets a projection's rebuild row.
pub async fn delete_rebuild(conn: &mut PgConnection, projection: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM projection_rebuilds WHERE projection = $1")
        .bind(projection)
        .execute(conn)
        .await?;
    Ok(())
}

/// Makes a rebuild's version the live one (the cut-over's registry part): the old sha becomes
/// the rollback target when it differs.
pub async fn promote_rebuild(
    conn: &mut PgConnection,
    rebuild: &Rebuild,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_deployments
         SET previous_sha256 = CASE WHEN sha256 <> $2 THEN sha256 ELSE previous_sha256 END,
             sha256 = $2, schema_version = $3, namespace = $4, source = $5,
             deployed_at = now(), deployed_by = $6, generation = generation + 1,
             updated_at = now()
         WHERE projection = $1",
    )
    .bind(&rebuild.projection)
    .bind(&rebuild.sha256)
    .bind(rebuild.schema_version)
    .bind(&rebuild.namespace)
    .bind(&rebuild.source)
    .bind(&rebuild.requested_by)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets every deployment (a benchmark starting from a clean registry; component bytes stay).
pub async fn delete_all_deployments(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM projection_deployments")
        .execute(conn)
        .await?;
    Ok(())
}
