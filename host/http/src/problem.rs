//! RFC 9457 problem details: the one error shape of the HTTP API.
//!
//! Why it exists: every error a client can get — validation, conflicts, idempotency misuse, an
//! unavailable database — is a [`Problem`] rendered as `application/problem+json` with `type`,
//! `title`, `status` and `detail` (and `errors` for validation). Internal errors are logged here and
//! never shown: no SQL or internal text leaks to a client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use wallex_core::wallet::FieldError;

/// Media type of problem responses.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Problem types are relative URIs under this prefix; README.md lists them (the admin API's are
/// in host/docs/operating.md).
pub const PROBLEM_TYPE_PREFIX: &str = "/problems/";

/// An error response.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The HTTP status, also the body's `status` member.
    pub status: StatusCode,
    /// Short machine name; the `type` member is [`PROBLEM_TYPE_PREFIX`] + slug.
    pub slug: &'static str,
    /// Short human-readable summary of the problem type; the same for every occurrence.
    pub title: &'static str,
    /// What happened in this occurrence, for the client.
    pub detail: String,
    /// Per-field validation failures, rendered as the `errors` member (left out when empty).
    pub errors: Vec<FieldError>,
    /// Seconds for a `Retry-After` header.
    pub retry_after_secs: Option<u64>,
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    problem_type: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldErrorBody<'a>>,
}

/// One entry of a problem's `errors` list: `{pointer, field, detail}`.
#[derive(Serialize)]
struct FieldErrorBody<'a> {
    pointer: &'a str,
    field: &'a str,
    detail: &'a str,
}

impl Problem {
    /// A problem with no field errors and no `Retry-After`.
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after_secs: None,
        }
    }

    /// The problem with these field errors (a validation failure).
    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    /// The problem with a `Retry-After` of `secs` seconds.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// 500 for a failure the client cannot fix. The cause is logged, not returned.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal-error",
            "Internal server error",
            "The server failed to handle the request; it has been logged.",
        )
    }

    /// 503 while the database cannot be reached (or the pool is exhausted).
    pub fn database_unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "database unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database-unavailable",
            "Database unavailable",
            "The database is unavailable; retry later.",
        )
        .with_retry_after(1)
    }

    /// 503 for an event store that cannot be reached (KurrentDB down or slow); nothing was
    /// written to PostgreSQL, and a retry with the same key is safe.
    pub fn event_store_unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "event store unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "event-store-unavailable",
            "Event store unavailable",
            "The event store cannot be reached; retry later (with the same Idempotency-Key).",
        )
        .with_retry_after(EVENT_STORE_RETRY_AFTER_SECS)
    }

    /// 404 with `detail`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// The body as bytes (for storing and replaying).
    pub fn body_bytes(&self) -> Vec<u8> {
        let body = ProblemBody {
            problem_type: format!("{PROBLEM_TYPE_PREFIX}{}", self.slug),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
            errors: self
                .errors
                .iter()
                .map(|e| FieldErrorBody {
                    pointer: &e.pointer,
                    field: &e.field,
                    detail: &e.detail,
                })
                .collect(),
        };
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// `Retry-After` of an answer given while the event store cannot be reached.
pub const EVENT_STORE_RETRY_AFTER_SECS: u64 = 1;

/// SQLSTATE classes and codes that mean "the database is unavailable right now" rather than a bug:
/// connection exceptions, insufficient resources, operator intervention (shutdown, query
/// cancelled by statement_timeout), and a standby that cannot take writes.
const UNAVAILABLE_SQLSTATE_PREFIXES: [&str; 4] = ["08", "53", "57", "25006"];

impl Problem {
    /// Classifies a database error: unavailable (503) or internal (500).
    pub fn from_sqlx(error: &sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::database_unavailable(error),
            sqlx::Error::Database(db)
                if db.code().is_some_and(|code| {
                    UNAVAILABLE_SQLSTATE_PREFIXES
                        .iter()
                        .any(|prefix| code.starts_with(prefix))
                }) =>
            {
                Self::database_unavailable(error)
            }
            _ => Self::internal(error),
        }
    }
}

impl From<sqlx::Error> for Problem {
    fn from(error: sqlx::Error) -> Self {
        Self::from_sqlx(&error)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body_bytes()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
