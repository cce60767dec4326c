//! `wallex serve`'s Redis flags → [`RedisConfig`].

use clap::Args;
use wallex_core::redis_lock_cache::{self, RedisConfig};

/// Where Redis is and how long the write path waits for it.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis for the wallet lock and the replay cache (`redis://host:port/db`); unset (and no
    /// `REDIS_HOST`): no Redis.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// The reference design's way to name Redis: its host (used when `REDIS_URL` is unset).
    #[arg(long, env = "REDIS_HOST")]
    pub redis_host: Option<String>,

    /// Redis port, with `REDIS_HOST`.
    #[arg(long, env = "REDIS_PORT", default_value_t = redis_lock_cache::DEFAULT_PORT)]
    pub redis_port: u16,

    /// Upper bound on one Redis command, in milliseconds; a slower answer counts as Redis down.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = redis_lock_cache::DEFAULT_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub redis_timeout_ms: u64,

    /// How long a wallet lock lives unless released, in milliseconds.
    #[arg(long, env = "REDIS_LOCK_TTL_MS", default_value_t = redis_lock_cache::DEFAULT_LOCK_TTL_MS,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub redis_lock_ttl_ms: u64,

    /// How long a create waits for another request's lock on the same wallet before going on
    /// without it, in milliseconds.
    #[arg(long, env = "REDIS_LOCK_WAIT_MS", default_value_t = redis_lock_cache::DEFAULT_LOCK_WAIT_MS,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub redis_lock_wait_ms: u64,
}

impl RedisArgs {
    /// The library's settings.
    pub fn settings(&self) -> RedisConfig {
        RedisConfig {
            redis_url: self.redis_url.clone(),
            redis_host: self.redis_host.clone(),
            redis_port: self.redis_port,
            redis_timeout_ms: self.redis_timeout_ms,
            redis_lock_ttl_ms: self.redis_lock_ttl_ms,
            redis_lock_wait_ms: self.redis_lock_wait_ms,
        }
    }
}
