//! The ledger projection: double-entry postings and account balances.
//!
//! It exists to keep an auditable money trail next to the wallet read model: a `WalletCreated`
//! with a non-zero initial balance is a transaction (id = the event id) that debits the external
//! funding account of its currency and credits the wallet, so every transaction's postings sum to
//! zero. Balances accumulate with a guarded upsert, so replaying an event never counts it twice.

wit_bindgen::generate!({ world: "projection", path: "../../wit" });

use serde_json::Value as Json;
use wallex::projection::types::{Column, ColumnType, ColumnValue, Index, Table, UpsertOp, Value};

const WALLET_CREATED: &str = "WalletCreated";
/// Prefix of the external account that funds wallets, one per currency.
const FUNDING_ACCOUNT: &str = "external:funding:";
/// Prefix of a wallet's account.
const WALLET_ACCOUNT: &str = "wallet:";

struct Ledger;

impl Guest for Ledger {
    fn describe() -> ProjectionInfo {
        let column = |name: &str, r#type, nullable| Column {
            name: name.into(),
            type_: r#type,
            nullable,
        };
        ProjectionInfo {
            name: "ledger".into(),
            schema_version: 1,
            subscribes_to: vec![WALLET_CREATED.into()],
            tables: vec![
                Table {
                    name: "postings".into(),
                    columns: vec![
                        column("transaction_id", ColumnType::Uuid, false),
                        column("account", ColumnType::Text, false),
                        column("amount", ColumnType::Decimal, false),
                        column("currency", ColumnType::Text, false),
                        column("global_position", ColumnType::S64, false),
                        column("recorded_at", ColumnType::Timestamp, false),
                    ],
                    primary_key: vec!["transaction_id".into(), "account".into()],
                    indexes: vec![Index {
                        name: "postings_by_account".into(),
                        columns: vec!["account".into()],
                        unique: false,
                    }],
                },
                Table {
                    name: "balances".into(),
                    columns: vec![
                        column("account", ColumnType::Text, false),
                        column("currency", ColumnType::Text, false),
                        column("balance", ColumnType::Decimal, false),
                        // The last event applied to this balance, in delivery order: the guard.
                        column("last_xact_id", ColumnType::S64, false),
                        column("last_position", ColumnType::S64, false),
                    ],
                    primary_key: vec!["account".into()],
                    indexes: vec![],
                },
            ],
        }
    }

    fn handle(batch: Vec<Event>) -> Result<Vec<Mutation>, ProjectionError> {
        // Postings first, then balances, each in event order: the host turns consecutive
        // mutations of one shape into one statement.
        let mut postings = Vec::new();
        let mut balances = Vec::new();
        for event in &batch {
            for (account, amount, currency) in wallet_created(event)? {
                postings.push(posting(event, &account, &amount, &currency));
                balances.push(balance(event, &account, &amount, &currency));
            }
        }
        postings.extend(balances);
        Ok(postings)
    }
}

/// The (account, amount, currency) legs of a `WalletCreated`: none for a zero initial balance.
fn wallet_created(event: &Event) -> Result<Vec<(String, String, String)>, ProjectionError> {
    let data: Json = serde_json::from_str(&event.data).map_err(|e| error(event, e))?;
    let text = |field: &str| {
        data[field]
            .as_str()
            .ok_or_else(|| error(event, format!("{field} is missing or not a string")))
    };
    let amount = text("initialBalance")?;
    if !is_non_zero(amount) {
        return Ok(Vec::new());
    }
    let currency = text("currency")?;
    let wallet = text("walletId")?;
    Ok(vec![
        (
            format!("{FUNDING_ACCOUNT}{currency}"),
            negate(amount),
            currency.to_owned(),
        ),
        (
            format!("{WALLET_ACCOUNT}{wallet}"),
            amount.to_owned(),
            currency.to_owned(),
        ),
    ])
}

fn posting(event: &Event, account: &str, amount: &str, currency: &str) -> Mutation {
    Mutation::Upsert(UpsertOp {
        table: "postings".into(),
        values: vec![
            value("transaction_id", Value::Uuid(event.event_id.clone())),
            value("account", Value::Text(account.into())),
            value("amount", Value::Decimal(amount.into())),
            value("currency", Value::Text(currency.into())),
            value("global_position", Value::S64(event.global_position)),
            value("recorded_at", Value::Timestamp(event.recorded_at.clone())),
        ],
        accumulate: vec![],
        guard: vec![],
    })
}

fn balance(event: &Event, account: &str, amount: &str, currency: &str) -> Mutation {
    Mutation::Upsert(UpsertOp {
        table: "balances".into(),
        values: vec![
            value("account", Value::Text(account.into())),
            value("currency", Value::Text(currency.into())),
            value("balance", Value::Decimal(amount.into())),
            value("last_xact_id", Value::S64(event.order.xact_id)),
            value("last_position", Value::S64(event.order.position)),
        ],
        accumulate: vec!["balance".into()],
        guard: vec!["last_xact_id".into(), "last_position".into()],
    })
}

fn value(column: &str, value: Value) -> ColumnValue {
    ColumnValue {
        column: column.into(),
        value,
    }
}

/// Whether a decimal string is not zero ("0", "0.00", "-0" are zero).
fn is_non_zero(decimal: &str) -> bool {
    decimal.bytes().any(|b| (b'1'..=b'9').contains(&b))
}

fn negate(decimal: &str) -> String {
    match decimal.strip_prefix('-') {
        Some(positive) => positive.to_owned(),
        None => format!("-{decimal}"),
    }
}

fn error(event: &Event, message: impl ToString) -> ProjectionError {
    ProjectionError {
        message: format!(
            "{} {}: {}",
            event.event_type,
            event.event_id,
            message.to_string()
        ),
        global_position: Some(event.global_position),
    }
}

export!(Ledger);
