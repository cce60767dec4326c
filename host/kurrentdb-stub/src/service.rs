//! The gRPC service `event_store.client.streams.Streams`: decodes and validates requests, maps
//! them onto the [`Store`], and encodes the answers the way KurrentDB does (including its error
//! statuses and their `exception` metadata).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::debug;
use uuid::Uuid;

use crate::proto::event_store::client as pb;
use crate::proto::event_store::client::streams::{
    append_req, append_resp, read_req, read_resp, streams_server, AppendReq, AppendResp,
    BatchAppendReq, BatchAppendResp, DeleteReq, DeleteResp, ReadReq, ReadResp, TombstoneReq,
    TombstoneResp,
};
use crate::store::{
    AllFilter, AppendOutcome, Expected, FilterTarget, ProposedEvent, Store, StoredEvent,
    CONTENT_TYPE_JSON,
};
use crate::MAX_APPEND_SIZE;

/// Events one page of a read takes from the store (the lock is released between pages).
pub(crate) const READ_PAGE_SIZE: usize = 256;

/// The regular expression the client's `SubscriptionFilter::exclude_system_events()` sends: the
/// one regular expression the stub understands.
const EXCLUDE_SYSTEM_EVENTS_REGEX: &str = "^[^\\$].*";

/// Metadata keys KurrentDB sets on events it returns, and requires on appended ones.
const METADATA_TYPE: &str = "type";
const METADATA_CONTENT_TYPE: &str = "content-type";
const METADATA_CREATED: &str = "created";

/// `exception` metadata values and companions, as KurrentDB sets them on error statuses.
const EXCEPTION_KEY: &str = "exception";
const EXCEPTION_MAXIMUM_APPEND_SIZE_EXCEEDED: &str = "maximum-append-size-exceeded";
const EXCEPTION_MISSING_REQUIRED_METADATA_PROPERTY: &str = "missing-required-metadata-property";
const MAXIMUM_APPEND_SIZE_KEY: &str = "maximum-append-size";
const REQUIRED_METADATA_PROPERTIES_KEY: &str = "required-metadata-properties";

/// A request the stub cannot serve, and why; each becomes a gRPC status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A required metadata property (`type`, `content-type`) is missing from a proposed event.
    #[error("Required Metadata Property '{0}' is missing")]
    MissingMetadata(&'static str),
    /// The events of one append are larger than [`MAX_APPEND_SIZE`].
    #[error("Maximum Append Size of {MAX_APPEND_SIZE} Exceeded.")]
    AppendTooLarge,
    /// The request is valid for KurrentDB but uses something the stub does not implement.
    #[error("{0} is not implemented by wallex-kurrentdb-stub")]
    Unimplemented(&'static str),
}

impl From<RequestError> for Status {
    fn from(error: RequestError) -> Status {
        let message = error.to_string();
        match error {
            RequestError::Invalid(_) => Status::invalid_argument(message),
            RequestError::MissingMetadata(_) => {
                let mut metadata = MetadataMap::new();
                metadata.insert(
                    EXCEPTION_KEY,
                    MetadataValue::from_static(EXCEPTION_MISSING_REQUIRED_METADATA_PROPERTY),
                );
                metadata.insert(
                    REQUIRED_METADATA_PROPERTIES_KEY,
                    MetadataValue::from_static("type,content-type"),
                );
                Status::with_metadata(Code::InvalidArgument, message, metadata)
            }
            RequestError::AppendTooLarge => {
                let mut metadata = MetadataMap::new();
                metadata.insert(
                    EXCEPTION_KEY,
                    MetadataValue::from_static(EXCEPTION_MAXIMUM_APPEND_SIZE_EXCEEDED),
                );
                metadata.insert(
                    MAXIMUM_APPEND_SIZE_KEY,
                    MetadataValue::from(MAX_APPEND_SIZE),
                );
                Status::with_metadata(Code::InvalidArgument, message, metadata)
            }
            RequestError::Unimplemented(_) => Status::unimplemented(message),
        }
    }
}

fn invalid(message: impl Into<String>) -> RequestError {
    RequestError::Invalid(message.into())
}

/// The `Streams` service over a store.
#[derive(Debug, Clone)]
pub(crate) struct StreamsService {
    store: Arc<Store>,
}

impl StreamsService {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        StreamsService { store }
    }
}

#[tonic::codegen::async_trait]
impl streams_server::Streams for StreamsService {
    type ReadStream = tokio_stream::Iter<ReadIter>;

