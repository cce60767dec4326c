//! Fault isolation through the real `wallex` binary: hostile components (each its own fixture in
//! `projections/fixtures/hostile-*`) fail precisely while the host, the other projections and
//! wallet creation carry on; `on_poison = skip` dead-letters the poison event and a replay applies
//! it after a fix; a failed projection resumes from its checkpoint when a fixed version is
//! deployed; randomised kill -9 (with failpoints inside the write path and the projection batch)
//! loses nothing; a database outage gives quick 503s and everything resumes by itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{
    admin_get, admin_post, admin_put, client, fresh_id, get, post_wallet, read, seen,
    spawn_creator, wait_caught_up, wait_for, wallet_body, wasm, ComponentDir, Server, TestDb,
    ADMIN_TOKEN as TOKEN, PATIENCE,
};
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};

/// Hostile fixtures and the words their failure must be reported with.
const HOSTILE: [(&str, &str); 12] = [
    ("hostile-loop", "exceeded its call timeout of 1000 ms"),
    ("hostile-memory", "exceeded its memory limit of 32 MiB"),
    // A Rust guest keeps its own stack in linear memory: overflowing it is an out-of-bounds
    // access (the engine's wasm stack limit bounds the native stack).
    ("hostile-recursion", "out of bounds memory access"),
    (
        "hostile-panic",
        "trapped in handle: wasm trap: wasm `unreachable` instruction executed",
    ),
    (
        "hostile-giant",
        "150000 mutations, more than the limit of 100000",
    ),
    ("hostile-undeclared", "\"not_declared\"): unknown table"),
    ("hostile-host-table", "\"wallets\"): unknown table"),
    (
        "hostile-other-projection",
        "\"proj_read_model_v1.wallets\"): unknown table",
    ),
    ("hostile-injection", "DROP TABLE wallets"),
    ("hostile-wrong-types", "column \"wallet_id\" (text)"),
    (
        "hostile-capabilities",
        "capabilities denied: fs=denied env=denied net=denied",
    ),
    ("hostile-log-flood", "log limit exceeded"),
];

