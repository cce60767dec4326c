//! The OTLP trace exporter, configured by the standard OpenTelemetry environment variables.
//!
//! Why it exists: operators point wallex at their collector the way they point every other
//! service at it. Spans are exported only when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and `OTEL_SDK_DISABLED` is not `true`, and
//! `OTEL_TRACES_EXPORTER` is not `none`); otherwise nothing is exported and nothing is buffered.
//! The OpenTelemetry SDK itself reads the rest: `OTEL_EXPORTER_OTLP_*_HEADERS`, `…_TIMEOUT`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`.

use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

use crate::TelemetryError;

/// `service.name` when `OTEL_SERVICE_NAME` does not set one.
pub const DEFAULT_SERVICE_NAME: &str = "wallex";

/// Environment variables that name the endpoint, most specific first.
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];
/// Environment variables that name the protocol, most specific first.
const PROTOCOL_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// Whether the environment asks for traces to be exported.
pub fn configured() -> bool {
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let none = env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && !none && ENDPOINT_VARS.iter().any(|var| env(var).is_some())
}

/// The protocol the environment names: `http/protobuf` (the default) or `http/json`. gRPC is
/// not built in (it would add a second HTTP stack); asking for it is a start-up error.
fn protocol() -> Result<Protocol, TelemetryError> {
    let Some((var, value)) = PROTOCOL_VARS
        .iter()
        .find_map(|var| env(var).map(|value| (*var, value)))
    else {
        return Ok(Protocol::HttpBinary);
    };
    match value.as_str() {
        "http/protobuf" => Ok(Protocol::HttpBinary),
        "http/json" => Ok(Protocol::HttpJson),
        other => Err(TelemetryError::Otlp(format!(
            "{var}={other} is not supported; use http/protobuf (port 4318) or http/json"
        ))),
    }
}

/// The tracer provider exporting to the configured endpoint in batches, or `None` when
/// [`configured`] is false.
pub fn provider() -> Result<Option<SdkTracerProvider>, TelemetryError> {
    if !configured() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol()?)
        .build()
        .map_err(|error| TelemetryError::Otlp(error.to_string()))?;
    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(Some(provider))
}
