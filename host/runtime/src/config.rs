//! Configuration of the projection runtime: where components come from, worker tuning (with
//! per-projection overrides) and the read-after-write wait.
//!
//! Why it exists: every limit is a named default here ([`ProjectionOptions::default`] is made of
//! the `DEFAULT_…` constants) and can be changed per deployment: `wallex serve` maps its flags and
//! environment variables onto [`ProjectionOptions`], which [`ProjectionOptions::resolve`] turns
//! into the [`ProjectionConfig`] the runtime runs with. Per-projection overrides
//! (`PROJECTOR_OVERRIDES`) parse into [`ProjectionOverride`]s: worker tuning plus the same
//! [`ProjectionSettings`] a deploy gives.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use wallex_sandbox::engine::{
    EngineLimits, RuntimeLimits, DEFAULT_CALL_TIMEOUT, DEFAULT_LOG_BYTES, DEFAULT_LOG_LINES,
    DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_MEMORY_BYTES, DEFAULT_MAX_MUTATIONS,
    DEFAULT_MAX_STACK_BYTES, DEFAULT_MEMORY_LIMIT_BYTES,
};
use wallex_sandbox::guest_pool::{DEFAULT_GUEST_NICE, DEFAULT_GUEST_THREADS};

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

/// Whether the workers start with the server, by default.
pub const DEFAULT_AUTO_START: bool = true;
/// Whether live batches wait for their WAL flush, by default (rebuild batches never do).
pub const DEFAULT_SYNCHRONOUS_COMMIT: bool = false;
/// Whether compiled components are cached in PostgreSQL, by default.
pub const DEFAULT_ARTIFACT_CACHE: bool = true;
/// Linear-memory cap of a component call, in MiB, by default.
pub const DEFAULT_MEMORY_LIMIT_MIB: usize = DEFAULT_MEMORY_LIMIT_BYTES >> 20;
/// Highest memory cap any projection may be given, in MiB, by default.
pub const DEFAULT_MEMORY_MAX_MIB: usize = DEFAULT_MAX_MEMORY_BYTES >> 20;
/// Wall-clock budget of one component call, in milliseconds, by default.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = DEFAULT_CALL_TIMEOUT.as_millis() as u64;
/// Fuel per component call, by default: 0, no fuel metering.
pub const DEFAULT_FUEL: u64 = 0;
/// WebAssembly stack per call, in KiB, by default.
pub const DEFAULT_MAX_STACK_KIB: u64 = (DEFAULT_MAX_STACK_BYTES >> 10) as u64;
/// Longest backoff between retries of a failing batch, by default.
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 60_000;
/// What a batch that keeps failing does, by default: stop the projection at the event.
pub const DEFAULT_ON_POISON: OnPoison = OnPoison::Pause;
/// Shortest registry resync accepted, in milliseconds (a smaller setting is raised to it).
pub const MIN_REGISTRY_RESYNC_MS: u64 = 100;

