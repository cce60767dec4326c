//! Money moves: the deposit, withdrawal and transfer commands, validated, and the decision each
//! makes on the wallets it touches.
//!
//! Why it exists: the rules of moving money live in one place, independent of HTTP and storage,
//! and decide exactly the events [`crate::wallet_event::fold`] accepts: an amount that is
//! positive and no finer than the wallet's currency, a balance that never goes below zero or
//! past [`MAX_BALANCE`], no transfer between currencies or to the paying wallet itself, and an
//! optional expected version (`If-Match`). A command is checked twice: its body alone
//! ([`MoveFunds::from_json`], [`Transfer::from_json`]: field errors, before anything is read),
//! then against the wallets as they stand ([`deposit`], [`withdraw`], [`transfer`]: a
//! [`Refusal`], or the movements to append).
//!
//! API boundary: snapshots in, events out; no storage, no HTTP status codes.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use crate::wallet::{
    body_object, check_minor_units, parse_amount, required_id, validate_id, FieldError,
    WalletSnapshot,
};
use crate::wallet_event::{self, FoldError, Movement, MovementKind, TransferLeg};

/// Longest `reference` a client may attach to a movement, in characters.
pub const MAX_REFERENCE_CHARS: usize = 256;
/// Largest balance a wallet may hold (1e15, the largest amount): a deposit or a received transfer
/// that would pass it is refused.
pub const MAX_BALANCE: Decimal = crate::wallet::MAX_AMOUNT;

const MOVE_FIELDS: [&str; 2] = ["amount", "reference"];
const TRANSFER_FIELDS: [&str; 4] = ["fromWalletId", "toWalletId", "amount", "reference"];

/// A validated deposit or withdrawal (`POST /wallets/{id}/deposits`, `…/withdrawals`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveFunds {
    /// The wallet, from the path.
    pub wallet_id: String,
    /// What moves: positive, at most [`crate::wallet::MAX_AMOUNT`].
    pub amount: Decimal,
    /// The client's reference, kept in the event.
    pub reference: Option<String>,
    /// The wallet version the client expects (`If-Match`), if it sent one.
    pub expected_version: Option<i64>,
}

/// A validated transfer (`POST /transfers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The paying wallet.
    pub from_wallet_id: String,
    /// The receiving wallet; never the paying one.
    pub to_wallet_id: String,
    /// What moves: positive, at most [`crate::wallet::MAX_AMOUNT`].
    pub amount: Decimal,
    /// The client's reference, kept in both legs.
    pub reference: Option<String>,
    /// The paying wallet's version the client expects (`If-Match`), if it sent one.
    pub expected_version: Option<i64>,
}

/// Why a command was refused by the wallets as they stand. Nothing is written for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No wallet has this id.
    #[error("wallet {wallet_id} does not exist")]
    UnknownWallet {
        /// The id asked for.
        wallet_id: String,
    },
    /// The wallet is not at the version the client expected (`If-Match`).
    #[error("wallet {wallet_id} is at version {actual}, not {expected}")]
    VersionMismatch {
        /// The wallet.
        wallet_id: String,
        /// The version the client sent.
        expected: i64,
        /// The version it is at.
        actual: i64,
    },
    /// The amount has more fractional digits than the wallet's currency allows.
    #[error("the amount is finer than {currency} allows: {detail}")]
    FinerThanCurrency {
        /// The wallet's currency.
        currency: String,
        /// What the rule says.
        detail: String,
    },
    /// A withdrawal or a transfer would take the balance below zero.
    #[error("wallet {wallet_id} holds {balance}, less than {amount}")]
    InsufficientFunds {
        /// The paying wallet.
        wallet_id: String,
        /// What it holds.
        balance: Decimal,
        /// What was asked.
        amount: Decimal,
    },
    /// A deposit or a received transfer would take the balance past [`MAX_BALANCE`].
    #[error("wallet {wallet_id} would hold more than {MAX_BALANCE}")]
    BalanceLimit {
        /// The receiving wallet.
        wallet_id: String,
    },
    /// A transfer between wallets of different currencies.
    #[error("a transfer from {from} to {to} would change currency")]
    CurrencyMismatch {
        /// The paying wallet's currency.
        from: String,
        /// The receiving wallet's.
        to: String,
    },
}

