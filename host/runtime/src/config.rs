//! Configuration of the projection runtime: where components come from, worker tuning (with
//! per-projection overrides) and the read-after-write wait.
//!
//! Why it exists: every limit is a named default here and can be changed per deployment through
//! flags or environment variables, flattened into `wallex serve`'s arguments.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sandbox::engine::{EngineLimits, RuntimeLimits};
use crate::sandbox::guest_pool::{DEFAULT_GUEST_NICE, DEFAULT_GUEST_THREADS};

/// Events per batch of a live worker, by default.
pub const DEFAULT_BATCH_SIZE: u32 = 1_000;
/// How often a worker polls the outbox when no notification arrives, by default.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 1_000;
/// Pause after a failed batch, by default (it doubles up to [`DEFAULT_MAX_BACKOFF_MS`]).
pub const DEFAULT_ERROR_BACKOFF_MS: u64 = 5_000;
/// Default shortest time between the starts of two batches of a busy worker.
pub const DEFAULT_MIN_BATCH_INTERVAL_MS: u64 = 10;
/// Longest accepted `PROJECTOR_MIN_BATCH_INTERVAL_MS` (it adds to the projections' lag).
pub const MAX_MIN_BATCH_INTERVAL_MS: u64 = 1_000;
/// Consecutive retries of a failing batch before the worker gives up, by default.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// How often a process without a projection's lease tries to take it, by default.
pub const DEFAULT_LEASE_RETRY_MS: u64 = 1_000;
/// Wait of a read with `minPosition` when none is requested, by default.
pub const DEFAULT_READ_AFTER_WRITE_TIMEOUT_MS: u64 = 5_000;
/// Upper bound of the read-after-write wait, whatever is configured or requested.
pub const MAX_READ_AFTER_WRITE_TIMEOUT_MS: u64 = 30_000;
/// Largest batch size accepted, live or rebuild, from flags or overrides.
pub const MAX_BATCH_SIZE: u32 = 10_000;
/// Events per batch while rebuilding (bigger batches: a rebuild is throughput-bound).
pub const DEFAULT_REBUILD_BATCH_SIZE: u32 = 2_000;
/// Largest component accepted from an upload or the projections directory.
pub const DEFAULT_MAX_COMPONENT_BYTES: usize = 32 << 20;
/// Longest a component may take to compile before its deploy is refused. A 20 MiB Python
/// component takes Cranelift about 10 s on one core of a small machine; the deploy answers
/// `202 Accepted` long before (the compile runs in the background).
pub const DEFAULT_COMPILE_TIMEOUT_MS: u64 = 120_000;
/// Most memory the compiled code of every component loaded in the process may take together.
pub const DEFAULT_COMPILED_MEMORY_MAX_MIB: usize = 2048;
/// How often the projections directory is scanned for new or changed files (0: not watched).
pub const DEFAULT_WATCH_INTERVAL_MS: u64 = 250;
/// How often every instance re-reads the registry even without a notification.
pub const DEFAULT_REGISTRY_RESYNC_MS: u64 = 5_000;

