//! The in-memory store: streams by name and the `$all` log, behind one mutex, with KurrentDB's
//! append rules (expected stream state, idempotency by event id) and paged reads.
//!
//! It outlives the gRPC server: [`crate::StubServer::stop`] and [`crate::StubServer::restart`]
//! keep the same `Arc<Store>`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use uuid::Uuid;

/// Position in the simulated log of the first record. KurrentDB's log starts with its own system
/// records, so no event is ever at position 0 (the client's `Position::start()`); the stub starts
/// its log here for the same reason.
pub(crate) const FIRST_LOG_POSITION: u64 = 4_096;

/// Size of a simulated log record besides its variable parts (stream name, event type, data and
/// custom metadata): the fixed fields of KurrentDB's prepare record (length prefix and suffix,
/// flags, positions, event id, correlation id, timestamp, expected version, …), rounded.
pub(crate) const RECORD_HEADER_SIZE: u64 = 100;

/// One event as the stub keeps it (and as [`crate::StubServer::stream`] returns it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// The event id the client chose (or the client generated), unique per append.
    pub id: Uuid,
    /// Name of the stream the event is in.
    pub stream: String,
    /// Revision of the event in its stream, counted from 0.
    pub revision: u64,
    /// Position of the event in `$all`: its commit position, equal to its prepare position (the
    /// byte offset of its record in the simulated log; strictly increasing, never 0).
    pub position: u64,
    /// Event type (the `type` metadata of the append).
    pub event_type: String,
    /// Content type as KurrentDB keeps it: `application/json` if the append said so, otherwise
    /// `application/octet-stream` (KurrentDB stores only a "is JSON" flag).
    pub content_type: String,
    /// Event payload.
    pub data: Vec<u8>,
    /// Custom metadata of the event (KurrentDB's "metadata" bytes).
    pub custom_metadata: Vec<u8>,
    /// When the stub stored the event, in 100-nanosecond ticks since the Unix epoch (KurrentDB's
    /// `created` metadata).
    pub created_ticks: i64,
}

/// Content type of a JSON event.
pub(crate) const CONTENT_TYPE_JSON: &str = "application/json";
/// Content type of every other event.
pub(crate) const CONTENT_TYPE_BINARY: &str = "application/octet-stream";

/// What an append expects of the stream before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expected {
    /// Whatever state the stream is in.
    Any,
    /// The stream has no event.
    NoStream,
    /// The stream has at least one event.
    StreamExists,
    /// The stream's last event has this revision.
    Revision(u64),
}

/// One event of an append request, validated.
#[derive(Debug, Clone)]
pub(crate) struct ProposedEvent {
    pub(crate) id: Uuid,
    pub(crate) event_type: String,
    pub(crate) is_json: bool,
    pub(crate) data: Vec<u8>,
    pub(crate) custom_metadata: Vec<u8>,
}

/// How an append ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendOutcome {
    /// Written (or found already written): the stream's revision after it (`None`: the stream
    /// has no event, only after an append of zero events) and the position of the append.
    Success {
        current_revision: Option<u64>,
        position: u64,
    },
    /// The stream is not in the expected state; its last revision (`None`: no stream).
    WrongExpectedVersion { current_revision: Option<u64> },
}

/// Where a `$all` filter looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FilterTarget {
    /// The stream name.
    StreamName,
    /// The event type.
    EventType,
}

/// Which events of `$all` a read returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AllFilter {
    /// Every event.
    Everything,
    /// Events whose stream name (or type) starts with one of these (none: no event, as in
    /// KurrentDB).
    Prefixes(FilterTarget, Vec<String>),
    /// Events whose stream name (or type) does not start with `$`: the client's
    /// `exclude_system_events()` regular expression.
    NotSystem(FilterTarget),
}

