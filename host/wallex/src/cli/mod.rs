//! `wallex projections …` and `wallex recovery …` ([`recovery`]): the operator's command line
//! over the admin API.
//!
//! Why it exists: deploying, reloading, rebuilding, pausing, resuming and rolling back a
//! projection on a running server should be one command with a readable answer (or `--json` for
//! scripts), a one-line error and a non-zero exit code when it fails.

pub mod dry_run;
pub mod recovery;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use wallex_http::admin::{ACTOR_HEADER, WASM_CONTENT_TYPE};
use wallex_http::wire::{
    ActionAnswer, DeadLetterList, DeleteAnswer, DeployJobBody, OutboxStatsBody, Outcome,
    ProblemDocument, ProjectionList, ProjectionStatusBody, RebuildBody,
};

/// Default server address of the CLI.
pub const DEFAULT_URL: &str = "http://127.0.0.1:3000";
/// How often a deploy answered `202 Accepted` is polled.
pub const DEPLOY_POLL: Duration = Duration::from_millis(250);
/// How often `rebuild --wait` polls the status.
pub const REBUILD_POLL: Duration = Duration::from_millis(500);
/// Upper bound of one admin request (uploads of large components included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Width of the progress bar, in characters.
const BAR_WIDTH: usize = 30;

/// Where the server is and how to talk to it (every command over the admin API).
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Base URL of the wallex server.
    #[arg(long, env = "WALLEX_URL", default_value = DEFAULT_URL, global = true)]
    pub url: String,
    /// Admin token (`WALLEX_ADMIN_TOKEN` of the server).
    #[arg(
        long,
        env = "WALLEX_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Print the server's JSON instead of a summary.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `wallex projections …`.
#[derive(Debug, Clone, Args)]
pub struct ProjectionsCli {
    /// The server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: ProjectionsCommand,
}

/// The operations of `wallex projections`.
#[derive(Debug, Clone, Subcommand)]
pub enum ProjectionsCommand {
    /// Create a projection project that builds and passes its test as it is (no server).
    New(crate::author::NewArgs),
    /// Build a projection project into `DIR/target/projection.wasm` (no server).
    Build(crate::author::BuildArgs),
    /// Run a projection's golden tests through the real sandbox against a throwaway schema of
    /// the local PostgreSQL (no server); exit code 0 when every case passes, 1 otherwise.
    Test(crate::author::TestArgs),
    /// Every deployed projection, as a table.
    List,
    /// One projection's status.
    Status {
        /// The projection's name.
        name: String,
    },
    /// Upload a component and make it live (in place, or by a blue/green rebuild for a new
    /// schema version).
    Deploy {
        /// The component file (`.wasm`, built for wasm32-wasip2).
        file: PathBuf,
        /// The projection's name (default: what the component declares, which the server reads).
        #[arg(long)]
        name: Option<String>,
        /// A limit or the poison policy for this deploy, e.g. `--set on_poison=skip
        /// --set call_timeout_ms=500` (repeatable; see host/docs/security.md).
        #[arg(long = "set", value_name = "KEY=VALUE", conflicts_with = "dry_run")]
        settings: Vec<String>,
        /// Do not deploy: replay the component over the live log into a shadow of its own and
        /// report what it declares and writes, its poison events and, when the name is live, a
        /// per-table diff against the live version (Ctrl-C cancels). Exits 1 unless it completed.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: keep the shadow tables for inspection.
        #[arg(long, requires = "dry_run")]
        keep: bool,
        /// With --dry-run: read at most this many events of the log.
        #[arg(long, requires = "dry_run", value_parser = clap::value_parser!(u64).range(1..))]
        max_events: Option<u64>,
    },
    /// Drop the shadow tables a `deploy --dry-run --keep` kept (or cancel a running dry run).
    DryRunDrop {
        /// The dry run's number.
        id: i64,
    },
    /// Restart a projection from its checkpoint on its registry version (after a failure).
    Reload {
        /// The projection's name.
        name: String,
    },
    /// Rebuild a projection into fresh tables and cut over when caught up.
    Rebuild {
        /// The projection's name.
        name: String,
        /// Follow the rebuild with a progress bar until it is live.
        #[arg(long)]
        wait: bool,
        /// Cancel the rebuild in progress instead (drops its tables).
        #[arg(long, conflicts_with = "wait")]
        cancel: bool,
    },
    /// Stop applying events (every instance).
    Pause {
        /// The projection's name.
        name: String,
    },
    /// Apply events again.
    Resume {
        /// The projection's name.
        name: String,
    },
    /// Go back to the version that ran before.
    Rollback {
        /// The projection's name.
        name: String,
    },
    /// Stop a projection everywhere (tables kept unless --drop-tables).
    Delete {
        /// The projection's name.
        name: String,
        /// Also drop its tables, its stable views and its checkpoint.
        #[arg(long)]
        drop_tables: bool,
    },
    /// Events in the outbox and each projection's lag.
    Stats,
    /// Events a projection skipped under `on_poison = skip`; `--replay` re-runs them with the
    /// live version.
    DeadLetters {
        /// The projection's name.
        name: String,
        /// Re-run the open dead letters (after deploying a fix).
        #[arg(long)]
        replay: bool,
        /// Include resolved ones in the list.
        #[arg(long, conflicts_with = "replay")]
        all: bool,
    },
}

