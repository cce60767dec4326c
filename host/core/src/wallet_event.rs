//! A wallet's events, typed, and the snapshot as their fold.
//!
//! Why it exists: a wallet's stream is its history — created, then money in and out — and the
//! snapshot in `wallets` is only a cache of folding it. This module is the one definition of the
//! event types and their JSON `data` (the projection contract documented in `wit/README.md`,
//! "Wallet events"), and of [`fold`], which the write path, the recovery checks and the tests use
//! to say what a stream means.
//!
//! Architecture invariant: money in an event's `data` is a decimal string with the digits it was
//! written with, never a JSON float; each event carries the balance after it, so a reader can
//! use the event alone, and [`fold`] checks that the balance recorded is the balance computed.
//! API boundary: plain values in, plain values out; no storage, no HTTP.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

use crate::wallet::{format_timestamp, WalletSnapshot, WALLET_CREATED};

/// Event type of money paid into a wallet from outside wallex.
pub const FUNDS_DEPOSITED: &str = "FundsDeposited";
/// Event type of money paid out of a wallet to outside wallex.
pub const FUNDS_WITHDRAWN: &str = "FundsWithdrawn";
/// Event type of a transfer's leg on the paying wallet's stream.
pub const TRANSFER_DEBITED: &str = "TransferDebited";
/// Event type of a transfer's leg on the receiving wallet's stream.
pub const TRANSFER_CREDITED: &str = "TransferCredited";
/// Every wallet event type, in the order of the contract's table.
pub const EVENT_TYPES: [&str; 5] = [
    WALLET_CREATED,
    FUNDS_DEPOSITED,
    FUNDS_WITHDRAWN,
    TRANSFER_DEBITED,
    TRANSFER_CREDITED,
];
/// Version of the wallet events' JSON schemas (`wit/README.md`), semver: a new event type or a
/// new optional field raises the minor version (a projection reads only the types it subscribes
/// to, and ignores fields it does not know); a changed or removed field, the major. 1.0.0 was
/// `WalletCreated` alone.
pub const WALLET_EVENTS_VERSION: &str = "1.1.0";

/// One thing that happened to a wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalletEvent {
    /// The wallet was created with an opening balance (`WalletCreated`).
    Created {
        /// The wallet's id.
        wallet_id: String,
        /// Who it belongs to.
        owner_id: String,
        /// Its opening balance.
        initial_balance: Decimal,
        /// ISO 4217 code of every amount of the wallet.
        currency: String,
        /// When it was created, to the millisecond.
        at: DateTime<Utc>,
    },
    /// Money paid in, or out, or moved between two wallets: every event after the creation.
    Moved(Movement),
}

/// What a movement of money is, besides its amounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MovementKind {
    /// In from outside wallex (`FundsDeposited`).
    Deposit,
    /// Out to outside wallex (`FundsWithdrawn`).
    Withdrawal,
    /// This wallet's leg of a transfer that paid another (`TransferDebited`).
    TransferDebit,
    /// This wallet's leg of a transfer that paid it (`TransferCredited`).
    TransferCredit,
}

impl MovementKind {
    /// The event type of this kind of movement.
    pub fn event_type(self) -> &'static str {
        match self {
            Self::Deposit => FUNDS_DEPOSITED,
            Self::Withdrawal => FUNDS_WITHDRAWN,
            Self::TransferDebit => TRANSFER_DEBITED,
            Self::TransferCredit => TRANSFER_CREDITED,
        }
    }

    /// Whether the movement adds to the balance (deposits and received transfers).
    pub fn credits(self) -> bool {
        matches!(self, Self::Deposit | Self::TransferCredit)
    }

    fn from_event_type(event_type: &str) -> Option<Self> {
        [
            Self::Deposit,
            Self::Withdrawal,
            Self::TransferDebit,
            Self::TransferCredit,
        ]
        .into_iter()
        .find(|kind| kind.event_type() == event_type)
    }
}