    async fn read(&self, request: Request<ReadReq>) -> Result<Response<Self::ReadStream>, Status> {
        let plan = read_plan(&self.store, request.into_inner())?;
        debug!(?plan, "read");
        Ok(Response::new(tokio_stream::iter(ReadIter::new(
            Arc::clone(&self.store),
            plan,
        ))))
    }

    async fn append(
        &self,
        request: Request<Streaming<AppendReq>>,
    ) -> Result<Response<AppendResp>, Status> {
        let mut messages = request.into_inner();
        let options = match messages.message().await? {
            Some(AppendReq {
                content: Some(append_req::Content::Options(options)),
            }) => options,
            Some(_) => {
                return Err(invalid("the first AppendReq message must carry the options").into())
            }
            None => return Err(invalid("the append request has no options message").into()),
        };
        let stream = stream_name(options.stream_identifier)?;
        let expected = match options.expected_stream_revision {
            Some(append_req::options::ExpectedStreamRevision::Revision(revision)) => {
                Expected::Revision(revision)
            }
            Some(append_req::options::ExpectedStreamRevision::NoStream(())) => Expected::NoStream,
            Some(append_req::options::ExpectedStreamRevision::Any(())) => Expected::Any,
            Some(append_req::options::ExpectedStreamRevision::StreamExists(())) => {
                Expected::StreamExists
            }
            None => {
                return Err(invalid("the append options have no expected stream revision").into())
            }
        };

        let mut events = Vec::new();
        let mut size = 0usize;
        while let Some(message) = messages.message().await? {
            let Some(append_req::Content::ProposedMessage(proposed)) = message.content else {
                return Err(invalid(
                    "after the options, every AppendReq message must carry a proposed message",
                )
                .into());
            };
            let event = proposed_event(proposed)?;
            // KurrentDB's `Event.SizeOnDisk`: the type counts twice (UTF-16).
            size = size.saturating_add(
                event.data.len()
                    + event.custom_metadata.len()
                    + event.event_type.encode_utf16().count() * 2,
            );
            if size > MAX_APPEND_SIZE {
                return Err(RequestError::AppendTooLarge.into());
            }
            events.push(event);
        }

        let count = events.len();
        let outcome = self.store.append(&stream, expected, events, now_ticks());
        debug!(stream, ?expected, events = count, ?outcome, "append");
        Ok(Response::new(append_response(outcome, expected)))
    }

    async fn delete(&self, _request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        Err(RequestError::Unimplemented("Streams.Delete").into())
    }

    async fn tombstone(
        &self,
        _request: Request<TombstoneReq>,
    ) -> Result<Response<TombstoneResp>, Status> {
        Err(RequestError::Unimplemented("Streams.Tombstone").into())
    }

    type BatchAppendStream = tokio_stream::Empty<Result<BatchAppendResp, Status>>;

    async fn batch_append(
        &self,
        _request: Request<Streaming<BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        Err(RequestError::Unimplemented("Streams.BatchAppend").into())
    }
}

/// Now in KurrentDB's `created` unit: 100-nanosecond ticks since the Unix epoch.
fn now_ticks() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_nanos() / 100).unwrap_or(i64::MAX)
        })
}

/// The stream name of a request.
fn stream_name(identifier: Option<pb::StreamIdentifier>) -> Result<String, RequestError> {
    let identifier = identifier.ok_or_else(|| invalid("the stream identifier is missing"))?;
    let name = String::from_utf8(identifier.stream_name)
        .map_err(|_| invalid("the stream name is not valid UTF-8"))?;
    if name.is_empty() {
        return Err(invalid("the stream name is empty"));
    }
    Ok(name)
}

/// A UUID in either of the protocol's forms.
fn parse_uuid(uuid: Option<pb::Uuid>) -> Result<Uuid, RequestError> {
    match uuid.and_then(|uuid| uuid.value) {
        Some(pb::uuid::Value::Structured(structured)) => {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&structured.most_significant_bits.to_be_bytes());
            bytes[8..].copy_from_slice(&structured.least_significant_bits.to_be_bytes());
            Ok(Uuid::from_bytes(bytes))
        }
        Some(pb::uuid::Value::String(text)) => text
            .parse()
            .map_err(|error| invalid(format!("the event id {text:?} is not a UUID: {error}"))),
        None => Err(invalid("the event id is missing")),
    }
}

/// A UUID in the form the read asked for.
fn encode_uuid(id: Uuid, as_string: bool) -> pb::Uuid {
    let value = if as_string {
        pb::uuid::Value::String(id.hyphenated().to_string())
    } else {
        let bits = id.as_u128();
        pb::uuid::Value::Structured(pb::uuid::Structured {
            // The two halves of the UUID's big-endian bytes, as signed integers (Java's layout).
            most_significant_bits: (bits >> 64) as u64 as i64,
            least_significant_bits: bits as u64 as i64,
        })
    };
    pb::Uuid { value: Some(value) }
}