/// Errors of the CLI: each prints as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server could not be reached, or its answer could not be read.
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        /// The server's base URL.
        url: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status (and, usually, an RFC 9457 problem).
    #[error("{title} ({status}): {detail}")]
    Problem {
        /// The HTTP status.
        status: u16,
        /// The problem's title (the status's reason phrase if the answer was no problem).
        title: String,
        /// The problem's detail (the answer's text if it was no problem).
        detail: String,
    },
    /// A local file (the component to deploy) could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The command or an answer is not usable: a malformed `--set`, a component that does not
    /// describe itself, an unexpected answer; the message says what.
    #[error("{0}")]
    Invalid(String),
    /// An author command (`new`, `build`, `test`) failed.
    #[error(transparent)]
    Author(crate::author::AuthorError),
}

/// An admin API client.
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub(crate) fn new(cli: &ServerArgs) -> Result<Self, CliError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|source| CliError::Unreachable {
                url: cli.url.clone(),
                source,
            })?;
        Ok(Self {
            http,
            base: cli.url.trim_end_matches('/').to_owned(),
            token: cli.token.clone(),
        })
    }

    /// Sends a request and decodes a successful answer as `T`; a problem answer becomes
    /// [`CliError::Problem`].
    pub(crate) async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(Vec<u8>, String)>,
    ) -> Result<T, CliError> {
        self.send_query(method, path, &[], body).await
    }

    /// [`Client::send`] with query parameters (encoded by the client).
    pub(crate) async fn send_query<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<(Vec<u8>, String)>,
    ) -> Result<T, CliError> {
        let (status, text) = self.request(method, path, query, body).await?;
        decode(status, text, path)
    }

    /// Sends a request; answers its status and text, whatever the status.
    pub(crate) async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<(Vec<u8>, String)>,
    ) -> Result<(reqwest::StatusCode, String), CliError> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.base), query)
            .map_err(|e| CliError::Invalid(format!("invalid server URL {}: {e}", self.base)))?;
        let mut request = self.http.request(method, url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Ok(user) = std::env::var("USER") {
            request = request.header(ACTOR_HEADER, user);
        }
        if let Some((bytes, digest)) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, WASM_CONTENT_TYPE)
                .header("content-digest", digest)
                .body(bytes);
        }
        let response = request
            .send()
            .await
            .map_err(|source| CliError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|source| CliError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        Ok((status, text))
    }
}

/// A successful answer decoded as `T`; a problem answer as [`CliError::Problem`].
fn decode<T: DeserializeOwned>(
    status: reqwest::StatusCode,
    text: String,
    path: &str,
) -> Result<T, CliError> {
    if status.is_success() {
        return serde_json::from_str(&text)
            .map_err(|error| CliError::Invalid(format!("unexpected answer to {path}: {error}")));
    }
    let problem: ProblemDocument = serde_json::from_str(&text).unwrap_or(ProblemDocument {
        title: status.canonical_reason().unwrap_or("error").to_owned(),
        detail: text,
    });
    Err(CliError::Problem {
        status: status.as_u16(),
        title: problem.title,
        detail: problem.detail,
    })
}

