//! `wallex bench system`: the system as users run it — wallet creation against a running server
//! with its projections live, the projections' lag sampled during the load, the time they take
//! to catch up after it and, with `--pgbench-url`, PostgreSQL's own per-transaction ceiling
//! measured in the same run.
//!
//! It starts nothing itself: the server (and its projections) are whatever runs at `--url`.
//! Lag is measured as a reader would feel it: every `--sample-ms` the bench reads each
//! projection's checkpoint (`GET /projections`) and takes the age of the oldest wallet this bench
//! created after that checkpoint (by global position); 0 when it has caught up. With KurrentDB as
//! the event store, positions are KurrentDB's and PostgreSQL may commit two creates in the other
//! order: the lag is then approximate by the few milliseconds between an append and its commit.
//! Catching up is judged by the server (`caughtUp` in `GET /projections`), exactly.
//!
//! The pgbench phase runs before the load, against its own scratch database (created and
//! migrated by the bench), with the write path's four inserts in one transaction
//! (`host/benches/pgbench-4-inserts.sql`) at the same concurrency and duration.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;
use wallex_core::db::{self, DatabaseConfig};
use wallex_http::projections::PublicList;

use super::{format_latencies, latency_histogram};

/// The write path's four inserts, as pgbench runs them.
const PGBENCH_SCRIPT: &str = include_str!("../../../benches/pgbench-4-inserts.sql");
/// pgbench worker threads (one per core of the project's machine).
const PGBENCH_THREADS: u32 = 2;

/// Settings of `wallex bench system`.
#[derive(Debug, Clone, Args)]
pub struct SystemBenchArgs {
    /// Base URL of the running server.
    #[arg(long, env = "WALLEX_URL", default_value = crate::cli::DEFAULT_URL)]
    pub url: String,
    /// Concurrent clients creating wallets (and pgbench clients).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Seconds of load (and of pgbench).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,
    /// How often the projections' lag is sampled, in milliseconds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub sample_ms: u64,
    /// How long to wait for the projections to catch up after the load, in seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub catch_up_timeout: u64,
    /// Measure PostgreSQL's 4-insert per-transaction ceiling first, with pgbench, in this scratch
    /// database (created and migrated if missing; never the server's own).
    #[arg(long)]
    pub pgbench_url: Option<String>,
}

/// Why the bench could not measure.
#[derive(Debug, thiserror::Error)]
pub enum SystemBenchError {
    /// The server could not be reached or answered unexpectedly.
    #[error("{0}")]
    Server(String),
    /// The scratch database could not be prepared.
    #[error(transparent)]
    Database(#[from] db::DbError),
    /// pgbench could not be run or printed no throughput.
    #[error("pgbench: {0}")]
    Pgbench(String),
    /// A client task failed.
    #[error("a client task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The projections did not catch up in time.
    #[error("the projections did not catch up within {0} s")]
    CatchUp(u64),
}

/// Wallets this bench created: global position → when the server answered (committed).
type Committed = Arc<Mutex<BTreeMap<i64, Instant>>>;

/// Runs `wallex bench system`.
pub async fn run(args: SystemBenchArgs) -> Result<(), SystemBenchError> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency as usize)
        .build()
        .map_err(|e| SystemBenchError::Server(e.to_string()))?;
    let names: Vec<String> = checkpoints(&client, &args.url).await?.into_keys().collect();
    println!(
        "bench system: {} clients, {} s, against {} (projections: {})",
        args.concurrency,
        args.duration,
        args.url,
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    );
    let ceiling = match &args.pgbench_url {
        Some(url) => Some(pgbench(url, args.concurrency, args.duration).await?),
        None => None,
    };
    if let Some(tps) = ceiling {
        println!("pgbench 4-insert transactions: {tps:.0} tps");
    }

    let committed: Committed = Arc::default();
    let stop = CancellationToken::new();
    let sampler = tokio::spawn(sample_lag(
        client.clone(),
        args.url.clone(),
        Arc::clone(&committed),
        Duration::from_millis(args.sample_ms),
        stop.clone(),
    ));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let clients: Vec<_> = (0..args.concurrency)
        .map(|n| {
            tokio::spawn(create_until(
                client.clone(),
                args.url.clone(),
                n,
                deadline,
                Arc::clone(&committed),
            ))
        })
        .collect();
    let mut latencies = latency_histogram();
    let (mut created, mut failed) = (0_u64, 0_u64);
    for task in clients {
        let (histogram, ok, bad) = task.await?;
        let _ = latencies.add(&histogram);
        created += ok;
        failed += bad;
    }
    let elapsed = started.elapsed();
    let caught_up_in = catch_up(&client, &args.url, created > 0, args.catch_up_timeout).await?;
    stop.cancel();
    let lag = sampler.await?;
    let rate = created as f64 / elapsed.as_secs_f64();
    println!(
        "creates: {created} in {:.1} s = {rate:.0}/s ({failed} failed)",
        elapsed.as_secs_f64()
    );
    println!("  latency {}", format_latencies(&latencies));
    println!(
        "projection lag during the load ({} samples, slowest projection each time): {}",
        lag.len(),
        format_latencies(&lag)
    );
    println!(
        "caught up {:.0} ms after the load",
        caught_up_in.as_secs_f64() * 1000.0
    );
    if let Some(tps) = ceiling {
        println!(
            "ratio: {:.2} creates/s per pgbench 4-insert transaction/s",
            rate / tps.max(f64::MIN_POSITIVE)
        );
    }
    Ok(())
}

