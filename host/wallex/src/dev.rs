//! `wallex dev DIR`: a local server with one projection folder watched.
//!
//! Why it exists: the inner loop of a projection author is edit, build, test, deploy, look. This
//! runs `wallex serve` in the process (with a private PostgreSQL when none is configured or
//! running, see [`crate::local_postgres`]) and, at start and after every change of the folder,
//! builds the project ([`crate::author::builder`]), runs its golden tests
//! ([`crate::author::golden`]) and, when they pass, deploys it to that server through the admin
//! API, printing one line per round. A failing build or test deploys nothing; the server keeps
//! running what it had.
//!
//! Architecture invariant: it deploys only what passed its tests. API boundary: it composes
//! `serve`, the author kit and the CLI's admin client; it adds no behaviour of its own to any of
//! them.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::author::{self, builder, TestArgs};
use crate::cli::{self, CliError, ServerArgs};
use crate::config::ServeConfig;
use crate::local_postgres::PrivatePostgres;
use wallex_http::wire::Outcome;

/// How long `dev` waits for its server to answer `/readyz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// `wallex dev`.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// The projection project to watch (see `wallex projections new`).
    pub dir: PathBuf,
    /// How often the folder is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub watch_ms: u64,
    /// The server's settings, as for `wallex serve` (an admin token is made up when none is
    /// given, and printed).
    #[command(flatten)]
    pub serve: ServeConfig,
}

/// Errors that stop `dev` (a failing round does not: it is printed, and the watch goes on).
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The folder is not a projection project.
    #[error(transparent)]
    Project(#[from] author::AuthorError),
    /// The private PostgreSQL could not be started.
    #[error(transparent)]
    Postgres(#[from] crate::local_postgres::PrivatePostgresError),
    /// The server stopped with an error.
    #[error(transparent)]
    Serve(#[from] crate::app::ServeError),
    /// The server did not become ready.
    #[error("the server did not become ready within {} s", READY_TIMEOUT.as_secs())]
    NotReady,
}

/// Runs the server and the watch until the server stops (Ctrl-C or SIGTERM).
pub async fn run(
    mut args: DevArgs,
    telemetry: wallex_telemetry::Telemetry,
) -> Result<(), DevError> {
    builder::language(&args.dir)?;
    let private = {
        let pg = args.serve.private_postgres.clone();
        let chosen = args.serve.database_chosen();
        tokio::task::spawn_blocking(move || PrivatePostgres::start_if_needed(&pg, chosen))
            .await
            .map_err(|e| author::AuthorError::Invalid(e.to_string()))??
    };
    if let Some(server) = &private {
        args.serve.database.database_url = server.url();
    }
    let token = match args.serve.admin_token.clone().filter(|t| !t.is_empty()) {
        Some(token) => token,
        None => {
            let token = format!("dev-{}", uuid::Uuid::new_v4().simple());
            args.serve.admin_token = Some(token.clone());
            token
        }
    };
    let listen = args.serve.listen;
    let host = if listen.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        listen.ip().to_string()
    };
    let database_url = args.serve.database.database_url.clone();
    let shutdown = CancellationToken::new();
    let mut server = tokio::spawn(crate::app::serve(
        args.serve.clone(),
        telemetry,
        shutdown.clone(),
    ));
    let url = format!("http://{host}:{}", listen.port());
    tokio::select! {
        ready = wait_ready(&url) => ready?,
        ended = &mut server => {
            return ended.map_err(|e| author::AuthorError::Invalid(e.to_string()))?.map_err(Into::into);
        }
    }
    println!("wallex dev: server at {url}, admin token {token}");
    println!("  export WALLEX_URL={url} WALLEX_ADMIN_TOKEN={token}");
    println!("watching {} (Ctrl-C stops)", args.dir.display());
    let client = cli::Client::new(&ServerArgs {
        url: url.clone(),
        token: Some(token),
        json: false,
    })
    .map_err(|e| author::AuthorError::Invalid(e.to_string()))?;
    let mut seen: Option<SystemTime> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(args.watch_ms));
    let result = loop {
        tokio::select! {
            ended = &mut server => {
                break ended.map_err(|e| author::AuthorError::Invalid(e.to_string()))?;
            }
            _ = tick.tick() => {}
        }
        let newest = builder::newest_file(&args.dir, true);
        if newest.is_none() || newest == seen {
            continue;
        }
        // Taken before the round: a save during it starts the next one. (What a round writes,
        // under `target/`, is not looked at.)
        seen = newest;
        round(&args, &client, &database_url).await;
    };
    drop(private);
    result.map_err(Into::into)
}

/// One round: build, test, deploy; one line saying how it went.
async fn round(args: &DevArgs, client: &cli::Client, database_url: &str) {
    let started = Instant::now();
    let dir = args.dir.clone();
    let built = tokio::task::spawn_blocking(move || builder::build(&dir, false)).await;
    let wasm = match built {
        Ok(Ok(wasm)) => wasm,
        Ok(Err(error)) => return println!("build failed: {error}"),
        Err(error) => return println!("build failed: {error}"),
    };
    let built_in = started.elapsed();
    let report = author::test(&TestArgs {
        target: wasm.clone(),
        case: None,
        cases: Some(args.dir.join(author::golden::CASES_DIR)),
        json: false,
        update: false,
        database_url: database_url.to_owned(),
    })
    .await;
    let report = match report {
        Ok(report) => report,
        Err(error) => return println!("tests could not run: {error}"),
    };
    if report.failed > 0 {
        author::print_report(&report);
        return println!("not deployed: {} case(s) failed", report.failed);
    }
    let bytes = match std::fs::read(&wasm) {
        Ok(bytes) => bytes,
        Err(error) => return println!("cannot read {}: {error}", wasm.display()),
    };
    match cli::deploy(client, None, "", bytes, true).await {
        Ok(answer) => println!(
            "built in {:.1} s, {} passed, deployed {}: {} ({:.1} s)",
            built_in.as_secs_f64(),
            report.passed,
            answer.projection.name,
            match &answer.outcome {
                Outcome::Done(outcome) => outcome.as_str(),
                Outcome::Replay(_) => "replayed",
            },
            started.elapsed().as_secs_f64()
        ),
        Err(CliError::Problem { title, detail, .. }) => {
            println!("not deployed: {title}: {detail}")
        }
        Err(error) => println!("not deployed: {error}"),
    }
}

async fn wait_ready(url: &str) -> Result<(), DevError> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        let ready = http
            .get(format!("{url}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(DevError::NotReady)
}
