//! Black-box tests of the HTTP API and the write path: the real `wallex` binary, over HTTP, against
//! a real PostgreSQL database of each test's own.

use std::time::Duration;

use crate::support::*;
use sqlx::PgPool;

struct App {
    server: Server,
    pool: PgPool,
    _db: TestDb,
}

async fn start(env: &[(&str, &str)]) -> App {
    let db = TestDb::new().await;
    let server = Server::spawn(&db.url, env);
    App {
        pool: db.pool().await,
        server,
        _db: db,
    }
}

// ---- creating and reading wallets ----

#[tokio::test(flavor = "multi_thread")]
async fn create_returns_the_snapshot_with_location_correlation_and_position() {
    let app = start(&[]).await;
    let client = client();
    let reply = post_wallet(
        &client,
        &app.server,
        r#"{"walletId": "wallet-001", "ownerId": "user-001", "initialBalance": 100.00}"#,
        &[("X-Correlation-Id", "req-123")],
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("location"), Some("/wallets/wallet-001"));
    assert_eq!(reply.header("x-correlation-id"), Some("req-123"));
    assert_eq!(reply.header("idempotent-replayed"), None);
    let text = reply.text();
    // Balance is the exact JSON number that was sent, digits included.
    assert!(text.contains(r#""balance":100.00,"#), "{text}");
    let body = reply.json();
    assert_eq!(body["id"], "wallet-001");
    assert_eq!(body["ownerId"], "user-001");
    assert_eq!(body["currency"], "USD");
    assert_eq!(body["version"], 1);
    let created = body["createdAt"].as_str().expect("createdAt");
    assert_eq!(created.len(), "2025-10-29T12:00:00.000Z".len(), "{created}");
    assert!(created.ends_with('Z'));
    assert_eq!(body["updatedAt"], body["createdAt"]);
    let keys: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 7, "{keys:?}");

    let position: i64 = reply
        .header("x-global-position")
        .expect("position")
        .parse()
        .expect("number");
    let (stored,): (i64,) =
        sqlx::query_as("SELECT global_position FROM events WHERE stream_id = 'wallet-wallet-001'")
            .fetch_one(&app.pool)
            .await
            .expect("event");
    assert_eq!(position, stored);

    // GET answers the same snapshot, byte for byte, from the write model.
    let fetched = get(&client, &app.server, "/wallets/wallet-001").await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.body, reply.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn correlation_id_is_generated_when_absent_and_validated_when_present() {
    let app = start(&[]).await;
    let client = client();
    let reply = post_wallet(&client, &app.server, &wallet_body("w-gen"), &[]).await;
    assert_eq!(reply.status, 201);
    let generated = reply.header("x-correlation-id").expect("generated");
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");

    let long = "c".repeat(129);
    let reply = post_wallet(
        &client,
        &app.server,
        &wallet_body("w-bad-corr"),
        &[("X-Correlation-Id", &long)],
    )
    .await;
    reply.assert_problem(400, "invalid-correlation-id");
    assert_eq!(row_counts(&app.pool).await.0, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn money_is_exact_and_currency_is_iso_4217() {
    let app = start(&[]).await;
    let client = client();
    // 23 significant digits: an f64 would round them. (Gold has no ISO 4217 minor unit, so it
    // takes the host's eight fractional digits.)
    let reply = post_wallet(
        &client,
        &app.server,
        r#"{"walletId":"w-exact","ownerId":"o","initialBalance":123456789012345.12345678,"currency":"XAU"}"#,
        &[],
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert!(
        reply
            .text()
            .contains(r#""balance":123456789012345.12345678,"currency":"XAU""#),
        "{}",
        reply.text()
    );
    let (balance,): (String,) =
        sqlx::query_as("SELECT balance::text FROM wallets WHERE id = 'w-exact'")
            .fetch_one(&app.pool)
            .await
            .expect("row");
    assert_eq!(balance, "123456789012345.12345678");

    // A decimal string is accepted exactly too; the limit 1e15 itself is allowed; zero too.
    let reply = post_wallet(
        &client,
        &app.server,
        r#"{"walletId":"w-str","ownerId":"o","initialBalance":"0.10"}"#,
        &[],
    )
    .await;
    assert_eq!(reply.status, 201);
    assert!(
        reply.text().contains(r#""balance":0.10,"#),
        "{}",
        reply.text()
    );
    let reply = post_wallet(
        &client,
        &app.server,
        r#"{"walletId":"w-max","ownerId":"o","initialBalance":1000000000000000}"#,
        &[],
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let reply = post_wallet(
        &client,
        &app.server,
        r#"{"walletId":"w-zero","ownerId":"o","initialBalance":0}"#,
        &[],
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    // Each currency's own minor unit: yen are whole, dinars have three digits.
    for (id, body) in [
        ("w-jpy", r#""initialBalance":1500,"currency":"JPY""#),
        ("w-bhd", r#""initialBalance":1.234,"currency":"BHD""#),
    ] {
        let reply = post_wallet(
            &client,
            &app.server,
            &format!(r#"{{"walletId":"{id}","ownerId":"o",{body}}}"#),
            &[],
        )
        .await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_fields_get_422_with_every_field_listed_and_store_nothing() {
    let app = start(&[]).await;
    let client = client();
    let cases: &[(&str, &[&str])] = &[
        (
            r#"{"walletId":"w","ownerId":"o","initialBalance":-1}"#,
            &["initialBalance"],
        ),
        (
            r#"{"walletId":"w","ownerId":"o","initialBalance":1.123456789}"#,
            &["initialBalance"],
        ),
        (
            r#"{"walletId":"w","ownerId":"o","initialBalance":1000000000000000.01}"#,
            &["initialBalance"],
        ),
        // Finer than the currency's ISO 4217 minor unit.
        (
            r#"{"walletId":"w","ownerId":"o","initialBalance":1.5,"currency":"JPY"}"#,
            &["initialBalance"],
        ),
        (
            r#"{"walletId":"w","ownerId":"o","initialBalance":"1.005"}"#,
            &["initialBalance"],
        ),
        (
            r#"{"walletId":"w","ownerId":"o","initialBalance":1.2345,"currency":"BHD"}"#,
            &["initialBalance"],
        ),
        (
            r#"{"walletId":"w","ownerId":"o","initialBalance":"ten"}"#,
            &["initialBalance"],
        ),
        (
            r#"{"walletId":"w","ownerId":"o","initialBalance":true}"#,
            &["initialBalance"],
        ),
        (
            r#"{"walletId":"","ownerId":"o","initialBalance":1}"#,
            &["walletId"],
        ),
        (
            r#"{"walletId":"has space","ownerId":"o","initialBalance":1}"#,
            &["walletId"],
        ),
        (
            r#"{"walletId":"w","ownerId":"o/x","initialBalance":1}"#,
            &["ownerId"],
        ),
        (
            r#"{"walletId":12,"ownerId":null,"initialBalance":1}"#,
            &["walletId", "ownerId"],
        ),
        (
            r#"{"walletId":"w","ownerId":"o","initialBalance":1,"currency":"usd"}"#,
            &["currency"],
        ),
        (
            r#"{"walletId":"w","ownerId":"o","initialBalance":1,"currency":"ABC"}"#,
            &["currency"],
        ),
        (
            r#"{"walletId":"w","ownerId":"o","initialBalance":1,"currency":840}"#,
            &["currency"],
        ),
        (
            r#"{"walletId":"w","ownerId":"o","initialBalance":1,"color":"red"}"#,
            &["color"],
        ),
        (r#"{}"#, &["walletId", "ownerId", "initialBalance"]),
        (r#"[1,2]"#, &[""]),
    ];
    for (body, fields) in cases {
        let reply = post_wallet(
            &client,
            &app.server,
            body,
            &[("Idempotency-Key", "validation-key")],
        )
        .await;
        let problem = reply.assert_problem(422, "validation-failed");
        let listed: Vec<&str> = problem["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|error| error["field"].as_str().expect("field"))
            .collect();
        assert_eq!(&listed, fields, "body {body}: {problem}");
        for error in problem["errors"].as_array().expect("errors") {
            assert!(
                error["detail"].is_string() && error["pointer"].is_string(),
                "{error}"
            );
        }
    }
    let long_id = "w".repeat(129);
    let reply = post_wallet(&client, &app.server, &wallet_body(&long_id), &[]).await;
    reply.assert_problem(422, "validation-failed");
    let exactly_128 = "w".repeat(128);
    let reply = post_wallet(&client, &app.server, &wallet_body(&exactly_128), &[]).await;
    assert_eq!(reply.status, 201);

    // The key used by rejected requests stored nothing: it still works for a valid request.
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM idempotency_keys").await,
        0
    );
    let reply = post_wallet(
        &client,
        &app.server,
        &wallet_body("w-after"),
        &[("Idempotency-Key", "validation-key")],
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_wrong_content_type_and_oversized_bodies_are_rejected() {
    let app = start(&[]).await;
    let client = client();
    post_wallet(&client, &app.server, r#"{"walletId": "w","#, &[])
        .await
        .assert_problem(400, "malformed-json");

    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = client
            .post(app.server.url("/wallets"))
            .body(wallet_body("w-ct"));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        read(request.send().await.expect("send"))
            .await
            .assert_problem(415, "unsupported-media-type");
    }
    // Parameters are fine.
    let reply = read(
        client
            .post(app.server.url("/wallets"))
            .header("content-type", "application/json; charset=utf-8")
            .body(wallet_body("w-charset"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(reply.status, 201);

    let padding = " ".repeat(64 * 1024);
    let big = format!(r#"{{"walletId":"w-big","ownerId":"o","initialBalance":1}}{padding}"#);
    post_wallet(&client, &app.server, &big, &[])
        .await
        .assert_problem(413, "body-too-large");
    // Exactly at the limit is accepted.
    let body = wallet_body("w-limit");
    let at_limit = format!("{body}{}", " ".repeat(64 * 1024 - body.len()));
    assert_eq!(
        post_wallet(&client, &app.server, &at_limit, &[])
            .await
            .status,
        201
    );
    assert_eq!(row_counts(&app.pool).await.0, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn existing_wallet_id_is_a_409_and_unknown_ones_are_404() {
    let app = start(&[]).await;
    let client = client();
    assert_eq!(
        post_wallet(&client, &app.server, &wallet_body("w-dup"), &[])
            .await
            .status,
        201
    );
    post_wallet(&client, &app.server, &wallet_body("w-dup"), &[])
        .await
        .assert_problem(409, "wallet-exists");
    post_wallet(
        &client,
        &app.server,
        &wallet_body("w-dup"),
        &[("Idempotency-Key", "another-key")],
    )
    .await
    .assert_problem(409, "wallet-exists");
    assert_eq!(row_counts(&app.pool).await.0, 1);
    assert_eq!(row_counts(&app.pool).await.1, 1);

    get(&client, &app.server, "/wallets/nope")
        .await
        .assert_problem(404, "wallet-not-found");
    get(&client, &app.server, "/wallets/bad%20id")
        .await
        .assert_problem(400, "invalid-wallet-id");
    get(&client, &app.server, "/no/such/path")
        .await
        .assert_problem(404, "not-found");
    read(
        client
            .delete(app.server.url("/wallets"))
            .send()
            .await
            .expect("send"),
    )
    .await
    .assert_problem(405, "method-not-allowed");
}

// ---- idempotency ----

/// The reference design's idempotency E2E test, plus the database's view of it.
#[tokio::test(flavor = "multi_thread")]
async fn same_key_and_payload_replays_the_first_response_byte_for_byte() {
    let app = start(&[]).await;
    let client = client();
    let key = uuid::Uuid::new_v4().to_string();
    let payload = wallet_body(&fresh_id("w"));
    let first = post_wallet(&client, &app.server, &payload, &[("Idempotency-Key", &key)]).await;
    assert_eq!(first.status, 201);
    // Same request with reordered keys and other whitespace: the same canonical body.
    let value: serde_json::Value = serde_json::from_str(&payload).expect("json");
    let reordered = format!(
        "{{ \"initialBalance\": 100.00, \"ownerId\": {}, \"walletId\": {} }}",
        value["ownerId"], value["walletId"]
    );
    for body in [&payload, &reordered] {
        let again = post_wallet(&client, &app.server, body, &[("Idempotency-Key", &key)]).await;
        assert_eq!(again.status, 201);
        assert_eq!(again.body, first.body, "byte-identical");
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(again.header("location"), first.header("location"));
        assert_eq!(
            again.header("x-global-position"),
            first.header("x-global-position")
        );
    }
    assert_eq!(row_counts(&app.pool).await, (1, 1, 1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn same_key_with_a_different_payload_is_a_422() {
    let app = start(&[]).await;
    let client = client();
    let key = fresh_id("k");
    assert_eq!(
        post_wallet(
            &client,
            &app.server,
            &wallet_body("w-a"),
            &[("Idempotency-Key", &key)]
        )
        .await
        .status,
        201
    );
    post_wallet(
        &client,
        &app.server,
        &wallet_body("w-b"),
        &[("Idempotency-Key", &key)],
    )
    .await
    .assert_problem(422, "idempotency-key-reused");
    assert_eq!(row_counts(&app.pool).await, (1, 1, 1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_scoped_to_method_and_path_and_replay_conflicts_too() {
    let app = start(&[]).await;
    let client = client();
    assert_eq!(
        post_wallet(&client, &app.server, &wallet_body("w-x"), &[])
            .await
            .status,
        201
    );
    // A key whose request ended in 409 wallet-exists replays that 409.
    let first = post_wallet(
        &client,
        &app.server,
        &wallet_body("w-x"),
        &[("Idempotency-Key", "k-409")],
    )
    .await;
    first.assert_problem(409, "wallet-exists");
    let again = post_wallet(
        &client,
        &app.server,
        &wallet_body("w-x"),
        &[("Idempotency-Key", "k-409")],
    )
    .await;
    assert_eq!(again.status, 409);
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let (scope,): (String,) =
        sqlx::query_as("SELECT scope FROM idempotency_keys WHERE idempotency_key = 'k-409'")
            .fetch_one(&app.pool)
            .await
            .expect("row");
    assert_eq!(scope, "POST /wallets");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_keys_are_rejected_and_the_key_can_be_required() {
    let app = start(&[]).await;
    let client = client();
    let too_long = "k".repeat(256);
    for key in ["", too_long.as_str(), "tab\there", "\"\""] {
        post_wallet(
            &client,
            &app.server,
            &wallet_body("w-k"),
            &[("Idempotency-Key", key)],
        )
        .await
        .assert_problem(400, "invalid-idempotency-key");
    }
    let longest = "k".repeat(255);
    assert_eq!(
        post_wallet(
            &client,
            &app.server,
            &wallet_body("w-k"),
            &[("Idempotency-Key", &longest)]
        )
        .await
        .status,
        201
    );
    // A structured-field string is the same key as its bare form.
    let quoted = post_wallet(
        &client,
        &app.server,
        &wallet_body("w-q"),
        &[("Idempotency-Key", "\"q-1\"")],
    )
    .await;
    let bare = post_wallet(
        &client,
        &app.server,
        &wallet_body("w-q"),
        &[("Idempotency-Key", "q-1")],
    )
    .await;
    assert_eq!(quoted.status, 201);
    assert_eq!(bare.header("idempotent-replayed"), Some("true"));
    assert_eq!(row_counts(&app.pool).await.0, 2);

    let strict = start(&[("IDEMPOTENCY_KEY_REQUIRED", "true")]).await;
    post_wallet(&client, &strict.server, &wallet_body("w-s"), &[])
        .await
        .assert_problem(400, "idempotency-key-required");
    assert_eq!(
        post_wallet(
            &client,
            &strict.server,
            &wallet_body("w-s"),
            &[("Idempotency-Key", "s-1")]
        )
        .await
        .status,
        201
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_requests_with_one_key_create_exactly_one_wallet() {
    let app = start(&[]).await;
    let client = client();
    let key = fresh_id("k");
    let body = wallet_body(&fresh_id("w"));
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (client, url, key, body, barrier) = (
            client.clone(),
            app.server.url("/wallets"),
            key.clone(),
            body.clone(),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            post_owned(client, url, body, Some(key)).await
        }));
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("task"));
    }
    let originals: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == 201 && r.header("idempotent-replayed").is_none())
        .collect();
    assert_eq!(originals.len(), 1, "exactly one request did the work");
    for reply in &replies {
        match reply.status {
            201 => assert_eq!(reply.body, originals[0].body, "replays are byte-identical"),
            409 => {
                reply.assert_problem(409, "idempotency-key-in-flight");
                assert_eq!(reply.header("retry-after"), Some("1"));
            }
            other => panic!("unexpected status {other}: {}", reply.text()),
        }
    }
    assert_eq!(row_counts(&app.pool).await, (1, 1, 1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creates_of_one_wallet_id_with_different_keys_yield_one_201() {
    let app = start(&[]).await;
    let client = client();
    let body = wallet_body(&fresh_id("w"));
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for n in 0..20 {
        let (client, url, body, barrier) = (
            client.clone(),
            app.server.url("/wallets"),
            body.clone(),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let key = (n % 2 == 0).then(|| format!("key-{n}"));
            post_owned(client, url, body, key).await
        }));
    }
    let mut created = 0;
    for task in tasks {
        let reply = task.await.expect("task");
        match reply.status {
            201 => created += 1,
            _ => {
                reply.assert_problem(409, "wallet-exists");
            }
        }
    }
    assert_eq!(created, 1);
    let (wallets, events, outbox, _) = row_counts(&app.pool).await;
    assert_eq!((wallets, events, outbox), (1, 1, 1));
}

/// What one request of the group-commit test is, and what it must get.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    /// A new wallet with a key of its own: 201.
    Fresh,
    /// A new wallet without a key: 201.
    FreshNoKey,
    /// One of several requests with one key and body: one 201, the rest 409 in flight or replay.
    SameKey,
    /// One of several requests for one wallet id with keys of their own: one 201, the rest
    /// `wallet-exists` (stored for their keys).
    SameWallet,
    /// A wallet id that existed before: `wallet-exists`.
    Existing,
    /// A wallet whose stream exists without it (a damaged store): this request alone fails,
    /// after its batch is split into one transaction per request.
    Orphan,
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creates_share_transactions_yet_each_gets_its_own_answer() {
    // One committer, and every commit held for a moment: requests pile up behind it and the next
    // transaction carries many of them, with every kind of conflict mixed in.
    let app = start(&[
        ("WRITE_COMMITTERS", "1"),
        ("WALLEX_FAILPOINTS", "before-commit=sleep(100)"),
    ])
    .await;
    let client = client();
    let existing = fresh_id("w-old");
    let first = post_wallet(&client, &app.server, &wallet_body(&existing), &[]).await;
    assert_eq!(first.status, 201, "{}", first.text());

    let orphan = fresh_id("w-orphan");
    sqlx::query(
        "INSERT INTO events (event_id, stream_id, stream_version, event_type, data, metadata, recorded_at)
         VALUES (gen_random_uuid(), 'wallet-' || $1, 1, 'WalletCreated', '{}', '{}', now())",
    )
    .bind(&orphan)
    .execute(&app.pool)
    .await
    .expect("orphan stream");
    let same_key = fresh_id("k-same");
    let same_key_body = wallet_body(&fresh_id("w-same-key"));
    let contested = fresh_id("w-contested");
    let mut requests: Vec<(Role, String, Option<String>)> = Vec::new();
    for n in 0..12 {
        requests.push((
            Role::Fresh,
            wallet_body(&fresh_id("w")),
            Some(fresh_id("k")),
        ));
        if n < 6 {
            requests.push((Role::FreshNoKey, wallet_body(&fresh_id("w")), None));
            requests.push((Role::SameKey, same_key_body.clone(), Some(same_key.clone())));
            requests.push((
                Role::SameWallet,
                wallet_body(&contested),
                Some(fresh_id("k")),
            ));
        }
        if n < 2 {
            requests.push((Role::Existing, wallet_body(&existing), Some(fresh_id("k"))));
        }
        if n == 5 {
            requests.push((Role::Orphan, wallet_body(&orphan), Some(fresh_id("k"))));
        }
    }
    // A request that holds the committer while the crowd queues behind it.
    let blocker = {
        let (client, url) = (client.clone(), app.server.url("/wallets"));
        tokio::spawn(post_owned(client, url, wallet_body(&fresh_id("w")), None))
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(requests.len()));
    let mut tasks = Vec::new();
    for (role, body, key) in requests.clone() {
        let (client, url, barrier) = (client.clone(), app.server.url("/wallets"), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            (role, key.clone(), post_owned(client, url, body, key).await)
        }));
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("task"));
    }

    assert_eq!(blocker.await.expect("task").status, 201);
    let mut positions = std::collections::HashSet::new();
    let (mut same_key_originals, mut contested_created) = (0, 0);
    for (role, _, reply) in &replies {
        let original = reply.status == 201 && reply.header("idempotent-replayed").is_none();
        if original {
            let position: i64 = reply
                .header("x-global-position")
                .and_then(|p| p.parse().ok())
                .expect("X-Global-Position");
            assert!(positions.insert(position), "positions are per request");
            let wallet = reply.json()["id"].as_str().expect("id").to_owned();
            let (stored,): (i64,) = sqlx::query_as(
                "SELECT global_position FROM events WHERE stream_id = 'wallet-' || $1",
            )
            .bind(&wallet)
            .fetch_one(&app.pool)
            .await
            .expect("the wallet's event");
            assert_eq!(stored, position, "{role:?}: its own event's position");
        }
        match role {
            Role::Fresh | Role::FreshNoKey => assert!(original, "{role:?}: {}", reply.text()),
            Role::SameKey => match reply.status {
                201 => same_key_originals += usize::from(original),
                _ => {
                    reply.assert_problem(409, "idempotency-key-in-flight");
                }
            },
            Role::SameWallet => match reply.status {
                201 => contested_created += 1,
                _ => {
                    reply.assert_problem(409, "wallet-exists");
                }
            },
            Role::Existing | Role::Orphan => {
                reply.assert_problem(409, "wallet-exists");
            }
        }
    }
    assert_eq!(
        same_key_originals, 1,
        "one request with the shared key did the work"
    );
    assert_eq!(
        contested_created, 1,
        "one request created the contested wallet"
    );

    // Every keyed answer was stored for its own key: a retry replays it byte for byte.
    for (role, key, reply) in &replies {
        let Some(key) = key else { continue };
        if matches!(role, Role::SameKey | Role::Orphan) {
            continue;
        }
        let body = requests
            .iter()
            .find(|(_, _, k)| k.as_deref() == Some(key))
            .map(|(_, body, _)| body.clone())
            .expect("request");
        let again = post_wallet(&client, &app.server, &body, &[("Idempotency-Key", key)]).await;
        assert_eq!(again.status, reply.status, "{role:?}");
        assert_eq!(again.body, reply.body, "{role:?}: replayed byte for byte");
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
    }

    // 1 old + 1 blocker + 12 fresh + 6 without key + 1 shared key + 1 contested; the orphan's
    // answer is an error, stored for nobody.
    let wallets = 22;
    let keys = 12 + 1 + 6 + 2;
    assert_eq!(
        row_counts(&app.pool).await,
        (wallets, wallets + 1, wallets, keys)
    );
    let metrics = get(&client, &app.server, "/metrics").await.text();
    assert!(
        metric(&metrics, "wallet_write_batch_splits_total") >= 1,
        "the orphan's batch was split: {metrics}"
    );

    // Without anomalies, a crowd shares transactions.
    let (transactions, answered) = (
        metric(&metrics, "wallet_write_transactions_total"),
        metric(&metrics, "wallet_write_requests_total"),
    );
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(16));
    let crowd: Vec<_> = (0..16)
        .map(|_| {
            let (client, url, barrier) =
                (client.clone(), app.server.url("/wallets"), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                post_owned(
                    client,
                    url,
                    wallet_body(&fresh_id("w")),
                    Some(fresh_id("k")),
                )
                .await
            })
        })
        .collect();
    for reply in crowd {
        assert_eq!(reply.await.expect("task").status, 201);
    }
    let metrics = get(&client, &app.server, "/metrics").await.text();
    let transactions = metric(&metrics, "wallet_write_transactions_total") - transactions;
    let answered = metric(&metrics, "wallet_write_requests_total") - answered;
    assert_eq!(answered, 16);
    assert!(
        transactions < answered,
        "requests shared transactions: {transactions} transactions for {answered} requests"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_that_timed_out_while_queued_is_not_written() {
    // One committer, held by the first request; the second waits in the queue past its timeout.
    let app = start(&[
        ("WRITE_COMMITTERS", "1"),
        ("WALLEX_FAILPOINTS", "before-commit=sleep(1500)"),
        ("WALLEX_REQUEST_TIMEOUT_MS", "700"),
    ])
    .await;
    let client = client();
    let first = {
        let (client, url) = (client.clone(), app.server.url("/wallets"));
        tokio::spawn(post_owned(client, url, wallet_body("w-held"), None))
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queued = post_wallet(
        &client,
        &app.server,
        &wallet_body("w-queued"),
        &[("Idempotency-Key", "queued-key")],
    )
    .await;
    queued.assert_problem(503, "request-timeout");
    let first = first.await.expect("task");
    first.assert_problem(503, "request-timeout");
    // The held request was inside its transaction and completes; the queued one was dropped
    // (written, it would commit one held commit later, ~3 s from the start).
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let ids: Vec<(String,)> = sqlx::query_as("SELECT id FROM wallets ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .expect("wallets");
    assert_eq!(ids, vec![("w-held".to_owned(),)]);
    assert_eq!(row_counts(&app.pool).await, (1, 1, 1, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_in_flight_answers_409_with_retry_after_then_replays() {
    let app = start(&[("WALLEX_FAILPOINTS", "before-commit=sleep(1500)")]).await;
    let client = client();
    let body = wallet_body(&fresh_id("w"));
    let first = {
        let (client, url, body) = (client.clone(), app.server.url("/wallets"), body.clone());
        tokio::spawn(
            async move { post_owned(client, url, body, Some("slow-key".to_string())).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = post_wallet(
        &client,
        &app.server,
        &body,
        &[("Idempotency-Key", "slow-key")],
    )
    .await;
    second.assert_problem(409, "idempotency-key-in-flight");
    assert_eq!(second.header("retry-after"), Some("1"));
    let first = first.await.expect("task");
    assert_eq!(first.status, 201);
    // The failpoint slows every commit; the replay does not commit anything.
    let third = post_wallet(
        &client,
        &app.server,
        &body,
        &[("Idempotency-Key", "slow-key")],
    )
    .await;
    assert_eq!(third.status, 201);
    assert_eq!(third.body, first.body);
    assert_eq!(row_counts(&app.pool).await, (1, 1, 1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_completed_between_lookup_and_claim_is_replayed_not_redone() {
    // Every request pauses after its first look-up: the second looks before the first commits,
    // and claims after it.
    let app = start(&[("WALLEX_FAILPOINTS", "before-claim=sleep(800)")]).await;
    let client = client();
    let body = wallet_body(&fresh_id("w"));
    let send = |delay_ms: u64| {
        let (client, url, body) = (client.clone(), app.server.url("/wallets"), body.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            post_owned(client, url, body, Some("race-key".to_string())).await
        })
    };
    let (first, second) = (send(0), send(300));
    let (first, second) = (first.await.expect("task"), second.await.expect("task"));
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(second.status, 201, "{}", second.text());
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.body, first.body);
    assert_eq!(row_counts(&app.pool).await, (1, 1, 1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_append_and_commit_leaves_nothing_and_the_key_retryable() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let client = client();
    let body = wallet_body("w-crash");
    for failpoint in ["after-append=abort", "before-commit=abort"] {
        // The lone request, and then a crowd sharing one transaction.
        let mut server = Server::spawn(&db.url, &[("WALLEX_FAILPOINTS", failpoint)]);
        let result = client
            .post(server.url("/wallets"))
            .header("content-type", "application/json")
            .header("idempotency-key", "crash-key")
            .body(body.clone())
            .send()
            .await;
        assert!(result.is_err(), "{failpoint}: the server died mid-request");
        let status = server
            .wait_exit(Duration::from_secs(10))
            .expect("server exited");
        assert!(!status.success(), "{failpoint}: aborted");
        assert_eq!(
            row_counts(&pool).await,
            (0, 0, 0, 0),
            "{failpoint}: nothing partial"
        );

        let spec = format!("{failpoint},before-claim=sleep(200)");
        let mut server = Server::spawn(
            &db.url,
            &[
                ("WALLEX_FAILPOINTS", spec.as_str()),
                ("WRITE_COMMITTERS", "1"),
            ],
        );
        let crowd: Vec<_> = (0..16)
            .map(|n| {
                let request = client
                    .post(server.url("/wallets"))
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("crash-key-{n}"))
                    .body(wallet_body(&format!("w-crash-{n}")));
                tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
            })
            .collect();
        for request in crowd {
            let result = request.await.expect("task");
            assert!(
                result.is_err(),
                "{failpoint}: no answer from a dead batch: {result:?}"
            );
        }
        let status = server
            .wait_exit(Duration::from_secs(10))
            .expect("server exited");
        assert!(!status.success(), "{failpoint}: aborted");
        assert_eq!(
            row_counts(&pool).await,
            (0, 0, 0, 0),
            "{failpoint}: nothing partial"
        );
    }
    // The sequence may have advanced; nothing else did. The same keys now just work.
    let server = Server::spawn(&db.url, &[]);
    let reply = post_wallet(&client, &server, &body, &[("Idempotency-Key", "crash-key")]).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.header("idempotent-replayed"), None);
    for n in 0..16 {
        let key = format!("crash-key-{n}");
        let body = wallet_body(&format!("w-crash-{n}"));
        let reply = post_wallet(&client, &server, &body, &[("Idempotency-Key", &key)]).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
        assert_eq!(reply.header("idempotent-replayed"), None);
    }
    assert_eq!(row_counts(&pool).await, (17, 17, 17, 17));
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_keys_are_new_again_and_get_cleaned_up() {
    let app = start(&[
        ("IDEMPOTENCY_CLEANUP_INTERVAL_SECS", "1"),
        ("IDEMPOTENCY_CLEANUP_BATCH_SIZE", "2"),
    ])
    .await;
    let client = client();
    assert_eq!(
        post_wallet(
            &client,
            &app.server,
            &wallet_body("w-e1"),
            &[("Idempotency-Key", "exp")]
        )
        .await
        .status,
        201
    );
    let (ttl_hours,): (f64,) = sqlx::query_as(
        "SELECT extract(epoch FROM expires_at - created_at)::float8 / 3600 FROM idempotency_keys",
    )
    .fetch_one(&app.pool)
    .await
    .expect("row");
    assert!(
        (ttl_hours - 24.0).abs() < 0.01,
        "default TTL is 24 h, got {ttl_hours}"
    );

    sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .expect("expire");
    // After expiry the key is new: a different body is a new request, not a 422.
    let reply = post_wallet(
        &client,
        &app.server,
        &wallet_body("w-e2"),
        &[("Idempotency-Key", "exp")],
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.header("idempotent-replayed"), None);
    assert_eq!(row_counts(&app.pool).await.0, 2);

    // The cleanup task deletes expired keys in bounded batches (5 keys, batches of 2).
    for n in 0..5 {
        let key = format!("old-{n}");
        assert_eq!(
            post_wallet(
                &client,
                &app.server,
                &wallet_body(&key),
                &[("Idempotency-Key", &key)]
            )
            .await
            .status,
            201
        );
    }
    sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE idempotency_key LIKE 'old-%'")
        .execute(&app.pool)
        .await
        .expect("expire");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while count(&app.pool, "SELECT count(*) FROM idempotency_keys").await > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "expired keys were not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM idempotency_keys WHERE idempotency_key = 'exp'"
        )
        .await,
        1
    );
}

// ---- events ----

#[tokio::test(flavor = "multi_thread")]
async fn the_event_carries_ids_metadata_and_lands_in_the_outbox() {
    let app = start(&[]).await;
    let client = client();
    let reply = post_wallet(
        &client,
        &app.server,
        r#"{"walletId":"w-ev","ownerId":"o-ev","initialBalance":"42.50","currency":"GBP"}"#,
        &[
            ("Idempotency-Key", "ev-key"),
            ("X-Correlation-Id", "corr-ev"),
        ],
    )
    .await;
    assert_eq!(reply.status, 201);
    let row: (i64, uuid::Uuid, String, i64, String, serde_json::Value, serde_json::Value) = sqlx::query_as(
        "SELECT global_position, event_id, stream_id, stream_version, event_type, data, metadata FROM events",
    )
    .fetch_one(&app.pool)
    .await
    .expect("event");
    let (position, event_id, stream, version, event_type, data, metadata) = row;
    let body: serde_json::Value = serde_json::from_str(
        r#"{"walletId":"w-ev","ownerId":"o-ev","initialBalance":"42.50","currency":"GBP"}"#,
    )
    .expect("json");
    let fingerprint = wallex_core::idempotency::fingerprint(&body);
    assert_eq!(
        event_id,
        wallex_core::eventstore::deterministic_event_id("POST /wallets", "ev-key", &fingerprint, 0)
    );
    assert_eq!(
        (stream.as_str(), version, event_type.as_str()),
        ("wallet-w-ev", 1, "WalletCreated")
    );
    assert_eq!(data["walletId"], "w-ev");
    assert_eq!(data["ownerId"], "o-ev");
    assert_eq!(data["initialBalance"], "42.50");
    assert_eq!(data["currency"], "GBP");
    assert_eq!(metadata["correlationId"], "corr-ev");
    assert_eq!(metadata["causationId"], "corr-ev");
    assert_eq!(metadata["idempotencyKey"], "ev-key");
    assert_eq!(
        reply.header("x-global-position"),
        Some(position.to_string().as_str())
    );

    let outbox: (i64, uuid::Uuid, serde_json::Value, serde_json::Value) =
        sqlx::query_as("SELECT global_position, event_id, data, metadata FROM outbox")
            .fetch_one(&app.pool)
            .await
            .expect("outbox row");
    assert_eq!(outbox, (position, event_id, data, metadata));
}

// ---- operations ----

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness() {
    let app = start(&[]).await;
    let client = client();
    assert_eq!(get(&client, &app.server, "/healthz").await.status, 200);
    assert_eq!(get(&client, &app.server, "/readyz").await.status, 200);
    sqlx::query("DELETE FROM _sqlx_migrations")
        .execute(&app.pool)
        .await
        .expect("forget migrations");
    get(&client, &app.server, "/readyz")
        .await
        .assert_problem(503, "not-ready");
    assert_eq!(get(&client, &app.server, "/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_requests_then_exits_cleanly() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let mut server = Server::spawn(
        &db.url,
        &[("WALLEX_FAILPOINTS", "before-commit=sleep(1500)")],
    );
    let client = client();
    let in_flight = {
        let (client, url) = (client.clone(), server.url("/wallets"));
        tokio::spawn(async move { post_owned(client, url, wallet_body("w-term"), None).await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.terminate();
    let reply = in_flight.await.expect("task");
    assert_eq!(reply.status, 201, "the in-flight request completed");
    let status = server.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(
        status.success(),
        "clean exit: {status:?}\n{}",
        server.logs()
    );
    assert!(server.logs().contains("stopped"));
    assert_eq!(row_counts(&pool).await.0, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_command_is_idempotent_and_bad_configuration_fails_in_one_line() {
    let db = TestDb::new().await;
    for _ in 0..2 {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_wallex"))
            .args(["migrate", "--database-url", &db.url])
            .current_dir(std::env::temp_dir())
            .output()
            .expect("run");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains("migrations applied"));
    }
    let pool = db.pool().await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM _sqlx_migrations").await,
        wallex_core::db::MIGRATOR.iter().count() as i64
    );

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wallex"))
        .args(["migrate", "--database-url", "mysql://nope"])
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run");
    assert_one_line_error(&output, "error: ");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wallex"))
        .args(["serve", "--listen", "not-an-address"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
}