/// The projection runtime's settings as configured (by `wallex serve`'s flags and environment),
/// before [`Self::resolve`] caps them and converts units. `Default` is every `DEFAULT_…` value:
/// what a server started with nothing set runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionOptions {
    /// Directory of projection components (`*.wasm`) to load instead of the bundled three, for
    /// deployments that ship their own projections.
    pub projections_dir: Option<PathBuf>,
    /// Start the projection workers with the server (without them reads still work, e.g. on an
    /// instance that only serves the API).
    pub projectors_auto_start: bool,
    /// Events per batch of a live worker (1 to [`MAX_BATCH_SIZE`]).
    pub projector_batch_size: u32,
    /// Fallback poll interval when no notification arrives, in milliseconds (a lost
    /// notification delays a batch at most this long).
    pub projector_poll_interval_ms: u64,
    /// Pause after a failed batch, in milliseconds (it doubles with each further failure).
    pub projector_error_backoff_ms: u64,
    /// Consecutive retries of a failing batch before the worker stops.
    pub projector_max_retries: u32,
    /// How often a process without a projection's lease tries to take it, in milliseconds: how
    /// fast another instance takes over from one that died.
    pub projector_lease_retry_ms: u64,
    /// Under load, a worker starts at most one batch per this many milliseconds: notifications
    /// that arrive sooner are coalesced into the next, larger batch (fewer commits for the same
    /// events). 0 = a batch per notification. An idle worker answers the first write at once.
    pub projector_min_batch_interval_ms: u64,
    /// Commit live batches with `synchronous_commit = on`. Off by default: projection tables are
    /// derived from the durable outbox, so a batch lost in a PostgreSQL crash is applied again.
    pub projector_synchronous_commit: bool,
    /// Per-projection overrides by projection name (see [`parse_overrides`]).
    pub projector_overrides: HashMap<String, ProjectionOverride>,
    /// Default wait of a read with `minPosition`, in milliseconds (capped at
    /// [`MAX_READ_AFTER_WRITE_TIMEOUT_MS`]).
    pub read_after_write_timeout_ms: u64,
    /// Events per batch of a blue/green rebuild (1 to [`MAX_BATCH_SIZE`]; bigger than live
    /// batches: a rebuild is throughput-bound).
    pub projector_rebuild_batch_size: u32,
    /// Largest component accepted (upload or directory), in bytes.
    pub max_component_bytes: usize,
    /// Compile-time limit of a deployed component, in milliseconds.
    pub compile_timeout_ms: u64,
    /// Most memory, in MiB, that the compiled code of all components loaded in this process may
    /// take together; a deploy that would exceed it is refused.
    pub compiled_memory_max_mib: usize,
    /// Store compiled components in PostgreSQL (`projection_artifacts`) and load them from
    /// there instead of compiling again (restarts, other instances, rollbacks).
    pub artifact_cache: bool,
    /// Longest a dry run may take (compile, replay and comparison), in milliseconds.
    pub dry_run_timeout_ms: u64,
    /// Most outbox rows a dry run may read.
    pub dry_run_max_events: u64,
    /// Most rows a dry run's candidate may write into its shadow.
    pub dry_run_max_rows: u64,
    /// Scan interval of the projections directory for new or changed components, in
    /// milliseconds (0: no watch).
    pub projections_watch_ms: u64,
    /// Re-read the registry this often even without a notification, in milliseconds (at least
    /// [`MIN_REGISTRY_RESYNC_MS`]): a missed notification delays a deploy at most this long.
    pub registry_resync_ms: u64,
    /// Linear-memory cap of a component call, in MiB (at most
    /// [`Self::projector_memory_max_mib`]).
    pub projector_memory_limit_mib: usize,
    /// Highest memory cap any projection may be given (per-projection overrides included), MiB.
    pub projector_memory_max_mib: usize,
    /// Wall-clock budget of one component call, in milliseconds.
    pub projector_call_timeout_ms: u64,
    /// Fuel per component call (deterministic budget); 0 turns fuel metering off.
    pub projector_fuel: u64,
    /// WebAssembly stack per call, in KiB (deeper recursion traps).
    pub projector_max_stack_kib: u64,
    /// Most mutations one component call may return.
    pub projector_max_mutations: usize,
    /// Most bytes of the mutations of one component call.
    pub projector_max_batch_bytes: usize,
    /// Most host `log` calls per component call.
    pub projector_log_lines: u32,
    /// Most bytes of host `log` messages per component call.
    pub projector_log_bytes: usize,
    /// What a batch that keeps failing does: [`OnPoison::Pause`] (the projection stops,
    /// `failed`) or [`OnPoison::Skip`] (the poison event is found, dead-lettered, and the rest
    /// applied).
    pub projector_on_poison: OnPoison,
    /// Longest pause between retries of a failing batch, in milliseconds (the backoff doubles up
    /// to it).
    pub projector_max_backoff_ms: u64,
    /// Threads that run component code: at most this many cores go to guests.
    pub projector_guest_threads: u64,
    /// Niceness of those threads (0–19; higher yields CPU to HTTP and PostgreSQL).
    pub projector_guest_nice: i32,
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        Self {
            projections_dir: None,
            projectors_auto_start: DEFAULT_AUTO_START,
            projector_batch_size: DEFAULT_BATCH_SIZE,
            projector_poll_interval_ms: DEFAULT_POLL_INTERVAL_MS,
            projector_error_backoff_ms: DEFAULT_ERROR_BACKOFF_MS,
            projector_max_retries: DEFAULT_MAX_RETRIES,
            projector_lease_retry_ms: DEFAULT_LEASE_RETRY_MS,
            projector_min_batch_interval_ms: DEFAULT_MIN_BATCH_INTERVAL_MS,
            projector_synchronous_commit: DEFAULT_SYNCHRONOUS_COMMIT,
            projector_overrides: HashMap::new(),
            read_after_write_timeout_ms: DEFAULT_READ_AFTER_WRITE_TIMEOUT_MS,
            projector_rebuild_batch_size: DEFAULT_REBUILD_BATCH_SIZE,
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
            compile_timeout_ms: DEFAULT_COMPILE_TIMEOUT_MS,
            compiled_memory_max_mib: DEFAULT_COMPILED_MEMORY_MAX_MIB,
            artifact_cache: DEFAULT_ARTIFACT_CACHE,
            dry_run_timeout_ms: DEFAULT_DRY_RUN_TIMEOUT_MS,
            dry_run_max_events: DEFAULT_DRY_RUN_MAX_EVENTS,
            dry_run_max_rows: DEFAULT_DRY_RUN_MAX_ROWS,
            projections_watch_ms: DEFAULT_WATCH_INTERVAL_MS,
            registry_resync_ms: DEFAULT_REGISTRY_RESYNC_MS,
            projector_memory_limit_mib: DEFAULT_MEMORY_LIMIT_MIB,
            projector_memory_max_mib: DEFAULT_MEMORY_MAX_MIB,
            projector_call_timeout_ms: DEFAULT_CALL_TIMEOUT_MS,
            projector_fuel: DEFAULT_FUEL,
            projector_max_stack_kib: DEFAULT_MAX_STACK_KIB,
            projector_max_mutations: DEFAULT_MAX_MUTATIONS,
            projector_max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            projector_log_lines: DEFAULT_LOG_LINES,
            projector_log_bytes: DEFAULT_LOG_BYTES,
            projector_on_poison: DEFAULT_ON_POISON,
            projector_max_backoff_ms: DEFAULT_MAX_BACKOFF_MS,
            projector_guest_threads: DEFAULT_GUEST_THREADS,
            projector_guest_nice: DEFAULT_GUEST_NICE,
        }
    }
}

