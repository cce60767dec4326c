//! The PostgreSQL pool and schema migrations.
//!
//! Why it exists: one place creates the pool with the configured limits (size, acquire timeout,
//! statement timeout), creates the database when it is missing, and applies the migrations embedded
//! from `migrations/postgres` — at `serve` start and with `wallex migrate`.

use std::str::FromStr;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use std::time::Duration;

/// Default database when `DATABASE_URL` is not set: the local PostgreSQL of the quickstart.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/wallex";
/// Connections in the pool, by default.
pub const DEFAULT_POOL_SIZE: u32 = 10;
/// Wait for a pooled connection, in milliseconds, by default.
pub const DEFAULT_ACQUIRE_TIMEOUT_MS: u64 = 3_000;
/// Server-side limit on one SQL statement, in milliseconds, by default.
pub const DEFAULT_STATEMENT_TIMEOUT_MS: u64 = 5_000;

/// How to reach PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// PostgreSQL connection URL. The database is created if it does not exist.
    pub database_url: String,

    /// Maximum connections in the pool. Few connections commit faster than many on a small
    /// machine (host/docs/configuration.md, "Pool size"); raise it with the database's cores.
    pub database_pool_size: u32,

    /// How long a request waits for a pooled connection before it gets a 503, in milliseconds:
    /// a saturated pool answers quickly instead of queueing requests past their timeout.
    pub database_acquire_timeout_ms: u64,

    /// Server-side limit on any one SQL statement, in milliseconds, so that a runaway query
    /// cannot hold a connection (and its locks) indefinitely.
    pub database_statement_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            database_pool_size: DEFAULT_POOL_SIZE,
            database_acquire_timeout_ms: DEFAULT_ACQUIRE_TIMEOUT_MS,
            database_statement_timeout_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
        }
    }
}

impl DatabaseConfig {
    /// [`Self::database_acquire_timeout_ms`] as a `Duration`, the form the pool takes.
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.database_acquire_timeout_ms)
    }
}

/// The migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

/// Errors of setting up the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The configured URL could not be parsed as a PostgreSQL connection URL.
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// PostgreSQL could not be reached to check whether the database exists.
    #[error("cannot reach PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    /// The database was missing and creating it failed.
    #[error("cannot create the database: {0}")]
    Create(#[source] sqlx::Error),
    /// Applying the embedded migrations failed.
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Creates the database if it does not exist yet.
pub async fn ensure_database(config: &DatabaseConfig) -> Result<(), DbError> {
    PgConnectOptions::from_str(&config.database_url).map_err(DbError::InvalidUrl)?;
    let exists = Postgres::database_exists(&config.database_url)
        .await
        .map_err(DbError::Connect)?;
    if !exists {
        tracing::info!("database does not exist; creating it");
        Postgres::create_database(&config.database_url)
            .await
            .map_err(DbError::Create)?;
    }
    Ok(())
}

/// A pool with the configured limits. Connections are opened lazily, so a database outage at
/// start-up surfaces as errors on use (503s) rather than a crash.
pub fn pool(config: &DatabaseConfig) -> Result<PgPool, DbError> {
    let statement_timeout = format!("{}ms", config.database_statement_timeout_ms);
    let options = PgConnectOptions::from_str(&config.database_url)
        .map_err(DbError::InvalidUrl)?
        .application_name("wallex")
        .options([("statement_timeout", statement_timeout.as_str())]);
    Ok(PgPoolOptions::new()
        .max_connections(config.database_pool_size)
        .acquire_timeout(config.acquire_timeout())
        .connect_lazy_with(options))
}

/// Makes every WAL record written so far durable. A transaction committed asynchronously is
/// visible before its WAL is flushed; a reader that must not answer from something a PostgreSQL
/// crash could still take back calls this after seeing it. If the flush position is behind, it
/// commits a transaction with an id (and no rows) synchronously: its flush covers everything
/// before it. Under write load the WAL is flushed continually and this is one cheap query.
pub async fn flush_wal(pool: &PgPool) -> Result<(), sqlx::Error> {
    let (flushed,): (bool,) =
        sqlx::query_as("SELECT pg_current_wal_flush_lsn() >= pg_current_wal_insert_lsn()")
            .fetch_one(pool)
            .await?;
    if !flushed {
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = on")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Whether every embedded migration has been applied successfully.
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?;
    Ok(MIGRATOR
        .iter()
        .all(|migration| applied.iter().any(|(v,)| *v == migration.version)))
}