fn file_of(projection: &str) -> String {
    format!("wallex_projection_{}.wasm", projection.replace('-', "_"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_components_fail_precisely_while_everything_else_carries_on() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let mut files: Vec<String> = HOSTILE.iter().map(|(name, _)| file_of(name)).collect();
    files.push("wallex_projection_read_model.wasm".to_owned());
    let file_refs: Vec<&str> = files.iter().map(String::as_str).collect();
    let dir = ComponentDir::new(&file_refs);
    let dir_path = dir.path();
    let server = Server::spawn(
        &db.url,
        &[
            ("WALLEX_ADMIN_TOKEN", TOKEN),
            ("WALLEX_PROJECTIONS_DIR", &dir_path),
            ("PROJECTOR_MAX_RETRIES", "1"),
            ("PROJECTOR_ERROR_BACKOFF_MS", "100"),
            ("PROJECTOR_CALL_TIMEOUT_MS", "1000"),
            ("PROJECTOR_MEMORY_LIMIT_MIB", "32"),
            ("PROJECTOR_LEASE_RETRY_MS", "200"),
            // The giant list is about the mutation limit and the log flood about the log limit:
            // on a loaded machine (their retries run at idle priority) lifting 150,000 records or
            // writing a megabyte of log lines must not hit the short timeout first.
            (
                "PROJECTOR_OVERRIDES",
                "hostile-giant.call_timeout_ms=120000,hostile-log-flood.call_timeout_ms=120000",
            ),
        ],
    );
    // Wallet creation runs the whole time and must keep succeeding.
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = spawn_creator(&server.base, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let poison = post_wallet(&client(), &server, &wallet_body("poison-1"), &[]).await;
    assert_eq!(poison.status, 201);
    let poison_position = poison
        .header("x-global-position")
        .expect("position")
        .to_owned();

    let mut reasons = BTreeMap::new();
    for (name, expected) in HOSTILE {
        let path = format!("/admin/projections/{name}");
        wait_for(&format!("{name} to fail"), async || {
            admin_get(&server, &path).await["status"] == "failed"
        })
        .await;
        let status = admin_get(&server, &path).await;
        let error = status["lastError"].as_str().unwrap_or_default().to_owned();
        assert!(
            error.contains(expected),
            "{name}: expected {expected:?} in {error:?}"
        );
        assert!(
            error.contains(&format!("event at position {poison_position} ")),
            "{name}: the reason names the event: {error}"
        );
        reasons.insert(name, error);
    }
    stop.cancel();
    let created = writer.await.expect("writer");
    assert!(created > 10, "wallet creation stalled: {created}");

    // The host is up, the other projection kept up, nothing escaped.
    assert_eq!(get(&client(), &server, "/healthz").await.status, 200);
    wait_caught_up(&server, "read-model").await;
    let wallets: i64 = sqlx::query_scalar("SELECT count(*) FROM wallets")
        .fetch_one(&pool)
        .await
        .expect("the host's tables are intact");
    let projected: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_read_model.wallets")
        .fetch_one(&pool)
        .await
        .expect("read model");
    assert_eq!(projected, wallets);
    assert_eq!(wallets, i64::from(created) + 1);
    let stolen: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM projection_read_model.wallets WHERE id LIKE 'stolen-%' OR id LIKE 'hostile%'",
    )
    .fetch_one(&pool)
    .await
    .expect("read model");
    assert_eq!(
        stolen, 0,
        "a hostile component wrote another projection's table"
    );
    for (name, _) in HOSTILE {
        let rows = seen(&pool, name).await;
        assert!(
            rows.iter()
                .all(|w| !w.starts_with("escaped") && !w.starts_with("giant")),
            "{name} wrote {rows:?}"
        );
        assert!(
            !rows.contains(&"poison-1".to_owned()),
            "{name} applied the poison batch"
        );
    }
    let metrics = get(&client(), &server, "/metrics").await.text();
    assert!(
        metrics.contains("projector_status{projection=\"hostile-loop\",status=\"failed\"} 1"),
        "{metrics}"
    );
    drop(server);
    drop(dir);
    pool.close().await;
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_dead_letters_the_poison_event_and_a_replay_applies_it_after_a_fix() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let dir = ComponentDir::new(&[
        "wallex_projection_hostile_panic.wasm",
        "wallex_projection_read_model.wasm",
    ]);
    let dir_path = dir.path();
    let server = Server::spawn(
        &db.url,
        &[
            ("WALLEX_ADMIN_TOKEN", TOKEN),
            ("WALLEX_PROJECTIONS_DIR", &dir_path),
            ("PROJECTOR_OVERRIDES", "hostile-panic.on_poison=skip"),
            ("PROJECTOR_ERROR_BACKOFF_MS", "100"),
        ],
    );
    // Paused while the three events go in, so they land in one batch to bisect.
    assert_eq!(
        admin_post(&server, "/admin/projections/hostile-panic/pause")
            .await
            .status,
        200
    );
    for id in ["w-before", "poison-2", "w-after"] {
        assert_eq!(
            post_wallet(&client(), &server, &wallet_body(id), &[])
                .await
                .status,
            201
        );
    }
    assert_eq!(
        admin_post(&server, "/admin/projections/hostile-panic/resume")
            .await
            .status,
        200
    );
    wait_caught_up(&server, "hostile-panic").await;
    assert_eq!(seen(&pool, "hostile-panic").await, ["w-after", "w-before"]);
    let status = admin_get(&server, "/admin/projections/hostile-panic").await;
    assert_eq!(status["status"], "running");
    assert_eq!(status["policy"]["onPoison"], "skip");
    let letters = admin_get(&server, "/admin/projections/hostile-panic/dead-letters").await;
    let letters = letters["deadLetters"].as_array().expect("list").clone();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["eventType"], "WalletCreated");
    assert!(letters[0]["error"]
        .as_str()
        .unwrap_or_default()
        .contains("trapped in handle"));

    // Replaying before a fix fails again and keeps the letter.
    let again = admin_post(
        &server,
        "/admin/projections/hostile-panic/dead-letters/replay",
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["outcome"]["replayed"], 0);
    assert_eq!(
        again.json()["outcome"]["stillFailing"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // Deploy the fixed version (same name and tables), replay: the event is applied once.
    let fixed = admin_put(
        &server,
        "/admin/projections/hostile-panic",
        wasm("wallex_projection_hostile_panic_fixed.wasm"),
    )
    .await;
    assert_eq!(fixed.status, 200, "{}", fixed.text());
    assert_eq!(fixed.json()["outcome"], "swapped");
    let replayed = admin_post(
        &server,
        "/admin/projections/hostile-panic/dead-letters/replay",
    )
    .await;
    assert_eq!(
        replayed.json()["outcome"]["replayed"],
        1,
        "{}",
        replayed.text()
    );
    assert_eq!(
        seen(&pool, "hostile-panic").await,
        ["poison-2", "w-after", "w-before"]
    );
    let open = admin_get(&server, "/admin/projections/hostile-panic/dead-letters").await;
    assert_eq!(open["deadLetters"].as_array().map(Vec::len), Some(0));
    let all = admin_get(
        &server,
        "/admin/projections/hostile-panic/dead-letters?all=true",
    )
    .await;
    assert!(all["deadLetters"][0]["resolvedAt"].is_string(), "{all}");
    let replayed_again = admin_post(
        &server,
        "/admin/projections/hostile-panic/dead-letters/replay",
    )
    .await;
    assert_eq!(replayed_again.json()["outcome"]["replayed"], 0);
    drop(server);
    drop(dir);
    pool.close().await;
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_projection_resumes_from_its_checkpoint_when_a_fix_is_deployed() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let dir = ComponentDir::new(&["wallex_projection_hostile_panic.wasm"]);
    let dir_path = dir.path();
    let server = Server::spawn(
        &db.url,
        &[
            ("WALLEX_ADMIN_TOKEN", TOKEN),
            ("WALLEX_PROJECTIONS_DIR", &dir_path),
            ("PROJECTOR_MAX_RETRIES", "1"),
            ("PROJECTOR_ERROR_BACKOFF_MS", "100"),
        ],
    );
    assert_eq!(
        post_wallet(&client(), &server, &wallet_body("ok-1"), &[])
            .await
            .status,
        201
    );
    wait_caught_up(&server, "hostile-panic").await;
    assert_eq!(
        post_wallet(&client(), &server, &wallet_body("poison-3"), &[])
            .await
            .status,
        201
    );
    wait_for("the projection to fail", async || {
        admin_get(&server, "/admin/projections/hostile-panic").await["status"] == "failed"
    })
    .await;
    let failed = admin_get(&server, "/admin/projections/hostile-panic").await;
    let position = failed["checkpoint"]["position"].clone();
    // Still failed a moment later: the worker waits for an operator.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = admin_get(&server, "/admin/projections/hostile-panic").await;
    assert_eq!(still["status"], "failed");
    assert_eq!(still["checkpoint"]["position"], position);
    let fixed = admin_put(
        &server,
        "/admin/projections/hostile-panic?on_poison=pause",
        wasm("wallex_projection_hostile_panic_fixed.wasm"),
    )
    .await;
    assert_eq!(fixed.status, 200, "{}", fixed.text());
    wait_caught_up(&server, "hostile-panic").await;
    let status = admin_get(&server, "/admin/projections/hostile-panic").await;
    assert_eq!(status["status"], "running");
    assert_eq!(status["settings"]["on_poison"], "pause");
    assert_eq!(seen(&pool, "hostile-panic").await, ["ok-1", "poison-3"]);
    // Bad settings are refused.
    let bad = admin_put(
        &server,
        "/admin/projections/hostile-panic?on_poison=explode",
        wasm("wallex_projection_hostile_panic_fixed.wasm"),
    )
    .await;
    bad.assert_problem(400, "invalid-settings");
    drop(server);
    drop(dir);
    pool.close().await;
    drop(db);
}

/// Rows of every bundled projection table, for comparing with a replay from scratch.
async fn projection_snapshot(pool: &PgPool) -> Vec<Vec<String>> {
    let mut tables = Vec::new();
    for (table, order) in [
        ("projection_read_model.wallets", "id"),
        ("projection_ledger.postings", "transaction_id, account"),
        ("projection_ledger.balances", "account"),
        ("projection_audit.events", "global_position"),
    ] {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT row_to_json(t)::text FROM {table} t ORDER BY {order}"
        ))
        .fetch_all(pool)
        .await
        .expect("snapshot");
        tables.push(rows);
    }
    tables
}

async fn wait_all_caught_up(pool: &PgPool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM projector_checkpoints c
             WHERE c.projection NOT LIKE '%#%' AND EXISTS (
                 SELECT 1 FROM outbox o
                 WHERE (o.xact_id, o.global_position) > (c.last_xact_id, c.last_position))",
        )
        .fetch_one(pool)
        .await
        .expect("lag");
        if behind == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "projections never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The failpoints a round may arm (abort on their n-th hit), or none: a plain kill -9.
const CRASH_POINTS: [Option<&str>; 7] = [
    Some("before-claim"),
    Some("after-append"),
    Some("before-commit"),
    Some("projection-after-apply"),
    Some("projection-before-commit"),
    Some("projection-after-commit"),
    None,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomised_kill_9_and_crash_failpoints_lose_nothing() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let seed: u64 = std::env::var("WALLEX_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) ^ 0x9E37_79B9);
    println!("crash seed {seed} (set WALLEX_CRASH_SEED to replay)");
    let mut rng = seed;
    let mut next = move |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    let mut keys: Vec<(String, String)> = Vec::new();
    let rounds = 24;
    for round in 0..rounds {
        let point = CRASH_POINTS[next(CRASH_POINTS.len() as u64) as usize];
        let spec = point.map(|p| format!("{p}=abort-after({})", 1 + next(15)));
        let mut env = vec![
            ("PROJECTOR_LEASE_RETRY_MS", "100"),
            ("PROJECTOR_ERROR_BACKOFF_MS", "100"),
            ("PROJECTOR_BATCH_SIZE", "7"),
        ];
        if let Some(spec) = &spec {
            env.push(("WALLEX_FAILPOINTS", spec.as_str()));
        }
        let Some(mut server) = Server::try_spawn(&db.url, &env) else {
            println!("round {round}: {spec:?}, died during start-up");
            continue;
        };
        let base = server.base.clone();
        let round_keys: Vec<(String, String)> = (0..30)
            .map(|i| (format!("crash-{round}-{i}"), fresh_id("crash")))
            .collect();
        keys.extend(round_keys.iter().cloned());
        let writer = tokio::spawn(async move {
            let client = client();
            for (key, id) in round_keys {
                let sent = client
                    .post(format!("{base}/wallets"))
                    .header("content-type", "application/json")
                    .header("idempotency-key", key)
                    .body(wallet_body(&id))
                    .send()
                    .await;
                if sent.is_err() {
                    return; // the server died
                }
            }
        });
        // Without a failpoint (or if it was not reached), kill -9 after a random delay.
        let delay = Duration::from_millis(50 + next(400));
        let died = server.wait_exit(delay).is_some();
        if !died {
            server.kill();
        }
        let _ = writer.await;
        println!("round {round}: {spec:?}, died by failpoint: {died}");
    }
    // A clean server finishes the work.
    let server = Server::spawn(&db.url, &[("PROJECTOR_LEASE_RETRY_MS", "100")]);
    // No idempotency key is stuck: every key either replays its stored answer or runs now.
    let client = client();
    for (key, id) in &keys {
        let reply = read(
            client
                .post(server.url("/wallets"))
                .header("content-type", "application/json")
                .header("idempotency-key", key.as_str())
                .body(wallet_body(id))
                .send()
                .await
                .expect("send"),
        )
        .await;
        assert_eq!(reply.status, 201, "key {key} is stuck: {}", reply.text());
    }
    // No wallet without its event and outbox row, and no event without its wallet.
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM wallets w
         WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.stream_id = 'wallet-' || w.id)
            OR NOT EXISTS (SELECT 1 FROM outbox o WHERE o.stream_id = 'wallet-' || w.id)",
    )
    .fetch_one(&pool)
    .await
    .expect("orphans");
    assert_eq!(orphans, 0);
    let (wallets, events, outbox): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM wallets), (SELECT count(*) FROM events),
                (SELECT count(*) FROM outbox)",
    )
    .fetch_one(&pool)
    .await
    .expect("counts");
    assert_eq!((events, outbox), (wallets, wallets));
    assert_eq!(wallets, keys.len() as i64);
    // Every snapshot is the fold of its stream.
    assert_eq!(
        wallex_test_support::events::assert_snapshots_are_folds(&pool).await,
        keys.len()
    );
    wait_all_caught_up(&pool).await;
    let projected = projection_snapshot(&pool).await;
    drop(server);

    // Every projection equals a replay from scratch.
    sqlx::raw_sql(
        "DROP SCHEMA proj_read_model_v1, proj_ledger_v1, proj_audit_v1 CASCADE;
         DELETE FROM projector_checkpoints; DELETE FROM projection_deployments;",
    )
    .execute(&pool)
    .await
    .expect("reset projections");
    let server = Server::spawn(&db.url, &[]);
    wait_all_caught_up(&pool).await;
    assert_eq!(projection_snapshot(&pool).await, projected);
    drop(server);
    pool.close().await;
    drop(db);
}

