//! `POST /wallets`, `GET /wallets/{id}` and `GET /wallets/{id}/events`.
//!
//! Why it exists: the HTTP edge of the write path — header and body validation in the order the
//! API promises (415, 413, 400, 422 before anything is stored), idempotency headers, and the
//! rendering of outcomes as responses.

use axum::body::Body;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use http_body_util::BodyExt;

use super::observe::{ClientTrace, CorrelationId};
use super::problem::Problem;
use super::AppState;
use wallex_core::eventstore::{EventStoreError, RecordedEvent};
use wallex_core::idempotency::{self, ScopedKey, StoredResponse, IN_FLIGHT_RETRY_AFTER_SECS};
use wallex_core::wallet::FieldError;
use wallex_core::wallet::{validate_id, CreateWallet};
use wallex_core::write_path::{
    wallet_stream, CreateResult, IdempotentRequest, RequestContext, WriteError, WriteOutcome,
};
use wallex_telemetry::catalogue::{
    IDEMPOTENCY_REQUESTS_TOTAL, WALLET_CREATE_DURATION_MS, WALLET_CREATE_TOTAL,
};
use wallex_telemetry::context;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How much of a too-large body is read and discarded before answering 413.
pub const MAX_DRAINED_BYTES: usize = 1024 * 1024;
/// Idempotency scope of wallet creation (method + path).
pub const CREATE_WALLET_SCOPE: &str = "POST /wallets";

/// `X-Global-Position`: the global position of a created wallet's `WalletCreated` event, for
/// reads with `minPosition`.
pub static GLOBAL_POSITION: HeaderName = HeaderName::from_static("x-global-position");
/// `Idempotency-Key`: the client's key that makes a retried create safe.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// `Idempotent-Replayed: true` on a response replayed for a repeated key.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

const JSON: &str = "application/json";

/// `POST /wallets`.
pub async fn create_wallet(
    State(state): State<AppState>,
    correlation: Option<Extension<CorrelationId>>,
    client_trace: Option<Extension<ClientTrace>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let response = match correlation {
        Some(Extension(CorrelationId(id))) => {
            let trace = client_trace.map(|Extension(ClientTrace(cx))| cx);
            match create(&state, &headers, body, &id, trace.as_ref()).await {
                Ok(response) => response,
                Err(problem) => problem.into_response(),
            }
        }
        None => Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-correlation-id",
            "Invalid X-Correlation-Id",
            "X-Correlation-Id must be 1 to 128 visible ASCII characters.",
        )
        .into_response(),
    };
    let status = create_status(&response);
    metrics::counter!(WALLET_CREATE_TOTAL, "status" => status).increment(1);
    metrics::histogram!(WALLET_CREATE_DURATION_MS, "status" => status)
        .record(started.elapsed().as_secs_f64() * 1000.0);
    response
}

/// The `status` label of a create's answer in `wallet_create_total`: `replayed` for a stored
/// answer returned again, `success` for 2xx, `conflict` for 409 (wallet exists, key in flight),
/// `invalid` for other 4xx, `error` for 5xx.
fn create_status(response: &Response) -> &'static str {
    let status = response.status();
    if response.headers().contains_key(&IDEMPOTENT_REPLAYED) {
        "replayed"
    } else if status.is_success() {
        "success"
    } else if status == StatusCode::CONFLICT {
        "conflict"
    } else if status.is_client_error() {
        "invalid"
    } else {
        "error"
    }
}

async fn create(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    correlation_id: &str,
    client_trace: Option<&opentelemetry::Context>,
) -> Result<Response, Problem> {
    let key = idempotency::parse_key_header(
        headers
            .get_all(&IDEMPOTENCY_KEY)
            .iter()
            .map(HeaderValue::as_bytes),
    )
    .map_err(|error| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-idempotency-key",
            "Invalid Idempotency-Key",
            error.to_string(),
        )
    })?;
    if key.is_none() && state.config.idempotency_key_required {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "idempotency-key-required",
            "Idempotency-Key required",
            "This server requires an Idempotency-Key header on writes.",
        ));
    }
    require_json_content_type(headers)?;
    let bytes = read_body(headers, body).await?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|error| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            format!("The body is not valid JSON: {error}."),
        )
    })?;
    let command = CreateWallet::from_json(&json).map_err(|errors| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
            "Validation failed",
            "The request body has invalid fields; see errors.",
        )
        .with_errors(errors)
    })?;

    let context = RequestContext {
        correlation_id: correlation_id.to_owned(),
        traceparent: context::traceparent_for(&tracing::Span::current(), client_trace),
        idempotency: key.map(|key| IdempotentRequest {
            fingerprint: idempotency::fingerprint(&json),
            key: ScopedKey {
                scope: CREATE_WALLET_SCOPE.to_owned(),
                key,
            },
        }),
    };
    let keyed = context.idempotency.is_some();
    let outcome = state
        .write_path
        .create_wallet(command, context, render_create_result)
        .await
        .map_err(write_error_problem)?;
    if keyed {
        let outcome = match &outcome {
            WriteOutcome::Completed(_) => "new",
            WriteOutcome::Replayed(_) => "replayed",
            WriteOutcome::KeyInFlight => "in_flight",
            WriteOutcome::KeyReused => "reused",
        };
        metrics::counter!(IDEMPOTENCY_REQUESTS_TOTAL, "outcome" => outcome).increment(1);
    }
    Ok(match outcome {
        WriteOutcome::Completed(stored) => stored_response(&stored, false),
        WriteOutcome::Replayed(stored) => stored_response(&stored, true),
        WriteOutcome::KeyInFlight => Problem::new(
            StatusCode::CONFLICT,
            "idempotency-key-in-flight",
            "Request in progress",
            "A request with this Idempotency-Key is still being processed; retry later.",
        )
        .with_retry_after(IN_FLIGHT_RETRY_AFTER_SECS)
        .into_response(),
        WriteOutcome::KeyReused => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused",
            "This Idempotency-Key was used with a different request body.",
        )
        .into_response(),
    })
}

