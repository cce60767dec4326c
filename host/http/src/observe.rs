//! Every request's span, correlation id and HTTP metrics.
//!
//! Why it exists: one place decides what an operator can see of a request. Each request gets
//! one `http.request` span (named `METHOD /route` in traces) carrying its correlation id; the
//! span continues the client's W3C trace when its `traceparent` is valid (otherwise a new trace
//! starts — a malformed header is never an error). Its answer counts in `http_requests_total`
//! and `http_request_duration_seconds`, labelled by the matched route template, never the raw
//! path, so label values stay a bounded set.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use wallex_telemetry::catalogue::{HTTP_REQUESTS_TOTAL, HTTP_REQUEST_DURATION_SECONDS};
use wallex_telemetry::context;

/// Longest accepted `X-Correlation-Id`.
pub const MAX_CORRELATION_ID_LEN: usize = 128;
/// `X-Correlation-Id`: given by the client or generated, echoed on the response.
pub static CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// Route label of a request no route matched (404s of arbitrary paths).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The request's correlation id, when its `X-Correlation-Id` was valid or absent (then
/// generated). Handlers that must reject an invalid header find none.
#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

/// The W3C trace context a request continues, if its `traceparent` was valid; handlers record
/// it in event metadata when spans are not exported.
#[derive(Debug, Clone)]
pub struct ClientTrace(pub opentelemetry::Context);

/// What a request's `X-Correlation-Id` header holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CorrelationHeader {
    /// A valid id.
    Given(String),
    /// No header: the server generates an id.
    Absent,
    /// Empty, longer than [`MAX_CORRELATION_ID_LEN`], or not visible ASCII.
    Invalid,
}

/// Reads the `X-Correlation-Id` of `headers`.
fn correlation_header(headers: &HeaderMap) -> CorrelationHeader {
    let Some(value) = headers.get(&CORRELATION_ID) else {
        return CorrelationHeader::Absent;
    };
    let bytes = value.as_bytes();
    let printable = bytes.iter().all(|b| (0x21..=0x7e).contains(b));
    if bytes.is_empty() || bytes.len() > MAX_CORRELATION_ID_LEN || !printable {
        return CorrelationHeader::Invalid;
    }
    CorrelationHeader::Given(String::from_utf8_lossy(bytes).into_owned())
}

/// The `method` label: the standard methods by name, anything else as `other`.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The middleware: span, correlation id, metrics.
pub async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method()).to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
        .to_owned();
    let correlation = match correlation_header(request.headers()) {
        CorrelationHeader::Given(id) => Some(id),
        CorrelationHeader::Absent => Some(uuid::Uuid::new_v4().to_string()),
        CorrelationHeader::Invalid => None,
    };
    let span = tracing::debug_span!(
        "http.request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        correlation_id = correlation.as_deref().unwrap_or_default(),
    );
    if let Some(client) = context::from_headers(request.headers()) {
        context::set_parent(&span, client.clone());
        request.extensions_mut().insert(ClientTrace(client));
    }
    if let Some(id) = &correlation {
        request.extensions_mut().insert(CorrelationId(id.clone()));
    }
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if let Some(id) = correlation.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response
            .headers_mut()
            .entry(CORRELATION_ID.clone())
            .or_insert(id);
    }
    metrics::counter!(
        HTTP_REQUESTS_TOTAL,
        "method" => method.clone(),
        "route" => route.clone(),
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
