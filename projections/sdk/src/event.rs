//! The events `handle` receives: the raw [`Event`] (every WIT field, for any event type) and
//! its typed decodings — [`DomainEvent`] for the data of the event types this SDK knows
//! ([`WalletCreated`]), [`Metadata`] for the metadata every event carries.
//!
//! Typed fields are checked when they are read: a projection fails on a missing or mistyped
//! field only if it reads that field, and the first field it reads that is wrong names the
//! error (`"{event_type} {event_id}: {field} is missing or not a string"`).

use std::fmt;

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::value::{self, Decimal, Timestamp, Uuid};

/// The event's place in delivery order: deliveries are strictly increasing in
/// `(xact_id, position)` order, which is how `LogOrder` compares.
///
/// Store both as `s64` columns and pass them as an upsert [`guard`](crate::Upsert::guard) to make
/// an accumulating row idempotent under replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogOrder {
    /// The committing transaction's id.
    pub xact_id: i64,
    /// The position within the log.
    pub position: i64,
}

/// One event of a batch, as the host delivers it.
///
/// Every field is public, so events of any type can be read raw; [`decode`](Self::decode) and
/// [`decode_metadata`](Self::decode_metadata) give typed views. `new` and the `with_*` methods
/// build events for a projection's own unit tests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// The event's position in the global log; what an [`Error`] names.
    pub global_position: i64,
    /// Its place in delivery order.
    pub order: LogOrder,
    /// Its id.
    pub event_id: Uuid,
    /// Its stream, e.g. `wallet-w1`.
    pub stream_id: String,
    /// Its version within the stream (1 for the first event).
    pub stream_version: i64,
    /// Its type, e.g. `WalletCreated`.
    pub event_type: String,
    /// Its data: JSON text (see [`decode`](Self::decode)).
    pub data: value::Json,
    /// Its metadata: JSON text (see [`decode_metadata`](Self::decode_metadata)).
    pub metadata: value::Json,
    /// When it was recorded: RFC 3339 text.
    pub recorded_at: Timestamp,
}

impl Event {
    /// An event of `event_type` with `data` (JSON text), for tests: position, order and
    /// versions 0, empty id and stream, metadata `{}`, recorded at the Unix epoch.
    pub fn new(event_type: impl Into<String>, data: impl Into<String>) -> Self {
        Self {
            global_position: 0,
            order: LogOrder::default(),
            event_id: Uuid::default(),
            stream_id: String::new(),
            stream_version: 0,
            event_type: event_type.into(),
            data: value::Json::new(data),
            metadata: value::Json::new("{}"),
            recorded_at: Timestamp::new("1970-01-01T00:00:00Z"),
        }
    }

    /// The same event at `global_position`, delivered in order `(global_position,
    /// global_position)`.
    pub fn with_position(mut self, global_position: i64) -> Self {
        self.global_position = global_position;
        self.order = LogOrder {
            xact_id: global_position,
            position: global_position,
        };
        self
    }

    /// The same event with this delivery order.
    pub fn with_order(mut self, xact_id: i64, position: i64) -> Self {
        self.order = LogOrder { xact_id, position };
        self
    }

    /// The same event with this id.
    pub fn with_event_id(mut self, event_id: impl Into<String>) -> Self {
        self.event_id = Uuid::new(event_id);
        self
    }

    /// The same event in `stream_id` at `stream_version`.
    pub fn with_stream(mut self, stream_id: impl Into<String>, stream_version: i64) -> Self {
        self.stream_id = stream_id.into();
        self.stream_version = stream_version;
        self
    }

    /// The same event with this metadata (JSON text).
    pub fn with_metadata(mut self, metadata: impl Into<String>) -> Self {
        self.metadata = value::Json::new(metadata);
        self
    }

    /// The same event recorded at `recorded_at` (RFC 3339 text).
    pub fn with_recorded_at(mut self, recorded_at: impl Into<String>) -> Self {
        self.recorded_at = Timestamp::new(recorded_at);
        self
    }

    /// An [`Error`] about this event: `"{event_type} {event_id}: {message}"` at its position.
    pub fn error(&self, message: impl fmt::Display) -> Error {
        Error::at(
            self.global_position,
            format!("{} {}: {message}", self.event_type, self.event_id),
        )
    }