/// A wallet id in a path, checked against the id rules (`400 invalid-wallet-id`).
fn check_wallet_id(id: &str) -> Result<(), Problem> {
    validate_id(id).map_err(|detail| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-wallet-id",
            "Invalid wallet id",
            format!("The wallet id {detail}."),
        )
        .with_errors(vec![FieldError::new("id", detail)])
    })
}

/// `GET /wallets/{id}`: the snapshot from the write model (strongly consistent).
pub async fn get_wallet(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    check_wallet_id(&id)?;
    let wallet = state.write_path.find_wallet(&id).await?.ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "wallet-not-found",
            "Wallet not found",
            format!("No wallet has id {id}."),
        )
    })?;
    let body = wallet
        .to_json_bytes()
        .map_err(|error| Problem::internal(&error))?;
    Ok(([(header::CONTENT_TYPE, JSON)], body).into_response())
}

/// Most events `GET /wallets/{id}/events` returns at once (`limit`'s bound).
pub const MAX_EVENTS_PAGE: usize = 1_000;
/// Events returned when the request names no `limit`.
pub const DEFAULT_EVENTS_PAGE: usize = 100;

/// Query of `GET /wallets/{id}/events`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventsQuery {
    /// First stream version returned (from 1).
    from_version: Option<i64>,
    /// Most events returned (1 to [`MAX_EVENTS_PAGE`]).
    limit: Option<usize>,
}

/// One event in `GET /wallets/{id}/events`.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct EventJson<'a> {
    event_id: uuid::Uuid,
    event_type: &'a str,
    stream_id: &'a str,
    stream_version: i64,
    global_position: i64,
    recorded_at: String,
    data: &'a serde_json::Value,
    metadata: &'a wallex_core::eventstore::EventMetadata,
}

/// Body of `GET /wallets/{id}/events`.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct EventsPage<'a> {
    wallet_id: &'a str,
    /// Which store answered: `postgres` or `kurrentdb`.
    event_store: &'static str,
    events: Vec<EventJson<'a>>,
    /// `fromVersion` of the next page, when this one was full.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_from_version: Option<i64>,
}

/// `GET /wallets/{id}/events?fromVersion=&limit=`: the wallet's stream, read from the configured
/// event store (PostgreSQL's `events` or KurrentDB).
pub async fn get_wallet_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    check_wallet_id(&id)?;
    let invalid_query = |detail: String| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query",
            detail,
        )
    };
    let axum::extract::Query(query) =
        query.map_err(|rejection| invalid_query(rejection.body_text()))?;
    let from_version = query.from_version.unwrap_or(1);
    if from_version < 1 {
        return Err(invalid_query("fromVersion must be at least 1.".into()));
    }
    let limit = query.limit.unwrap_or(DEFAULT_EVENTS_PAGE);
    if !(1..=MAX_EVENTS_PAGE).contains(&limit) {
        return Err(invalid_query(format!(
            "limit must be between 1 and {MAX_EVENTS_PAGE}."
        )));
    }
    let stream = wallet_stream(&id);
    let events = state
        .events
        .read_page(&stream, from_version, limit)
        .await
        .map_err(|error| match error {
            EventStoreError::Unavailable(_) => Problem::event_store_unavailable(&error),
            other => Problem::internal(&other),
        })?;
    if events.is_empty() && from_version == 1 {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "wallet-not-found",
            "Wallet not found",
            format!("The event store has no stream {stream}."),
        ));
    }
    let next_from_version = (events.len() == limit)
        .then(|| events.last().map(|event| event.stream_version + 1))
        .flatten();
    let page = EventsPage {
        wallet_id: &id,
        event_store: match state.events {
            wallex_core::eventstore::StreamReader::Postgres(_) => "postgres",
            wallex_core::eventstore::StreamReader::Kurrent(_) => "kurrentdb",
        },
        events: events.iter().map(event_json).collect(),
        next_from_version,
    };
    let body = serde_json::to_vec(&page).map_err(|error| Problem::internal(&error))?;
    Ok(([(header::CONTENT_TYPE, JSON)], body).into_response())
}

