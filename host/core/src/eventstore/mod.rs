//! The event store seam.
//!
//! Why it exists: wallex appends every state change as an event to a stream, and the store behind
//! that is not always PostgreSQL ([`postgres`], the default; [`kurrent`] for KurrentDB; an embedded
//! SQLite is planned). The write path talks to the [`EventStore`] trait, whose types say nothing
//! about PostgreSQL; each backend decides what "the transaction an append joins" is through
//! [`EventStore::Transaction`].
//!
//! Event ids are chosen by the caller, deterministically from the idempotency key when there is one
//! ([`deterministic_event_id`]), so that a retried append to an external store deduplicates.

pub mod kurrent;
pub mod postgres;

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace of the UUIDv5 event ids derived from idempotency keys.
pub const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6a8f_0e5c_9b1d_4f3e_a2c7_5d40_91be_37f2);

/// The id of the `index`-th event written by the request with this idempotency scope, key and
/// body fingerprint: the same request retried produces the same ids, while a key reused for a
/// different body after it expired produces new ones.
pub fn deterministic_event_id(
    scope: &str,
    idempotency_key: &str,
    fingerprint: &[u8],
    index: u32,
) -> Uuid {
    let mut name = Vec::with_capacity(scope.len() + idempotency_key.len() + fingerprint.len() + 16);
    for part in [scope.as_bytes(), idempotency_key.as_bytes(), fingerprint] {
        name.extend_from_slice(&(part.len() as u64).to_be_bytes());
        name.extend_from_slice(part);
    }
    name.extend_from_slice(&index.to_be_bytes());
    Uuid::new_v5(&EVENT_ID_NAMESPACE, &name)
}

/// Metadata every event carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventMetadata {
    /// Ties together everything done for one client request (`X-Correlation-Id`).
    pub correlation_id: String,
    /// What caused this event: the request (its correlation id) or a previous event's id.
    pub causation_id: String,
    /// The request's `Idempotency-Key`, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// W3C `traceparent` of the request that caused the event, when it had a trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Hex SHA-256 of the request body, when the event store is outside PostgreSQL's transaction
    /// (KurrentDB): what lets the reconciliation pass store the request's answer under its key
    /// exactly as the request would have, if it never completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_fingerprint: Option<String>,
    /// Where KurrentDB stored the event, when it is the event store: set on events as recorded or
    /// read, never sent with an append (the position is not known before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kurrentdb: Option<kurrent::KurrentPosition>,
}

/// An event about to be appended.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Chosen by the caller (see [`deterministic_event_id`]), so that a retried append can be
    /// recognised as the same event.
    pub event_id: Uuid,
    /// What happened, e.g. `WalletCreated`; tells readers how to interpret `data`.
    pub event_type: String,
    /// The event's payload, as JSON.
    pub data: serde_json::Value,
    /// Correlation, causation and idempotency key of the request that caused the event.
    pub metadata: EventMetadata,
}

/// An event as stored: with its place in its stream and in the global log.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Place in the global log across all streams: unique, but allocated before commit, so
    /// events may commit out of this order.
    pub global_position: i64,
    /// The id given by the appender.
    pub event_id: Uuid,
    /// The stream the event belongs to, e.g. `wallet-{id}`.
    pub stream_id: String,
    /// Place in its stream: 1 for the first event, then one more per event.
    pub stream_version: i64,
    /// What happened, e.g. `WalletCreated`; tells readers how to interpret `data`.
    pub event_type: String,
    /// The event's payload, as JSON.
    pub data: serde_json::Value,
    /// Correlation, causation and idempotency key of the request that caused the event.
    pub metadata: EventMetadata,
    /// When the event was appended, as given to [`EventStore::append`].
    pub recorded_at: DateTime<Utc>,
}

/// Optimistic concurrency check of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last version must be exactly this.
    Exact(i64),
}

/// One stream's part of [`EventStore::append_many`].
#[derive(Debug, Clone, Copy)]
pub struct StreamAppend<'a> {
    /// The stream appended to.
    pub stream: &'a str,
    /// Its optimistic concurrency check.
    pub expected: ExpectedVersion,
    /// What is appended to it (at least one event).
    pub events: &'a [NewEvent],
}

/// Errors of an event store.
#[derive(Debug, thiserror::Error)]
pub enum EventStoreError {
    /// The optimistic concurrency check failed: another writer changed the stream, or the
    /// stream is not where the caller thought it was.
    #[error("stream {stream} is not at the expected version {expected:?}")]
    WrongExpectedVersion {
        /// The stream that was appended to.
        stream: String,
        /// The version the caller expected the stream to be at.
        expected: ExpectedVersion,
    },
    /// An append was called with no events; there is nothing to check the version against.
    #[error("an append needs at least one event")]
    EmptyAppend,
    /// The event store could not be reached in time (KurrentDB down, slow, or changing leader):
    /// nothing was appended that a retry would not deduplicate; try again later.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// The storage behind the event store failed (database error, undecodable metadata).
    #[error("event store backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// An append-only store of event streams.
pub trait EventStore: Send + Sync {
    /// The unit of work an append joins. For PostgreSQL it is the write transaction, so the append
    /// commits or rolls back with everything else the request writes.
    type Transaction: Send;

    /// Appends `events` to `stream` if the stream is at `expected`, at `recorded_at`.
    fn append(
        &self,
        tx: &mut Self::Transaction,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
        recorded_at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, EventStoreError>> + Send;

    /// Appends to many streams at once, in the caller's transaction: each [`StreamAppend`] is
    /// checked against its own expected version and its outcome is its own, in input order. A
    /// stream whose check fails gets `WrongExpectedVersion` and nothing of it is written, while the
    /// others are appended (the transaction stays usable). This is how a group commit appends the
    /// events of many requests with one statement.
    fn append_many(
        &self,
        tx: &mut Self::Transaction,
        appends: &[StreamAppend<'_>],
        recorded_at: DateTime<Utc>,
    ) -> impl Future<
        Output = Result<Vec<Result<Vec<RecordedEvent>, EventStoreError>>, EventStoreError>,
    > + Send;

    /// Reads a whole stream in version order (empty if it does not exist).
    fn read_stream(
        &self,
        stream: &str,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, EventStoreError>> + Send;
}

/// The configured event store, for reading streams (`GET /wallets/{id}/events`).
#[derive(Debug, Clone)]
pub enum StreamReader {
    /// The `events` table.
    Postgres(postgres::PgEventStore),
    /// A KurrentDB server.
    Kurrent(kurrent::KurrentEventStore),
}

impl StreamReader {
    /// Up to `limit` events of `stream` from version `from_version` (from 1), in version order;
    /// empty if the stream does not exist or ends before.
    pub async fn read_page(
        &self,
        stream: &str,
        from_version: i64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        match self {
            Self::Postgres(store) => {
                store
                    .read_page(
                        stream,
                        from_version,
                        i64::try_from(limit).unwrap_or(i64::MAX),
                    )
                    .await
            }
            Self::Kurrent(store) => store.read_page(stream, from_version, limit).await,
        }
    }
}
