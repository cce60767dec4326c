//! `wallex serve`'s projection-runtime flags → [`ProjectionOptions`].

use std::path::PathBuf;

use clap::{ArgAction, Args, ValueEnum};
use wallex_runtime::config::{self, ConfigError, OnPoison, ProjectionOptions};
use wallex_sandbox::{engine, guest_pool};

/// Command-line / environment settings of the projection runtime.
#[derive(Debug, Clone, Args)]
pub struct ProjectionArgs {
    /// Directory of projection components (`*.wasm`) to load instead of the bundled three.
    #[arg(long, env = "WALLEX_PROJECTIONS_DIR")]
    pub projections_dir: Option<PathBuf>,
    /// Start the projection workers with the server.
    #[arg(long, env = "PROJECTORS_AUTO_START", default_value_t = config::DEFAULT_AUTO_START,
          action = ArgAction::Set)]
    pub projectors_auto_start: bool,
    /// Events per batch.
    #[arg(long, env = "PROJECTOR_BATCH_SIZE", default_value_t = config::DEFAULT_BATCH_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=config::MAX_BATCH_SIZE as i64))]
    pub projector_batch_size: u32,
    /// Fallback poll interval when no notification arrives.
    #[arg(long, env = "PROJECTOR_POLL_INTERVAL_MS", default_value_t = config::DEFAULT_POLL_INTERVAL_MS)]
    pub projector_poll_interval_ms: u64,
    /// Pause after a failed batch.
    #[arg(long, env = "PROJECTOR_ERROR_BACKOFF_MS", default_value_t = config::DEFAULT_ERROR_BACKOFF_MS)]
    pub projector_error_backoff_ms: u64,
    /// Consecutive retries of a failing batch before the worker stops.
    #[arg(long, env = "PROJECTOR_MAX_RETRIES", default_value_t = config::DEFAULT_MAX_RETRIES)]
    pub projector_max_retries: u32,
    /// How often a process without a projection's lease tries to take it.
    #[arg(long, env = "PROJECTOR_LEASE_RETRY_MS", default_value_t = config::DEFAULT_LEASE_RETRY_MS)]
    pub projector_lease_retry_ms: u64,
    /// Under load, a worker starts at most one batch per this many milliseconds: notifications
    /// that arrive sooner are coalesced into the next, larger batch (fewer commits for the same
    /// events). 0 = a batch per notification. An idle worker answers the first write at once.
    #[arg(long, env = "PROJECTOR_MIN_BATCH_INTERVAL_MS", default_value_t = config::DEFAULT_MIN_BATCH_INTERVAL_MS,
          value_parser = clap::value_parser!(u64).range(0..=config::MAX_MIN_BATCH_INTERVAL_MS))]
    pub projector_min_batch_interval_ms: u64,
    /// Commit live batches with `synchronous_commit = on`. Off by default: projection tables are
    /// derived from the durable outbox, so a batch lost in a PostgreSQL crash is applied again
    /// (README.md, "Read-after-write", has the exact guarantee).
    #[arg(long, env = "PROJECTOR_SYNCHRONOUS_COMMIT",
          default_value_t = config::DEFAULT_SYNCHRONOUS_COMMIT, action = ArgAction::Set)]
    pub projector_synchronous_commit: bool,
    /// Per-projection overrides, e.g. `ledger.batch_size=500,audit.poll_interval_ms=200`
    /// (keys: batch_size, poll_interval_ms, min_batch_interval_ms, error_backoff_ms, max_retries,
    /// lease_retry_ms).
    #[arg(long, env = "PROJECTOR_OVERRIDES", default_value = "")]
    pub projector_overrides: String,
    /// Default wait of a read with `minPosition` (capped at 30 s).
    #[arg(long, env = "READ_AFTER_WRITE_TIMEOUT_MS", default_value_t = config::DEFAULT_READ_AFTER_WRITE_TIMEOUT_MS)]
    pub read_after_write_timeout_ms: u64,
    /// Events per batch of a blue/green rebuild.
    #[arg(long, env = "PROJECTOR_REBUILD_BATCH_SIZE", default_value_t = config::DEFAULT_REBUILD_BATCH_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=config::MAX_BATCH_SIZE as i64))]
    pub projector_rebuild_batch_size: u32,
    /// Largest component accepted (upload or directory), in bytes.
    #[arg(long, env = "WALLEX_MAX_COMPONENT_BYTES", default_value_t = config::DEFAULT_MAX_COMPONENT_BYTES)]
    pub max_component_bytes: usize,
    /// Compile-time limit of a deployed component.
    #[arg(long, env = "WALLEX_COMPILE_TIMEOUT_MS", default_value_t = config::DEFAULT_COMPILE_TIMEOUT_MS)]
    pub compile_timeout_ms: u64,
    /// Most memory, in MiB, that the compiled code of all components loaded in this process may
    /// take together; a deploy that would exceed it is refused.
    #[arg(long, env = "WALLEX_COMPILED_MEMORY_MAX_MIB", default_value_t = config::DEFAULT_COMPILED_MEMORY_MAX_MIB)]
    pub compiled_memory_max_mib: usize,
    /// Store compiled components in PostgreSQL (`projection_artifacts`) and load them from
    /// there instead of compiling again (restarts, other instances, rollbacks).
    #[arg(long, env = "WALLEX_ARTIFACT_CACHE", default_value_t = config::DEFAULT_ARTIFACT_CACHE,
          action = ArgAction::Set)]
    pub artifact_cache: bool,
    /// Longest a dry run may take (compile, replay and comparison).
    #[arg(long, env = "WALLEX_DRY_RUN_TIMEOUT_MS", default_value_t = config::DEFAULT_DRY_RUN_TIMEOUT_MS)]
    pub dry_run_timeout_ms: u64,
    /// Most outbox rows a dry run may read.
    #[arg(long, env = "WALLEX_DRY_RUN_MAX_EVENTS", default_value_t = config::DEFAULT_DRY_RUN_MAX_EVENTS)]
    pub dry_run_max_events: u64,
    /// Most rows a dry run's candidate may write into its shadow.
    #[arg(long, env = "WALLEX_DRY_RUN_MAX_ROWS", default_value_t = config::DEFAULT_DRY_RUN_MAX_ROWS)]
    pub dry_run_max_rows: u64,
    /// Scan interval of `WALLEX_PROJECTIONS_DIR` for new or changed components (0: no watch).
    #[arg(long, env = "WALLEX_PROJECTIONS_WATCH_MS", default_value_t = config::DEFAULT_WATCH_INTERVAL_MS)]
    pub projections_watch_ms: u64,
    /// Re-read the registry this often even without a notification.
    #[arg(long, env = "REGISTRY_RESYNC_MS", default_value_t = config::DEFAULT_REGISTRY_RESYNC_MS)]
    pub registry_resync_ms: u64,
    /// Linear-memory cap of a component call, in MiB.
    #[arg(long, env = "PROJECTOR_MEMORY_LIMIT_MIB",
          default_value_t = config::DEFAULT_MEMORY_LIMIT_MIB)]
    pub projector_memory_limit_mib: usize,
    /// Highest memory cap any projection may be given (per-projection overrides included), MiB.
    #[arg(long, env = "PROJECTOR_MEMORY_MAX_MIB",
          default_value_t = config::DEFAULT_MEMORY_MAX_MIB)]
    pub projector_memory_max_mib: usize,
    /// Wall-clock budget of one component call.
    #[arg(long, env = "PROJECTOR_CALL_TIMEOUT_MS", default_value_t = config::DEFAULT_CALL_TIMEOUT_MS)]
    pub projector_call_timeout_ms: u64,
    /// Fuel per component call (deterministic budget); 0 turns fuel metering off.
    #[arg(long, env = "PROJECTOR_FUEL", default_value_t = config::DEFAULT_FUEL)]
    pub projector_fuel: u64,
    /// WebAssembly stack per call, in KiB (deeper recursion traps).
    #[arg(long, env = "PROJECTOR_MAX_STACK_KIB", default_value_t = config::DEFAULT_MAX_STACK_KIB,
          value_parser = clap::value_parser!(u64).range(64..=8192))]
    pub projector_max_stack_kib: u64,
    /// Most mutations one component call may return.
    #[arg(long, env = "PROJECTOR_MAX_MUTATIONS", default_value_t = engine::DEFAULT_MAX_MUTATIONS)]
    pub projector_max_mutations: usize,
    /// Most bytes of the mutations of one component call.
    #[arg(long, env = "PROJECTOR_MAX_BATCH_BYTES", default_value_t = engine::DEFAULT_MAX_BATCH_BYTES)]
    pub projector_max_batch_bytes: usize,
    /// Most host `log` calls per component call.
    #[arg(long, env = "PROJECTOR_LOG_LINES", default_value_t = engine::DEFAULT_LOG_LINES)]
    pub projector_log_lines: u32,
    /// Most bytes of host `log` messages per component call.
    #[arg(long, env = "PROJECTOR_LOG_BYTES", default_value_t = engine::DEFAULT_LOG_BYTES)]
    pub projector_log_bytes: usize,
    /// What a batch that keeps failing does: `pause` (the projection stops, `failed`) or `skip`
    /// (the poison event is found, dead-lettered, and the rest applied).
    #[arg(long, env = "PROJECTOR_ON_POISON", value_enum,
          default_value_t = OnPoisonArg::from(config::DEFAULT_ON_POISON))]
    pub projector_on_poison: OnPoisonArg,
    /// Longest pause between retries of a failing batch (the backoff doubles up to it).
    #[arg(long, env = "PROJECTOR_MAX_BACKOFF_MS", default_value_t = config::DEFAULT_MAX_BACKOFF_MS)]
    pub projector_max_backoff_ms: u64,
    /// Threads that run component code.
    #[arg(long, env = "PROJECTOR_GUEST_THREADS", default_value_t = guest_pool::DEFAULT_GUEST_THREADS,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub projector_guest_threads: u64,
    /// Niceness of those threads (0–19; higher yields CPU to HTTP and PostgreSQL).
    #[arg(long, env = "PROJECTOR_GUEST_NICE", default_value_t = guest_pool::DEFAULT_GUEST_NICE,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub projector_guest_nice: i32,
}

