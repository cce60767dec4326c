//! The transactional outbox: the ordered log that projections consume.
//!
//! Why it exists: the write path enqueues every event here in the same PostgreSQL transaction that
//! appends it and writes the wallet snapshot, so a projection can never miss an event that was
//! committed, nor see one that was rolled back.
//!
//! Ordering. Global positions come from a sequence, so they are unique but transactions can commit
//! out of position order: a reader that checkpointed position 10 would skip position 9 if 9's
//! transaction commits afterwards. The reader therefore
//! 1. only returns rows written by transactions older than the oldest transaction still running
//!    (`xact_id < pg_snapshot_xmin(pg_current_snapshot())`): such rows are final, and every future
//!    row gets a larger transaction id; and
//! 2. orders and checkpoints by `(xact_id, global_position)`, a total order in which nothing new can
//!    ever appear below a cursor that was read.
//!
//! Within one stream the order is the stream-version order: version n+1 is written by a
//! transaction that started after version n committed, so it has a larger transaction id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::eventstore::RecordedEvent;

/// Where a consumer stands in the outbox: the last row it has processed, in read order.
/// `OutboxCursor::START` is before every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OutboxCursor {
    /// Id (`xid8`) of the transaction that wrote the last processed row.
    pub xact_id: u64,
    /// Global position of the last processed row.
    pub position: i64,
}

impl OutboxCursor {
    /// Before the first row.
    pub const START: OutboxCursor = OutboxCursor {
        xact_id: 0,
        position: 0,
    };
}

/// One row of the outbox: a complete event plus the id of the transaction that enqueued it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// The event's place in the global log; unique, but not the read order.
    pub global_position: i64,
    /// The event's id, as appended to the event store.
    pub event_id: Uuid,
    /// The stream the event belongs to, e.g. `wallet-{id}`.
    pub stream_id: String,
    /// The event's place in its stream, from 1.
    pub stream_version: i64,
    /// What happened, e.g. `WalletCreated`; tells consumers how to interpret `data`.
    pub event_type: String,
    /// The event's payload, as JSON.
    pub data: serde_json::Value,
    /// The event's metadata as stored JSON, kept undecoded so that consumers see it unchanged.
    pub metadata: serde_json::Value,
    /// When the event was appended.
    pub recorded_at: DateTime<Utc>,
    /// Id (`xid8`) of the transaction that enqueued the row; with `global_position` it gives the
    /// gap-safe read order.
    pub xact_id: u64,
}

impl OutboxEvent {
    /// The cursor that points at this row: a consumer that processed it stores this.
    pub fn cursor(&self) -> OutboxCursor {
        OutboxCursor {
            xact_id: self.xact_id,
            position: self.global_position,
        }
    }
}

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A query on the `outbox` table failed.
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
    /// An event's metadata could not be turned into JSON for its row.
    #[error("event metadata could not be encoded: {0}")]
    Encoding(#[from] serde_json::Error),
    /// A row's transaction id did not fit a `u64` (it holds the id as read, in text).
    #[error("transaction id {0} in the outbox is out of range")]
    XactIdOutOfRange(String),
}

/// Enqueues recorded events in the caller's transaction. The row's `xact_id` is the enqueuing
/// transaction's id (column default), which is what makes the reader gap-safe.
pub async fn enqueue<'e>(
    executor: impl PgExecutor<'e>,
    events: &[RecordedEvent],
) -> Result<(), OutboxError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut positions = Vec::with_capacity(events.len());
    let mut ids = Vec::with_capacity(events.len());
    let mut streams = Vec::with_capacity(events.len());
    let mut versions = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut data = Vec::with_capacity(events.len());
    let mut metadata = Vec::with_capacity(events.len());
    let mut recorded = Vec::with_capacity(events.len());
    for event in events {
        positions.push(event.global_position);
        ids.push(event.event_id);
        streams.push(event.stream_id.clone());
        versions.push(event.stream_version);
        types.push(event.event_type.clone());
        data.push(event.data.clone());
        metadata.push(serde_json::to_value(&event.metadata)?);
        recorded.push(event.recorded_at);
    }
    sqlx::query(
        "INSERT INTO outbox (global_position, event_id, stream_id, stream_version, event_type, data, metadata, recorded_at)
         SELECT * FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::jsonb[], $7::jsonb[], $8::timestamptz[])",
    )
    .bind(&positions)
    .bind(&ids)
    .bind(&streams)
    .bind(&versions)
    .bind(&types)
    .bind(&data)
    .bind(&metadata)
    .bind(&recorded)
    .execute(executor)
    .await?;
    Ok(())
}

