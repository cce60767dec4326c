//! Typed configuration.
//!
//! Why it exists: every setting is read once, at start-up, from the command line or the
//! environment (and a `.env` file, loaded by `main`), validated, and handed to the parts that need
//! it. Every limit the service enforces is either a named constant or one of these values.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
pub use wallex_core::db::{DatabaseConfig, DEFAULT_DATABASE_URL};
pub use wallex_core::idempotency::IdempotencyConfig;

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

    /// Record metrics and serve them at `GET /metrics`. With `false` every metric is a no-op
    /// (the recorder is not installed) and `/metrics` answers 404.
    #[arg(long, env = "METRICS_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics_enabled: bool,

    /// Where the database is, how the pool is sized, statement limits.
    #[command(flatten)]
    pub database: DatabaseConfig,

    /// A PostgreSQL of the server's own when none is configured or running.
    #[command(flatten)]
    pub private_postgres: crate::local_postgres::PrivatePostgresArgs,

    /// How long idempotency keys are kept, whether writes need one, and their expiry task.
    #[command(flatten)]
    pub idempotency: IdempotencyConfig,

    /// Which store holds the event streams: PostgreSQL (default) or KurrentDB.
    #[command(flatten)]
    pub event_store: wallex_core::eventstore::kurrent::EventStoreConfig,

    /// Redis for the wallet lock and the replay cache (optional).
    #[command(flatten)]
    pub redis: wallex_core::redis_assist::RedisConfig,

    /// How many write transactions run at once and how many creates one of them carries.
    #[command(flatten)]
    pub write_path: wallex_core::write_path::WritePathConfig,

    /// Settings of the projection runtime.
    #[command(flatten)]
    pub projections: wallex_runtime::ProjectionArgs,

    /// When stall detection runs, when a projection counts as stalled, how the read-model check
    /// reads.
    #[command(flatten)]
    pub recovery: wallex_runtime::recovery::RecoveryConfig,
}

impl ServeConfig {
    /// Whether the user chose a database (`DATABASE_URL` or `--database-url` other than the
    /// default); if not, a private PostgreSQL may be started (see [`crate::local_postgres`]).
    pub fn database_chosen(&self) -> bool {
        std::env::var_os("DATABASE_URL").is_some()
            || self.database.database_url != DEFAULT_DATABASE_URL
    }

    /// The per-request bound as a [`Duration`].
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
