//! Black-box tests of what operators see: `/metrics` after creates, replays, a conflict, invalid
//! requests and a failing projection; and the spans exported over OTLP to a real receiver (an
//! HTTP server in this test that decodes the protobuf export requests), with the request span
//! continuing the client's `traceparent` and the write transaction and projection batches
//! linked to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::support::*;

/// One sample of the text exposition format.
#[derive(Debug)]
struct Sample {
    metric: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// A scrape: its samples, and the `# TYPE` of each metric family.
struct Scrape {
    samples: Vec<Sample>,
    types: HashMap<String, String>,
}

/// Parses one sample line (`name{label="value",...} number`), with escapes in label values.
fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line}"));
    let metric = line[..name_end].to_owned();
    let mut labels = HashMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            if c == '}' {
                end = Some(i);
                break;
            }
            if c == ',' || c == ' ' {
                continue;
            }
            let key_start = i;
            let mut key_end = i;
            for (j, c) in chars.by_ref() {
                if c == '=' {
                    key_end = j;
                    break;
                }
            }
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, other)) => value.push(other),
                        None => panic!("{line}"),
                    },
                    Some((_, '"')) => break,
                    Some((_, other)) => value.push(other),
                    None => panic!("unterminated label value: {line}"),
                }
            }
            labels.insert(after[key_start..key_end].to_owned(), value);
        }
        let end = end.unwrap_or_else(|| panic!("unterminated labels: {line}"));
        rest = &after[end + 1..];
    }
    let number = rest.split_whitespace().next().expect("value");
    let value = match number {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other
            .parse()
            .unwrap_or_else(|_| panic!("bad value {other}: {line}")),
    };
    Sample {
        metric,
        labels,
        value,
    }
}

/// Scrapes `/metrics`, checking the content type and that every line parses.
async fn scrape(server: &Server) -> Scrape {
    let response = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    let mut samples = Vec::new();
    let mut types = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(typed) = line.strip_prefix("# TYPE ") {
            let mut parts = typed.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                panic!("bad TYPE line: {line}");
            };
            types.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') {
            samples.push(parse_sample(line));
        }
    }
    Scrape { samples, types }
}

fn matches(sample: &Sample, metric: &str, labels: &[(&str, &str)]) -> bool {
    sample.metric == metric
        && labels
            .iter()
            .all(|(name, value)| sample.labels.get(*name).map(String::as_str) == Some(*value))
}

/// The sum of the samples of `metric` with these labels (0 when absent).
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| matches(s, metric, labels))
        .map(|s| s.value)
        .sum()
}