impl MoveFunds {
    /// Validates a deposit's or withdrawal's body for wallet `wallet_id`, collecting every field
    /// error.
    pub fn from_json(
        wallet_id: &str,
        body: &Value,
        expected_version: Option<i64>,
    ) -> Result<Self, Vec<FieldError>> {
        let (object, mut errors) = body_object(body, &MOVE_FIELDS)?;
        if let Err(detail) = validate_id(wallet_id) {
            errors.push(FieldError {
                pointer: "#".into(),
                field: String::new(),
                detail: format!("the wallet id in the path {detail}"),
            });
        }
        let amount = required_amount(object, &mut errors);
        let reference = optional_reference(object, &mut errors);
        match amount {
            Some(amount) if errors.is_empty() => Ok(Self {
                wallet_id: wallet_id.to_owned(),
                amount,
                reference,
                expected_version,
            }),
            _ => Err(errors),
        }
    }
}

impl Transfer {
    /// Validates a transfer's body, collecting every field error.
    pub fn from_json(body: &Value, expected_version: Option<i64>) -> Result<Self, Vec<FieldError>> {
        let (object, mut errors) = body_object(body, &TRANSFER_FIELDS)?;
        let from = required_id(object, "fromWalletId", &mut errors);
        let to = required_id(object, "toWalletId", &mut errors);
        if let (Some(from), Some(to)) = (&from, &to) {
            if from == to {
                errors.push(FieldError::new(
                    "toWalletId",
                    "must not be the paying wallet (fromWalletId)",
                ));
            }
        }
        let amount = required_amount(object, &mut errors);
        let reference = optional_reference(object, &mut errors);
        match (from, to, amount) {
            (Some(from_wallet_id), Some(to_wallet_id), Some(amount)) if errors.is_empty() => {
                Ok(Self {
                    from_wallet_id,
                    to_wallet_id,
                    amount,
                    reference,
                    expected_version,
                })
            }
            _ => Err(errors),
        }
    }
}

