//! What the black-box suites share, by concern: the spawned server, the public API client, the
//! admin API client, the built components, the command line's error shape. The test database
//! and its counts come from `wallex-test-support`, shared with the crates' own suites.

mod admin;
mod cli;
mod components;
mod http;
mod server;

pub use admin::*;
pub use cli::*;
pub use components::*;
pub use http::*;
pub use server::*;
pub use wallex_test_support::db::*;
