//! Black-box tests of the projections through the real `wallex` binary: wallets created over
//! HTTP reach all three projections, read-after-write, crash safety under kill -9, two servers
//! sharing the work with failover, and a bad component's rejected batch visible in logs and
//! status.

use std::time::{Duration, Instant};

use crate::support::{client, fresh_id, get, post_wallet, wallet_body, Server, TestDb};
use sqlx::PgPool;

const PROJECTIONS: [&str; 3] = ["audit", "ledger", "read-model"];
const CATCH_UP: Duration = Duration::from_secs(60);
/// Fast settings so failover and retries happen within a test's patience.
const FAST_ENV: &[(&str, &str)] = &[
    ("PROJECTOR_LEASE_RETRY_MS", "200"),
    ("PROJECTOR_ERROR_BACKOFF_MS", "100"),
];

/// The projection tables, each with its ordering key, for snapshots.
const TABLES: [(&str, &str); 4] = [
    ("proj_read_model_v1.wallets", "id"),
    ("proj_ledger_v1.postings", "transaction_id, account"),
    ("proj_ledger_v1.balances", "account"),
    ("proj_audit_v1.events", "global_position"),
];

async fn status(server: &Server) -> serde_json::Value {
    let reply = get(&client(), server, "/projections").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

fn projection<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["projections"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no projection {name} in {status}"))
}

/// (xact id, position) of the last outbox row in read order.
async fn last_outbox_row(pool: &PgPool) -> Option<(String, i64)> {
    sqlx::query_as(
        "SELECT xact_id::text, global_position FROM outbox
         ORDER BY xact_id DESC, global_position DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .expect("last outbox row")
}

/// Waits until every bundled projection's checkpoint is the last outbox row.
async fn wait_caught_up(pool: &PgPool) {
    let deadline = Instant::now() + CATCH_UP;
    let last = last_outbox_row(pool).await.expect("outbox not empty");
    loop {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT projection, last_xact_id::text, last_position FROM projector_checkpoints
             ORDER BY projection",
        )
        .fetch_all(pool)
        .await
        .expect("checkpoints");
        let caught_up = rows
            .iter()
            .filter(|(name, xact, position)| {
                PROJECTIONS.contains(&name.as_str()) && (xact.clone(), *position) == last
            })
            .count();
        if caught_up == PROJECTIONS.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not caught up to {last:?}: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn snapshot(pool: &PgPool) -> Vec<Vec<serde_json::Value>> {
    let mut tables = Vec::new();
    for (table, order) in TABLES {
        tables.push(
            sqlx::query_scalar(&format!(
                "SELECT to_jsonb(t) FROM {table} AS t ORDER BY {order}"
            ))
            .fetch_all(pool)
            .await
            .expect("snapshot"),
        );
    }
    tables
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_wallets_appear_in_all_three_projections() {
    let db = TestDb::migrated().await;
    let server = Server::spawn(&db.url, FAST_ENV);
    let client = client();
    let mut ids = Vec::new();
    for _ in 0..15 {
        let id = fresh_id("e2e");
        let created = post_wallet(&client, &server, &wallet_body(&id), &[]).await;
        assert_eq!(created.status, 201, "{}", created.text());
        let position = created
            .header("x-global-position")
            .expect("position header")
            .to_owned();
        // Read-after-write: the read waits for the read model to include this very event.
        let read = get(
            &client,
            &server,
            &format!("/projections/read-model/wallets/{id}?minPosition={position}"),
        )
        .await;
        assert_eq!(read.status, 200, "{}", read.text());
        assert_eq!(read.json()["id"], id.as_str());
        assert_eq!(read.json()["owner"], "user-001");
        ids.push(id);
    }
    let pool = db.pool().await;
    wait_caught_up(&pool).await;
    let (_, last_position) = last_outbox_row(&pool).await.expect("rows");
    let status = status(&server).await;
    for name in PROJECTIONS {
        let p = projection(&status, name);
        assert_eq!(p["checkpoint"]["position"], last_position, "{name}: {p}");
        assert_eq!(p["status"], "running");
    }
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM proj_audit_v1.events")
        .fetch_one(&pool)
        .await
        .expect("audit");
    assert_eq!(audited, 15);
    let unbalanced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT transaction_id FROM proj_ledger_v1.postings
                              GROUP BY 1 HAVING SUM(amount) <> 0 OR count(*) <> 2) t",
    )
    .fetch_one(&pool)
    .await
    .expect("ledger");
    assert_eq!(unbalanced, 0, "a ledger transaction does not sum to zero");
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT transaction_id) FROM proj_ledger_v1.postings")
            .fetch_one(&pool)
            .await
            .expect("ledger");
    assert_eq!(transactions, 15);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_writes_then_projections_equal_a_replay_from_scratch() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    for round in 0..4_u64 {
        let server = Server::spawn(&db.url, FAST_ENV);
        let base = server.base.clone();
        let writer = tokio::spawn(async move {
            let client = client();
            for _ in 0..40 {
                let _ = client
                    .post(format!("{base}/wallets"))
                    .header("content-type", "application/json")
                    .body(wallet_body(&fresh_id("k9")))
                    .send()
                    .await;
            }
        });
        tokio::time::sleep(Duration::from_millis(150 + 120 * round)).await;
        let mut server = server;
        server.kill();
        let _ = writer.await;
    }
    let server = Server::spawn(&db.url, FAST_ENV);
    let created = post_wallet(&client(), &server, &wallet_body(&fresh_id("k9")), &[]).await;
    assert_eq!(created.status, 201);
    wait_caught_up(&pool).await;
    let projected = snapshot(&pool).await;
    drop(server);
    let wallets: i64 = sqlx::query_scalar("SELECT count(*) FROM wallets")
        .fetch_one(&pool)
        .await
        .expect("wallets");
    assert_eq!(
        projected[0].len() as i64,
        wallets,
        "read model misses wallets"
    );

    // From scratch: drop every projection's tables and checkpoint, rebuild, compare.
    sqlx::raw_sql(
        "DROP SCHEMA proj_read_model_v1, proj_ledger_v1, proj_audit_v1 CASCADE;
         DELETE FROM projector_checkpoints;
         DELETE FROM projection_deployments;",
    )
    .execute(&pool)
    .await
    .expect("drop projections");
    let server = Server::spawn(&db.url, FAST_ENV);
    wait_caught_up(&pool).await;
    assert_eq!(
        snapshot(&pool).await,
        projected,
        "projections differ from a replay"
    );
    drop(server);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_apply_each_event_once_and_fail_over() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let mut first = Server::spawn(&db.url, FAST_ENV);
    let client = client();
    // Let the first server take every lease before the second starts.
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let status = status(&first).await;
        if PROJECTIONS
            .iter()
            .all(|name| projection(&status, name)["leaseHeldHere"] == true)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "first server never took the leases"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = Server::spawn(&db.url, FAST_ENV);
    for i in 0..20 {
        let server = if i % 2 == 0 { &first } else { &second };
        let reply = post_wallet(&client, server, &wallet_body(&fresh_id("two")), &[]).await;
        assert_eq!(reply.status, 201);
    }
    wait_caught_up(&pool).await;
    let (a, b) = (status(&first).await, status(&second).await);
    let mut applied_by_first = Vec::new();
    for name in PROJECTIONS {
        assert_eq!(projection(&a, name)["leaseHeldHere"], true, "{name}");
        assert_eq!(projection(&b, name)["leaseHeldHere"], false, "{name}");
        assert_eq!(projection(&b, name)["eventsAppliedHere"], 0, "{name}");
        applied_by_first.push(
            projection(&a, name)["eventsAppliedHere"]
                .as_u64()
                .expect("count"),
        );
    }
    assert_eq!(applied_by_first, [20, 20, 20]);

    first.kill();
    let killed = Instant::now();
    for _ in 0..10 {
        let reply = post_wallet(&client, &second, &wallet_body(&fresh_id("two")), &[]).await;
        assert_eq!(reply.status, 201);
    }
    wait_caught_up(&pool).await;
    let failover = killed.elapsed();
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    let b = status(&second).await;
    for name in PROJECTIONS {
        assert_eq!(projection(&b, name)["leaseHeldHere"], true, "{name}");
        // Exactly the 10 events after the failover: none of the first server's 20 again.
        assert_eq!(projection(&b, name)["eventsAppliedHere"], 10, "{name}");
    }
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_component_batch_is_rejected_and_reported() {
    let db = TestDb::migrated().await;
    let dir = std::env::temp_dir().join(fresh_id("wallex-bad-projection"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::copy(
        format!(
            "{}/wallex_projection_bad_mutation.wasm",
            wallex_sandbox::bundled::WASM_DIR
        ),
        dir.join("bad-mutation.wasm"),
    )
    .expect("copy fixture");
    let dir_text = dir.display().to_string();
    let mut env = FAST_ENV.to_vec();
    env.push(("WALLEX_PROJECTIONS_DIR", &dir_text));
    env.push(("PROJECTOR_MAX_RETRIES", "1"));
    let server = Server::spawn(&db.url, &env);
    let client = client();
    let good = fresh_id("good");
    assert_eq!(
        post_wallet(&client, &server, &wallet_body(&good), &[])
            .await
            .status,
        201
    );
    let pool = db.pool().await;
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM proj_bad_mutation_v1.seen")
            .fetch_one(&pool)
            .await
            .expect("seen");
        if seen == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "good event never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = projection(&status(&server).await, "bad-mutation")["checkpoint"].clone();
    let bad = fresh_id("unknown-table");
    assert_eq!(
        post_wallet(&client, &server, &wallet_body(&bad), &[])
            .await
            .status,
        201
    );
    let deadline = Instant::now() + CATCH_UP;
    let reported = loop {
        let status = status(&server).await;
        let p = projection(&status, "bad-mutation").clone();
        if p["status"] == "failed" {
            break p;
        }
        assert!(Instant::now() < deadline, "never reported: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = reported["lastError"].as_str().expect("lastError");
    assert!(error.contains("unknown table"), "{error}");
    assert_eq!(reported["checkpoint"], before, "checkpoint moved");
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM proj_bad_mutation_v1.seen")
        .fetch_one(&pool)
        .await
        .expect("seen");
    assert_eq!(seen, 1, "part of the rejected batch was applied");
    let logs = server.logs();
    assert!(logs.contains("batch failed; nothing applied"), "{logs}");
    assert!(logs.contains("unknown table"), "{logs}");
    // The component's own output reaches the host log.
    assert!(logs.contains("stdout from bad-mutation"), "{logs}");
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_start_false_serves_without_workers() {
    let db = TestDb::migrated().await;
    let server = Server::spawn(&db.url, &[("PROJECTORS_AUTO_START", "false")]);
    let client = client();
    let id = fresh_id("idle");
    let created = post_wallet(&client, &server, &wallet_body(&id), &[]).await;
    assert_eq!(created.status, 201);
    let position = created
        .header("x-global-position")
        .expect("position")
        .to_owned();
    let read = get(
        &client,
        &server,
        &format!("/projections/read-model/wallets/{id}?minPosition={position}&timeoutMs=300"),
    )
    .await;
    read.assert_problem(503, "projection-behind");
    let status = status(&server).await;
    for name in PROJECTIONS {
        let p = projection(&status, name);
        assert_eq!(p["leaseHeldHere"], false, "{p}");
        assert_eq!(p["checkpoint"]["position"], 0, "{p}");
    }
    assert!(server.logs().contains("PROJECTORS_AUTO_START=false"));
}