/// One proposed event of an append, validated.
fn proposed_event(proposed: append_req::ProposedMessage) -> Result<ProposedEvent, RequestError> {
    let append_req::ProposedMessage {
        id,
        mut metadata,
        custom_metadata,
        data,
    } = proposed;
    let event_type = metadata
        .remove(METADATA_TYPE)
        .ok_or(RequestError::MissingMetadata(METADATA_TYPE))?;
    let content_type = metadata
        .remove(METADATA_CONTENT_TYPE)
        .ok_or(RequestError::MissingMetadata(METADATA_CONTENT_TYPE))?;
    if event_type.is_empty() {
        return Err(invalid("the event type is empty"));
    }
    let id = parse_uuid(id)?;
    if id.is_nil() {
        return Err(invalid("the event id is the nil UUID"));
    }
    Ok(ProposedEvent {
        id,
        event_type,
        is_json: content_type == CONTENT_TYPE_JSON,
        data,
        custom_metadata,
    })
}

/// The answer to an append.
fn append_response(outcome: AppendOutcome, expected: Expected) -> AppendResp {
    use append_resp::wrong_expected_version::{
        CurrentRevisionOption, CurrentRevisionOption2060, ExpectedRevisionOption,
        ExpectedRevisionOption2060,
    };

    let result = match outcome {
        AppendOutcome::Success {
            current_revision,
            position,
        } => append_resp::Result::Success(append_resp::Success {
            current_revision_option: Some(match current_revision {
                Some(revision) => {
                    append_resp::success::CurrentRevisionOption::CurrentRevision(revision)
                }
                None => append_resp::success::CurrentRevisionOption::NoStream(()),
            }),
            position_option: Some(append_resp::success::PositionOption::Position(
                append_resp::Position {
                    commit_position: position,
                    prepare_position: position,
                },
            )),
        }),
        AppendOutcome::WrongExpectedVersion { current_revision } => {
            // KurrentDB fills both the current fields and the deprecated 20.6.0 ones.
            let (current, current_2060) = match current_revision {
                Some(revision) => (
                    CurrentRevisionOption::CurrentRevision(revision),
                    CurrentRevisionOption2060::CurrentRevision2060(revision),
                ),
                None => (
                    CurrentRevisionOption::CurrentNoStream(()),
                    CurrentRevisionOption2060::NoStream2060(()),
                ),
            };
            let (expected, expected_2060) = match expected {
                Expected::Any => (
                    ExpectedRevisionOption::ExpectedAny(()),
                    ExpectedRevisionOption2060::Any2060(()),
                ),
                Expected::StreamExists => (
                    ExpectedRevisionOption::ExpectedStreamExists(()),
                    ExpectedRevisionOption2060::StreamExists2060(()),
                ),
                Expected::NoStream => (
                    ExpectedRevisionOption::ExpectedNoStream(()),
                    ExpectedRevisionOption2060::ExpectedRevision2060(u64::MAX),
                ),
                Expected::Revision(revision) => (
                    ExpectedRevisionOption::ExpectedRevision(revision),
                    ExpectedRevisionOption2060::ExpectedRevision2060(revision),
                ),
            };
            append_resp::Result::WrongExpectedVersion(append_resp::WrongExpectedVersion {
                current_revision_option_20_6_0: Some(current_2060),
                expected_revision_option_20_6_0: Some(expected_2060),
                current_revision_option: Some(current),
                expected_revision_option: Some(expected),
            })
        }
    };
    AppendResp {
        result: Some(result),
    }
}

/// What a read returns, validated.
#[derive(Debug)]
pub(crate) struct ReadPlan {
    source: ReadSource,
    /// Events still to return.
    remaining: u64,
    /// Answer event ids as strings (otherwise structured).
    uuid_as_string: bool,
}

#[derive(Debug)]
enum ReadSource {
    Stream {
        name: String,
        /// Revision of the next event to return; `None`: nothing left.
        next: Option<u64>,
        backwards: bool,
        /// Send `last_stream_position` at the end (control option `compatibility` ≥ 1).
        last_position: bool,
        first_page: bool,
    },
    All {
        /// Index in the log where the next page starts (backwards: one past it).
        next: usize,
        backwards: bool,
        filter: AllFilter,
    },
}