/// What happens to an event a projection cannot process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnPoison {
    /// Retry with backoff, then stop the projection (`failed`) at the event.
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

/// Why `PROJECTOR_OVERRIDES` cannot be parsed ([`parse_overrides`]).
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
    /// `PROJECTOR_OVERRIDES` by projection name (see [`parse_overrides`]).
    pub overrides: HashMap<String, ProjectionOverride>,
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
    pub dry_run: DryRunLimits,
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
    /// What `wallex serve` runs with when nothing is set: [`ProjectionOptions::default`],
    /// resolved.
    fn default() -> Self {
        ProjectionOptions::default().resolve()
    }
}

impl ProjectionOptions {
    /// Resolves the settings into a [`ProjectionConfig`]: caps the read-after-write wait, the
    /// memory limit (at most the engine's maximum) and the registry resync, and converts units.
    pub fn resolve(&self) -> ProjectionConfig {
        ProjectionConfig {
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
            overrides: self.projector_overrides.clone(),
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
            dry_run: DryRunLimits {
                timeout: Duration::from_millis(self.dry_run_timeout_ms),
                max_events: self.dry_run_max_events,
                max_rows: self.dry_run_max_rows,
            },
            watch_interval: (self.projections_watch_ms > 0)
                .then(|| Duration::from_millis(self.projections_watch_ms)),
            registry_resync: Duration::from_millis(
                self.registry_resync_ms.max(MIN_REGISTRY_RESYNC_MS),
            ),
        }
    }
}

