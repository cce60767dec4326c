//! wallex: event-sourced wallets whose projections are WebAssembly components — the binary's
//! library: configuration, `serve`, the operator's CLI client and the benchmarks (telemetry is
//! `wallex-telemetry`'s).
//!
//! How it fits: `wallex-core` is the write side, `wallex-runtime` the projection runtime,
//! `wallex-http` every route; this crate composes them into a process. `src/main.rs` is a thin
//! command line over it (the only place that uses `anyhow` and prints errors). ARCHITECTURE.md
//! has the map.
//!
//! # Layout
//!
//! - [`config`] — typed configuration of `wallex serve`: every flag and environment variable, one
//!   file per concern, each mapped onto its library crate's plain settings (whose `Default` the
//!   flags' defaults come from).
//! - [`app`] — `serve`: database, migrations, projections, HTTP server, background tasks,
//!   graceful shutdown.
//! - [`cli`] — `wallex projections …`: the operator's client of the admin API.
//! - [`author`] — `wallex projections new|build|test`: the projection author's kit (no server).
//! - [`dev`] — `wallex dev DIR`: a local server that rebuilds, tests and redeploys a projection
//!   on every change; [`local_postgres`] — the private PostgreSQL it (and `serve`) start when
//!   none is configured or running.
//! - [`mod@bench`] — `wallex bench create|projections|deploy|rebuild|system`.

#![deny(missing_docs)]

pub mod app;
pub mod author;
pub mod bench;
pub mod cli;
pub mod config;
pub mod dev;
pub mod local_postgres;
