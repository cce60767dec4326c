//! Test harness shared by the black-box tests: a fresh PostgreSQL database per test, and the real
//! `wallex` binary spawned against it on a random port.
#![allow(dead_code)]

pub mod events;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};

/// Server URL of the test cluster's maintenance database; override with WALLEX_TEST_ADMIN_URL.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// How long a spawned server may take to start listening.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

fn admin_url() -> String {
    std::env::var("WALLEX_TEST_ADMIN_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// A database of its own for one test, dropped when the value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let name = format!("wallex_test_{}", uuid::Uuid::new_v4().simple());
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("connect to the test PostgreSQL (see README: Tests)");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let base = admin
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(&admin);
        TestDb {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// A database with the schema applied.
    pub async fn migrated() -> TestDb {
        let db = TestDb::new().await;
        let pool = db.pool().await;
        wallex_core::db::MIGRATOR.run(&pool).await.expect("migrate");
        pool.close().await;
        db
    }

    pub async fn pool(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = admin_url();
        // Drop runs inside a tokio runtime; use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                }
            });
        })
        .join();
    }
}

/// A migrated test database with a pool, for tests that run parts of wallex in the test
/// process. The database is dropped by [`PooledDb::drop_db`], or with the value if the test
/// panics first.
pub struct PooledDb {
    db: TestDb,
    pub url: String,
    pub pool: PgPool,
}

impl PooledDb {
    pub async fn new() -> PooledDb {
        let db = TestDb::migrated().await;
        let pool = db.pool().await;
        PooledDb {
            url: db.url.clone(),
            pool,
            db,
        }
    }

    /// Closes the pool and drops the database.
    pub async fn drop_db(self) {
        self.pool.close().await;
        drop(self.db);
    }
}

