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

/// Environment variables the `wallex` command reads outside `serve`'s arguments: the log filter
/// and format (`main`), the CLI's server, the author kit's cache, the benches' database,
/// failpoints (built with the `failpoints` feature, for tests) and the OpenTelemetry exporter
/// (read by `wallex-telemetry`).
pub const OTHER_ENV: &[&str] = &[
    "RUST_LOG",
    "WALLEX_LOG_FORMAT",
    "WALLEX_URL",
    "WALLEX_CACHE_DIR",
    "WALLEX_BENCH_DATABASE_URL",
    "WALLEX_FAILPOINTS",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SERVICE_NAME",
];

/// Every environment variable `wallex serve` reads as an argument ([`ServeConfig`] and what it
/// flattens in from each crate), in declaration order: the one list that the tests strip, and
/// that the README's configuration tables are checked against.
pub fn serve_env() -> Vec<String> {
    use clap::Args as _;
    ServeConfig::augment_args(clap::Command::new("serve"))
        .get_arguments()
        .filter_map(clap::Arg::get_env)
        .map(|name| name.to_string_lossy().into_owned())
        .collect()
}

/// [`serve_env`] then [`OTHER_ENV`]: everything a test removes to run the binary with its
/// defaults only.
pub fn env_names() -> Vec<String> {
    let mut names = serve_env();
    names.extend(OTHER_ENV.iter().map(|name| (*name).to_owned()));
    names
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The names in the first cell of every README table row (`| `NAME`, `OTHER` | …`).
    fn documented() -> BTreeSet<String> {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .expect("README.md");
        readme
            .lines()
            .filter_map(|line| line.strip_prefix("| "))
            .filter_map(|rest| rest.split(" |").next())
            .flat_map(|cell| {
                cell.split('`')
                    .skip(1)
                    .step_by(2)
                    .filter(|name| {
                        name.len() > 1
                            && name
                                .chars()
                                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                    })
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn every_variable_of_serve_has_a_row_in_the_readme_and_every_row_a_variable() {
        let documented = documented();
        let serve = serve_env();
        let missing: Vec<&String> = serve.iter().filter(|n| !documented.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "variables of `wallex serve` without a row in README.md's tables: {missing:?}"
        );
        let known: BTreeSet<String> = env_names().into_iter().collect();
        let unknown: Vec<&String> = documented.iter().filter(|n| !known.contains(*n)).collect();
        assert!(
            unknown.is_empty(),
            "README.md documents variables nothing reads: {unknown:?}"
        );
    }

    #[test]
    fn no_variable_is_declared_twice() {
        let names = env_names();
        let unique: BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }
}