/// One client: creates wallets with fresh ids and keys until `deadline`.
async fn create_until(
    client: reqwest::Client,
    url: String,
    n: u32,
    deadline: Instant,
    committed: Committed,
) -> (Histogram<u64>, u64, u64) {
    let mut latencies = latency_histogram();
    let (mut ok, mut failed) = (0_u64, 0_u64);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut i = 0_u64;
    while Instant::now() < deadline {
        i += 1;
        let id = format!("sys-{}-{n}-{i}", &run[..8]);
        let sent = Instant::now();
        let response = client
            .post(format!("{url}/wallets"))
            .header("content-type", "application/json")
            .header("idempotency-key", &id)
            .body(format!(
                r#"{{"walletId":"{id}","ownerId":"bench","initialBalance":"10.00"}}"#
            ))
            .send()
            .await;
        let _ = latencies.record(
            u64::try_from(sent.elapsed().as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
        );
        let position = match response {
            Ok(response) if response.status().as_u16() == 201 => response
                .headers()
                .get("x-global-position")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok()),
            _ => None,
        };
        match position {
            Some(position) => {
                ok += 1;
                if let Ok(mut committed) = committed.lock() {
                    committed.insert(position, Instant::now());
                }
            }
            None => failed += 1,
        }
    }
    (latencies, ok, failed)
}

/// `GET /projections`.
async fn public_list(client: &reqwest::Client, url: &str) -> Result<PublicList, SystemBenchError> {
    client
        .get(format!("{url}/projections"))
        .send()
        .await
        .map_err(|e| SystemBenchError::Server(format!("{url} is not reachable: {e}")))?
        .json()
        .await
        .map_err(|e| SystemBenchError::Server(format!("unexpected GET /projections: {e}")))
}

/// Each projection's checkpoint position (0 before its first batch), from `GET /projections`.
async fn checkpoints(
    client: &reqwest::Client,
    url: &str,
) -> Result<BTreeMap<String, i64>, SystemBenchError> {
    Ok(public_list(client, url)
        .await?
        .projections
        .into_iter()
        .map(|p| (p.name, p.checkpoint.map_or(0, |c| c.position)))
        .collect())
}

/// Samples the slowest projection's lag until `stop`: the age of the oldest wallet this bench
/// created after its checkpoint.
async fn sample_lag(
    client: reqwest::Client,
    url: String,
    committed: Committed,
    every: Duration,
    stop: CancellationToken,
) -> Histogram<u64> {
    let mut lag = latency_histogram();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return lag,
        }
        let Ok(positions) = checkpoints(&client, &url).await else {
            continue;
        };
        let now = Instant::now();
        let slowest = positions
            .values()
            .filter_map(|&checkpoint| {
                let committed = committed.lock().ok()?;
                committed
                    .range(checkpoint + 1..)
                    .next()
                    .map(|(_, at)| now.saturating_duration_since(*at))
            })
            .max()
            .unwrap_or(Duration::ZERO);
        let _ = lag.record(
            u64::try_from(slowest.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
        );
    }
}

/// How long after the load every projection had applied every committed event (when the load
/// `created` anything). Judged by the server (`caughtUp`), not by positions: with KurrentDB as the
/// event store a later position may commit first.
async fn catch_up(
    client: &reqwest::Client,
    url: &str,
    created: bool,
    timeout_secs: u64,
) -> Result<Duration, SystemBenchError> {
    let started = Instant::now();
    if !created {
        return Ok(Duration::ZERO);
    }
    loop {
        let list = public_list(client, url).await?;
        if list.projections.iter().all(|p| p.caught_up) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(timeout_secs) {
            return Err(SystemBenchError::CatchUp(timeout_secs));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs pgbench's 4-insert transaction against a scratch database; returns transactions/s.
async fn pgbench(url: &str, clients: u32, seconds: u64) -> Result<f64, SystemBenchError> {
    let config = DatabaseConfig {
        database_url: url.to_owned(),
        database_pool_size: 1,
        database_acquire_timeout_ms: 30_000,
        database_statement_timeout_ms: 600_000,
    };
    db::ensure_database(&config).await?;
    let pool = db::pool(&config)?;
    db::migrate(&pool).await?;
    pool.close().await;
    let script = std::env::temp_dir().join(format!(
        "wallex-pgbench-{}.sql",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&script, PGBENCH_SCRIPT)
        .map_err(|e| SystemBenchError::Pgbench(e.to_string()))?;
    let output = tokio::process::Command::new("pgbench")
        .args(["-n", "-c", &clients.to_string(), "-j"])
        .arg(PGBENCH_THREADS.min(clients).to_string())
        .args(["-T", &seconds.to_string(), "-f"])
        .arg(&script)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .await;
    let _ = std::fs::remove_file(&script);
    let output = output.map_err(|e| SystemBenchError::Pgbench(format!("cannot run it: {e}")))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(SystemBenchError::Pgbench(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    parse_tps(&text).ok_or_else(|| SystemBenchError::Pgbench(format!("no tps line in: {text}")))
}

/// The `tps = N (without initial connection time)` figure of pgbench's report.
fn parse_tps(report: &str) -> Option<f64> {
    report
        .lines()
        .find(|line| line.starts_with("tps = ") && !line.contains("including"))
        .and_then(|line| line.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbench_throughput() {
        let report = "number of failed transactions: 0 (0.000%)\n\
                      latency average = 17.923 ms\n\
                      initial connection time = 41.502 ms\n\
                      tps = 3570.772153 (without initial connection time)\n";
        assert_eq!(parse_tps(report), Some(3570.772153));
        assert_eq!(parse_tps("nothing"), None);
    }
}