/// One projection's `PROJECTOR_OVERRIDES`: its worker tuning, and its limits and poison policy as
/// the [`ProjectionSettings`] a deploy would give them (a deploy's own settings apply after
/// these). Unset keys keep the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectionOverride {
    /// Tuning of the projection's worker.
    pub worker: WorkerOverride,
    /// Limits of its guest calls and its poison policy.
    pub settings: ProjectionSettings,
}

/// Worker tuning of one projection, by key of `PROJECTOR_OVERRIDES`; `None` keeps the default.
/// Values are already within their bounds (a batch size of 1 to [`MAX_BATCH_SIZE`], a minimum
/// batch interval of at most [`MAX_MIN_BATCH_INTERVAL_MS`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerOverride {
    /// `batch_size`.
    pub batch_size: Option<u32>,
    /// `poll_interval_ms`.
    pub poll_interval: Option<Duration>,
    /// `min_batch_interval_ms`.
    pub min_batch_interval: Option<Duration>,
    /// `error_backoff_ms`.
    pub error_backoff: Option<Duration>,
    /// `max_retries`.
    pub max_retries: Option<u32>,
    /// `lease_retry_ms`.
    pub lease_retry: Option<Duration>,
}

impl WorkerOverride {
    /// `config` with the keys that are set replaced.
    fn apply(&self, mut config: WorkerConfig) -> WorkerConfig {
        if let Some(v) = self.batch_size {
            config.batch_size = v;
        }
        if let Some(v) = self.poll_interval {
            config.poll_interval = v;
        }
        if let Some(v) = self.min_batch_interval {
            config.min_batch_interval = v;
        }
        if let Some(v) = self.error_backoff {
            config.error_backoff = v;
        }
        if let Some(v) = self.max_retries {
            config.max_retries = v;
        }
        if let Some(v) = self.lease_retry {
            config.lease_retry = v;
        }
        config
    }
}

/// Parses `PROJECTOR_OVERRIDES`: comma-separated `<projection>.<key>=<value>` entries (the key
/// is what follows the last `.`), e.g. `ledger.batch_size=500, audit.on_poison=skip`. Keys:
/// `batch_size`, `poll_interval_ms`, `min_batch_interval_ms`, `error_backoff_ms`, `max_retries`,
/// `lease_retry_ms` (the worker), `on_poison` (`pause` or `skip`), `memory_mib`,
/// `call_timeout_ms`, `fuel`, `max_mutations`, `max_batch_bytes`, `log_lines`, `log_bytes` (as in
/// [`ProjectionSettings`]). Every other value is a non-negative integer; one out of its key's range
/// is brought into it. A key given twice for a projection: the last one counts.
pub fn parse_overrides(text: &str) -> Result<HashMap<String, ProjectionOverride>, ConfigError> {
    let mut overrides: HashMap<String, ProjectionOverride> = HashMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || ConfigError::Override(entry.to_owned());
        let (target, value) = entry.split_once('=').ok_or_else(bad)?;
        let (projection, key) = target.rsplit_once('.').ok_or_else(bad)?;
        let value = value.trim();
        let number = || value.parse::<u64>().map_err(|_| bad());
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        let millis = |v: u64| Some(Duration::from_millis(v));
        let current = overrides.entry(projection.to_owned()).or_default();
        let (worker, settings) = (&mut current.worker, &mut current.settings);
        match key {
            "batch_size" => {
                worker.batch_size = Some(
                    u32::try_from(number()?)
                        .unwrap_or(MAX_BATCH_SIZE)
                        .clamp(1, MAX_BATCH_SIZE),
                )
            }
            "poll_interval_ms" => worker.poll_interval = millis(number()?),
            "min_batch_interval_ms" => {
                worker.min_batch_interval = millis(number()?.min(MAX_MIN_BATCH_INTERVAL_MS))
            }
            "error_backoff_ms" => worker.error_backoff = millis(number()?),
            "max_retries" => {
                worker.max_retries = Some(u32::try_from(number()?).unwrap_or(u32::MAX))
            }
            "lease_retry_ms" => worker.lease_retry = millis(number()?),
            "on_poison" => {
                settings.on_poison = Some(match value {
                    "pause" => OnPoison::Pause,
                    "skip" => OnPoison::Skip,
                    _ => return Err(bad()),
                })
            }
            "memory_mib" => settings.memory_mib = Some(size(number()?)),
            "call_timeout_ms" => settings.call_timeout_ms = Some(number()?),
            "fuel" => settings.fuel = Some(number()?),
            "max_mutations" => settings.max_mutations = Some(size(number()?)),
            "max_batch_bytes" => settings.max_batch_bytes = Some(size(number()?)),
            "log_lines" => settings.log_lines = Some(u32::try_from(number()?).unwrap_or(u32::MAX)),
            "log_bytes" => settings.log_bytes = Some(size(number()?)),
            _ => return Err(ConfigError::UnknownKey(key.to_owned())),
        }
    }
    Ok(overrides)
}

