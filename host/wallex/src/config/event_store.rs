//! `wallex serve`'s event-store flags → [`EventStoreConfig`].

use clap::{Args, ValueEnum};
use wallex_core::eventstore::kurrent::{self, EventStoreConfig, EventStoreKind};

/// Which store holds the event streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventStoreKindArg {
    /// The `events` table of the wallex database, in the write transaction (the default).
    Postgres,
    /// A KurrentDB server (`KURRENTDB_CONNECTION_STRING`); PostgreSQL keeps the snapshots, the
    /// outbox and the idempotency records.
    Kurrentdb,
}

impl From<EventStoreKind> for EventStoreKindArg {
    fn from(kind: EventStoreKind) -> Self {
        match kind {
            EventStoreKind::Postgres => Self::Postgres,
            EventStoreKind::Kurrentdb => Self::Kurrentdb,
        }
    }
}

impl From<EventStoreKindArg> for EventStoreKind {
    fn from(kind: EventStoreKindArg) -> Self {
        match kind {
            EventStoreKindArg::Postgres => Self::Postgres,
            EventStoreKindArg::Kurrentdb => Self::Kurrentdb,
        }
    }
}

/// Where events are stored.
#[derive(Debug, Clone, Args)]
pub struct EventStoreArgs {
    /// `postgres` (default) or `kurrentdb`.
    #[arg(long, env = "EVENT_STORE", value_enum,
          default_value_t = EventStoreKindArg::from(kurrent::DEFAULT_EVENT_STORE))]
    pub event_store: EventStoreKindArg,

    /// KurrentDB's connection string (`kurrentdb://host:2113?tls=false`, or
    /// `kurrentdb+discover://…` for a cluster); required with `EVENT_STORE=kurrentdb`.
    #[arg(long, env = "KURRENTDB_CONNECTION_STRING")]
    pub kurrentdb_connection_string: Option<String>,

    /// Longest a KurrentDB call may take before the request is answered `503` (the gRPC deadline
    /// and a local bound).
    #[arg(long, env = "KURRENTDB_TIMEOUT_MS", default_value_t = kurrent::DEFAULT_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub kurrentdb_timeout_ms: u64,

    /// How often the reconciliation pass looks for events in KurrentDB that PostgreSQL lacks
    /// (besides once at start-up).
    #[arg(long, env = "KURRENTDB_RECONCILE_INTERVAL_SECS",
          default_value_t = kurrent::DEFAULT_RECONCILE_INTERVAL_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub kurrentdb_reconcile_interval_secs: u64,

    /// How old an event must be before the reconciliation pass completes it: younger ones may
    /// still be on their way through a running request.
    #[arg(long, env = "KURRENTDB_RECONCILE_GRACE_SECS",
          default_value_t = kurrent::DEFAULT_RECONCILE_GRACE_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub kurrentdb_reconcile_grace_secs: u64,
}

impl EventStoreArgs {
    /// The library's settings.
    pub fn settings(&self) -> EventStoreConfig {
        EventStoreConfig {
            event_store: self.event_store.into(),
            kurrentdb_connection_string: self.kurrentdb_connection_string.clone(),
            kurrentdb_timeout_ms: self.kurrentdb_timeout_ms,
            kurrentdb_reconcile_interval_secs: self.kurrentdb_reconcile_interval_secs,
            kurrentdb_reconcile_grace_secs: self.kurrentdb_reconcile_grace_secs,
        }
    }
}
