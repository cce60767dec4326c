//! Operating projections by name — deploying a version: validate, activate (create, swap in place
//! or start a rebuild), roll back; the errors and outcomes every operation shares.
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
//! the live checkpoint and the registry switch together, and the old tables are dropped (see
//! [`crate::rebuild`]). Pause, resume, reload and delete are in [`crate::lifecycle`], what an
//! operator sees in [`crate::status`].
//!
//! Architecture invariant: a component that fails validation changes nothing; every registry
//! change is one transaction under the registry lock. API boundary: no HTTP; errors are typed
//! ([`OperationError`]), outcomes are [`Activation`]s.

use std::sync::Arc;

use serde_json::json;
use sqlx::{Connection, PgConnection};
use tracing::Instrument;

use super::Projections;
use crate::outcome::{execute_ddl, Activation, OperationError, ROLLBACK_SOURCE, UPLOAD_SOURCE};
use crate::rebuild::{drop_rebuild, start_rebuild};
use wallex_runtime::artifacts;
use wallex_runtime::checkpoint;
use wallex_runtime::config::ProjectionSettings;
use wallex_runtime::registry::{self, Deployment, DeploymentState, Rebuild};
use wallex_runtime::schema::{namespace_base, ProjectionSchema};
use wallex_sandbox::engine::{binary_kind, BinaryKind, ComponentError, LoadedComponent};

/// A validated component, not yet live.
#[derive(Clone)]
pub struct Candidate {
    /// Hex SHA-256 of the bytes: the component's key in the registry.
    pub sha256: String,
    /// The component as uploaded or read.
    pub bytes: Arc<Vec<u8>>,
    /// The compiled component, described.
    pub component: Arc<LoadedComponent>,
    /// The declaration, in the namespace a first deployment of its version gets.
    pub schema: ProjectionSchema,
    /// The compiled artifact being stored while the candidate is activated (`None`: nothing to
    /// store, or already stored); an activation ends only once it is (see [`ArtifactStore`]).
    pub artifact_store: Option<ArtifactStore>,
}

/// The store of a freshly compiled component's artifact, running in a task of its own under the
/// compile lock (so that the activation's own writes overlap it rather than wait for it; the
/// lock keeps every other instance waiting for the artifact, not compiling).
#[derive(Clone, Debug)]
pub struct ArtifactStore(tokio::sync::watch::Receiver<bool>);

impl ArtifactStore {
    /// Waits until the artifact is stored, or its store has failed (already logged: the next
    /// load compiles again).
    pub async fn wait(mut self) {
        // An error is a store task that ended without saying so: nothing left to wait for.
        let _ = self.0.wait_for(|done| *done).await;
    }
}

impl Projections {
    /// Checks that `bytes` are a projection component this host can run: size, preamble,
    /// compiles (on a blocking thread, within the compile time limit), implements the world,
    /// describes itself, declares valid tables.
    pub async fn validate(
        &self,
        bytes: Vec<u8>,
        origin: &str,
    ) -> Result<Candidate, OperationError> {
        self.precheck(&bytes)?;
        let sha256 = registry::sha256_hex(&bytes);
        let bytes = Arc::new(bytes);
        let (component, artifact_store) = match self.cached(&sha256) {
            Some(hit) => (hit, None),
            None => {
                self.compile(origin.to_owned(), &sha256, Arc::clone(&bytes))
                    .await?
            }
        };
        let info = component
            .info()
            .ok_or_else(|| ComponentError::Join("component was loaded without describe".into()))?;
        let schema =
            ProjectionSchema::from_info(info)?.with_stream_owners(component.stream_owners())?;
        self.cache(&sha256, Arc::clone(&component));
        Ok(Candidate {
            sha256,
            bytes,
            component,
            schema,
            artifact_store,
        })
    }