    /// The data, parsed as JSON; an error about this event if it is not JSON.
    pub fn parse_data(&self) -> Result<Json> {
        serde_json::from_str(self.data.as_str()).map_err(|e| self.error(e))
    }

    /// The data decoded by event type: [`DomainEvent::Unknown`] for a type the SDK does not
    /// know (the data is then not even parsed).
    ///
    /// Fails (with this event's position) only if a known type's data is not JSON; its fields
    /// are checked when read.
    ///
    /// ```
    /// use wallex_projection_sdk::{DomainEvent, Event};
    ///
    /// let event = Event::new("WalletCreated", r#"{"walletId":"w1","initialBalance":"5"}"#);
    /// match event.decode()? {
    ///     DomainEvent::WalletCreated(wallet) => {
    ///         assert_eq!(wallet.wallet_id()?, "w1");
    ///         assert_eq!(wallet.initial_balance()?.as_str(), "5");
    ///         assert!(wallet.owner_id().is_err());
    ///     }
    ///     _ => unreachable!(),
    /// }
    /// # Ok::<(), wallex_projection_sdk::Error>(())
    /// ```
    pub fn decode(&self) -> Result<DomainEvent<'_>> {
        Ok(match self.event_type.as_str() {
            WalletCreated::TYPE => DomainEvent::WalletCreated(WalletCreated::decode(self)?),
            MoneyMoved::FUNDS_DEPOSITED => DomainEvent::FundsDeposited(MoneyMoved::decode(self)?),
            MoneyMoved::FUNDS_WITHDRAWN => DomainEvent::FundsWithdrawn(MoneyMoved::decode(self)?),
            MoneyMoved::TRANSFER_DEBITED => DomainEvent::TransferDebited(MoneyMoved::decode(self)?),
            MoneyMoved::TRANSFER_CREDITED => {
                DomainEvent::TransferCredited(MoneyMoved::decode(self)?)
            }
            _ => DomainEvent::Unknown(self),
        })
    }

    /// The metadata, parsed. Fails with `"metadata of {event_id}: {e}"` at this event's position
    /// if it is not JSON.
    pub fn decode_metadata(&self) -> Result<Metadata> {
        serde_json::from_str(self.metadata.as_str())
            .map(|json| Metadata { json })
            .map_err(|e| {
                Error::at(
                    self.global_position,
                    format!("metadata of {}: {e}", self.event_id),
                )
            })
    }
}

