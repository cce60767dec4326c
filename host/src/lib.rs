//! wallex: event-sourced wallets whose projections are WebAssembly components.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library; see ARCHITECTURE.md for the map.

pub mod eventstore;
pub mod outbox;
pub mod projection;
