//! The audit projection: an append-only log of every event with its correlation and causation ids.
//!
//! It exists so that operators can answer "what happened, and because of which request" without
//! reading the event store, and as the example of a projection that subscribes to every event
//! type (`"*"`). Rows are keyed by global position and upserted, so a replay rewrites identical
//! rows instead of failing or duplicating them.

wit_bindgen::generate!({ world: "projection", path: "../../wit" });

use serde_json::Value as Json;
use wallex::projection::types::{Column, ColumnType, ColumnValue, Index, Table, UpsertOp, Value};

struct Audit;

impl Guest for Audit {
    fn describe() -> ProjectionInfo {
        let column = |name: &str, r#type, nullable| Column {
            name: name.into(),
            type_: r#type,
            nullable,
        };
        ProjectionInfo {
            name: "audit".into(),
            schema_version: 1,
            subscribes_to: vec!["*".into()],
            tables: vec![Table {
                name: "events".into(),
                columns: vec![
                    column("global_position", ColumnType::S64, false),
                    column("event_id", ColumnType::Uuid, false),
                    column("stream_id", ColumnType::Text, false),
                    column("stream_version", ColumnType::S64, false),
                    column("event_type", ColumnType::Text, false),
                    column("correlation_id", ColumnType::Text, true),
                    column("causation_id", ColumnType::Text, true),
                    column("data", ColumnType::Json, false),
                    column("recorded_at", ColumnType::Timestamp, false),
                ],
                primary_key: vec!["global_position".into()],
                indexes: vec![Index {
                    name: "events_by_correlation".into(),
                    columns: vec!["correlation_id".into()],
                    unique: false,
                }],
            }],
        }
    }

    fn handle(batch: Vec<Event>) -> Result<Vec<Mutation>, ProjectionError> {
        batch.into_iter().map(audit_row).collect()
    }
}

fn audit_row(event: Event) -> Result<Mutation, ProjectionError> {
    let metadata: Json = serde_json::from_str(&event.metadata).map_err(|e| ProjectionError {
        message: format!("metadata of {}: {e}", event.event_id),
        global_position: Some(event.global_position),
    })?;
    let id = |field: &str| match metadata[field].as_str() {
        Some(id) => Value::Text(id.to_owned()),
        None => Value::Null,
    };
    let value = |column: &str, value| ColumnValue {
        column: column.into(),
        value,
    };
    Ok(Mutation::Upsert(UpsertOp {
        table: "events".into(),
        values: vec![
            value("global_position", Value::S64(event.global_position)),
            value("event_id", Value::Uuid(event.event_id)),
            value("stream_id", Value::Text(event.stream_id)),
            value("stream_version", Value::S64(event.stream_version)),
            value("event_type", Value::Text(event.event_type)),
            value("correlation_id", id("correlationId")),
            value("causation_id", id("causationId")),
            value("data", Value::Json(event.data)),
            value("recorded_at", Value::Timestamp(event.recorded_at)),
        ],
        accumulate: vec![],
        guard: vec![],
    }))
}

export!(Audit);
