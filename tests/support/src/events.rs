//! Writing events exactly as the write path does (event store + outbox in one transaction),
//! reading back the outbox's last cursor and a table's rows (the support of the tests that run
//! parts of wallex in the test process instead of through the binary), and checking that every
//! wallet's snapshot is the fold of its stream.

use chrono::Utc;
use sqlx::PgPool;
use wallex_core::eventstore::postgres::PgEventStore;
use wallex_core::eventstore::{EventMetadata, EventStore, ExpectedVersion, NewEvent};
use wallex_core::outbox::{self, OutboxCursor};

/// Event metadata as a test writes it: the given correlation and causation ids, nothing else.
pub fn metadata(correlation_id: &str, causation_id: &str) -> EventMetadata {
    EventMetadata {
        correlation_id: correlation_id.to_owned(),
        causation_id: causation_id.to_owned(),
        idempotency_key: None,
        traceparent: None,
        request_fingerprint: None,
        kurrentdb: None,
    }
}

/// Appends a `WalletCreated` and enqueues it in the outbox in one transaction; returns its position.
pub async fn create_wallet(pool: &PgPool, id: &str, initial_balance: &str) -> i64 {
    let store = PgEventStore::new(pool.clone());
    let mut tx = pool.begin().await.expect("begin");
    let data = serde_json::json!({
        "walletId": id,
        "ownerId": format!("owner-{id}"),
        "initialBalance": initial_balance,
        "currency": "USD",
        "createdAt": "2026-11-26T12:00:00.000Z",
    });
    let event = NewEvent {
        event_id: uuid::Uuid::new_v4(),
        event_type: "WalletCreated".into(),
        data,
        metadata: metadata(&format!("corr-{id}"), &format!("cause-{id}")),
    };
    let recorded = store
        .append(
            &mut tx,
            &format!("wallet-{id}"),
            ExpectedVersion::NoStream,
            &[event],
            Utc::now(),
        )
        .await
        .expect("append");
    outbox::enqueue(&mut *tx, &recorded).await.expect("enqueue");
    tx.commit().await.expect("commit");
    recorded[0].global_position
}

/// The cursor of the last outbox row.
pub async fn last_cursor(pool: &PgPool) -> OutboxCursor {
    let (position,): (i64,) =
        sqlx::query_as("SELECT COALESCE(MAX(global_position), 0) FROM outbox")
            .fetch_one(pool)
            .await
            .expect("max position");
    let mut best = OutboxCursor::START;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT xact_id::text, global_position FROM outbox ORDER BY xact_id DESC, global_position DESC LIMIT 1")
            .fetch_all(pool)
            .await
            .expect("last row");
    if let Some((xact, pos)) = rows.into_iter().next() {
        best = OutboxCursor {
            xact_id: xact.parse().expect("xid"),
            position: pos,
        };
    }
    let _ = position;
    best
}

/// All rows of a table as JSON, in primary-key order (for comparisons).
pub async fn table_snapshot(
    pool: &PgPool,
    qualified: &str,
    order_by: &str,
) -> Vec<serde_json::Value> {
    sqlx::query_scalar(&format!(
        "SELECT to_jsonb(t) FROM {qualified} AS t ORDER BY {order_by}"
    ))
    .fetch_all(pool)
    .await
    .expect("snapshot")
}

/// Asserts that every wallet's snapshot in `wallets` is the fold of its stream in `events`
/// ([`wallex_core::wallet_event::fold`]), field by field, and that no stream lacks its wallet:
/// what a run of writes, crashes and retries must leave, with the PostgreSQL event store.
/// Returns how many wallets it compared.
pub async fn assert_snapshots_are_folds(pool: &PgPool) -> usize {
    use std::collections::BTreeMap;
    use wallex_core::wallet::WalletSnapshot;
    use wallex_core::wallet_event::{fold, WalletEvent};

    type EventRow = (String, i64, String, serde_json::Value);
    let events: Vec<EventRow> = sqlx::query_as(
        "SELECT stream_id, stream_version, event_type, data FROM events
         WHERE stream_id LIKE 'wallet-%' ORDER BY stream_id, stream_version",
    )
    .fetch_all(pool)
    .await
    .expect("events");
    let mut streams: BTreeMap<String, Vec<(i64, WalletEvent)>> = BTreeMap::new();
    for (stream, version, event_type, data) in events {
        let event = WalletEvent::from_data(&event_type, &data)
            .unwrap_or_else(|error| panic!("{stream} v{version}: {error}"));
        streams.entry(stream).or_default().push((version, event));
    }
    type WalletRow = (
        String,
        String,
        sqlx::types::Decimal,
        String,
        i64,
        chrono::DateTime<Utc>,
        chrono::DateTime<Utc>,
    );
    let wallets: Vec<WalletRow> = sqlx::query_as(
        "SELECT id, owner_id, balance, currency, version, created_at, updated_at
         FROM wallets ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("wallets");
    for (id, owner_id, balance, currency, version, created_at, updated_at) in &wallets {
        let stored = WalletSnapshot {
            id: id.clone(),
            owner_id: owner_id.clone(),
            balance: *balance,
            currency: currency.clone(),
            version: *version,
            created_at: *created_at,
            updated_at: *updated_at,
        };
        let stream = format!("wallet-{id}");
        let events = streams
            .remove(&stream)
            .unwrap_or_else(|| panic!("wallet {id} has no stream"));
        let folded = fold(events.iter().map(|(version, event)| (*version, event)))
            .unwrap_or_else(|error| panic!("{stream} does not fold: {error}"));
        assert_eq!(
            folded, stored,
            "the snapshot of {id} is not the fold of {stream}"
        );
        // Rendered alike too: the digits of the balance are the ones the events hold.
        assert_eq!(
            folded.balance.to_string(),
            stored.balance.to_string(),
            "{id}"
        );
    }
    assert!(
        streams.is_empty(),
        "streams without a wallet: {:?}",
        streams.keys().collect::<Vec<_>>()
    );
    wallets.len()
}