impl ProjectionConfig {
    /// The limits and poison policy of one projection: defaults, then its `PROJECTOR_OVERRIDES`,
    /// then the settings given with its deploy. Memory never exceeds the engine's maximum.
    pub fn policy(&self, projection: &str, settings: &ProjectionSettings) -> Policy {
        let mut policy = Policy {
            limits: self.limits,
            on_poison: self.on_poison,
        };
        if let Some(overridden) = self.overrides.get(projection) {
            policy.apply(&overridden.settings);
        }
        policy.apply(settings);
        policy.limits.memory_bytes = policy.limits.memory_bytes.min(self.engine.max_memory_bytes);
        policy.limits.max_mutations = policy
            .limits
            .max_mutations
            .min(super::mutation::MAX_MUTATIONS_PER_BATCH);
        policy
    }

    /// The worker configuration of one projection: defaults plus its overrides.
    pub fn worker(&self, projection: &str) -> WorkerConfig {
        match self.overrides.get(projection) {
            Some(overridden) => overridden.worker.apply(self.defaults),
            None => self.defaults,
        }
    }
}

impl Policy {
    /// The keys that `settings` set replace this policy's.
    fn apply(&mut self, settings: &ProjectionSettings) {
        let limits = &mut self.limits;
        if let Some(v) = settings.on_poison {
            self.on_poison = v;
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
            poll_interval: Duration::from_millis(DEFAULT_POLL_INTERVAL_MS),
            min_batch_interval: Duration::from_millis(DEFAULT_MIN_BATCH_INTERVAL_MS),
            synchronous_commit: DEFAULT_SYNCHRONOUS_COMMIT,
            error_backoff: Duration::from_millis(DEFAULT_ERROR_BACKOFF_MS),
            max_retries: DEFAULT_MAX_RETRIES,
            lease_retry: Duration::from_millis(DEFAULT_LEASE_RETRY_MS),
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

/// Limits of every dry run (see `wallex-control`'s `dry_run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DryRunLimits {
    /// Longest a run may take, compile included.
    pub timeout: Duration,
    /// Most outbox rows a run may read.
    pub max_events: u64,
    /// Most rows a run's statements may write.
    pub max_rows: u64,
}

/// Default of [`DryRunLimits::timeout`].
pub const DEFAULT_DRY_RUN_TIMEOUT_MS: u64 = 600_000;
/// Default of [`DryRunLimits::max_events`].
pub const DEFAULT_DRY_RUN_MAX_EVENTS: u64 = 20_000_000;
/// Default of [`DryRunLimits::max_rows`].
pub const DEFAULT_DRY_RUN_MAX_ROWS: u64 = 50_000_000;

impl Default for DryRunLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(DEFAULT_DRY_RUN_TIMEOUT_MS),
            max_events: DEFAULT_DRY_RUN_MAX_EVENTS,
            max_rows: DEFAULT_DRY_RUN_MAX_ROWS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`ProjectionOptions::default`] with `PROJECTOR_OVERRIDES` set to `overrides`, resolved.
    fn with_overrides(overrides: &str) -> Result<ProjectionConfig, ConfigError> {
        Ok(ProjectionOptions {
            projector_overrides: parse_overrides(overrides)?,
            ..ProjectionOptions::default()
        }
        .resolve())
    }

