//! The KurrentDB event store: streams in a KurrentDB server, through the official `kurrentdb`
//! client.
//!
//! Why it exists: teams that already run KurrentDB keep it as their source of truth
//! (`EVENT_STORE=kurrentdb`). KurrentDB is outside PostgreSQL's transaction, so an append is made
//! safe to repeat instead of atomic with the rest: every event carries the id the caller chose
//! ([`super::deterministic_event_id`]), and KurrentDB treats an append whose ids are already at the
//! expected place as done (it answers success and writes nothing). The write path appends first
//! and commits PostgreSQL after; a retry re-appends the same ids, and
//! [`crate::write_path::orphans`] completes what no client retried.
//!
//! Mapping onto the seam's types:
//! - a stream version is KurrentDB's revision + 1 (revisions count from 0, versions from 1);
//! - a global position is KurrentDB's commit position in `$all` (an `i64`; a position beyond
//!   `i64::MAX` is refused rather than wrapped), and [`KurrentPosition`] keeps the commit and
//!   prepare positions and the revision exactly, in the event's metadata;
//! - the event's metadata is the custom metadata, as JSON; its data is JSON with content type
//!   `application/json`;
//! - `recorded_at` of an event read back is KurrentDB's `created` stamp (100 ns ticks).
//!
//! Failures: a server that cannot be reached, a timeout (`KURRENTDB_TIMEOUT_MS`, applied both as
//! the gRPC deadline and as a local bound) or a leader change is
//! [`EventStoreError::Unavailable`], which the HTTP layer answers with `503` and `Retry-After`;
//! nothing is written to PostgreSQL then.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, EventData, ReadAllOptions, ReadStreamOptions,
    StreamPosition, StreamState, SubscriptionFilter,
};
use serde::{Deserialize, Serialize};
use wallex_telemetry::catalogue::KURRENTDB_UNAVAILABLE_TOTAL;

use super::{
    EventMetadata, EventStore, EventStoreError, ExpectedVersion, NewEvent, RecordedEvent,
    StreamAppend,
};

/// Most events one read of a stream returns ([`KurrentEventStore::read_stream`] reads the whole
/// stream in pages of this size).
pub const READ_PAGE: usize = 1_000;

/// Which store holds the event streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStoreKind {
    /// The `events` table of the wallex database, in the write transaction (the default).
    Postgres,
    /// A KurrentDB server (`KURRENTDB_CONNECTION_STRING`); PostgreSQL keeps the snapshots, the
    /// outbox and the idempotency records.
    Kurrentdb,
}

/// The event store, by default: PostgreSQL, which needs nothing besides the database.
pub const DEFAULT_EVENT_STORE: EventStoreKind = EventStoreKind::Postgres;
/// Longest a KurrentDB call may take, in milliseconds, by default.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// How often the reconciliation pass runs, in seconds, by default.
pub const DEFAULT_RECONCILE_INTERVAL_SECS: u64 = 60;
/// How old an event must be before the reconciliation pass completes it, in seconds, by default.
pub const DEFAULT_RECONCILE_GRACE_SECS: u64 = 30;

/// Where events are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventStoreConfig {
    /// Which store holds the streams: PostgreSQL (default) or KurrentDB, for teams that already
    /// run KurrentDB as their source of truth.
    pub event_store: EventStoreKind,

    /// KurrentDB's connection string (`kurrentdb://host:2113?tls=false`, or
    /// `kurrentdb+discover://…` for a cluster); required with [`EventStoreKind::Kurrentdb`].
    pub kurrentdb_connection_string: Option<String>,

    /// Longest a KurrentDB call may take before the request is answered `503` (the gRPC deadline
    /// and a local bound), in milliseconds: an unreachable server must not hold requests.
    pub kurrentdb_timeout_ms: u64,

    /// How often the reconciliation pass looks for events in KurrentDB that PostgreSQL lacks
    /// (besides once at start-up), in seconds.
    pub kurrentdb_reconcile_interval_secs: u64,

    /// How old an event must be before the reconciliation pass completes it, in seconds: younger
    /// ones may still be on their way through a running request.
    pub kurrentdb_reconcile_grace_secs: u64,
}

impl Default for EventStoreConfig {
    fn default() -> Self {
        Self {
            event_store: DEFAULT_EVENT_STORE,
            kurrentdb_connection_string: None,
            kurrentdb_timeout_ms: DEFAULT_TIMEOUT_MS,
            kurrentdb_reconcile_interval_secs: DEFAULT_RECONCILE_INTERVAL_SECS,
            kurrentdb_reconcile_grace_secs: DEFAULT_RECONCILE_GRACE_SECS,
        }
    }
}

