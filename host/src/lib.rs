//! wallex: event-sourced wallets whose projections are WebAssembly components.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library; ARCHITECTURE.md has the map.

pub mod admin;
pub mod api;
pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod currency;
pub mod db;
pub mod eventstore;
pub mod failpoint;
pub mod idempotency;
pub mod outbox;
pub mod projection;
pub mod telemetry;
pub mod wallet;
pub mod write_path;
