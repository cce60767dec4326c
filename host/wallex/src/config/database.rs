//! `wallex serve`'s (and `wallex migrate`'s) database flags → [`DatabaseConfig`].

use clap::Args;
use wallex_core::db::{self, DatabaseConfig};

/// How to reach PostgreSQL.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL. The database is created if it does not exist.
    #[arg(long, env = "DATABASE_URL", default_value = db::DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Maximum connections in the pool. Few connections commit faster than many on a small
    /// machine (host/docs/configuration.md, "Pool size"); raise it with the database's cores.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = db::DEFAULT_POOL_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_pool_size: u32,

    /// How long a request waits for a pooled connection before it gets a 503, in milliseconds.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_MS", default_value_t = db::DEFAULT_ACQUIRE_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub database_acquire_timeout_ms: u64,

    /// Server-side limit on any one SQL statement, in milliseconds.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT_MS", default_value_t = db::DEFAULT_STATEMENT_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub database_statement_timeout_ms: u64,
}

impl DatabaseArgs {
    /// The library's settings.
    pub fn settings(&self) -> DatabaseConfig {
        DatabaseConfig {
            database_url: self.database_url.clone(),
            database_pool_size: self.database_pool_size,
            database_acquire_timeout_ms: self.database_acquire_timeout_ms,
            database_statement_timeout_ms: self.database_statement_timeout_ms,
        }
    }
}
