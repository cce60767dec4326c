//! The projection runtime against a real PostgreSQL, in process: the three bundled components
//! project wallets, replays are idempotent, bad mutations are rejected whole, leases fail over,
//! and the outbox is read in commit order. (Reads that wait for their own writes are
//! wallex-http's `read_after_write` suite.)

use std::time::Duration;

use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;
use wallex_control::Projections;
use wallex_runtime::checkpoint;
use wallex_sandbox::bundled;
use wallex_test_support::db::PooledDb as TestDb;
use wallex_test_support::events::{create_wallet, last_cursor, table_snapshot};
use wallex_test_support::projections::{fast_config, start, wait_caught_up};

const BUNDLED_NAMES: [&str; 3] = ["read-model", "ledger", "audit"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallets_reach_all_three_projections() {
    let db = TestDb::new().await;
    let (_projections, stop) = start(&db, fast_config()).await;
    let mut last = 0;
    for i in 0..25 {
        let balance = if i % 5 == 0 { "0.00" } else { "100.25" };
        last = create_wallet(&db.pool, &format!("w{i}"), balance).await;
    }
    let target = last_cursor(&db.pool).await;
    assert_eq!(target.position, last);
    wait_caught_up(&db.pool, &BUNDLED_NAMES, target).await;

    let wallets = table_snapshot(&db.pool, "proj_read_model_v1.wallets", "id").await;
    assert_eq!(wallets.len(), 25);
    let w1: (String, Decimal, String, i64) = sqlx::query_as(
        "SELECT owner, balance, currency, version FROM proj_read_model_v1.wallets WHERE id = 'w1'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        w1,
        ("owner-w1".into(), Decimal::new(10025, 2), "USD".into(), 1)
    );

    let audit: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT global_position, correlation_id, causation_id FROM proj_audit_v1.events ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(audit.len(), 25);
    assert!(audit
        .iter()
        .all(|(_, c, k)| c.starts_with("corr-w") && k.starts_with("cause-w")));

    // 20 non-zero wallets → 20 transactions of two postings each, every one summing to zero.
    let sums: Vec<(uuid::Uuid, Decimal, i64)> = sqlx::query_as(
        "SELECT transaction_id, SUM(amount), COUNT(*) FROM proj_ledger_v1.postings GROUP BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(sums.len(), 20);
    assert!(sums.iter().all(|(_, sum, n)| sum.is_zero() && *n == 2));
    let funding: Decimal = sqlx::query_scalar(
        "SELECT balance FROM proj_ledger_v1.balances WHERE account = 'external:funding:USD'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(funding, Decimal::new(-200500, 2));

    stop.cancel();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_checkpoint_reset_is_idempotent() {
    let db = TestDb::new().await;
    let (_projections, stop) = start(&db, fast_config()).await;
    for i in 0..30 {
        create_wallet(&db.pool, &format!("r{i}"), "10.00").await;
    }
    let target = last_cursor(&db.pool).await;
    wait_caught_up(&db.pool, &BUNDLED_NAMES, target).await;
    let tables = [
        ("proj_read_model_v1.wallets", "id"),
        ("proj_ledger_v1.postings", "transaction_id, account"),
        ("proj_ledger_v1.balances", "account"),
        ("proj_audit_v1.events", "global_position"),
    ];
    let mut before = Vec::new();
    for (table, order) in tables {
        before.push(table_snapshot(&db.pool, table, order).await);
    }
    for name in BUNDLED_NAMES {
        checkpoint::reset(&db.pool, name).await.unwrap();
    }
    // Wake the workers (a new event) and wait for the full replay.
    create_wallet(&db.pool, "after-reset", "0.00").await;
    let target = last_cursor(&db.pool).await;
    wait_caught_up(&db.pool, &BUNDLED_NAMES, target).await;
    sqlx::query("DELETE FROM proj_read_model_v1.wallets WHERE id = 'after-reset'")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM proj_audit_v1.events WHERE stream_id = 'wallet-after-reset'")
        .execute(&db.pool)
        .await
        .unwrap();
    for ((table, order), before) in tables.into_iter().zip(before) {
        assert_eq!(
            table_snapshot(&db.pool, table, order).await,
            before,
            "{table} changed on replay"
        );
    }
    let funding: Decimal = sqlx::query_scalar(
        "SELECT balance FROM proj_ledger_v1.balances WHERE account = 'external:funding:USD'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        funding,
        Decimal::new(-30000, 2),
        "balances doubled by the replay"
    );
    stop.cancel();
    db.drop_db().await;
}

async fn bad_fixture_rejects(wallet: &str, expected_error: &str) {
    let db = TestDb::new().await;
    let bytes = std::fs::read(format!(
        "{}/wallex_projection_bad_mutation.wasm",
        bundled::WASM_DIR
    ))
    .expect("fixture built by build.rs");
    let mut config = fast_config();
    config.defaults.max_retries = 1;
    let projections = Projections::load_sources(
        db.pool.clone(),
        config,
        vec![("fixture:bad-mutation".into(), bytes)],
    )
    .await
    .expect("load fixture");
    let stop = CancellationToken::new();
    let tasks = projections.start(stop.clone());
    create_wallet(&db.pool, "good-1", "1.00").await;
    let before = last_cursor(&db.pool).await;
    wait_caught_up(&db.pool, &["bad-mutation"], before).await;
    create_wallet(&db.pool, wallet, "1.00").await;
    create_wallet(&db.pool, "good-2", "1.00").await;
    // The worker gives up after max_retries + 1 attempts; wait for the `failed` status.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = checkpoint::read(&db.pool, "bad-mutation")
            .await
            .unwrap()
            .unwrap();
        if status.status == checkpoint::Status::Failed {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never failed: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let error = status.last_error.unwrap_or_default();
    assert!(error.contains(expected_error), "{error}");
    assert_eq!(status.cursor, before, "checkpoint moved");
    let applied: Vec<String> =
        sqlx::query_scalar("SELECT wallet_id FROM proj_bad_mutation_v1.seen")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(applied, ["good-1"], "part of a rejected batch was applied");
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutation_on_undeclared_table_rejects_the_batch() {
    bad_fixture_rejects(
        "unknown-table-1",
        "upsert on table \"not_declared\"): unknown table (declared: seen)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutation_with_wrong_type_rejects_the_batch() {
    bad_fixture_rejects(
        "wrong-type-1",
        "column \"position\" (s64): wrong type: expected s64, got text",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lease_holder_and_failover() {
    let db = TestDb::new().await;
    let (first, stop_first) = start(&db, fast_config()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (second, stop_second) = start(&db, fast_config()).await;
    for i in 0..10 {
        create_wallet(&db.pool, &format!("l{i}"), "5.00").await;
    }
    let target = last_cursor(&db.pool).await;
    wait_caught_up(&db.pool, &BUNDLED_NAMES, target).await;
    for name in BUNDLED_NAMES {
        let held = [
            first.get(name).unwrap().lease_held(),
            second.get(name).unwrap().lease_held(),
        ];
        assert_eq!(
            held,
            [true, false],
            "{name}: exactly the first process holds the lease"
        );
    }
    // The holder goes away; the other takes every lease over and continues.
    stop_first.cancel();
    for i in 10..20 {
        create_wallet(&db.pool, &format!("l{i}"), "5.00").await;
    }
    let target = last_cursor(&db.pool).await;
    wait_caught_up(&db.pool, &BUNDLED_NAMES, target).await;
    for name in BUNDLED_NAMES {
        assert!(
            second.get(name).unwrap().lease_held(),
            "{name} not taken over"
        );
    }
    let funding: rust_decimal::Decimal = sqlx::query_scalar(
        "SELECT balance FROM proj_ledger_v1.balances WHERE account = 'external:funding:USD'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(funding, Decimal::new(-10000, 2));
    stop_second.cancel();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_is_read_in_numeric_transaction_id_order() {
    // Transaction ids 999 and 1000 sort the other way round as text: a reader ordering by the
    // text form would deliver 1000 first and then never see 999 (it is below its cursor).
    let db = TestDb::new().await;
    for (position, xact) in [(1_i64, "1000"), (2, "999")] {
        sqlx::query(
            "INSERT INTO outbox (global_position, event_id, stream_id, stream_version, event_type,
                                 data, metadata, recorded_at, xact_id)
             VALUES ($1, gen_random_uuid(), 's', $1, 'T', '{}', '{}', now(), $2::text::xid8)",
        )
        .bind(position)
        .bind(xact)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let first =
        wallex_core::outbox::read_batch(&db.pool, wallex_core::outbox::OutboxCursor::START, 1)
            .await
            .unwrap();
    assert_eq!(first[0].xact_id, 999);
    let rest = wallex_core::outbox::read_batch(&db.pool, first[0].cursor(), 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].xact_id, 1000);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_for_new_tables_restarts_and_stale_batches_cannot_commit() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let moved = wallex_core::outbox::OutboxCursor {
        xact_id: 42,
        position: 7,
    };
    checkpoint::ensure(&mut conn, "p", 1, "proj_p_v1")
        .await
        .unwrap();
    checkpoint::advance(&mut conn, "p", moved).await.unwrap();
    // Same namespace again (a restart): the checkpoint stays.
    checkpoint::ensure(&mut conn, "p", 1, "proj_p_v1")
        .await
        .unwrap();
    let same = checkpoint::read(&db.pool, "p").await.unwrap().unwrap();
    assert_eq!(same.cursor, moved);
    // Another namespace: new, empty tables, so the checkpoint goes back to the start.
    checkpoint::ensure(&mut conn, "p", 2, "proj_p_v2")
        .await
        .unwrap();
    let bumped = checkpoint::read(&db.pool, "p").await.unwrap().unwrap();
    assert_eq!(bumped.cursor, wallex_core::outbox::OutboxCursor::START);
    assert_eq!(bumped.schema_version, 2);
    assert_eq!(bumped.namespace, "proj_p_v2");
    // A batch that started from an older cursor cannot move the checkpoint...
    let stale = checkpoint::advance_from(&mut conn, "p", "proj_p_v2", moved, moved, 1).await;
    assert!(
        matches!(stale, Err(checkpoint::CheckpointError::Moved(_))),
        "{stale:?}"
    );
    // ...nor can one that wrote into the old tables.
    let start = wallex_core::outbox::OutboxCursor::START;
    let old_tables = checkpoint::advance_from(&mut conn, "p", "proj_p_v1", start, moved, 1).await;
    assert!(
        matches!(old_tables, Err(checkpoint::CheckpointError::Moved(_))),
        "{old_tables:?}"
    );
    checkpoint::advance_from(&mut conn, "p", "proj_p_v2", start, moved, 3)
        .await
        .unwrap();
    let advanced = checkpoint::read(&db.pool, "p").await.unwrap().unwrap();
    assert_eq!(advanced.events_applied, 3);
    drop(conn);
    db.drop_db().await;
}