/// Whether a series of `metric` with these labels exists.
fn present(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> bool {
    scrape.samples.iter().any(|s| matches(s, metric, labels))
}

/// Observations of the histogram `metric` with these labels (its `_count`), checking it is
/// exported as a histogram.
fn observations(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    assert_eq!(
        scrape.types.get(metric).map(String::as_str),
        Some("histogram"),
        "{metric}"
    );
    value(scrape, &format!("{metric}_count"), labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_creates_replays_conflicts_and_a_failing_projection() {
    let db = TestDb::migrated().await;
    let dir = ComponentDir::new(&[
        "wallex_projection_read_model.wasm",
        "wallex_projection_hostile_panic.wasm",
    ]);
    let dir_path = dir.path();
    let server = Server::spawn(
        &db.url,
        &[
            ("WALLEX_ADMIN_TOKEN", ADMIN_TOKEN),
            ("WALLEX_PROJECTIONS_DIR", &dir_path),
            ("PROJECTOR_MAX_RETRIES", "1"),
            ("PROJECTOR_ERROR_BACKOFF_MS", "100"),
        ],
    );
    let http = client();
    let wallet = fresh_id("metrics");
    let body = wallet_body(&wallet);
    let key = fresh_id("key");
    let other_key = fresh_id("key");

    let created = post_wallet(&http, &server, &body, &[("idempotency-key", &key)]).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let replayed = post_wallet(&http, &server, &body, &[("idempotency-key", &key)]).await;
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    post_wallet(&http, &server, &body, &[("idempotency-key", &other_key)])
        .await
        .assert_problem(409, "wallet-exists");
    post_wallet(&http, &server, "{\"walletId\": 5}", &[])
        .await
        .assert_problem(422, "validation-failed");
    post_wallet(
        &http,
        &server,
        &wallet_body(&fresh_id("other")),
        &[("idempotency-key", &key)],
    )
    .await
    .assert_problem(422, "idempotency-key-reused");
    let poison = post_wallet(&http, &server, &wallet_body("poison-3"), &[]).await;
    assert_eq!(poison.status, 201, "{}", poison.text());
    wait_caught_up(&server, "read-model").await;
    wait_for("hostile-panic to fail", async || {
        admin_status(&server, "hostile-panic").await["status"] == "failed"
    })
    .await;

    let m = scrape(&server).await;
    for (metric, kind) in [
        ("wallet_create_total", "counter"),
        ("idempotency_requests_total", "counter"),
        ("outbox_lag_events", "gauge"),
        ("projector_status", "gauge"),
        ("projector_batches_failed_total", "counter"),
    ] {
        assert_eq!(
            m.types.get(metric).map(String::as_str),
            Some(kind),
            "{metric}"
        );
    }
    // wallet_create_total by status, and the latency histogram with the same statuses.
    for (status, expected) in [
        ("success", 2.0),
        ("replayed", 1.0),
        ("conflict", 1.0),
        ("invalid", 2.0),
        ("error", 0.0),
    ] {
        assert_eq!(
            value(&m, "wallet_create_total", &[("status", status)]),
            expected,
            "wallet_create_total{{status={status}}}"
        );
        assert_eq!(
            observations(&m, "wallet_create_duration_ms", &[("status", status)]),
            expected,
            "wallet_create_duration_ms{{status={status}}}"
        );
    }
    // Idempotency outcomes: the hit rate is replayed / all.
    for (outcome, expected) in [
        ("new", 2.0),
        ("replayed", 1.0),
        ("reused", 1.0),
        ("in_flight", 0.0),
    ] {
        assert_eq!(
            value(&m, "idempotency_requests_total", &[("outcome", outcome)]),
            expected,
            "idempotency_requests_total{{outcome={outcome}}}"
        );
    }
    // Group commit: three requests reached a transaction (the replay and the reused key were
    // answered from their record).
    assert_eq!(value(&m, "wallet_write_requests_total", &[]), 3.0);
    let transactions = value(&m, "wallet_write_transactions_total", &[]);
    assert!((1.0..=3.0).contains(&transactions), "{transactions}");
    assert_eq!(
        observations(&m, "wallet_write_batch_size", &[]),
        transactions
    );
    // HTTP by route template and status.
    let post_wallets = [("method", "POST"), ("route", "/wallets")];
    for (status, expected) in [("201", 3.0), ("409", 1.0), ("422", 2.0)] {
        let mut labels = post_wallets.to_vec();
        labels.push(("status", status));
        assert_eq!(
            value(&m, "http_requests_total", &labels),
            expected,
            "{status}"
        );
    }
    assert_eq!(
        observations(&m, "http_request_duration_seconds", &post_wallets),
        6.0
    );
    // The pool.
    assert_eq!(value(&m, "db_pool_max_connections", &[]), 10.0);
    assert!(present(&m, "db_pool_connections", &[("state", "idle")]));
    assert!(present(&m, "db_pool_connections", &[("state", "in_use")]));
    assert!(observations(&m, "db_pool_acquire_duration_seconds", &[]) >= 1.0);
    // Projections: the healthy one is caught up and running, the failing one failed and behind.
    let read_model = [("projection", "read-model")];
    assert_eq!(value(&m, "outbox_lag_events", &read_model), 0.0);
    assert_eq!(value(&m, "outbox_lag_seconds", &read_model), 0.0);
    assert_eq!(
        value(&m, "projector_events_applied_total", &read_model),
        2.0
    );
    assert!(value(&m, "projector_batches_applied_total", &read_model) >= 1.0);
    assert_eq!(
        value(
            &m,
            "projector_status",
            &[("projection", "read-model"), ("status", "running")]
        ),
        1.0
    );
    assert!(observations(&m, "projector_batch_events", &read_model) >= 1.0);
    assert!(observations(&m, "projector_batch_duration_seconds", &read_model) >= 1.0);
    assert!(
        observations(
            &m,
            "projector_guest_call_duration_seconds",
            &[("projection", "read-model"), ("outcome", "ok")]
        ) >= 1.0
    );
    let panic = [("projection", "hostile-panic")];
    assert!(value(&m, "projector_batches_failed_total", &panic) >= 1.0);
    assert!(
        observations(
            &m,
            "projector_guest_call_duration_seconds",
            &[("projection", "hostile-panic"), ("outcome", "failed")]
        ) >= 1.0
    );
    for (status, expected) in [("failed", 1.0), ("running", 0.0), ("failing", 0.0)] {
        assert_eq!(
            value(
                &m,
                "projector_status",
                &[("projection", "hostile-panic"), ("status", status)]
            ),
            expected,
            "projector_status{{status={status}}}"
        );
    }
    assert!(value(&m, "outbox_lag_events", &panic) >= 1.0);
    assert_eq!(
        value(
            &m,
            "projector_rebuild_status",
            &[("projection", "read-model"), ("status", "failed")]
        ),
        0.0
    );
    assert!(present(&m, "projector_quarantined", &read_model));
    // Bounded labels: no wallet id, key or raw path in any label value.
    for sample in &m.samples {
        for label in sample.labels.values() {
            for secret in [&wallet, &key, &other_key] {
                assert!(
                    !label.contains(secret.as_str()),
                    "{} carries {label}",
                    sample.metric
                );
            }
        }
    }
    // A raw path is labelled by its route template, an unknown path as unmatched.
    get(&http, &server, &format!("/wallets/{wallet}")).await;
    get(&http, &server, "/no/such/path").await;
    let m = scrape(&server).await;
    assert_eq!(
        value(
            &m,
            "http_requests_total",
            &[("route", "/wallets/{id}"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    drop(server);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_turned_off() {
    let db = TestDb::migrated().await;
    let server = Server::spawn(&db.url, &[("METRICS_ENABLED", "false")]);
    let reply = get(&client(), &server, "/metrics").await;
    reply.assert_problem(404, "not-found");
    let created = post_wallet(&client(), &server, &wallet_body(&fresh_id("off")), &[]).await;
    assert_eq!(created.status, 201);
    drop(server);
    drop(db);
}

/// What the OTLP receiver got: every span, with its service name.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

impl Received {
    fn spans(&self) -> Vec<(String, Span)> {
        self.0.lock().expect("lock").clone()
    }
}

async fn export(State(received): State<Received>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut spans = received.0.lock().expect("lock");
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .and_then(|v| match v {
                AnyValue::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push((service.clone(), span));
            }
        }
    }
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

/// An OTLP/HTTP receiver on a random port: its endpoint and what it received.
async fn receiver() -> (String, Received) {
    let received = Received::default();
    let app = Router::new()
        .route("/v1/traces", post(export))
        .with_state(received.clone())
        .layer(axum::middleware::map_response(
            |mut response: axum::response::Response| async move {
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/x-protobuf"),
                );
                response
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), received)
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

/// Waits until `find` returns something from the spans received so far.
async fn wait_span<T>(
    received: &Received,
    what: &str,
    find: impl Fn(&[(String, Span)]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = find(&received.spans()) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} among {:#?}",
            received
                .spans()
                .iter()
                .map(|(_, s)| format!(
                    "{} trace {} attributes {:?}",
                    s.name,
                    hex::encode(&s.trace_id),
                    s.attributes
                        .iter()
                        .map(|kv| format!("{}={:?}", kv.key, kv.value))
                        .collect::<Vec<_>>()
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN_ID: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_linked_from_request_to_projection_batches() {
    let (endpoint, received) = receiver().await;
    let db = TestDb::migrated().await;
    let server = Server::spawn(
        &db.url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "wallex-test"),
        ],
    );
    let http = client();
    let key = fresh_id("key");
    let body = wallet_body(&fresh_id("traced"));
    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN_ID}-01");
    let created = post_wallet(
        &http,
        &server,
        &body,
        &[
            ("traceparent", &traceparent),
            ("x-correlation-id", "corr-traced"),
            ("idempotency-key", &key),
        ],
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());

    // The request span continues the client's trace, with its correlation id and status.
    let request = wait_span(&received, "request span", |spans| {
        spans
            .iter()
            .find(|(_, s)| s.name == "POST /wallets" && hex::encode(&s.trace_id) == TRACE_ID)
            .cloned()
    })
    .await;
    assert_eq!(request.0, "wallex-test");
    let request = request.1;
    assert_eq!(hex::encode(&request.parent_span_id), CLIENT_SPAN_ID);
    assert_eq!(
        attribute(&request, "correlation_id").as_deref(),
        Some("corr-traced")
    );
    assert_eq!(
        attribute(&request, "http.response.status_code").as_deref(),
        Some("201")
    );
    assert_eq!(
        attribute(&request, "http.route").as_deref(),
        Some("/wallets")
    );

    // The write transaction links to the request's trace; the claim is its child.
    let transaction = wait_span(&received, "write transaction span", |spans| {
        spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| {
                s.name == "wallet.write_transaction"
                    && s.links.iter().any(|l| hex::encode(&l.trace_id) == TRACE_ID)
            })
            .cloned()
    })
    .await;
    wait_span(&received, "claim span under the transaction", |spans| {
        spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.name == "idempotency.claim" && s.parent_span_id == transaction.span_id)
            .cloned()
    })
    .await;

    // Each bundled projection's batch links to the request span itself.
    for projection in ["read-model", "ledger", "audit"] {
        let batch = wait_span(&received, &format!("{projection} batch span"), |spans| {
            spans
                .iter()
                .map(|(_, s)| s)
                .find(|s| {
                    s.name == "projection.batch"
                        && attribute(s, "projection").as_deref() == Some(projection)
                        && s.links
                            .iter()
                            .any(|l| l.trace_id == request.trace_id && l.span_id == request.span_id)
                })
                .cloned()
        })
        .await;
        assert!(batch.parent_span_id.is_empty(), "a batch span is a root");
        let to: i64 = attribute(&batch, "to_position")
            .and_then(|p| p.parse().ok())
            .expect("to_position");
        let position: i64 = created
            .header("x-global-position")
            .and_then(|p| p.parse().ok())
            .expect("position");
        assert!(to >= position, "{projection}: batch to {to} < {position}");
        assert!(attribute(&batch, "from_position").is_some());
        assert_eq!(attribute(&batch, "linked_traces").as_deref(), Some("1"));
    }

    // A replay: its look-up span says so, under the replay's own request span.
    let replay_trace = "0af7651916cd43dd8448eb211c80319c";
    let replayed = post_wallet(
        &http,
        &server,
        &body,
        &[
            (
                "traceparent",
                &format!("00-{replay_trace}-b7ad6b7169203331-01"),
            ),
            ("idempotency-key", &key),
        ],
    )
    .await;
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    wait_span(&received, "replay look-up span", |spans| {
        spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| {
                s.name == "idempotency.lookup"
                    && hex::encode(&s.trace_id) == replay_trace
                    && attribute(s, "replayed").as_deref() == Some("true")
            })
            .cloned()
    })
    .await;

    // A malformed traceparent is ignored: the request succeeds and starts a new trace.
    let fresh = post_wallet(
        &http,
        &server,
        &wallet_body(&fresh_id("untraced")),
        &[
            ("traceparent", "00-not-a-trace-01"),
            ("x-correlation-id", "corr-malformed"),
        ],
    )
    .await;
    assert_eq!(fresh.status, 201, "{}", fresh.text());
    let fresh_span = wait_span(
        &received,
        "request span of the malformed traceparent",
        |spans| {
            spans
                .iter()
                .map(|(_, s)| s)
                .find(|s| attribute(s, "correlation_id").as_deref() == Some("corr-malformed"))
                .cloned()
        },
    )
    .await;
    assert!(
        fresh_span.parent_span_id.is_empty(),
        "a new trace has no parent"
    );
    assert_eq!(fresh_span.trace_id.len(), 16);
    assert!(fresh_span.trace_id.iter().any(|b| *b != 0));
    assert_ne!(hex::encode(&fresh_span.trace_id), TRACE_ID);
    // Nothing answered 4xx/5xx for a bad header.
    let by_status: HashMap<String, usize> = received
        .spans()
        .iter()
        .filter_map(|(_, s)| attribute(s, "http.response.status_code"))
        .fold(HashMap::new(), |mut counts, status| {
            *counts.entry(status).or_default() += 1;
            counts
        });
    assert!(
        by_status.keys().all(|status| status.starts_with('2')),
        "{by_status:?}"
    );
    drop(server);
    drop(db);
}

#[test]
fn an_unsupported_otlp_protocol_is_a_one_line_startup_error() {
    for (protocol, endpoint) in [
        ("grpc", "http://127.0.0.1:4318"),
        ("http/protobuf", "::nope::"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_wallex"))
            .arg("serve")
            .env(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:1/never_reached",
            )
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .current_dir(std::env::temp_dir())
            .output()
            .expect("run");
        assert_one_line_error(&output, "error: OpenTelemetry: ");
    }
}