impl EventStoreConfig {
    /// The bound of one KurrentDB call.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.kurrentdb_timeout_ms)
    }
}

/// Why the configured event store cannot be used (a start-up error).
#[derive(Debug, thiserror::Error)]
pub enum EventStoreSetupError {
    /// `EVENT_STORE=kurrentdb` without a connection string.
    #[error("EVENT_STORE=kurrentdb needs KURRENTDB_CONNECTION_STRING (e.g. kurrentdb://127.0.0.1:2113?tls=false)")]
    MissingConnectionString,
    /// The connection string does not parse.
    #[error("KURRENTDB_CONNECTION_STRING is invalid: {0}")]
    InvalidConnectionString(String),
    /// The client could not be created from valid settings.
    #[error("cannot create the KurrentDB client: {0}")]
    Client(String),
}

/// Where an event is in KurrentDB, exactly as KurrentDB numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KurrentPosition {
    /// Commit position in `$all`.
    pub commit_position: u64,
    /// Prepare position in `$all`.
    pub prepare_position: u64,
    /// Revision in its stream, from 0.
    pub stream_revision: u64,
}

/// A place in KurrentDB's `$all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    /// Commit position.
    pub commit: u64,
    /// Prepare position.
    pub prepare: u64,
}

/// One event of `$all` as [`KurrentEventStore::read_all_after`] returns it.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Where it is in `$all`.
    pub position: LogPosition,
    /// The event, or why wallex cannot read it (not written by wallex: no JSON, no metadata).
    pub event: Result<RecordedEvent, String>,
}

/// What creating a stream with its first event did.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamCreation {
    /// The stream holds this event: appended now, or by an earlier attempt with the same event id
    /// (then it is the earlier attempt's event, as stored).
    Created(Box<RecordedEvent>),
    /// The stream exists with another first event.
    Exists,
}

/// Event store on a KurrentDB server. Cloning it is cheap (one client, one connection).
#[derive(Clone)]
pub struct KurrentEventStore {
    /// The client and its generation. The client gives up for good when its connection closes
    /// (a first call that found no server, for one): then it is replaced (see [`Self::renew`]).
    client: Arc<Mutex<(Client, u64)>>,
    settings: Arc<ClientSettings>,
    timeout: Duration,
}

impl std::fmt::Debug for KurrentEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KurrentEventStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn backend(error: impl std::error::Error + Send + Sync + 'static) -> EventStoreError {
    EventStoreError::Backend(Box::new(error))
}

/// KurrentDB's errors: unreachable, slow or moving leader is `Unavailable` (retry later), the rest
/// is a backend error.
fn from_client(error: kurrentdb::Error) -> EventStoreError {
    use kurrentdb::Error as E;
    match error {
        E::GrpcConnectionError(_)
        | E::ConnectionClosed
        | E::DeadlineExceeded
        | E::NotLeaderException(_)
        | E::ServerError(_) => EventStoreError::Unavailable(error.to_string()),
        E::Grpc { code, .. } if RETRYABLE_GRPC_CODES.contains(&i32::from(code)) => {
            EventStoreError::Unavailable(error.to_string())
        }
        other => backend(other),
    }
}

/// gRPC status codes that say "try again later": cancelled (1), deadline exceeded (4), resource
/// exhausted (8), aborted (10), unavailable (14).
const RETRYABLE_GRPC_CODES: [i32; 5] = [1, 4, 8, 10, 14];

impl KurrentEventStore {
    /// Connects to the KurrentDB of `connection_string` (lazily: the first call opens the
    /// connection, so a server that is down at start-up is no start-up error, while a malformed
    /// string is).
    pub fn connect(
        connection_string: &str,
        timeout: Duration,
    ) -> Result<Self, EventStoreSetupError> {
        let settings = ClientSettings::from_str(connection_string)
            .map_err(|error| EventStoreSetupError::InvalidConnectionString(error.to_string()))?;
        let client = Client::new(settings.clone())
            .map_err(|error| EventStoreSetupError::Client(error.to_string()))?;
        Ok(Self {
            client: Arc::new(Mutex::new((client, 0))),
            settings: Arc::new(settings),
            timeout,
        })
    }

    /// The current client and its generation.
    fn client(&self) -> (Client, u64) {
        let guard = self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (guard.0.clone(), guard.1)
    }