/// A TCP proxy in front of PostgreSQL that the test can take down (every connection cut, new
/// ones refused) and bring back: a database outage as the server sees it, without stopping the
/// PostgreSQL that other tests share.
struct Outage {
    port: u16,
    down: Arc<AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Outage {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let down = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (accept_down, accept_generation) = (Arc::clone(&down), Arc::clone(&generation));
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if accept_down.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let born = accept_generation.load(Ordering::SeqCst);
                let generation = Arc::clone(&accept_generation);
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect("127.0.0.1:5432").await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let cut = async {
                        while generation.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        () = cut => {}
                    }
                });
            }
        });
        Self {
            port,
            down,
            generation,
        }
    }

    fn take_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn bring_back(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_gives_quick_503s_and_everything_resumes_by_itself() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let proxy = Outage::start().await;
    let proxied_url = db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    assert_ne!(
        proxied_url, db.url,
        "the test database URL names 127.0.0.1:5432"
    );
    let server = Server::spawn(
        &proxied_url,
        &[
            ("DATABASE_ACQUIRE_TIMEOUT_MS", "1000"),
            ("PROJECTOR_LEASE_RETRY_MS", "200"),
            ("PROJECTOR_ERROR_BACKOFF_MS", "100"),
        ],
    );
    for _ in 0..5 {
        let reply = post_wallet(&client(), &server, &wallet_body(&fresh_id("pre")), &[]).await;
        assert_eq!(reply.status, 201);
    }
    proxy.take_down();
    // Let the proxy cut the pooled connections (it checks every 20 ms).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut outage_answers = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let reply = post_wallet(&client(), &server, &wallet_body(&fresh_id("down")), &[]).await;
        outage_answers.push((reply.status, started.elapsed()));
        assert_eq!(reply.status, 503, "during the outage: {}", reply.text());
        reply.assert_problem(503, "database-unavailable");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a request hung for {:?}",
            started.elapsed()
        );
    }
    assert_eq!(get(&client(), &server, "/readyz").await.status, 503);
    proxy.bring_back();
    // Everything resumes without a restart.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = post_wallet(&client(), &server, &wallet_body(&fresh_id("post")), &[]).await;
        if reply.status == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes never resumed: {}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..5 {
        let reply = post_wallet(&client(), &server, &wallet_body(&fresh_id("post")), &[]).await;
        assert_eq!(reply.status, 201);
    }
    wait_all_caught_up(&pool).await;
    // No partial data: every wallet has its event and outbox row, and each projection has them.
    let (wallets, events, outbox, projected): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM wallets), (SELECT count(*) FROM events),
                (SELECT count(*) FROM outbox),
                (SELECT count(*) FROM projection_read_model.wallets)",
    )
    .fetch_one(&pool)
    .await
    .expect("counts");
    assert_eq!((events, outbox, projected), (wallets, wallets, wallets));
    assert_eq!(wallets, 11, "{outage_answers:?}");
    drop(server);
    pool.close().await;
    drop(db);
}