    /// The checks that need no compile: size and preamble.
    pub fn precheck(&self, bytes: &[u8]) -> Result<(), OperationError> {
        let limit = self.inner.config.max_component_bytes;
        if bytes.len() > limit {
            return Err(OperationError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        match binary_kind(bytes) {
            BinaryKind::Component => Ok(()),
            BinaryKind::CoreModule => Err(OperationError::CoreModule),
            BinaryKind::NotWasm => Err(OperationError::NotWasm),
        }
    }

    /// The component with these bytes, compiled and described: loaded from its stored artifact when
    /// there is one (see [`wallex_runtime::artifacts`]), else compiled once for the whole cluster
    /// (under the compile lock, the artifact stored for the others), on a blocking thread, at most
    /// [`super::MAX_CONCURRENT_COMPILES`] at a time, within the compile time limit. (A compile that
    /// overruns keeps its thread until it ends, but its result is dropped.) Refused when it would
    /// take the process's compiled components over their memory limit. A fresh compile's artifact
    /// is still being stored when this returns: the [`ArtifactStore`] says when it is.
    pub(super) async fn compile(
        &self,
        origin: String,
        sha256: &str,
        bytes: Arc<Vec<u8>>,
    ) -> Result<(Arc<LoadedComponent>, Option<ArtifactStore>), OperationError> {
        let _slot = self
            .inner
            .compile_slots
            .acquire()
            .await
            .map_err(|e| ComponentError::Join(e.to_string()))?;
        let (component, stored) = if self.inner.config.artifact_cache {
            self.compile_once(origin, sha256, bytes).await?
        } else {
            (self.compile_here(origin, bytes, false).await?.0, None)
        };
        self.check_memory(sha256, &component)?;
        Ok((Arc::new(component), stored))
    }

    /// Loads the stored artifact, or compiles under the cluster-wide compile lock and stores it
    /// (in a task of its own that holds the lock until the artifact is committed).
    async fn compile_once(
        &self,
        origin: String,
        sha256: &str,
        bytes: Arc<Vec<u8>>,
    ) -> Result<(LoadedComponent, Option<ArtifactStore>), OperationError> {
        let engine = self.inner.engine_key.as_str();
        if let Some(loaded) = self.load_artifact(&origin, sha256).await {
            return Ok((loaded, None));
        }
        let pool = &self.inner.pool;
        let wait_ms =
            u64::try_from(self.inner.config.compile_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut tx = pool.begin().await?;
        let locked = artifacts::lock_compile(&mut tx, sha256, engine, wait_ms).await;
        if let Err(error) = &locked {
            // Compiling without the lock is only wasted work, never a wrong result.
            tracing::warn!(%origin, %error, "could not take the compile lock; compiling anyway");
        } else if let Some(loaded) = self.load_artifact(&origin, sha256).await {
            // Another instance compiled it while this one waited for the lock.
            return Ok((loaded, None));
        }
        let started = std::time::Instant::now();
        let (loaded, artifact) = self.compile_here(origin.clone(), bytes, true).await?;
        let compile_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(%origin, sha256, compile_ms, compiled_bytes = loaded.compiled_bytes(), "component compiled");
        let Some(artifact) = artifact else {
            return Ok((loaded, None));
        };
        let (done, store) = tokio::sync::watch::channel(false);
        let (pool, sha256, engine) = (pool.clone(), sha256.to_owned(), engine.to_owned());
        let task = async move {
            let stored = match locked {
                Ok(()) => {
                    match artifacts::store(&mut tx, &sha256, &engine, &artifact, compile_ms).await {
                        Ok(()) => tx.commit().await,
                        Err(error) => Err(error),
                    }
                }
                Err(_) => {
                    drop(tx);
                    match pool.acquire().await {
                        Ok(mut conn) => {
                            artifacts::store(&mut conn, &sha256, &engine, &artifact, compile_ms)
                                .await
                        }
                        Err(error) => Err(error),
                    }
                }
            };
            if let Err(error) = stored {
                tracing::warn!(%origin, %error, "could not store the compiled component; the next load compiles again");
            }
            done.send_replace(true);
        };
        tokio::spawn(task.instrument(tracing::debug_span!("artifact.store")));
        Ok((loaded, Some(ArtifactStore(store))))
    }

    /// The component loaded from its stored artifact, if one is stored and wasmtime accepts it
    /// (a refused one is removed, so the next compile replaces it).
    async fn load_artifact(&self, origin: &str, sha256: &str) -> Option<LoadedComponent> {
        let engine = self.inner.engine_key.as_str();
        let artifact = match artifacts::fetch(&self.inner.pool, sha256, engine).await {
            Ok(artifact) => artifact?,
            Err(error) => {
                tracing::warn!(%origin, %error, "cannot read the stored compiled component");
                return None;
            }
        };
        let runtime = self.inner.runtime.clone();
        let owned_origin = origin.to_owned();
        let started = std::time::Instant::now();
        let task = tokio::task::spawn_blocking(move || {
            let compiled = runtime.deserialize(&owned_origin, &artifact)?;
            runtime.link(&owned_origin, compiled)
        });
        match tokio::time::timeout(self.inner.config.compile_timeout, task).await {
            Ok(Ok(Ok(loaded))) => {
                tracing::info!(
                    %origin,
                    sha256,
                    load_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "component loaded from its stored compiled artifact"
                );
                Some(loaded)
            }
            Ok(Ok(Err(error))) => {
                tracing::warn!(%origin, %error, "stored compiled component refused; compiling again");
                if let Err(error) = artifacts::remove(&self.inner.pool, sha256, engine).await {
                    tracing::warn!(%origin, %error, "cannot remove the refused compiled component");
                }
                None
            }
            Ok(Err(error)) => {
                tracing::warn!(%origin, %error, "loading the stored compiled component failed");
                None
            }
            Err(_) => {
                tracing::warn!(%origin, "loading the stored compiled component timed out");
                None
            }
        }
    }

    /// Compiles (and, with `serialize`, serializes) and links on a blocking thread within the
    /// compile time limit.
    async fn compile_here(
        &self,
        origin: String,
        bytes: Arc<Vec<u8>>,
        serialize: bool,
    ) -> Result<(LoadedComponent, Option<Vec<u8>>), OperationError> {
        let timeout = self.inner.config.compile_timeout;
        let runtime = self.inner.runtime.clone();
        let task = tokio::task::spawn_blocking(move || {
            let compiled = runtime.compile(&origin, &bytes)?;
            let artifact = if serialize {
                match compiled.serialize() {
                    Ok(artifact) => Some(artifact),
                    Err(error) => {
                        tracing::warn!(%origin, %error, "cannot serialize the compiled component");
                        None
                    }
                }
            } else {
                None
            };
            Ok::<_, ComponentError>((runtime.link(&origin, compiled)?, artifact))
        });
        match tokio::time::timeout(timeout, task).await {
            Err(_) => Err(OperationError::CompileTimeout(timeout)),
            Ok(joined) => Ok(joined.map_err(|e| ComponentError::Join(e.to_string()))??),
        }
    }

    /// Refuses a component whose compiled code would take the loaded ones over the limit (a
    /// version already loaded under the same SHA-256 is not counted twice).
    fn check_memory(
        &self,
        sha256: &str,
        component: &LoadedComponent,
    ) -> Result<(), OperationError> {
        let limit = self.inner.config.compiled_memory_max_bytes;
        let in_use: usize = self
            .compiled_components()
            .iter()
            .filter(|(sha, _)| sha != sha256)
            .map(|(_, c)| c.compiled_bytes())
            .sum();
        let needed = component.compiled_bytes();
        if in_use.saturating_add(needed) > limit {
            return Err(OperationError::MemoryLimit {
                needed,
                in_use,
                limit,
            });
        }
        Ok(())
    }

    /// Registers a component found at start-up or by the directory watch: new projections are
    /// created and changed ones activated, but a projection an operator uploaded, rolled back or
    /// deleted is left as the operator left it.
    pub async fn sync_source(
        &self,
        candidate: Candidate,
        source: &str,
        actor: &str,
    ) -> Result<Activation, OperationError> {
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
    ) -> Result<Activation, OperationError> {
        self.activate_with(candidate, source, actor, expected_name, None)
            .await
    }

    /// [`Projections::activate`] with limits and poison policy for this deploy (`None` keeps the
    /// projection's current ones). Ends once the candidate's artifact is stored too (the two
    /// writes overlap), so that a restart after the answer loads it without compiling.
    pub async fn activate_with(
        &self,
        candidate: Candidate,
        source: &str,
        actor: &str,
        expected_name: Option<&str>,
        settings: Option<&ProjectionSettings>,
    ) -> Result<Activation, OperationError> {
        let artifact_store = candidate.artifact_store.clone();
        let activated = self
            .activate_registry(candidate, source, actor, expected_name, settings)
            .await;
        if let Some(store) = artifact_store {
            store.wait().await;
        }
        activated
    }

    /// The registry's part of [`Projections::activate_with`].
    async fn activate_registry(
        &self,
        candidate: Candidate,
        source: &str,
        actor: &str,
        expected_name: Option<&str>,
        settings: Option<&ProjectionSettings>,
    ) -> Result<Activation, OperationError> {
        let name = candidate.schema.name.clone();
        if let Some(expected) = expected_name {
            if expected != name {
                return Err(OperationError::NameMismatch {
                    expected: expected.to_owned(),
                    actual: name,
                });
            }
        }
        let mut conn = self.inner.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        let colliding = registry::colliding_name(&mut tx, &name).await?;
        if let Some(other) = colliding {
            return Err(OperationError::NameCollision { name, other });
        }
        registry::store_component(&mut tx, &candidate.sha256, &candidate.bytes).await?;
        let current = registry::deployment_for_update(&mut tx, &name).await?;
        let rebuild = registry::rebuild(&mut tx, &name).await?;
        let version = candidate.schema.schema_version;
        let settings_json = settings
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| OperationError::Conflict(format!("unusable settings: {e}")))?;
        let activation = match current {
            Some(current) if current.state() != DeploymentState::Deleted => {
                let change = Change {
                    candidate: &candidate,
                    source,
                    actor,
                    settings: settings_json.as_ref(),
                };
                match self
                    .replace_live(&mut tx, &current, rebuild, change)
                    .await?
                {
                    Replaced::Activated(activation) => activation,
                    Replaced::RebuildingIt => return Ok(Activation::Unchanged),
                    Replaced::SameBytes => {
                        tx.commit().await?;
                        self.reconcile_one(&name).await?;
                        return Ok(Activation::Unchanged);
                    }
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

    /// A new version for a live projection, in the deploy's transaction under the registry lock:
    /// a drift shadow of the version replaced is dropped, a failed rebuild cleared (one in
    /// progress refuses the deploy), then the same bytes change only settings, the same schema
    /// version swaps in place and a new one starts a rebuild.
    async fn replace_live(
        &self,
        tx: &mut PgConnection,
        current: &Deployment,
        rebuild: Option<Rebuild>,
        change: Change<'_>,
    ) -> Result<Replaced, OperationError> {
        let Change {
            candidate,
            source,
            actor,
            settings: settings_json,
        } = change;
        let name = current.projection.as_str();
        let version = candidate.schema.schema_version;
        if let Some(shadow) = rebuild.as_ref().filter(|r| r.is_drift()) {
            // A drift check replays the version being replaced: it goes. (The same bytes again
            // — every start-up deploys the bundled ones — change nothing.)
            if shadow.sha256 != candidate.sha256 {
                drop_rebuild(&mut *tx, shadow).await?;
            }
        }
        let rebuild = rebuild.filter(|r| !r.is_drift());
        if let Some(rebuild) = &rebuild {
            if rebuild.sha256 == candidate.sha256 && !rebuild.failed() {
                return Ok(Replaced::RebuildingIt);
            }
            if !rebuild.failed() {
                return Err(OperationError::Conflict(format!(
                    "a rebuild of {name} is in progress; wait for it or cancel it first"
                )));
            }
            drop_rebuild(&mut *tx, rebuild).await?;
        }
        if current.sha256 == candidate.sha256 {
            // Same bytes: nothing to activate (a failed rebuild was cleared above), but new
            // settings apply.
            let new_settings = settings_json.filter(|s| **s != current.settings);
            if let Some(settings) = new_settings {
                registry::set_settings(&mut *tx, name, settings).await?;
            }
            if rebuild.is_some() || new_settings.is_some() {
                registry::bump(&mut *tx, name).await?;
            }
            return Ok(Replaced::SameBytes);
        }
        let live = self.compiled(name, &current.sha256).await?;
        let live_schema = self.schema_of(&live, current.namespace.clone())?;
        if i64::from(version) == current.schema_version {
            if !live_schema.same_tables(&candidate.schema) {
                return Err(OperationError::TablesChanged {
                    schema_version: version,
                });
            }
            registry::swap_version(
                &mut *tx,
                name,
                &candidate.sha256,
                source,
                actor,
                settings_json,
            )
            .await?;
            return Ok(Replaced::Activated(Activation::Swapped));
        }
        if let Some(settings) = settings_json {
            registry::set_settings(&mut *tx, name, settings).await?;
        }
        start_rebuild(
            &mut *tx,
            current,
            &candidate.schema,
            &candidate.sha256,
            source,
            actor,
        )
        .await?;
        Ok(Replaced::Activated(Activation::RebuildStarted))
    }

    /// Goes back to the version that ran before the live one.
    pub async fn rollback(&self, name: &str, actor: &str) -> Result<Activation, OperationError> {
        let current = self.deployed(name).await?;
        let previous = current.previous_sha256.clone().ok_or_else(|| {
            OperationError::Conflict(format!("{name} has no previous version to roll back to"))
        })?;
        let component = self.compiled(name, &previous).await?;
        let bytes = registry::component_bytes(&self.inner.pool, &previous)
            .await?
            .ok_or_else(|| OperationError::NotFound(format!("component {previous}")))?;
        let schema = self.schema_of(&component, String::new())?;
        let schema = schema
            .clone()
            .with_namespace(namespace_base(&schema.name, schema.schema_version));
        let candidate = Candidate {
            sha256: previous,
            bytes: Arc::new(bytes),
            component,
            schema,
            artifact_store: None,
        };
        self.activate(candidate, ROLLBACK_SOURCE, actor, Some(name))
            .await
    }

    /// The deployment of a projection that is not deleted, or `NotFound`.
    pub(crate) async fn deployed(&self, name: &str) -> Result<Deployment, OperationError> {
        registry::deployment(&self.inner.pool, name)
            .await?
            .filter(|d| d.state() != DeploymentState::Deleted)
            .ok_or_else(|| OperationError::NotFound(name.to_owned()))
    }
}

/// What a deploy changes, as [`Projections::replace_live`] needs it.
struct Change<'a> {
    candidate: &'a Candidate,
    source: &'a str,
    actor: &'a str,
    /// The deploy's settings, as the registry stores them.
    settings: Option<&'a serde_json::Value>,
}

/// How a live projection took a new version.
enum Replaced {
    /// Swapped in place or a rebuild started: to announce and audit.
    Activated(Activation),
    /// The same bytes: at most new settings, committed and reconciled by the caller.
    SameBytes,
    /// A rebuild of these very bytes is in progress: nothing to do (rolled back).
    RebuildingIt,
}

/// Creates a projection's first tables, stable views and checkpoint, and its deployment row
/// (reviving a deleted one).
async fn create(
    conn: &mut PgConnection,
    candidate: &Candidate,
    previous: Option<&Deployment>,
    source: &str,
    actor: &str,
) -> Result<(), OperationError> {
    let schema = &candidate.schema;
    for statement in schema.ddl().into_iter().chain(schema.view_ddl()) {
        execute_ddl(&mut *conn, &statement).await?;
    }
    checkpoint::ensure(conn, &schema.name, schema.schema_version, &schema.namespace).await?;
    let previous = previous
        .map(|p| p.sha256.as_str())
        .filter(|sha| *sha != candidate.sha256);
    registry::upsert_deployment(
        conn,
        &schema.name,
        &candidate.sha256,
        schema.schema_version,
        &schema.namespace,
        source,
        previous,
        actor,
    )
    .await?;
    Ok(())
}
