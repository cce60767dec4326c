//! The audit projection: an append-only log of every event with its correlation and causation ids.
//!
//! It exists so that operators can answer "what happened, and because of which request" without
//! reading the event store, and as the example of a projection that subscribes to every event
//! type (`"*"`). Rows are keyed by global position and upserted, so a replay rewrites identical
//! rows instead of failing or duplicating them.

use wallex_projection_sdk::ColumnType::*;
use wallex_projection_sdk::{Event, Mutation, Projection, ProjectionInfo, Result, Table, Upsert};

struct Audit;

impl Projection for Audit {
    fn describe() -> ProjectionInfo {
        ProjectionInfo::new("audit", 1).subscribe_all().table(
            Table::new("events")
                .column("global_position", S64)
                .column("event_id", Uuid)
                .column("stream_id", Text)
                .column("stream_version", S64)
                .column("event_type", Text)
                .nullable_column("correlation_id", Text)
                .nullable_column("causation_id", Text)
                .column("data", Json)
                .column("recorded_at", Timestamp)
                .primary_key(["global_position"])
                .index("events_by_correlation", ["correlation_id"]),
        )
    }

    fn handle(batch: Vec<Event>) -> Result<Vec<Mutation>> {
        batch.into_iter().map(audit_row).collect()
    }
}

fn audit_row(event: Event) -> Result<Mutation> {
    // Lenient: a missing or non-string id is NULL; only metadata that is not JSON fails.
    let metadata = event.decode_metadata()?;
    Ok(Upsert::into("events")
        .set("global_position", event.global_position)
        .set("event_id", event.event_id)
        .set("stream_id", event.stream_id)
        .set("stream_version", event.stream_version)
        .set("event_type", event.event_type)
        .set("correlation_id", metadata.correlation_id())
        .set("causation_id", metadata.causation_id())
        .set("data", event.data)
        .set("recorded_at", event.recorded_at)
        .into())
}

wallex_projection_sdk::export!(Audit);