/// Money in or out of one wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movement {
    /// Which movement.
    pub kind: MovementKind,
    /// The wallet whose stream holds the event.
    pub wallet_id: String,
    /// What moved: positive, in the wallet's currency.
    pub amount: Decimal,
    /// The wallet's currency (repeated, so an event is read alone).
    pub currency: String,
    /// The wallet's balance after the movement.
    pub balance: Decimal,
    /// The client's reference, when it sent one.
    pub reference: Option<String>,
    /// For a transfer's legs: the transfer's id (the same on both legs) and the other wallet.
    pub transfer: Option<TransferLeg>,
    /// When it happened, to the millisecond.
    pub at: DateTime<Utc>,
}

/// What ties a transfer's two legs together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferLeg {
    /// The transfer's id: the same in the debit and the credit.
    pub transfer_id: String,
    /// The other wallet: the payee on the debit, the payer on the credit.
    pub counterparty_wallet_id: String,
}

/// Why an event's `data` is not a wallet event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not one of [`EVENT_TYPES`].
    #[error("unknown wallet event type {0:?}")]
    UnknownType(String),
    /// A field is missing or not of its type.
    #[error("{event_type} has no valid {field}: {detail}")]
    Field {
        /// The event's type.
        event_type: String,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

impl WalletEvent {
    /// The event's type, as stored with it.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Created { .. } => WALLET_CREATED,
            Self::Moved(movement) => movement.kind.event_type(),
        }
    }

    /// The wallet whose stream the event is on.
    pub fn wallet_id(&self) -> &str {
        match self {
            Self::Created { wallet_id, .. } => wallet_id,
            Self::Moved(movement) => &movement.wallet_id,
        }
    }

    /// The event's JSON `data`, as stored and as projections receive it.
    pub fn to_data(&self) -> Value {
        match self {
            Self::Created {
                wallet_id,
                owner_id,
                initial_balance,
                currency,
                at,
            } => json!({
                "walletId": wallet_id,
                "ownerId": owner_id,
                "initialBalance": initial_balance.to_string(),
                "currency": currency,
                "createdAt": format_timestamp(*at),
            }),
            Self::Moved(movement) => {
                let mut data = Map::new();
                data.insert("walletId".into(), json!(movement.wallet_id));
                if let Some(leg) = &movement.transfer {
                    data.insert("transferId".into(), json!(leg.transfer_id));
                    data.insert(
                        "counterpartyWalletId".into(),
                        json!(leg.counterparty_wallet_id),
                    );
                }
                data.insert("amount".into(), json!(movement.amount.to_string()));
                data.insert("currency".into(), json!(movement.currency));
                data.insert("balance".into(), json!(movement.balance.to_string()));
                if let Some(reference) = &movement.reference {
                    data.insert("reference".into(), json!(reference));
                }
                data.insert("at".into(), json!(format_timestamp(movement.at)));
                Value::Object(data)
            }
        }
    }

    /// Reads an event of type `event_type` from its `data`.
    pub fn from_data(event_type: &str, data: &Value) -> Result<Self, DecodeError> {
        let fields = Fields { event_type, data };
        if event_type == WALLET_CREATED {
            return Ok(Self::Created {
                wallet_id: fields.text("walletId")?,
                owner_id: fields.text("ownerId")?,
                initial_balance: fields.decimal("initialBalance")?,
                currency: fields.text("currency")?,
                at: fields.time("createdAt")?,
            });
        }
        let kind = MovementKind::from_event_type(event_type)
            .ok_or_else(|| DecodeError::UnknownType(event_type.to_owned()))?;
        let transfer = match kind {
            MovementKind::TransferDebit | MovementKind::TransferCredit => Some(TransferLeg {
                transfer_id: fields.text("transferId")?,
                counterparty_wallet_id: fields.text("counterpartyWalletId")?,
            }),
            MovementKind::Deposit | MovementKind::Withdrawal => None,
        };
        Ok(Self::Moved(Movement {
            kind,
            wallet_id: fields.text("walletId")?,
            amount: fields.decimal("amount")?,
            currency: fields.text("currency")?,
            balance: fields.decimal("balance")?,
            reference: fields.optional_text("reference")?,
            transfer,
            at: fields.time("at")?,
        }))
    }
}