fn event_json(event: &RecordedEvent) -> EventJson<'_> {
    EventJson {
        event_id: event.event_id,
        event_type: &event.event_type,
        stream_id: &event.stream_id,
        stream_version: event.stream_version,
        global_position: event.global_position,
        recorded_at: wallex_core::wallet::format_timestamp(event.recorded_at),
        data: &event.data,
        metadata: &event.metadata,
    }
}

/// The response of a create, as returned and stored for its key.
pub fn render_create_result(result: &CreateResult) -> Result<StoredResponse, WriteError> {
    Ok(match result {
        CreateResult::Created { wallet, position } => StoredResponse {
            status: StatusCode::CREATED.as_u16(),
            headers: vec![
                (header::CONTENT_TYPE.to_string(), JSON.to_owned()),
                (
                    header::LOCATION.to_string(),
                    format!("/wallets/{}", wallet.id),
                ),
                (GLOBAL_POSITION.to_string(), position.to_string()),
            ],
            body: wallet.to_json_bytes()?,
        },
        CreateResult::WalletExists { wallet_id } => {
            let problem = Problem::new(
                StatusCode::CONFLICT,
                "wallet-exists",
                "Wallet exists",
                format!("A wallet with id {wallet_id} exists already."),
            );
            StoredResponse {
                status: problem.status.as_u16(),
                headers: vec![(
                    header::CONTENT_TYPE.to_string(),
                    super::problem::PROBLEM_CONTENT_TYPE.to_owned(),
                )],
                body: problem.body_bytes(),
            }
        }
    })
}

fn stored_response(stored: &StoredResponse, replayed: bool) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, stored.body.clone()).into_response();
    let headers = response.headers_mut();
    for (name, value) in &stored.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    if replayed {
        headers.insert(
            IDEMPOTENT_REPLAYED.clone(),
            HeaderValue::from_static("true"),
        );
    }
    response
}

fn write_error_problem(error: WriteError) -> Problem {
    let cause = match &error {
        WriteError::Batch(shared) => shared.as_ref(),
        other => other,
    };
    if let WriteError::EventStore(EventStoreError::Unavailable(_)) = cause {
        return Problem::event_store_unavailable(&error);
    }
    if let WriteError::Batch(shared) = &error {
        return source_sqlx(shared).map_or_else(|| Problem::internal(&error), Problem::from_sqlx);
    }
    if let WriteError::Stopped = error {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            "Shutting down",
            "The server is shutting down; retry against another instance.",
        )
        .with_retry_after(1);
    }
    if let WriteError::StreamExists(_) = error {
        return Problem::new(
            StatusCode::CONFLICT,
            "wallet-exists",
            "Wallet exists",
            "A wallet with this id exists already.",
        );
    }
    source_sqlx(&error).map_or_else(|| Problem::internal(&error), Problem::from_sqlx)
}

/// The database error behind an event-store or outbox error, if any.
fn source_sqlx(error: &WriteError) -> Option<&sqlx::Error> {
    match error {
        WriteError::Database(db)
        | WriteError::Outbox(wallex_core::outbox::OutboxError::Database(db)) => Some(db),
        WriteError::EventStore(wallex_core::eventstore::EventStoreError::Backend(source)) => {
            source.downcast_ref()
        }
        _ => None,
    }
}

fn require_json_content_type(headers: &HeaderMap) -> Result<(), Problem> {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    match essence.as_deref() {
        Some(JSON) => Ok(()),
        Some(other) if other.starts_with("application/") && other.ends_with("+json") => Ok(()),
        _ => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "The body must be sent as Content-Type: application/json.",
        )),
    }
}

fn body_too_large() -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        "Body too large",
        format!("The body must not exceed {MAX_BODY_BYTES} bytes."),
    )
}

async fn read_body(headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, Problem> {
    read_body_within(headers, body, MAX_BODY_BYTES, body_too_large).await
}

/// Reads a request body of at most `limit` bytes; a larger one (declared or sent) is answered
/// with `too_large()` after draining a bounded amount of it (see `drain`).
pub async fn read_body_within(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    too_large: impl Fn() -> Problem,
) -> Result<bytes::Bytes, Problem> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let mut body = body;
    if declared.is_some_and(|length| length > limit as u64) {
        drain(&mut body).await;
        return Err(too_large());
    }
    let mut collected = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "unreadable-body",
                "Unreadable body",
                format!("The request body could not be read: {error}."),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > limit {
                drain(&mut body).await;
                return Err(too_large());
            }
            collected.extend_from_slice(&data);
        }
    }
    Ok(collected.freeze())
}

/// Reads and discards what is left of a rejected body, up to [`MAX_DRAINED_BYTES`], so that a
/// client still sending it can read the 413 instead of seeing the connection reset. A larger body
/// is cut off (the connection is closed).
async fn drain(body: &mut Body) {
    let mut drained = 0_usize;
    while drained <= MAX_DRAINED_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => drained += frame.data_ref().map_or(0, bytes::Bytes::len),
            Some(Err(_)) | None => return,
        }
    }
}
