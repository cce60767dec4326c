//! `wallex serve`'s write-path flags → [`WritePathConfig`].

use clap::Args;
use wallex_core::write_path::{self, WritePathConfig};

/// How many transactions write at once and how many requests one of them may carry.
#[derive(Debug, Clone, Args)]
pub struct WritePathArgs {
    /// Transactions that may write wallets at the same time (each holds a pooled connection while
    /// it runs). Requests that arrive while all of them are busy wait and share the next one.
    #[arg(long, env = "WRITE_COMMITTERS", default_value_t = write_path::DEFAULT_COMMITTERS,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub write_committers: u32,

    /// Most create requests one transaction carries.
    #[arg(long, env = "WRITE_BATCH_MAX", default_value_t = write_path::DEFAULT_BATCH_MAX,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub write_batch_max: u32,
}

impl WritePathArgs {
    /// The library's settings.
    pub fn settings(&self) -> WritePathConfig {
        WritePathConfig {
            write_committers: self.write_committers,
            write_batch_max: self.write_batch_max,
        }
    }
}
