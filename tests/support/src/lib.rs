//! wallex-test-support: what the test suites of every crate share, so that each suite lives
//! beside the crate it tests and none keeps its own copy.
//!
//! # Layout
//!
//! - [`db`] — a PostgreSQL database of its own per test (empty, or migrated with a pool),
//!   dropped with the value; `count` and the write path's row counts.
//! - [`events`] — events written exactly as the write path writes them (event store and outbox
//!   in one transaction), the outbox's last cursor, a table's rows, and the check that every
//!   snapshot is the fold of its stream.
//! - [`projections`] — the projection runtime started in the test process over a test database,
//!   and waiting for its checkpoints.
//!
//! Architecture invariant: every test gets its own database (`wallex_test_<uuid>`) on the real
//! server named by `WALLEX_TEST_ADMIN_URL` (default: the local cluster); nothing is mocked.
//!
//! API boundary: it knows the schema only through `wallex-core` (its migrator and event store)
//! and the projections only through the public APIs of `wallex-runtime` and `wallex-control`. It knows no server process:
//! spawning the binary is the black-box suite's own support (`tests/blackbox/support/`), since
//! only a test of the binary's package can name the binary.

#![deny(missing_docs)]

pub mod db;
pub mod events;
pub mod projections;