impl AllFilter {
    fn allows(&self, event: &StoredEvent) -> bool {
        let field = |target: &FilterTarget| match target {
            FilterTarget::StreamName => event.stream.as_str(),
            FilterTarget::EventType => event.event_type.as_str(),
        };
        match self {
            AllFilter::Everything => true,
            AllFilter::Prefixes(target, prefixes) => {
                let value = field(target);
                prefixes
                    .iter()
                    .any(|prefix| value.starts_with(prefix.as_str()))
            }
            AllFilter::NotSystem(target) => !field(target).starts_with('$'),
        }
    }
}

/// One stream.
#[derive(Debug, Default)]
struct Stream {
    /// Events by revision.
    events: Vec<Arc<StoredEvent>>,
    /// Revision of the last event with each id (KurrentDB's committed-events cache, unbounded).
    ids: HashMap<Uuid, u64>,
}

impl Stream {
    fn last_revision(&self) -> Option<u64> {
        (self.events.len() as u64).checked_sub(1)
    }
}

#[derive(Debug)]
struct Inner {
    /// Streams with at least one event.
    streams: HashMap<String, Stream>,
    /// Every event in log order (`$all`).
    all: Vec<Arc<StoredEvent>>,
    /// Position of the next record in the simulated log.
    next_position: u64,
}

/// What [`Store::append`] decided before writing.
enum Decision {
    /// Append the events (none: an empty write).
    Write,
    /// The events are already in the stream; the last one has this revision.
    Idempotent(u64),
    /// Wrong expected version.
    Wrong,
}

/// The in-memory store.
#[derive(Debug)]
pub(crate) struct Store {
    inner: Mutex<Inner>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            inner: Mutex::new(Inner {
                streams: HashMap::new(),
                all: Vec::new(),
                next_position: FIRST_LOG_POSITION,
            }),
        }
    }
}

/// One page of a stream read.
#[derive(Debug)]
pub(crate) struct StreamPage {
    /// The events, in the direction of the read.
    pub(crate) events: Vec<Arc<StoredEvent>>,
    /// Revision of the stream's last event.
    pub(crate) last_revision: u64,
}

/// One page of a `$all` read.
#[derive(Debug)]
pub(crate) struct AllPage {
    /// The events that passed the filter, in the direction of the read.
    pub(crate) events: Vec<Arc<StoredEvent>>,
    /// Where the next page starts (an index in the log; backwards: one past the next event).
    pub(crate) next: usize,
    /// No event is left to look at in this direction.
    pub(crate) exhausted: bool,
}

/// Most log entries one `$all` page looks at (also when few pass the filter), so that the lock is
/// held briefly.
const MAX_SCAN_PER_PAGE: usize = 4_096;

impl Store {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; if something did, the data is still consistent
        // (every mutation is completed before the guard is dropped).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `events` to `stream` if it is in the `expected` state, with KurrentDB's
    /// idempotency: see [`crate`]'s documentation.
    pub(crate) fn append(
        &self,
        stream_name: &str,
        expected: Expected,
        events: Vec<ProposedEvent>,
        created_ticks: i64,
    ) -> AppendOutcome {
        let mut inner = self.lock();
        let ids: Vec<Uuid> = events.iter().map(|event| event.id).collect();
        let stream = inner.streams.get(stream_name);
        let current_revision = stream.and_then(Stream::last_revision);

        match decide(stream, expected, &ids) {
            Decision::Wrong => AppendOutcome::WrongExpectedVersion { current_revision },
            Decision::Idempotent(revision) => {
                // `decide` only answers `Idempotent` with a revision of an existing event.
                let position = stream
                    .and_then(|stream| stream.events.get(revision as usize))
                    .map_or(0, |event| event.position);
                AppendOutcome::Success {
                    current_revision: Some(revision),
                    position,
                }
            }
            Decision::Write if events.is_empty() => {
                // KurrentDB writes an empty record (no event) and answers its position.
                let position = inner.next_position;
                inner.next_position += RECORD_HEADER_SIZE + stream_name.len() as u64;
                AppendOutcome::Success {
                    current_revision,
                    position,
                }
            }
            Decision::Write => {
                let Inner {
                    streams,
                    all,
                    next_position,
                } = &mut *inner;
                let stream = streams.entry(stream_name.to_owned()).or_default();
                let mut last = (0, 0);
                for event in events {
                    let revision = stream.events.len() as u64;
                    let position = *next_position;
                    *next_position += RECORD_HEADER_SIZE
                        + (stream_name.len()
                            + event.event_type.len()
                            + event.data.len()
                            + event.custom_metadata.len()) as u64;
                    let stored = Arc::new(StoredEvent {
                        id: event.id,
                        stream: stream_name.to_owned(),
                        revision,
                        position,
                        event_type: event.event_type,
                        content_type: if event.is_json {
                            CONTENT_TYPE_JSON
                        } else {
                            CONTENT_TYPE_BINARY
                        }
                        .to_owned(),
                        data: event.data,
                        custom_metadata: event.custom_metadata,
                        created_ticks,
                    });
                    stream.ids.insert(event.id, revision);
                    stream.events.push(Arc::clone(&stored));
                    all.push(stored);
                    last = (revision, position);
                }
                AppendOutcome::Success {
                    current_revision: Some(last.0),
                    position: last.1,
                }
            }
        }
    }

