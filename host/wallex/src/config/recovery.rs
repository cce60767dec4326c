//! `wallex serve`'s recovery flags → [`RecoveryConfig`].

use clap::Args;
use wallex_control::recovery::{self, RecoveryConfig};

/// When and how the recovery service runs.
#[derive(Debug, Clone, Copy, Args)]
pub struct RecoveryArgs {
    /// Seconds between two rounds of stall detection (the reference design's 5 minutes).
    #[arg(long, env = "RECOVERY_INTERVAL_SECS", default_value_t = recovery::DEFAULT_INTERVAL_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub recovery_interval_secs: u64,

    /// A running projection whose checkpoint has not moved for this many seconds while older
    /// events wait after it is stalled: its worker is restarted from its checkpoint.
    #[arg(long, env = "RECOVERY_STALL_SECS", default_value_t = recovery::DEFAULT_STALL_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub recovery_stall_secs: u64,

    /// Wallet ids per transaction of the read-model check.
    #[arg(long, env = "RECOVERY_CHECK_CHUNK", default_value_t = recovery::DEFAULT_CHECK_CHUNK,
          value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub recovery_check_chunk: i64,

    /// The read-model check does not compare wallets written less than this many seconds before
    /// the read model's oldest unapplied event (or before the check, when it is caught up): a
    /// write transaction that began earlier may still commit while the check runs. Longer than
    /// any write transaction; they are counted as `inFlight`.
    #[arg(long, env = "RECOVERY_CHECK_MARGIN_SECS",
          default_value_t = recovery::DEFAULT_CHECK_MARGIN_SECS,
          value_parser = clap::value_parser!(u64).range(0..=3_600))]
    pub recovery_check_margin_secs: u64,

    /// Seconds between scheduled drift checks of each running projection (a full replay of
    /// the log each): 0 runs them only on demand.
    #[arg(long, env = "RECOVERY_DRIFT_INTERVAL_SECS",
          default_value_t = recovery::DEFAULT_DRIFT_INTERVAL_SECS,
          value_parser = clap::value_parser!(u64).range(0..=31_536_000))]
    pub recovery_drift_interval_secs: u64,
}

impl RecoveryArgs {
    /// The library's settings.
    pub fn settings(&self) -> RecoveryConfig {
        RecoveryConfig {
            recovery_interval_secs: self.recovery_interval_secs,
            recovery_stall_secs: self.recovery_stall_secs,
            recovery_check_chunk: self.recovery_check_chunk,
            recovery_check_margin_secs: self.recovery_check_margin_secs,
            recovery_drift_interval_secs: self.recovery_drift_interval_secs,
        }
    }
}
