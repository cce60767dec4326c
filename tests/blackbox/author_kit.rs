//! The projection author's kit, as an author runs it: `wallex projections new`, `build` and
//! `test` (no server), the bundled projections' own golden tests, and large components (Python,
//! JavaScript) deployed to a running server with the defaults: answered at once, compiled once,
//! loaded from the stored artifact after a restart, their memory reported and bounded.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sqlx::Connection;

use crate::support::ADMIN_TOKEN as TOKEN;
use crate::support::{admin_get, client, post_wallet, read, wait_caught_up, wasm, Server, TestDb};

/// The source tree (the bundled projections' cases, the examples).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn wallex(args: &[&str], database_url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wallex"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env_remove("WALLEX_URL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run wallex")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A scratch folder, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "wallex-author-{what}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether a language's tool is on this machine; under CI it must be (`.ci/run` installs it),
/// elsewhere a test that needs a missing one says so and passes.
fn tool_available(tool: &str, probe: &mut Command) -> bool {
    let found = probe.output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is not installed, and CI must run this test (see .ci/run)"
        );
        eprintln!(
            "skipping: {tool} is not installed (see projections/README.md, Ship a new projection)"
        );
    }
    found
}

/// `wallex projections new NAME --dir SCRATCH/NAME [ARGS…]`, which must succeed; the project
/// folder.
fn new_project(db: &TestDb, scratch: &Scratch, name: &str, args: &[&str]) -> PathBuf {
    let dir = scratch.0.join(name);
    let dir_text = dir.display().to_string();
    let created = wallex(
        &[&["projections", "new", name, "--dir", &dir_text], args].concat(),
        &db.url,
    );
    assert!(created.status.success(), "{created:?}");
    dir
}