/// The fields of one event's `data`, read with errors that name them.
struct Fields<'a> {
    event_type: &'a str,
    data: &'a Value,
}

impl Fields<'_> {
    fn error(&self, field: &'static str, detail: impl Into<String>) -> DecodeError {
        DecodeError::Field {
            event_type: self.event_type.to_owned(),
            field,
            detail: detail.into(),
        }
    }

    fn optional_text(&self, field: &'static str) -> Result<Option<String>, DecodeError> {
        match self.data.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(self.error(field, "not a string")),
        }
    }

    fn text(&self, field: &'static str) -> Result<String, DecodeError> {
        self.optional_text(field)?
            .ok_or_else(|| self.error(field, "missing"))
    }

    fn decimal(&self, field: &'static str) -> Result<Decimal, DecodeError> {
        Decimal::from_str(&self.text(field)?).map_err(|error| self.error(field, error.to_string()))
    }

    fn time(&self, field: &'static str) -> Result<DateTime<Utc>, DecodeError> {
        DateTime::parse_from_rfc3339(&self.text(field)?)
            .map(|at| at.with_timezone(&Utc))
            .map_err(|error| self.error(field, error.to_string()))
    }
}

/// The snapshot a `WalletCreated` event's `data` describes, as the write path wrote it: how a
/// wallet whose event is in an external store (KurrentDB) is completed in PostgreSQL.
pub fn created_snapshot(data: &Value) -> Result<WalletSnapshot, String> {
    let event = WalletEvent::from_data(WALLET_CREATED, data).map_err(|error| error.to_string())?;
    fold([(1, &event)]).map_err(|error| error.to_string())
}

/// Why a stream's events do not fold into a wallet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    /// The stream has no events.
    #[error("the stream is empty")]
    Empty,
    /// The first event is not `WalletCreated`, or a later one is.
    #[error("event {version} is {event_type}, where {expected} was expected")]
    OutOfPlace {
        /// The event's version in its stream.
        version: i64,
        /// Its type.
        event_type: &'static str,
        /// What belongs there.
        expected: &'static str,
    },
    /// Versions do not run 1, 2, 3 … without a gap.
    #[error("event {found} follows version {previous}")]
    Gap {
        /// The version before.
        previous: i64,
        /// The version found.
        found: i64,
    },
    /// An event names another wallet or currency than the stream's.
    #[error("event {version} is for {found}, not {expected}")]
    Foreign {
        /// The event's version.
        version: i64,
        /// The stream's wallet id or currency.
        expected: String,
        /// The event's.
        found: String,
    },
    /// An amount is zero or negative.
    #[error("event {version} moves a non-positive amount {amount}")]
    NonPositive {
        /// The event's version.
        version: i64,
        /// Its amount.
        amount: Decimal,
    },
    /// The balance the event records is not the one its amount gives.
    #[error("event {version} records balance {recorded}, but its amount gives {computed}")]
    BalanceMismatch {
        /// The event's version.
        version: i64,
        /// The balance in the event.
        recorded: Decimal,
        /// The previous balance with the amount applied.
        computed: Decimal,
    },
    /// The balance went below zero.
    #[error("event {version} takes the balance below zero ({balance})")]
    Negative {
        /// The event's version.
        version: i64,
        /// The balance after it.
        balance: Decimal,
    },
}