/// Command-line / environment settings of the projection runtime.
#[derive(Debug, Clone, clap::Args)]
pub struct ProjectionArgs {
    /// Directory of projection components (`*.wasm`) to load instead of the bundled three.
    #[arg(long, env = "WALLEX_PROJECTIONS_DIR")]
    pub projections_dir: Option<PathBuf>,
    /// Start the projection workers with the server.
    #[arg(long, env = "PROJECTORS_AUTO_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub projectors_auto_start: bool,
    /// Events per batch.
    #[arg(long, env = "PROJECTOR_BATCH_SIZE", default_value_t = DEFAULT_BATCH_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=MAX_BATCH_SIZE as i64))]
    pub projector_batch_size: u32,
    /// Fallback poll interval when no notification arrives.
    #[arg(long, env = "PROJECTOR_POLL_INTERVAL_MS", default_value_t = DEFAULT_POLL_INTERVAL_MS)]
    pub projector_poll_interval_ms: u64,
    /// Pause after a failed batch.
    #[arg(long, env = "PROJECTOR_ERROR_BACKOFF_MS", default_value_t = DEFAULT_ERROR_BACKOFF_MS)]
    pub projector_error_backoff_ms: u64,
    /// Consecutive retries of a failing batch before the worker stops.
    #[arg(long, env = "PROJECTOR_MAX_RETRIES", default_value_t = DEFAULT_MAX_RETRIES)]
    pub projector_max_retries: u32,
    /// How often a process without a projection's lease tries to take it.
    #[arg(long, env = "PROJECTOR_LEASE_RETRY_MS", default_value_t = DEFAULT_LEASE_RETRY_MS)]
    pub projector_lease_retry_ms: u64,
    /// Under load, a worker starts at most one batch per this many milliseconds: notifications
    /// that arrive sooner are coalesced into the next, larger batch (fewer commits for the same
    /// events). 0 = a batch per notification. An idle worker answers the first write at once.
    #[arg(long, env = "PROJECTOR_MIN_BATCH_INTERVAL_MS", default_value_t = DEFAULT_MIN_BATCH_INTERVAL_MS,
          value_parser = clap::value_parser!(u64).range(0..=MAX_MIN_BATCH_INTERVAL_MS))]
    pub projector_min_batch_interval_ms: u64,
    /// Commit live batches with `synchronous_commit = on`. Off by default: projection tables are
    /// derived from the durable outbox, so a batch lost in a PostgreSQL crash is applied again
    /// (README: "Read-after-write and asynchronous commit" has the exact guarantee).
    #[arg(long, env = "PROJECTOR_SYNCHRONOUS_COMMIT", default_value_t = false, action = clap::ArgAction::Set)]
    pub projector_synchronous_commit: bool,
    /// Per-projection overrides, e.g. `ledger.batch_size=500,audit.poll_interval_ms=200`
    /// (keys: batch_size, poll_interval_ms, min_batch_interval_ms, error_backoff_ms, max_retries,
    /// lease_retry_ms).
    #[arg(long, env = "PROJECTOR_OVERRIDES", default_value = "")]
    pub projector_overrides: String,
    /// Default wait of a read with `minPosition` (capped at 30 s).
    #[arg(long, env = "READ_AFTER_WRITE_TIMEOUT_MS", default_value_t = DEFAULT_READ_AFTER_WRITE_TIMEOUT_MS)]
    pub read_after_write_timeout_ms: u64,
    /// Events per batch of a blue/green rebuild.
    #[arg(long, env = "PROJECTOR_REBUILD_BATCH_SIZE", default_value_t = DEFAULT_REBUILD_BATCH_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=MAX_BATCH_SIZE as i64))]
    pub projector_rebuild_batch_size: u32,
    /// Largest component accepted (upload or directory), in bytes.
    #[arg(long, env = "WALLEX_MAX_COMPONENT_BYTES", default_value_t = DEFAULT_MAX_COMPONENT_BYTES)]
    pub max_component_bytes: usize,
    /// Compile-time limit of a deployed component.
    #[arg(long, env = "WALLEX_COMPILE_TIMEOUT_MS", default_value_t = DEFAULT_COMPILE_TIMEOUT_MS)]
    pub compile_timeout_ms: u64,
    /// Most memory, in MiB, that the compiled code of all components loaded in this process may
    /// take together; a deploy that would exceed it is refused.
    #[arg(long, env = "WALLEX_COMPILED_MEMORY_MAX_MIB", default_value_t = DEFAULT_COMPILED_MEMORY_MAX_MIB)]
    pub compiled_memory_max_mib: usize,
    /// Store compiled components in PostgreSQL (`projection_artifacts`) and load them from
    /// there instead of compiling again (restarts, other instances, rollbacks).
    #[arg(long, env = "WALLEX_ARTIFACT_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub artifact_cache: bool,
    /// Longest a dry run may take (compile, replay and comparison).
    #[arg(long, env = "WALLEX_DRY_RUN_TIMEOUT_MS", default_value_t = crate::dry_run::DEFAULT_TIMEOUT_MS)]
    pub dry_run_timeout_ms: u64,
    /// Most outbox rows a dry run may read.
    #[arg(long, env = "WALLEX_DRY_RUN_MAX_EVENTS", default_value_t = crate::dry_run::DEFAULT_MAX_EVENTS)]
    pub dry_run_max_events: u64,
    /// Most rows a dry run's candidate may write into its shadow.
    #[arg(long, env = "WALLEX_DRY_RUN_MAX_ROWS", default_value_t = crate::dry_run::DEFAULT_MAX_ROWS)]
    pub dry_run_max_rows: u64,
    /// Scan interval of `WALLEX_PROJECTIONS_DIR` for new or changed components (0: no watch).
    #[arg(long, env = "WALLEX_PROJECTIONS_WATCH_MS", default_value_t = DEFAULT_WATCH_INTERVAL_MS)]
    pub projections_watch_ms: u64,
    /// Re-read the registry this often even without a notification.
    #[arg(long, env = "REGISTRY_RESYNC_MS", default_value_t = DEFAULT_REGISTRY_RESYNC_MS)]
    pub registry_resync_ms: u64,
    /// Linear-memory cap of a component call, in MiB.
    #[arg(long, env = "PROJECTOR_MEMORY_LIMIT_MIB",
          default_value_t = crate::sandbox::engine::DEFAULT_MEMORY_LIMIT_BYTES >> 20)]
    pub projector_memory_limit_mib: usize,
    /// Highest memory cap any projection may be given (per-projection overrides included), MiB.
    #[arg(long, env = "PROJECTOR_MEMORY_MAX_MIB",
          default_value_t = crate::sandbox::engine::DEFAULT_MAX_MEMORY_BYTES >> 20)]
    pub projector_memory_max_mib: usize,
    /// Wall-clock budget of one component call.
    #[arg(long, env = "PROJECTOR_CALL_TIMEOUT_MS", default_value_t = 2_000)]
    pub projector_call_timeout_ms: u64,
    /// Fuel per component call (deterministic budget); 0 turns fuel metering off.
    #[arg(long, env = "PROJECTOR_FUEL", default_value_t = 0)]
    pub projector_fuel: u64,
    /// WebAssembly stack per call, in KiB (deeper recursion traps).
    #[arg(long, env = "PROJECTOR_MAX_STACK_KIB", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(64..=8192))]
    pub projector_max_stack_kib: u64,
    /// Most mutations one component call may return.
    #[arg(long, env = "PROJECTOR_MAX_MUTATIONS", default_value_t = crate::sandbox::engine::DEFAULT_MAX_MUTATIONS)]
    pub projector_max_mutations: usize,
    /// Most bytes of the mutations of one component call.
    #[arg(long, env = "PROJECTOR_MAX_BATCH_BYTES", default_value_t = crate::sandbox::engine::DEFAULT_MAX_BATCH_BYTES)]
    pub projector_max_batch_bytes: usize,
    /// Most host `log` calls per component call.
    #[arg(long, env = "PROJECTOR_LOG_LINES", default_value_t = crate::sandbox::engine::DEFAULT_LOG_LINES)]
    pub projector_log_lines: u32,
    /// Most bytes of host `log` messages per component call.
    #[arg(long, env = "PROJECTOR_LOG_BYTES", default_value_t = crate::sandbox::engine::DEFAULT_LOG_BYTES)]
    pub projector_log_bytes: usize,
    /// What a batch that keeps failing does: `pause` (the projection stops, `failed`) or `skip`
    /// (the poison event is found, dead-lettered, and the rest applied).
    #[arg(long, env = "PROJECTOR_ON_POISON", value_enum, default_value = "pause")]
    pub projector_on_poison: OnPoison,
    /// Longest pause between retries of a failing batch (the backoff doubles up to it).
    #[arg(long, env = "PROJECTOR_MAX_BACKOFF_MS", default_value_t = DEFAULT_MAX_BACKOFF_MS)]
    pub projector_max_backoff_ms: u64,
    /// Threads that run component code.
    #[arg(long, env = "PROJECTOR_GUEST_THREADS", default_value_t = DEFAULT_GUEST_THREADS,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub projector_guest_threads: u64,
    /// Niceness of those threads (0–19; higher yields CPU to HTTP and PostgreSQL).
    #[arg(long, env = "PROJECTOR_GUEST_NICE", default_value_t = DEFAULT_GUEST_NICE,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub projector_guest_nice: i32,
}