/// A running `wallex serve` process.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub base: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Spawns `wallex serve` against `database_url` with extra environment and waits until it listens.
    pub fn spawn(database_url: &str, env: &[(&str, &str)]) -> Server {
        Self::try_spawn(database_url, env).expect("wallex exited before it listened")
    }

    /// Like [`Server::spawn`], but `None` if the process exits before it listens (a crash
    /// failpoint hit during start-up).
    pub fn try_spawn(database_url: &str, env: &[(&str, &str)]) -> Option<Server> {
        Self::spawn_inner(database_url, env, None)
    }

    /// Like [`Server::spawn`], under a limit on the process's data segment (`RLIMIT_DATA`, as
    /// `prlimit --data`): an allocation past it fails, and the server aborts.
    pub fn spawn_with_data_limit(database_url: &str, env: &[(&str, &str)], bytes: u64) -> Server {
        Self::spawn_inner(database_url, env, Some(bytes)).expect("wallex exited before it listened")
    }

    fn spawn_inner(
        database_url: &str,
        env: &[(&str, &str)],
        data_limit: Option<u64>,
    ) -> Option<Server> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wallex"));
        if let Some(bytes) = data_limit {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_DATA, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        // Every variable the binary reads, from its own list: a developer's exported settings
        // never leak into a test.
        for name in wallex::config::env_names() {
            command.env_remove(name);
        }
        command
            .arg("serve")
            .current_dir(std::env::temp_dir())
            .env("DATABASE_URL", database_url)
            .env("WALLEX_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info,sqlx=warn")
            .env("WALLEX_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn wallex");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for (stream, addr_tx) in [
            (
                Box::new(stdout) as Box<dyn std::io::Read + Send>,
                Some(addr_tx),
            ),
            (Box::new(stderr), None),
        ] {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(addr_tx) = &addr_tx {
                        if let Some((_, addr)) = line.split_once("listening on http://") {
                            let _ = addr_tx.send(addr.trim().to_owned());
                        }
                    }
                    logs.lock().expect("logs").push(line);
                }
            });
        }
        let addr: SocketAddr = match addr_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => addr.parse().expect("listening address"),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = child.wait();
                return None;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!(
                    "wallex did not start listening; its output:\n{}",
                    logs.lock().expect("logs").join("\n")
                );
            }
        };
        Some(Server {
            child,
            base: format!("http://{addr}"),
            addr,
            logs,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A field of `/proc/<pid>/status` in bytes (`VmData`, `VmRSS`, …), if readable.
    pub fn vm_bytes(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status
            .lines()
            .find(|line| line.starts_with(&format!("{field}:")))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// kill -TERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn logs(&self) -> String {
        self.logs.lock().expect("logs").join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP client for tests (no connection reuse surprises: a fresh pool per test).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts an RFC 9457 problem response of this status and type slug.
    pub fn assert_problem(&self, status: u16, slug: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "status; body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let problem = self.json();
        assert_eq!(
            problem["type"],
            format!("/problems/{slug}"),
            "problem: {problem}"
        );
        assert_eq!(problem["status"], status);
        assert!(
            problem["title"].is_string() && problem["detail"].is_string(),
            "{problem}"
        );
        problem
    }
}

/// POSTs `body` to `/wallets` with `Content-Type: application/json` and the given headers.
pub async fn post_wallet(
    client: &reqwest::Client,
    server: &Server,
    body: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = client
        .post(server.url("/wallets"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    read(request.send().await.expect("send")).await
}

/// POSTs a JSON body to `url`, with an idempotency key if given. Owns its arguments, so it can
/// run in a spawned task.
pub async fn post_owned(
    client: reqwest::Client,
    url: String,
    body: String,
    key: Option<String>,
) -> Reply {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    read(request.send().await.expect("send")).await
}

pub async fn read(response: reqwest::Response) -> Reply {
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("body").to_vec(),
    }
}

pub async fn get(client: &reqwest::Client, server: &Server, path: &str) -> Reply {
    read(client.get(server.url(path)).send().await.expect("send")).await
}

/// `SELECT count(*) …`.
pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await.expect(sql);
    n
}

/// Counts of (wallets, events, outbox rows, idempotency keys).
pub async fn row_counts(pool: &PgPool) -> (i64, i64, i64, i64) {
    (
        count(pool, "SELECT count(*) FROM wallets").await,
        count(pool, "SELECT count(*) FROM events").await,
        count(pool, "SELECT count(*) FROM outbox").await,
        count(pool, "SELECT count(*) FROM idempotency_keys").await,
    )
}

/// A valid create body.
pub fn wallet_body(wallet_id: &str) -> String {
    format!(r#"{{"walletId":"{wallet_id}","ownerId":"user-001","initialBalance":100.00}}"#)
}

/// A fresh id usable as wallet id and idempotency key.
pub fn fresh_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Bearer token of the admin API in tests.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// How long a test waits for a projection to reach a state.
pub const PATIENCE: Duration = Duration::from_secs(120);
/// The token the admin helpers send.
const TOKEN: &str = ADMIN_TOKEN;

pub fn wasm(file: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/{file}",
        wallex_runtime::sandbox::bundled::WASM_DIR
    ))
    .expect("component built by build.rs")
}

/// A temporary projections directory holding the given fixture files.
pub struct ComponentDir(pub std::path::PathBuf);

impl ComponentDir {
    pub fn new(files: &[&str]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("wallex-fault-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        for file in files {
            std::fs::write(dir.join(file), wasm(file)).expect("copy component");
        }
        Self(dir)
    }

    pub fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for ComponentDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn admin_get(server: &Server, path: &str) -> serde_json::Value {
    let reply = read(
        client()
            .get(server.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    reply.json()
}

pub async fn admin_put(server: &Server, path: &str, component: Vec<u8>) -> Reply {
    read(
        client()
            .put(server.url(path))
            .bearer_auth(TOKEN)
            .header("content-type", "application/wasm")
            // Wait for the compile as long as a request may (a loaded machine can take longer
            // than the default wait before `202 Accepted`); tests of the 202 path ask for less.
            .header("prefer", "wait=60")
            .body(component)
            .send()
            .await
            .expect("send"),
    )
    .await
}

pub async fn admin_post(server: &Server, path: &str) -> Reply {
    read(
        client()
            .post(server.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("send"),
    )
    .await
}

pub async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends an admin request with the test token.
pub async fn admin(method: reqwest::Method, server: &Server, path: &str) -> Reply {
    let request = client()
        .request(method, server.url(path))
        .bearer_auth(TOKEN);
    read(request.send().await.expect("send")).await
}

/// Uploads a component as projection `name`.
pub async fn upload(server: &Server, name: &str, bytes: Vec<u8>) -> Reply {
    admin_put(server, &format!("/admin/projections/{name}"), bytes).await
}

/// `GET /admin/projections/{name}`, which must answer 200.
pub async fn admin_status(server: &Server, name: &str) -> serde_json::Value {
    admin_get(server, &format!("/admin/projections/{name}")).await
}

/// Polls until `check` holds for the projection's admin status, or panics after `limit`.
pub async fn wait_status(
    server: &Server,
    name: &str,
    limit: Duration,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let status = admin_status(server, name).await;
        if check(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: {status:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the projection's live checkpoint is the last outbox row and no rebuild runs.
pub async fn wait_caught_up(server: &Server, name: &str) -> serde_json::Value {
    wait_status(server, name, PATIENCE, "projection never caught up", |s| {
        s["lagEvents"] == 0 && s["rebuild"].is_null()
    })
    .await
}

pub async fn seen(pool: &PgPool, projection: &str) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "SELECT wallet_id FROM projection_{}.seen ORDER BY 1",
        projection.replace('-', "_")
    ))
    .fetch_all(pool)
    .await
    .expect("seen")
}

/// A task that creates wallets against `base` until `stop` is cancelled, asserting that every
/// create answers 201; returns how many it created.
pub fn spawn_creator(
    base: &str,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<u32> {
    let base = base.to_owned();
    tokio::spawn(async move {
        let client = client();
        let mut created = 0_u32;
        while !stop.is_cancelled() {
            let response = client
                .post(format!("{base}/wallets"))
                .header("content-type", "application/json")
                .body(wallet_body(&fresh_id("load")))
                .send()
                .await
                .expect("create");
            assert_eq!(response.status(), 201, "wallet creation failed under load");
            created += 1;
        }
        created
    })
}

/// Asserts that a command failed with a one-line message starting with `prefix` (the CLI's
/// promise for bad input: one line, non-zero exit).
pub fn assert_one_line_error(output: &std::process::Output, prefix: &str) {
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(prefix), "{stderr}");
}
