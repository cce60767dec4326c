//! `EVENT_STORE=kurrentdb`: events in KurrentDB, snapshots, outbox and idempotency records in
//! PostgreSQL. The happy path; a crash between the append and the commit, then a retry that
//! completes it exactly once; the reconciliation of an orphan event nobody retried; `409` for a
//! stream that exists with another event; KurrentDB down (`503`, nothing written); start-up
//! errors; and `GET /wallets/{id}/events` from either store.
//!
//! Against a real KurrentDB when `KURRENTDB_CONNECTION_STRING` is set; otherwise against
//! `wallex-kurrentdb-stub`, an in-process server of KurrentDB's gRPC streams protocol. Each test
//! says which on stderr.

use std::time::Duration;

use crate::support::*;
use wallex_kurrentdb_stub::StubServer;

/// The KurrentDB a test talks to.
enum Target {
    /// The in-process stub.
    Stub(StubServer),
    /// A real server, from `KURRENTDB_CONNECTION_STRING`.
    Real(String),
}

impl Target {
    async fn new() -> Self {
        match std::env::var("KURRENTDB_CONNECTION_STRING") {
            Ok(connection) if !connection.trim().is_empty() => {
                eprintln!("kurrentdb: against the real KurrentDB at {connection}");
                Self::Real(connection)
            }
            _ => {
                eprintln!(
                    "kurrentdb: against the in-process stub (set KURRENTDB_CONNECTION_STRING to \
                     run against a real KurrentDB)"
                );
                Self::Stub(
                    StubServer::start("127.0.0.1:0".parse().expect("address"))
                        .await
                        .expect("stub"),
                )
            }
        }
    }

    fn connection_string(&self) -> String {
        match self {
            Self::Stub(stub) => stub.connection_string(),
            Self::Real(connection) => connection.clone(),
        }
    }
}

/// A server on `db` with KurrentDB as its event store; the reconciliation waits an hour unless
/// `env` says otherwise.
fn kurrent_server(db: &TestDb, target: &Target, env: &[(&str, &str)]) -> Server {
    let connection = target.connection_string();
    let mut all = vec![
        ("EVENT_STORE", "kurrentdb"),
        ("KURRENTDB_CONNECTION_STRING", connection.as_str()),
        ("KURRENTDB_TIMEOUT_MS", "2000"),
        ("KURRENTDB_RECONCILE_GRACE_SECS", "3600"),
    ];
    all.extend_from_slice(env);
    Server::spawn(&db.url, &all)
}

/// POSTs the create of wallet `id` with idempotency key `key`.
async fn post_keyed(client: &reqwest::Client, server: &Server, id: &str, key: &str) -> Reply {
    post_wallet(
        client,
        server,
        &wallet_body(id),
        &[("idempotency-key", key)],
    )
    .await
}

