//! The read-model projection: one row per wallet, what `GET /projections/read-model/wallets/{id}`
//! serves.
//!
//! It exists as the query side of the wallet write model and as the smallest complete example of a
//! projection: declare a table, turn each subscribed event into an upsert, guard it with the
//! stream version so a replayed event changes nothing. It implements the 0.2.0 world: it says
//! that the stream `wallet-{id}` owns the row `id`, so the host can repair one wallet's row.

use wallex_projection_sdk::ColumnType::*;
use wallex_projection_sdk::{
    DomainEvent, Event, Mutation, Projection, ProjectionInfo, Result, StreamOwner, Table, Upsert,
    WalletCreated,
};

struct ReadModel;

impl Projection for ReadModel {
    fn describe() -> ProjectionInfo {
        ProjectionInfo::new("read-model", 1)
            .subscribe(WalletCreated::TYPE)
            .table(
                Table::new("wallets")
                    .column("id", Text)
                    .column("owner", Text)
                    .column("balance", Decimal)
                    .column("currency", Text)
                    .column("version", S64)
                    .column("created_at", Timestamp)
                    .column("updated_at", Timestamp)
                    .primary_key(["id"])
                    .index("wallets_by_owner", ["owner"]),
            )
    }

    fn handle(batch: Vec<Event>) -> Result<Vec<Mutation>> {
        let mut rows = Vec::with_capacity(batch.len());
        for event in &batch {
            let DomainEvent::WalletCreated(wallet) = event.decode()? else {
                continue; // not subscribed: never delivered
            };
            let created_at = wallet.created_at()?;
            rows.push(
                Upsert::into("wallets")
                    .set("id", wallet.wallet_id()?)
                    .set("owner", wallet.owner_id()?)
                    .set("balance", wallet.initial_balance()?)
                    .set("currency", wallet.currency()?)
                    .set("version", event.stream_version)
                    .set("created_at", &created_at)
                    .set("updated_at", created_at)
                    // A row at this version or later already includes this event.
                    .guard(["version"])
                    .into(),
            );
        }
        Ok(rows)
    }

    fn stream_owners() -> Vec<StreamOwner> {
        vec![StreamOwner::new("wallets", "id", "wallet-")]
    }
}

wallex_projection_sdk::export!(ReadModel, world = "0.2.0");