fn required_amount(object: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<Decimal> {
    let result = match object.get("amount") {
        None => Err("is required".to_owned()),
        Some(value) => parse_amount(value).and_then(|amount| {
            if amount.is_zero() {
                Err("must be greater than zero".to_owned())
            } else {
                Ok(amount)
            }
        }),
    };
    result
        .map_err(|detail| errors.push(FieldError::new("amount", detail)))
        .ok()
}

fn optional_reference(object: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<String> {
    let detail = match object.get("reference") {
        None | Some(Value::Null) => return None,
        Some(Value::String(text)) if text.is_empty() => "must not be empty".to_owned(),
        Some(Value::String(text)) if text.chars().count() > MAX_REFERENCE_CHARS => {
            format!("must be at most {MAX_REFERENCE_CHARS} characters long")
        }
        Some(Value::String(text)) if text.chars().any(char::is_control) => {
            "must not contain control characters".to_owned()
        }
        Some(Value::String(text)) => return Some(text.clone()),
        Some(_) => "must be a string".to_owned(),
    };
    errors.push(FieldError::new("reference", detail));
    None
}

/// The deposit `command` makes on `wallet` at `at`: the `FundsDeposited` to append, or why not.
pub fn deposit(
    wallet: &WalletSnapshot,
    command: &MoveFunds,
    at: DateTime<Utc>,
) -> Result<Movement, Refusal> {
    move_funds(MovementKind::Deposit, wallet, command, at)
}

/// The withdrawal `command` makes on `wallet` at `at`: the `FundsWithdrawn` to append, or why
/// not.
pub fn withdraw(
    wallet: &WalletSnapshot,
    command: &MoveFunds,
    at: DateTime<Utc>,
) -> Result<Movement, Refusal> {
    move_funds(MovementKind::Withdrawal, wallet, command, at)
}

fn move_funds(
    kind: MovementKind,
    wallet: &WalletSnapshot,
    command: &MoveFunds,
    at: DateTime<Utc>,
) -> Result<Movement, Refusal> {
    check_version(wallet, command.expected_version)?;
    movement(wallet, kind, command.amount, &command.reference, None, at)
}

/// The transfer `command` (with id `transfer_id`) makes from `from` to `to` at `at`: the
/// `TransferDebited` and the `TransferCredited` to append, or why not.
pub fn transfer(
    from: &WalletSnapshot,
    to: &WalletSnapshot,
    command: &Transfer,
    transfer_id: &str,
    at: DateTime<Utc>,
) -> Result<(Movement, Movement), Refusal> {
    check_version(from, command.expected_version)?;
    if from.currency != to.currency {
        return Err(Refusal::CurrencyMismatch {
            from: from.currency.clone(),
            to: to.currency.clone(),
        });
    }
    let leg = |counterparty: &WalletSnapshot| TransferLeg {
        transfer_id: transfer_id.to_owned(),
        counterparty_wallet_id: counterparty.id.clone(),
    };
    let debit = movement(
        from,
        MovementKind::TransferDebit,
        command.amount,
        &command.reference,
        Some(leg(to)),
        at,
    )?;
    let credit = movement(
        to,
        MovementKind::TransferCredit,
        command.amount,
        &command.reference,
        Some(leg(from)),
        at,
    )?;
    Ok((debit, credit))
}

/// The wallet after `movement`: what the write path stores as the new snapshot. The same rules
/// as [`wallet_event::fold`], so a snapshot is always the fold of its stream.
pub fn after(wallet: &WalletSnapshot, movement: &Movement) -> Result<WalletSnapshot, FoldError> {
    let mut next = wallet.clone();
    wallet_event::apply(&mut next, wallet.version + 1, movement)?;
    Ok(next)
}

fn check_version(wallet: &WalletSnapshot, expected: Option<i64>) -> Result<(), Refusal> {
    match expected {
        Some(expected) if expected != wallet.version => Err(Refusal::VersionMismatch {
            wallet_id: wallet.id.clone(),
            expected,
            actual: wallet.version,
        }),
        _ => Ok(()),
    }
}

fn movement(
    wallet: &WalletSnapshot,
    kind: MovementKind,
    amount: Decimal,
    reference: &Option<String>,
    transfer: Option<TransferLeg>,
    at: DateTime<Utc>,
) -> Result<Movement, Refusal> {
    check_minor_units(amount, &wallet.currency).map_err(|detail| Refusal::FinerThanCurrency {
        currency: wallet.currency.clone(),
        detail,
    })?;
    let balance = if kind.credits() {
        let balance = wallet.balance + amount;
        if balance > MAX_BALANCE {
            return Err(Refusal::BalanceLimit {
                wallet_id: wallet.id.clone(),
            });
        }
        balance
    } else {
        if wallet.balance < amount {
            return Err(Refusal::InsufficientFunds {
                wallet_id: wallet.id.clone(),
                balance: wallet.balance,
                amount,
            });
        }
        wallet.balance - amount
    };
    Ok(Movement {
        kind,
        wallet_id: wallet.id.clone(),
        amount,
        currency: wallet.currency.clone(),
        balance,
        reference: reference.clone(),
        transfer,
        at,
    })
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use serde_json::json;

    fn wallet(id: &str, balance: &str, currency: &str) -> WalletSnapshot {
        let at = DateTime::from_timestamp(1_800_000_000, 0).expect("in range");
        WalletSnapshot {
            id: id.into(),
            owner_id: "o".into(),
            balance: Decimal::from_str(balance).expect("literal"),
            currency: currency.into(),
            version: 3,
            created_at: at,
            updated_at: at,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_100, 0).expect("in range")
    }

    fn funds(amount: Value) -> MoveFunds {
        MoveFunds::from_json("w1", &json!({ "amount": amount }), None).expect("valid")
    }

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|error| error.field).collect()
    }

    #[test]
    fn bodies_are_checked_field_by_field() {
        let errors = MoveFunds::from_json("w1", &json!({"amount": 0, "memo": "x"}), None)
            .expect_err("invalid");
        assert_eq!(fields(errors), ["memo", "amount"]);
        let errors = MoveFunds::from_json("w1", &json!({"amount": "-1", "reference": ""}), None)
            .expect_err("invalid");
        assert_eq!(fields(errors), ["amount", "reference"]);
        let long = "r".repeat(MAX_REFERENCE_CHARS + 1);
        for reference in [json!(long), json!("a\u{7}b"), json!(7)] {
            let errors =
                MoveFunds::from_json("w1", &json!({"amount": 1, "reference": reference}), None)
                    .expect_err("invalid");
            assert_eq!(fields(errors), ["reference"]);
        }
        assert!(MoveFunds::from_json("w 1", &json!({"amount": 1}), None).is_err());
        let errors = Transfer::from_json(
            &json!({"fromWalletId": "w1", "toWalletId": "w1", "amount": 1}),
            None,
        )
        .expect_err("same wallet");
        assert_eq!(fields(errors), ["toWalletId"]);
        let errors = Transfer::from_json(&json!({}), None).expect_err("empty");
        assert_eq!(fields(errors), ["fromWalletId", "toWalletId", "amount"]);
        assert!(Transfer::from_json(&json!([1]), None).is_err());
    }

    #[test]
    fn deposits_and_withdrawals_follow_the_rules() {
        let usd = wallet("w1", "10.00", "USD");
        let deposited = deposit(&usd, &funds(json!("2.50")), now()).expect("deposit");
        assert_eq!(deposited.balance.to_string(), "12.50");
        let next = after(&usd, &deposited).expect("applies");
        assert_eq!((next.version, next.updated_at), (4, now()));
        assert_eq!(
            withdraw(&usd, &funds(json!("10.00")), now())
                .expect("all of it")
                .balance,
            Decimal::ZERO
        );
        assert!(matches!(
            withdraw(&usd, &funds(json!("10.01")), now()),
            Err(Refusal::InsufficientFunds { .. })
        ));
        assert!(matches!(
            deposit(&usd, &funds(json!("0.001")), now()),
            Err(Refusal::FinerThanCurrency { .. })
        ));
        let yen = wallet("w1", "100", "JPY");
        assert!(matches!(
            deposit(&yen, &funds(json!("1.5")), now()),
            Err(Refusal::FinerThanCurrency { .. })
        ));
        let full = wallet("w1", "1000000000000000", "USD");
        assert!(matches!(
            deposit(&full, &funds(json!("0.01")), now()),
            Err(Refusal::BalanceLimit { .. })
        ));
        let mut pinned = funds(json!(1));
        pinned.expected_version = Some(2);
        assert_eq!(
            deposit(&usd, &pinned, now()),
            Err(Refusal::VersionMismatch {
                wallet_id: "w1".into(),
                expected: 2,
                actual: 3
            })
        );
        pinned.expected_version = Some(3);
        assert!(deposit(&usd, &pinned, now()).is_ok());
    }

    #[test]
    fn a_transfer_moves_the_same_amount_between_two_wallets_of_one_currency() {
        let command = |amount: &str| {
            Transfer::from_json(
                &json!({"fromWalletId": "a", "toWalletId": "b", "amount": amount, "reference": "rent"}),
                None,
            )
            .expect("valid")
        };
        let (a, b) = (wallet("a", "5.00", "EUR"), wallet("b", "1.00", "EUR"));
        let (debit, credit) = transfer(&a, &b, &command("5.00"), "t1", now()).expect("transfer");
        assert_eq!(debit.kind, MovementKind::TransferDebit);
        assert_eq!(credit.kind, MovementKind::TransferCredit);
        assert_eq!(debit.balance + credit.balance, a.balance + b.balance);
        assert_eq!(
            debit
                .transfer
                .as_ref()
                .map(|leg| leg.counterparty_wallet_id.as_str()),
            Some("b")
        );
        assert_eq!(
            credit.transfer.as_ref().map(|leg| leg.transfer_id.as_str()),
            Some("t1")
        );
        assert_eq!(credit.reference.as_deref(), Some("rent"));
        assert!(after(&a, &debit).is_ok() && after(&b, &credit).is_ok());
        assert!(matches!(
            transfer(&a, &b, &command("5.01"), "t2", now()),
            Err(Refusal::InsufficientFunds { .. })
        ));
        let dollars = wallet("b", "1.00", "USD");
        assert!(matches!(
            transfer(&a, &dollars, &command("1"), "t3", now()),
            Err(Refusal::CurrencyMismatch { .. })
        ));
    }
}
