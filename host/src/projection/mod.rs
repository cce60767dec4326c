//! Projections: WebAssembly components that turn the outbox into tables of their own.
//!
//! Why it exists: read models, the ledger and the audit log are written by different teams and
//! shipped as `.wasm` files against the contract in `wit/projection.wit`. This module loads them
//! ([`engine`]), gives each a namespace of tables ([`schema`]), checks and applies what they
//! return ([`mutation`]) together with their checkpoint ([`checkpoint`]), runs one leased worker
//! per projection ([`worker`]) and serves their tables and status over HTTP ([`api`]).

pub mod api;
pub mod bundled;
pub mod checkpoint;
pub mod config;
pub mod engine;
pub mod mutation;
pub mod schema;
pub mod worker;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{ProjectionArgs, ProjectionConfig};
use engine::{ComponentError, ProjectionRuntime};
use schema::{ProjectionSchema, SchemaError};
use worker::{BatchHandler, Projector};

/// Extension of component files in `WALLEX_PROJECTIONS_DIR`.
pub const COMPONENT_EXTENSION: &str = "wasm";
/// Most components loaded from one directory.
pub const MAX_COMPONENTS: usize = 64;

/// Errors of loading the projections.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Component(#[from] ComponentError),
    #[error("{origin}: {source}")]
    Schema {
        origin: String,
        #[source]
        source: SchemaError,
    },
    #[error("cannot read projection components from {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("two components are named {0}")]
    DuplicateName(String),
    #[error("too many components in {0} (more than {MAX_COMPONENTS})")]
    TooMany(String),
    #[error("cannot create the tables of {projection}: {source}")]
    Database {
        projection: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
}

/// The loaded projections of this process.
#[derive(Debug, Clone)]
pub struct Projections {
    pool: PgPool,
    config: ProjectionConfig,
    projectors: Arc<Vec<Arc<Projector>>>,
}

impl Projections {
    /// Loads the components (the configured directory, or the bundled three), validates their
    /// declarations, creates their tables and checkpoints. Does not start workers.
    pub async fn load(pool: PgPool, config: ProjectionConfig) -> Result<Self, LoadError> {
        let sources = match &config.dir {
            Some(dir) => read_dir(dir)?,
            None => bundled::BUNDLED
                .iter()
                .map(|(origin, bytes)| ((*origin).to_owned(), bytes.to_vec()))
                .collect(),
        };
        Self::load_sources(pool, config, sources).await
    }

    /// Like [`Projections::load`] with explicit `(origin, bytes)` components.
    pub async fn load_sources(
        pool: PgPool,
        config: ProjectionConfig,
        sources: Vec<(String, Vec<u8>)>,
    ) -> Result<Self, LoadError> {
        let runtime = ProjectionRuntime::new(config.limits)?;
        let mut handlers: Vec<(ProjectionSchema, Arc<dyn BatchHandler>)> = Vec::new();
        for (origin, bytes) in sources {
            let runtime = runtime.clone();
            let origin_for_load = origin.clone();
            // Compiling is CPU-heavy: keep it off the async workers.
            let component =
                tokio::task::spawn_blocking(move || runtime.load(&origin_for_load, &bytes))
                    .await
                    .map_err(|e| ComponentError::Join(e.to_string()))??;
            let info = component.describe()?;
            let schema =
                ProjectionSchema::from_info(&info).map_err(|source| LoadError::Schema {
                    origin: origin.clone(),
                    source,
                })?;
            handlers.push((schema, Arc::new(component)));
        }
        Self::with_handlers(pool, config, handlers).await
    }

    /// Registers already-built handlers with their validated declarations: creates their tables
    /// and checkpoints. (The benchmark's native baseline comes in this way.)
    pub async fn with_handlers(
        pool: PgPool,
        config: ProjectionConfig,
        handlers: Vec<(ProjectionSchema, Arc<dyn BatchHandler>)>,
    ) -> Result<Self, LoadError> {
        let mut projectors = Vec::with_capacity(handlers.len());
        let mut names = HashSet::new();
        for (schema, handler) in handlers {
            if !names.insert(schema.name.clone()) {
                return Err(LoadError::DuplicateName(schema.name));
            }
            let database = |source| LoadError::Database {
                projection: schema.name.clone(),
                source,
            };
            let mut conn = pool.acquire().await.map_err(database)?;
            schema.create(&mut conn).await.map_err(database)?;
            checkpoint::ensure(&mut conn, &schema.name, schema.schema_version).await?;
            tracing::info!(
                projection = %schema.name,
                origin = handler.origin(),
                namespace = %schema.namespace,
                subscribes_to = ?schema.subscribes_to,
                "projection loaded"
            );
            let worker_config = config.worker(&schema.name);
            projectors.push(Arc::new(Projector::new(schema, handler, worker_config)));
        }
        Ok(Self {
            pool,
            config,
            projectors: Arc::new(projectors),
        })
    }

    pub fn config(&self) -> &ProjectionConfig {
        &self.config
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn all(&self) -> &[Arc<Projector>] {
        &self.projectors
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Projector>> {
        self.projectors.iter().find(|p| p.name() == name)
    }

    /// Starts the outbox listener and one worker per projection; they stop when `shutdown` is
    /// cancelled.
    pub fn start(&self, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
        let (wake, listener) = worker::spawn_listener(self.pool.clone(), shutdown.clone());
        let connect = (*self.pool.connect_options()).clone();
        let mut tasks = vec![listener];
        for projector in self.projectors.iter() {
            tasks.push(tokio::spawn(worker::run(
                Arc::clone(projector),
                connect.clone(),
                self.pool.clone(),
                wake.clone(),
                shutdown.clone(),
            )));
        }
        tasks
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
            Ok((path.display().to_string(), bytes))
        })
        .collect()
}