/// What a command printed, typed by the endpoint that answered.
enum Output {
    List(ProjectionList),
    Status(Box<ProjectionStatusBody>),
    Action(Box<ActionAnswer>),
    Deleted(DeleteAnswer),
    Stats(OutboxStatsBody),
    Letters(DeadLetterList),
}

/// Runs one `wallex projections` command; answers whether it succeeded (a failed golden test is
/// `Ok(false)`: a report, not an error).
pub async fn run(cli: ProjectionsCli) -> Result<bool, CliError> {
    match &cli.command {
        ProjectionsCommand::New(args) => {
            let made = crate::author::scaffold::create(args).map_err(CliError::Author)?;
            crate::author::scaffold::print_next_steps(&made, args);
            return Ok(true);
        }
        ProjectionsCommand::Build(args) => {
            let out = crate::author::builder::build(&args.dir, !cli.server.json)
                .map_err(CliError::Author)?;
            println!("{}", out.display());
            return Ok(true);
        }
        ProjectionsCommand::Test(args) => {
            let report = crate::author::test(args).await.map_err(CliError::Author)?;
            if args.json {
                print_json(&report)?;
            } else {
                crate::author::print_report(&report);
            }
            return Ok(report.failed == 0 || args.update);
        }
        _ => {}
    }
    let client = Client::new(&cli.server)?;
    let get = reqwest::Method::GET;
    let output = match &cli.command {
        ProjectionsCommand::List => {
            Output::List(client.send(get, "/admin/projections", None).await?)
        }
        ProjectionsCommand::Status { name } => Output::Status(
            client
                .send(get, &format!("/admin/projections/{name}"), None)
                .await?,
        ),
        ProjectionsCommand::Deploy {
            file,
            name,
            dry_run: true,
            keep,
            max_events,
            ..
        } => {
            let bytes = std::fs::read(file).map_err(|source| CliError::File {
                path: file.display().to_string(),
                source,
            })?;
            let args = dry_run::DryRunArgs {
                name: name.as_deref(),
                keep: *keep,
                max_events: *max_events,
                quiet: cli.server.json,
            };
            let report = dry_run::run(&client, bytes, &args).await?;
            if cli.server.json {
                print_json(&report)?;
            } else {
                dry_run::print(&report);
            }
            return Ok(report.status == "completed");
        }
        ProjectionsCommand::DryRunDrop { id } => {
            let report: wallex_http::wire::DryRunBody = client
                .send(
                    reqwest::Method::DELETE,
                    &format!("/admin/dry-runs/{id}"),
                    None,
                )
                .await?;
            if cli.server.json {
                print_json(&report)?;
            } else {
                dry_run::print(&report);
            }
            return Ok(true);
        }
        ProjectionsCommand::Deploy {
            file,
            name,
            settings,
            ..
        } => {
            let query = settings_query(settings)?;
            let bytes = std::fs::read(file).map_err(|source| CliError::File {
                path: file.display().to_string(),
                source,
            })?;
            Output::Action(Box::new(
                deploy(&client, name.as_deref(), &query, bytes, cli.server.json).await?,
            ))
        }
        ProjectionsCommand::Reload { name } => action(&client, name, "reload").await?,
        ProjectionsCommand::Pause { name } => action(&client, name, "pause").await?,
        ProjectionsCommand::Resume { name } => action(&client, name, "resume").await?,
        ProjectionsCommand::Rollback { name } => action(&client, name, "rollback").await?,
        ProjectionsCommand::Rebuild { name, cancel, .. } if *cancel => Output::Action(
            client
                .send(
                    reqwest::Method::DELETE,
                    &format!("/admin/projections/{name}/rebuild"),
                    None,
                )
                .await?,
        ),
        ProjectionsCommand::Rebuild { name, wait, .. } => {
            let started = action(&client, name, "rebuild").await?;
            if *wait {
                Output::Status(Box::new(
                    follow_rebuild(&client, name, cli.server.json).await?,
                ))
            } else {
                started
            }
        }
        ProjectionsCommand::Delete { name, drop_tables } => Output::Deleted(
            client
                .send(
                    reqwest::Method::DELETE,
                    &format!("/admin/projections/{name}?drop_tables={drop_tables}"),
                    None,
                )
                .await?,
        ),
        ProjectionsCommand::Stats => {
            Output::Stats(client.send(get, "/admin/outbox/stats", None).await?)
        }
        ProjectionsCommand::DeadLetters { name, replay, .. } if *replay => {
            action(&client, name, "dead-letters/replay").await?
        }
        ProjectionsCommand::New(_) | ProjectionsCommand::Build(_) | ProjectionsCommand::Test(_) => {
            return Ok(true)
        }
        ProjectionsCommand::DeadLetters { name, all, .. } => Output::Letters(
            client
                .send(
                    get,
                    &format!("/admin/projections/{name}/dead-letters?all={all}"),
                    None,
                )
                .await?,
        ),
    };
    if cli.server.json {
        match &output {
            Output::List(v) => print_json(v),
            Output::Status(v) => print_json(v),
            Output::Action(v) => print_json(v),
            Output::Deleted(v) => print_json(v),
            Output::Stats(v) => print_json(v),
            Output::Letters(v) => print_json(v),
        }?;
        return Ok(true);
    }
    match output {
        Output::List(list) => print_table(&list),
        Output::Status(status) => print_status(&status),
        Output::Action(answer) => {
            match &answer.outcome {
                Outcome::Done(outcome) => println!("{outcome}"),
                Outcome::Replay(replay) => println!(
                    "replayed {}, still failing {}",
                    replay.replayed,
                    replay.still_failing.len()
                ),
            }
            print_status(&answer.projection);
        }
        Output::Deleted(deleted) => println!(
            "{}{}",
            deleted.outcome,
            if deleted.drop_tables {
                " (tables dropped)"
            } else {
                ""
            }
        ),
        Output::Stats(stats) => print_stats(&stats),
        Output::Letters(letters) => print_dead_letters(&letters),
    }
    Ok(true)
}