/// An event's data, decoded by its type.
///
/// New event types become new variants in later SDK versions (the enum is `#[non_exhaustive]`,
/// so that is not a breaking change): match the ones you handle and end with `_ => …`. An
/// event of a type added later arrives as [`Unknown`](Self::Unknown) until then; read it raw.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DomainEvent<'a> {
    /// A `WalletCreated` event.
    WalletCreated(WalletCreated<'a>),
    /// A `FundsDeposited` event: money in from outside wallex.
    FundsDeposited(MoneyMoved<'a>),
    /// A `FundsWithdrawn` event: money out to outside wallex.
    FundsWithdrawn(MoneyMoved<'a>),
    /// A `TransferDebited` event: the paying wallet's leg of a transfer.
    TransferDebited(MoneyMoved<'a>),
    /// A `TransferCredited` event: the receiving wallet's leg of a transfer.
    TransferCredited(MoneyMoved<'a>),
    /// An event of a type this SDK does not know: the raw event.
    Unknown(&'a Event),
}

/// The data of a `WalletCreated` event:
/// `{"walletId","ownerId","initialBalance" (decimal string),"currency","createdAt"}`.
///
/// Each field is checked when read: missing or not a string, it is an error about the event,
/// `"WalletCreated {event_id}: {field} is missing or not a string"`.
#[derive(Debug, Clone, PartialEq)]
pub struct WalletCreated<'a> {
    event: &'a Event,
    data: Json,
}

impl<'a> WalletCreated<'a> {
    /// The event type, for [`ProjectionInfo::subscribe`](crate::ProjectionInfo::subscribe).
    pub const TYPE: &'static str = "WalletCreated";

    /// `walletId`: the wallet's id (its stream is `wallet-{walletId}`).
    pub fn wallet_id(&self) -> Result<&str> {
        self.text("walletId")
    }

    /// `ownerId`: the owner's id.
    pub fn owner_id(&self) -> Result<&str> {
        self.text("ownerId")
    }

    /// `initialBalance`: the opening balance, a decimal string.
    pub fn initial_balance(&self) -> Result<Decimal> {
        self.text("initialBalance").map(Decimal::new)
    }

    /// `currency`: an ISO 4217 code, e.g. `EUR`.
    pub fn currency(&self) -> Result<&str> {
        self.text("currency")
    }

    /// `createdAt`: when the wallet was created, RFC 3339.
    pub fn created_at(&self) -> Result<Timestamp> {
        self.text("createdAt").map(Timestamp::new)
    }
}

/// The data of an event that moves money (wallet events schema 1.1.0, `wit/README.md`):
/// `{"walletId","amount","currency","balance","reference"?,"at"}`, and for a transfer's legs
/// `"transferId"` and `"counterpartyWalletId"`. Money is a decimal string; `balance` is the
/// wallet's balance after the movement. The host writes only `WalletCreated` so far; these decode
/// the events of the deposit, withdrawal and transfer commands being built.
///
/// Fields are checked when read, as [`WalletCreated`]'s are.
#[derive(Debug, Clone, PartialEq)]
pub struct MoneyMoved<'a> {
    event: &'a Event,
    data: Json,
}

impl<'a> MoneyMoved<'a> {
    /// Type of money paid in, for [`ProjectionInfo::subscribe`](crate::ProjectionInfo::subscribe).
    pub const FUNDS_DEPOSITED: &'static str = "FundsDeposited";
    /// Type of money paid out.
    pub const FUNDS_WITHDRAWN: &'static str = "FundsWithdrawn";
    /// Type of a transfer's leg on the paying wallet's stream.
    pub const TRANSFER_DEBITED: &'static str = "TransferDebited";
    /// Type of a transfer's leg on the receiving wallet's stream.
    pub const TRANSFER_CREDITED: &'static str = "TransferCredited";

    /// Whether the movement adds to the wallet's balance (a deposit or a received transfer).
    pub fn is_credit(&self) -> bool {
        matches!(
            self.event.event_type.as_str(),
            Self::FUNDS_DEPOSITED | Self::TRANSFER_CREDITED
        )
    }

    /// `walletId`: the wallet whose stream holds the event.
    pub fn wallet_id(&self) -> Result<&str> {
        self.text("walletId")
    }

    /// `amount`: what moved, positive, a decimal string.
    pub fn amount(&self) -> Result<Decimal> {
        self.text("amount").map(Decimal::new)
    }

    /// `currency`: the wallet's ISO 4217 code.
    pub fn currency(&self) -> Result<&str> {
        self.text("currency")
    }

    /// `balance`: the wallet's balance after the movement.
    pub fn balance(&self) -> Result<Decimal> {
        self.text("balance").map(Decimal::new)
    }

    /// `reference`: the client's reference, when it sent one.
    pub fn reference(&self) -> Option<&str> {
        self.data["reference"].as_str()
    }

    /// `at`: when it happened, RFC 3339.
    pub fn at(&self) -> Result<Timestamp> {
        self.text("at").map(Timestamp::new)
    }

    /// `transferId`: the transfer both legs belong to; `None` for a deposit or a withdrawal.
    pub fn transfer_id(&self) -> Option<&str> {
        self.data["transferId"].as_str()
    }

    /// `counterpartyWalletId`: the other wallet of a transfer (the payee on the debit, the payer
    /// on the credit); `None` for a deposit or a withdrawal.
    pub fn counterparty_wallet_id(&self) -> Option<&str> {
        self.data["counterpartyWalletId"].as_str()
    }
}

/// What every typed view of an event has: its decoding from the raw event, the raw event and
/// its parsed data, and a checked text field.
macro_rules! typed_view {
    ($view:ident) => {
        impl<'a> $view<'a> {
            fn decode(event: &'a Event) -> Result<Self> {
                Ok(Self {
                    event,
                    data: event.parse_data()?,
                })
            }

            /// The raw event.
            pub fn event(&self) -> &'a Event {
                self.event
            }

            /// The parsed data, for fields this SDK version does not know.
            pub fn data(&self) -> &Json {
                &self.data
            }

            fn text(&self, field: &str) -> Result<&str> {
                text_field(self.event, &self.data, field)
            }
        }
    };
}

typed_view!(WalletCreated);
typed_view!(MoneyMoved);

/// `data[field]` as a string, or an error about `event`.
fn text_field<'j>(event: &Event, data: &'j Json, field: &str) -> Result<&'j str> {
    data[field]
        .as_str()
        .ok_or_else(|| event.error(format_args!("{field} is missing or not a string")))
}

