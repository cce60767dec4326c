//! The PostgreSQL event store's batch append: each stream's check is its own, a failed check
//! writes nothing of that stream, and the others are appended in the same transaction.

use chrono::Utc;
use wallex_core::eventstore::postgres::PgEventStore;
use wallex_core::eventstore::{
    EventStore, EventStoreError, ExpectedVersion, NewEvent, StreamAppend,
};
use wallex_test_support::db::TestDb;
use wallex_test_support::events::metadata;

fn event(n: u32) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::new_v4(),
        event_type: "Tested".into(),
        data: serde_json::json!({ "n": n }),
        metadata: metadata("c", "c"),
    }
}

fn versions(
    outcome: &Result<Vec<wallex_core::eventstore::RecordedEvent>, EventStoreError>,
) -> Vec<i64> {
    match outcome {
        Ok(events) => events.iter().map(|e| e.stream_version).collect(),
        Err(EventStoreError::WrongExpectedVersion { .. }) => Vec::new(),
        Err(other) => panic!("unexpected error: {other}"),
    }
}

/// `append_many` in one transaction that commits; the stream versions each append wrote.
async fn append_and_commit(
    store: &PgEventStore,
    pool: &sqlx::PgPool,
    appends: &[(&str, ExpectedVersion, &[NewEvent])],
) -> Vec<Vec<i64>> {
    let appends: Vec<StreamAppend<'_>> = appends
        .iter()
        .map(|&(stream, expected, events)| StreamAppend {
            stream,
            expected,
            events,
        })
        .collect();
    let mut tx = pool.begin().await.expect("begin");
    let outcomes = store
        .append_many(&mut tx, &appends, Utc::now())
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    outcomes.iter().map(versions).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn append_many_checks_each_stream_on_its_own() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let store = PgEventStore::new(pool.clone());

    // One event per new stream (the write path's case): one statement; a stream named twice
    // is written by its first append only.
    let (a, b, again) = ([event(1)], [event(2)], [event(3)]);
    let appended = append_and_commit(
        &store,
        &pool,
        &[
            ("s-a", ExpectedVersion::NoStream, &a[..]),
            ("s-b", ExpectedVersion::NoStream, &b[..]),
            ("s-a", ExpectedVersion::NoStream, &again[..]),
        ],
    )
    .await;
    assert_eq!(appended, vec![vec![1], vec![1], vec![]]);

    // The general case (several events, exact versions): each append in its own savepoint.
    // s-b is at version 1, not 3: refused, nothing of it written.
    let (next_a, stale_b, new_c) = ([event(4), event(5)], [event(6)], [event(7), event(8)]);
    let appended = append_and_commit(
        &store,
        &pool,
        &[
            ("s-a", ExpectedVersion::Exact(1), &next_a[..]),
            ("s-b", ExpectedVersion::Exact(3), &stale_b[..]),
            ("s-c", ExpectedVersion::NoStream, &new_c[..]),
        ],
    )
    .await;
    assert_eq!(appended, vec![vec![2, 3], vec![], vec![1, 2]]);

    for (stream, expected) in [
        ("s-a", vec![1, 2, 3]),
        ("s-b", vec![1]),
        ("s-c", vec![1, 2]),
    ] {
        let read = store.read_stream(stream).await.expect("read");
        let got: Vec<i64> = read.iter().map(|e| e.stream_version).collect();
        assert_eq!(got, expected, "{stream}");
    }
}
