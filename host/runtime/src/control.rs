//! Operating projections by name: deploy, reload, rebuild (blue/green), pause, resume, rollback,
//! delete, and what an operator sees of them.
//!
//! Why it exists: a team ships a new `.wasm` and an operator puts it live with no redeploy of the
//! host and no event lost or applied twice. Every operation
//! 1. validates before anything changes (size, preamble, compile off the async runtime with a
//!    time limit, the `projection` world, `describe`, the declaration, the name);
//! 2. changes the registry in one transaction under the registry lock, with the tables it needs,
//!    and announces the change (every instance reconciles within a notification's delay);
//! 3. is recorded in the admin audit trail.
//!
//! A version with the same tables swaps in place: workers read the live version at every batch
//! boundary, so the batch in flight finishes on the old one and the next starts on the new one
//! from the same checkpoint. A new schema version (or an explicit rebuild) fills a fresh namespace
//! from the start of the log under its own checkpoint while the live version keeps serving; once
//! it has caught up the worker holding the lease cuts over in one transaction: the stable views,
//! the live checkpoint and the registry switch together, and the old tables are dropped.

use super::text::{clip, quoted, MAX_ERROR_BYTES};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::{Connection, PgConnection};

use super::checkpoint::{self, Checkpoint};
use super::config::ProjectionSettings;
use super::engine::{binary_kind, BinaryKind, ComponentError, LoadedComponent};
use super::registry::{self, Deployment, DeploymentState, Rebuild};
use super::schema::{build_namespace, namespace_base, quote, ProjectionSchema, MAX_BUILD_NUMBER};
use super::worker::{Active, Projector};
use super::Projections;

/// Actor recorded for changes the host makes by itself at start-up.
pub const STARTUP_ACTOR: &str = "startup";
/// Actor recorded for changes made by the directory watch.
pub const WATCH_ACTOR: &str = "directory-watch";
/// Actor recorded for cut-overs and failed rebuilds (the worker's own decisions).
pub const SYSTEM_ACTOR: &str = "system";
/// Source recorded for uploads through the admin API.
pub const UPLOAD_SOURCE: &str = "upload";
/// Source recorded for a rollback.
pub const ROLLBACK_SOURCE: &str = "rollback";

/// Why an operation was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("the component is {size} bytes, more than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("not a WebAssembly binary (no `\\0asm` preamble)")]
    NotWasm,
    #[error("a core WebAssembly module, not a component: build for wasm32-wasip2 or wrap it with `wasm-tools component new`")]
    CoreModule,
    #[error("compiling the component took longer than {0:?}")]
    CompileTimeout(Duration),
    #[error(transparent)]
    Component(#[from] ComponentError),
    #[error("invalid declaration: {0}")]
    Schema(#[from] super::schema::SchemaError),
    #[error("the component is named {}, not {}", quoted(actual), quoted(expected))]
    NameMismatch { expected: String, actual: String },
    #[error(
        "{} would share the tables of projection {} (`-` and `_` map to the same schema name)",
        quoted(name),
        quoted(other)
    )]
    NameCollision { name: String, other: String },
    #[error("version {schema_version} declares different tables than the live version: bump schema_version to rebuild into new tables")]
    TablesChanged { schema_version: u32 },
    #[error("no projection named {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("registry database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    Load(Box<super::LoadError>),
}

impl From<super::LoadError> for DeployError {
    fn from(error: super::LoadError) -> Self {
        Self::Load(Box::new(error))
    }
}

impl DeployError {
    /// Whether the component itself was refused (as opposed to the operation or the database).
    pub fn is_invalid_component(&self) -> bool {
        matches!(
            self,
            Self::NotWasm
                | Self::CoreModule
                | Self::CompileTimeout(_)
                | Self::Component(_)
                | Self::Schema(_)
                | Self::NameMismatch { .. }
                | Self::NameCollision { .. }
                | Self::TablesChanged { .. }
        )
    }
}

/// A validated component, not yet live.
#[derive(Clone)]
pub struct Candidate {
    pub sha256: String,
    pub bytes: Arc<Vec<u8>>,
    pub component: Arc<LoadedComponent>,
    /// The declaration, in the namespace a first deployment of its version gets.
    pub schema: ProjectionSchema,
}

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// A new projection: tables created, it starts from the beginning of the log.
    Created,
    /// Same tables: the new version runs from the next batch on, from the same checkpoint.
    Swapped,
    /// New tables are being filled in the background; readers keep the live version until the
    /// cut-over.
    RebuildStarted,
    /// These bytes are already live (or already being rebuilt into).
    Unchanged,
}

impl Activation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Swapped => "swapped",
            Self::RebuildStarted => "rebuild-started",
            Self::Unchanged => "unchanged",
        }
    }
}

