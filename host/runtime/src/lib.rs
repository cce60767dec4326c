//! wallex-runtime: the projection data plane — what turns the outbox into a projection's tables,
//! batch by batch, with the checkpoint.
//!
//! Why it exists: read models, the ledger and the audit log are written by different teams and
//! shipped as `.wasm` files against the contract in `wit/projection.wit`. This crate gives each
//! one a namespace of tables, runs its leased worker, and checks and applies what the component
//! returns together with its checkpoint. It owns the tables that say where each projection is
//! and what it runs (checkpoints, the registry, dead letters, compiled artifacts).
//!
//! What it deliberately does not know: the operations by name (deploy, pause, rebuild, dry runs,
//! recovery) and the handle that runs them are `wallex-control`'s; a worker reaches them only
//! through the [`worker::Supervisor`] trait. It knows nothing of HTTP (no axum) and calls
//! components only through `wallex-sandbox`.
//!
//! # Layout
//!
//! - [`guest_event`] — an outbox row as the WIT record a component is called with; the calls
//!   themselves run in `wallex-sandbox` (how wallex narrows wasmtime), which knows no database.
//! - [`schema`] — a declaration validated, its namespace and DDL.
//! - [`mutation`] — a component's output validated (`mutation::validate`), planned into
//!   statements ([`mutation::plan()`]) and applied ([`mutation::apply`]).
//! - [`poison_search`] — which part of a failing batch to call next, within a budget.
//! - [`guest_text`] — `wallex-sandbox`'s bounds on component text, re-exported for the HTTP layer
//!   (which does not depend on the sandbox).
//! - [`worker`] — one leased worker per projection: the batch, the lease, the listener, and the
//!   [`worker::Supervisor`] seam to the control plane.
//! - [`checkpoint`], [`registry`], [`dead_letters`], [`artifacts`] — the owners of their tables
//!   (`projector_checkpoints`; `projection_components`, `projection_deployments`,
//!   `projection_rebuilds`, `admin_actions`; `projection_dead_letters`; `projection_artifacts`,
//!   the compiled components).
//! - [`read`] — one row by its key.
//! - [`config`] — settings, per-projection overrides and the resolved policy (of both planes: the
//!   control plane's limits are plain values here, so the binary has one settings type).

#![deny(missing_docs)]

pub mod artifacts;
pub mod checkpoint;
pub mod config;
pub mod dead_letters;
pub mod guest_event;
pub mod mutation;
pub mod poison_search;
pub mod read;
pub mod registry;
pub mod schema;
pub mod worker;

pub use config::{ProjectionConfig, ProjectionOptions};
pub use wallex_sandbox::guest_text;
