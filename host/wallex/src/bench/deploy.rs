//! `wallex bench deploy` and `wallex bench rebuild`: how fast a new version goes live.
//!
//! Why it exists: the registry has two speed targets, checked by hand on a quiet machine: a
//! deployed component processes events within 200 ms of its upload (p50), and the read-model
//! rebuilds 1,000,000 events in under a minute.
//! - `deploy` uploads `--deploys` distinct builds of the bundled read-model (the same code with a
//!   different custom section, so a different SHA-256) to a running server through the admin API.
//!   For each it times the upload's answer (validated, stored, active on that instance) and the
//!   first event applied after it: a wallet created right after the answer, read back with
//!   `minPosition` — the batch that applies it runs on the new version.
//! - `rebuild` preloads `--events` events into a bench database, lets the read-model catch up
//!   live, then rebuilds it blue/green and times the rebuild from request to cut-over; then, in
//!   the same run, a dry run of the read-model over the same log, with its diff against the live
//!   tables (the goal: 1,000,000 events in under a minute), as a ratio to the rebuild.

use std::time::{Duration, Instant};

use clap::Args;

use super::{format_latencies, latency_histogram};
use crate::config::DatabaseConfig;
use wallex_control::Projections;
use wallex_core::db;
use wallex_runtime::{checkpoint, registry, ProjectionConfig};
use wallex_sandbox::bundled;

/// How often the rebuild bench checks for the cut-over.
const REBUILD_POLL: Duration = Duration::from_millis(20);
/// Longest the rebuild bench waits for the live catch-up and for the rebuild.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(1800);
/// The projection both benches use.
const PROJECTION: &str = "read-model";

/// Settings of `wallex bench deploy`.
#[derive(Debug, Clone, Args)]
pub struct DeployBenchArgs {
    /// Base URL of the server.
    #[arg(long, env = "WALLEX_URL", default_value = crate::cli::DEFAULT_URL)]
    pub url: String,
    /// The server's admin token.
    #[arg(long, env = "WALLEX_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Deploys to time.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub deploys: u32,
}

/// Settings of `wallex bench rebuild`.
#[derive(Debug, Clone, Args)]
pub struct RebuildBenchArgs {
    /// Events to preload and rebuild.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(i64).range(1..=100_000_000))]
    pub events: i64,
    /// Database of the bench (created if missing; its outbox is replaced by `--events` events).
    #[arg(
        long,
        env = "WALLEX_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/wallex_bench_rebuild"
    )]
    pub database_url: String,
    /// Events per rebuild batch.
    #[arg(long, default_value_t = wallex_runtime::config::DEFAULT_REBUILD_BATCH_SIZE)]
    pub batch_size: u32,
}

