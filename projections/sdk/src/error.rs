//! [`Error`]: why `handle` rejects a batch, and which event made it.

use std::fmt;

use crate::event::Event;

/// A `Result` whose error is the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Rejects the batch: becomes the WIT `projection-error { message, global-position }`.
///
/// Give the position of the event that could not be handled (every SDK decoding error does):
/// the host then applies the events before it and retries that event alone, instead of
/// searching the batch for it. The host clips messages to 1 KiB.
///
/// The messages the SDK makes have two shapes:
///
/// - `"{event_type} {event_id}: {message}"` for the event's data and for [`Event::error`],
///   e.g. `"WalletCreated 0190…: walletId is missing or not a string"`;
/// - `"metadata of {event_id}: {message}"` when the metadata is not JSON
///   ([`Event::decode_metadata`]).
///
/// ```
/// use wallex_projection_sdk::{Error, Event};
///
/// let event = Event::new("WalletCreated", "{}").with_position(42).with_event_id("e1");
/// let error = event.error("no wallet");
/// assert_eq!(error.message(), "WalletCreated e1: no wallet");
/// assert_eq!(error.global_position(), Some(42));
/// assert_eq!(Error::at(7, "bad").global_position(), Some(7));
/// assert_eq!(Error::new("bad").global_position(), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
    global_position: Option<i64>,
}

impl Error {
    /// An error that names no event (the host searches the batch for the one responsible).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            global_position: None,
        }
    }

    /// An error caused by the event at `global_position`, with `message` as it is.
    pub fn at(global_position: i64, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            global_position: Some(global_position),
        }
    }

    /// The message as the host will receive it.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The global position of the event responsible, if one.
    pub fn global_position(&self) -> Option<i64> {
        self.global_position
    }

    /// The message and position, by value.
    pub fn into_parts(self) -> (String, Option<i64>) {
        (self.message, self.global_position)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Turns any error into an SDK [`Error`] about one event, so `?` keeps its position.
///
/// ```
/// use wallex_projection_sdk::{Event, ForEvent, Result};
///
/// fn amount(event: &Event) -> Result<i64> {
///     "12x".parse::<i64>().for_event(event)
/// }
///
/// let event = Event::new("Deposited", "{}").with_position(3).with_event_id("e3");
/// let error = amount(&event).unwrap_err();
/// assert_eq!(error.message(), "Deposited e3: invalid digit found in string");
/// assert_eq!(error.global_position(), Some(3));
/// ```
pub trait ForEvent<T> {
    /// `Err(e)` becomes [`event.error(e)`](Event::error).
    fn for_event(self, event: &Event) -> Result<T>;
}

impl<T, E: fmt::Display> ForEvent<T> for std::result::Result<T, E> {
    fn for_event(self, event: &Event) -> Result<T> {
        self.map_err(|e| event.error(e))
    }
}