/// Longest backoff between retries of a failing batch, by default.
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 60_000;

/// What happens to an event a projection cannot process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnPoison {
    /// Retry with backoff, then stop the projection (`failed`) at the event.
    #[default]
    Pause,
    /// Find the event by searching the batch, record it as a dead letter and carry on.
    Skip,
}

/// Limits and policy given with a deploy (stored in the registry); unset keys fall back to the
/// projection's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionSettings {
    /// What a batch that keeps failing does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_poison: Option<OnPoison>,
    /// Linear-memory cap of a call, in MiB (still capped by the engine's maximum).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<usize>,
    /// Wall-clock budget of one call, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_timeout_ms: Option<u64>,
    /// Fuel per call; 0 turns fuel metering off for this projection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Most mutations one `handle` call may return.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_mutations: Option<usize>,
    /// Most bytes (names and values) of the mutations of one `handle` call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_bytes: Option<usize>,
    /// Host `log` calls honoured per call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_lines: Option<u32>,
    /// Bytes of host `log` messages honoured per call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<usize>,
}

impl ProjectionSettings {
    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What a projection version runs under: its limits and poison policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The limits of every guest call.
    pub limits: RuntimeLimits,
    /// What a batch that keeps failing does.
    pub on_poison: OnPoison,
}