    #[test]
    fn the_parts_default_to_the_same_values_as_the_whole() {
        // `ProjectionConfig::default()` is `ProjectionOptions::default()` resolved (what serve
        // runs with; the binary's tests check its flags against the options); the defaults of its
        // parts must not say otherwise.
        let config = ProjectionConfig::default();
        assert_eq!(config.defaults, WorkerConfig::default());
        assert_eq!(config.limits, RuntimeLimits::default());
        assert_eq!(config.engine, EngineLimits::default());
        assert_eq!(
            format!("{:?}", config.dry_run),
            format!("{:?}", DryRunLimits::default())
        );
        assert_eq!(config.on_poison, DEFAULT_ON_POISON);
        assert!(config.overrides.is_empty());
        assert_eq!(parse_overrides("").unwrap(), HashMap::new());
    }

    #[test]
    fn defaults_and_overrides() {
        let config = with_overrides("ledger.batch_size=500, audit.poll_interval_ms=20").unwrap();
        assert_eq!(config.worker("read-model"), WorkerConfig::default());
        assert_eq!(config.worker("ledger").batch_size, 500);
        assert_eq!(
            config.worker("audit").poll_interval,
            Duration::from_millis(20)
        );
        assert!(config.auto_start);
        assert_eq!(
            with_overrides("ledger.nope=1").unwrap_err(),
            ConfigError::UnknownKey("nope".into())
        );
    }

    #[test]
    fn overrides_parse_into_typed_settings() {
        let overrides = parse_overrides(
            "my.app.on_poison=skip,my.app.memory_mib=32, my.app.fuel=0,my.app.batch_size=0,\
             my.app.min_batch_interval_ms=5000,my.app.log_lines=99999999999,my.app.fuel=7",
        )
        .unwrap();
        // The key is what follows the last dot; the last value of a key counts.
        let overridden = &overrides["my.app"];
        assert_eq!(
            overridden.settings,
            ProjectionSettings {
                on_poison: Some(OnPoison::Skip),
                memory_mib: Some(32),
                fuel: Some(7),
                log_lines: Some(u32::MAX),
                ..ProjectionSettings::default()
            }
        );
        assert_eq!(overridden.worker.batch_size, Some(1));
        assert_eq!(
            overridden.worker.min_batch_interval,
            Some(Duration::from_millis(MAX_MIN_BATCH_INTERVAL_MS))
        );
        let config =
            with_overrides("x.on_poison=skip,x.memory_mib=100000,x.call_timeout_ms=9").unwrap();
        let policy = config.policy("x", &ProjectionSettings::default());
        assert_eq!(policy.on_poison, OnPoison::Skip);
        assert_eq!(policy.limits.memory_bytes, config.engine.max_memory_bytes);
        assert_eq!(policy.limits.call_timeout, Duration::from_millis(9));
        // A deploy's settings come after the overrides.
        let deployed = ProjectionSettings {
            on_poison: Some(OnPoison::Pause),
            ..ProjectionSettings::default()
        };
        let policy = config.policy("x", &deployed);
        assert_eq!(policy.on_poison, OnPoison::Pause);
        assert_eq!(policy.limits.call_timeout, Duration::from_millis(9));
        assert_eq!(
            config.policy("y", &ProjectionSettings::default()).limits,
            config.limits
        );
    }

    #[test]
    fn malformed_overrides_name_their_entry() {
        for entry in [
            "ledger.batch_size",
            "batch_size=5",
            "ledger.batch_size=-1",
            "ledger.batch_size=ten",
            "ledger.on_poison=Skip",
            "ledger.on_poison=1",
        ] {
            assert_eq!(
                parse_overrides(&format!("a.fuel=1, {entry} ,b.fuel=2")).unwrap_err(),
                ConfigError::Override(entry.to_owned()),
                "{entry}"
            );
        }
        assert_eq!(
            parse_overrides("ledger.on_poisson=skip").unwrap_err(),
            ConfigError::UnknownKey("on_poisson".into())
        );
    }
}
