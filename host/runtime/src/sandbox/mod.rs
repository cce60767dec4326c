//! The sandbox: how wallex narrows wasmtime to what a projection may do.
//!
//! A projection component gets one engine shared by the process ([`engine::ProjectionRuntime`]),
//! is compiled once and pre-linked against the `wallex:projection` world and nothing else (the
//! host's `log` plus a WASI context with no capability), and every call runs in a fresh `Store`
//! with its projection's limits: memory through a `ResourceLimiter`, wall clock through epoch
//! interruption, optional fuel, bounded log and stdio, and a trap reported as the limit it hit.
//! Calls run on [`guest_pool`]'s threads, never on the async runtime. [`bundled`] holds the
//! three components built into the binary.
//!
//! Architecture invariant: nothing a component returns leaves this module unchecked for size
//! (the caller checks mutations against the declaration), and no call outlives its limits.
//! API boundary: it knows no database, checkpoint or registry; it turns bytes into a callable
//! component and a batch of events into a list of mutations or an error.

pub mod bundled;
pub mod engine;
pub mod guest_pool;