/// The wallet a stream describes: its events, with their versions, folded from the creation on.
/// Checks every rule a stream keeps (the creation first and only once, versions without gaps,
/// one wallet and currency, positive amounts, the recorded balances, never below zero); the
/// snapshot's `version` is the last event's, `updated_at` its time.
pub fn fold<'a>(
    events: impl IntoIterator<Item = (i64, &'a WalletEvent)>,
) -> Result<WalletSnapshot, FoldError> {
    let mut events = events.into_iter();
    let (version, first) = events.next().ok_or(FoldError::Empty)?;
    let WalletEvent::Created {
        wallet_id,
        owner_id,
        initial_balance,
        currency,
        at,
    } = first
    else {
        return Err(FoldError::OutOfPlace {
            version,
            event_type: first.event_type(),
            expected: WALLET_CREATED,
        });
    };
    if version != 1 {
        return Err(FoldError::Gap {
            previous: 0,
            found: version,
        });
    }
    let mut wallet = WalletSnapshot {
        id: wallet_id.clone(),
        owner_id: owner_id.clone(),
        balance: *initial_balance,
        currency: currency.clone(),
        version: 1,
        created_at: *at,
        updated_at: *at,
    };
    for (version, event) in events {
        if version != wallet.version + 1 {
            return Err(FoldError::Gap {
                previous: wallet.version,
                found: version,
            });
        }
        let WalletEvent::Moved(movement) = event else {
            return Err(FoldError::OutOfPlace {
                version,
                event_type: event.event_type(),
                expected: "a movement",
            });
        };
        apply(&mut wallet, version, movement)?;
    }
    Ok(wallet)
}

