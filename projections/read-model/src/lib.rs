//! The read-model projection: one row per wallet, what `GET /projections/read-model/wallets/{id}`
//! serves.
//!
//! It exists as the query side of the wallet write model and as the smallest complete example of a
//! projection: declare a table, turn each subscribed event into an upsert, guard it with the
//! stream version so a replayed event changes nothing. It implements the 0.2.0 world: it says
//! that the stream `wallet-{id}` owns the row `id`, so the host can repair one wallet's row.

wit_bindgen::generate!({ world: "projection", path: "../../wit/v0.2.0", generate_all });

use serde_json::Value as Json;
use wallex::projection0_1_0::types::{
    Column, ColumnType, ColumnValue, Index, Table, UpsertOp, Value,
};

const WALLET_CREATED: &str = "WalletCreated";

struct ReadModel;

impl Guest for ReadModel {
    fn describe() -> ProjectionInfo {
        let column = |name: &str, r#type, nullable| Column {
            name: name.into(),
            type_: r#type,
            nullable,
        };
        ProjectionInfo {
            name: "read-model".into(),
            schema_version: 1,
            subscribes_to: vec![WALLET_CREATED.into()],
            tables: vec![Table {
                name: "wallets".into(),
                columns: vec![
                    column("id", ColumnType::Text, false),
                    column("owner", ColumnType::Text, false),
                    column("balance", ColumnType::Decimal, false),
                    column("currency", ColumnType::Text, false),
                    column("version", ColumnType::S64, false),
                    column("created_at", ColumnType::Timestamp, false),
                    column("updated_at", ColumnType::Timestamp, false),
                ],
                primary_key: vec!["id".into()],
                indexes: vec![Index {
                    name: "wallets_by_owner".into(),
                    columns: vec!["owner".into()],
                    unique: false,
                }],
            }],
        }
    }

    fn handle(batch: Vec<Event>) -> Result<Vec<Mutation>, ProjectionError> {
        batch.iter().map(wallet_created).collect()
    }

    fn stream_owners() -> Vec<StreamOwner> {
        vec![StreamOwner {
            table: "wallets".into(),
            column: "id".into(),
            stream_prefix: "wallet-".into(),
        }]
    }
}

fn wallet_created(event: &Event) -> Result<Mutation, ProjectionError> {
    let data: Json = serde_json::from_str(&event.data).map_err(|e| error(event, e))?;
    let text = |field: &str| {
        data[field]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| error(event, format!("{field} is missing or not a string")))
    };
    let created_at = text("createdAt")?;
    let value = |column: &str, value| ColumnValue {
        column: column.into(),
        value,
    };
    Ok(Mutation::Upsert(UpsertOp {
        table: "wallets".into(),
        values: vec![
            value("id", Value::Text(text("walletId")?)),
            value("owner", Value::Text(text("ownerId")?)),
            value("balance", Value::Decimal(text("initialBalance")?)),
            value("currency", Value::Text(text("currency")?)),
            value("version", Value::S64(event.stream_version)),
            value("created_at", Value::Timestamp(created_at.clone())),
            value("updated_at", Value::Timestamp(created_at)),
        ],
        accumulate: vec![],
        // A row at this version or later already includes this event.
        guard: vec!["version".into()],
    }))
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

export!(ReadModel);
