//! Dry runs, black box: a candidate replayed over the live log into a shadow of its own,
//! compared with the live version, and never put live — through the admin API and the CLI.
//! A fix of a live projection reports exactly the rows it would change and changes nothing; a
//! new projection reports its poison events at their positions and keeps its shadow on request;
//! under full-speed writes the comparison with an identical candidate finds nothing (the cut is
//! consistent); limits and cancellation end a run cleanly, with nothing left behind.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

const ENV_BASE: [(&str, &str); 2] = [("WALLEX_ADMIN_TOKEN", ADMIN_TOKEN), ("RUST_LOG", "info")];

/// Starts a dry run (`POST /admin/dry-runs?{query}`) and answers its first body.
async fn start(server: &Server, query: &str, component: Vec<u8>) -> Reply {
    let response = client()
        .post(server.url(&format!("/admin/dry-runs{query}")))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/wasm")
        .body(component)
        .send()
        .await
        .expect("dry run request");
    read(response).await
}

/// Polls run `id` until it has ended.
async fn ended(server: &Server, id: i64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let run = admin_get(server, &format!("/admin/dry-runs/{id}")).await;
        if matches!(
            run["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            return run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dry run {id} did not end: {run:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn dry_run(server: &Server, query: &str, component: Vec<u8>) -> serde_json::Value {
    let reply = start(server, query, component).await;
    assert!(
        reply.status == 202 || reply.status == 200,
        "{}",
        reply.text()
    );
    let id = reply.json()["id"].as_i64().expect("run id");
    ended(server, id).await
}

/// What must not change when a dry run runs: the live tables, checkpoints, dead letters,
/// deployments.
async fn live_state(pool: &sqlx::PgPool) -> Vec<String> {
    let mut state: Vec<String> = sqlx::query_scalar(
        "SELECT projection || ' ' || last_position || ' ' || events_applied || ' ' || namespace
         FROM projector_checkpoints ORDER BY projection",
    )
    .fetch_all(pool)
    .await
    .expect("checkpoints");
    state.extend(
        sqlx::query_scalar::<_, String>(
            "SELECT projection || ' ' || sha256 || ' ' || state FROM projection_deployments ORDER BY projection",
        )
        .fetch_all(pool)
        .await
        .expect("deployments"),
    );
    state.push(format!(
        "dead letters {}",
        count(pool, "SELECT count(*) FROM projection_dead_letters").await
    ));
    state
}

/// Waits until the bundled projections have applied every event (so that the live state stands
/// still while a dry run runs).
async fn settled(server: &Server) {
    for name in ["read-model", "ledger", "audit"] {
        wait_caught_up(server, name).await;
    }
}

async fn schema_exists(pool: &sqlx::PgPool, namespace: &str) -> bool {
    count(
        pool,
        &format!("SELECT count(*) FROM pg_namespace WHERE nspname = '{namespace}'"),
    )
    .await
        == 1
}

#[tokio::test]
async fn a_dry_run_of_a_fix_reports_exactly_the_rows_it_would_change_and_changes_nothing() {
    let db = TestDb::migrated().await;
    let server = Server::spawn(&db.url, &ENV_BASE);
    let client = client();
    let pool = db.pool().await;
    let reply = upload(
        &server,
        "drift-probe",
        wasm("wallex_fixture_drift_buggy.wasm"),
    )
    .await;
    assert!(
        reply.status == 201 || reply.status == 200,
        "{}",
        reply.text()
    );
    for id in ["bug-1", "bug-2", "bug-3"] {
        let reply = post_wallet(&client, &server, &wallet_body(id), &[]).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    wait_caught_up(&server, "drift-probe").await;
    settled(&server).await;
    let live_sha = admin_status(&server, "drift-probe").await["sha256"].clone();
    let owners = "SELECT string_agg(wallet_id || '=' || owner, ',' ORDER BY wallet_id) FROM projection_drift_probe.owners";
    let owners_before: String = sqlx::query_scalar(owners)
        .fetch_one(&pool)
        .await
        .expect("owners");
    let before = live_state(&pool).await;

    let run = dry_run(
        &server,
        "?name=drift-probe",
        wasm("wallex_fixture_drift_fixed.wasm"),
    )
    .await;
    assert_eq!(run["status"], "completed", "{run:#}");
    assert_eq!(run["liveSha256"], live_sha, "{run:#}");
    assert_eq!(run["declared"]["name"], "drift-probe", "{run:#}");
    assert_eq!(
        run["declared"]["tables"][0]["columns"],
        serde_json::json!(["wallet_id text", "owner text", "balance decimal"]),
        "{run:#}"
    );
    // Every wallet event in the log was read; the three are the subscribed ones.
    assert_eq!(run["progress"]["eventsHandled"], 3, "{run:#}");
    assert_eq!(run["progress"]["poisonEvents"], 0, "{run:#}");
    let table = &run["tables"][0];
    assert_eq!(
        (
            &table["table"],
            &table["change"],
            &table["rows"],
            &table["liveRows"]
        ),
        (&"owners".into(), &"same".into(), &3.into(), &3.into()),
        "{run:#}"
    );
    assert_eq!(
        (&table["missing"], &table["extra"], &table["different"]),
        (&0.into(), &0.into(), &3.into()),
        "{run:#}"
    );
    let sample: Vec<(String, String)> = run["sample"]
        .as_array()
        .expect("sample")
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap_or_default().to_owned(),
                r["change"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let different = |id: &str| (format!("wallet_id={id}"), "different".to_owned());
    assert_eq!(
        sample,
        [different("bug-1"), different("bug-2"), different("bug-3")]
    );
    assert_eq!(
        run["sample"][0]["columns"],
        serde_json::json!([{"column": "owner", "candidate": "user-001", "live": "USER-001"}])
    );
    // Nothing live changed, and nothing of the run is left.
    assert!(run["shadow"].is_null(), "{run:#}");
    assert_eq!(live_state(&pool).await, before);
    let owners_after: String = sqlx::query_scalar(owners)
        .fetch_one(&pool)
        .await
        .expect("owners");
    assert_eq!(owners_after, owners_before);
    let id = run["id"].as_i64().expect("id");
    assert!(!schema_exists(&pool, &format!("dry_drift_probe_{id}")).await);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM projector_checkpoints WHERE projection LIKE '%#dry-run'"
        )
        .await,
        0
    );
    let audited = count(
        &pool,
        "SELECT count(*) FROM admin_actions WHERE action = 'dry-run' AND projection = 'drift-probe'",
    )
    .await;
    assert_eq!(audited, 2, "started and completed");

    // The CLI: the same report, and a name the component does not declare is refused.
    let file = std::env::temp_dir().join(format!("{}.wasm", fresh_id("dry-run")));
    std::fs::write(&file, wasm("wallex_fixture_drift_fixed.wasm")).expect("component file");
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wallex"))
            .arg("projections")
            .args(args)
            .env("WALLEX_URL", server.url(""))
            .env("WALLEX_ADMIN_TOKEN", ADMIN_TOKEN)
            .env_remove("RUST_LOG")
            .output()
            .expect("run wallex")
    };
    let path = file.display().to_string();
    let output = cli(&["deploy", &path, "--dry-run"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(": completed in "), "{stdout}");
    assert!(
        stdout.contains("owners [same]: 3 rows (live 3); 0 missing, 0 extra, 3 different"),
        "{stdout}"
    );
    assert!(
        stdout.contains("different owners wallet_id=bug-1 (owner: USER-001 -> user-001)"),
        "{stdout}"
    );
    let output = cli(&[
        "--json",
        "deploy",
        &path,
        "--name",
        "read-model",
        "--dry-run",
    ]);
    assert!(!output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json report");
    assert_eq!(report["status"], "failed", "{report:#}");
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("drift-probe") && e.contains("read-model")),
        "{report:#}"
    );
    let _ = std::fs::remove_file(&file);
    assert_eq!(live_state(&pool).await, before);

    // Bad input: not a component, an unknown query key.
    start(&server, "", b"not wasm".to_vec())
        .await
        .assert_problem(400, "invalid-component");
    start(
        &server,
        "?frobnicate=1",
        wasm("wallex_fixture_drift_fixed.wasm"),
    )
    .await
    .assert_problem(400, "invalid-query");
    let missing = admin(reqwest::Method::GET, &server, "/admin/dry-runs/999999").await;
    missing.assert_problem(404, "not-found");
}

#[tokio::test]
async fn a_dry_run_of_a_new_projection_reports_its_poison_events_and_keeps_its_shadow_on_request() {
    let db = TestDb::migrated().await;
    let server = Server::spawn(&db.url, &ENV_BASE);
    let client = client();
    let pool = db.pool().await;
    for id in ["ok-1", "poison-1", "ok-2", "ok-3", "poison-2"] {
        let reply = post_wallet(&client, &server, &wallet_body(id), &[]).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    settled(&server).await;
    let positions: Vec<i64> = sqlx::query_scalar(
        "SELECT global_position FROM outbox WHERE data->>'walletId' LIKE 'poison%' ORDER BY global_position",
    )
    .fetch_all(&pool)
    .await
    .expect("positions");
    assert_eq!(positions.len(), 2);
    let before = live_state(&pool).await;

    let run = dry_run(
        &server,
        "?keep=true",
        wasm("wallex_projection_hostile_panic.wasm"),
    )
    .await;
    assert_eq!(run["status"], "completed", "{run:#}");
    assert!(run["liveSha256"].is_null(), "{run:#}");
    assert_eq!(run["projection"], "hostile-panic");
    assert_eq!(run["progress"]["poisonEvents"], 2, "{run:#}");
    let poisoned: Vec<i64> = run["poison"]
        .as_array()
        .expect("poison")
        .iter()
        .map(|p| p["position"].as_i64().unwrap_or_default())
        .collect();
    assert_eq!(poisoned, positions, "{run:#}");
    assert_eq!(run["tables"][0]["change"], "added", "{run:#}");
    assert_eq!(run["tables"][0]["rows"], 3, "{run:#}");
    // Nothing live: no deployment, no dead letter; the kept shadow holds the three rows.
    assert_eq!(live_state(&pool).await, before);
    let shadow = run["shadow"].as_str().expect("kept shadow").to_owned();
    let seen: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT wallet_id FROM {shadow}.seen ORDER BY wallet_id"
    ))
    .fetch_all(&pool)
    .await
    .expect("shadow rows");
    assert_eq!(seen, ["ok-1", "ok-2", "ok-3"]);
    let id = run["id"].as_i64().expect("id");
    let dropped = admin(
        reqwest::Method::DELETE,
        &server,
        &format!("/admin/dry-runs/{id}"),
    )
    .await;
    assert_eq!(dropped.status, 200, "{}", dropped.text());
    assert!(dropped.json()["shadow"].is_null());
    assert!(!schema_exists(&pool, &shadow).await);
    admin(
        reqwest::Method::DELETE,
        &server,
        &format!("/admin/dry-runs/{id}"),
    )
    .await
    .assert_problem(409, "conflict");
    assert_eq!(live_state(&pool).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_full_speed_writes_a_dry_run_of_the_live_version_finds_no_difference() {
    let db = TestDb::migrated().await;
    let server = Server::spawn(&db.url, &ENV_BASE);
    let stop = tokio_util::sync::CancellationToken::new();
    let creators: Vec<_> = (0..4)
        .map(|_| spawn_creator(&server.url(""), stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The live tables keep moving during the replay and the comparison: only a consistent cut
    // finds them equal to the replay of the same version.
    for (name, file) in [
        ("read-model", "wallex_projection_read_model.wasm"),
        ("ledger", "wallex_projection_ledger.wasm"),
    ] {
        let run = dry_run(&server, &format!("?name={name}"), wasm(file)).await;
        assert_eq!(run["status"], "completed", "{name}: {run:#}");
        let tables = run["tables"].as_array().expect("tables");
        assert!(!tables.is_empty());
        for table in tables {
            assert!(
                table["liveRows"].as_i64().unwrap_or(0) > 0,
                "{name}: {run:#}"
            );
            assert_eq!(table["rows"], table["liveRows"], "{name}: {run:#}");
            assert_eq!(
                (&table["missing"], &table["extra"], &table["different"]),
                (&0.into(), &0.into(), &0.into()),
                "{name}: {run:#}"
            );
        }
    }
    stop.cancel();
    let mut created = 0;
    for creator in creators {
        created += creator.await.expect("creator");
    }
    assert!(created > 0);
}

#[tokio::test]
async fn a_dry_run_over_its_limits_or_cancelled_ends_cleanly_with_nothing_left() {
    let db = TestDb::migrated().await;
    let mut env = ENV_BASE.to_vec();
    // Small, slow batches: the run is still replaying when it is cancelled.
    env.extend([
        ("PROJECTOR_REBUILD_BATCH_SIZE", "5"),
        ("WALLEX_FAILPOINTS", "dry-run-batch=sleep(200)"),
    ]);
    let server = Server::spawn(&db.url, &env);
    let client = client();
    let pool = db.pool().await;
    for i in 0..60 {
        let reply = post_wallet(&client, &server, &wallet_body(&format!("w-{i}")), &[]).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    settled(&server).await;
    let before = live_state(&pool).await;
    let component = wasm("wallex_projection_read_model.wasm");

    let over = dry_run(&server, "?name=read-model&max_events=10", component.clone()).await;
    assert_eq!(over["status"], "failed", "{over:#}");
    assert!(
        over["error"]
            .as_str()
            .is_some_and(|e| e.contains("limit of 10 events")),
        "{over:#}"
    );
    assert!(over["shadow"].is_null());

    let reply = start(&server, "?name=read-model&keep=true", component.clone()).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let id = reply.json()["id"].as_i64().expect("id");
    // A second run of the same projection is refused while this one runs.
    start(&server, "?name=read-model", component.clone())
        .await
        .assert_problem(409, "conflict");
    wait_for("the run to replay", async || {
        let run = admin_get(&server, &format!("/admin/dry-runs/{id}")).await;
        run["status"] == "replaying" && run["progress"]["eventsRead"].as_i64().unwrap_or(0) > 0
    })
    .await;
    let asked = admin(
        reqwest::Method::DELETE,
        &server,
        &format!("/admin/dry-runs/{id}"),
    )
    .await;
    assert_eq!(asked.status, 200, "{}", asked.text());
    assert_eq!(asked.json()["cancelRequested"], true);
    let run = ended(&server, id).await;
    assert_eq!(run["status"], "cancelled", "{run:#}");
    // Cancelled: the shadow is dropped even though it was to be kept.
    assert!(run["shadow"].is_null(), "{run:#}");
    assert!(!schema_exists(&pool, &format!("dry_read_model_{id}")).await);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'dry\\_%'"
        )
        .await,
        0
    );
    assert_eq!(live_state(&pool).await, before);
    let listed = admin_get(&server, "/admin/dry-runs").await;
    assert_eq!(
        listed["dryRuns"].as_array().map(Vec::len),
        Some(2),
        "{listed:#}"
    );
}