    /// Replaces the client of `generation` after its connection closed for good (once per
    /// generation, however many calls saw it close); the next call connects anew.
    fn renew(&self, generation: u64) {
        let mut guard = self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.1 != generation {
            return;
        }
        match Client::new(ClientSettings::clone(&self.settings)) {
            Ok(client) => {
                *guard = (client, generation + 1);
                tracing::info!("KurrentDB connection closed; the next call reconnects");
            }
            Err(error) => tracing::warn!(%error, "cannot recreate the KurrentDB client"),
        }
    }

    /// Maps a client error, renewing the client when its connection is gone for good.
    fn failed(&self, generation: u64, error: kurrentdb::Error) -> EventStoreError {
        if matches!(error, kurrentdb::Error::ConnectionClosed) {
            self.renew(generation);
        }
        from_client(error)
    }

    /// The store of `config`, when it says `kurrentdb`.
    pub fn from_config(config: &EventStoreConfig) -> Result<Option<Self>, EventStoreSetupError> {
        match config.event_store {
            EventStoreKind::Postgres => Ok(None),
            EventStoreKind::Kurrentdb => {
                let connection = config
                    .kurrentdb_connection_string
                    .as_deref()
                    .filter(|s| !s.trim().is_empty())
                    .ok_or(EventStoreSetupError::MissingConnectionString)?;
                Self::connect(connection, config.timeout()).map(Some)
            }
        }
    }