/// Validates a read request the way KurrentDB does and plans it.
fn read_plan(store: &Store, request: ReadReq) -> Result<ReadPlan, RequestError> {
    use read_req::options::{
        all_options::AllOption, filter_options, stream_options::RevisionOption, uuid_option,
        CountOption, FilterOption, ReadDirection, StreamOption,
    };

    let options = request
        .options
        .ok_or_else(|| invalid("the read request has no options"))?;
    let uuid_option = options
        .uuid_option
        .ok_or_else(|| invalid("'uuidOption' is a required argument"))?;
    let uuid_as_string = matches!(uuid_option.content, Some(uuid_option::Content::String(())));
    let backwards = match ReadDirection::try_from(options.read_direction) {
        Ok(ReadDirection::Forwards) => false,
        Ok(ReadDirection::Backwards) => true,
        Err(_) => {
            return Err(invalid(format!(
                "'{}' is not a valid read direction",
                options.read_direction
            )))
        }
    };
    let remaining = match options.count_option {
        Some(CountOption::Count(count)) => count,
        Some(CountOption::Subscription(_)) => {
            return Err(RequestError::Unimplemented(
                "Subscriptions (Read with 'subscription')",
            ))
        }
        None => {
            return Err(invalid(
                "the read options have neither 'count' nor 'subscription'",
            ))
        }
    };
    let filter = match options.filter_option {
        Some(FilterOption::NoFilter(())) => None,
        Some(FilterOption::Filter(filter)) => Some(filter),
        None => {
            return Err(invalid(
                "the read options have neither 'filter' nor 'no_filter'",
            ))
        }
    };

    let source = match options.stream_option {
        Some(StreamOption::Stream(stream)) => {
            if filter.is_some() {
                return Err(invalid(
                    "a stream read cannot be filtered (filters apply to $all only)",
                ));
            }
            let name = stream_name(stream.stream_identifier)?;
            let next = match stream.revision_option {
                Some(RevisionOption::Revision(revision)) => revision,
                Some(RevisionOption::Start(())) => 0,
                // Forwards from the end: nothing; backwards: from the last event.
                Some(RevisionOption::End(())) => u64::MAX,
                None => return Err(invalid("the stream read options have no revision option")),
            };
            ReadSource::Stream {
                name,
                next: Some(next),
                backwards,
                last_position: options
                    .control_option
                    .is_some_and(|control| control.compatibility >= 1),
                first_page: true,
            }
        }
        Some(StreamOption::All(all)) => {
            let next = match all.all_option {
                Some(AllOption::Start(())) => 0,
                Some(AllOption::End(())) => store.all_len(),
                // Forwards: the events at or after the position; backwards: those before it.
                Some(AllOption::Position(position)) => {
                    store.all_index_at(position.commit_position, position.prepare_position)
                }
                None => return Err(invalid("the $all read options have no position option")),
            };
            let filter = match filter {
                None => AllFilter::Everything,
                Some(filter) => {
                    if filter.window.is_none() {
                        return Err(invalid("the read filter has no window ('max' or 'count')"));
                    }
                    let (target, expression) = match filter.filter {
                        Some(filter_options::Filter::StreamIdentifier(expression)) => {
                            (FilterTarget::StreamName, expression)
                        }
                        Some(filter_options::Filter::EventType(expression)) => {
                            (FilterTarget::EventType, expression)
                        }
                        None => return Err(invalid("the read filter has no expression")),
                    };
                    if expression.regex.is_empty() {
                        AllFilter::Prefixes(target, expression.prefix)
                    } else if expression.regex == EXCLUDE_SYSTEM_EVENTS_REGEX {
                        AllFilter::NotSystem(target)
                    } else {
                        return Err(RequestError::Unimplemented(
                            "Regular expression filters (other than exclude_system_events)",
                        ));
                    }
                }
            };
            ReadSource::All {
                next,
                backwards,
                filter,
            }
        }
        None => return Err(invalid("the read options have neither 'stream' nor 'all'")),
    };
    Ok(ReadPlan {
        source,
        remaining,
        uuid_as_string,
    })
}

/// The answers to a read, taken from the store one page at a time as the client consumes them.
#[derive(Debug)]
pub(crate) struct ReadIter {
    store: Arc<Store>,
    plan: ReadPlan,
    buffer: VecDeque<ReadResp>,
    finished: bool,
}

impl ReadIter {
    fn new(store: Arc<Store>, plan: ReadPlan) -> Self {
        ReadIter {
            store,
            plan,
            buffer: VecDeque::new(),
            finished: false,
        }
    }

