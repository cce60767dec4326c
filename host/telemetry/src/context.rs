//! W3C trace context (`traceparent`): accepted from clients, carried in event metadata, turned
//! into span parents and links.
//!
//! Why it exists: a request and the projection batches that later apply its event belong to the
//! same story. The request's span continues the client's trace (`traceparent` header); the
//! event's metadata records the request span's `traceparent`; the batch span that applies the
//! event links to it. Parsing and formatting are the OpenTelemetry propagator's, not ours: a
//! malformed `traceparent` is ignored and a new trace starts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Name of the W3C header, and of the key in event metadata.
pub const TRACEPARENT: &str = "traceparent";
/// Most links one span carries (OpenTelemetry's default span limit): a batch of more events
/// links to the first this many distinct traces.
pub const MAX_LINKS_PER_SPAN: usize = 128;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Marks spans as exported (called by [`crate::init`]).
pub(crate) fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether spans are exported: links and parents are only worth computing then.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct One<'a>(&'a str);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// The remote parent a request's headers name, if their `traceparent` is valid.
pub fn from_headers(headers: &http::HeaderMap) -> Option<Context> {
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// The context a `traceparent` value names, if it is valid.
pub fn from_traceparent(traceparent: &str) -> Option<Context> {
    let cx = TraceContextPropagator::new().extract(&One(traceparent));
    cx.span().span_context().is_valid().then_some(cx)
}

/// The `traceparent` of a context, if it has a valid span.
pub fn traceparent_of(cx: &Context) -> Option<String> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The `traceparent` to record for work done under `span`: the span itself while spans are
/// exported; otherwise the client's own `traceparent` (normalised), so that the trace still
/// reaches the events when wallex exports nothing.
pub fn traceparent_for(span: &tracing::Span, client: Option<&Context>) -> Option<String> {
    if exporting() {
        if let Some(traceparent) = traceparent_of(&span.context()) {
            return Some(traceparent);
        }
    }
    client.and_then(traceparent_of)
}

/// Makes `span` a child of the client's span (no-op while nothing is exported).
pub fn set_parent(span: &tracing::Span, client: Context) {
    if exporting() {
        // Fails only when the span is disabled: then there is nothing to parent.
        let _ = span.set_parent(client);
    }
}

/// Links `span` to the spans the given `traceparent`s name, at most [`MAX_LINKS_PER_SPAN`]
/// distinct ones; invalid values are skipped. Returns how many links were added.
pub fn link_all<'a>(span: &tracing::Span, traceparents: impl Iterator<Item = &'a str>) -> usize {
    if !exporting() || span.is_disabled() {
        return 0;
    }
    let mut seen = std::collections::HashSet::new();
    for traceparent in traceparents {
        if seen.len() >= MAX_LINKS_PER_SPAN {
            break;
        }
        if !seen.insert(traceparent) {
            continue;
        }
        if let Some(cx) = from_traceparent(traceparent) {
            span.add_link(cx.span().span_context().clone());
        } else {
            seen.remove(traceparent);
        }
    }
    seen.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let cx = from_traceparent(VALID).expect("valid");
        assert_eq!(traceparent_of(&cx).as_deref(), Some(VALID));
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(from_traceparent(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn headers_carry_the_traceparent() {
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, http::HeaderValue::from_static(VALID));
        let cx = from_headers(&headers).expect("valid");
        assert_eq!(traceparent_of(&cx).as_deref(), Some(VALID));
        headers.insert(TRACEPARENT, http::HeaderValue::from_static("nope"));
        assert!(from_headers(&headers).is_none());
    }
}