/// What happens to an event a projection cannot process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnPoisonArg {
    /// Retry with backoff, then stop the projection (`failed`) at the event.
    Pause,
    /// Find the event by searching the batch, record it as a dead letter and carry on.
    Skip,
}

impl From<OnPoison> for OnPoisonArg {
    fn from(policy: OnPoison) -> Self {
        match policy {
            OnPoison::Pause => Self::Pause,
            OnPoison::Skip => Self::Skip,
        }
    }
}

impl From<OnPoisonArg> for OnPoison {
    fn from(policy: OnPoisonArg) -> Self {
        match policy {
            OnPoisonArg::Pause => Self::Pause,
            OnPoisonArg::Skip => Self::Skip,
        }
    }
}

impl ProjectionArgs {
    /// The library's settings; fails on a malformed `PROJECTOR_OVERRIDES`.
    pub fn settings(&self) -> Result<ProjectionOptions, ConfigError> {
        Ok(ProjectionOptions {
            projections_dir: self.projections_dir.clone(),
            projectors_auto_start: self.projectors_auto_start,
            projector_batch_size: self.projector_batch_size,
            projector_poll_interval_ms: self.projector_poll_interval_ms,
            projector_error_backoff_ms: self.projector_error_backoff_ms,
            projector_max_retries: self.projector_max_retries,
            projector_lease_retry_ms: self.projector_lease_retry_ms,
            projector_min_batch_interval_ms: self.projector_min_batch_interval_ms,
            projector_synchronous_commit: self.projector_synchronous_commit,
            projector_overrides: config::parse_overrides(&self.projector_overrides)?,
            read_after_write_timeout_ms: self.read_after_write_timeout_ms,
            projector_rebuild_batch_size: self.projector_rebuild_batch_size,
            max_component_bytes: self.max_component_bytes,
            compile_timeout_ms: self.compile_timeout_ms,
            compiled_memory_max_mib: self.compiled_memory_max_mib,
            artifact_cache: self.artifact_cache,
            dry_run_timeout_ms: self.dry_run_timeout_ms,
            dry_run_max_events: self.dry_run_max_events,
            dry_run_max_rows: self.dry_run_max_rows,
            projections_watch_ms: self.projections_watch_ms,
            registry_resync_ms: self.registry_resync_ms,
            projector_memory_limit_mib: self.projector_memory_limit_mib,
            projector_memory_max_mib: self.projector_memory_max_mib,
            projector_call_timeout_ms: self.projector_call_timeout_ms,
            projector_fuel: self.projector_fuel,
            projector_max_stack_kib: self.projector_max_stack_kib,
            projector_max_mutations: self.projector_max_mutations,
            projector_max_batch_bytes: self.projector_max_batch_bytes,
            projector_log_lines: self.projector_log_lines,
            projector_log_bytes: self.projector_log_bytes,
            projector_on_poison: self.projector_on_poison.into(),
            projector_max_backoff_ms: self.projector_max_backoff_ms,
            projector_guest_threads: self.projector_guest_threads,
            projector_guest_nice: self.projector_guest_nice,
        })
    }
}