/// Why the projection settings cannot be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A `PROJECTOR_OVERRIDES` entry is not `<projection>.<key>=<number>` (or `on_poison` is not
    /// `pause` or `skip`).
    #[error("invalid PROJECTOR_OVERRIDES entry {0:?}: expected <projection>.<key>=<number>")]
    Override(String),
    /// A `PROJECTOR_OVERRIDES` entry names a key that does not exist.
    #[error("unknown PROJECTOR_OVERRIDES key {0:?}")]
    UnknownKey(String),
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct ProjectionConfig {
    /// Directory of projection components; `None` runs the bundled three.
    pub dir: Option<PathBuf>,
    /// Whether the workers start with the server.
    pub auto_start: bool,
    /// Worker tuning of every projection before its overrides.
    pub defaults: WorkerConfig,
    /// `PROJECTOR_OVERRIDES` by projection name: `(key, value)` in the order given (`on_poison`
    /// is 0 for `pause`, 1 for `skip`).
    pub overrides: HashMap<String, Vec<(String, u64)>>,
    /// Wait of a read with `minPosition` when none is requested (at most
    /// [`MAX_READ_AFTER_WRITE_TIMEOUT_MS`]).
    pub read_after_write_timeout: Duration,
    /// Default limits of a guest call, before overrides and deploy settings.
    pub limits: RuntimeLimits,
    /// Events per batch of a blue/green rebuild.
    pub rebuild_batch_size: u32,
    /// Largest component accepted from an upload or the projections directory, in bytes.
    pub max_component_bytes: usize,
    /// Longest a component may take to compile before its deploy is refused.
    pub compile_timeout: Duration,
    /// Most bytes of compiled code all loaded components may take together.
    pub compiled_memory_max_bytes: usize,
    /// Whether compiled components are stored in and loaded from `projection_artifacts`.
    pub artifact_cache: bool,
    /// Limits of every dry run.
    pub dry_run: crate::dry_run::DryRunLimits,
    /// `None`: the directory is read at start-up only.
    pub watch_interval: Option<Duration>,
    /// How often every instance re-reads the registry even without a notification.
    pub registry_resync: Duration,
    /// Limits of the shared engine: the highest memory cap, the stack, fuel metering.
    pub engine: EngineLimits,
    /// What a batch that keeps failing does, before overrides and deploy settings.
    pub on_poison: OnPoison,
    /// Threads that run component code.
    pub guest_threads: usize,
    /// Niceness of the guest threads (0–19).
    pub guest_nice: i32,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        Self {
            dir: None,
            auto_start: true,
            defaults: WorkerConfig::default(),
            overrides: HashMap::new(),
            read_after_write_timeout: Duration::from_millis(DEFAULT_READ_AFTER_WRITE_TIMEOUT_MS),
            limits: RuntimeLimits::default(),
            rebuild_batch_size: DEFAULT_REBUILD_BATCH_SIZE,
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
            compile_timeout: Duration::from_millis(DEFAULT_COMPILE_TIMEOUT_MS),
            compiled_memory_max_bytes: DEFAULT_COMPILED_MEMORY_MAX_MIB << 20,
            artifact_cache: true,
            dry_run: crate::dry_run::DryRunLimits::default(),
            watch_interval: Some(Duration::from_millis(DEFAULT_WATCH_INTERVAL_MS)),
            registry_resync: Duration::from_millis(DEFAULT_REGISTRY_RESYNC_MS),
            engine: EngineLimits::default(),
            on_poison: OnPoison::Pause,
            guest_threads: DEFAULT_GUEST_THREADS as usize,
            guest_nice: DEFAULT_GUEST_NICE,
        }
    }
}