/// `SELECT <every column of an outbox row> FROM outbox <rest>`: the one column list the
/// readers decode ([`OutboxRow`]).
macro_rules! outbox_rows {
    ($rest:literal) => {
        concat!(
            "SELECT global_position, event_id, stream_id, stream_version, event_type, data,
                    metadata, recorded_at, xact_id::text AS xact_id
             FROM outbox ",
            $rest
        )
    };
}

/// Reads up to `limit` committed rows after `after`, in read order, never returning a row while a
/// transaction that could still commit a row before it is running (see the module docs).
pub async fn read_batch<'e>(
    executor: impl PgExecutor<'e>,
    after: OutboxCursor,
    limit: u32,
) -> Result<Vec<OutboxEvent>, OutboxError> {
    // ORDER BY names the table's columns: the bare `xact_id` would be the `xact_id::text` output
    // alias, sorting transaction ids as text ("1000" < "999", skipping rows) and without the index.
    let rows: Vec<OutboxRow> = sqlx::query_as(outbox_rows!(
        "WHERE (xact_id, global_position) > ($1::text::xid8, $2)
           AND xact_id < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY outbox.xact_id, outbox.global_position
         LIMIT $3"
    ))
    .bind(after.xact_id.to_string())
    .bind(after.position)
    .bind(i64::from(limit))
    .fetch_all(executor)
    .await?;
    rows.into_iter().map(OutboxRow::into_event).collect()
}

/// Like [`read_batch`], but never past `until` (inclusive): a drift check's shadow replays the
/// log exactly up to the live checkpoint, its consistent cut.
pub async fn read_batch_until<'e>(
    executor: impl PgExecutor<'e>,
    after: OutboxCursor,
    until: OutboxCursor,
    limit: u32,
) -> Result<Vec<OutboxEvent>, OutboxError> {
    let rows: Vec<OutboxRow> = sqlx::query_as(outbox_rows!(
        "WHERE (xact_id, global_position) > ($1::text::xid8, $2)
           AND (xact_id, global_position) <= ($3::text::xid8, $4)
           AND xact_id < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY outbox.xact_id, outbox.global_position
         LIMIT $5"
    ))
    .bind(after.xact_id.to_string())
    .bind(after.position)
    .bind(until.xact_id.to_string())
    .bind(until.position)
    .bind(i64::from(limit))
    .fetch_all(executor)
    .await?;
    rows.into_iter().map(OutboxRow::into_event).collect()
}

/// One stream's rows up to `until` (inclusive), in read order, at most `limit` of them (a
/// one-stream repair replays them).
pub async fn read_stream_until<'e>(
    executor: impl PgExecutor<'e>,
    stream_id: &str,
    until: OutboxCursor,
    limit: u32,
) -> Result<Vec<OutboxEvent>, OutboxError> {
    let rows: Vec<OutboxRow> = sqlx::query_as(outbox_rows!(
        "WHERE stream_id = $1 AND (xact_id, global_position) <= ($2::text::xid8, $3)
         ORDER BY outbox.xact_id, outbox.global_position
         LIMIT $4"
    ))
    .bind(stream_id)
    .bind(until.xact_id.to_string())
    .bind(until.position)
    .bind(i64::from(limit))
    .fetch_all(executor)
    .await?;
    rows.into_iter().map(OutboxRow::into_event).collect()
}

/// The outbox row at `position`, if there is one (dead-letter replays).
pub async fn read_at(
    conn: &mut sqlx::PgConnection,
    position: i64,
) -> Result<Option<OutboxEvent>, OutboxError> {
    let row: Option<OutboxRow> = sqlx::query_as(outbox_rows!("WHERE global_position = $1"))
        .bind(position)
        .fetch_optional(conn)
        .await?;
    row.map(OutboxRow::into_event).transpose()
}