/// The wallet's stream as `GET /wallets/{id}/events` returns it.
async fn stream_events(
    client: &reqwest::Client,
    server: &Server,
    id: &str,
) -> Vec<serde_json::Value> {
    let reply = get(client, server, &format!("/wallets/{id}/events")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let page = reply.json();
    assert_eq!(page["eventStore"], "kurrentdb", "{page}");
    page["events"].as_array().expect("events").clone()
}

/// Creates a wallet on a server whose write path aborts right after the append: the event is in
/// KurrentDB, nothing is in PostgreSQL.
async fn crash_after_append(db: &TestDb, target: &Target, id: &str) {
    let mut crashing = kurrent_server(db, target, &[("WALLEX_FAILPOINTS", "after-append=abort")]);
    let sent = client()
        .post(crashing.url("/wallets"))
        .header("content-type", "application/json")
        .header("idempotency-key", id)
        .body(wallet_body(id))
        .send()
        .await;
    assert!(sent.is_err(), "the server answered instead of aborting");
    let status = crashing
        .wait_exit(Duration::from_secs(10))
        .expect("the failpoint ends the server");
    assert!(!status.success());
    assert_eq!(row_counts(&db.pool().await).await, (0, 0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_appends_to_kurrentdb_then_commits_postgresql() {
    let target = Target::new().await;
    let db = TestDb::new().await;
    let server = kurrent_server(&db, &target, &[]);
    let client = client();
    let id = fresh_id("kdb");

    let created = post_keyed(&client, &server, &id, &id).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let position: i64 = created
        .header("x-global-position")
        .expect("position")
        .parse()
        .expect("number");

    // KurrentDB holds the event, at the position the client was given.
    let events = stream_events(&client, &server, &id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event["eventType"], "WalletCreated");
    assert_eq!(event["streamId"], format!("wallet-{id}"));
    assert_eq!(event["streamVersion"], 1);
    assert_eq!(event["globalPosition"], position);
    assert_eq!(event["metadata"]["kurrentdb"]["commitPosition"], position);
    assert_eq!(event["metadata"]["kurrentdb"]["streamRevision"], 0);
    assert_eq!(event["metadata"]["idempotencyKey"], id.as_str());
    assert!(
        event["metadata"]["requestFingerprint"].is_string(),
        "{event}"
    );
    assert_eq!(event["data"]["walletId"], id.as_str());
    assert_eq!(event["data"]["createdAt"], created.json()["createdAt"]);
    if let Target::Stub(stub) = &target {
        let stored = stub.stream(&format!("wallet-{id}"));
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].event_type, "WalletCreated");
        assert_eq!(stored[0].content_type, "application/json");
        assert_eq!(stored[0].position as i64, position);
        assert_eq!(
            stored[0].id.to_string(),
            event["eventId"].as_str().expect("id")
        );
    }

    // PostgreSQL: the snapshot, the outbox row with KurrentDB's position, the key; no `events`.
    let pool = db.pool().await;
    assert_eq!(row_counts(&pool).await, (1, 0, 1, 1));
    let (outbox_position, event_id, metadata): (i64, uuid::Uuid, serde_json::Value) =
        sqlx::query_as("SELECT global_position, event_id, metadata FROM outbox")
            .fetch_one(&pool)
            .await
            .expect("outbox row");
    assert_eq!(outbox_position, position);
    assert_eq!(event_id.to_string(), event["eventId"].as_str().expect("id"));
    assert_eq!(metadata["kurrentdb"], event["metadata"]["kurrentdb"]);

    // A replay is the stored answer, byte for byte; nothing is appended again.
    let replay = post_keyed(&client, &server, &id, &id).await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, created.body);
    assert_eq!(stream_events(&client, &server, &id).await.len(), 1);

    // The projections apply it from the outbox as from PostgreSQL's store.
    let read = get(
        &client,
        &server,
        &format!("/projections/read-model/wallets/{id}?minPosition={position}"),
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["owner"], "user-001", "{}", read.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_append_and_commit_is_completed_once_by_the_retry() {
    let target = Target::new().await;
    let db = TestDb::new().await;
    let id = fresh_id("kdb-crash");
    crash_after_append(&db, &target, &id).await;

    let server = kurrent_server(&db, &target, &[]);
    let client = client();
    let before = stream_events(&client, &server, &id).await;
    assert_eq!(before.len(), 1, "the append reached KurrentDB: {before:?}");

    // The retry re-appends the same event id: KurrentDB deduplicates it, and PostgreSQL is
    // completed with the event as the first attempt stored it (its createdAt).
    let retry = post_keyed(&client, &server, &id, &id).await;
    assert_eq!(retry.status, 201, "{}", retry.text());
    assert_eq!(retry.header("idempotent-replayed"), None);
    assert_eq!(retry.json()["createdAt"], before[0]["data"]["createdAt"]);
    assert_eq!(
        retry.header("x-global-position"),
        Some(before[0]["globalPosition"].to_string().as_str())
    );
    let after = stream_events(&client, &server, &id).await;
    assert_eq!(after.len(), 1, "no second event: {after:?}");
    assert_eq!(after[0]["eventId"], before[0]["eventId"]);
    assert_eq!(row_counts(&db.pool().await).await, (1, 0, 1, 1));
    if let Target::Stub(stub) = &target {
        assert_eq!(stub.stream(&format!("wallet-{id}")).len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciliation_completes_an_orphan_event_nobody_retried() {
    let target = Target::new().await;
    let db = TestDb::new().await;
    let id = fresh_id("kdb-orphan");
    crash_after_append(&db, &target, &id).await;

    let server = kurrent_server(
        &db,
        &target,
        &[
            ("KURRENTDB_RECONCILE_GRACE_SECS", "1"),
            ("KURRENTDB_RECONCILE_INTERVAL_SECS", "1"),
        ],
    );
    let pool = db.pool().await;
    wait_for("the reconciliation completes the wallet", async || {
        count(&pool, "SELECT count(*) FROM wallets").await == 1
    })
    .await;
    assert_eq!(row_counts(&pool).await, (1, 0, 1, 1));
    let client = client();
    let event = stream_events(&client, &server, &id).await.remove(0);
    let (outbox_position,): (i64,) = sqlx::query_as("SELECT global_position FROM outbox")
        .fetch_one(&pool)
        .await
        .expect("outbox row");
    assert_eq!(
        outbox_position,
        event["globalPosition"].as_i64().expect("position")
    );
    let wallet = get(&client, &server, &format!("/wallets/{id}")).await;
    assert_eq!(wallet.status, 200);
    assert_eq!(wallet.json()["createdAt"], event["data"]["createdAt"]);

    // The client's late retry is a replay of what the request would have been answered.
    let retry = post_keyed(&client, &server, &id, &id).await;
    assert_eq!(retry.status, 201, "{}", retry.text());
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.body, wallet.body);
    assert_eq!(
        retry.header("x-global-position"),
        Some(event["globalPosition"].to_string().as_str())
    );
    let metrics = get(&client, &server, "/metrics").await.text();
    assert!(
        metrics.contains("kurrentdb_reconciled_wallets_total 1"),
        "{metrics}"
    );
    assert!(
        server
            .logs()
            .contains("completed a wallet whose event KurrentDB had"),
        "{}",
        server.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_exists_with_another_event_is_409_wallet_exists() {
    let target = Target::new().await;
    let (db_a, db_b) = (TestDb::new().await, TestDb::new().await);
    let a = kurrent_server(&db_a, &target, &[]);
    let b = kurrent_server(&db_b, &target, &[]);
    let client = client();
    let id = fresh_id("kdb-409");
    let first = post_keyed(&client, &a, &id, "key-a").await;
    assert_eq!(first.status, 201, "{}", first.text());

    // B's database has no such wallet, but KurrentDB has its stream with A's event.
    let key_b = fresh_id("key-b");
    let conflict = post_keyed(&client, &b, &id, &key_b).await;
    conflict.assert_problem(409, "wallet-exists");
    assert_eq!(row_counts(&db_b.pool().await).await, (0, 0, 0, 1));
    let replay = post_keyed(&client, &b, &id, &key_b).await;
    replay.assert_problem(409, "wallet-exists");
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    let events = stream_events(&client, &a, &id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["metadata"]["idempotencyKey"], "key-a");

    // On A the wallet exists in PostgreSQL: answered without asking KurrentDB.
    let again = post_keyed(&client, &a, &id, "key-a2").await;
    again.assert_problem(409, "wallet-exists");
    assert_eq!(row_counts(&db_a.pool().await).await, (1, 0, 1, 2));
}

/// Asserts that a create is refused with `503` quickly and writes nothing, and that the stream
/// cannot be read either.
async fn assert_unavailable(server: &Server, db: &TestDb, id: &str) {
    let client = client();
    let started = std::time::Instant::now();
    let refused = post_keyed(&client, server, id, id).await;
    refused.assert_problem(503, "event-store-unavailable");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(row_counts(&db.pool().await).await, (0, 0, 0, 0));
    get(&client, server, &format!("/wallets/{id}/events"))
        .await
        .assert_problem(503, "event-store-unavailable");
    let metrics = get(&client, server, "/metrics").await.text();
    assert!(
        metrics.contains("kurrentdb_unavailable_total{op=\"append\"}"),
        "{metrics}"
    );
}

/// Waits until the create of `id` succeeds again (no restart of wallex).
async fn wait_until_created(server: &Server, id: &str) {
    let client = client();
    wait_for("KurrentDB answers again", async || {
        post_keyed(&client, server, id, id).await.status == 201
    })
    .await;
    assert_eq!(stream_events(&client, server, id).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kurrentdb_down_is_503_with_retry_after_and_writes_nothing() {
    let mut target = Target::new().await;
    let db = TestDb::new().await;
    let id = fresh_id("kdb-down");
    // The first start with a database needs KurrentDB (the reconciliation's start); later ones
    // do not.
    let mut first = kurrent_server(&db, &target, &[]);
    first.kill();
    let stub = match &mut target {
        Target::Stub(stub) => stub,
        Target::Real(_) => {
            // A real server cannot be stopped from here: a closed port stands for it.
            let closed = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("port")
                .port();
            let down = Target::Real(format!("kurrentdb://127.0.0.1:{closed}?tls=false"));
            let server = kurrent_server(&db, &down, &[]);
            assert_unavailable(&server, &db, &id).await;
            return;
        }
    };

    // Down when wallex starts: its first call fails (the client gives up on that connection)...
    stub.stop().await;
    let server = kurrent_server(&db, &Target::Real(stub.connection_string()), &[]);
    assert_unavailable(&server, &db, &id).await;
    // ... and when KurrentDB is back, the same request goes through.
    stub.restart().await.expect("restart");
    wait_until_created(&server, &id).await;
    assert_eq!(row_counts(&db.pool().await).await, (1, 0, 1, 1));

    // Down while wallex runs, then back.
    stub.stop().await;
    let second = fresh_id("kdb-down");
    let refused = post_keyed(&client(), &server, &second, &second).await;
    refused.assert_problem(503, "event-store-unavailable");
    assert_eq!(row_counts(&db.pool().await).await, (1, 0, 1, 1));
    stub.restart().await.expect("restart");
    wait_until_created(&server, &second).await;
    assert_eq!(row_counts(&db.pool().await).await, (2, 0, 2, 2));
}

/// A start-up case: the environment, the database, the error's first words.
type StartCase<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_event_store_settings_are_one_line_start_up_errors() {
    let target = Target::new().await;
    let db = TestDb::new().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("port")
        .port();
    let down = format!("kurrentdb://127.0.0.1:{closed}?tls=false");
    let cases: [StartCase<'_>; 4] = [
        (
            &[("EVENT_STORE", "kurrentdb")],
            "postgres://postgres@127.0.0.1:1/never_reached",
            "error: EVENT_STORE=kurrentdb needs KURRENTDB_CONNECTION_STRING",
        ),
        (
            &[
                ("EVENT_STORE", "kurrentdb"),
                ("KURRENTDB_CONNECTION_STRING", "http://127.0.0.1:2113"),
            ],
            "postgres://postgres@127.0.0.1:1/never_reached",
            "error: KURRENTDB_CONNECTION_STRING is invalid: ",
        ),
        (
            &[
                ("EVENT_STORE", "kurrentdb"),
                ("KURRENTDB_CONNECTION_STRING", "kurrentdb://"),
            ],
            "postgres://postgres@127.0.0.1:1/never_reached",
            "error: KURRENTDB_CONNECTION_STRING is invalid: ",
        ),
        (
            &[
                ("EVENT_STORE", "kurrentdb"),
                ("KURRENTDB_CONNECTION_STRING", down.as_str()),
                ("KURRENTDB_TIMEOUT_MS", "1000"),
            ],
            db.url.as_str(),
            "error: first start with this database: cannot read the end of KurrentDB's $all",
        ),
    ];
    for (env, database, prefix) in cases {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wallex"));
        command
            .arg("serve")
            .env_remove("KURRENTDB_CONNECTION_STRING")
            .env("DATABASE_URL", database)
            .env("WALLEX_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "off")
            .current_dir(std::env::temp_dir());
        for (name, value) in env {
            command.env(name, value);
        }
        let output = command.output().expect("run");
        assert_one_line_error(&output, prefix);
    }
    drop(target);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_events_are_read_from_postgresql_by_default() {
    let db = TestDb::new().await;
    let server = Server::spawn(&db.url, &[]);
    let client = client();
    let id = fresh_id("pg-events");
    let created = post_keyed(&client, &server, &id, &id).await;
    assert_eq!(created.status, 201);
    let reply = get(&client, &server, &format!("/wallets/{id}/events")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let page = reply.json();
    assert_eq!(page["eventStore"], "postgres");
    assert_eq!(page["walletId"], id.as_str());
    let events = page["events"].as_array().expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["globalPosition"].to_string(),
        created.header("x-global-position").expect("position")
    );
    assert_eq!(events[0]["eventType"], "WalletCreated");
    assert_eq!(events[0]["metadata"]["idempotencyKey"], id.as_str());
    assert!(events[0]["metadata"].get("kurrentdb").is_none());
    assert!(page.get("nextFromVersion").is_none());

    let past_the_end = get(
        &client,
        &server,
        &format!("/wallets/{id}/events?fromVersion=2"),
    )
    .await;
    assert_eq!(past_the_end.status, 200);
    assert_eq!(past_the_end.json()["events"], serde_json::json!([]));
    let full_page = get(&client, &server, &format!("/wallets/{id}/events?limit=1")).await;
    assert_eq!(full_page.json()["nextFromVersion"], 2);
    get(&client, &server, "/wallets/nobody/events")
        .await
        .assert_problem(404, "wallet-not-found");
    for query in [
        "limit=0",
        "limit=1001",
        "fromVersion=0",
        "limit=x",
        "colour=blue",
    ] {
        get(&client, &server, &format!("/wallets/{id}/events?{query}"))
            .await
            .assert_problem(400, "invalid-query");
    }
    get(&client, &server, "/wallets/bad%20id/events")
        .await
        .assert_problem(400, "invalid-wallet-id");
}
