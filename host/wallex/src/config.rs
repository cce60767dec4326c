//! Typed configuration.
//!
//! Why it exists: every setting is read once, at start-up, from the command line or the
//! environment (and a `.env` file, loaded by `main`), validated, and handed to the parts that need
//! it. Every limit the service enforces is either a named constant or one of these values.
//!
//! One source: this module (with one file per concern: [`database`], [`idempotency`],
//! [`event_store`], [`redis`], [`write_path`], [`projections`], [`recovery`]) is the only place
//! that names flags and environment variables. The library crates take plain settings
//! (`DatabaseConfig`, `ProjectionOptions`, …) whose `Default` is made of their `DEFAULT_…`
//! constants; every flag here takes its default from that constant and has a `settings()` that
//! builds the library's struct. [`serve_env`] reads the variables off the same definitions: the
//! tests strip them from the binary's environment, `wallex serve --help` prints them, and the
//! tests below check the configuration reference (host/docs/configuration.md) against them,
//! flag and default included.

pub mod database;
pub mod event_store;
pub mod idempotency;
pub mod projections;
pub mod recovery;
pub mod redis;
pub mod write_path;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
pub use database::DatabaseArgs;
pub use event_store::EventStoreArgs;
pub use idempotency::IdempotencyArgs;
pub use projections::ProjectionArgs;
pub use recovery::RecoveryArgs;
pub use redis::RedisArgs;
pub use wallex_core::db::{DatabaseConfig, DEFAULT_DATABASE_URL};
pub use wallex_core::idempotency::IdempotencyConfig;
pub use write_path::WritePathArgs;

/// Address the HTTP server listens on, by default.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3000";
/// Upper bound on handling one HTTP request, in milliseconds, by default.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How long in-flight requests may take to finish on shutdown, in seconds, by default.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;
/// Whether metrics are recorded and served, by default.
pub const DEFAULT_METRICS_ENABLED: bool = true;

/// Everything `wallex serve` needs.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address the HTTP server listens on (port 0 picks a free port; the log says which).
    #[arg(long, env = "WALLEX_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Upper bound on handling one HTTP request, in milliseconds (503 after it).
    #[arg(long, env = "WALLEX_REQUEST_TIMEOUT_MS", default_value_t = DEFAULT_REQUEST_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub request_timeout_ms: u64,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish, in seconds.
    #[arg(long, env = "WALLEX_SHUTDOWN_GRACE_SECS", default_value_t = DEFAULT_SHUTDOWN_GRACE_SECS,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_grace_secs: u64,

    /// Bearer token of the admin API (`/admin/...`); without it the admin API is off. At least
    /// 16 characters.
    #[arg(long, env = "WALLEX_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Record metrics and serve them at `GET /metrics`. With `false` every metric is a no-op
    /// (the recorder is not installed) and `/metrics` answers 404.
    #[arg(long, env = "METRICS_ENABLED", default_value_t = DEFAULT_METRICS_ENABLED,
          action = clap::ArgAction::Set)]
    pub metrics_enabled: bool,

    /// Where the database is, how the pool is sized, statement limits.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// A PostgreSQL of the server's own when none is configured or running.
    #[command(flatten)]
    pub private_postgres: crate::local_postgres::PrivatePostgresArgs,

    /// How long idempotency keys are kept, whether writes need one, and their expiry task.
    #[command(flatten)]
    pub idempotency: IdempotencyArgs,

    /// Which store holds the event streams: PostgreSQL (default) or KurrentDB.
    #[command(flatten)]
    pub event_store: EventStoreArgs,

    /// Redis for the wallet lock and the replay cache (optional).
    #[command(flatten)]
    pub redis: RedisArgs,

    /// How many write transactions run at once and how many creates one of them carries.
    #[command(flatten)]
    pub write_path: WritePathArgs,

    /// Settings of the projection runtime.
    #[command(flatten)]
    pub projections: ProjectionArgs,

    /// When stall detection runs, when a projection counts as stalled, how the read-model check
    /// reads.
    #[command(flatten)]
    pub recovery: RecoveryArgs,
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

/// The log format, by default.
pub const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Text;