/// An event's metadata: `{"correlationId","causationId","idempotencyKey"?}`.
///
/// The fields are optional: each reads as `None` when missing or not a string.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    json: Json,
}

impl Metadata {
    /// `correlationId`: the request that started the chain of events.
    pub fn correlation_id(&self) -> Option<&str> {
        self.json["correlationId"].as_str()
    }

    /// `causationId`: the message that caused this event.
    pub fn causation_id(&self) -> Option<&str> {
        self.json["causationId"].as_str()
    }

    /// `idempotencyKey`: the client's key for the request, when it gave one.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.json["idempotencyKey"].as_str()
    }

    /// The parsed metadata, for other fields.
    pub fn json(&self) -> &Json {
        &self.json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "00000000-0000-0000-0000-00000000000a";

    fn wallet_created(data: &str) -> Event {
        Event::new(WalletCreated::TYPE, data)
            .with_position(42)
            .with_event_id(ID)
    }

    fn decoded<'a>(event: &'a Event) -> WalletCreated<'a> {
        match event.decode().expect("decodes") {
            DomainEvent::WalletCreated(wallet) => wallet,
            other => panic!("not a WalletCreated: {other:?}"),
        }
    }

    #[test]
    fn wallet_created_fields_are_typed() {
        let event = wallet_created(
            r#"{"walletId":"w1","ownerId":"o1","initialBalance":"10.50","currency":"EUR",
                "createdAt":"2026-11-26T12:00:00.000Z","extra":1}"#,
        );
        let wallet = decoded(&event);
        assert_eq!(wallet.wallet_id().unwrap(), "w1");
        assert_eq!(wallet.owner_id().unwrap(), "o1");
        assert_eq!(wallet.initial_balance().unwrap(), Decimal::new("10.50"));
        assert_eq!(wallet.currency().unwrap(), "EUR");
        assert_eq!(
            wallet.created_at().unwrap(),
            Timestamp::new("2026-11-26T12:00:00.000Z")
        );
        assert_eq!(wallet.data()["extra"], 1);
        assert_eq!(wallet.event().global_position, 42);
    }

    #[test]
    fn money_movements_are_typed() {
        let event = Event::new(
            MoneyMoved::TRANSFER_DEBITED,
            r#"{"walletId":"w1","transferId":"t1","counterpartyWalletId":"w2","amount":"2.50",
                "currency":"EUR","balance":"8.00","reference":"rent",
                "at":"2026-11-26T12:00:01.000Z"}"#,
        )
        .with_position(43)
        .with_event_id(ID);
        let DomainEvent::TransferDebited(moved) = event.decode().expect("decodes") else {
            panic!("not a TransferDebited");
        };
        assert!(!moved.is_credit());
        assert_eq!(moved.wallet_id().unwrap(), "w1");
        assert_eq!(moved.amount().unwrap(), Decimal::new("2.50"));
        assert_eq!(moved.currency().unwrap(), "EUR");
        assert_eq!(moved.balance().unwrap(), Decimal::new("8.00"));
        assert_eq!(moved.reference(), Some("rent"));
        assert_eq!(moved.transfer_id(), Some("t1"));
        assert_eq!(moved.counterparty_wallet_id(), Some("w2"));
        assert_eq!(
            moved.at().unwrap(),
            Timestamp::new("2026-11-26T12:00:01.000Z")
        );
        let deposit = Event::new(
            MoneyMoved::FUNDS_DEPOSITED,
            r#"{"walletId":"w1","currency":"EUR","balance":"1"}"#,
        )
        .with_position(44)
        .with_event_id(ID);
        let DomainEvent::FundsDeposited(moved) = deposit.decode().expect("decodes") else {
            panic!("not a FundsDeposited");
        };
        assert!(moved.is_credit());
        assert_eq!((moved.reference(), moved.transfer_id()), (None, None));
        assert_eq!(
            moved.amount().unwrap_err().message(),
            format!("FundsDeposited {ID}: amount is missing or not a string")
        );
    }

    #[test]
    fn a_missing_or_mistyped_field_is_an_error_at_the_event() {
        let event = wallet_created(r#"{"walletId":7}"#);
        let wallet = decoded(&event);
        let error = wallet.wallet_id().unwrap_err();
        assert_eq!(
            error.message(),
            format!("WalletCreated {ID}: walletId is missing or not a string")
        );
        assert_eq!(error.global_position(), Some(42));
        assert_eq!(
            wallet.currency().unwrap_err().message(),
            format!("WalletCreated {ID}: currency is missing or not a string")
        );
        // Data that is JSON but not an object has every field missing.
        let event = wallet_created("[1]");
        assert_eq!(
            decoded(&event).created_at().unwrap_err().message(),
            format!("WalletCreated {ID}: createdAt is missing or not a string")
        );
    }

    #[test]
    fn data_that_is_not_json_fails_the_decoding_with_serde_jsons_message() {
        let event = wallet_created("{not json");
        let error = event.decode().unwrap_err();
        let serde = serde_json::from_str::<Json>("{not json").unwrap_err();
        assert_eq!(error.message(), format!("WalletCreated {ID}: {serde}"));
        assert_eq!(error.global_position(), Some(42));
    }

    #[test]
    fn unknown_types_are_left_raw_and_unparsed() {
        let event = Event::new("Deposited", "not json either").with_position(5);
        match event.decode().unwrap() {
            DomainEvent::Unknown(raw) => {
                assert_eq!(raw.event_type, "Deposited");
                assert_eq!(raw.data.as_str(), "not json either");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            event.parse_data().unwrap_err().global_position(),
            Some(5),
            "raw parsing is still available"
        );
    }

    #[test]
    fn metadata_fields_are_optional_and_bad_json_names_the_event() {
        let event = Event::new("X", "{}").with_metadata(
            r#"{"correlationId":"c","causationId":3,"idempotencyKey":"k","other":true}"#,
        );
        let metadata = event.decode_metadata().unwrap();
        assert_eq!(metadata.correlation_id(), Some("c"));
        assert_eq!(metadata.causation_id(), None);
        assert_eq!(metadata.idempotency_key(), Some("k"));
        assert_eq!(metadata.json()["other"], true);
        let not_object = Event::new("X", "{}").with_metadata("\"text\"");
        assert_eq!(not_object.decode_metadata().unwrap().correlation_id(), None);

        let bad = Event::new("X", "{}")
            .with_position(9)
            .with_event_id(ID)
            .with_metadata("{");
        let error = bad.decode_metadata().unwrap_err();
        let serde = serde_json::from_str::<Json>("{").unwrap_err();
        assert_eq!(error.message(), format!("metadata of {ID}: {serde}"));
        assert_eq!(error.global_position(), Some(9));
    }

    #[test]
    fn test_events_are_built_field_by_field() {
        let event = Event::new("T", "{}")
            .with_position(10)
            .with_order(3, 11)
            .with_stream("wallet-w1", 2)
            .with_recorded_at("2026-01-01T00:00:00Z");
        assert_eq!(event.global_position, 10);
        assert_eq!(
            event.order,
            LogOrder {
                xact_id: 3,
                position: 11
            }
        );
        assert!(
            event.order
                < LogOrder {
                    xact_id: 4,
                    position: 0
                }
        );
        assert_eq!(
            (event.stream_id.as_str(), event.stream_version),
            ("wallet-w1", 2)
        );
        assert_eq!(event.recorded_at.as_str(), "2026-01-01T00:00:00Z");
        assert_eq!(event.metadata.as_str(), "{}");
    }
}