    /// Reads the next page into the buffer; sets `finished` after the last one.
    fn fill(&mut self) {
        let as_string = self.plan.uuid_as_string;
        let page_size = usize::try_from(self.plan.remaining)
            .unwrap_or(usize::MAX)
            .min(READ_PAGE_SIZE);
        match &mut self.plan.source {
            ReadSource::Stream {
                name,
                next,
                backwards,
                last_position,
                first_page,
            } => {
                let Some(from) = *next else {
                    self.finished = true;
                    return;
                };
                let Some(page) = self.store.read_stream(name, from, *backwards, page_size) else {
                    if *first_page {
                        self.buffer.push_back(ReadResp {
                            content: Some(read_resp::Content::StreamNotFound(
                                read_resp::StreamNotFound {
                                    stream_identifier: Some(pb::StreamIdentifier {
                                        stream_name: name.clone().into_bytes(),
                                    }),
                                },
                            )),
                        });
                    }
                    self.finished = true;
                    return;
                };
                *first_page = false;
                let returned = page.events.len();
                *next = page.events.last().and_then(|last| {
                    if *backwards {
                        last.revision.checked_sub(1)
                    } else {
                        last.revision.checked_add(1)
                    }
                });
                self.plan.remaining -= returned as u64;
                for event in &page.events {
                    self.buffer.push_back(event_response(event, as_string));
                }
                if returned < page_size || self.plan.remaining == 0 || next.is_none() {
                    if *last_position {
                        self.buffer.push_back(ReadResp {
                            content: Some(read_resp::Content::LastStreamPosition(
                                page.last_revision,
                            )),
                        });
                    }
                    self.finished = true;
                }
            }
            ReadSource::All {
                next,
                backwards,
                filter,
            } => {
                let page = self.store.read_all(*next, *backwards, page_size, filter);
                *next = page.next;
                self.plan.remaining -= page.events.len() as u64;
                for event in &page.events {
                    self.buffer.push_back(event_response(event, as_string));
                }
                if page.exhausted || self.plan.remaining == 0 {
                    self.finished = true;
                }
            }
        }
    }
}

impl Iterator for ReadIter {
    type Item = Result<ReadResp, Status>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(response) = self.buffer.pop_front() {
                return Some(Ok(response));
            }
            if self.finished {
                return None;
            }
            self.fill();
        }
    }
}

/// One event as KurrentDB returns it from a read.
fn event_response(event: &StoredEvent, uuid_as_string: bool) -> ReadResp {
    use read_resp::read_event::{Position, RecordedEvent};

    let metadata = HashMap::from([
        (METADATA_TYPE.to_owned(), event.event_type.clone()),
        (METADATA_CONTENT_TYPE.to_owned(), event.content_type.clone()),
        (METADATA_CREATED.to_owned(), event.created_ticks.to_string()),
    ]);
    ReadResp {
        content: Some(read_resp::Content::Event(read_resp::ReadEvent {
            event: Some(RecordedEvent {
                id: Some(encode_uuid(event.id, uuid_as_string)),
                stream_identifier: Some(pb::StreamIdentifier {
                    stream_name: event.stream.clone().into_bytes(),
                }),
                stream_revision: event.revision,
                prepare_position: event.position,
                commit_position: event.position,
                metadata,
                custom_metadata: event.custom_metadata.clone(),
                data: event.data.clone(),
            }),
            link: None,
            position: Some(Position::CommitPosition(event.position)),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_round_trip_in_both_forms() {
        let id = Uuid::new_v4();
        assert_eq!(
            parse_uuid(Some(encode_uuid(id, false))).expect("structured"),
            id
        );
        assert_eq!(parse_uuid(Some(encode_uuid(id, true))).expect("string"), id);
        assert!(parse_uuid(Some(pb::Uuid {
            value: Some(pb::uuid::Value::String("nope".to_owned()))
        }))
        .is_err());
        assert!(parse_uuid(None).is_err());
    }

    #[test]
    fn statuses_carry_kurrentdb_exceptions() {
        let status = Status::from(RequestError::AppendTooLarge);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status
                .metadata()
                .get(EXCEPTION_KEY)
                .and_then(|v| v.to_str().ok()),
            Some(EXCEPTION_MAXIMUM_APPEND_SIZE_EXCEEDED)
        );
        assert_eq!(
            status
                .metadata()
                .get(MAXIMUM_APPEND_SIZE_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("1048576")
        );
        let status = Status::from(RequestError::Unimplemented("Streams.Delete"));
        assert_eq!(status.code(), Code::Unimplemented);
        assert_eq!(
            status.message(),
            "Streams.Delete is not implemented by wallex-kurrentdb-stub"
        );
    }
}