impl ProjectionArgs {
    /// Checks the arguments and resolves them into a [`ProjectionConfig`]: parses
    /// `PROJECTOR_OVERRIDES`, caps the read-after-write wait and converts units.
    pub fn resolve(&self) -> Result<ProjectionConfig, ConfigError> {
        let mut overrides: HashMap<String, Vec<(String, u64)>> = HashMap::new();
        for entry in self
            .projector_overrides
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let bad = || ConfigError::Override(entry.to_owned());
            let (target, value) = entry.split_once('=').ok_or_else(bad)?;
            let (projection, key) = target.rsplit_once('.').ok_or_else(bad)?;
            if !OVERRIDE_KEYS.contains(&key) {
                return Err(ConfigError::UnknownKey(key.to_owned()));
            }
            let value: u64 = match (key, value.trim()) {
                ("on_poison", "pause") => 0,
                ("on_poison", "skip") => 1,
                ("on_poison", _) => return Err(bad()),
                (_, number) => number.parse().map_err(|_| bad())?,
            };
            overrides
                .entry(projection.to_owned())
                .or_default()
                .push((key.to_owned(), value));
        }
        Ok(ProjectionConfig {
            dir: self.projections_dir.clone(),
            auto_start: self.projectors_auto_start,
            defaults: WorkerConfig {
                batch_size: self.projector_batch_size,
                poll_interval: Duration::from_millis(self.projector_poll_interval_ms),
                min_batch_interval: Duration::from_millis(self.projector_min_batch_interval_ms),
                synchronous_commit: self.projector_synchronous_commit,
                error_backoff: Duration::from_millis(self.projector_error_backoff_ms),
                max_retries: self.projector_max_retries,
                lease_retry: Duration::from_millis(self.projector_lease_retry_ms),
                max_backoff: Duration::from_millis(
                    self.projector_max_backoff_ms
                        .max(self.projector_error_backoff_ms),
                ),
            },
            overrides,
            read_after_write_timeout: Duration::from_millis(
                self.read_after_write_timeout_ms
                    .min(MAX_READ_AFTER_WRITE_TIMEOUT_MS),
            ),
            limits: RuntimeLimits {
                memory_bytes: self
                    .projector_memory_limit_mib
                    .min(self.projector_memory_max_mib)
                    .saturating_mul(1 << 20),
                call_timeout: Duration::from_millis(self.projector_call_timeout_ms),
                fuel: (self.projector_fuel > 0).then_some(self.projector_fuel),
                max_mutations: self.projector_max_mutations,
                max_batch_bytes: self.projector_max_batch_bytes,
                log_lines: self.projector_log_lines,
                log_bytes: self.projector_log_bytes,
            },
            engine: EngineLimits {
                max_memory_bytes: self
                    .projector_memory_max_mib
                    .max(self.projector_memory_limit_mib)
                    .saturating_mul(1 << 20),
                max_stack_bytes: usize::try_from(self.projector_max_stack_kib)
                    .unwrap_or(512)
                    .saturating_mul(1 << 10),
                fuel: self.projector_fuel > 0,
            },
            on_poison: self.projector_on_poison,
            guest_threads: usize::try_from(self.projector_guest_threads).unwrap_or(1),
            guest_nice: self.projector_guest_nice,
            rebuild_batch_size: self.projector_rebuild_batch_size,
            max_component_bytes: self.max_component_bytes,
            compile_timeout: Duration::from_millis(self.compile_timeout_ms),
            compiled_memory_max_bytes: self.compiled_memory_max_mib.saturating_mul(1 << 20),
            artifact_cache: self.artifact_cache,
            dry_run: crate::dry_run::DryRunLimits {
                timeout: Duration::from_millis(self.dry_run_timeout_ms),
                max_events: self.dry_run_max_events,
                max_rows: self.dry_run_max_rows,
            },
            watch_interval: (self.projections_watch_ms > 0)
                .then(|| Duration::from_millis(self.projections_watch_ms)),
            registry_resync: Duration::from_millis(self.registry_resync_ms.max(100)),
        })
    }
}

