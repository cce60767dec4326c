//! The sandbox: how wallex narrows wasmtime to what a projection may do.
//!
//! A projection component gets one engine shared by the process ([`engine::ProjectionRuntime`]),
//! is compiled once and pre-linked against the `wallex:projection` world and nothing else (the
//! host's `log` plus a WASI context with no capability), and every call runs in a fresh `Store`
//! with its projection's limits: memory through a `ResourceLimiter`, wall clock through epoch
//! interruption, optional fuel, bounded log and stdio, and a trap reported as the limit it hit.
//! Calls run on [`guest_pool`]'s threads, never on the async runtime.
//!
//! # Layout
//!
//! - [`engine`] — the engine, loading (compile or deserialize, describe, pre-link), one call per
//!   fresh store with its [`engine::RuntimeLimits`], the WIT records ([`engine::wit`]).
//! - [`guest_pool`] — the threads component calls run on, at a lowered priority.
//! - [`guest_text`] — text a component chooses (names, messages, log lines), bounded and escaped
//!   before the host keeps it anywhere.
//! - [`bundled`] — the three components built into the binary (by `build.rs`, from
//!   `projections/`), and the directory of the test fixtures built beside them.
//!
//! Architecture invariant: nothing a component returns leaves this crate unchecked for size
//! (the caller checks mutations against the declaration), and no call outlives its limits.
//!
//! API boundary: it knows no database, event log, checkpoint or registry (it depends on no other
//! wallex crate and on no sqlx); it turns bytes into a callable component and a batch of WIT
//! events into a list of mutations or an error. The runtime turns outbox rows into WIT events.

#![deny(missing_docs)]

pub mod bundled;
pub mod engine;
pub mod guest_pool;
pub mod guest_text;