    /// Up to `max` events of `stream` from revision `from` (inclusive), forwards or backwards;
    /// `None` if the stream does not exist.
    pub(crate) fn read_stream(
        &self,
        stream: &str,
        from: u64,
        backwards: bool,
        max: usize,
    ) -> Option<StreamPage> {
        let inner = self.lock();
        let stream = inner.streams.get(stream)?;
        let last_revision = stream.last_revision()?;
        let events = if backwards {
            let end = usize::try_from(from.min(last_revision)).map_or(0, |end| end + 1);
            stream.events[..end]
                .iter()
                .rev()
                .take(max)
                .cloned()
                .collect()
        } else {
            let start = usize::try_from(from).unwrap_or(usize::MAX);
            stream
                .events
                .get(start..)
                .unwrap_or_default()
                .iter()
                .take(max)
                .cloned()
                .collect()
        };
        Some(StreamPage {
            events,
            last_revision,
        })
    }

    /// Number of events in `$all`.
    pub(crate) fn all_len(&self) -> usize {
        self.lock().all.len()
    }

    /// Index in `$all` of the first event at or after `(commit, prepare)` (an event's position is
    /// `(position, position)`).
    pub(crate) fn all_index_at(&self, commit: u64, prepare: u64) -> usize {
        self.lock()
            .all
            .partition_point(|event| (event.position, event.position) < (commit, prepare))
    }

    /// Up to `max` events of `$all` passing `filter`: forwards from index `from` (inclusive), or
    /// backwards from index `from` (exclusive).
    pub(crate) fn read_all(
        &self,
        from: usize,
        backwards: bool,
        max: usize,
        filter: &AllFilter,
    ) -> AllPage {
        let inner = self.lock();
        let mut events = Vec::new();
        if backwards {
            let mut next = from.min(inner.all.len());
            let stop = next.saturating_sub(MAX_SCAN_PER_PAGE);
            while next > stop && events.len() < max {
                next -= 1;
                let event = &inner.all[next];
                if filter.allows(event) {
                    events.push(Arc::clone(event));
                }
            }
            AllPage {
                events,
                next,
                exhausted: next == 0,
            }
        } else {
            let mut next = from;
            let stop = from.saturating_add(MAX_SCAN_PER_PAGE).min(inner.all.len());
            while next < stop && events.len() < max {
                let event = &inner.all[next];
                next += 1;
                if filter.allows(event) {
                    events.push(Arc::clone(event));
                }
            }
            AllPage {
                events,
                next,
                exhausted: next >= inner.all.len(),
            }
        }
    }

    /// A copy of the events of `stream` (empty if it does not exist).
    pub(crate) fn stream(&self, stream: &str) -> Vec<StoredEvent> {
        self.lock()
            .streams
            .get(stream)
            .map_or_else(Vec::new, |stream| {
                stream
                    .events
                    .iter()
                    .map(|event| (**event).clone())
                    .collect()
            })
    }

    /// Number of events in the store.
    pub(crate) fn event_count(&self) -> usize {
        self.lock().all.len()
    }
}

