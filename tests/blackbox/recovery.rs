//! The recovery service, black box: stall detection (a worker frozen by a failpoint is found,
//! restarted and resumes, the other projections untouched), the read-model check (a
//! hand-edited, a deleted and an extra row reported exactly, over several chunks), drift checks
//! of any projection (hand-made drift and a component bug fixed in place are found exactly and
//! repaired; no false drift while writes run at full speed) and one-stream repairs (one wallet
//! re-derived, every other row untouched), through the admin API and the CLI.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

const ENV_BASE: [(&str, &str); 2] = [("WALLEX_ADMIN_TOKEN", ADMIN_TOKEN), ("RUST_LOG", "info")];

fn cli(server: &Server, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wallex"))
        .arg("recovery")
        .args(args)
        .env("WALLEX_URL", server.url(""))
        .env("WALLEX_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the CLI")
}

#[tokio::test]
async fn a_frozen_projection_is_detected_as_stalled_restarted_and_resumes() {
    let db = TestDb::migrated().await;
    let mut env = ENV_BASE.to_vec();
    env.extend([
        ("RECOVERY_INTERVAL_SECS", "1"),
        ("RECOVERY_STALL_SECS", "2"),
        // The ledger's first batch with events hangs (once), holding its transaction open.
        (
            "WALLEX_FAILPOINTS",
            "projector-batch@ledger=sleep-once(600000)",
        ),
    ]);
    let server = Server::spawn(&db.url, &env);
    let client = client();
    let pool = db.pool().await;

    let wallet = fresh_id("stall");
    let reply = post_wallet(&client, &server, &wallet_body(&wallet), &[]).await;
    assert_eq!(reply.status, 201, "{}", reply.text());

    // While it is frozen, the outbox's oldest unprocessed event ages.
    wait_for("the oldest unprocessed event to age", async || {
        let recovery = admin_get(&server, "/admin/recovery").await;
        recovery["oldestUnprocessedAgeSeconds"]
            .as_f64()
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;

    // Found stalled: events wait, the checkpoint does not move, nothing failed.
    let stalled = wait_status(
        &server,
        "ledger",
        PATIENCE,
        "ledger never reported stalled",
        |s| s["status"] == "stalled",
    )
    .await;
    // Stuck before the wallet's event (the first of a fresh database). By the time the status
    // is read the restarted worker may already have moved on; the stall is cleared next round.
    assert_eq!(stalled["stall"]["stuckPosition"], 0, "{stalled:#}");
    assert!(
        stalled["stall"]["restarts"].as_i64().unwrap_or(0) >= 1,
        "{stalled:#}"
    );
    assert!(
        stalled["lastError"].is_null(),
        "a stall is no failure: {stalled:#}"
    );
    // The other projections were never held up by it.
    let read_model = wait_caught_up(&server, "read-model").await;
    assert_eq!(read_model["status"], "running");

    // Restarted from its checkpoint: the event is applied exactly once and the stall clears.
    let resumed = wait_status(&server, "ledger", PATIENCE, "ledger never resumed", |s| {
        s["status"] == "running" && s["lagEvents"] == 0 && s["stall"].is_null()
    })
    .await;
    assert_eq!(resumed["checkpoint"]["eventsApplied"], 1, "{resumed:#}");
    let (balance,): (String,) =
        sqlx::query_as("SELECT balance::text FROM projection_ledger.balances WHERE account = $1")
            .bind(format!("wallet:{wallet}"))
            .fetch_one(&pool)
            .await
            .expect("the wallet's ledger balance");
    assert_eq!(balance, "100.00", "the frozen batch must count once");
    let recovery = admin_get(&server, "/admin/recovery").await;
    assert_eq!(recovery["stalls"], serde_json::json!([]), "{recovery:#}");
    assert_eq!(recovery["oldestUnprocessedAgeSeconds"], 0.0, "{recovery:#}");

    // Reported everywhere an operator looks.
    let actions = admin_get(&server, "/admin/actions?projection=ledger").await;
    let done: Vec<&str> = actions["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| a["actor"] == "recovery")
        .filter_map(|a| a["action"].as_str())
        .collect();
    assert!(done.contains(&"stall-restart"), "{actions:#}");
    assert!(done.contains(&"stall-cleared"), "{actions:#}");
    let metrics = get(&client, &server, "/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("projector_stall_restarts_total{projection=\"ledger\"}")),
        "{metrics}"
    );
    let logs = server.logs();
    assert!(logs.contains("projection stalled"), "{logs}");
}

/// Runs the check through the admin API; returns the stored run.
async fn check(server: &Server) -> serde_json::Value {
    let reply = admin_post(server, "/admin/recovery/read-model-check").await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json()
}

#[tokio::test]
async fn the_read_model_check_reports_edited_deleted_and_extra_rows_exactly() {
    let db = TestDb::migrated().await;
    let mut env = ENV_BASE.to_vec();
    // Every wallet of the test is comparable at once, and several chunks are needed.
    env.extend([
        ("RECOVERY_CHECK_MARGIN_SECS", "0"),
        ("RECOVERY_CHECK_CHUNK", "2"),
    ]);
    let server = Server::spawn(&db.url, &env);
    let client = client();
    let pool = db.pool().await;
    let ids = ["w-1", "w-2", "w-3", "w-4", "w-5"];
    for id in ids {
        let reply = post_wallet(&client, &server, &wallet_body(id), &[]).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    let status = wait_caught_up(&server, "read-model").await;
    tokio::time::sleep(Duration::from_millis(20)).await;

    let clean = check(&server).await;
    assert_eq!(clean["outcome"], "clean", "{clean:#}");
    assert_eq!(clean["checked"], 5, "{clean:#}");
    assert_eq!(
        (&clean["missing"], &clean["extra"], &clean["different"]),
        (&0.into(), &0.into(), &0.into())
    );

    // Drift by hand: one row edited, one deleted, one that no wallet explains (after the last
    // wallet id, so that only the open-ended last chunk can see it).
    let tables = status["namespace"].as_str().expect("namespace").to_owned();
    for sql in [
        format!("UPDATE {tables}.wallets SET balance = 999, currency = 'EUR' WHERE id = 'w-2'"),
        format!("DELETE FROM {tables}.wallets WHERE id = 'w-4'"),
        format!(
            "INSERT INTO {tables}.wallets (id, owner, balance, currency, version, created_at, updated_at)
             VALUES ('z-extra', 'nobody', 1, 'USD', 1, now(), now())"
        ),
    ] {
        sqlx::query(&sql).execute(&pool).await.expect(&sql);
    }

    let drift = check(&server).await;
    assert_eq!(drift["outcome"], "drift", "{drift:#}");
    assert_eq!(drift["checked"], 5, "{drift:#}");
    assert_eq!(drift["missing"], 1, "{drift:#}");
    assert_eq!(drift["extra"], 1, "{drift:#}");
    assert_eq!(drift["different"], 1, "{drift:#}");
    let sample = drift["sample"].as_array().expect("sample");
    let found: Vec<(&str, &str)> = sample
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or(""),
                r["drift"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("w-2", "different"),
            ("w-4", "missing"),
            ("z-extra", "extra")
        ]
    );
    // Only the columns that differ, with both values.
    let edited = &sample[0]["columns"];
    assert_eq!(
        edited,
        &serde_json::json!([
            {"column": "balance", "write": "100.00", "read": "999"},
            {"column": "currency", "write": "USD", "read": "EUR"},
        ]),
        "{drift:#}"
    );
    assert_eq!(sample[1]["columns"][0]["read"], serde_json::Value::Null);
    assert_eq!(sample[2]["columns"][0]["write"], serde_json::Value::Null);

    // Stored: the history, one run by number, the audit trail.
    let id = drift["id"].as_i64().expect("run id");
    let stored = admin_get(&server, &format!("/admin/recovery/runs/{id}")).await;
    assert_eq!(stored["sample"], drift["sample"]);
    let recovery = admin_get(&server, "/admin/recovery").await;
    let outcomes: Vec<&str> = recovery["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["drift", "clean"]);
    let actions = admin_get(&server, "/admin/actions?projection=read-model").await;
    assert!(
        actions["actions"]
            .as_array()
            .expect("actions")
            .iter()
            .any(|a| a["action"] == "read-model-check" && a["outcome"] == "drift"),
        "{actions:#}"
    );
    // Nothing of the write model changed.
    assert_eq!(count(&pool, "SELECT count(*) FROM wallets").await, 5);

    // The CLI: a readable report, the same JSON, one-line errors.
    let output = cli(&server, &["run", &id.to_string()]);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("missing 1, extra 1, different 1"), "{text}");
    assert!(text.contains("balance: write 100.00 / read 999"), "{text}");
    let output = cli(&server, &["status", "--json"]);
    assert!(output.status.success(), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(json["runs"][0]["id"], id);
    let output = cli(&server, &["check-read-model"]);
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(": drift in"),
        "{output:?}"
    );
    assert_one_line_error(&cli(&server, &["run", "999999"]), "error: Not found (404)");
    let reply = admin(reqwest::Method::GET, &server, "/admin/recovery/runs/x").await;
    reply.assert_problem(400, "invalid-run-id");
    let unauthorised = read(
        client
            .post(server.url("/admin/recovery/read-model-check"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(unauthorised.status, 401);
}

/// Starts a drift check of `name` through the admin API (`query`: e.g. `?keep=true`) and waits
/// for its report.
async fn drift(server: &Server, name: &str, query: &str) -> serde_json::Value {
    let reply = admin_post(server, &format!("/admin/recovery/drift/{name}{query}")).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let started = reply.json();
    assert_eq!(started["outcome"], "running", "{started:#}");
    let id = started["id"].as_i64().expect("run id");
    assert_eq!(
        reply.header("location"),
        Some(format!("/admin/recovery/runs/{id}").as_str())
    );
    let mut run = serde_json::Value::Null;
    wait_for("the drift check to end", async || {
        run = admin_get(server, &format!("/admin/recovery/runs/{id}")).await;
        run["outcome"] != "running"
    })
    .await;
    run
}

/// `(table, id, drift)` of each sampled row.
fn sampled(run: &serde_json::Value) -> Vec<(String, String, String)> {
    run["sample"]
        .as_array()
        .expect("sample")
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (text("table"), text("id"), text("drift"))
        })
        .collect()
}

/// Every row of the read model, as text, in id order.
async fn read_model_rows(pool: &sqlx::PgPool) -> Vec<(String, String, String, String)> {
    sqlx::query_as(
        "SELECT id, owner, balance::text, currency FROM projection_read_model.wallets ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("read-model rows")
}

#[tokio::test]
async fn a_drift_check_reports_edited_deleted_and_extra_rows_exactly_and_a_repair_fixes_them() {
    let db = TestDb::migrated().await;
    let server = Server::spawn(&db.url, &ENV_BASE);
    let client = client();
    let pool = db.pool().await;
    for id in ["w-1", "w-2", "w-3", "w-4", "w-5"] {
        let reply = post_wallet(&client, &server, &wallet_body(id), &[]).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    wait_caught_up(&server, "read-model").await;
    let before = read_model_rows(&pool).await;

    // Nothing drifted: clean, and the shadow is dropped (kept only when rows differ).
    let clean = drift(&server, "read-model", "").await;
    assert_eq!(clean["outcome"], "clean", "{clean:#}");
    assert_eq!(clean["checked"], 5, "{clean:#}");
    assert_eq!(
        clean["tables"],
        serde_json::json!([{"table": "wallets", "compared": 5, "missing": 0, "extra": 0, "different": 0}])
    );
    assert!(clean["shadow"].is_null(), "{clean:#}");
    let status = wait_caught_up(&server, "read-model").await;
    let live = status["namespace"].as_str().expect("namespace").to_owned();
    let shadows: i64 = count(
        &pool,
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'proj_read_model_v1_b%'",
    )
    .await;
    assert_eq!(shadows, 0, "a clean check's shadow must be dropped");

    // Drift by hand in the live tables.
    for sql in [
        format!("UPDATE {live}.wallets SET balance = 999, currency = 'EUR' WHERE id = 'w-2'"),
        format!("DELETE FROM {live}.wallets WHERE id = 'w-4'"),
        format!(
            "INSERT INTO {live}.wallets (id, owner, balance, currency, version, created_at, updated_at)
             VALUES ('z-extra', 'nobody', 1, 'USD', 1, now(), now())"
        ),
    ] {
        sqlx::query(&sql).execute(&pool).await.expect(&sql);
    }
    let found = drift(&server, "read-model", "").await;
    assert_eq!(found["outcome"], "drift", "{found:#}");
    assert_eq!(
        (&found["missing"], &found["extra"], &found["different"]),
        (&1.into(), &1.into(), &1.into()),
        "{found:#}"
    );
    let row = |id: &str, drift: &str| ("wallets".to_owned(), format!("id={id}"), drift.to_owned());
    assert_eq!(
        sampled(&found),
        [
            row("w-2", "different"),
            row("w-4", "missing"),
            row("z-extra", "extra")
        ]
    );
    // Only the columns that differ: what the log says, and what the live table holds.
    assert_eq!(
        found["sample"][0]["columns"],
        serde_json::json!([
            {"column": "balance", "write": "100.00", "read": "999"},
            {"column": "currency", "write": "USD", "read": "EUR"},
        ])
    );
    let shadow = found["shadow"]
        .as_str()
        .expect("the shadow is kept when rows differ")
        .to_owned();

    // The CLI shows the same report.
    let id = found["id"].to_string();
    let shown = cli(&server, &["run", &id]);
    assert!(shown.status.success(), "{shown:?}");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("table wallets: compared 6; missing 1, extra 1, different 1"),
        "{text}"
    );
    assert!(text.contains("balance: log 100.00 / live 999"), "{text}");
    assert!(text.contains(&shadow), "{text}");

    // Repair: the kept shadow catches up and is cut over.
    let reply = admin_post(&server, "/admin/recovery/repair/read-model").await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let repair = reply.json();
    assert_eq!(repair["mode"], "shadow", "{repair:#}");
    assert_eq!(repair["run"], found["id"], "{repair:#}");
    let repaired = wait_caught_up(&server, "read-model").await;
    assert_eq!(repaired["namespace"], shadow.as_str(), "{repaired:#}");
    assert_eq!(read_model_rows(&pool).await, before);
    let after = drift(&server, "read-model", "").await;
    assert_eq!(after["outcome"], "clean", "{after:#}");

    // Audited and counted.
    let actions = admin_get(&server, "/admin/actions?projection=read-model").await;
    let done: Vec<(&str, &str)> = actions["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter_map(|a| Some((a["action"].as_str()?, a["outcome"].as_str()?)))
        .collect();
    for expected in [
        ("drift-check", "started"),
        ("drift-check", "clean"),
        ("drift-check", "drift"),
        ("repair", "ok"),
        ("cut-over", "ok"),
    ] {
        assert!(done.contains(&expected), "{expected:?} in {done:?}");
    }
    let metrics = get(&client, &server, "/metrics").await.text();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("recovery_runs_total{kind=\"drift-check\",outcome=\"drift\"} 1")),
        "{metrics}"
    );

    // Errors: unknown projection, bad query, a check already running.
    admin_post(&server, "/admin/recovery/drift/nope")
        .await
        .assert_problem(404, "not-found");
    admin_post(&server, "/admin/recovery/drift/read-model?keep=maybe")
        .await
        .assert_problem(400, "invalid-query");
    let first = admin_post(&server, "/admin/recovery/drift/read-model?keep=true").await;
    assert_eq!(first.status, 202, "{}", first.text());
    let second = admin_post(&server, "/admin/recovery/drift/read-model").await;
    if second.status != 202 {
        second.assert_problem(409, "conflict");
    }
}

#[tokio::test]
async fn repairing_one_wallet_leaves_every_other_row_untouched() {
    let db = TestDb::migrated().await;
    let server = Server::spawn(&db.url, &ENV_BASE);
    let client = client();
    let pool = db.pool().await;
    for id in ["a", "b", "c", "d"] {
        let reply = post_wallet(&client, &server, &wallet_body(id), &[]).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    wait_caught_up(&server, "read-model").await;
    let live = admin_status(&server, "read-model").await["namespace"]
        .as_str()
        .expect("namespace")
        .to_owned();
    for sql in [
        format!("UPDATE {live}.wallets SET balance = 1 WHERE id = 'a'"),
        format!("UPDATE {live}.wallets SET balance = 2 WHERE id = 'b'"),
        format!("DELETE FROM {live}.wallets WHERE id = 'c'"),
    ] {
        sqlx::query(&sql).execute(&pool).await.expect(&sql);
    }
    let before = read_model_rows(&pool).await;

    // Wallet a, through the CLI: its row re-derived, nothing else touched (b stays wrong).
    let out = cli(
        &server,
        &["repair", "read-model", "--stream", "wallet-a", "--json"],
    );
    assert!(out.status.success(), "{out:?}");
    let repair: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(repair["mode"], "stream", "{repair:#}");
    assert_eq!(repair["stream"]["streamId"], "wallet-a", "{repair:#}");
    assert_eq!(repair["stream"]["events"], 1, "{repair:#}");
    assert_eq!(repair["stream"]["rowsDeleted"], 1, "{repair:#}");
    assert_eq!(repair["stream"]["rowsWritten"], 1, "{repair:#}");
    let after = read_model_rows(&pool).await;
    let fixed = |rows: &[(String, String, String, String)], id: &str| {
        rows.iter().find(|r| r.0 == id).cloned()
    };
    assert_eq!(fixed(&after, "a").map(|r| r.2), Some("100.00".to_owned()));
    let others = |rows: &[(String, String, String, String)]| {
        rows.iter()
            .filter(|r| r.0 != "a")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        others(&after),
        others(&before),
        "rows of other streams changed"
    );

    // A deleted row comes back; a stream with no event has no row.
    let reply = admin_post(&server, "/admin/recovery/repair/read-model?stream=wallet-c").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        fixed(&read_model_rows(&pool).await, "c").map(|r| r.2),
        Some("100.00".to_owned())
    );
    let none = admin_post(
        &server,
        "/admin/recovery/repair/read-model?stream=wallet-nobody",
    )
    .await;
    assert_eq!(none.status, 200, "{}", none.text());
    assert_eq!(none.json()["stream"]["rowsWritten"], 0);
    let rows = read_model_rows(&pool).await;
    assert_eq!(
        fixed(&rows, "b").map(|r| r.2),
        Some("2".to_owned()),
        "b was not asked for"
    );
    assert_eq!(rows.len(), 4);

    // A 0.1.0 component cannot say which rows a stream owns: 409 with the reason, in the CLI too.
    let refused = admin_post(&server, "/admin/recovery/repair/ledger?stream=wallet-a").await;
    let problem = refused.assert_problem(409, "conflict");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("wallex:projection@0.1.0"),
        "{problem:#}"
    );
    let out = cli(&server, &["repair", "ledger", "--stream", "wallet-a"]);
    assert_one_line_error(&out, "error: Conflicting operation (409)");
    let audit = admin_get(&server, "/admin/actions?projection=read-model").await;
    assert!(
        audit["actions"]
            .as_array()
            .expect("actions")
            .iter()
            .any(|a| a["action"] == "repair-stream" && a["detail"]["stream"] == "wallet-a"),
        "{audit:#}"
    );
}

#[tokio::test]
async fn a_component_bug_fixed_in_place_leaves_drift_that_the_check_finds_and_a_repair_clears() {
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
    // The fix, deployed in place: same schema version, same tables, no rebuild.
    let reply = upload(
        &server,
        "drift-probe",
        wasm("wallex_fixture_drift_fixed.wasm"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    for id in ["ok-1", "ok-2"] {
        let reply = post_wallet(&client, &server, &wallet_body(id), &[]).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    wait_caught_up(&server, "drift-probe").await;

    let found = drift(&server, "drift-probe", "").await;
    assert_eq!(found["outcome"], "drift", "{found:#}");
    assert_eq!(found["checked"], 5, "{found:#}");
    assert_eq!(
        (&found["missing"], &found["extra"], &found["different"]),
        (&0.into(), &0.into(), &3.into()),
        "{found:#}"
    );
    let row = |id: &str| {
        (
            "owners".to_owned(),
            format!("wallet_id={id}"),
            "different".to_owned(),
        )
    };
    assert_eq!(sampled(&found), [row("bug-1"), row("bug-2"), row("bug-3")]);
    assert_eq!(
        found["sample"][0]["columns"],
        serde_json::json!([{"column": "owner", "write": "user-001", "read": "USER-001"}])
    );

    let reply = admin_post(&server, "/admin/recovery/repair/drift-probe").await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    wait_caught_up(&server, "drift-probe").await;
    let owners: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT owner FROM projection_drift_probe.owners")
            .fetch_all(&pool)
            .await
            .expect("owners");
    assert_eq!(owners, ["user-001"]);
    assert_eq!(drift(&server, "drift-probe", "").await["outcome"], "clean");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_check_under_full_speed_writes_reports_no_false_drift() {
    let db = TestDb::migrated().await;
    let mut env = ENV_BASE.to_vec();
    // Each comparison starts 1 s after its cut: the live tables move on meanwhile, and only the
    // cut's snapshot keeps them out of the comparison.
    env.push(("WALLEX_FAILPOINTS", "drift-compare=sleep(1000)"));
    let server = Server::spawn(&db.url, &env);
    let stop = tokio_util::sync::CancellationToken::new();
    let creators: Vec<_> = (0..4)
        .map(|_| spawn_creator(&server.url(""), stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Writes run the whole time: each check's cut lands mid-stream, and the live tables keep
    // moving while it compares.
    for name in ["read-model", "ledger", "audit"] {
        let run = drift(&server, name, "").await;
        assert_eq!(run["outcome"], "clean", "{name}: {run:#}");
        assert!(run["checked"].as_i64().unwrap_or(0) > 0, "{name}: {run:#}");
    }
    stop.cancel();
    let mut created = 0;
    for creator in creators {
        created += creator.await.expect("creator");
    }
    assert!(created > 0);
    let client = client();
    let metrics = get(&client, &server, "/metrics").await.text();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("recovery_runs_total{kind=\"drift-check\",outcome=\"clean\"} 3")),
        "{metrics}"
    );
}
