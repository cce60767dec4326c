//! The ledger projection: double-entry postings and account balances.
//!
//! It exists to keep an auditable money trail next to the wallet read model: a `WalletCreated`
//! with a non-zero initial balance is a transaction (id = the event id) that debits the external
//! funding account of its currency and credits the wallet, so every transaction's postings sum to
//! zero. Balances accumulate with a guarded upsert, so replaying an event never counts it twice.

use wallex_projection_sdk::ColumnType::*;
use wallex_projection_sdk::{
    DomainEvent, Event, Mutation, Projection, ProjectionInfo, Result, Table, Upsert, WalletCreated,
};

/// Prefix of the external account that funds wallets, one per currency.
const FUNDING_ACCOUNT: &str = "external:funding:";
/// Prefix of a wallet's account.
const WALLET_ACCOUNT: &str = "wallet:";

struct Ledger;

impl Projection for Ledger {
    fn describe() -> ProjectionInfo {
        ProjectionInfo::new("ledger", 1)
            .subscribe(WalletCreated::TYPE)
            .table(
                Table::new("postings")
                    .column("transaction_id", Uuid)
                    .column("account", Text)
                    .column("amount", Decimal)
                    .column("currency", Text)
                    .column("global_position", S64)
                    .column("recorded_at", Timestamp)
                    .primary_key(["transaction_id", "account"])
                    .index("postings_by_account", ["account"]),
            )
            .table(
                Table::new("balances")
                    .column("account", Text)
                    .column("currency", Text)
                    .column("balance", Decimal)
                    // The last event applied to this balance, in delivery order: the guard.
                    .column("last_xact_id", S64)
                    .column("last_position", S64)
                    .primary_key(["account"]),
            )
    }

    fn handle(batch: Vec<Event>) -> Result<Vec<Mutation>> {
        // Postings first, then balances, each in event order: the host turns consecutive
        // mutations of one shape into one statement.
        let mut postings = Vec::new();
        let mut balances = Vec::new();
        for event in &batch {
            let DomainEvent::WalletCreated(wallet) = event.decode()? else {
                continue; // not subscribed: never delivered
            };
            // A zero initial balance is no transaction (and needs no other field).
            let amount = wallet.initial_balance()?;
            if amount.is_zero() {
                continue;
            }
            let currency = wallet.currency()?;
            let funding = format!("{FUNDING_ACCOUNT}{currency}");
            let credited = format!("{WALLET_ACCOUNT}{}", wallet.wallet_id()?);
            for (account, amount) in [(funding, amount.negated()), (credited, amount)] {
                postings.push(
                    Upsert::into("postings")
                        .set("transaction_id", &event.event_id)
                        .set("account", &account)
                        .set("amount", &amount)
                        .set("currency", currency)
                        .set("global_position", event.global_position)
                        .set("recorded_at", &event.recorded_at)
                        .into(),
                );
                balances.push(
                    Upsert::into("balances")
                        .set("account", account)
                        .set("currency", currency)
                        .accumulate("balance", amount)
                        .set("last_xact_id", event.order.xact_id)
                        .set("last_position", event.order.position)
                        .guard(["last_xact_id", "last_position"])
                        .into(),
                );
            }
        }
        postings.extend(balances);
        Ok(postings)
    }
}

wallex_projection_sdk::export!(Ledger);