/// The arguments of every `wallex` command (flattened into `main`'s command line).
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Log format.
    #[arg(long, env = "WALLEX_LOG_FORMAT", value_enum, default_value_t = DEFAULT_LOG_FORMAT,
          global = true)]
    pub log_format: LogFormat,
}

/// Environment variables the `wallex` command reads outside `serve`'s and [`GlobalArgs`]'s
/// arguments: the log filter (`main`), the CLI's server, the author kit's cache, the benches'
/// database, failpoints (built with the `failpoints` feature, for tests) and the OpenTelemetry
/// exporter (read by `wallex-telemetry`).
pub const OTHER_ENV: &[&str] = &[
    "RUST_LOG",
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

/// The environment variables of the arguments `args` adds to a command, in declaration order.
fn env_of(args: fn(clap::Command) -> clap::Command) -> Vec<String> {
    args(clap::Command::new("wallex"))
        .get_arguments()
        .filter_map(clap::Arg::get_env)
        .map(|name| name.to_string_lossy().into_owned())
        .collect()
}

/// Every environment variable `wallex serve` reads as an argument ([`ServeConfig`] and what it
/// flattens in, one struct per concern), in declaration order: the one list that the tests strip, and
/// that the tables of host/docs/configuration.md are checked against.
pub fn serve_env() -> Vec<String> {
    env_of(ServeConfig::augment_args)
}

/// [`serve_env`], [`GlobalArgs`]'s variables, then [`OTHER_ENV`]: everything a test removes to
/// run the binary with its defaults only.
pub fn env_names() -> Vec<String> {
    let mut names = serve_env();
    names.extend(env_of(GlobalArgs::augment_args));
    names.extend(OTHER_ENV.iter().map(|name| (*name).to_owned()));
    names
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The configuration reference the tests hold to the flags.
    const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");

    fn reference() -> String {
        std::fs::read_to_string(REFERENCE).expect(REFERENCE)
    }

    /// The names in the first cell of every table row of host/docs/configuration.md
    /// (`| `NAME`, `OTHER` | …`).
    fn documented() -> BTreeSet<String> {
        reference()
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
    fn every_variable_of_serve_has_a_row_in_the_reference_and_every_row_a_variable() {
        let documented = documented();
        let serve = serve_env();
        let missing: Vec<&String> = serve.iter().filter(|n| !documented.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "variables of `wallex serve` without a row in host/docs/configuration.md's tables: {missing:?}"
        );
        let known: BTreeSet<String> = env_names().into_iter().collect();
        let unknown: Vec<&String> = documented.iter().filter(|n| !known.contains(*n)).collect();
        assert!(
            unknown.is_empty(),
            "host/docs/configuration.md documents variables nothing reads: {unknown:?}"
        );
    }

    #[test]
    fn no_variable_is_declared_twice() {
        let names = env_names();
        let unique: BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }

    /// `wallex serve` parsed from `args` as if no environment variable were set (every
    /// argument's `env` is dropped: the developer's environment must not count).
    fn serve_without_environment(args: &[&str]) -> ServeConfig {
        use clap::FromArgMatches;
        let command =
            ServeConfig::augment_args(clap::Command::new("serve")).mut_args(|arg| arg.env(None));
        let matches = command
            .try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))
            .expect("serve's arguments");
        ServeConfig::from_arg_matches(&matches).expect("serve's arguments")
    }

    #[test]
    fn the_library_defaults_are_the_servers_defaults() {
        // Benches, tests and other callers that build a library's `Default` must run with what
        // users get from `wallex serve` with nothing set: one default per setting.
        let serve = serve_without_environment(&[]);
        assert_eq!(serve.database.settings(), DatabaseConfig::default());
        assert_eq!(serve.idempotency.settings(), IdempotencyConfig::default());
        assert_eq!(
            serve.event_store.settings(),
            wallex_core::eventstore::kurrent::EventStoreConfig::default()
        );
        assert_eq!(
            serve.redis.settings(),
            wallex_core::redis_lock_cache::RedisConfig::default()
        );
        assert_eq!(
            serve.write_path.settings(),
            wallex_core::write_path::WritePathConfig::default()
        );
        assert_eq!(
            serve.recovery.settings(),
            wallex_control::recovery::RecoveryConfig::default()
        );
        let projections = serve.projections.settings().expect("no overrides");
        assert_eq!(projections, wallex_runtime::ProjectionOptions::default());
        assert_eq!(
            format!("{:#?}", projections.resolve()),
            format!("{:#?}", wallex_runtime::ProjectionConfig::default())
        );
        assert_eq!(serve.listen, DEFAULT_LISTEN.parse().unwrap());
    }

    #[test]
    fn flags_reach_the_library_settings() {
        let serve = serve_without_environment(&[
            "--database-pool-size",
            "3",
            "--event-store",
            "kurrentdb",
            "--projector-on-poison",
            "skip",
            "--projector-overrides",
            "ledger.batch_size=500",
            "--recovery-check-chunk",
            "7",
        ]);
        assert_eq!(serve.database.settings().database_pool_size, 3);
        assert_eq!(
            serve.event_store.settings().event_store,
            wallex_core::eventstore::kurrent::EventStoreKind::Kurrentdb
        );
        let projections = serve.projections.settings().unwrap().resolve();
        assert_eq!(
            projections.on_poison,
            wallex_runtime::config::OnPoison::Skip
        );
        assert_eq!(projections.worker("ledger").batch_size, 500);
        assert_eq!(serve.recovery.settings().recovery_check_chunk, 7);
        let bad = serve_without_environment(&["--projector-overrides", "ledger.nope=1"]);
        assert_eq!(
            bad.projections.settings().unwrap_err(),
            wallex_runtime::config::ConfigError::UnknownKey("nope".into())
        );
    }

    /// Every argument of `wallex serve` and of every command ([`GlobalArgs`]), by variable.
    fn arguments_by_variable() -> std::collections::BTreeMap<String, clap::Arg> {
        let serve = ServeConfig::augment_args(clap::Command::new("serve"));
        let global = GlobalArgs::augment_args(clap::Command::new("wallex"));
        serve
            .get_arguments()
            .chain(global.get_arguments())
            .filter_map(|arg| {
                let name = arg.get_env()?.to_string_lossy().into_owned();
                Some((name, arg.clone()))
            })
            .collect()
    }

    #[test]
    fn every_flag_of_serve_has_a_variable_and_a_help_text() {
        // A flag without a variable would be missing from the tests' strip list and from the
        // configuration reference; one without help from `--help`.
        let serve = ServeConfig::augment_args(clap::Command::new("serve"));
        for arg in serve.get_arguments() {
            let id = arg.get_id();
            assert!(arg.get_long().is_some(), "{id}: no --flag");
            assert!(arg.get_env().is_some(), "{id}: no environment variable");
            assert!(arg.get_help().is_some(), "{id}: no help text");
        }
    }

    /// Variables without a default whose unset value the reference describes in words (a
    /// default computed at run time, or what runs instead).
    const DESCRIBED_WHEN_UNSET: &[&str] =
        &["WALLEX_PRIVATE_POSTGRES_DIR", "WALLEX_PROJECTIONS_DIR"];

    /// A cell of the reference as plain text: no backticks, no parenthesised remark, numbers
    /// without thousands separators.
    fn plain(cell: &str) -> String {
        let mut text = String::new();
        let mut depth = 0_usize;
        for c in cell.chars() {
            match c {
                '`' => {}
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ if depth == 0 => text.push(c),
                _ => {}
            }
        }
        let text = text.trim();
        if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == ',') {
            text.replace(',', "")
        } else {
            text.to_owned()
        }
    }

    /// Where the rows of the configuration reference's variable tables (`| variable | flag |
    /// default | … |`, the flag column optional) disagree with the flags: a flag column that is
    /// not the variable's `--flag`, a default that is not clap's (compared as [`plain`] text;
    /// `unset` or nothing for no default). Also how many (row, variable) pairs were checked.
    fn reference_disagreements(text: &str) -> (Vec<String>, usize) {
        let arguments = arguments_by_variable();
        let mut wrong = Vec::new();
        let mut checked = 0;
        // (flag column, default column) of the table being read; `None` outside a variable table.
        let mut columns: Option<(Option<usize>, Option<usize>)> = None;
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let Some(inner) = line
                .trim()
                .strip_prefix('|')
                .and_then(|rest| rest.strip_suffix('|'))
            else {
                columns = None;
                continue;
            };
            let cells: Vec<&str> = inner.split('|').map(str::trim).collect();
            if cells.first() == Some(&"variable") {
                let column = |name: &str| cells.iter().position(|cell| *cell == name);
                columns = Some((column("flag"), column("default")));
                continue;
            }
            let Some((flag_column, default_column)) = columns else {
                continue;
            };
            if cells.iter().all(|cell| cell.starts_with("---")) {
                continue;
            }
            let variables: Vec<&str> = cells[0]
                .split(',')
                .map(|name| name.trim().trim_matches('`'))
                .collect();
            let split = |column: Option<usize>| -> Option<Vec<String>> {
                let cell = cells.get(column?)?;
                Some(if variables.len() > 1 {
                    cell.split(", ").map(plain).collect()
                } else {
                    vec![plain(cell)]
                })
            };
            let (flags, defaults) = (split(flag_column), split(default_column));
            for (i, variable) in variables.iter().enumerate() {
                let Some(arg) = arguments.get(*variable) else {
                    continue;
                };
                checked += 1;
                if let Some(flags) = &flags {
                    let expected = format!("--{}", arg.get_long().unwrap_or_default());
                    match flags.get(i) {
                        Some(flag) if *flag == expected => {}
                        other => wrong.push(format!(
                            "line {line_no}: {variable}: flag column says {other:?}, clap says {expected:?}"
                        )),
                    }
                }
                let Some(defaults) = &defaults else {
                    continue;
                };
                let documented = defaults.get(i).map(String::as_str);
                let declared: Vec<String> = arg
                    .get_default_values()
                    .iter()
                    .map(|value| value.to_string_lossy().into_owned())
                    .collect();
                let agrees = match (declared.as_slice(), documented) {
                    ([declared], Some(documented)) => documented == declared,
                    ([], Some("" | "unset")) => true,
                    ([], Some(_)) => DESCRIBED_WHEN_UNSET.contains(variable),
                    _ => false,
                };
                if !agrees {
                    wrong.push(format!(
                        "line {line_no}: {variable}: default column says {documented:?}, clap says {declared:?}"
                    ));
                }
            }
        }
        (wrong, checked)
    }

    #[test]
    fn the_reference_tables_give_each_variable_its_flag_and_default() {
        let (wrong, checked) = reference_disagreements(&reference());
        assert!(
            wrong.is_empty(),
            "{REFERENCE} disagrees with the flags:\n{}",
            wrong.join("\n")
        );
        assert!(
            checked >= arguments_by_variable().len(),
            "only {checked} rows of {REFERENCE} checked"
        );
    }

    #[test]
    fn the_reference_check_finds_wrong_flags_and_defaults() {
        let table = "\
| variable | flag | default | meaning |
| --- | --- | --- | --- |
| `DATABASE_POOL_SIZE` | `--database-pool-size` | 10 | right |
| `REDIS_HOST`, `REDIS_PORT` | `--redis-host`, `--redis-port` | unset, 6,379 | right |
| `WALLEX_MAX_COMPONENT_BYTES` | `--max-component-bytes` | 33554432 (32 MiB) | right |
| `WALLEX_ADMIN_TOKEN` | `--admin-token` | (unset: admin off) | right |
| `RUST_LOG` | | `info` | not a flag: not checked |
| `WRITE_COMMITTERS` | `--committers` | 4 | wrong flag |
| `REDIS_URL` | `--redis-url` | `redis://localhost` | a default clap does not have |

| variable | default | meaning |
| --- | --- | --- |
| `PROJECTOR_ON_POISON` | skip | wrong default |
| `PROJECTOR_FUEL` | 0 (off) | right |
";
        let (wrong, checked) = reference_disagreements(table);
        assert_eq!(checked, 9, "{wrong:?}");
        assert_eq!(wrong.len(), 3, "{wrong:#?}");
        assert!(
            wrong[0].starts_with("line 8: WRITE_COMMITTERS: flag"),
            "{wrong:?}"
        );
        assert!(
            wrong[1].starts_with("line 9: REDIS_URL: default"),
            "{wrong:?}"
        );
        assert!(
            wrong[2].starts_with("line 13: PROJECTOR_ON_POISON: default"),
            "{wrong:?}"
        );
    }
}
