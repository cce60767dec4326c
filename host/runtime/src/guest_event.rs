//! An outbox row as the WIT record a component is called with.
//!
//! Why it exists: the sandbox (`wallex-sandbox`) knows no event log; the runtime reads outbox rows
//! (`wallex_core::outbox::OutboxEvent`) and hands the sandbox their WIT form. This is the one place
//! that form is built, for the worker, a single-event evaluation and a stream repair alike.

use chrono::SecondsFormat;
use wallex_core::outbox::OutboxEvent;
use wallex_sandbox::engine::wit;

/// The guest's view of an outbox row.
pub fn to_guest_event(event: &OutboxEvent) -> wit::Event {
    wit::Event {
        global_position: event.global_position,
        order: wit::LogOrder {
            // xid8 values are epoch << 32 | xid: far below i64::MAX for any real cluster.
            xact_id: i64::try_from(event.xact_id).unwrap_or(i64::MAX),
            position: event.global_position,
        },
        event_id: event.event_id.to_string(),
        stream_id: event.stream_id.clone(),
        stream_version: event.stream_version,
        event_type: event.event_type.clone(),
        data: event.data.to_string(),
        metadata: event.metadata.to_string(),
        recorded_at: event
            .recorded_at
            .to_rfc3339_opts(SecondsFormat::Micros, true),
    }
}