#[tokio::test]
async fn the_bundled_projections_pass_their_golden_tests() {
    let db = TestDb::new().await;
    for (name, file, cases) in [
        ("read-model", "wallex_projection_read_model.wasm", 3),
        ("ledger", "wallex_projection_ledger.wasm", 3),
        ("audit", "wallex_projection_audit.wasm", 1),
    ] {
        let component = format!("{}/{file}", wallex_sandbox::bundled::WASM_DIR);
        let dir = repo().join("projections").join(name).join("tests");
        let output = wallex(
            &[
                "projections",
                "test",
                &component,
                "--cases",
                &dir.display().to_string(),
            ],
            &db.url,
        );
        let text = stdout(&output);
        assert!(output.status.success(), "{name}: {text}");
        assert!(
            text.contains(&format!("{cases} passed, 0 failed")),
            "{name}: {text}"
        );
    }
    // Every case ran in a schema of its own, dropped afterwards.
    let pool = db.pool().await;
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'wallex_test_%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_failing_case_names_table_key_and_column_and_update_rewrites_it() {
    let db = TestDb::new().await;
    let scratch = Scratch::new("cases");
    let good =
        std::fs::read_to_string(repo().join("projections/read-model/tests/wallet-created.json"))
            .expect("case");
    let wrong = good.replace("\"balance\": \"100.00\"", "\"balance\": \"99.5\"");
    assert_ne!(good, wrong);
    let case = scratch.0.join("wallet-created.json");
    std::fs::write(&case, &wrong).unwrap();
    let component = format!(
        "{}/wallex_projection_read_model.wasm",
        wallex_sandbox::bundled::WASM_DIR
    );
    let cases = scratch.0.display().to_string();
    let args = [
        "projections",
        "test",
        component.as_str(),
        "--cases",
        cases.as_str(),
    ];

    let failed = wallex(&args, &db.url);
    let text = stdout(&failed);
    assert_eq!(failed.status.code(), Some(1), "{text}");
    assert!(
        text.contains("wallets[id=w1].balance: expected \"99.5\", actual \"100.00\""),
        "{text}"
    );
    assert!(text.contains("0 passed, 1 failed"), "{text}");

    let json = wallex(&[&args[..], &["--json"]].concat(), &db.url);
    assert_eq!(json.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON report");
    let mismatch = &report["cases"][0]["mismatches"][0];
    assert_eq!(mismatch["table"], "wallets");
    assert_eq!(mismatch["key"], "id=w1");
    assert_eq!(mismatch["column"], "balance");
    assert_eq!(mismatch["expected"], "99.5");
    assert_eq!(mismatch["actual"], "100.00");

    let updated = wallex(&[&args[..], &["--update"]].concat(), &db.url);
    assert!(updated.status.success(), "{}", stdout(&updated));
    let rewritten = std::fs::read_to_string(&case).unwrap();
    assert!(rewritten.contains("\"balance\": \"100.00\""), "{rewritten}");
    let again = wallex(&args, &db.url);
    assert!(again.status.success(), "{}", stdout(&again));
    assert!(stdout(&again).contains("1 passed, 0 failed"));

    let missing = wallex(&[&args[..], &["--case", "no-such-case"]].concat(), &db.url);
    crate::support::assert_one_line_error(&missing, "error: no case named no-such-case");
}

#[tokio::test]
async fn a_new_rust_project_passes_its_tests_and_a_replay_unsafe_change_fails_them() {
    let db = TestDb::new().await;
    let scratch = Scratch::new("rust");
    let dir = new_project(&db, &scratch, "wallets-by-owner", &[]);
    let dir_text = dir.display().to_string();
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "README.md",
        "tests/wallet-created.json",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let again = wallex(
        &["projections", "new", "wallets-by-owner", "--dir", &dir_text],
        &db.url,
    );
    crate::support::assert_one_line_error(&again, "error: ");

    // Shares the guest components' target folder: their dependencies are built already.
    let target = repo().join("target/wasm-guests");
    let test = |db_url: &str| {
        Command::new(env!("CARGO_BIN_EXE_wallex"))
            .args(["projections", "test", &dir_text])
            .env("DATABASE_URL", db_url)
            .env("CARGO_TARGET_DIR", &target)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run wallex")
    };
    let passed = test(&db.url);
    assert!(
        passed.status.success(),
        "{}{}",
        stdout(&passed),
        String::from_utf8_lossy(&passed.stderr)
    );
    assert!(
        stdout(&passed).contains("3 passed, 0 failed"),
        "{}",
        stdout(&passed)
    );

    // Accumulating the balance without a guard counts a replayed event twice: the replay of
    // `when` that every case runs must catch it.
    let lib = dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    let unsafe_source = source
        .replace(
            ".set(\"balance\", wallet.initial_balance()?)",
            ".accumulate(\"balance\", wallet.initial_balance()?)",
        )
        .replace(".guard([\"version\"])", "");
    assert_ne!(source, unsafe_source);
    std::fs::write(&lib, unsafe_source).unwrap();
    let failed = test(&db.url);
    let text = stdout(&failed);
    assert_eq!(failed.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "wallets[id=w1].balance after replaying `when`: expected \"10.50\", actual \"21.00\""
        ),
        "{text}"
    );
}

#[tokio::test]
async fn new_python_and_javascript_projects_pass_their_tests() {
    let db = TestDb::new().await;
    let scratch = Scratch::new("langs");
    if tool_available(
        "componentize-py",
        Command::new("componentize-py").arg("--version"),
    ) {
        let dir = new_project(&db, &scratch, "owners-py", &["--lang", "python"]);
        let dir = dir.display().to_string();
        let tested = wallex(&["projections", "test", &dir], &db.url);
        assert!(tested.status.success(), "{}", stdout(&tested));
        assert!(stdout(&tested).contains("3 passed, 0 failed"));
    }
    if tool_available("npm", Command::new("npm").arg("--version")) {
        let dir = new_project(&db, &scratch, "owners-js", &["--lang", "javascript"]);
        let dir_text = dir.display().to_string();
        let missing = wallex(&["projections", "build", &dir_text], &db.url);
        crate::support::assert_one_line_error(&missing, "error: jco is not installed: npm install");
        let installed = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("npm");
        assert!(installed.success());
        let tested = wallex(&["projections", "test", &dir_text], &db.url);
        assert!(tested.status.success(), "{}", stdout(&tested));
        assert!(stdout(&tested).contains("3 passed, 0 failed"));
    }
}