impl Projections {
    /// Checks that `bytes` are a projection component this host can run: size, preamble,
    /// compiles (on a blocking thread, within the compile time limit), implements the world,
    /// describes itself, declares valid tables.
    pub async fn validate(&self, bytes: Vec<u8>, origin: &str) -> Result<Candidate, DeployError> {
        let limit = self.inner.config.max_component_bytes;
        if bytes.len() > limit {
            return Err(DeployError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        match binary_kind(&bytes) {
            BinaryKind::Component => {}
            BinaryKind::CoreModule => return Err(DeployError::CoreModule),
            BinaryKind::NotWasm => return Err(DeployError::NotWasm),
        }
        let sha256 = registry::sha256_hex(&bytes);
        let bytes = Arc::new(bytes);
        let component = match self.cached(&sha256) {
            Some(hit) => hit,
            None => self.compile(origin.to_owned(), Arc::clone(&bytes)).await?,
        };
        let info = component
            .info()
            .ok_or_else(|| ComponentError::Join("component was loaded without describe".into()))?;
        let schema = ProjectionSchema::from_info(info)?;
        self.cache(&sha256, Arc::clone(&component));
        Ok(Candidate {
            sha256,
            bytes,
            component,
            schema,
        })
    }

    /// Compiles and describes a component on a blocking thread, at most
    /// [`super::MAX_CONCURRENT_COMPILES`] at a time, within the compile time limit. (A compile
    /// that overruns keeps its thread until it ends, but its result is dropped.)
    pub(super) async fn compile(
        &self,
        origin: String,
        bytes: Arc<Vec<u8>>,
    ) -> Result<Arc<LoadedComponent>, DeployError> {
        let timeout = self.inner.config.compile_timeout;
        let _slot = self
            .inner
            .compile_slots
            .acquire()
            .await
            .map_err(|e| ComponentError::Join(e.to_string()))?;
        let runtime = self.inner.runtime.clone();
        let task = tokio::task::spawn_blocking(move || runtime.load(&origin, &bytes));
        match tokio::time::timeout(timeout, task).await {
            Err(_) => Err(DeployError::CompileTimeout(timeout)),
            Ok(joined) => Ok(Arc::new(
                joined.map_err(|e| ComponentError::Join(e.to_string()))??,
            )),
        }
    }

    /// Registers a component found at start-up or by the directory watch: new projections are
    /// created and changed ones activated, but a projection an operator uploaded, rolled back or
    /// deleted is left as the operator left it.
    pub async fn sync_source(
        &self,
        candidate: Candidate,
        source: &str,
        actor: &str,
    ) -> Result<Activation, DeployError> {
        let name = candidate.schema.name.clone();
        let current = registry::deployment(&self.inner.pool, &name).await?;
        if let Some(current) = current {
            let operator_owned = current.state() == DeploymentState::Deleted
                || current.source == UPLOAD_SOURCE
                || current.source == ROLLBACK_SOURCE;
            if operator_owned {
                tracing::info!(
                    projection = %name,
                    source,
                    registry_source = %current.source,
                    state = current.state().as_str(),
                    "keeping the registry's version of this projection"
                );
                return Ok(Activation::Unchanged);
            }
        }
        self.activate(candidate, source, actor, None).await
    }

    /// Makes `candidate` the projection's version: creates it, swaps it in place, or starts a
    /// rebuild into new tables (see the module documentation).
    pub async fn activate(
        &self,
        candidate: Candidate,
        source: &str,
        actor: &str,
        expected_name: Option<&str>,
    ) -> Result<Activation, DeployError> {
        self.activate_with(candidate, source, actor, expected_name, None)
            .await
    }

    /// [`Projections::activate`] with limits and poison policy for this deploy (`None` keeps the
    /// projection's current ones).
    pub async fn activate_with(
        &self,
        candidate: Candidate,
        source: &str,
        actor: &str,
        expected_name: Option<&str>,
        settings: Option<&ProjectionSettings>,
    ) -> Result<Activation, DeployError> {
        let name = candidate.schema.name.clone();
        if let Some(expected) = expected_name {
            if expected != name {
                return Err(DeployError::NameMismatch {
                    expected: expected.to_owned(),
                    actual: name,
                });
            }
        }
        let mut conn = self.inner.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        let colliding: Option<String> = sqlx::query_scalar(
            "SELECT projection FROM projection_deployments
             WHERE projection <> $1 AND state <> 'deleted'
               AND replace(projection, '-', '_') = replace($1, '-', '_')",
        )
        .bind(&name)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(other) = colliding {
            return Err(DeployError::NameCollision { name, other });
        }
        registry::store_component(&mut tx, &candidate.sha256, &candidate.bytes).await?;
        let current = registry::deployment_for_update(&mut tx, &name).await?;
        let rebuild = registry::rebuild(&mut tx, &name).await?;
        let version = candidate.schema.schema_version;
        let settings_json = settings
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| DeployError::Conflict(format!("unusable settings: {e}")))?;
        let activation = match current {
            Some(current) if current.state() != DeploymentState::Deleted => {
                if let Some(rebuild) = &rebuild {
                    if rebuild.sha256 == candidate.sha256 && !rebuild.failed() {
                        return Ok(Activation::Unchanged);
                    }
                    if !rebuild.failed() {
                        return Err(DeployError::Conflict(format!(
                            "a rebuild of {name} is in progress; wait for it or cancel it first"
                        )));
                    }
                    drop_rebuild(&mut tx, rebuild).await?;
                }
                if current.sha256 == candidate.sha256 {
                    // Same bytes: nothing to activate (a failed rebuild was cleared above), but
                    // new settings apply.
                    let new_settings = settings_json.as_ref().filter(|s| **s != current.settings);
                    if let Some(settings) = new_settings {
                        registry::set_settings(&mut tx, &name, settings).await?;
                    }
                    if rebuild.is_some() || new_settings.is_some() {
                        registry::bump(&mut tx, &name).await?;
                    }
                    tx.commit().await?;
                    self.reconcile_one(&name).await?;
                    return Ok(Activation::Unchanged);
                }
                let live = self.compiled(&name, &current.sha256).await?;
                let live_schema = self.schema_of(&live, current.namespace.clone())?;
                if i64::from(version) == current.schema_version {
                    if !live_schema.same_tables(&candidate.schema) {
                        return Err(DeployError::TablesChanged {
                            schema_version: version,
                        });
                    }
                    sqlx::query(
                        "UPDATE projection_deployments
                         SET previous_sha256 = sha256, sha256 = $2, source = $3,
                             deployed_at = now(), deployed_by = $4,
                             settings = COALESCE($5, settings),
                             generation = generation + 1, updated_at = now()
                         WHERE projection = $1",
                    )
                    .bind(&name)
                    .bind(&candidate.sha256)
                    .bind(source)
                    .bind(actor)
                    .bind(&settings_json)
                    .execute(&mut *tx)
                    .await?;
                    Activation::Swapped
                } else {
                    if let Some(settings) = &settings_json {
                        registry::set_settings(&mut tx, &name, settings).await?;
                    }
                    start_rebuild(
                        &mut tx,
                        &current,
                        &candidate.schema,
                        &candidate.sha256,
                        source,
                        actor,
                    )
                    .await?;
                    Activation::RebuildStarted
                }
            }
            previous => {
                create(&mut tx, &candidate, previous.as_ref(), source, actor).await?;
                if let Some(settings) = &settings_json {
                    registry::set_settings(&mut tx, &name, settings).await?;
                }
                Activation::Created
            }
        };
        registry::notify(&mut tx, &name).await?;
        registry::record_action(
            &mut tx,
            actor,
            "deploy",
            Some(&name),
            activation.as_str(),
            &json!({
                "sha256": candidate.sha256,
                "schemaVersion": version,
                "source": source,
                "sizeBytes": candidate.bytes.len(),
                "settings": settings_json,
            }),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(
            projection = %name,
            sha256 = %candidate.sha256,
            source,
            actor,
            outcome = activation.as_str(),
            "projection deployed"
        );
        self.reconcile_one(&name).await?;
        Ok(activation)
    }

    /// Rebuilds a projection's live version into fresh tables (blue/green).
    pub async fn rebuild(&self, name: &str, actor: &str) -> Result<Activation, DeployError> {
        let mut conn = self.inner.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        let current = live_deployment(&mut tx, name).await?;
        if let Some(rebuild) = registry::rebuild(&mut tx, name).await? {
            if !rebuild.failed() {
                return Err(DeployError::Conflict(format!(
                    "a rebuild of {name} is already in progress"
                )));
            }
            drop_rebuild(&mut tx, &rebuild).await?;
        }
        let live = self.compiled(name, &current.sha256).await?;
        let schema = self.schema_of(&live, current.namespace.clone())?;
        start_rebuild(
            &mut tx,
            &current,
            &schema,
            &current.sha256,
            &current.source,
            actor,
        )
        .await?;
        registry::notify(&mut tx, name).await?;
        registry::record_action(
            &mut tx,
            actor,
            "rebuild",
            Some(name),
            "rebuild-started",
            &json!({ "sha256": current.sha256 }),
        )
        .await?;
        tx.commit().await?;
        self.reconcile_one(name).await?;
        Ok(Activation::RebuildStarted)
    }

    /// Stops a rebuild in progress and drops its tables; the live version is untouched.
    pub async fn cancel_rebuild(&self, name: &str, actor: &str) -> Result<(), DeployError> {
        let mut conn = self.inner.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        live_deployment(&mut tx, name).await?;
        let Some(rebuild) = registry::rebuild(&mut tx, name).await? else {
            return Err(DeployError::Conflict(format!(
                "no rebuild of {name} is in progress"
            )));
        };
        drop_rebuild(&mut tx, &rebuild).await?;
        registry::bump(&mut tx, name).await?;
        registry::record_action(
            &mut tx,
            actor,
            "cancel-rebuild",
            Some(name),
            "ok",
            &json!({ "namespace": rebuild.namespace }),
        )
        .await?;
        tx.commit().await?;
        self.reconcile_one(name).await?;
        Ok(())
    }

    /// Goes back to the version that ran before the live one.
    pub async fn rollback(&self, name: &str, actor: &str) -> Result<Activation, DeployError> {
        let current = self.deployed(name).await?;
        let previous = current.previous_sha256.clone().ok_or_else(|| {
            DeployError::Conflict(format!("{name} has no previous version to roll back to"))
        })?;
        let component = self.compiled(name, &previous).await?;
        let bytes = registry::component_bytes(&self.inner.pool, &previous)
            .await?
            .ok_or_else(|| DeployError::NotFound(format!("component {previous}")))?;
        let schema = self.schema_of(&component, String::new())?;
        let schema = schema
            .clone()
            .with_namespace(namespace_base(&schema.name, schema.schema_version));
        let candidate = Candidate {
            sha256: previous,
            bytes: Arc::new(bytes),
            component,
            schema,
        };
        self.activate(candidate, ROLLBACK_SOURCE, actor, Some(name))
            .await
    }

    /// Pauses (`paused = true`) or resumes a projection on every instance.
    pub async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        actor: &str,
    ) -> Result<(), DeployError> {
        let state = if paused {
            DeploymentState::Paused
        } else {
            DeploymentState::Running
        };
        let mut conn = self.inner.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        let current = live_deployment(&mut tx, name).await?;
        if current.state() == state {
            return Err(DeployError::Conflict(format!(
                "{name} is already {}",
                state.as_str()
            )));
        }
        sqlx::query("UPDATE projection_deployments SET state = $2 WHERE projection = $1")
            .bind(name)
            .bind(state.as_str())
            .execute(&mut *tx)
            .await?;
        if !paused {
            checkpoint::clear_failure(&mut tx, name).await?;
        }
        registry::bump(&mut tx, name).await?;
        let action = if paused { "pause" } else { "resume" };
        registry::record_action(&mut tx, actor, action, Some(name), "ok", &json!({})).await?;
        tx.commit().await?;
        self.reconcile_one(name).await?;
        Ok(())
    }

    /// Restarts a projection's worker on its registry version, from its checkpoint (after a
    /// failure, once the cause is fixed).
    pub async fn reload(&self, name: &str, actor: &str) -> Result<(), DeployError> {
        let mut conn = self.inner.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        let current = live_deployment(&mut tx, name).await?;
        checkpoint::clear_failure(&mut tx, name).await?;
        sqlx::query(
            "UPDATE projection_rebuilds SET status = 'running', last_error = NULL
             WHERE projection = $1",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        registry::bump(&mut tx, name).await?;
        registry::record_action(
            &mut tx,
            actor,
            "reload",
            Some(name),
            "ok",
            &json!({ "sha256": current.sha256 }),
        )
        .await?;
        tx.commit().await?;
        self.reconcile_one(name).await?;
        if let Some(projector) = self.get(name) {
            projector.poke();
        }
        Ok(())
    }

    /// Stops a projection everywhere. Its tables and checkpoint are kept (a later deploy of the
    /// same version continues from it) unless `drop_tables`.
    pub async fn delete(
        &self,
        name: &str,
        drop_tables: bool,
        actor: &str,
    ) -> Result<(), DeployError> {
        let mut conn = self.inner.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        let current = live_deployment(&mut tx, name).await?;
        if let Some(rebuild) = registry::rebuild(&mut tx, name).await? {
            drop_rebuild(&mut tx, &rebuild).await?;
        }
        sqlx::query("UPDATE projection_deployments SET state = 'deleted' WHERE projection = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if drop_tables {
            for namespace in [
                current.namespace.clone(),
                super::schema::stable_namespace(name),
            ] {
                execute_ddl(
                    &mut tx,
                    &format!("DROP SCHEMA IF EXISTS {} CASCADE", quote(&namespace)),
                )
                .await?;
            }
            sqlx::query("DELETE FROM projector_checkpoints WHERE projection = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        registry::bump(&mut tx, name).await?;
        registry::record_action(
            &mut tx,
            actor,
            "delete",
            Some(name),
            "ok",
            &json!({ "dropTables": drop_tables, "namespace": current.namespace }),
        )
        .await?;
        tx.commit().await?;
        self.reconcile_one(name).await?;
        Ok(())
    }

    /// Switches a caught-up rebuild live, on the worker's lease connection: the stable views, the
    /// live checkpoint (to the rebuild's) and the registry change in one transaction, which also
    /// drops the old tables.
    pub(super) async fn cut_over(
        &self,
        conn: &mut PgConnection,
        projector: &Projector,
        target: &Active,
    ) -> Result<(), DeployError> {
        let name = projector.name();
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        let rebuild = registry::rebuild(&mut tx, name)
            .await?
            .filter(|r| !r.failed() && r.namespace == target.schema.namespace)
            .ok_or_else(|| DeployError::Conflict(format!("the rebuild of {name} was replaced")))?;
        let current = live_deployment(&mut tx, name).await?;
        let rebuilt = checkpoint::read_in(&mut tx, &checkpoint::rebuild_key(name))
            .await?
            .ok_or_else(|| checkpoint::CheckpointError::Missing(checkpoint::rebuild_key(name)))?;
        for statement in target.schema.view_ddl() {
            execute_ddl(&mut tx, &statement).await?;
        }
        sqlx::query(
            "UPDATE projector_checkpoints
             SET schema_version = $2, namespace = $3, last_xact_id = $4::text::xid8,
                 last_position = $5, events_applied = $6, status = 'running', last_error = NULL,
                 error_count = 0, updated_at = now()
             WHERE projection = $1",
        )
        .bind(name)
        .bind(rebuild.schema_version)
        .bind(&rebuild.namespace)
        .bind(rebuilt.cursor.xact_id.to_string())
        .bind(rebuilt.cursor.position)
        .bind(rebuilt.events_applied)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM projector_checkpoints WHERE projection = $1")
            .bind(checkpoint::rebuild_key(name))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE projection_deployments
             SET previous_sha256 = CASE WHEN sha256 <> $2 THEN sha256 ELSE previous_sha256 END,
                 sha256 = $2, schema_version = $3, namespace = $4, source = $5,
                 deployed_at = now(), deployed_by = $6, generation = generation + 1,
                 updated_at = now()
             WHERE projection = $1",
        )
        .bind(name)
        .bind(&rebuild.sha256)
        .bind(rebuild.schema_version)
        .bind(&rebuild.namespace)
        .bind(&rebuild.source)
        .bind(&rebuild.requested_by)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM projection_rebuilds WHERE projection = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if current.namespace != rebuild.namespace {
            execute_ddl(
                &mut tx,
                &format!(
                    "DROP SCHEMA IF EXISTS {} CASCADE",
                    quote(&current.namespace)
                ),
            )
            .await?;
        }
        registry::notify(&mut tx, name).await?;
        registry::record_action(
            &mut tx,
            SYSTEM_ACTOR,
            "cut-over",
            Some(name),
            "ok",
            &json!({
                "from": current.namespace,
                "to": rebuild.namespace,
                "sha256": rebuild.sha256,
                "events": rebuilt.events_applied,
                "seconds": (chrono::Utc::now() - rebuild.started_at).num_milliseconds() as f64 / 1000.0,
            }),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(
            projection = name,
            from = %current.namespace,
            to = %rebuild.namespace,
            events = rebuilt.events_applied,
            "rebuild cut over"
        );
        projector.note_progress(rebuilt.cursor);
        self.reconcile_one(name).await?;
        Ok(())
    }

    /// Marks a rebuild failed after its retries (the live version is untouched).
    pub(super) async fn fail_rebuild(
        &self,
        conn: &mut PgConnection,
        name: &str,
        error: &str,
    ) -> Result<(), DeployError> {
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        sqlx::query(
            "UPDATE projection_rebuilds SET status = 'failed', last_error = $2 WHERE projection = $1",
        )
        .bind(name)
        .bind(error)
        .execute(&mut *tx)
        .await?;
        registry::bump(&mut tx, name).await?;
        registry::record_action(
            &mut tx,
            SYSTEM_ACTOR,
            "rebuild-failed",
            Some(name),
            "failed",
            &json!({ "error": error }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The deployment of a projection that is not deleted, or `NotFound`.
    async fn deployed(&self, name: &str) -> Result<Deployment, DeployError> {
        registry::deployment(&self.inner.pool, name)
            .await?
            .filter(|d| d.state() != DeploymentState::Deleted)
            .ok_or_else(|| DeployError::NotFound(name.to_owned()))
    }

    /// What an operator sees of one projection.
    pub async fn admin_status(&self, name: &str) -> Result<serde_json::Value, DeployError> {
        let deployment = self.deployed(name).await?;
        self.status_of(&deployment).await
    }

    async fn status_of(&self, deployment: &Deployment) -> Result<serde_json::Value, DeployError> {
        let pool = &self.inner.pool;
        let name = deployment.projection.as_str();
        let checkpoint = checkpoint::read(pool, name).await?;
        let rebuild = registry::rebuild(&mut *pool.acquire().await?, name).await?;
        let rebuild_checkpoint = match &rebuild {
            Some(_) => checkpoint::read(pool, &checkpoint::rebuild_key(name)).await?,
            None => None,
        };
        let lag = match &checkpoint {
            Some(c) => Some(lag_after(pool, c).await?),
            None => None,
        };
        let rebuild_remaining = match &rebuild_checkpoint {
            Some(c) => Some(lag_after(pool, c).await?.0),
            None => None,
        };
        Ok(status_json(
            deployment,
            self.get(name).as_deref(),
            checkpoint.as_ref(),
            lag,
            rebuild
                .as_ref()
                .map(|r| (r, rebuild_checkpoint.as_ref(), rebuild_remaining)),
        ))
    }

    /// What an operator sees of every deployed projection.
    pub async fn admin_list(&self) -> Result<Vec<serde_json::Value>, DeployError> {
        let mut items = Vec::new();
        for deployment in registry::deployments(&self.inner.pool).await? {
            if deployment.state() == DeploymentState::Deleted {
                continue;
            }
            items.push(self.status_of(&deployment).await?);
        }
        Ok(items)
    }

    /// `GET /admin/outbox/stats`: the log's size and how far behind each projection is.
    pub async fn outbox_stats(&self) -> Result<serde_json::Value, DeployError> {
        let pool = &self.inner.pool;
        let (events, last_position): (i64, Option<i64>) =
            sqlx::query_as("SELECT count(*), max(global_position) FROM outbox")
                .fetch_one(pool)
                .await?;
        let mut projections = Vec::new();
        let mut oldest: Option<chrono::DateTime<chrono::Utc>> = None;
        for checkpoint in checkpoint::read_all(pool).await? {
            let (lag_events, oldest_unprocessed) = lag_after(pool, &checkpoint).await?;
            if let Some(at) = oldest_unprocessed {
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
            projections.push(json!({
                "name": checkpoint.projection,
                "position": checkpoint.cursor.position,
                "lagEvents": lag_events,
                "oldestUnprocessedAt": oldest_unprocessed,
            }));
        }
        Ok(json!({
            "events": events,
            "lastPosition": last_position,
            "oldestUnprocessedAt": oldest,
            "projections": projections,
        }))
    }
}

/// Most dead letters one replay request re-runs.
pub const MAX_REPLAYED_DEAD_LETTERS: i64 = 1_000;

/// A dead letter as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: i64,
    pub projection: String,
    pub global_position: i64,
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub error: String,
    pub attempts: i32,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
    pub last_attempt_at: chrono::DateTime<chrono::Utc>,
    pub resolved_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Projections {
    /// The dead letters of a projection (open ones, or all with `include_resolved`).
    pub async fn dead_letters(
        &self,
        name: &str,
        include_resolved: bool,
    ) -> Result<Vec<DeadLetter>, DeployError> {
        self.deployed(name).await?;
        Ok(sqlx::query_as(
            "SELECT id, projection, global_position, event_id, event_type, error, attempts,
                    recorded_at, last_attempt_at, resolved_at
             FROM projection_dead_letters
             WHERE projection = $1 AND ($2 OR resolved_at IS NULL)
             ORDER BY global_position LIMIT 10000",
        )
        .bind(name)
        .bind(include_resolved)
        .fetch_all(&self.inner.pool)
        .await?)
    }

    /// Re-runs a projection's open dead letters with its live version (after a fix). Each one that
    /// now succeeds is applied and marked resolved in one transaction; the others keep their row
    /// with the new error. Replayed events are applied after the events that followed them, so a
    /// projection relying on order must tolerate that (guarded upserts do).
    pub async fn replay_dead_letters(
        &self,
        name: &str,
        actor: &str,
    ) -> Result<serde_json::Value, DeployError> {
        self.deployed(name).await?;
        let projector = self
            .get(name)
            .ok_or_else(|| DeployError::NotFound(name.to_owned()))?;
        let version = projector.active();
        let open: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT id, global_position FROM projection_dead_letters
             WHERE projection = $1 AND resolved_at IS NULL ORDER BY global_position LIMIT $2",
        )
        .bind(name)
        .bind(MAX_REPLAYED_DEAD_LETTERS)
        .fetch_all(&self.inner.pool)
        .await?;
        let (mut replayed, mut still_failing) = (0_u32, Vec::new());
        for (id, position) in open {
            let mut conn = self.inner.pool.acquire().await?;
            let mut tx = conn.begin().await?;
            let open: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM projection_dead_letters WHERE id = $1 AND resolved_at IS NULL
                 FOR UPDATE",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            if open.is_none() {
                continue;
            }
            let event = wallex_core::outbox::read_at(&mut tx, position)
                .await
                .map_err(|e| DeployError::Conflict(e.to_string()))?
                .ok_or_else(|| {
                    DeployError::Conflict(format!("event at position {position} left the outbox"))
                })?;
            let outcome = projector
                .evaluate_one(&version, super::engine::to_guest_event(&event))
                .await;
            // PostgreSQL may still refuse the data: that is the event still failing, not an
            // error of the replay.
            let outcome = match outcome {
                Ok(plan) => match super::mutation::apply_or_reject(&mut tx, &plan).await? {
                    None => Ok(plan),
                    Some(reason) => Err(super::worker::BatchError::Data(reason)),
                },
                Err(error) => Err(error),
            };
            match outcome {
                Ok(_) => {
                    sqlx::query(
                        "UPDATE projection_dead_letters
                         SET resolved_at = now(), attempts = attempts + 1, last_attempt_at = now()
                         WHERE id = $1",
                    )
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    replayed += 1;
                }
                Err(error) => {
                    let error = clip(&error.to_string(), MAX_ERROR_BYTES);
                    sqlx::query(
                        "UPDATE projection_dead_letters
                         SET error = $2, attempts = attempts + 1, last_attempt_at = now()
                         WHERE id = $1",
                    )
                    .bind(id)
                    .bind(&error)
                    .execute(&mut *tx)
                    .await?;
                    still_failing.push(json!({ "position": position, "error": error }));
                }
            }
            tx.commit().await?;
        }
        let outcome = json!({ "replayed": replayed, "stillFailing": still_failing });
        let mut conn = self.inner.pool.acquire().await?;
        registry::record_action(
            &mut conn,
            actor,
            "replay-dead-letters",
            Some(name),
            "ok",
            &outcome,
        )
        .await?;
        Ok(outcome)
    }
}

/// Rows after a checkpoint, and when the first of them was recorded.
async fn lag_after(
    pool: &sqlx::PgPool,
    checkpoint: &Checkpoint,
) -> Result<(i64, Option<chrono::DateTime<chrono::Utc>>), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), min(recorded_at) FROM outbox
         WHERE (xact_id, global_position) > ($1::text::xid8, $2)",
    )
    .bind(checkpoint.cursor.xact_id.to_string())
    .bind(checkpoint.cursor.position)
    .fetch_one(pool)
    .await
}

fn status_json(
    deployment: &Deployment,
    projector: Option<&Projector>,
    checkpoint: Option<&Checkpoint>,
    lag: Option<(i64, Option<chrono::DateTime<chrono::Utc>>)>,
    rebuild: Option<(&Rebuild, Option<&Checkpoint>, Option<i64>)>,
) -> serde_json::Value {
    let checkpoint_status = checkpoint.map(|c| c.status);
    let status = if deployment.state() == DeploymentState::Paused {
        "paused"
    } else if checkpoint_status == Some(checkpoint::Status::Failed) {
        "failed"
    } else if rebuild.is_some_and(|(r, _, _)| !r.failed()) {
        "rebuilding"
    } else if checkpoint_status == Some(checkpoint::Status::Failing) {
        "failing"
    } else {
        "running"
    };
    let now = chrono::Utc::now();
    let (lag_events, oldest) = lag.unwrap_or((0, None));
    let rebuild = rebuild.map(|(r, c, remaining)| {
        let done = c.map_or(0, |c| c.events_applied);
        let remaining = remaining.unwrap_or(0);
        let total = done + remaining;
        let elapsed = (now - r.started_at).num_milliseconds().max(1) as f64 / 1000.0;
        let rate = done as f64 / elapsed;
        json!({
            "status": r.status,
            "sha256": r.sha256,
            "schemaVersion": r.schema_version,
            "namespace": r.namespace,
            "eventsDone": done,
            "eventsTotal": total,
            "eventsPerSecond": (rate * 10.0).round() / 10.0,
            "etaSeconds": if rate > 0.0 { Some((remaining as f64 / rate).ceil()) } else { None },
            "startedAt": r.started_at,
            "requestedBy": r.requested_by,
            "lastError": r.last_error,
        })
    });
    let active = projector.map(|p| p.active());
    json!({
        "name": deployment.projection,
        "status": status,
        "schemaVersion": deployment.schema_version,
        "sha256": deployment.sha256,
        "previousSha256": deployment.previous_sha256,
        "source": deployment.source,
        "namespace": deployment.namespace,
        "stableNamespace": super::schema::stable_namespace(&deployment.projection),
        "generation": deployment.generation,
        "deployedAt": deployment.deployed_at,
        "deployedBy": deployment.deployed_by,
        "runningHere": active.as_ref().map(|a| json!({
            "sha256": a.sha256,
            "namespace": a.schema.namespace,
            "leaseHeld": projector.is_some_and(|p| p.lease_held()),
        })),
        "checkpoint": checkpoint.map(|c| json!({
            "xactId": c.cursor.xact_id.to_string(),
            "position": c.cursor.position,
            "eventsApplied": c.events_applied,
            "updatedAt": c.updated_at,
        })),
        "lagEvents": lag_events,
        "lagSeconds": oldest.map(|at| ((now - at).num_milliseconds().max(0) as f64) / 1000.0).unwrap_or(0.0),
        "lastError": checkpoint.and_then(|c| c.last_error.clone()),
        "errorCount": checkpoint.map_or(0, |c| c.error_count),
        "lastDeployError": projector.and_then(|p| p.last_deploy_error()),
        "settings": deployment.settings,
        "policy": active.as_ref().map(|a| json!({
            "onPoison": a.policy.on_poison,
            "memoryBytes": a.policy.limits.memory_bytes,
            "callTimeoutMs": a.policy.limits.call_timeout.as_millis() as u64,
            "fuel": a.policy.limits.fuel,
            "maxMutations": a.policy.limits.max_mutations,
            "maxBatchBytes": a.policy.limits.max_batch_bytes,
            "logLines": a.policy.limits.log_lines,
            "logBytes": a.policy.limits.log_bytes,
        })),
        "rebuild": rebuild,
    })
}

/// The live (not deleted) deployment of `name`, locked.
async fn live_deployment(conn: &mut PgConnection, name: &str) -> Result<Deployment, DeployError> {
    registry::deployment_for_update(conn, name)
        .await?
        .filter(|d| d.state() != DeploymentState::Deleted)
        .ok_or_else(|| DeployError::NotFound(name.to_owned()))
}

/// Creates a projection's first tables, stable views and checkpoint, and its deployment row
/// (reviving a deleted one).
async fn create(
    conn: &mut PgConnection,
    candidate: &Candidate,
    previous: Option<&Deployment>,
    source: &str,
    actor: &str,
) -> Result<(), DeployError> {
    let schema = &candidate.schema;
    for statement in schema.ddl().into_iter().chain(schema.view_ddl()) {
        execute_ddl(&mut *conn, &statement).await?;
    }
    checkpoint::ensure(conn, &schema.name, schema.schema_version, &schema.namespace).await?;
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
    .bind(&schema.name)
    .bind(&candidate.sha256)
    .bind(i64::from(schema.schema_version))
    .bind(&schema.namespace)
    .bind(source)
    .bind(
        previous
            .map(|p| p.sha256.clone())
            .filter(|sha| *sha != candidate.sha256),
    )
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Creates a fresh namespace for `schema`'s tables and a rebuild row and checkpoint that fill it
/// from the start of the log.
async fn start_rebuild(
    conn: &mut PgConnection,
    current: &Deployment,
    schema: &ProjectionSchema,
    sha256: &str,
    source: &str,
    actor: &str,
) -> Result<(), DeployError> {
    let build = current.build_seq + 1;
    if build > MAX_BUILD_NUMBER {
        return Err(DeployError::Conflict(format!(
            "{} has been rebuilt {MAX_BUILD_NUMBER} times; delete it with drop_tables=true and deploy it again",
            current.projection
        )));
    }
    let namespace = build_namespace(&namespace_base(&schema.name, schema.schema_version), build);
    let target = schema.clone().with_namespace(namespace.clone());
    execute_ddl(
        &mut *conn,
        &format!("DROP SCHEMA IF EXISTS {} CASCADE", quote(&namespace)),
    )
    .await?;
    for statement in target.ddl() {
        execute_ddl(&mut *conn, &statement).await?;
    }
    let key = checkpoint::rebuild_key(&current.projection);
    checkpoint::ensure(conn, &key, schema.schema_version, &namespace).await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO projection_rebuilds
            (projection, sha256, schema_version, namespace, source, events_total, requested_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&current.projection)
    .bind(sha256)
    .bind(i64::from(schema.schema_version))
    .bind(&namespace)
    .bind(source)
    .bind(total)
    .bind(actor)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE projection_deployments
         SET build_seq = $2, generation = generation + 1, updated_at = now()
         WHERE projection = $1",
    )
    .bind(&current.projection)
    .bind(build)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Removes a rebuild, its checkpoint and its tables.
async fn drop_rebuild(conn: &mut PgConnection, rebuild: &Rebuild) -> Result<(), DeployError> {
    execute_ddl(
        &mut *conn,
        &format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            quote(&rebuild.namespace)
        ),
    )
    .await?;
    sqlx::query("DELETE FROM projector_checkpoints WHERE projection = $1")
        .bind(checkpoint::rebuild_key(&rebuild.projection))
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM projection_rebuilds WHERE projection = $1")
        .bind(&rebuild.projection)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Runs one DDL statement (built by the host from validated identifiers) on `conn`.
async fn execute_ddl(conn: &mut PgConnection, statement: &str) -> Result<(), sqlx::Error> {
    // A plain (unprepared-cache) query: `raw_sql`'s future is not provably `Send` here.
    sqlx::query(statement)
        .persistent(false)
        .execute(conn)
        .await?;
    Ok(())
}