/// The cursor of the row at `position`, if that row is in the outbox. Used to turn a global
/// position (what clients see) into a point in read order.
pub async fn cursor_of<'e>(
    executor: impl PgExecutor<'e>,
    position: i64,
) -> Result<Option<OutboxCursor>, OutboxError> {
    let xact: Option<(String,)> =
        sqlx::query_as("SELECT xact_id::text FROM outbox WHERE global_position = $1")
            .bind(position)
            .fetch_optional(executor)
            .await?;
    xact.map(|(xact_id,)| {
        Ok(OutboxCursor {
            xact_id: parse_xact_id(&xact_id)?,
            position,
        })
    })
    .transpose()
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    global_position: i64,
    event_id: Uuid,
    stream_id: String,
    stream_version: i64,
    event_type: String,
    data: serde_json::Value,
    metadata: serde_json::Value,
    recorded_at: DateTime<Utc>,
    xact_id: String,
}

impl OutboxRow {
    fn into_event(self) -> Result<OutboxEvent, OutboxError> {
        Ok(OutboxEvent {
            xact_id: parse_xact_id(&self.xact_id)?,
            global_position: self.global_position,
            event_id: self.event_id,
            stream_id: self.stream_id,
            stream_version: self.stream_version,
            event_type: self.event_type,
            data: self.data,
            metadata: self.metadata,
            recorded_at: self.recorded_at,
        })
    }
}

fn parse_xact_id(text: &str) -> Result<u64, OutboxError> {
    text.parse()
        .map_err(|_| OutboxError::XactIdOutOfRange(text.to_owned()))
}

/// The highest global position (`None` when the outbox is empty): one index lookup.
pub async fn last_position<'e>(executor: impl PgExecutor<'e>) -> Result<Option<i64>, OutboxError> {
    Ok(
        sqlx::query_scalar("SELECT max(global_position) FROM outbox")
            .fetch_one(executor)
            .await?,
    )
}

/// Rows in the outbox and the highest global position (`None` when it is empty). Counting reads
/// the whole table: for operators' statistics, not for anything polled often.
pub async fn size<'e>(executor: impl PgExecutor<'e>) -> Result<(i64, Option<i64>), OutboxError> {
    Ok(
        sqlx::query_as("SELECT count(*), max(global_position) FROM outbox")
            .fetch_one(executor)
            .await?,
    )
}

/// Rows after `cursor` in read order, and when the first of them was recorded: how far a reader
/// at `cursor` is behind.
pub async fn lag_after(
    pool: &sqlx::PgPool,
    cursor: OutboxCursor,
) -> Result<(i64, Option<chrono::DateTime<chrono::Utc>>), OutboxError> {
    Ok(sqlx::query_as(
        "SELECT count(*), min(recorded_at) FROM outbox
         WHERE (xact_id, global_position) > ($1::text::xid8, $2)",
    )
    .bind(cursor.xact_id.to_string())
    .bind(cursor.position)
    .fetch_one(pool)
    .await?)
}

/// Whether committed rows exist after `cursor`, readable by [`read_batch`] or not yet (an older
/// transaction still running hides them from the gap-safe reader).
pub async fn has_rows_after(
    pool: &sqlx::PgPool,
    cursor: OutboxCursor,
) -> Result<bool, OutboxError> {
    // ORDER BY … LIMIT 1 makes the plan an index probe whatever the cursor. A generic plan of
    // `EXISTS (…)` (which drops ORDER BY and LIMIT) expects a third of the table to match and
    // scans it from the oldest row: the whole outbox on every idle check, as the matching rows
    // are the newest.
    let first: Option<(i32,)> = sqlx::query_as(
        "SELECT 1 FROM outbox
         WHERE (xact_id, global_position) > ($1::text::xid8, $2)
         ORDER BY outbox.xact_id, outbox.global_position
         LIMIT 1",
    )
    .bind(cursor.xact_id.to_string())
    .bind(cursor.position)
    .fetch_optional(pool)
    .await?;
    Ok(first.is_some())
}

/// The cursor of the last row in read order (`None` when the outbox is empty): where a reader
/// that has read everything stands.
pub async fn last_cursor(pool: &sqlx::PgPool) -> Result<Option<OutboxCursor>, OutboxError> {
    let last: Option<(String, i64)> = sqlx::query_as(
        "SELECT xact_id::text, global_position FROM outbox
         ORDER BY xact_id DESC, global_position DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    last.map(|(xact, position)| {
        Ok(OutboxCursor {
            xact_id: xact
                .parse()
                .map_err(|_| OutboxError::XactIdOutOfRange(xact.clone()))?,
            position,
        })
    })
    .transpose()
}
