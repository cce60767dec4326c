//! wallex-control: the projection control plane — the handle that loads and runs a process's
//! projections, and every operation on them by name.
//!
//! Why it exists: an operator deploys, rebuilds, pauses or rolls back one projection by name on
//! every instance, with no redeploy and no event lost or applied twice. This crate holds
//! [`Projections`], which owns what those operations share (the compiled-component cache, the
//! projectors, the reconciliation lock, the channel that starts workers), and the operations
//! themselves. The data plane — schemas, mutations, the workers, the owners of the projection
//! tables — is `wallex-runtime`; its workers reach this crate only through the
//! [`wallex_runtime::worker::Supervisor`] trait, which [`Projections`] implements. It knows
//! nothing of HTTP (no axum): the HTTP layer (`wallex-http`) calls [`Projections`]' operations
//! and decides the JSON.
//!
//! # Layout
//!
//! - [`deploy`], [`lifecycle`], [`rebuild`] — operations by name: validate and activate; pause,
//!   resume, reload, delete; blue/green rebuilds from start to cut-over.
//! - [`dry_run`] — a candidate replayed over the live log into a shadow of its own and compared
//!   with the live version, never live (owns `projection_dry_runs`).
//! - [`status`] — what an operator sees, as typed values.
//! - [`recovery`] — stall detection ([`stall`]), drift checks and repairs, the read-model check;
//!   [`recovery_runs`] keeps their history.
//! - [`outcome`] — how an operation by name ends: refused ([`OperationError`], [`LoadError`]) or an
//!   [`outcome::Activation`]; the actors and sources it records.
//! - [`reconcile`] — every instance runs what the registry says.
//! - [`watch`] — the projections directory deploys what changes in it.
//!
//! This file holds [`Projections`]: loading at start-up, starting the workers, and the
//! [`Supervisor`](wallex_runtime::worker::Supervisor) the workers call.

#![deny(missing_docs)]

pub mod deploy;
pub mod dry_run;
pub mod lifecycle;
pub mod outcome;
pub mod rebuild;
pub mod reconcile;
pub mod recovery;
pub mod recovery_runs;
pub mod stall;
pub mod status;
pub mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use outcome::{LoadError, OperationError, MAX_COMPONENTS};
use wallex_runtime::schema::ProjectionSchema;
use wallex_runtime::worker::{self, Active, BatchHandler, Desired, Projector, WorkerContext};
use wallex_runtime::{checkpoint, registry, ProjectionConfig};
use wallex_sandbox::engine::{ComponentError, LoadedComponent, ProjectionRuntime};

/// Extension of component files in `WALLEX_PROJECTIONS_DIR`.
pub const COMPONENT_EXTENSION: &str = "wasm";
/// Components compiled at the same time (uploads, directory changes, other instances' deploys).
pub const MAX_CONCURRENT_COMPILES: usize = 2;

/// The projections of this process: what the registry says each one runs, their workers, and
/// the operations that change them (see [`deploy`], [`lifecycle`], [`rebuild`] and [`dry_run`]).
#[derive(Clone)]
pub struct Projections {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    config: ProjectionConfig,
    runtime: ProjectionRuntime,
    projectors: std::sync::RwLock<BTreeMap<String, Arc<Projector>>>,
    /// Compiled components by SHA-256: what is live or being rebuilt, plus recent candidates.
    compiled: std::sync::Mutex<HashMap<String, Arc<LoadedComponent>>>,
    compile_slots: tokio::sync::Semaphore,
    /// [`ProjectionRuntime::engine_key`]: which stored artifacts this engine can load.
    engine_key: String,
    /// The low-priority threads every guest call runs on.
    guests: Arc<wallex_sandbox::guest_pool::GuestPool>,
    /// One reconciliation at a time, so an older registry state never overwrites a newer one.
    reconciling: tokio::sync::Mutex<()>,
    /// SHA-256 of each directory file as start-up read it (by `directory:<file>` source): the
    /// directory watch's starting point, so a change made before it first scans is not missed.
    startup_files: std::sync::Mutex<HashMap<String, String>>,
    /// Set by [`Projections::start`]: where projections deployed later go to get a worker.
    /// (A channel rather than a direct spawn: a worker's own reconciliation may create
    /// projectors, and a worker that spawns workers is a future that contains itself.)
    workers: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<Arc<Projector>>>>,
    tasks: TaskTracker,
    /// Cancelled when the workers' shutdown is: long tasks of their own (dry runs) end early
    /// instead of holding the shutdown up.
    stopping: CancellationToken,
}