/// One movement (the stream's event `version`) on the wallet folded so far; the write path's new
/// snapshot comes from here too ([`crate::movement::after`]).
pub(crate) fn apply(
    wallet: &mut WalletSnapshot,
    version: i64,
    movement: &Movement,
) -> Result<(), FoldError> {
    for (expected, found) in [
        (&wallet.id, &movement.wallet_id),
        (&wallet.currency, &movement.currency),
    ] {
        if expected != found {
            return Err(FoldError::Foreign {
                version,
                expected: expected.clone(),
                found: found.clone(),
            });
        }
    }
    if movement.amount <= Decimal::ZERO {
        return Err(FoldError::NonPositive {
            version,
            amount: movement.amount,
        });
    }
    let computed = if movement.kind.credits() {
        wallet.balance + movement.amount
    } else {
        wallet.balance - movement.amount
    };
    if computed != movement.balance {
        return Err(FoldError::BalanceMismatch {
            version,
            recorded: movement.balance,
            computed,
        });
    }
    if computed < Decimal::ZERO {
        return Err(FoldError::Negative {
            version,
            balance: computed,
        });
    }
    // The recorded digits, so the snapshot renders as the event does.
    wallet.balance = movement.balance;
    wallet.version = version;
    wallet.updated_at = movement.at;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(second: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + i64::from(second), 0).expect("in range")
    }

    fn created(balance: &str) -> WalletEvent {
        WalletEvent::Created {
            wallet_id: "w1".into(),
            owner_id: "o1".into(),
            initial_balance: Decimal::from_str(balance).expect("literal"),
            currency: "USD".into(),
            at: at(0),
        }
    }

    fn moved(kind: MovementKind, amount: &str, balance: &str) -> WalletEvent {
        WalletEvent::Moved(Movement {
            kind,
            wallet_id: "w1".into(),
            amount: Decimal::from_str(amount).expect("literal"),
            currency: "USD".into(),
            balance: Decimal::from_str(balance).expect("literal"),
            reference: None,
            transfer: matches!(
                kind,
                MovementKind::TransferDebit | MovementKind::TransferCredit
            )
            .then(|| TransferLeg {
                transfer_id: "t1".into(),
                counterparty_wallet_id: "w2".into(),
            }),
            at: at(7),
        })
    }

    fn numbered(events: &[WalletEvent]) -> impl Iterator<Item = (i64, &WalletEvent)> {
        (1..).zip(events)
    }

    #[test]
    fn a_stream_folds_into_its_snapshot() {
        let events = [
            created("10.00"),
            moved(MovementKind::Deposit, "5.50", "15.50"),
            moved(MovementKind::TransferDebit, "15.50", "0.00"),
            moved(MovementKind::TransferCredit, "1", "1.00"),
        ];
        let wallet = fold(numbered(&events)).expect("folds");
        assert_eq!(wallet.balance.to_string(), "1.00");
        assert_eq!(wallet.version, 4);
        assert_eq!(wallet.created_at, at(0));
        assert_eq!(wallet.updated_at, at(7));
    }

    #[test]
    fn a_broken_stream_says_where() {
        let deposit = moved(MovementKind::Deposit, "1", "2");
        assert_eq!(fold(numbered(&[])), Err(FoldError::Empty));
        assert!(matches!(
            fold(numbered(std::slice::from_ref(&deposit))),
            Err(FoldError::OutOfPlace { version: 1, .. })
        ));
        assert!(matches!(
            fold(numbered(&[created("1"), created("1")])),
            Err(FoldError::OutOfPlace { version: 2, .. })
        ));
        let events = [created("1"), deposit.clone()];
        assert!(matches!(
            fold([(1, &events[0]), (3, &events[1])]),
            Err(FoldError::Gap {
                previous: 1,
                found: 3
            })
        ));
        assert!(matches!(
            fold(numbered(&[
                created("1"),
                moved(MovementKind::Deposit, "1", "3")
            ])),
            Err(FoldError::BalanceMismatch { version: 2, .. })
        ));
        assert!(matches!(
            fold(numbered(&[
                created("1"),
                moved(MovementKind::Withdrawal, "2", "-1")
            ])),
            Err(FoldError::Negative { version: 2, .. })
        ));
        assert!(matches!(
            fold(numbered(&[
                created("1"),
                moved(MovementKind::Deposit, "0", "1")
            ])),
            Err(FoldError::NonPositive { version: 2, .. })
        ));
        let mut euros = deposit;
        if let WalletEvent::Moved(movement) = &mut euros {
            movement.currency = "EUR".into();
        }
        assert!(matches!(
            fold(numbered(&[created("1"), euros])),
            Err(FoldError::Foreign { version: 2, .. })
        ));
    }

    #[test]
    fn unknown_types_and_bad_fields_are_named() {
        assert_eq!(
            WalletEvent::from_data("WalletRenamed", &json!({})),
            Err(DecodeError::UnknownType("WalletRenamed".into()))
        );
        let mut data = moved(MovementKind::Withdrawal, "1", "0").to_data();
        data["amount"] = json!(1.5);
        assert!(matches!(
            WalletEvent::from_data(FUNDS_WITHDRAWN, &data),
            Err(DecodeError::Field {
                field: "amount",
                ..
            })
        ));
    }

    fn any_movement() -> impl Strategy<Value = (MovementKind, u32, Option<String>)> {
        (
            prop_oneof![
                Just(MovementKind::Deposit),
                Just(MovementKind::Withdrawal),
                Just(MovementKind::TransferDebit),
                Just(MovementKind::TransferCredit),
            ],
            1u32..100_000,
            proptest::option::of("[a-z0-9 ]{0,12}"),
        )
    }

    proptest! {
        /// Every event survives its JSON form, and a stream built by the rules folds back to the
        /// balance it was built with.
        #[test]
        fn events_round_trip_and_fold(
            opening in 0u32..100_000,
            moves in proptest::collection::vec(any_movement(), 0..40),
        ) {
            let mut balance = Decimal::new(i64::from(opening), 2);
            let mut events = vec![created(&balance.to_string())];
            for (second, (kind, cents, reference)) in (1..).zip(moves) {
                let amount = Decimal::new(i64::from(cents), 2);
                let next = if kind.credits() { balance + amount } else { balance - amount };
                if next < Decimal::ZERO {
                    continue; // refused by the rules, so never written
                }
                balance = next;
                events.push(WalletEvent::Moved(Movement {
                    kind,
                    wallet_id: "w1".into(),
                    amount,
                    currency: "USD".into(),
                    balance,
                    reference,
                    transfer: matches!(
                        kind,
                        MovementKind::TransferDebit | MovementKind::TransferCredit
                    )
                    .then(|| TransferLeg {
                        transfer_id: format!("t{second}"),
                        counterparty_wallet_id: "w2".into(),
                    }),
                    at: at(second),
                }));
            }
            for event in &events {
                let decoded = WalletEvent::from_data(event.event_type(), &event.to_data());
                prop_assert_eq!(decoded.as_ref(), Ok(event));
            }
            let wallet = fold(numbered(&events)).expect("built by the rules");
            prop_assert_eq!(wallet.balance, balance);
            prop_assert_eq!(wallet.version, events.len() as i64);
        }
    }
}