/// Errors of the deploy and rebuild benches (each ends the bench).
#[derive(Debug, thiserror::Error)]
pub enum DeployBenchError {
    /// A request to the server failed or its answer could not be read.
    #[error("request to {url} failed: {source}")]
    Http {
        /// The URL requested.
        url: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered, but not as the bench needs (a deploy not activated, a create or a
    /// read that failed); the message says what.
    #[error("{0}")]
    Refused(String),
    /// The bench database could not be created, reached or migrated.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// A query on the bench database failed.
    #[error("bench database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// A checkpoint could not be read or reset.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// The projections could not be loaded in the bench process.
    #[error(transparent)]
    Load(#[from] wallex_control::LoadError),
    /// A deploy or rebuild in the bench process was refused.
    #[error(transparent)]
    Deploy(#[from] wallex_control::OperationError),
    /// What the bench waited for did not happen within its time limit; names what.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// `bytes` (a component) with a custom section naming `tag` appended: same code, new digest.
pub fn tagged_build(bytes: &[u8], tag: &str) -> Vec<u8> {
    let name = b"wallex-bench";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    let mut len = payload.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(&payload);
    out
}

fn read_model_bytes() -> &'static [u8] {
    bundled::BUNDLED
        .iter()
        .find(|(origin, _)| origin.ends_with(PROJECTION))
        .map(|(_, bytes)| *bytes)
        .unwrap_or_default()
}

/// Runs `wallex bench deploy`.
pub async fn run_deploy(args: DeployBenchArgs) -> Result<(), DeployBenchError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|source| DeployBenchError::Http {
            url: args.url.clone(),
            source,
        })?;
    let base = args.url.trim_end_matches('/').to_owned();
    let http = |url: &str| {
        let url = url.to_owned();
        move |source| DeployBenchError::Http { url, source }
    };
    let mut answered = latency_histogram();
    let mut applied = latency_histogram();
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    for round in 0..args.deploys {
        let bytes = tagged_build(read_model_bytes(), &format!("{run_id}-{round}"));
        let digest = registry::sha256_hex(&bytes);
        let url = format!("{base}/admin/projections/{PROJECTION}");
        let started = Instant::now();
        let response = client
            .put(&url)
            .bearer_auth(&args.token)
            .header("content-type", wallex_http::admin::WASM_CONTENT_TYPE)
            .body(bytes)
            .send()
            .await
            .map_err(http(&url))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.map_err(http(&url))?;
        if !status.is_success() || body["projection"]["runningHere"]["sha256"] != digest {
            return Err(DeployBenchError::Refused(format!(
                "deploy {round} was not activated ({status}): {body}"
            )));
        }
        let upload = started.elapsed();
        let wallet = format!("deploy-bench-{run_id}-{round}");
        let create = format!("{base}/wallets");
        let created = client
            .post(&create)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"walletId":"{wallet}","ownerId":"bench","initialBalance":1}}"#
            ))
            .send()
            .await
            .map_err(http(&create))?;
        let position = created
            .headers()
            .get("x-global-position")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                DeployBenchError::Refused(format!("create answered {}", created.status()))
            })?;
        let read = format!(
            "{base}/projections/{PROJECTION}/wallets/{wallet}?minPosition={position}&timeoutMs=10000"
        );
        let reply = client.get(&read).send().await.map_err(http(&read))?;
        if !reply.status().is_success() {
            return Err(DeployBenchError::Refused(format!(
                "the new version did not apply the event: {}",
                reply.status()
            )));
        }
        let first_event = started.elapsed();
        answered.saturating_record(upload.as_micros() as u64);
        applied.saturating_record(first_event.as_micros() as u64);
    }
    println!(
        "deploy: {} deploys of a {} KiB read-model to {base}",
        args.deploys,
        read_model_bytes().len() / 1024
    );
    println!(
        "  upload answered (active)   {}",
        format_latencies(&answered)
    );
    println!(
        "  first event applied        {}",
        format_latencies(&applied)
    );
    Ok(())
}