impl std::fmt::Debug for Projections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projections")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Projections {
    fn empty(pool: PgPool, config: ProjectionConfig) -> Result<Self, LoadError> {
        let runtime = ProjectionRuntime::with_engine_limits(config.limits, config.engine)?;
        let guests =
            wallex_sandbox::guest_pool::GuestPool::new(config.guest_threads, config.guest_nice)
                .map_err(|e| ComponentError::Engine(e.into()))?;
        let engine_key = runtime.engine_key();
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                config,
                runtime,
                projectors: std::sync::RwLock::new(BTreeMap::new()),
                compiled: std::sync::Mutex::new(HashMap::new()),
                compile_slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_COMPILES),
                engine_key,
                guests,
                reconciling: tokio::sync::Mutex::new(()),
                startup_files: std::sync::Mutex::new(HashMap::new()),
                workers: std::sync::Mutex::new(None),
                tasks: TaskTracker::new(),
                stopping: CancellationToken::new(),
            }),
        })
    }

    /// Loads the projections: registers the configured directory's components (or the bundled
    /// three) in the registry where they are new or changed, then runs what the registry says,
    /// which includes every earlier upload. Does not start workers.
    pub async fn load(pool: PgPool, config: ProjectionConfig) -> Result<Self, LoadError> {
        let sources = match &config.dir {
            Some(dir) => read_dir(dir)?,
            None => wallex_sandbox::bundled::BUNDLED
                .iter()
                .map(|(origin, bytes)| ((*origin).to_owned(), bytes.to_vec()))
                .collect(),
        };
        Self::load_sources(pool, config, sources).await
    }

    /// Like [`Projections::load`] with explicit `(source, bytes)` components.
    pub async fn load_sources(
        pool: PgPool,
        config: ProjectionConfig,
        sources: Vec<(String, Vec<u8>)>,
    ) -> Result<Self, LoadError> {
        let projections = Self::empty(pool, config)?;
        let mut names = HashSet::new();
        for (source, bytes) in sources {
            let deploy = |source_error| LoadError::Deploy {
                origin: source.clone(),
                source: source_error,
            };
            if source.starts_with("directory:") {
                let sha256 = registry::sha256_hex(&bytes);
                match projections.inner.startup_files.lock() {
                    Ok(mut files) => files.insert(source.clone(), sha256),
                    Err(poisoned) => poisoned.into_inner().insert(source.clone(), sha256),
                };
            }
            let candidate = match projections.validate(bytes, &source).await {
                Ok(candidate) => candidate,
                // A bad file in the directory changes nothing, at start-up as later (the registry
                // keeps running what it has); a bad bundled component is a build bug.
                Err(error) if source.starts_with("directory:") => {
                    tracing::error!(%source, %error, "component file rejected; not deployed");
                    continue;
                }
                Err(error) => return Err(deploy(error)),
            };
            if !names.insert(candidate.schema.name.clone()) {
                return Err(LoadError::DuplicateName(candidate.schema.name.clone()));
            }
            projections
                .sync_source(candidate, &source, outcome::STARTUP_ACTOR)
                .await
                .map_err(deploy)?;
        }
        projections.reconcile_all().await?;
        Ok(projections)
    }

    /// Registers already-built handlers outside the registry (the benchmark's native baseline):
    /// creates their tables and checkpoints. Does not start workers.
    pub async fn with_handlers(
        pool: PgPool,
        config: ProjectionConfig,
        handlers: Vec<(ProjectionSchema, Arc<dyn BatchHandler>)>,
    ) -> Result<Self, LoadError> {
        let projections = Self::empty(pool.clone(), config)?;
        for (schema, handler) in handlers {
            if projections.get(&schema.name).is_some() {
                return Err(LoadError::DuplicateName(schema.name));
            }
            let database = |source| LoadError::Database {
                projection: schema.name.clone(),
                source,
            };
            let mut conn = pool.acquire().await.map_err(database)?;
            schema.create(&mut conn).await.map_err(database)?;
            for statement in schema.view_ddl() {
                sqlx::raw_sql(&statement)
                    .execute(&mut *conn)
                    .await
                    .map_err(database)?;
            }
            checkpoint::ensure(
                &mut conn,
                &schema.name,
                schema.schema_version,
                &schema.namespace,
            )
            .await?;
            let desired = Desired {
                active: Active {
                    sha256: format!("native:{}", schema.name),
                    source: handler.origin().to_owned(),
                    policy: projections
                        .inner
                        .config
                        .policy(&schema.name, &Default::default()),
                    schema: Arc::new(schema),
                    handler,
                },
                rebuild: None,
                paused: false,
                generation: 0,
            };
            projections.insert(desired);
        }
        Ok(projections)
    }

    /// The resolved configuration this process runs with.
    pub fn config(&self) -> &ProjectionConfig {
        &self.inner.config
    }

    /// What start-up read from the projections directory: `directory:<file>` → SHA-256.
    pub fn startup_files(&self) -> HashMap<String, String> {
        match self.inner.startup_files.lock() {
            Ok(files) => files.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The database pool the projections use.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The projections this process knows, by name.
    pub fn all(&self) -> Vec<Arc<Projector>> {
        self.read_projectors().values().cloned().collect()
    }

    /// The projection named `name`, if this process knows it.
    pub fn get(&self, name: &str) -> Option<Arc<Projector>> {
        self.read_projectors().get(name).cloned()
    }

    fn read_projectors(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Projector>>> {
        match self.inner.projectors.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn write_projectors(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Projector>>> {
        match self.inner.projectors.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Adds a projector (and starts its worker if workers run).
    fn insert(&self, desired: Desired) -> Arc<Projector> {
        let name = desired.active.schema.name.clone();
        let worker_config = self.inner.config.worker(&name);
        let projector = Arc::new(Projector::new(
            desired,
            worker_config,
            Arc::clone(&self.inner.guests),
        ));
        tracing::info!(
            projection = %name,
            sha256 = %projector.active().sha256,
            namespace = %projector.active().schema.namespace,
            "projection loaded"
        );
        self.write_projectors().insert(name, Arc::clone(&projector));
        let spawner = match self.inner.workers.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if let Some(spawner) = spawner {
            if spawner.send(Arc::clone(&projector)).is_err() {
                tracing::warn!(
                    projection = projector.name(),
                    "workers are shutting down; not started"
                );
            }
        }
        projector
    }

    /// Starts the listener, the registry reconciliation, the directory watch and one worker per
    /// projection; they stop when `shutdown` is cancelled. The returned task ends when all of them
    /// have.
    pub fn start(&self, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
        let (signals, listener) = worker::spawn_listener(self.inner.pool.clone(), shutdown.clone());
        let context = WorkerContext {
            connect: (*self.inner.pool.connect_options()).clone(),
            pool: self.inner.pool.clone(),
            wake: signals.outbox,
            shutdown: shutdown.clone(),
            supervisor: Arc::new(self.clone()),
        };
        let (spawner, mut to_start) = tokio::sync::mpsc::unbounded_channel::<Arc<Projector>>();
        for projector in self.all() {
            let _ = spawner.send(projector);
        }
        match self.inner.workers.lock() {
            Ok(mut guard) => *guard = Some(spawner),
            Err(poisoned) => *poisoned.into_inner() = Some(spawner),
        }
        let tasks = self.inner.tasks.clone();
        let stop_spawning = shutdown.clone();
        self.inner.tasks.spawn(async move {
            loop {
                tokio::select! {
                    next = to_start.recv() => match next {
                        Some(projector) => {
                            tasks.spawn(worker::run(projector, context.clone()));
                        }
                        None => return,
                    },
                    _ = stop_spawning.cancelled() => return,
                }
            }
        });
        self.inner.tasks.spawn(
            self.clone()
                .reconcile_loop(signals.registry, shutdown.clone()),
        );
        if let (Some(dir), Some(interval)) =
            (&self.inner.config.dir, self.inner.config.watch_interval)
        {
            self.inner.tasks.spawn(watch::run(
                self.clone(),
                dir.clone(),
                interval,
                shutdown.clone(),
            ));
        }
        let tasks = self.inner.tasks.clone();
        let stopping = self.inner.stopping.clone();
        let done = tokio::spawn(async move {
            shutdown.cancelled().await;
            stopping.cancel();
            tasks.close();
            tasks.wait().await;
            let _ = listener.await;
        });
        vec![done]
    }
}

impl worker::Supervisor for Projections {
    fn reconcile<'a>(
        &'a self,
        projection: &'a str,
    ) -> worker::BoxFuture<'a, Result<(), worker::SupervisorError>> {
        Box::pin(async move { Ok(self.reconcile_one(projection).await?) })
    }

    fn cut_over<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        projector: &'a Projector,
        target: &'a Active,
    ) -> worker::BoxFuture<'a, Result<(), worker::SupervisorError>> {
        Box::pin(async move { Ok(Projections::cut_over(self, conn, projector, target).await?) })
    }

    fn drift_cut<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        projector: &'a Projector,
        target: &'a Active,
    ) -> worker::BoxFuture<'a, Result<(), worker::SupervisorError>> {
        Box::pin(async move { Ok(Projections::drift_cut(self, conn, projector, target).await?) })
    }

    fn fail_rebuild<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        projection: &'a str,
        error: &'a str,
    ) -> worker::BoxFuture<'a, Result<(), worker::SupervisorError>> {
        Box::pin(async move { Ok(Projections::fail_rebuild(self, conn, projection, error).await?) })
    }

    fn rebuild_batch_size(&self) -> u32 {
        self.inner.config.rebuild_batch_size
    }
}

