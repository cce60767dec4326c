//! wallex-http: the HTTP layer — every route, RFC 9457 problems and the JSON shapes.
//!
//! Why it exists: it maps HTTP onto the write path ([`wallex_core`]), the projections' data plane
//! ([`wallex_runtime`]) and their control plane ([`wallex_control`]) and nothing else; business
//! rules live there. It is the only crate that knows JSON shapes of requests and answers ([`wire`]
//! for the admin API, whose bodies the CLI reads too).
//!
//! # Layout
//!
//! - this file — the router, [`AppState`], the request timeout, 404/405 fallbacks;
//! - [`problem`] — [`Problem`], the one error type of the layer (`IntoResponse`), and how
//!   database errors become 503 or 500;
//! - [`wallets`] — `POST /wallets`, `GET /wallets/{id}`, `GET /wallets/{id}/events`;
//! - [`projections`] — `GET /projections[/{name}]`, `GET /projections/{name}/{table}/{key}`;
//! - [`admin`] — `/admin/…` (token, uploads, actions, status, stats, audit); [`admin::deploys`] —
//!   deploys that outlive their request (`202 Accepted`, `GET /admin/deploys/{id}`);
//!   [`admin::dry_runs`] — `/admin/dry-runs`, a candidate replayed over the live log and compared;
//! - [`health`] — `/healthz`, `/readyz`; [`metrics`] — `/metrics`;
//! - [`observe`] — every request's span, correlation id and HTTP metrics (middleware);
//! - [`wire`] — typed bodies of the admin API and the projections' status.

#![deny(missing_docs)]

pub mod admin;
pub mod health;
pub mod metrics;
pub mod observe;
pub mod problem;
pub mod projections;
pub mod wallets;
pub mod wire;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;

use problem::Problem;
use wallex_core::write_path::WritePath;

/// What the HTTP layer is configured with (from `wallex serve`'s configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpConfig {
    /// Upper bound on handling one request (503 after it).
    pub request_timeout: std::time::Duration,
    /// Reject writes that carry no `Idempotency-Key` header (400).
    pub idempotency_key_required: bool,
}

/// Handles shared by every request.
#[derive(Clone)]
pub struct AppState {
    /// The database pool (health, metrics).
    pub pool: PgPool,
    /// Creates and reads wallets.
    pub write_path: WritePath,
    /// Reads event streams from the configured event store.
    pub events: wallex_core::eventstore::StreamReader,
    /// The HTTP layer's settings.
    pub config: Arc<HttpConfig>,
    /// The loaded projections (their workers may run in this process or another).
    pub projections: wallex_control::Projections,
    /// State of the `/admin` routes.
    pub admin: crate::admin::AdminState,
    /// What telemetry was installed (the Prometheus handle `/metrics` renders).
    pub telemetry: wallex_telemetry::Telemetry,
}

/// The service's routes.
pub fn router(state: AppState) -> Router {
    let request_timeout = state.config.request_timeout;
    Router::new()
        .route("/wallets", post(wallets::create_wallet))
        .route("/wallets/{id}", get(wallets::get_wallet))
        .route("/wallets/{id}/events", get(wallets::get_wallet_events))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .merge(crate::projections::router(state.projections.clone()))
        .merge(crate::admin::router(state.admin.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(axum::middleware::from_fn(move |request, next| {
            timeout_as_problem(request, next, request_timeout)
        }))
        .layer(axum::middleware::from_fn(observe::observe))
}

async fn not_found() -> Problem {
    Problem::not_found("No resource at this path.")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "This resource does not support the request's method.",
    )
}

/// Bounds every request; one that takes longer gets a 503 problem.
async fn timeout_as_problem(
    request: axum::extract::Request,
    next: axum::middleware::Next,
    limit: std::time::Duration,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request-timeout",
            "Request timed out",
            format!(
                "The request did not complete within {} ms.",
                limit.as_millis()
            ),
        )
        .with_retry_after(1)
        .into_response(),
    }
}