/// Prints an answer as the server's JSON (`--json`).
pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Invalid(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// `?key=value&…` from `--set key=value` arguments (keys and values checked by the server).
fn settings_query(settings: &[String]) -> Result<String, CliError> {
    let mut pairs = Vec::with_capacity(settings.len());
    for setting in settings {
        let (key, value) = setting
            .split_once('=')
            .ok_or_else(|| CliError::Invalid(format!("--set {setting:?}: expected KEY=VALUE")))?;
        let safe = |text: &str| {
            !text.is_empty()
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !safe(key) || !safe(value) {
            return Err(CliError::Invalid(format!(
                "--set {setting:?}: keys and values are letters, digits, '_' and '-'"
            )));
        }
        pairs.push(format!("{key}={value}"));
    }
    Ok(if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    })
}

async fn action(client: &Client, name: &str, action: &str) -> Result<Output, CliError> {
    Ok(Output::Action(
        client
            .send(
                reqwest::Method::POST,
                &format!("/admin/projections/{name}/{action}"),
                None,
            )
            .await?,
    ))
}

/// Uploads a component (`PUT /admin/projections/{name}`, or `POST /admin/projections` for the
/// name it declares) and, when the server answers `202 Accepted` (a large component still
/// compiling), follows the deploy until it ends, with a line on stderr unless `quiet`.
pub(crate) async fn deploy(
    client: &Client,
    name: Option<&str>,
    query: &str,
    bytes: Vec<u8>,
    quiet: bool,
) -> Result<ActionAnswer, CliError> {
    let digest = format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&bytes))
    );
    let (method, path) = match name {
        Some(name) => (
            reqwest::Method::PUT,
            format!("/admin/projections/{name}{query}"),
        ),
        None => (reqwest::Method::POST, format!("/admin/projections{query}")),
    };
    let (status, text) = client
        .request(method, &path, &[], Some((bytes, digest)))
        .await?;
    if status != reqwest::StatusCode::ACCEPTED {
        return decode(status, text, &path);
    }
    let mut job: DeployJobBody = decode(status, text, &path)?;
    let started = Instant::now();
    let mut stderr = std::io::stderr();
    loop {
        match job.status.as_str() {
            "succeeded" => {
                if !quiet {
                    let _ = writeln!(stderr);
                }
                return job.result.ok_or_else(|| {
                    CliError::Invalid(format!("deploy {} succeeded without a result", job.id))
                });
            }
            "failed" => {
                if !quiet {
                    let _ = writeln!(stderr);
                }
                let problem = job.problem.unwrap_or_default();
                let text = |key: &str| problem[key].as_str().unwrap_or_default().to_owned();
                return Err(CliError::Problem {
                    status: problem["status"]
                        .as_u64()
                        .and_then(|s| u16::try_from(s).ok())
                        .unwrap_or(500),
                    title: text("title"),
                    detail: text("detail"),
                });
            }
            _ => {}
        }
        if !quiet {
            let _ = write!(
                stderr,
                "\r{}: compiling and activating ({} bytes), {:.0} s",
                job.projection.as_deref().unwrap_or("component"),
                job.size_bytes,
                started.elapsed().as_secs_f64()
            );
            let _ = stderr.flush();
        }
        tokio::time::sleep(DEPLOY_POLL).await;
        job = client
            .send(
                reqwest::Method::GET,
                &format!("/admin/deploys/{}", job.id),
                None,
            )
            .await?;
    }
}