fn read_dir(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, LoadError> {
    let io = |source| LoadError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == COMPONENT_EXTENSION) {
            paths.push(path);
        }
    }
    if paths.len() > MAX_COMPONENTS {
        return Err(LoadError::TooMany(dir.display().to_string()));
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).map_err(|source| LoadError::Io {
                path: path.display().to_string(),
                source,
            })?;
            Ok((watch::directory_source(&path), bytes))
        })
        .collect()
}

/// Compile-time check: the operations' futures are `Send` (axum handlers and spawned tasks need
/// it, and a generic sqlx executor inside them can silently break it).
#[cfg(test)]
#[allow(dead_code)]
fn send_probe(
    p: Projections,
    c: deploy::Candidate,
    conn: &mut sqlx::PgConnection,
    pr: &Projector,
    a: &Active,
) {
    fn s<T: Send>(_: T) {}
    s(p.reconcile_one("x"));
    s(p.reconcile_all());
    s(p.validate(vec![], "x"));
    s(p.activate(c.clone(), "x", "y", None));
    s(p.sync_source(c, "x", "y"));
    s(p.rebuild("x", "y"));
    s(p.admin_status("x"));
    s(p.cut_over(conn, pr, a));
    s(p.compiled("x", "y"));
    s(p.apply_registry("x", None, None));
    s(p.delete("x", true, "y"));
    s(p.cancel_rebuild("x", "y"));
    s(p.set_paused("x", true, "y"));
    s(p.reload("x", "y"));
    s(p.rollback("x", "y"));
    s(p.admin_list());
    s(p.outbox_stats());
}
