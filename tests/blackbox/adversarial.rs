//! The sandbox's promises under adversarial components, through the real `wallex` binary, one
//! test per class of attack, each with its own fixture (`projections/fixtures/hostile-*`):
//! bounded guest time per failing batch, fair sharing of the guest threads under `skip`, batches
//! over the byte limit, oversized text under a memory limit, values only PostgreSQL refuses, and
//! relation names that would collide. See host/docs/security.md.

use std::time::{Duration, Instant};

use crate::support::{
    admin_get, admin_post, admin_put, client, fresh_id, get, post_wallet, read, seen,
    spawn_creator, wait_caught_up, wait_for, wallet_body, wasm, ComponentDir, Server, TestDb,
    ADMIN_TOKEN,
};

/// Call limit the hostile components get in these tests.
const CALL_LIMIT_MS: u64 = 200;

/// A counter or gauge of `/metrics` for one projection (0 when absent).
async fn metric(server: &Server, name: &str, projection: &str) -> f64 {
    series(server, &format!("{name}{{projection=\"{projection}\"}} ")).await
}

/// The value of the series whose line starts with `prefix` (0 when absent).
async fn series(server: &Server, prefix: &str) -> f64 {
    let text = get(&client(), server, "/metrics").await.text();
    text.lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Guest seconds burned by a projection's failing calls, from `/metrics` (0 when absent): the
/// sum of `projector_guest_call_duration_seconds{outcome="failed"}`.
async fn failed_guest_seconds(server: &Server, projection: &str) -> f64 {
    series(
        server,
        &format!(
            "projector_guest_call_duration_seconds_sum{{projection=\"{projection}\",outcome=\"failed\"}} "
        ),
    )
    .await
}

async fn dead_letters(server: &Server, projection: &str) -> Vec<serde_json::Value> {
    admin_get(
        server,
        &format!("/admin/projections/{projection}/dead-letters"),
    )
    .await["deadLetters"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A server with the admin API, these components in its watched directory and these
/// `PROJECTOR_OVERRIDES`.
fn serve(db: &TestDb, files: &[&str], overrides: &str) -> (Server, ComponentDir) {
    let dir = ComponentDir::new(files);
    let dir_path = dir.path();
    let server = Server::spawn(
        &db.url,
        &[
            ("WALLEX_ADMIN_TOKEN", ADMIN_TOKEN),
            ("WALLEX_PROJECTIONS_DIR", &dir_path),
            ("PROJECTOR_OVERRIDES", overrides),
        ],
    );
    (server, dir)
}

async fn create(server: &Server, wallet: &str) -> i64 {
    let reply = post_wallet(&client(), server, &wallet_body(wallet), &[]).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply
        .header("x-global-position")
        .and_then(|p| p.parse().ok())
        .expect("position")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_failing_every_event_costs_bounded_guest_time_and_shows_at_once() {
    let db = TestDb::migrated().await;
    let server = Server::spawn(
        &db.url,
        &[
            ("WALLEX_ADMIN_TOKEN", ADMIN_TOKEN),
            ("PROJECTOR_ERROR_BACKOFF_MS", "100"),
            ("PROJECTOR_MAX_RETRIES", "1"),
            (
                "PROJECTOR_OVERRIDES",
                "hostile-spin-all.call_timeout_ms=200",
            ),
        ],
    );
    // A backlog of 300 events: a bisection of the batch would make about 2 × 200 calls, each
    // running to its limit.
    let mut first = None;
    for i in 0..300 {
        let position = create(&server, &format!("w-{i}")).await;
        first.get_or_insert(position);
    }
    let deployed = Instant::now();
    let reply = admin_put(
        &server,
        "/admin/projections/hostile-spin-all",
        wasm("wallex_projection_hostile_spin_all.wasm"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["outcome"], "created");
    let path = "/admin/projections/hostile-spin-all";
    wait_for("the failure to show", async || {
        admin_get(&server, path).await["status"] != "running"
    })
    .await;
    let shown = deployed.elapsed();
    let status = admin_get(&server, path).await;
    assert!(
        status["lastError"]
            .as_str()
            .unwrap_or_default()
            .contains("exceeded its call timeout of 200 ms"),
        "{status}"
    );
    wait_for("the projection to give up", async || {
        admin_get(&server, path).await["status"] == "failed"
    })
    .await;
    let status = admin_get(&server, path).await;
    let error = status["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("event at position {} ", first.expect("events"))),
        "the first event is named: {error}"
    );
    // Two attempts (max_retries = 1), each at most the whole call plus the search's budget.
    let burned = failed_guest_seconds(&server, "hostile-spin-all").await;
    let bound = 2.0 * (1.0 + 3.0) * (CALL_LIMIT_MS as f64 / 1000.0) * 1.25;
    assert!(
        burned > 0.0 && burned <= bound,
        "burned {burned} s > {bound} s"
    );
    // Shown from the first failed call: one call limit plus the worker's start, not the search.
    assert!(
        shown < Duration::from_secs(30),
        "the failure took {shown:?} to show"
    );
    assert_eq!(get(&client(), &server, "/healthz").await.status, 200);
    drop(server);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_mode_spinners_are_penalised_and_quarantined_while_the_read_model_keeps_up() {
    let db = TestDb::migrated().await;
    let (server, dir) = serve(
        &db,
        &[
            "wallex_projection_read_model.wasm",
            "wallex_projection_hostile_spin_some.wasm",
        ],
        "hostile-spin-some.on_poison=skip,hostile-spin-some.call_timeout_ms=200",
    );
    let started = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    // Writers: every 100th event makes the hostile component spin to its limit.
    let writers: Vec<_> = (0..4)
        .map(|_| spawn_creator(&server.base, stop.clone()))
        .collect();
    // Read-after-write on the read model keeps working the whole time.
    let mut probes = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let id = fresh_id("probe");
        let position = create(&server, &id).await;
        let reply = read(
            client()
                .get(server.url(&format!(
                    "/projections/read-model/wallets/{id}?minPosition={position}&timeoutMs=5000"
                )))
                .send()
                .await
                .expect("read"),
        )
        .await;
        assert_eq!(reply.status, 200, "read-after-write: {}", reply.text());
        probes += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    for writer in writers {
        writer.await.expect("writer");
    }
    assert!(probes > 10, "{probes} probes");
    wait_for("a dead letter", async || {
        !dead_letters(&server, "hostile-spin-some").await.is_empty()
    })
    .await;
    let letters = dead_letters(&server, "hostile-spin-some").await;
    assert!(
        letters
            .iter()
            .all(|l| l["globalPosition"].as_i64().is_some_and(|p| p % 100 == 0)),
        "only the spinning events are dead-lettered: {letters:?}"
    );
    // Every call that burned its limit is followed by nine times that long without a call: at
    // any time, at most a tenth of the time so far plus one evaluation's budget (the whole batch
    // and the search: 4 call limits).
    let elapsed = started.elapsed().as_secs_f64();
    let burned = failed_guest_seconds(&server, "hostile-spin-some").await;
    // One evaluation is 4 call limits of guest time; a loaded machine overshoots a limit a little.
    let share = elapsed / 10.0 + 1.5 * 4.0 * CALL_LIMIT_MS as f64 / 1000.0;
    assert!(burned <= share, "burned {burned} s in {elapsed} s");
    assert_eq!(
        metric(&server, "projector_quarantined", "hostile-spin-some").await,
        1.0,
        "a component failing at its limit runs on the quarantine thread"
    );
    assert_eq!(
        metric(&server, "projector_quarantined", "read-model").await,
        0.0
    );
    wait_caught_up(&server, "read-model").await;
    let status = admin_get(&server, "/admin/projections/hostile-spin-some").await;
    assert_ne!(status["status"], "failed", "{status}");
    drop(server);
    drop(dir);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_byte_limit_is_applied_in_parts_and_only_an_oversized_event_dead_lettered()
{
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let (server, dir) = serve(
        &db,
        &["wallex_projection_hostile_bytes.wasm"],
        "hostile-bytes.on_poison=skip,hostile-bytes.max_batch_bytes=16384",
    );
    let path = "/admin/projections/hostile-bytes";
    assert_eq!(
        admin_post(&server, &format!("{path}/pause")).await.status,
        200
    );
    // 40 events of about 4 KiB of output each: one batch is ten times over the limit.
    let mut poison_position = 0;
    for i in 0..40 {
        create(&server, &format!("w-{i:02}")).await;
        if i == 25 {
            poison_position = create(&server, "poison-big").await;
        }
    }
    assert_eq!(
        admin_post(&server, &format!("{path}/resume")).await.status,
        200
    );
    wait_caught_up(&server, "hostile-bytes").await;
    let rows = seen(&pool, "hostile-bytes").await;
    assert_eq!(rows.len(), 40 * 4, "every ordinary event applied");
    assert!(rows.iter().all(|r| r.starts_with("w-")));
    let letters = dead_letters(&server, "hostile-bytes").await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["globalPosition"], poison_position);
    assert!(
        letters[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("more than 16384 bytes"),
        "{letters:?}"
    );
    let status = admin_get(&server, path).await;
    assert_eq!(status["status"], "running", "{status}");
    drop(server);
    drop(dir);
    pool.close().await;
    drop(db);
}

/// Longest line of a server's output.
fn longest_line(server: &Server) -> usize {
    server.logs().lines().map(str::len).max().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_component_text_stays_bounded_and_the_server_survives_a_data_limit() {
    // The normal peak: a server with the read model under a little load.
    let normal_db = TestDb::migrated().await;
    let (normal, normal_dir) = serve(&normal_db, &["wallex_projection_read_model.wasm"], "");
    let mut peak = normal.vm_bytes("VmData").expect("VmData");
    for i in 0..50 {
        create(&normal, &format!("n-{i}")).await;
        peak = peak.max(normal.vm_bytes("VmData").unwrap_or(0));
    }
    wait_caught_up(&normal, "read-model").await;
    peak = peak.max(normal.vm_bytes("VmData").unwrap_or(0));
    drop(normal);
    drop(normal_dir);
    drop(normal_db);

    let db = TestDb::migrated().await;
    let dir = ComponentDir::new(&[
        "wallex_projection_read_model.wasm",
        "wallex_projection_hostile_long_text.wasm",
    ]);
    let dir_path = dir.path();
    let mut server = Server::spawn_with_data_limit(
        &db.url,
        &[
            ("WALLEX_ADMIN_TOKEN", ADMIN_TOKEN),
            ("WALLEX_PROJECTIONS_DIR", &dir_path),
            ("PROJECTOR_OVERRIDES", "hostile-long-text.on_poison=skip"),
        ],
        2 * peak,
    );
    // A 16 MiB name in describe(): the refusal is short.
    let refused = admin_put(
        &server,
        "/admin/projections/hostile-describe-huge",
        wasm("wallex_projection_hostile_describe_huge.wasm"),
    )
    .await;
    refused.assert_problem(400, "invalid-component");
    assert!(
        refused.body.len() <= 8 << 10,
        "{} bytes",
        refused.body.len()
    );
    for wallet in [
        "before",
        "poison-table",
        "poison-column",
        "poison-message",
        "poison-log",
        "after",
    ] {
        create(&server, wallet).await;
    }
    wait_caught_up(&server, "hostile-long-text").await;
    let letters = dead_letters(&server, "hostile-long-text").await;
    assert_eq!(letters.len(), 3, "{letters:?}");
    for letter in &letters {
        let error = letter["error"].as_str().unwrap_or_default();
        assert!(error.len() <= 4096 + 64, "{} bytes", error.len());
        assert!(
            !error.contains('\n') && !error.contains('\u{1b}'),
            "{error}"
        );
    }
    let listing = get(&client(), &server, "/projections").await;
    assert_eq!(listing.status, 200);
    assert!(
        listing.body.len() <= 64 << 10,
        "{} bytes",
        listing.body.len()
    );
    let audit = admin_get(&server, "/admin/actions?limit=10").await;
    assert!(audit.to_string().len() <= 64 << 10);
    assert!(
        longest_line(&server) <= 16 << 10,
        "a log line of {} bytes",
        longest_line(&server)
    );
    let mut rows = seen(&db.pool().await, "hostile-long-text").await;
    rows.sort();
    assert_eq!(rows, ["after", "before", "poison-log"]);
    assert!(server.is_running(), "the server died under its data limit");
    assert_eq!(get(&client(), &server, "/healthz").await.status, 200);
    drop(server);
    drop(dir);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_postgresql_refuses_are_refused_first_or_attributed_to_their_events() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let (server, dir) = serve(
        &db,
        &[
            "wallex_projection_read_model.wasm",
            "wallex_projection_hostile_pg_reject.wasm",
        ],
        "hostile-pg-reject.on_poison=skip",
    );
    let path = "/admin/projections/hostile-pg-reject";
    assert_eq!(
        admin_post(&server, &format!("{path}/pause")).await.status,
        200
    );
    let mut expected_letters = Vec::new();
    for (wallet, dead) in [
        ("w-1", false),
        ("poison-nul-json", true),
        ("poison-big-number", true),
        ("poison-ancient", true),
        ("poison-overflow-a", false),
        ("w-2", false),
        ("poison-overflow-b", true),
        ("poison-dup-a", false),
        ("poison-dup-b", true),
        ("poison-big-key", true),
        ("w-3", false),
    ] {
        let position = create(&server, wallet).await;
        if dead {
            expected_letters.push(position);
        }
    }
    assert_eq!(
        admin_post(&server, &format!("{path}/resume")).await.status,
        200
    );
    wait_caught_up(&server, "hostile-pg-reject").await;
    let letters = dead_letters(&server, "hostile-pg-reject").await;
    let mut positions: Vec<i64> = letters
        .iter()
        .filter_map(|l| l["globalPosition"].as_i64())
        .collect();
    positions.sort_unstable();
    assert_eq!(positions, expected_letters, "{letters:?}");
    let error_of = |needle: &str| {
        letters
            .iter()
            .filter_map(|l| l["error"].as_str())
            .any(|e| e.contains(needle))
    };
    assert!(error_of("\\u0000"), "{letters:?}");
    assert!(error_of("numeric range"), "{letters:?}");
    assert!(error_of("PostgreSQL rejected the mutations"), "{letters:?}");
    let mut rows = seen(&pool, "hostile-pg-reject").await;
    rows.sort();
    assert_eq!(rows, ["w-1", "w-2", "w-3"]);
    let total: i64 = sqlx::query_scalar("SELECT amount FROM projection_hostile_pg_reject.totals")
        .fetch_one(&pool)
        .await
        .expect("total");
    assert_eq!(
        total,
        i64::MAX - 1,
        "the first accumulate applied, the second not"
    );
    let status = admin_get(&server, path).await;
    assert_eq!(status["status"], "running", "{status}");
    // The same class on the public API: a NUL in a key is a 400, not a 500.
    get(&client(), &server, "/projections/read-model/wallets/%00")
        .await
        .assert_problem(400, "invalid-request");
    drop(server);
    drop(dir);
    pool.close().await;
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relation_names_that_would_collide_are_refused_with_the_reason() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let server = Server::spawn(&db.url, &[("WALLEX_ADMIN_TOKEN", ADMIN_TOKEN)]);
    for (name, clash) in [
        (
            "hostile-collision",
            "relation name \"t_pkey\" is used twice",
        ),
        (
            "hostile-collision-index",
            "relation name \"b\" is used twice",
        ),
    ] {
        let reply = admin_put(
            &server,
            &format!("/admin/projections/{name}"),
            wasm(&format!(
                "wallex_projection_{}.wasm",
                name.replace('-', "_")
            )),
        )
        .await;
        let problem = reply.assert_problem(400, "invalid-component");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(clash),
            "{problem}"
        );
        let schemas: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'proj_hostile_collision%'",
        )
        .fetch_one(&pool)
        .await
        .expect("schemas");
        assert_eq!(schemas, 0, "nothing was created for {name}");
    }
    drop(server);
    pool.close().await;
    drop(db);
}