/// Builds an example component once per test process with the project's own build script (the
/// tool installed as `.ci/run` does), or `None` when the tool is missing outside CI.
fn example(lang: &'static str) -> Option<&'static [u8]> {
    static PYTHON: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    static JAVASCRIPT: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    let (cell, tool, mut probe, file) = match lang {
        "python" => (
            &PYTHON,
            "componentize-py",
            Command::new("componentize-py"),
            "wallets-py.wasm",
        ),
        _ => (&JAVASCRIPT, "npm", Command::new("npm"), "wallets-js.wasm"),
    };
    probe.arg("--version");
    cell.get_or_init(|| {
        if !tool_available(tool, &mut probe) {
            return None;
        }
        let out = std::env::temp_dir().join(format!(
            "wallex-author-example-{lang}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let status = Command::new("bash")
            .arg(repo().join("projections/examples/build.sh"))
            .arg(lang)
            .arg(&out)
            .status()
            .expect("build.sh");
        assert!(status.success(), "building the {lang} example failed");
        let bytes = std::fs::read(out.join(file)).expect("built component");
        let _ = std::fs::remove_dir_all(&out);
        Some(bytes)
    })
    .as_deref()
}

async fn deploy_cli(server: &Server, file: &Path) -> Output {
    let server_url = server.base.clone();
    let file = file.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_wallex"))
            .args([
                "projections",
                "deploy",
                &file.display().to_string(),
                "--json",
            ])
            .env("WALLEX_URL", server_url)
            .env("WALLEX_ADMIN_TOKEN", TOKEN)
            .output()
            .expect("run wallex")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_components_deploy_with_the_defaults_and_project_exactly() {
    let scratch = Scratch::new("examples");
    let mut components = Vec::new();
    if let Some(bytes) = example("python") {
        components.push(("wallets-py", "projection_wallets_py", bytes));
    }
    if let Some(bytes) = example("javascript") {
        components.push(("wallets-js", "projection_wallets_js", bytes));
    }
    if components.is_empty() {
        return;
    }
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    // The defaults, but for the admin token: no timeout or memory setting raised.
    let server = Server::spawn(&db.url, &[("WALLEX_ADMIN_TOKEN", TOKEN)]);
    let http = client();
    for i in 0..20 {
        let body = format!(
            r#"{{"walletId":"w{i}","ownerId":"owner-{i}","initialBalance":"{i}.{:02}","currency":"EUR"}}"#,
            i * 3 % 100
        );
        let key = format!("k-{i}");
        let reply = post_wallet(&http, &server, &body, &[("idempotency-key", key.as_str())]).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    for (name, stable, bytes) in &components {
        let file = scratch.0.join(format!("{name}.wasm"));
        std::fs::write(&file, *bytes).unwrap();
        let deployed = deploy_cli(&server, &file).await;
        assert!(
            deployed.status.success(),
            "{}",
            String::from_utf8_lossy(&deployed.stderr)
        );
        let answer: serde_json::Value = serde_json::from_slice(&deployed.stdout).expect("JSON");
        assert_eq!(answer["outcome"], "created", "{answer}");
        let status = wait_caught_up(&server, name).await;
        let compiled = status["runningHere"]["compiledBytes"].as_u64().unwrap_or(0);
        assert!(compiled > 1 << 20, "{name}: compiled bytes {status}");
        // Exactly the read model's rows, column by column.
        let differing: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM (
                (SELECT id, owner, balance, currency, version, created_at, updated_at FROM projection_read_model.wallets
                 EXCEPT SELECT id, owner, balance, currency, version, created_at, updated_at FROM {stable}.wallets)
                UNION ALL
                (SELECT id, owner, balance, currency, version, created_at, updated_at FROM {stable}.wallets
                 EXCEPT SELECT id, owner, balance, currency, version, created_at, updated_at FROM projection_read_model.wallets)) d"
        ))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(differing, 0, "{name} differs from the read model");
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {stable}.wallets"))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, 20);
    }
    let compiled_once: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_artifacts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(compiled_once as usize, 3 + components.len());
    let metrics = read(
        http.get(server.url("/metrics"))
            .send()
            .await
            .expect("metrics"),
    )
    .await
    .text();
    assert!(
        metrics.contains("projector_compiled_bytes_total"),
        "{metrics}"
    );

    // A restart loads every component from its stored artifact: nothing is compiled again.
    drop(server);
    let server = Server::spawn(&db.url, &[("WALLEX_ADMIN_TOKEN", TOKEN)]);
    for (name, _, _) in &components {
        wait_caught_up(&server, name).await;
    }
    let logs = server.logs();
    assert!(!logs.contains("component compiled"), "{logs}");
    assert!(
        logs.contains("loaded from its stored compiled artifact"),
        "{logs}"
    );
    let listed = admin_get(&server, "/admin/projections").await;
    assert_eq!(
        listed["projections"].as_array().map(Vec::len),
        Some(3 + components.len())
    );
}

/// Polls a deploy answered `202` until it has ended.
async fn finished(server: &Server, location: &str) -> serde_json::Value {
    for _ in 0..1_200 {
        let job = admin_get(server, location).await;
        if job["status"] != "running" {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("deploy {location} still running after 120 s");
}

#[tokio::test]
async fn a_deploy_answers_202_when_asked_and_its_outcome_is_kept() {
    let db = TestDb::migrated().await;
    let server = Server::spawn(&db.url, &[("WALLEX_ADMIN_TOKEN", TOKEN)]);
    let http = client();
    let bytes = wasm("wallex_projection_read_model_v2.wasm");
    let accepted = read(
        http.put(server.url("/admin/projections/read-model"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/wasm")
            .header("prefer", "respond-async")
            .body(bytes)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    assert_eq!(accepted.header("preference-applied"), Some("respond-async"));
    let location = accepted.header("location").expect("Location").to_owned();
    assert!(location.starts_with("/admin/deploys/"), "{location}");
    assert_eq!(accepted.json()["status"], "running");
    let job = finished(&server, &location).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["outcome"], "rebuild-started", "{job}");
    assert_eq!(job["result"]["projection"]["name"], "read-model");

    // A refused component's problem is kept the same way.
    let refused = read(
        http.put(server.url("/admin/projections/audit"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/wasm")
            .header("prefer", "respond-async")
            .body(wasm("wallex_projection_ledger.wasm"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(refused.status, 202);
    let location = refused.header("location").expect("Location").to_owned();
    let job = finished(&server, &location).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["problem"]["type"], "/problems/invalid-component");
    assert_eq!(job["problem"]["status"], 400);

    let unknown = crate::support::admin(
        reqwest::Method::GET,
        &server,
        "/admin/deploys/00000000-0000-0000-0000-000000000000",
    )
    .await;
    unknown.assert_problem(404, "not-found");
}

#[tokio::test]
async fn compiled_components_over_the_memory_limit_are_refused_and_change_nothing() {
    let Some(python) = example("python") else {
        return;
    };
    let db = TestDb::migrated().await;
    // Room for the three bundled components (about 1 MiB together), not for a Python one.
    let server = Server::spawn(
        &db.url,
        &[
            ("WALLEX_ADMIN_TOKEN", TOKEN),
            ("WALLEX_COMPILED_MEMORY_MAX_MIB", "8"),
        ],
    );
    let before = admin_get(&server, "/admin/projections/read-model").await;
    let refused = crate::support::upload(&server, "wallets-py", python.to_vec()).await;
    // A 20 MiB component compiles for longer than a request waits: the deploy answers 202 and
    // its outcome is the problem a synchronous deploy would have answered.
    let problem = if refused.status == 202 {
        let location = refused.header("location").expect("Location").to_owned();
        let job = finished(&server, &location).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["problem"]["status"], 507, "{job}");
        assert_eq!(
            job["problem"]["type"],
            "/problems/component-memory-exceeded"
        );
        job["problem"].clone()
    } else {
        refused.assert_problem(507, "component-memory-exceeded")
    };
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("WALLEX_COMPILED_MEMORY_MAX_MIB")),
        "{problem}"
    );
    let missing = crate::support::admin(
        reqwest::Method::GET,
        &server,
        "/admin/projections/wallets-py",
    )
    .await;
    missing.assert_problem(404, "not-found");
    let after = admin_get(&server, "/admin/projections/read-model").await;
    assert_eq!(before["generation"], after["generation"]);
}

/// A free TCP port on 127.0.0.1 (for the private PostgreSQL).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test]
async fn serve_runs_on_a_private_postgres_and_stops_it_on_exit() {
    let scratch = Scratch::new("pg");
    let data = scratch.0.join("data");
    let port = free_port().to_string();
    let data_text = data.display().to_string();
    // `always`: this machine has a PostgreSQL on 5432, which `auto` would use.
    let mut server = Server::spawn(
        "postgres://nobody@127.0.0.1:1/unused",
        &[
            ("WALLEX_PRIVATE_POSTGRES", "always"),
            ("WALLEX_PRIVATE_POSTGRES_DIR", data_text.as_str()),
            ("WALLEX_PRIVATE_POSTGRES_PORT", port.as_str()),
        ],
    );
    let http = client();
    let body = r#"{"walletId":"private-1","ownerId":"o1","initialBalance":"1.25"}"#;
    let created = post_wallet(&http, &server, body, &[("idempotency-key", "pk-1")]).await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert!(data.join("PG_VERSION").is_file());
    let url = format!("postgres://postgres@127.0.0.1:{port}/wallex");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("the private PostgreSQL answers");
    let wallets: i64 = sqlx::query_scalar("SELECT count(*) FROM wallets WHERE id = 'private-1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(wallets, 1);
    pool.close().await;

    server.terminate();
    let status = server.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success(), "{}", server.logs());
    assert!(
        server.logs().contains("private PostgreSQL stopped"),
        "{}",
        server.logs()
    );
    assert!(!data.join("postmaster.pid").exists());
    assert!(sqlx::PgConnection::connect(&url).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallex_dev_redeploys_what_passes_its_tests_and_nothing_else() {
    let db = TestDb::new().await;
    let scratch = Scratch::new("dev");
    let dir = new_project(&db, &scratch, "wallets-dev", &[]);
    let dir_text = dir.display().to_string();
    let port = free_port();
    let stderr_file = scratch.0.join("dev.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wallex"))
        .args(["dev", &dir_text, "--watch-ms", "200"])
        .env("DATABASE_URL", &db.url)
        .env("WALLEX_LISTEN", format!("127.0.0.1:{port}"))
        .env("CARGO_TARGET_DIR", repo().join("target/wasm-guests"))
        .env("RUST_LOG", "warn")
        .env_remove("WALLEX_ADMIN_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&stderr_file).expect("stderr file"))
        .spawn()
        .expect("wallex dev");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let out = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_line = |needle: &str| -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        let mut seen = Vec::new();
        while std::time::Instant::now() < deadline {
            if let Ok(line) = lines.recv_timeout(Duration::from_secs(1)) {
                if line.contains(needle) {
                    return line;
                }
                seen.push(line);
            }
        }
        panic!(
            "no line with {needle:?}; saw:\n{}\nstderr:\n{}",
            seen.join("\n"),
            std::fs::read_to_string(&stderr_file).unwrap_or_default()
        );
    };
    wait_line("deployed wallets-dev: created");
    let base = format!("http://127.0.0.1:{port}");
    let http = client();
    let post = |wallet: &str, owner: &str| {
        http.post(format!("{base}/wallets"))
            .header("content-type", "application/json")
            .header("idempotency-key", format!("dev-{wallet}"))
            .body(format!(
                r#"{{"walletId":"{wallet}","ownerId":"{owner}","initialBalance":"3"}}"#
            ))
            .send()
    };
    assert_eq!(post("d1", "carol").await.expect("post").status(), 201);

    // A change whose cases fail is not deployed.
    let lib = dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    let shouting = source.replace(
        ".set(\"owner\", wallet.owner_id()?)",
        ".set(\"owner\", wallet.owner_id()?.to_uppercase())",
    );
    assert_ne!(source, shouting);
    std::fs::write(&lib, shouting).unwrap();
    wait_line("not deployed: 2 case(s) failed");

    // With its cases saying what it now does, it is: in place, from the same checkpoint.
    for case in ["wallet-created.json", "history.json"] {
        let path = dir.join("tests").join(case);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("\"alice\"", "\"ALICE\"")
                .replace("\"bob\"", "\"BOB\""),
        )
        .unwrap();
    }
    wait_line("deployed wallets-dev: swapped");
    assert_eq!(post("d2", "dave").await.expect("post").status(), 201);
    let pool = db.pool().await;
    let mut owners = Vec::new();
    for _ in 0..200 {
        owners = sqlx::query_scalar::<_, String>(
            "SELECT owner FROM projection_wallets_dev.wallets ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        if owners.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(owners, ["carol", "DAVE"]);
    pool.close().await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