/// Polls the status until the rebuild is cut over (or fails), drawing a progress bar on stderr.
async fn follow_rebuild(
    client: &Client,
    name: &str,
    quiet: bool,
) -> Result<ProjectionStatusBody, CliError> {
    let started = Instant::now();
    let mut stderr = std::io::stderr();
    loop {
        let status: ProjectionStatusBody = client
            .send(
                reqwest::Method::GET,
                &format!("/admin/projections/{name}"),
                None,
            )
            .await?;
        let Some(rebuild) = &status.rebuild else {
            if !quiet {
                let _ = writeln!(stderr);
                eprintln!(
                    "{name}: rebuilt and live in {:.1} s (namespace {})",
                    started.elapsed().as_secs_f64(),
                    status.namespace
                );
            }
            return Ok(status);
        };
        if rebuild.status == "failed" {
            let _ = writeln!(stderr);
            return Err(CliError::Invalid(format!(
                "the rebuild of {name} failed (the live version is untouched): {}",
                rebuild.last_error.as_deref().unwrap_or("unknown error")
            )));
        }
        if !quiet {
            let _ = write!(stderr, "\r{}", progress_line(rebuild));
            let _ = stderr.flush();
        }
        tokio::time::sleep(REBUILD_POLL).await;
    }
}

/// `[#######.......]  45.0%  450000/1000000 events  18000 ev/s  ETA 31 s`
pub fn progress_line(rebuild: &RebuildBody) -> String {
    let eta = rebuild
        .eta_seconds
        .map(|s| format!("ETA {s:.0} s"))
        .unwrap_or_else(|| "ETA ?".to_owned());
    format!(
        "{}  {:.0} ev/s  {eta}   ",
        bar(rebuild.events_done, rebuild.events_total),
        rebuild.events_per_second,
    )
}

/// `[#######.......]  45.0%  450000/1000000 events`
pub fn bar(done: i64, total: i64) -> String {
    let total = total.max(done);
    let fraction = if total > 0 {
        done as f64 / total as f64
    } else {
        1.0
    };
    let filled = ((fraction * BAR_WIDTH as f64).round() as usize).min(BAR_WIDTH);
    format!(
        "[{}{}] {:5.1}%  {done}/{total} events",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled),
        fraction * 100.0,
    )
}

fn short(sha: &str) -> String {
    sha.chars().take(12).collect()
}

