//! Black-box tests of operating projections by name through the real `wallex` binary: the admin
//! API's auth and errors, in-place deploys under write load (equal to a replay from scratch),
//! blue/green rebuilds whose readers never see a half-built table, the directory watch, a deploy
//! reaching a second instance, and the `wallex projections` CLI.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{
    admin, admin_status, client, fresh_id, get, post_wallet, read, spawn_creator, upload,
    wait_caught_up, wait_status, wallet_body, wasm, Server, TestDb, ADMIN_TOKEN as TOKEN,
};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

const CATCH_UP: Duration = Duration::from_secs(90);
/// How long a change may take to show up on an instance in these tests.
const PROPAGATION: Duration = Duration::from_secs(10);
const FAST_ENV: &[(&str, &str)] = &[
    ("WALLEX_ADMIN_TOKEN", TOKEN),
    ("PROJECTOR_LEASE_RETRY_MS", "200"),
    ("PROJECTOR_ERROR_BACKOFF_MS", "100"),
    ("REGISTRY_RESYNC_MS", "1000"),
];

/// The same component with a custom section appended: new bytes (a new SHA-256), same behaviour.
fn variant(bytes: &[u8], tag: &str) -> Vec<u8> {
    wallex::bench::deploy::tagged_build(bytes, tag)
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn rows(pool: &PgPool, sql: &str) -> Vec<String> {
    sqlx::query_scalar(sql).fetch_all(pool).await.expect(sql)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_is_off_without_a_token_and_needs_the_right_one() {
    let db = TestDb::migrated().await;
    let off = Server::spawn(&db.url, &[]);
    get(&client(), &off, "/admin/projections")
        .await
        .assert_problem(404, "admin-disabled");
    drop(off);

    let server = Server::spawn(&db.url, FAST_ENV);
    let anonymous = get(&client(), &server, "/admin/projections").await;
    anonymous.assert_problem(401, "unauthorized");
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    let wrong = client()
        .get(server.url("/admin/projections"))
        .bearer_auth("not-the-token-at-all")
        .send()
        .await
        .expect("send");
    read(wrong).await.assert_problem(401, "unauthorized");
    let refused_upload = client()
        .put(server.url("/admin/projections/read-model"))
        .header("content-type", "application/wasm")
        .body(wasm("wallex_projection_read_model.wasm"))
        .send()
        .await
        .expect("send");
    read(refused_upload)
        .await
        .assert_problem(401, "unauthorized");

    let listed = admin(reqwest::Method::GET, &server, "/admin/projections").await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let names: Vec<String> = listed.json()["projections"]
        .as_array()
        .expect("list")
        .iter()
        .map(|p| p["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(names, ["audit", "ledger", "read-model"]);
    let read_model = admin_status(&server, "read-model").await;
    assert_eq!(read_model["source"], "bundled:read-model");
    assert_eq!(
        read_model["sha256"],
        sha(&wasm("wallex_projection_read_model.wasm"))
    );
    drop(server);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_error_names_its_reason_and_changes_nothing() {
    let db = TestDb::migrated().await;
    let limit = 1 << 20;
    let mut env = FAST_ENV.to_vec();
    let limit_text = limit.to_string();
    env.push(("WALLEX_MAX_COMPONENT_BYTES", &limit_text));
    let server = Server::spawn(&db.url, &env);
    let before = admin_status(&server, "read-model").await;

    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "garbage",
            b"definitely not wasm".to_vec(),
            "not a WebAssembly binary",
        ),
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            "core WebAssembly module",
        ),
        (
            "component without the world",
            b"\0asm\x0d\0\x01\0".to_vec(),
            "does not implement the wallex:projection world",
        ),
        (
            "another projection's component",
            wasm("wallex_projection_ledger.wasm"),
            "named \"ledger\", not \"read-model\"",
        ),
    ];
    for (case, bytes, reason) in cases {
        let problem = upload(&server, "read-model", bytes)
            .await
            .assert_problem(400, "invalid-component");
        let detail = problem["detail"].as_str().expect("detail");
        assert!(detail.contains(reason), "{case}: {detail}");
    }
    let too_large = upload(&server, "read-model", vec![0; limit + 4096]).await;
    too_large.assert_problem(413, "component-too-large");

    let wrong_type = client()
        .put(server.url("/admin/projections/read-model"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/octet-stream")
        .body(wasm("wallex_projection_read_model.wasm"))
        .send()
        .await
        .expect("send");
    read(wrong_type)
        .await
        .assert_problem(415, "unsupported-media-type");

    let bytes = variant(&wasm("wallex_projection_read_model.wasm"), "digest");
    let wrong_digest = format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"other bytes"))
    );
    let mismatch = client()
        .put(server.url("/admin/projections/read-model"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/wasm")
        .header("content-digest", wrong_digest)
        .body(bytes.clone())
        .send()
        .await
        .expect("send");
    read(mismatch).await.assert_problem(400, "digest-mismatch");

    for (method, path, status, slug) in [
        (
            reqwest::Method::GET,
            "/admin/projections/nope",
            404,
            "not-found",
        ),
        (
            reqwest::Method::POST,
            "/admin/projections/nope/pause",
            404,
            "not-found",
        ),
        (
            reqwest::Method::POST,
            "/admin/projections/nope/rebuild",
            404,
            "not-found",
        ),
        (
            reqwest::Method::DELETE,
            "/admin/projections/nope",
            404,
            "not-found",
        ),
        (
            reqwest::Method::POST,
            "/admin/projections/read-model/explode",
            404,
            "not-found",
        ),
        (
            reqwest::Method::GET,
            "/admin/projections/Bad%20Name",
            400,
            "invalid-projection-name",
        ),
        (
            reqwest::Method::POST,
            "/admin/projections/read-model/rollback",
            409,
            "conflict",
        ),
        (
            reqwest::Method::POST,
            "/admin/projections/read-model/resume",
            409,
            "conflict",
        ),
        (
            reqwest::Method::DELETE,
            "/admin/projections/read-model/rebuild",
            409,
            "conflict",
        ),
    ] {
        admin(method, &server, path)
            .await
            .assert_problem(status, slug);
    }

    // Rebuild while rebuilding: paused, so the first rebuild stays in progress.
    let paused = admin(
        reqwest::Method::POST,
        &server,
        "/admin/projections/read-model/pause",
    )
    .await;
    assert_eq!(paused.status, 200, "{}", paused.text());
    let started = admin(
        reqwest::Method::POST,
        &server,
        "/admin/projections/read-model/rebuild",
    )
    .await;
    assert_eq!(started.status, 200, "{}", started.text());
    assert_eq!(started.json()["outcome"], "rebuild-started");
    admin(
        reqwest::Method::POST,
        &server,
        "/admin/projections/read-model/rebuild",
    )
    .await
    .assert_problem(409, "conflict");
    upload(&server, "read-model", bytes)
        .await
        .assert_problem(409, "conflict");
    let cancelled = admin(
        reqwest::Method::DELETE,
        &server,
        "/admin/projections/read-model/rebuild",
    )
    .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    let resumed = admin(
        reqwest::Method::POST,
        &server,
        "/admin/projections/read-model/resume",
    )
    .await;
    assert_eq!(resumed.status, 200, "{}", resumed.text());

    let after = admin_status(&server, "read-model").await;
    for field in [
        "sha256",
        "namespace",
        "schemaVersion",
        "source",
        "previousSha256",
    ] {
        assert_eq!(after[field], before[field], "{field} changed");
    }
    let pool = db.pool().await;
    let leftover: Vec<String> = rows(
        &pool,
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'proj_read_model_v1_b%'",
    )
    .await;
    assert!(leftover.is_empty(), "cancelled rebuild left {leftover:?}");
    let refused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM admin_actions WHERE outcome = 'refused' AND actor = 'admin'",
    )
    .fetch_one(&pool)
    .await
    .expect("audit");
    assert!(refused >= 8, "refused actions recorded: {refused}");
    pool.close().await;
    drop(server);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_under_write_load_lose_nothing_and_apply_nothing_twice() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let server = Server::spawn(&db.url, FAST_ENV);
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = spawn_creator(&server.base, stop.clone());
    let ledger = wasm("wallex_projection_ledger.wasm");
    let mut last = String::new();
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let bytes = variant(&ledger, &format!("round-{round}"));
        last = sha(&bytes);
        let deployed = upload(&server, "ledger", bytes).await;
        assert_eq!(deployed.status, 200, "{}", deployed.text());
        assert_eq!(deployed.json()["outcome"], "swapped");
        assert_eq!(deployed.json()["projection"]["runningHere"]["sha256"], last);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let created = writer.await.expect("writer");
    assert!(created > 20, "the load was too light: {created}");
    let live = wait_caught_up(&server, "ledger").await;
    assert_eq!(live["sha256"], last);
    let ledger_rows =
        "SELECT account || ':' || balance::text FROM projection_ledger.balances ORDER BY account";
    let posting_rows = "SELECT transaction_id || ':' || account || ':' || amount::text
                        FROM projection_ledger.postings ORDER BY transaction_id, account";
    let balances = rows(&pool, ledger_rows).await;
    let postings = rows(&pool, posting_rows).await;
    assert_eq!(postings.len() as u32, 2 * created, "postings per wallet");

    // From scratch: rebuild the ledger into new tables and compare.
    let rebuilt = admin(
        reqwest::Method::POST,
        &server,
        "/admin/projections/ledger/rebuild",
    )
    .await;
    assert_eq!(rebuilt.status, 200, "{}", rebuilt.text());
    let after = wait_caught_up(&server, "ledger").await;
    assert_eq!(after["namespace"], "proj_ledger_v1_b1");
    assert_eq!(rows(&pool, ledger_rows).await, balances);
    assert_eq!(rows(&pool, posting_rows).await, postings);
    let old: Vec<String> = rows(
        &pool,
        "SELECT nspname::text FROM pg_namespace WHERE nspname = 'proj_ledger_v1'",
    )
    .await;
    assert!(old.is_empty(), "old tables kept after the cut-over");
    pool.close().await;
    drop(server);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_rebuild_under_load_never_shows_readers_a_partial_table() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    wallex::bench::projections::preload(&pool, 20_000)
        .await
        .expect("preload");
    let mut env = FAST_ENV.to_vec();
    env.push(("PROJECTOR_REBUILD_BATCH_SIZE", "500"));
    let server = Server::spawn(&db.url, &env);
    wait_caught_up(&server, "read-model").await;

    let stop = tokio_util::sync::CancellationToken::new();
    let writer = spawn_creator(&server.base, stop.clone());
    let reader_stop = stop.clone();
    let reader_url = db.url.clone();
    let reader = tokio::spawn(async move {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&reader_url)
            .await
            .expect("reader pool");
        let (mut reads, mut previous, mut saw_label) = (0_u32, 0_i64, false);
        while !reader_stop.is_cancelled() {
            let count: i64 =
                sqlx::query_scalar("SELECT count(*) FROM projection_read_model.wallets")
                    .fetch_one(&pool)
                    .await
                    .expect("the stable name is always readable");
            assert!(
                count >= previous,
                "a reader saw {count} wallets after {previous}: a partial table"
            );
            previous = count;
            reads += 1;
            saw_label |= sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                 WHERE table_schema = 'projection_read_model' AND column_name = 'label')",
            )
            .fetch_one(&pool)
            .await
            .expect("columns");
        }
        pool.close().await;
        (reads, saw_label)
    });

    tokio::time::sleep(Duration::from_millis(300)).await;
    let v2 = wasm("wallex_projection_read_model_v2.wasm");
    let deployed = upload(&server, "read-model", v2.clone()).await;
    assert_eq!(deployed.status, 200, "{}", deployed.text());
    assert_eq!(deployed.json()["outcome"], "rebuild-started");
    let rebuilding = admin_status(&server, "read-model").await;
    assert_eq!(
        rebuilding["schemaVersion"], 1,
        "v1 serves until the cut-over"
    );
    let status = wait_status(&server, "read-model", CATCH_UP, "never cut over", |s| {
        s["schemaVersion"] == 2
    })
    .await;
    assert_eq!(status["sha256"], sha(&v2));
    assert_eq!(status["namespace"], "proj_read_model_v2_b1");
    assert!(status["previousSha256"].is_string());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let created = writer.await.expect("writer");
    let (reads, saw_label) = reader.await.expect("reader");
    assert!(reads > 10, "the reader barely read: {reads}");
    assert!(saw_label, "the reader never saw the new schema");
    wait_caught_up(&server, "read-model").await;

    let wallets: i64 = sqlx::query_scalar("SELECT count(*) FROM wallets")
        .fetch_one(&pool)
        .await
        .expect("wallets");
    let projected: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM projection_read_model.wallets WHERE label = owner || '/' || currency",
    )
    .fetch_one(&pool)
    .await
    .expect("v2 rows");
    assert_eq!(projected, 20_000 + i64::from(created));
    assert_eq!(
        wallets,
        i64::from(created),
        "preloaded events have no wallet rows"
    );
    let old: Vec<String> = rows(
        &pool,
        "SELECT nspname::text FROM pg_namespace WHERE nspname = 'proj_read_model_v1'",
    )
    .await;
    assert!(old.is_empty(), "the version 1 tables were not dropped");
    // Reads through the HTTP API use the stable name too.
    let id = fresh_id("after");
    let reply = post_wallet(&client(), &server, &wallet_body(&id), &[]).await;
    let position = reply
        .header("x-global-position")
        .expect("position")
        .to_owned();
    let row = get(
        &client(),
        &server,
        &format!("/projections/read-model/wallets/{id}?minPosition={position}"),
    )
    .await;
    assert_eq!(row.status, 200, "{}", row.text());
    assert!(row.json()["label"].is_string(), "{}", row.text());
    pool.close().await;
    drop(server);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_watch_deploys_changes_and_rejects_invalid_files() {
    let db = TestDb::migrated().await;
    let dir = std::env::temp_dir().join(format!("wallex-watch-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    for file in [
        "wallex_projection_read_model.wasm",
        "wallex_projection_ledger.wasm",
        "wallex_projection_audit.wasm",
    ] {
        std::fs::write(dir.join(file), wasm(file)).expect("copy");
    }
    let dir_text = dir.display().to_string();
    let mut env = FAST_ENV.to_vec();
    env.push(("WALLEX_PROJECTIONS_DIR", &dir_text));
    env.push(("WALLEX_PROJECTIONS_WATCH_MS", "100"));
    let server = Server::spawn(&db.url, &env);
    let status = admin_status(&server, "read-model").await;
    assert_eq!(
        status["source"],
        "directory:wallex_projection_read_model.wasm"
    );

    let changed = variant(&wasm("wallex_projection_read_model.wasm"), "watched");
    std::fs::write(dir.join("wallex_projection_read_model.wasm"), &changed).expect("write");
    let started = Instant::now();
    wait_status(
        &server,
        "read-model",
        PROPAGATION,
        "change not picked up",
        |s| s["sha256"] == sha(&changed) && s["runningHere"]["sha256"] == sha(&changed),
    )
    .await;
    let picked_up = started.elapsed();

    std::fs::write(
        dir.join("wallex_projection_read_model.wasm"),
        b"broken build",
    )
    .expect("write");
    let status = wait_status(
        &server,
        "read-model",
        PROPAGATION,
        "invalid file not reported",
        |s| s["lastDeployError"].is_string(),
    )
    .await;
    assert_eq!(
        status["sha256"],
        sha(&changed),
        "the old version keeps running"
    );
    assert!(
        status["lastDeployError"]
            .as_str()
            .is_some_and(|e| e.contains("not a WebAssembly binary")),
        "{status:#}"
    );
    // It keeps processing events.
    let reply = post_wallet(&client(), &server, &wallet_body(&fresh_id("w")), &[]).await;
    assert_eq!(reply.status, 201);
    wait_caught_up(&server, "read-model").await;
    assert!(picked_up < PROPAGATION);
    drop(server);
    // A restart with the broken file still there starts, and runs the last good version.
    let restarted = Server::spawn(&db.url, &env);
    let status = admin_status(&restarted, "read-model").await;
    assert_eq!(status["sha256"], sha(&changed));
    assert!(restarted.logs().contains("component file rejected"));
    drop(restarted);
    let _ = std::fs::remove_dir_all(&dir);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_through_one_instance_runs_on_the_other() {
    let db = TestDb::migrated().await;
    let first = Server::spawn(&db.url, FAST_ENV);
    // The second instance only re-reads the registry on notification within this test's wait:
    // its periodic resync is far longer.
    let second = Server::spawn(
        &db.url,
        &[
            ("WALLEX_ADMIN_TOKEN", TOKEN),
            ("REGISTRY_RESYNC_MS", "600000"),
        ],
    );
    let bytes = variant(&wasm("wallex_projection_audit.wasm"), "two-instances");
    let started = Instant::now();
    let deployed = upload(&first, "audit", bytes.clone()).await;
    assert_eq!(deployed.status, 200, "{}", deployed.text());
    wait_status(
        &second,
        "audit",
        PROPAGATION,
        "deploy never reached the second instance",
        |s| s["runningHere"]["sha256"] == sha(&bytes),
    )
    .await;
    assert!(started.elapsed() < PROPAGATION);
    let paused = admin(
        reqwest::Method::POST,
        &first,
        "/admin/projections/audit/pause",
    )
    .await;
    assert_eq!(paused.status, 200);
    wait_status(
        &second,
        "audit",
        PROPAGATION,
        "pause never reached the second instance",
        |s| s["status"] == "paused",
    )
    .await;
    drop(first);
    drop(second);
    drop(db);
}

fn cli(server: &Server, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wallex"))
        .arg("projections")
        .args(args)
        .env("WALLEX_URL", &server.base)
        .env("WALLEX_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the CLI")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_operates_projections_and_fails_with_one_line() {
    let db = TestDb::migrated().await;
    let server = Server::spawn(&db.url, FAST_ENV);
    let list = cli(&server, &["list"]);
    assert!(list.status.success(), "{list:?}");
    let table = String::from_utf8_lossy(&list.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("read-model") && table.contains("bundled:ledger"),
        "{table}"
    );

    let file =
        std::env::temp_dir().join(format!("wallex-cli-{}.wasm", uuid::Uuid::new_v4().simple()));
    let bytes = variant(&wasm("wallex_projection_read_model.wasm"), "cli");
    std::fs::write(&file, &bytes).expect("write");
    let deployed = cli(&server, &["deploy", &file.display().to_string(), "--json"]);
    assert!(deployed.status.success(), "{deployed:?}");
    let answer: serde_json::Value = serde_json::from_slice(&deployed.stdout).expect("json");
    assert_eq!(answer["outcome"], "swapped");
    assert_eq!(answer["projection"]["sha256"], sha(&bytes));
    // The same bytes again with settings: nothing to swap, the settings apply.
    let set = cli(
        &server,
        &[
            "deploy",
            &file.display().to_string(),
            "--set",
            "on_poison=skip",
            "--set",
            "call_timeout_ms=500",
            "--json",
        ],
    );
    assert!(set.status.success(), "{set:?}");
    let answer: serde_json::Value = serde_json::from_slice(&set.stdout).expect("json");
    assert_eq!(answer["outcome"], "unchanged");
    assert_eq!(answer["projection"]["settings"]["on_poison"], "skip");
    assert_eq!(answer["projection"]["policy"]["callTimeoutMs"], 500);
    let bad_set = cli(
        &server,
        &["deploy", &file.display().to_string(), "--set", "nonsense"],
    );
    assert_eq!(bad_set.status.code(), Some(1));

    for (verb, expected) in [
        ("pause", "paused"),
        ("resume", "running"),
        ("reload", "running"),
    ] {
        let out = cli(&server, &[verb, "read-model", "--json"]);
        assert!(out.status.success(), "{verb}: {out:?}");
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(answer["projection"]["status"], expected, "{verb}");
    }
    let rolled = cli(&server, &["rollback", "read-model", "--json"]);
    assert!(rolled.status.success(), "{rolled:?}");
    let answer: serde_json::Value = serde_json::from_slice(&rolled.stdout).expect("json");
    assert_eq!(
        answer["projection"]["sha256"],
        sha(&wasm("wallex_projection_read_model.wasm"))
    );
    let rebuilt = cli(&server, &["rebuild", "read-model", "--wait"]);
    assert!(rebuilt.status.success(), "{rebuilt:?}");
    assert!(
        String::from_utf8_lossy(&rebuilt.stderr).contains("rebuilt and live"),
        "{rebuilt:?}"
    );

    let missing = cli(&server, &["status", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    let unreadable = cli(
        &server,
        &["deploy", "/nonexistent/file.wasm", "--name", "x"],
    );
    assert_eq!(unreadable.status.code(), Some(1));
    let mut wrong_token = Command::new(env!("CARGO_BIN_EXE_wallex"));
    let refused = wrong_token
        .args(["projections", "list"])
        .env("WALLEX_URL", &server.base)
        .env("WALLEX_ADMIN_TOKEN", "wrong-token-wrong-token")
        .output()
        .expect("run");
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    let _ = std::fs::remove_file(&file);
    drop(server);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rebuild_leaves_the_live_version_untouched() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    wallex::bench::projections::preload(&pool, 5_000)
        .await
        .expect("preload");
    let mut env = FAST_ENV.to_vec();
    env.push(("PROJECTOR_REBUILD_BATCH_SIZE", "10"));
    env.push(("PROJECTOR_MAX_RETRIES", "1"));
    let server = Server::spawn(&db.url, &env);
    wait_caught_up(&server, "read-model").await;
    let started = admin(
        reqwest::Method::POST,
        &server,
        "/admin/projections/read-model/rebuild",
    )
    .await;
    assert_eq!(started.status, 200, "{}", started.text());
    // Break the rebuild: its table disappears under it.
    sqlx::raw_sql("DROP TABLE proj_read_model_v1_b1.wallets")
        .execute(&pool)
        .await
        .expect("drop the rebuild's table");
    let status = wait_status(
        &server,
        "read-model",
        CATCH_UP,
        "rebuild never failed",
        |s| s["rebuild"]["status"] == "failed",
    )
    .await;
    assert!(status["rebuild"]["lastError"].is_string(), "{status:#}");
    assert_eq!(status["namespace"], "proj_read_model_v1");
    assert_eq!(status["status"], "running");
    // The live version keeps applying events and serving reads.
    let id = fresh_id("live");
    let reply = post_wallet(&client(), &server, &wallet_body(&id), &[]).await;
    let position = reply
        .header("x-global-position")
        .expect("position")
        .to_owned();
    let row = get(
        &client(),
        &server,
        &format!("/projections/read-model/wallets/{id}?minPosition={position}"),
    )
    .await;
    assert_eq!(row.status, 200, "{}", row.text());
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_read_model.wallets")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(count, 5_001);
    // A new rebuild replaces the failed one and completes.
    let again = admin(
        reqwest::Method::POST,
        &server,
        "/admin/projections/read-model/rebuild",
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.text());
    let done = wait_caught_up(&server, "read-model").await;
    assert_eq!(done["namespace"], "proj_read_model_v1_b2");
    pool.close().await;
    drop(server);
    drop(db);
}
