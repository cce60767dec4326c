//! The gap-safe outbox reader: a row whose transaction commits after a higher position became
//! visible is never skipped.

use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::{PgPool, Postgres, Transaction};
use wallex_core::eventstore::RecordedEvent;
use wallex_core::outbox::{self, OutboxCursor, OutboxEvent};
use wallex_test_support::db::TestDb;
use wallex_test_support::events::metadata;

fn event(position: i64) -> RecordedEvent {
    RecordedEvent {
        global_position: position,
        event_id: uuid::Uuid::new_v4(),
        stream_id: format!("wallet-{position}"),
        stream_version: 1,
        event_type: "WalletCreated".into(),
        data: serde_json::json!({"n": position}),
        metadata: metadata("c", "c"),
        recorded_at: Utc::now(),
    }
}

async fn enqueue(tx: &mut Transaction<'static, Postgres>, position: i64) {
    outbox::enqueue(&mut **tx, &[event(position)])
        .await
        .expect("enqueue");
}

async fn xact_id(tx: &mut Transaction<'static, Postgres>) -> u64 {
    let (id,): (String,) = sqlx::query_as("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut **tx)
        .await
        .expect("xid");
    id.parse().expect("number")
}

fn positions(events: &[OutboxEvent]) -> Vec<i64> {
    events.iter().map(|e| e.global_position).collect()
}

/// Reads until `expected` rows are returned. Transactions elsewhere in the cluster (other tests)
/// may hold the horizon back for a moment, which delays rows but never reorders them.
async fn read_until(pool: &PgPool, after: OutboxCursor, expected: usize) -> Vec<OutboxEvent> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let batch = outbox::read_batch(pool, after, 100).await.expect("read");
        if batch.len() >= expected || Instant::now() > deadline {
            return batch;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lower_position_committed_last_is_not_skipped_when_its_transaction_is_older() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let mut low = pool.begin().await.expect("begin");
    enqueue(&mut low, 1).await;
    let mut high = pool.begin().await.expect("begin");
    enqueue(&mut high, 2).await;
    high.commit().await.expect("commit high");

    // Position 2 is committed and visible, but position 1 is still in flight: nothing is returned,
    // because returning 2 would move a position-ordered checkpoint past 1.
    let visible: (i64,) = sqlx::query_as("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(visible.0, 1);
    assert!(outbox::read_batch(&pool, OutboxCursor::START, 100)
        .await
        .expect("read")
        .is_empty());

    low.commit().await.expect("commit low");
    let batch = read_until(&pool, OutboxCursor::START, 2).await;
    assert_eq!(positions(&batch), [1, 2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lower_position_committed_last_is_not_skipped_when_its_transaction_is_younger() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    // `high` gets its transaction id first but its position second.
    let mut high = pool.begin().await.expect("begin");
    let high_xid = xact_id(&mut high).await;
    let mut low = pool.begin().await.expect("begin");
    let low_xid = xact_id(&mut low).await;
    assert!(high_xid < low_xid);
    enqueue(&mut low, 1).await;
    enqueue(&mut high, 2).await;
    high.commit().await.expect("commit high");

    // Position 2 may be consumed now...
    let first = read_until(&pool, OutboxCursor::START, 1).await;
    assert_eq!(positions(&first), [2]);
    let cursor = first[0].cursor();
    assert_eq!(
        outbox::cursor_of(&pool, 2).await.expect("cursor"),
        Some(cursor)
    );

    // ...and position 1, committed afterwards, still comes after that cursor.
    low.commit().await.expect("commit low");
    let second = read_until(&pool, cursor, 1).await;
    assert_eq!(positions(&second), [1]);
    assert!(outbox::read_batch(&pool, second[0].cursor(), 100)
        .await
        .expect("read")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_respect_the_limit_and_resume_after_the_cursor() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let mut tx = pool.begin().await.expect("begin");
    for position in 1..=5 {
        enqueue(&mut tx, position).await;
    }
    tx.commit().await.expect("commit");
    let first = read_until(&pool, OutboxCursor::START, 2).await;
    let first = &first[..2.min(first.len())];
    assert_eq!(
        positions(
            &outbox::read_batch(&pool, OutboxCursor::START, 2)
                .await
                .expect("read")
        ),
        [1, 2]
    );
    let rest = outbox::read_batch(&pool, first[1].cursor(), 100)
        .await
        .expect("read");
    assert_eq!(positions(&rest), [3, 4, 5]);
    assert!(outbox::read_batch(&pool, rest[2].cursor(), 100)
        .await
        .expect("read")
        .is_empty());
    assert_eq!(outbox::cursor_of(&pool, 99).await.expect("cursor"), None);
}