fn print_table(list: &ProjectionList) {
    println!(
        "{:<20} {:<11} {:>7} {:<12} {:<24} {:>10} {:>8} {:>6}",
        "NAME", "STATUS", "VERSION", "SHA256", "SOURCE", "POSITION", "LAG", "ERRORS"
    );
    for p in &list.projections {
        let status = match &p.rebuild {
            Some(rebuild) if p.status == "rebuilding" => {
                format!("rebuilding {}", rebuild.events_done)
            }
            _ => p.status.clone(),
        };
        println!(
            "{:<20} {:<11} {:>7} {:<12} {:<24} {:>10} {:>8} {:>6}",
            p.name,
            status,
            p.schema_version,
            short(&p.sha256),
            p.source,
            p.checkpoint
                .as_ref()
                .map_or_else(|| "-".to_owned(), |c| c.position.to_string()),
            p.lag_events,
            p.error_count,
        );
    }
}

fn print_dead_letters(list: &DeadLetterList) {
    println!(
        "{:>10} {:<36} {:<16} {:>8} {:<9} ERROR",
        "POSITION", "EVENT ID", "TYPE", "ATTEMPTS", "RESOLVED"
    );
    for letter in &list.dead_letters {
        println!(
            "{:>10} {:<36} {:<16} {:>8} {:<9} {}",
            letter.global_position,
            letter.event_id,
            letter.event_type,
            letter.attempts,
            if letter.resolved_at.is_some() {
                "yes"
            } else {
                "no"
            },
            letter.error,
        );
    }
}

fn print_status(projection: &ProjectionStatusBody) {
    println!(
        "{}: {} (version {}, sha256 {}, source {})",
        projection.name,
        projection.status,
        projection.schema_version,
        short(&projection.sha256),
        projection.source,
    );
    println!(
        "  checkpoint {} · lag {} events / {} s · errors {}",
        projection
            .checkpoint
            .as_ref()
            .map_or_else(|| "-".to_owned(), |c| c.position.to_string()),
        projection.lag_events,
        projection.lag_seconds,
        projection.error_count,
    );
    if let Some(error) = &projection.last_error {
        println!("  last error: {error}");
    }
    if let Some(error) = &projection.last_deploy_error {
        println!("  last deploy error: {error}");
    }
    if let Some(rebuild) = &projection.rebuild {
        println!("  rebuild: {}", progress_line(rebuild));
    }
}

fn print_stats(stats: &OutboxStatsBody) {
    println!(
        "{} events in the outbox (last position {}), oldest unprocessed: {}",
        stats.events,
        stats
            .last_position
            .map_or_else(|| "-".to_owned(), |p| p.to_string()),
        stats
            .oldest_unprocessed_at
            .map_or_else(|| "none".to_owned(), |at| at.to_rfc3339())
    );
    for p in &stats.projections {
        println!(
            "  {:<20} position {:>10}  lag {:>8} events",
            p.name, p.position, p.lag_events
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_a_query() {
        assert_eq!(settings_query(&[]).unwrap(), "");
        let query = settings_query(&["on_poison=skip".into(), "fuel=1000".into()]).unwrap();
        assert_eq!(query, "?on_poison=skip&fuel=1000");
        assert!(settings_query(&["nonsense".into()]).is_err());
        assert!(settings_query(&["a=b&c=d".into()]).is_err());
    }

    #[test]
    fn progress_line_shows_fraction_rate_and_eta() {
        let line = progress_line(&RebuildBody {
            status: "running".into(),
            purpose: "rebuild".into(),
            sha256: String::new(),
            schema_version: 2,
            namespace: String::new(),
            events_done: 250,
            events_total: 1000,
            events_per_second: 50.0,
            eta_seconds: Some(15.0),
            started_at: chrono::Utc::now(),
            requested_by: String::new(),
            last_error: None,
        });
        assert!(
            line.starts_with("[########......................]  25.0%"),
            "{line}"
        );
        assert!(line.contains("250/1000 events"), "{line}");
        assert!(line.contains("50 ev/s"), "{line}");
        assert!(line.contains("ETA 15 s"), "{line}");
    }
}
