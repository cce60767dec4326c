//! Typed configuration.
//!
//! Why it exists: every setting is read once, at start-up, from the command line or the
//! environment (and a `.env` file, loaded by `main`), validated, and handed to the parts that need
//! it. Every limit the service enforces is either a named constant or one of these values.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgAction, Args};

/// Default database when `DATABASE_URL` is not set: the local PostgreSQL of the quickstart.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/wallex";

/// How to reach PostgreSQL.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL connection URL. The database is created if it does not exist.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Maximum connections in the pool. Few connections commit faster than many on a small
    /// machine (README: Performance); raise it with the database's cores.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_pool_size: u32,

    /// How long a request waits for a pooled connection before it gets a 503, in milliseconds.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub database_acquire_timeout_ms: u64,

    /// Server-side limit on any one SQL statement, in milliseconds.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub database_statement_timeout_ms: u64,
}

impl DatabaseConfig {
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.database_acquire_timeout_ms)
    }
}

/// Idempotency-key handling.
#[derive(Debug, Clone, Args)]
pub struct IdempotencyConfig {
    /// How long a completed request's response is kept for replay, in hours.
    #[arg(long, env = "IDEMPOTENCY_TTL_HOURS", default_value_t = 24,
          value_parser = clap::value_parser!(u32).range(1..=8760))]
    pub idempotency_ttl_hours: u32,

    /// Reject writes that carry no `Idempotency-Key` header (400).
    #[arg(long, env = "IDEMPOTENCY_KEY_REQUIRED", default_value_t = false, action = ArgAction::Set)]
    pub idempotency_key_required: bool,

    /// How often expired keys are deleted, in seconds.
    #[arg(long, env = "IDEMPOTENCY_CLEANUP_INTERVAL_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idempotency_cleanup_interval_secs: u64,

    /// At most this many expired keys are deleted per statement.
    #[arg(long, env = "IDEMPOTENCY_CLEANUP_BATCH_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub idempotency_cleanup_batch_size: u32,
}

impl IdempotencyConfig {
    pub fn ttl(&self) -> chrono::Duration {
        chrono::Duration::hours(i64::from(self.idempotency_ttl_hours))
    }
}

/// Everything `wallex serve` needs.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address the HTTP server listens on (port 0 picks a free port; the log says which).
    #[arg(long, env = "WALLEX_LISTEN", default_value = "0.0.0.0:3000")]
    pub listen: SocketAddr,

    /// Upper bound on handling one HTTP request, in milliseconds (503 after it).
    #[arg(long, env = "WALLEX_REQUEST_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub request_timeout_ms: u64,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish, in seconds.
    #[arg(long, env = "WALLEX_SHUTDOWN_GRACE_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_grace_secs: u64,

    /// Bearer token of the admin API (`/admin/...`); without it the admin API is off. At least
    /// 16 characters.
    #[arg(long, env = "WALLEX_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    #[command(flatten)]
    pub database: DatabaseConfig,

    #[command(flatten)]
    pub idempotency: IdempotencyConfig,

    #[command(flatten)]
    pub projections: crate::projection::ProjectionArgs,
}

impl ServeConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