    /// Runs one call (`op`: `append` or `read`) within the timeout; counts it when KurrentDB could
    /// not be reached.
    async fn bounded<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = Result<T, EventStoreError>>,
    ) -> Result<T, EventStoreError> {
        let result = tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(EventStoreError::Unavailable(format!(
                    "KurrentDB did not answer within {} ms",
                    self.timeout.as_millis()
                )))
            });
        if let Err(EventStoreError::Unavailable(_)) = &result {
            metrics::counter!(KURRENTDB_UNAVAILABLE_TOTAL, "op" => op).increment(1);
        }
        result
    }

    /// Creates `stream` with `event` as its first event (expected state "no stream"). KurrentDB
    /// deduplicates by event id, so an earlier attempt with the same id counts as this one: then
    /// the event as that attempt stored it is returned (with `check_stored`, the stream's first
    /// event is read alongside the append to find out; without it — an event id that cannot have
    /// been used before — the appended event is returned as given).
    pub async fn create_stream(
        &self,
        stream: &str,
        event: &NewEvent,
        recorded_at: DateTime<Utc>,
        check_stored: bool,
    ) -> Result<StreamCreation, EventStoreError> {
        let append = self.append_raw(stream, StreamState::NoStream, std::slice::from_ref(event));
        let (appended, stored) = if check_stored {
            let (appended, stored) = tokio::join!(append, self.read_page(stream, 0, 1));
            (appended, Some(stored))
        } else {
            (append.await, None)
        };
        match appended {
            Ok(result) => {
                // The stream's first event, read while appending: the earlier attempt's event if
                // there was one (or ours, if the read came after the append: the same).
                if let Some(Ok(stored)) = stored {
                    if let Some(first) = stored.into_iter().next() {
                        if first.event_id == event.event_id {
                            return Ok(StreamCreation::Created(Box::new(first)));
                        }
                    }
                }
                let position = KurrentPosition {
                    commit_position: result.position.commit,
                    prepare_position: result.position.prepare,
                    stream_revision: result.next_expected_version,
                };
                Ok(StreamCreation::Created(Box::new(recorded(
                    stream,
                    event,
                    position,
                    recorded_at,
                )?)))
            }
            Err(EventStoreError::WrongExpectedVersion { .. }) => Ok(StreamCreation::Exists),
            Err(error) => Err(error),
        }
    }

    /// One append request.
    async fn append_raw(
        &self,
        stream: &str,
        state: StreamState,
        events: &[NewEvent],
    ) -> Result<kurrentdb::WriteResult, EventStoreError> {
        let data = events
            .iter()
            .map(|event| {
                EventData::json(&event.event_type, &event.data)
                    .and_then(|data| data.id(event.event_id).metadata_as_json(&event.metadata))
                    .map_err(backend)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let options = AppendToStreamOptions::default()
            .stream_state(state)
            .deadline(self.timeout);
        let (client, generation) = self.client();
        self.bounded("append", async {
            match client.append_to_stream(stream, &options, data).await {
                Ok(result) => Ok(result),
                Err(kurrentdb::Error::WrongExpectedVersion { .. }) => {
                    Err(EventStoreError::WrongExpectedVersion {
                        stream: stream.to_owned(),
                        expected: match state {
                            StreamState::StreamRevision(revision) => {
                                ExpectedVersion::Exact(revision as i64 + 1)
                            }
                            _ => ExpectedVersion::NoStream,
                        },
                    })
                }
                Err(error) => Err(self.failed(generation, error)),
            }
        })
        .await
    }

    /// Up to `count` events of `stream` from version `from_version` (1-based; 0 or 1 is the
    /// start), in version order. Empty if the stream does not exist.
    pub async fn read_page(
        &self,
        stream: &str,
        from_version: i64,
        count: usize,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let options = ReadStreamOptions::default()
            .forwards()
            .position(StreamPosition::Position(
                u64::try_from(from_version.max(1) - 1).unwrap_or(0),
            ))
            .max_count(count)
            .deadline(self.timeout);
        let (client, generation) = self.client();
        self.bounded("read", async {
            let mut read = match client.read_stream(stream, &options).await {
                Ok(read) => read,
                Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
                Err(error) => return Err(self.failed(generation, error)),
            };
            let mut events = Vec::new();
            loop {
                match read.next().await {
                    Ok(Some(resolved)) => {
                        if let Some(event) = resolved.event {
                            events.push(from_recorded(&event)?);
                        }
                    }
                    Ok(None) => return Ok(events),
                    Err(kurrentdb::Error::ResourceNotFound) => {
                        drain(&mut read).await;
                        return Ok(Vec::new());
                    }
                    Err(error) => return Err(self.failed(generation, error)),
                }
            }
        })
        .await
    }

    /// Up to `count` events of `$all` after `after` (or from the start), of streams whose name
    /// starts with `prefix`, in log order. An event wallex cannot read (written by someone else)
    /// is returned as its position and the reason.
    pub async fn read_all_after(
        &self,
        after: Option<LogPosition>,
        prefix: &str,
        count: usize,
    ) -> Result<Vec<LogEntry>, EventStoreError> {
        let position = match after {
            Some(LogPosition { commit, prepare }) => {
                StreamPosition::Position(kurrentdb::Position { commit, prepare })
            }
            None => StreamPosition::Start,
        };
        let options = ReadAllOptions::default()
            .forwards()
            .position(position)
            .filter(SubscriptionFilter::on_stream_name().add_prefix(prefix))
            .max_count(count)
            .deadline(self.timeout);
        let (client, generation) = self.client();
        let failed = |error| self.failed(generation, error);
        self.bounded("read", async {
            let mut read = client.read_all(&options).await.map_err(failed)?;
            let mut entries = Vec::new();
            while let Some(resolved) = read.next().await.map_err(failed)? {
                let Some(event) = resolved.event else {
                    continue;
                };
                let position = LogPosition {
                    commit: event.position.commit,
                    prepare: event.position.prepare,
                };
                // Reading from a position includes the event at it.
                if Some(position) == after {
                    continue;
                }
                entries.push(LogEntry {
                    position,
                    event: from_recorded(&event).map_err(|error| error.to_string()),
                });
            }
            Ok(entries)
        })
        .await
    }

    /// The position of the last event in `$all` (the start if it is empty).
    pub async fn end_of_all(&self) -> Result<Option<LogPosition>, EventStoreError> {
        let options = ReadAllOptions::default()
            .backwards()
            .position(StreamPosition::End)
            .max_count(1)
            .deadline(self.timeout);
        let (client, generation) = self.client();
        let failed = |error| self.failed(generation, error);
        self.bounded("read", async {
            let mut read = client.read_all(&options).await.map_err(failed)?;
            let last = read
                .next()
                .await
                .map_err(failed)?
                .and_then(|resolved| resolved.event)
                .map(|event| LogPosition {
                    commit: event.position.commit,
                    prepare: event.position.prepare,
                });
            drain(&mut read).await;
            Ok(last)
        })
        .await
    }
}

/// Most messages [`drain`] reads: a read it is used on has at most its end left.
const DRAIN_MESSAGES: usize = 8;

/// Reads the rest of a read whose answer the caller has (a "stream not found", or the one event
/// it asked for), up to the end of the call, so that the call ends as KurrentDB ends it instead of
/// being reset by the client while KurrentDB still answers on it (h2 keeps only a few such
/// streams in mind and closes a connection that receives too much on streams it forgot).
async fn drain(read: &mut kurrentdb::ReadStream) {
    for _ in 0..DRAIN_MESSAGES {
        if !matches!(read.next().await, Ok(Some(_))) {
            return;
        }
    }
}

impl EventStore for KurrentEventStore {
    /// KurrentDB is outside any PostgreSQL transaction: an append stands on its own.
    type Transaction = ();

    async fn append(
        &self,
        _tx: &mut (),
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
        recorded_at: DateTime<Utc>,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let Some(last) = events.len().checked_sub(1) else {
            return Err(EventStoreError::EmptyAppend);
        };
        let state = match expected {
            ExpectedVersion::NoStream => StreamState::NoStream,
            ExpectedVersion::Exact(version) => match u64::try_from(version - 1) {
                Ok(revision) => StreamState::StreamRevision(revision),
                Err(_) => StreamState::NoStream,
            },
        };
        let result = self.append_raw(stream, state, events).await?;
        let last_revision = result.next_expected_version;
        if last == 0 {
            let position = KurrentPosition {
                commit_position: result.position.commit,
                prepare_position: result.position.prepare,
                stream_revision: last_revision,
            };
            return Ok(vec![recorded(stream, &events[0], position, recorded_at)?]);
        }
        // KurrentDB reports the last event's place only: the others are read back, as stored.
        let first_version = last_revision.saturating_sub(last as u64) as i64 + 1;
        self.read_page(stream, first_version, events.len()).await
    }

    async fn append_many(
        &self,
        _tx: &mut (),
        appends: &[StreamAppend<'_>],
        recorded_at: DateTime<Utc>,
    ) -> Result<Vec<Result<Vec<RecordedEvent>, EventStoreError>>, EventStoreError> {
        let outcomes = join_all(appends.iter().map(|append| async move {
            self.append(
                &mut (),
                append.stream,
                append.expected,
                append.events,
                recorded_at,
            )
            .await
        }))
        .await;
        // A failure other than a version check fails the whole call, as for PostgreSQL.
        let mut results = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            match outcome {
                Err(EventStoreError::WrongExpectedVersion { .. }) | Ok(_) => results.push(outcome),
                Err(error) => return Err(error),
            }
        }
        Ok(results)
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let mut events: Vec<RecordedEvent> = Vec::new();
        loop {
            let next = events.last().map_or(1, |event| event.stream_version + 1);
            let page = self.read_page(stream, next, READ_PAGE).await?;
            let done = page.len() < READ_PAGE;
            events.extend(page);
            if done {
                return Ok(events);
            }
        }
    }
}

/// An appended event as the seam records it.
fn recorded(
    stream: &str,
    event: &NewEvent,
    position: KurrentPosition,
    recorded_at: DateTime<Utc>,
) -> Result<RecordedEvent, EventStoreError> {
    let mut metadata = event.metadata.clone();
    metadata.kurrentdb = Some(position);
    Ok(RecordedEvent {
        global_position: global_position(position.commit_position)?,
        event_id: event.event_id,
        stream_id: stream.to_owned(),
        stream_version: position.stream_revision as i64 + 1,
        event_type: event.event_type.clone(),
        data: event.data.clone(),
        metadata,
        recorded_at,
    })
}

fn global_position(commit: u64) -> Result<i64, EventStoreError> {
    i64::try_from(commit).map_err(|_| {
        EventStoreError::Backend(
            format!("KurrentDB commit position {commit} is beyond what the outbox can hold").into(),
        )
    })
}

/// An event read from KurrentDB as the seam records it.
fn from_recorded(event: &kurrentdb::RecordedEvent) -> Result<RecordedEvent, EventStoreError> {
    let data: serde_json::Value = serde_json::from_slice(&event.data).map_err(backend)?;
    let mut metadata: EventMetadata = if event.custom_metadata.is_empty() {
        return Err(EventStoreError::Backend(
            format!(
                "event {} of stream {} has no metadata: not written by wallex",
                event.id,
                event.stream_id()
            )
            .into(),
        ));
    } else {
        serde_json::from_slice(&event.custom_metadata).map_err(backend)?
    };
    metadata.kurrentdb = Some(KurrentPosition {
        commit_position: event.position.commit,
        prepare_position: event.position.prepare,
        stream_revision: event.revision,
    });
    // `created` in 100 ns ticks since the Unix epoch; the client's own field keeps only seconds.
    let recorded_at = event
        .metadata
        .get("created")
        .and_then(|ticks| ticks.parse::<i64>().ok())
        .and_then(|ticks| DateTime::from_timestamp_micros(ticks / 10))
        .unwrap_or(event.created);
    Ok(RecordedEvent {
        global_position: global_position(event.position.commit)?,
        event_id: event.id,
        stream_id: event.stream_id().to_owned(),
        stream_version: event.revision as i64 + 1,
        event_type: event.event_type.clone(),
        data,
        metadata,
        recorded_at,
    })
}