/// KurrentDB's commit check (`IndexWriter.CheckCommit`) for one stream.
fn decide(stream: Option<&Stream>, expected: Expected, ids: &[Uuid]) -> Decision {
    let current = stream.and_then(Stream::last_revision);
    match expected {
        Expected::StreamExists if current.is_none() => Decision::Wrong,
        Expected::Any | Expected::StreamExists => {
            // Idempotent if the first id is already in the stream and so are all the others;
            // if only some are, the append is neither new nor a repeat: wrong expected version.
            let (Some(stream), Some(first)) = (stream, ids.first()) else {
                return Decision::Write;
            };
            if !stream.ids.contains_key(first) {
                return Decision::Write;
            }
            let mut last = 0;
            for id in ids {
                match stream.ids.get(id) {
                    Some(revision) => last = *revision,
                    None => return Decision::Wrong,
                }
            }
            Decision::Idempotent(last)
        }
        Expected::NoStream | Expected::Revision(_) => {
            let expected = match expected {
                Expected::Revision(revision) => Some(revision),
                _ => None,
            };
            // `None` (no stream) orders before every revision.
            if expected == current {
                return Decision::Write;
            }
            if expected > current || ids.is_empty() {
                return Decision::Wrong;
            }
            // The stream is past the expected point: a repeat if the events right after it carry
            // the proposed ids, in order.
            let Some(stream) = stream else {
                return Decision::Wrong;
            };
            let first = expected.map_or(0, |revision| revision + 1);
            for (offset, id) in ids.iter().enumerate() {
                let at = usize::try_from(first)
                    .ok()
                    .and_then(|first| first.checked_add(offset))
                    .and_then(|revision| stream.events.get(revision));
                if at.map(|event| event.id) != Some(*id) {
                    return Decision::Wrong;
                }
            }
            Decision::Idempotent(first + ids.len() as u64 - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Uuid) -> ProposedEvent {
        ProposedEvent {
            id,
            event_type: "Happened".to_owned(),
            is_json: true,
            data: b"{}".to_vec(),
            custom_metadata: Vec::new(),
        }
    }

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::new_v4()).collect()
    }

    fn append(store: &Store, expected: Expected, ids: &[Uuid]) -> AppendOutcome {
        store.append("s", expected, ids.iter().copied().map(event).collect(), 1)
    }

    fn revision(outcome: AppendOutcome) -> Option<u64> {
        match outcome {
            AppendOutcome::Success {
                current_revision, ..
            } => current_revision,
            AppendOutcome::WrongExpectedVersion { .. } => panic!("unexpected {outcome:?}"),
        }
    }

    #[test]
    fn positions_increase_and_are_never_zero() {
        let store = Store::default();
        let a = append(&store, Expected::NoStream, &ids(3));
        let b = append(&store, Expected::Revision(2), &ids(1));
        let events = store.stream("s");
        assert_eq!(events.len(), 4);
        assert!(events[0].position > 0);
        assert!(events.windows(2).all(|w| w[0].position < w[1].position));
        assert_eq!(
            a,
            AppendOutcome::Success {
                current_revision: Some(2),
                position: events[2].position
            }
        );
        assert_eq!(revision(b), Some(3));
    }

    #[test]
    fn repeat_after_expected_revision_is_idempotent() {
        let store = Store::default();
        let first = ids(2);
        let second = ids(2);
        let a = append(&store, Expected::NoStream, &first);
        append(&store, Expected::Revision(1), &second);
        // Same as the first append: nothing written, the original result.
        assert_eq!(append(&store, Expected::NoStream, &first), a);
        // Only the first id matches: wrong expected version.
        assert!(matches!(
            append(&store, Expected::NoStream, &[first[0], Uuid::new_v4()]),
            AppendOutcome::WrongExpectedVersion {
                current_revision: Some(3)
            }
        ));
        // Reaching past the end of the stream: wrong expected version.
        assert!(matches!(
            append(
                &store,
                Expected::Revision(1),
                &[second[0], second[1], Uuid::new_v4()]
            ),
            AppendOutcome::WrongExpectedVersion { .. }
        ));
        assert_eq!(
            revision(append(&store, Expected::Revision(1), &second)),
            Some(3)
        );
        assert_eq!(store.event_count(), 4);
    }

    #[test]
    fn any_is_idempotent_when_every_id_is_in_the_stream() {
        let store = Store::default();
        let first = ids(3);
        append(&store, Expected::Any, &first);
        assert_eq!(
            revision(append(&store, Expected::Any, &first[1..])),
            Some(2)
        );
        assert!(matches!(
            append(&store, Expected::Any, &[first[0], Uuid::new_v4()]),
            AppendOutcome::WrongExpectedVersion { .. }
        ));
        // The first id is new: written, even if a later one is already there.
        assert_eq!(
            revision(append(&store, Expected::Any, &[Uuid::new_v4(), first[0]])),
            Some(4)
        );
    }

    #[test]
    fn expected_states() {
        let store = Store::default();
        assert!(matches!(
            append(&store, Expected::StreamExists, &ids(1)),
            AppendOutcome::WrongExpectedVersion {
                current_revision: None
            }
        ));
        assert!(matches!(
            append(&store, Expected::Revision(0), &ids(1)),
            AppendOutcome::WrongExpectedVersion {
                current_revision: None
            }
        ));
        append(&store, Expected::NoStream, &ids(1));
        assert_eq!(
            revision(append(&store, Expected::StreamExists, &ids(1))),
            Some(1)
        );
        assert!(matches!(
            append(&store, Expected::Revision(5), &ids(1)),
            AppendOutcome::WrongExpectedVersion {
                current_revision: Some(1)
            }
        ));
    }

    #[test]
    fn empty_appends_check_the_state_and_write_nothing() {
        let store = Store::default();
        let empty = append(&store, Expected::Any, &[]);
        assert!(matches!(
            empty,
            AppendOutcome::Success {
                current_revision: None,
                ..
            }
        ));
        assert!(matches!(
            append(&store, Expected::StreamExists, &[]),
            AppendOutcome::WrongExpectedVersion { .. }
        ));
        append(&store, Expected::NoStream, &ids(1));
        assert!(matches!(
            append(&store, Expected::NoStream, &[]),
            AppendOutcome::WrongExpectedVersion {
                current_revision: Some(0)
            }
        ));
        assert_eq!(
            revision(append(&store, Expected::Revision(0), &[])),
            Some(0)
        );
        assert_eq!(store.event_count(), 1);
    }

    #[test]
    fn reads_page_in_both_directions() {
        let store = Store::default();
        append(&store, Expected::NoStream, &ids(5));
        let forwards = store.read_stream("s", 1, false, 2).expect("stream");
        assert_eq!(
            forwards
                .events
                .iter()
                .map(|e| e.revision)
                .collect::<Vec<_>>(),
            [1, 2]
        );
        let backwards = store.read_stream("s", u64::MAX, true, 2).expect("stream");
        assert_eq!(
            backwards
                .events
                .iter()
                .map(|e| e.revision)
                .collect::<Vec<_>>(),
            [4, 3]
        );
        assert!(store.read_stream("missing", 0, false, 1).is_none());
        assert!(store
            .read_stream("s", 9, false, 1)
            .expect("stream")
            .events
            .is_empty());

        let all = store.stream("s");
        let at = store.all_index_at(all[2].position, all[2].position);
        assert_eq!(at, 2);
        let page = store.read_all(at, false, 10, &AllFilter::Everything);
        assert_eq!(page.events.len(), 3);
        assert!(page.exhausted);
        let page = store.read_all(at, true, 10, &AllFilter::Everything);
        assert_eq!(
            page.events.iter().map(|e| e.revision).collect::<Vec<_>>(),
            [1, 0]
        );
        let none = AllFilter::Prefixes(FilterTarget::StreamName, vec!["t".to_owned()]);
        assert!(store.read_all(0, false, 10, &none).events.is_empty());
    }
}