/// Runs `wallex bench rebuild`.
pub async fn run_rebuild(args: RebuildBenchArgs) -> Result<(), DeployBenchError> {
    let database = DatabaseConfig {
        database_url: args.database_url.clone(),
        database_pool_size: 16,
        database_acquire_timeout_ms: 30_000,
        database_statement_timeout_ms: 600_000,
    };
    db::ensure_database(&database).await?;
    let pool = db::pool(&database)?;
    db::migrate(&pool).await?;
    super::projections::preload(&pool, args.events).await?;
    sqlx::raw_sql("DROP SCHEMA IF EXISTS proj_read_model_v1, projection_read_model CASCADE")
        .execute(&pool)
        .await?;
    {
        let mut conn = pool.acquire().await?;
        checkpoint::delete_all(&mut conn).await?;
        registry::delete_all_deployments(&mut conn).await?;
    }
    let stale: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'proj_read_model_v1_b%'",
    )
    .fetch_all(&pool)
    .await?;
    for namespace in stale {
        sqlx::raw_sql(&format!("DROP SCHEMA \"{namespace}\" CASCADE"))
            .execute(&pool)
            .await?;
    }
    let config = ProjectionConfig {
        rebuild_batch_size: args.batch_size,
        ..ProjectionConfig::default()
    };
    let projections = Projections::load_sources(
        pool.clone(),
        config,
        vec![("bundled:read-model".to_owned(), read_model_bytes().to_vec())],
    )
    .await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks = projections.start(stop.clone());
    let live = Instant::now();
    wait(&pool, "live catch-up", caught_up).await?;
    println!(
        "rebuild: live read-model caught up with {} events in {:.1} s",
        args.events,
        live.elapsed().as_secs_f64()
    );
    let before = live_namespace(&pool).await?;
    let started = Instant::now();
    projections.rebuild(PROJECTION, "bench").await?;
    wait(&pool, "rebuild", cut_over(before)).await?;
    let elapsed = started.elapsed();
    println!(
        "  rebuild of {} events (batch {}) into {}: {:.1} s = {:.0} events/s",
        args.events,
        args.batch_size,
        live_namespace(&pool).await?,
        elapsed.as_secs_f64(),
        args.events as f64 / elapsed.as_secs_f64()
    );
    let started = Instant::now();
    let run = projections
        .start_dry_run(
            tagged_build(read_model_bytes(), "dry-run"),
            wallex_control::dry_run::DryRunRequest {
                name: Some(PROJECTION.to_owned()),
                keep: false,
                max_events: None,
            },
            "bench",
        )
        .await?;
    let run = loop {
        let now = projections
            .dry_run(run.id)
            .await?
            .ok_or(DeployBenchError::Timeout("dry run vanished"))?;
        if now.status.is_finished() {
            break now;
        }
        if started.elapsed() > REBUILD_TIMEOUT {
            return Err(DeployBenchError::Timeout("dry run"));
        }
        tokio::time::sleep(REBUILD_POLL).await;
    };
    let dry = started.elapsed();
    let (rows, differing) = run.report.tables.iter().fold((0, 0), |(r, d), t| {
        (
            r + t.rows.unwrap_or(0),
            d + t.missing + t.extra + t.different,
        )
    });
    println!(
        "  dry run of {} events with its diff: {} in {:.1} s (replay {:.1} s, compare {:.1} s) = {:.0} events/s, {:.2}x the rebuild; {rows} rows compared, {differing} differ",
        run.events_read,
        run.status.as_str(),
        dry.as_secs_f64(),
        run.report.replay_ms as f64 / 1000.0,
        run.report.compare_ms as f64 / 1000.0,
        run.events_read as f64 / dry.as_secs_f64(),
        dry.as_secs_f64() / elapsed.as_secs_f64(),
    );
    if let Some(error) = &run.error {
        println!("  dry run error: {error}");
    }
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    pool.close().await;
    Ok(())
}

async fn live_namespace(pool: &sqlx::PgPool) -> Result<String, sqlx::Error> {
    registry::deployment(pool, PROJECTION)
        .await?
        .map(|d| d.namespace)
        .ok_or(sqlx::Error::RowNotFound)
}

/// Whether the read-model's checkpoint is the last outbox row.
async fn caught_up(pool: sqlx::PgPool) -> Result<bool, sqlx::Error> {
    let checkpoint = checkpoint::read(&pool, PROJECTION)
        .await
        .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    let last = wallex_core::outbox::last_cursor(&pool)
        .await
        .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    Ok(checkpoint.is_some_and(|c| Some(c.cursor) == last))
}

/// Whether the rebuild replaced `before` as the live namespace.
fn cut_over(
    before: String,
) -> impl Fn(
    sqlx::PgPool,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, sqlx::Error>> + Send>> {
    move |pool| {
        let before = before.clone();
        Box::pin(async move { Ok(live_namespace(&pool).await? != before) })
    }
}

async fn wait<F, Fut>(
    pool: &sqlx::PgPool,
    what: &'static str,
    done: F,
) -> Result<(), DeployBenchError>
where
    F: Fn(sqlx::PgPool) -> Fut,
    Fut: std::future::Future<Output = Result<bool, sqlx::Error>>,
{
    let deadline = Instant::now() + REBUILD_TIMEOUT;
    loop {
        if done(pool.clone()).await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DeployBenchError::Timeout(what));
        }
        tokio::time::sleep(REBUILD_POLL).await;
    }
}
