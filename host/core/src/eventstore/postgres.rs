//! The PostgreSQL event store: the `events` table, appended in the caller's transaction.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use std::collections::HashMap;

use super::{
    EventMetadata, EventStore, EventStoreError, ExpectedVersion, NewEvent, RecordedEvent,
    StreamAppend,
};

/// Event store on the `events` table of the wallex database.
#[derive(Debug, Clone)]
pub struct PgEventStore {
    pool: PgPool,
}

impl PgEventStore {
    /// An event store on `pool`; the pool is used for reads, appends use the caller's transaction.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn backend(error: impl std::error::Error + Send + Sync + 'static) -> EventStoreError {
    EventStoreError::Backend(Box::new(error))
}

impl EventStore for PgEventStore {
    type Transaction = Transaction<'static, Postgres>;

    async fn append(
        &self,
        tx: &mut Self::Transaction,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
        recorded_at: DateTime<Utc>,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        append_in(tx, stream, expected, events, recorded_at).await
    }

    async fn append_many(
        &self,
        tx: &mut Self::Transaction,
        appends: &[StreamAppend<'_>],
        recorded_at: DateTime<Utc>,
    ) -> Result<Vec<Result<Vec<RecordedEvent>, EventStoreError>>, EventStoreError> {
        let single_new = appends
            .iter()
            .all(|append| append.expected == ExpectedVersion::NoStream && append.events.len() == 1);
        if single_new {
            return append_new_streams(tx, appends, recorded_at).await;
        }
        // The general case: each append in a savepoint, so that a failed check writes nothing.
        let mut outcomes = Vec::with_capacity(appends.len());
        for append in appends {
            let mut savepoint = sqlx::Acquire::begin(&mut **tx).await.map_err(backend)?;
            let outcome = append_in(
                &mut savepoint,
                append.stream,
                append.expected,
                append.events,
                recorded_at,
            )
            .await;
            match &outcome {
                Ok(_) => savepoint.commit().await.map_err(backend)?,
                Err(EventStoreError::WrongExpectedVersion { .. }) => {
                    savepoint.rollback().await.map_err(backend)?;
                }
                Err(_) => return outcome.map(|_| Vec::new()),
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<RecordedEvent>, EventStoreError> {
        self.read_page(stream, 1, i64::MAX).await
    }
}

impl PgEventStore {
    /// Up to `limit` events of `stream` from version `from_version`, in version order.
    pub async fn read_page(
        &self,
        stream: &str,
        from_version: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT global_position, event_id, stream_id, stream_version, event_type, data, metadata, recorded_at
             FROM events WHERE stream_id = $1 AND stream_version >= $2
             ORDER BY stream_version LIMIT $3",
        )
        .bind(stream)
        .bind(from_version)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter()
            .map(|row| {
                Ok(RecordedEvent {
                    metadata: serde_json::from_value::<EventMetadata>(row.metadata)
                        .map_err(backend)?,
                    global_position: row.global_position,
                    event_id: row.event_id,
                    stream_id: row.stream_id,
                    stream_version: row.stream_version,
                    event_type: row.event_type,
                    data: row.data,
                    recorded_at: row.recorded_at,
                })
            })
            .collect()
    }
}

/// One stream's append, in `tx` (the write transaction or a savepoint of it).
async fn append_in(
    tx: &mut Transaction<'_, Postgres>,
    stream: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
    recorded_at: DateTime<Utc>,
) -> Result<Vec<RecordedEvent>, EventStoreError> {
    if events.is_empty() {
        return Err(EventStoreError::EmptyAppend);
    }
    let first_version = match expected {
        ExpectedVersion::NoStream => 1,
        ExpectedVersion::Exact(version) => version + 1,
    };
    let mut recorded = Vec::with_capacity(events.len());
    for (offset, event) in (0_i64..).zip(events) {
        let stream_version = first_version + offset;
        let metadata = serde_json::to_value(&event.metadata).map_err(backend)?;
        // A conflict on (stream_id, stream_version) means another writer got there first: the
        // insert returns no row instead of aborting the caller's transaction.
        let position: Option<(i64,)> = sqlx::query_as(
                "INSERT INTO events (event_id, stream_id, stream_version, event_type, data, metadata, recorded_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (stream_id, stream_version) DO NOTHING
                 RETURNING global_position",
            )
            .bind(event.event_id)
            .bind(stream)
            .bind(stream_version)
            .bind(&event.event_type)
            .bind(&event.data)
            .bind(&metadata)
            .bind(recorded_at)
            .fetch_optional(&mut **tx)
            .await
            .map_err(backend)?;
        let Some((global_position,)) = position else {
            return Err(EventStoreError::WrongExpectedVersion {
                stream: stream.to_owned(),
                expected,
            });
        };
        if offset == 0 && first_version > 1 {
            // Exact(n) also needs version n to exist.
            let previous: Option<(i64,)> = sqlx::query_as(
                "SELECT stream_version FROM events WHERE stream_id = $1 AND stream_version = $2",
            )
            .bind(stream)
            .bind(first_version - 1)
            .fetch_optional(&mut **tx)
            .await
            .map_err(backend)?;
            if previous.is_none() {
                return Err(EventStoreError::WrongExpectedVersion {
                    stream: stream.to_owned(),
                    expected,
                });
            }
        }
        recorded.push(RecordedEvent {
            global_position,
            event_id: event.event_id,
            stream_id: stream.to_owned(),
            stream_version,
            event_type: event.event_type.clone(),
            data: event.data.clone(),
            metadata: event.metadata.clone(),
            recorded_at,
        });
    }
    Ok(recorded)
}

/// [`EventStore::append_many`] when every append creates a stream with one event: one statement.
/// A stream that exists already (or appears twice) returns no row for that append.
async fn append_new_streams(
    tx: &mut Transaction<'static, Postgres>,
    appends: &[StreamAppend<'_>],
    recorded_at: DateTime<Utc>,
) -> Result<Vec<Result<Vec<RecordedEvent>, EventStoreError>>, EventStoreError> {
    let mut ids = Vec::with_capacity(appends.len());
    let mut streams = Vec::with_capacity(appends.len());
    let mut types = Vec::with_capacity(appends.len());
    let mut data = Vec::with_capacity(appends.len());
    let mut metadata = Vec::with_capacity(appends.len());
    for append in appends {
        let event = &append.events[0];
        ids.push(event.event_id);
        streams.push(append.stream);
        types.push(event.event_type.as_str());
        data.push(&event.data);
        metadata.push(serde_json::to_value(&event.metadata).map_err(backend)?);
    }
    // Rows are inserted in input order, so positions grow with it and the first of two appends
    // to one stream is the one written.
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "INSERT INTO events (event_id, stream_id, stream_version, event_type, data, metadata, recorded_at)
         SELECT id, stream, 1, type, data, metadata, $6
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[])
              WITH ORDINALITY AS input (id, stream, type, data, metadata, n)
         ORDER BY n
         ON CONFLICT (stream_id, stream_version) DO NOTHING
         RETURNING global_position, stream_id",
    )
    .bind(&ids)
    .bind(&streams)
    .bind(&types)
    .bind(&data)
    .bind(&metadata)
    .bind(recorded_at)
    .fetch_all(&mut **tx)
    .await
    .map_err(backend)?;
    let mut positions: HashMap<String, i64> = rows
        .into_iter()
        .map(|(position, stream)| (stream, position))
        .collect();
    Ok(appends
        .iter()
        .map(|append| match positions.remove(append.stream) {
            Some(global_position) => {
                let event = &append.events[0];
                Ok(vec![RecordedEvent {
                    global_position,
                    event_id: event.event_id,
                    stream_id: append.stream.to_owned(),
                    stream_version: 1,
                    event_type: event.event_type.clone(),
                    data: event.data.clone(),
                    metadata: event.metadata.clone(),
                    recorded_at,
                }])
            }
            None => Err(EventStoreError::WrongExpectedVersion {
                stream: append.stream.to_owned(),
                expected: append.expected,
            }),
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct EventRow {
    global_position: i64,
    event_id: Uuid,
    stream_id: String,
    stream_version: i64,
    event_type: String,
    data: serde_json::Value,
    metadata: serde_json::Value,
    recorded_at: DateTime<Utc>,
}
