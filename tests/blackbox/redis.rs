//! Redis beside PostgreSQL (`REDIS_URL`), for efficiency only: the replay cache answers byte for
//! byte what PostgreSQL stored and only after the commit; the per-wallet lock serialises creates
//! of one wallet, a lock that expires mid-write or is held by someone else corrupts nothing; and
//! a Redis that is killed, paused (slow) and restarted under load fails no create and is used
//! again without a restart. Each test starts its own `redis-server` on its own port.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A `redis-server` of this test's own.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

impl RedisServer {
    fn start() -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
        };
        server.restart();
        server
    }

    /// Starts (again) on the same port and waits until it answers.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.connection().is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection()
    }

    fn keys(&self, pattern: &str) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut self.connection().expect("redis"))
            .expect("KEYS")
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of an unlabelled-or-labelled counter line of `/metrics` (0 when absent).
async fn metric(server: &Server, series: &str) -> f64 {
    let text = get(&client(), server, "/metrics").await.text();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the pattern has `count` keys in Redis.
async fn wait_keys(redis: &RedisServer, pattern: &str, count: usize) {
    let deadline = Instant::now() + PATIENCE;
    while redis.keys(pattern).len() != count {
        assert!(
            Instant::now() < deadline,
            "{pattern}: {:?}",
            redis.keys(pattern)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `redis-server` of the test's own, a fresh database, and a server using both with `env`.
async fn serve_with_redis(env: &[(&str, &str)]) -> (RedisServer, TestDb, Server) {
    let redis = RedisServer::start();
    let db = TestDb::migrated().await;
    let url = redis.url();
    let mut all = vec![("REDIS_URL", url.as_str())];
    all.extend_from_slice(env);
    let server = Server::spawn(&db.url, &all);
    (redis, db, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_from_redis_are_byte_identical_and_cached_only_after_the_commit() {
    // A generous Redis timeout: this test is about what is cached when, not about a slow Redis,
    // and under the load of the other suites a post-commit cache write can take over the
    // default 50 ms (it is then skipped, as it should be, and the cache stays empty).
    let (mut redis, db, server) = serve_with_redis(&[
        ("WALLEX_FAILPOINTS", "before-commit=sleep(400)"),
        ("REDIS_TIMEOUT_MS", "5000"),
    ])
    .await;
    let wallet = fresh_id("cached");
    let body = wallet_body(&wallet);
    let key = fresh_id("key");
    let first = {
        let (client, url, body, key) =
            (client(), server.url("/wallets"), body.clone(), key.clone());
        tokio::spawn(async move { post_owned(client, url, body, Some(key)).await })
    };
    // Inside the transaction: the wallet is locked, nothing is cached yet.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(redis.keys("wallex:lock:wallet:*").len(), 1);
    assert!(
        redis.keys("wallex:idem:*").is_empty(),
        "cached before the commit"
    );
    let first = first.await.expect("task");
    assert_eq!(first.status, 201, "{}", first.text());
    wait_keys(&redis, "wallex:idem:*", 1).await;
    wait_keys(&redis, "wallex:lock:wallet:*", 0).await;
    // The cache entry expires with the PostgreSQL record (IDEMPOTENCY_TTL_HOURS, 24 h).
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&redis.keys("wallex:idem:*")[0])
        .query(&mut redis.connection().expect("redis"))
        .expect("PTTL");
    assert!(
        (23 * 3_600_000..=24 * 3_600_000).contains(&ttl),
        "ttl {ttl} ms"
    );

    let from_redis = post_wallet(&client(), &server, &body, &[("idempotency-key", &key)]).await;
    assert_eq!(
        metric(&server, "redis_replay_cache_total{result=\"hit\"}").await,
        1.0
    );
    // The same replay from PostgreSQL, with Redis gone.
    redis.kill();
    let from_postgres = post_wallet(&client(), &server, &body, &[("idempotency-key", &key)]).await;
    for replay in [&from_redis, &from_postgres] {
        assert_eq!(replay.status, first.status);
        assert_eq!(replay.body, first.body, "byte-identical");
        assert_eq!(replay.header("idempotent-replayed"), Some("true"));
        assert_eq!(replay.header("location"), first.header("location"));
        assert_eq!(
            replay.header("x-global-position"),
            first.header("x-global-position")
        );
    }
    // A different body with the key is refused from the cache as from PostgreSQL.
    redis.restart();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    post_wallet(
        &client(),
        &server,
        &wallet_body(&fresh_id("other")),
        &[("idempotency-key", &key)],
    )
    .await
    .assert_problem(422, "idempotency-key-reused");
    assert_eq!(row_counts(&db.pool().await).await, (1, 1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wallet_lock_serialises_creates_of_one_wallet_and_respects_other_holders() {
    let (redis, db, server) = serve_with_redis(&[
        ("REDIS_LOCK_WAIT_MS", "3000"),
        ("WALLEX_FAILPOINTS", "before-commit=sleep(150)"),
    ])
    .await;
    let url = redis.url();
    let wallet = fresh_id("contested");
    let crowd: Vec<_> = (0..6)
        .map(|_| {
            let (client, url, body) = (client(), server.url("/wallets"), wallet_body(&wallet));
            tokio::spawn(async move { post_owned(client, url, body, Some(fresh_id("k"))).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for reply in crowd {
        let reply = reply.await.expect("task");
        if reply.status == 409 {
            reply.assert_problem(409, "wallet-exists");
        }
        statuses.push(reply.status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409]);
    assert!(
        metric(&server, "redis_lock_total{result=\"acquired_after_wait\"}").await >= 1.0,
        "the creates waited for each other's lock"
    );
    wait_keys(&redis, "wallex:lock:wallet:*", 0).await;

    // Another holder's lock is waited for, then ignored when the wait runs out, and never
    // deleted: correctness is PostgreSQL's.
    drop(server);
    let server = Server::spawn(
        &db.url,
        &[("REDIS_URL", &url), ("REDIS_LOCK_WAIT_MS", "100")],
    );
    let held = fresh_id("held");
    let lock_key = format!("wallex:lock:wallet:{held}");
    let _: () = redis::cmd("SET")
        .arg(&lock_key)
        .arg("someone-else")
        .arg("PX")
        .arg(60_000)
        .query(&mut redis.connection().expect("redis"))
        .expect("SET");
    let started = Instant::now();
    let reply = post_wallet(&client(), &server, &wallet_body(&held), &[]).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(
        metric(&server, "redis_lock_total{result=\"wait_expired\"}").await,
        1.0
    );
    let holder: Option<String> = redis::cmd("GET")
        .arg(&lock_key)
        .query(&mut redis.connection().expect("redis"))
        .expect("GET");
    assert_eq!(holder.as_deref(), Some("someone-else"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_that_expires_mid_write_corrupts_nothing() {
    // Every lock expires long before its transaction commits.
    let (redis, db, server) = serve_with_redis(&[
        ("REDIS_LOCK_TTL_MS", "30"),
        ("REDIS_LOCK_WAIT_MS", "3000"),
        ("WALLEX_FAILPOINTS", "before-commit=sleep(300)"),
    ])
    .await;
    let wallet = fresh_id("expiring");
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (client, url, body) = (client(), server.url("/wallets"), wallet_body(&wallet));
        tasks.push(tokio::spawn(async move {
            post_owned(client, url, body, Some(fresh_id("k"))).await
        }));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("task").status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409, 409]);
    // One wallet, one event, one outbox row, three stored answers.
    assert_eq!(row_counts(&db.pool().await).await, (1, 1, 1, 3));
    wait_keys(&redis, "wallex:lock:wallet:*", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_paused_and_restarted_under_load_fails_no_create() {
    let (mut redis, db, server) = serve_with_redis(&[]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let creators: Vec<_> = (0..8)
        .map(|_| {
            let (client, url, stop) = (client(), server.url("/wallets"), stop.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = fresh_id("k");
                    let body = wallet_body(&fresh_id("w"));
                    let reply = post_owned(client.clone(), url.clone(), body, Some(key)).await;
                    statuses.push(reply.status);
                }
                statuses
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Slow: the process is paused, its connections stay open and answer nothing.
    redis.signal("-STOP");
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.signal("-CONT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Down, then back on the same port.
    redis.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.restart();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for creator in creators {
        let statuses = creator.await.expect("task");
        total += statuses.len();
        assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    }
    assert!(total > 0);
    // A keyed create's first Redis call is `begin` (cache look-up and lock in one script).
    assert!(metric(&server, "redis_errors_total{op=\"begin\"}").await >= 1.0);
    let logs = server.logs();
    assert!(logs.contains("Redis unavailable"), "{logs}");
    assert!(logs.contains("Redis answers again"), "{logs}");

    // Used again without a restart: a new create is cached and its replay served from Redis.
    let hits = metric(&server, "redis_replay_cache_total{result=\"hit\"}").await;
    let key = fresh_id("after");
    let body = wallet_body(&fresh_id("after"));
    let created = post_wallet(&client(), &server, &body, &[("idempotency-key", &key)]).await;
    assert_eq!(created.status, 201);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let replay = post_wallet(&client(), &server, &body, &[("idempotency-key", &key)]).await;
        assert_eq!(replay.body, created.body);
        if metric(&server, "redis_replay_cache_total{result=\"hit\"}").await > hits {
            break;
        }
        assert!(Instant::now() < deadline, "Redis was not used again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (wallets, ..) = row_counts(&db.pool().await).await;
    assert_eq!(wallets as usize, total + 1);
}
