//! The black-box suites: each spawns the real `wallex` binary (built with the test-only
//! failpoints) against a fresh PostgreSQL database on a random port and talks to it as a client,
//! an operator or a crash would. One test binary for all of them, so the whole host is linked
//! once; run one suite with `cargo test --test blackbox <suite>::`.

mod support;

mod admin_http;
mod adversarial;
mod author_kit;
mod dry_run;
mod fault_isolation;
mod http_api;
mod kurrentdb;
mod observability;
mod projections_http;
mod recovery;
mod redis;
