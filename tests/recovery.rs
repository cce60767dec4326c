//! The recovery service, black box: stall detection (a worker frozen by a failpoint is found,
//! restarted and resumes, the other projections untouched) and the read-model check (a
//! hand-edited, a deleted and an extra row reported exactly, over several chunks), through the
//! admin API and the CLI.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

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
