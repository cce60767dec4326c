//! How an operation by name ends, and what it records: the error that says why it was refused
//! ([`OperationError`], and [`LoadError`] at start-up), the outcome of an activation
//! ([`Activation`]), the actors and sources recorded in the registry, and two helpers on the
//! registry transaction every operation uses (the live deployment, locked; a DDL statement).
//!
//! Architecture invariant: an operation that returns a [`OperationError`] changed nothing.
//! API boundary: no operation logic here; [`crate::deploy`], [`crate::lifecycle`] and
//! [`crate::rebuild`] build on it, and it depends on none of them.

use std::time::Duration;

use sqlx::PgConnection;

use wallex_runtime::checkpoint;
use wallex_runtime::registry::{self, Deployment, DeploymentState};
use wallex_sandbox::engine::ComponentError;
use wallex_sandbox::guest_text::quoted;

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
pub enum OperationError {
    /// The component is bigger than the configured maximum.
    #[error("the component is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Size of the component, in bytes.
        size: usize,
        /// The configured maximum, in bytes.
        limit: usize,
    },
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly binary (no `\\0asm` preamble)")]
    NotWasm,
    /// The bytes are a core module, not a component.
    #[error("a core WebAssembly module, not a component: build for wasm32-wasip2 or wrap it with `wasm-tools component new`")]
    CoreModule,
    /// Compiling took longer than the compile time limit.
    #[error("compiling the component took longer than {0:?}")]
    CompileTimeout(Duration),
    /// Loading the component would take this process's compiled components over their memory
    /// limit.
    #[error("loading the component needs {needed} bytes of compiled code, but {in_use} of the limit of {limit} are in use by other loaded components: delete or replace one, or raise WALLEX_COMPILED_MEMORY_MAX_MIB")]
    MemoryLimit {
        /// Compiled bytes of the component.
        needed: usize,
        /// Compiled bytes of the components already loaded.
        in_use: usize,
        /// The configured limit, in bytes.
        limit: usize,
    },
    /// The component did not compile, link against the world, or `describe` itself.
    #[error(transparent)]
    Component(#[from] ComponentError),
    /// The component's declaration is invalid.
    #[error("invalid declaration: {0}")]
    Schema(#[from] wallex_runtime::schema::SchemaError),
    /// The component declares another name than the projection the operation was for.
    #[error("the component is named {}, not {}", quoted(actual), quoted(expected))]
    NameMismatch {
        /// The name the operation was for.
        expected: String,
        /// The name the component declares.
        actual: String,
    },
    /// The name maps to the same schema name as an existing projection's.
    #[error(
        "{} would share the tables of projection {} (`-` and `_` map to the same schema name)",
        quoted(name),
        quoted(other)
    )]
    NameCollision {
        /// The name the component declares.
        name: String,
        /// The existing projection whose schema name is the same.
        other: String,
    },
    /// The new version declares different tables under the live schema version.
    #[error("version {schema_version} declares different tables than the live version: bump schema_version to rebuild into new tables")]
    TablesChanged {
        /// The schema version both the live and the new version declare.
        schema_version: u32,
    },
    /// No live projection has this name, or the component a rollback needs is not stored.
    #[error("no projection named {0}")]
    NotFound(String),
    /// The operation does not fit the projection's current state (a rebuild in progress, nothing
    /// to roll back to, …); the message says what.
    #[error("{0}")]
    Conflict(String),
    /// The registry's database refused or could not be reached.
    #[error("registry database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// The outbox could not be read.
    #[error(transparent)]
    Outbox(#[from] wallex_core::outbox::OutboxError),
    /// A stored component could not be loaded, or this instance could not put the registry's
    /// state into effect.
    #[error(transparent)]
    Load(Box<LoadError>),
}

impl From<LoadError> for OperationError {
    fn from(error: LoadError) -> Self {
        Self::Load(Box::new(error))
    }
}

impl OperationError {
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

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// The outcome as recorded in the audit trail and reported (`created`, `swapped`,
    /// `rebuild-started`, `unchanged`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Swapped => "swapped",
            Self::RebuildStarted => "rebuild-started",
            Self::Unchanged => "unchanged",
        }
    }
}

/// The live (not deleted) deployment of `name`, locked.
pub(crate) async fn live_deployment(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Deployment, OperationError> {
    registry::deployment_for_update(conn, name)
        .await?
        .filter(|d| d.state() != DeploymentState::Deleted)
        .ok_or_else(|| OperationError::NotFound(name.to_owned()))
}

/// Runs one DDL statement (built by the host from validated identifiers) on `conn`.
pub(crate) async fn execute_ddl(
    conn: &mut PgConnection,
    statement: &str,
) -> Result<(), sqlx::Error> {
    // A plain (unprepared-cache) query: `raw_sql`'s future is not provably `Send` here.
    sqlx::query(statement)
        .persistent(false)
        .execute(conn)
        .await?;
    Ok(())
}

/// Most components loaded from one directory.
pub const MAX_COMPONENTS: usize = 64;

/// Errors of loading the projections.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The engine could not be set up, or a component did not compile or describe itself.
    #[error(transparent)]
    Component(#[from] wallex_sandbox::engine::ComponentError),
    /// A stored component's declaration is invalid.
    #[error("{origin}: {source}")]
    Schema {
        /// Where the component came from (file name or `bundled:<name>`).
        origin: String,
        /// What is wrong with the declaration.
        #[source]
        source: wallex_runtime::schema::SchemaError,
    },
    /// The projections directory or one of its files cannot be read.
    #[error("cannot read projection components from {path}: {source}")]
    Io {
        /// The directory or file.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Two components given at start-up declare the same name.
    #[error("two components are named {0}")]
    DuplicateName(String),
    /// The projections directory holds more than [`MAX_COMPONENTS`] components.
    #[error("too many components in {0} (more than {MAX_COMPONENTS})")]
    TooMany(String),
    /// The tables of a projection could not be created.
    #[error("cannot create the tables of {projection}: {source}")]
    Database {
        /// The projection's name.
        projection: String,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// A checkpoint could not be created or read.
    #[error(transparent)]
    Checkpoint(#[from] wallex_runtime::checkpoint::CheckpointError),
    /// A component given at start-up was refused, or registering it failed.
    #[error("{origin}: {source}")]
    Deploy {
        /// Where the component came from (file name or `bundled:<name>`).
        origin: String,
        /// Why the deploy failed.
        #[source]
        source: OperationError,
    },
    /// The registry cannot be read.
    #[error("the registry cannot be read: {0}")]
    Registry(#[source] sqlx::Error),
    /// A deployment names a component the registry does not hold.
    #[error("component {sha256} of {projection} is missing from the registry")]
    MissingComponent {
        /// The projection whose deployment names the component.
        projection: String,
        /// Hex SHA-256 of the missing component.
        sha256: String,
    },
}