const OVERRIDE_KEYS: &[&str] = &[
    "batch_size",
    "poll_interval_ms",
    "min_batch_interval_ms",
    "error_backoff_ms",
    "max_retries",
    "lease_retry_ms",
    "on_poison",
    "memory_mib",
    "call_timeout_ms",
    "fuel",
    "max_mutations",
    "max_batch_bytes",
    "log_lines",
    "log_bytes",
];

impl ProjectionConfig {
    /// The limits and poison policy of one projection: defaults, then its `PROJECTOR_OVERRIDES`,
    /// then the settings given with its deploy. Memory never exceeds the engine's maximum.
    pub fn policy(&self, projection: &str, settings: &ProjectionSettings) -> Policy {
        let mut limits = self.limits;
        let mut on_poison = self.on_poison;
        let mib = |v: u64| {
            usize::try_from(v)
                .unwrap_or(usize::MAX)
                .saturating_mul(1 << 20)
        };
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        for (key, value) in self.overrides.get(projection).into_iter().flatten() {
            let value = *value;
            match key.as_str() {
                "on_poison" if value == 1 => on_poison = OnPoison::Skip,
                "on_poison" => on_poison = OnPoison::Pause,
                "memory_mib" => limits.memory_bytes = mib(value),
                "call_timeout_ms" => limits.call_timeout = Duration::from_millis(value),
                "fuel" => limits.fuel = (value > 0).then_some(value),
                "max_mutations" => limits.max_mutations = size(value),
                "max_batch_bytes" => limits.max_batch_bytes = size(value),
                "log_lines" => limits.log_lines = u32::try_from(value).unwrap_or(u32::MAX),
                "log_bytes" => limits.log_bytes = size(value),
                _ => {}
            }
        }
        if let Some(v) = settings.on_poison {
            on_poison = v;
        }
        if let Some(v) = settings.memory_mib {
            limits.memory_bytes = v.saturating_mul(1 << 20);
        }
        if let Some(v) = settings.call_timeout_ms {
            limits.call_timeout = Duration::from_millis(v);
        }
        if let Some(v) = settings.fuel {
            limits.fuel = (v > 0).then_some(v);
        }
        if let Some(v) = settings.max_mutations {
            limits.max_mutations = v;
        }
        if let Some(v) = settings.max_batch_bytes {
            limits.max_batch_bytes = v;
        }
        if let Some(v) = settings.log_lines {
            limits.log_lines = v;
        }
        if let Some(v) = settings.log_bytes {
            limits.log_bytes = v;
        }
        limits.memory_bytes = limits.memory_bytes.min(self.engine.max_memory_bytes);
        limits.max_mutations = limits
            .max_mutations
            .min(super::mutation::MAX_MUTATIONS_PER_BATCH);
        Policy { limits, on_poison }
    }

