//! `wallex serve`'s idempotency flags → [`IdempotencyConfig`].

use clap::{ArgAction, Args};
use wallex_core::idempotency::{self, IdempotencyConfig};

/// Idempotency-key handling.
#[derive(Debug, Clone, Args)]
pub struct IdempotencyArgs {
    /// How long a completed request's response is kept for replay, in hours.
    #[arg(long, env = "IDEMPOTENCY_TTL_HOURS", default_value_t = idempotency::DEFAULT_TTL_HOURS,
          value_parser = clap::value_parser!(u32).range(1..=8760))]
    pub idempotency_ttl_hours: u32,

    /// Reject writes that carry no `Idempotency-Key` header (400).
    #[arg(long, env = "IDEMPOTENCY_KEY_REQUIRED", default_value_t = idempotency::DEFAULT_KEY_REQUIRED,
          action = ArgAction::Set)]
    pub idempotency_key_required: bool,

    /// How often expired keys are deleted, in seconds.
    #[arg(long, env = "IDEMPOTENCY_CLEANUP_INTERVAL_SECS",
          default_value_t = idempotency::DEFAULT_CLEANUP_INTERVAL_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idempotency_cleanup_interval_secs: u64,

    /// At most this many expired keys are deleted per statement.
    #[arg(long, env = "IDEMPOTENCY_CLEANUP_BATCH_SIZE",
          default_value_t = idempotency::DEFAULT_CLEANUP_BATCH_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub idempotency_cleanup_batch_size: u32,
}

impl IdempotencyArgs {
    /// The library's settings.
    pub fn settings(&self) -> IdempotencyConfig {
        IdempotencyConfig {
            idempotency_ttl_hours: self.idempotency_ttl_hours,
            idempotency_key_required: self.idempotency_key_required,
            idempotency_cleanup_interval_secs: self.idempotency_cleanup_interval_secs,
            idempotency_cleanup_batch_size: self.idempotency_cleanup_batch_size,
        }
    }
}
