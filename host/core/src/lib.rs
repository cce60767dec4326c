//! wallex-core: the write side of wallex — what a wallet is, how a create is made idempotent
//! and durable, and where its events go.
//!
//! How it narrows the problem: everything here is PostgreSQL and plain Rust; it knows nothing of
//! HTTP (no axum) or WebAssembly (no wasmtime). The HTTP layer (`wallex-http`) turns requests into
//! calls of [`write_path`]; the projection runtime (`wallex-runtime`) reads what [`outbox`]
//! enqueued.
//!
//! # Layout
//!
//! - [`wallet`] — the domain: `CreateWallet` validation (ids, exact money, currency), the
//!   snapshot and its response body.
//! - [`wallet_event`] — a wallet's events, typed, their JSON `data` (the projection contract), and
//!   the snapshot as the fold of a stream.
//! - [`movement`] — deposits, withdrawals and transfers: their bodies validated and the decision
//!   each makes on the wallets it touches (the events to append, or a `Refusal`).
//! - [`currency`] — the ISO 4217 codes accepted, with their minor units.
//! - [`idempotency`] — key parsing, body fingerprint, the claim (advisory lock), stored responses,
//!   the expiry task. Owns `idempotency_keys`.
//! - [`write_path`] — the create-wallet transaction, and with KurrentDB the completion of the
//!   writes nobody retried (`write_path::orphans`). Owns `wallets`.
//! - [`read_model_check`] — a recovery check: the write model against a read model of it.
//! - [`eventstore`] — the `EventStore` seam and its PostgreSQL implementation. Owns `events`.
//! - [`outbox`] — enqueue and the gap-safe reader. Owns `outbox`.
//! - [`redis_lock_cache`] — Redis beside PostgreSQL, for efficiency only: the per-wallet lock and the
//!   replay cache (owns no table; owns the `wallex:*` Redis keys).
//! - [`db`] — the pool, database creation and the embedded migrations.
//! - [`failpoint`] — test-only crash injection (`failpoints` feature).
//! - [`seed`] — benchmark data written straight into the tables this crate owns.

#![deny(missing_docs)]

pub mod currency;
pub mod db;
pub mod eventstore;
pub mod failpoint;
pub mod idempotency;
pub mod movement;
pub mod outbox;
pub mod read_model_check;
pub mod redis_lock_cache;
pub mod seed;
pub mod wallet;
pub mod wallet_event;
pub mod write_path;