    /// The worker configuration of one projection: defaults plus its overrides.
    pub fn worker(&self, projection: &str) -> WorkerConfig {
        let mut config = self.defaults;
        for (key, value) in self.overrides.get(projection).into_iter().flatten() {
            match key.as_str() {
                "batch_size" => {
                    config.batch_size = u32::try_from(*value)
                        .unwrap_or(MAX_BATCH_SIZE)
                        .clamp(1, MAX_BATCH_SIZE)
                }
                "poll_interval_ms" => config.poll_interval = Duration::from_millis(*value),
                "min_batch_interval_ms" => {
                    config.min_batch_interval =
                        Duration::from_millis((*value).min(MAX_MIN_BATCH_INTERVAL_MS))
                }
                "error_backoff_ms" => config.error_backoff = Duration::from_millis(*value),
                "max_retries" => config.max_retries = u32::try_from(*value).unwrap_or(u32::MAX),
                "lease_retry_ms" => config.lease_retry = Duration::from_millis(*value),
                _ => {}
            }
        }
        config
    }
}

/// Tuning of one projection's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Most outbox rows per batch (a search for poison events may narrow the next one).
    pub batch_size: u32,
    /// How often the worker reads the outbox when no notification arrives.
    pub poll_interval: Duration,
    /// Shortest time between the starts of two batches woken by notifications: under load,
    /// notifications are coalesced into fewer, larger batches (fewer commits per event).
    pub min_batch_interval: Duration,
    /// Whether live batches wait for their WAL flush (`synchronous_commit`); rebuild batches
    /// never do.
    pub synchronous_commit: bool,
    /// Pause after the first failure of a batch (it doubles with each further one).
    pub error_backoff: Duration,
    /// Consecutive failures of a batch after which the worker gives up (status `failed`).
    pub max_retries: u32,
    /// How often a worker without the lease tries to take it.
    pub lease_retry: Duration,
    /// The backoff after a failed batch doubles with every consecutive failure up to this.
    pub max_backoff: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            batch_size: DEFAULT_BATCH_SIZE,
            poll_interval: Duration::from_millis(1000),
            min_batch_interval: Duration::from_millis(DEFAULT_MIN_BATCH_INTERVAL_MS),
            synchronous_commit: false,
            error_backoff: Duration::from_millis(5000),
            max_retries: 3,
            lease_retry: Duration::from_millis(1000),
            max_backoff: Duration::from_millis(DEFAULT_MAX_BACKOFF_MS),
        }
    }
}

impl WorkerConfig {
    /// The pause after `failures` consecutive failures: `error_backoff · 2^(failures-1)`, at most
    /// `max_backoff`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.error_backoff
            .saturating_mul(1_u32 << doublings)
            .min(self.max_backoff.max(self.error_backoff))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProjectionArgs,
    }

    /// The settings `wallex serve` resolves with nothing given (no flag, no environment).
    fn resolved_defaults() -> ProjectionConfig {
        use clap::{CommandFactory, FromArgMatches};
        // The developer's environment must not count: every argument's `env` is dropped.
        let command = Cli::command().mut_args(|arg| arg.env(None));
        let matches = command.get_matches_from(["x"]);
        let cli = Cli::from_arg_matches(&matches).unwrap();
        cli.args.resolve().unwrap()
    }

    #[test]
    fn the_library_defaults_are_the_servers_defaults() {
        // Benches and tests that build a `ProjectionConfig::default()` must run with the limits
        // users get from `wallex serve`: one default per setting.
        assert_eq!(
            format!("{:#?}", ProjectionConfig::default()),
            format!("{:#?}", resolved_defaults())
        );
    }

    #[test]
    fn defaults_and_overrides() {
        let cli = Cli::parse_from([
            "x",
            "--projector-overrides",
            "ledger.batch_size=500, audit.poll_interval_ms=20",
        ]);
        let config = cli.args.resolve().unwrap();
        assert_eq!(config.worker("read-model"), WorkerConfig::default());
        assert_eq!(config.worker("ledger").batch_size, 500);
        assert_eq!(
            config.worker("audit").poll_interval,
            Duration::from_millis(20)
        );
        assert!(config.auto_start);
        let bad = Cli::parse_from(["x", "--projector-overrides", "ledger.nope=1"]);
        assert_eq!(
            bad.args.resolve().unwrap_err(),
            ConfigError::UnknownKey("nope".into())
        );
    }
}
