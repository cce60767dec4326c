//! wallex-telemetry: what wallex reports about itself, and where it goes.
//!
//! Why it exists: logs, traces and metrics are set up once per process, and every crate reports
//! through the same two facades (`tracing` for spans and events, `metrics` for counters, gauges
//! and histograms). This crate is the one place that names the metrics (so their names, types,
//! units and buckets cannot drift between the code, `/metrics` and the alert rules), that knows
//! W3C trace context, and that installs the exporters: Prometheus text for metrics, OTLP over
//! HTTP for traces when the standard OpenTelemetry environment variables ask for it.
//!
//! Architecture invariant: the other crates never touch an exporter or a global subscriber; they
//! call the facades with the names of [`catalogue`] and the helpers of [`context`]. API boundary:
//! it knows nothing of wallets, projections or HTTP routes.
//!
//! # Layout
//!
//! - this file — [`init`], [`Telemetry`] (the handles of what was installed), [`TelemetryError`];
//! - [`catalogue`] — every metric's name, description, unit and histogram buckets;
//! - [`context`] — W3C `traceparent`: read from headers, written into event metadata, turned into
//!   span links;
//! - [`otlp`] — the OTLP trace exporter from the standard `OTEL_*` environment variables.

#![deny(missing_docs)]

pub mod catalogue;
pub mod context;
pub mod otlp;

use std::io::IsTerminal;

use metrics_exporter_prometheus::PrometheusHandle;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// What to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// How logs are written to standard output.
    pub log_format: LogFormat,
    /// Install the Prometheus recorder behind the `metrics` facade (without it every metric is a
    /// no-op and `/metrics` has nothing to render).
    pub metrics: bool,
    /// Export spans over OTLP when the environment configures an endpoint (the server does; the
    /// CLI and the benchmarks do not).
    pub traces: bool,
}

/// Errors of the set-up; each ends start-up with its message.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter's configuration (environment variables) is invalid.
    #[error("OpenTelemetry: {0}")]
    Otlp(String),
    /// A global metrics recorder is installed already.
    #[error("the metrics recorder could not be installed: {0}")]
    Recorder(String),
}

/// The handles of what [`init`] installed.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    prometheus: Option<PrometheusHandle>,
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Renders the metrics in the Prometheus text format, when the recorder is installed.
    pub fn prometheus(&self) -> Option<&PrometheusHandle> {
        self.prometheus.as_ref()
    }

    /// Exports the spans still buffered and stops the exporter (at shutdown).
    pub fn shutdown(&self) {
        if let Some(provider) = &self.tracer_provider {
            if let Err(error) = provider.shutdown() {
                tracing::warn!(%error, "the OTLP exporter did not shut down cleanly");
            }
        }
    }
}

/// The spans exported over OTLP: wallex's own at `debug` and above, whatever `RUST_LOG` says
/// about logs (libraries' spans are not exported). The spans of a request, a write transaction
/// and a projection batch are `debug` spans: logs at the default `info` do not build them, so
/// without an OTLP endpoint they cost nothing.
fn traced_targets() -> Targets {
    TRACED_CRATES.iter().fold(Targets::new(), |targets, krate| {
        targets.with_target(*krate, Level::DEBUG)
    })
}

/// The crates whose spans are exported.
const TRACED_CRATES: [&str; 5] = [
    "wallex",
    "wallex_core",
    "wallex_runtime",
    "wallex_http",
    "wallex_telemetry",
];

/// Installs the global `tracing` subscriber (logs filtered by `RUST_LOG`, default `info`), the
/// OTLP layer when [`otlp::provider`] finds an endpoint configured, and the Prometheus recorder
/// when `config.metrics`. Call it once per process; a second call keeps the first subscriber and
/// fails on the recorder.
pub fn init(config: TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let tracer_provider = if config.traces {
        otlp::provider()?
    } else {
        None
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stdout().is_terminal();
    let logs = match config.log_format {
        LogFormat::Text => fmt::layer().with_target(true).with_ansi(ansi).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_target(true)
            .boxed(),
    };
    let traces = tracer_provider.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("wallex"))
            .with_filter(traced_targets())
    });
    // A second init (e.g. in tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .try_init();
    if tracer_provider.is_some() {
        context::set_exporting();
    }
    let prometheus = if config.metrics {
        Some(catalogue::install_prometheus()?)
    } else {
        None
    };
    Ok(Telemetry {
        prometheus,
        tracer_provider,
    })
}
