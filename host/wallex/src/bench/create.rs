//! `wallex bench create`: wallet-creation load against a running server.
//!
//! Runs `--concurrency` clients for `--duration` seconds, each creating wallets with fresh
//! idempotency keys, then (unless `--no-replays`) the same clients replaying requests they already
//! completed, and prints throughput and latency percentiles of both phases.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;

use super::{format_latencies, latency_histogram};

/// Completed requests a client keeps for the replay phase.
const MAX_REPLAYABLE_PER_CLIENT: usize = 10_000;

/// Settings of `wallex bench create`.
#[derive(Debug, Clone, Args)]
pub struct CreateBenchArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,
    /// Base URL of the server.
    #[arg(long, env = "WALLEX_URL", default_value = "http://127.0.0.1:3000")]
    pub url: String,
    /// Skip the idempotent-replay phase.
    #[arg(long)]
    pub no_replays: bool,
}

/// Errors of the bench itself (not of the requests it measures).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The server did not answer the `GET /healthz` made before the load.
    #[error("the server at {url} is not reachable: {source}")]
    Unreachable {
        /// The server's base URL.
        url: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// A client task panicked or was cancelled.
    #[error("a client task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Results of one phase.
#[derive(Debug)]
pub struct PhaseReport {
    /// The phase: `create` or `replay`.
    pub name: &'static str,
    /// Wall-clock time of the phase.
    pub elapsed: Duration,
    /// Latency of every request, answered or not, in microseconds.
    pub latencies: Histogram<u64>,
    /// Requests answered, by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no HTTP answer.
    pub transport_errors: u64,
}

impl PhaseReport {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            elapsed: Duration::ZERO,
            latencies: latency_histogram(),
            statuses: BTreeMap::new(),
            transport_errors: 0,
        }
    }

    fn merge(&mut self, other: &PhaseReport) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latencies.add(&other.latencies);
        for (status, count) in &other.statuses {
            *self.statuses.entry(*status).or_default() += count;
        }
        self.transport_errors += other.transport_errors;
    }

    /// Requests sent in the phase, answered or not.
    pub fn requests(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.transport_errors
    }

    /// The phase's figures as printed: throughput, statuses, latency percentiles.
    pub fn summary(&self) -> String {
        let rate = self.requests() as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON);
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(status, count)| format!("{status}: {count}"))
            .collect();
        format!(
            "{}: {} requests in {:.1} s = {:.0} req/s  [{}; transport errors: {}]\n  latency {}",
            self.name,
            self.requests(),
            self.elapsed.as_secs_f64(),
            rate,
            statuses.join(", "),
            self.transport_errors,
            format_latencies(&self.latencies),
        )
    }
}

struct Completed {
    key: String,
    body: String,
}

/// Runs the bench and prints its report.
pub async fn run(args: CreateBenchArgs) -> Result<Vec<PhaseReport>, BenchError> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency as usize)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(BenchError::Client)?;
    let base = args.url.trim_end_matches('/').to_owned();
    client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .map_err(|source| BenchError::Unreachable {
            url: base.clone(),
            source,
        })?;

    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let duration = Duration::from_secs(args.duration);
    println!(
        "bench create: {} clients, {} s per phase, against {base}",
        args.concurrency, args.duration
    );

    let started = Instant::now();
    let mut handles = Vec::new();
    for client_no in 0..args.concurrency {
        let client = client.clone();
        let url = format!("{base}/wallets");
        let run_id = run_id.clone();
        handles.push(tokio::spawn(async move {
            let mut report = PhaseReport::new("create");
            let mut completed = Vec::new();
            let deadline = Instant::now() + duration;
            let mut n: u64 = 0;
            while Instant::now() < deadline {
                n += 1;
                let id = format!("bench-{run_id}-{client_no}-{n}");
                let body = format!(
                    r#"{{"walletId":"{id}","ownerId":"owner-{client_no}","initialBalance":100.00}}"#
                );
                let status = send(&client, &url, &id, &body, &mut report).await;
                if status == Some(201) && completed.len() < MAX_REPLAYABLE_PER_CLIENT {
                    completed.push(Completed { key: id, body });
                }
            }
            (report, completed)
        }));
    }
    let mut create = PhaseReport::new("create");
    let mut replayable = Vec::new();
    for handle in handles {
        let (report, completed) = handle.await?;
        create.merge(&report);
        replayable.push(completed);
    }
    create.elapsed = started.elapsed();
    println!("{}", create.summary());
    let mut reports = vec![create];

    if !args.no_replays {
        let started = Instant::now();
        let mut handles = Vec::new();
        for completed in replayable.into_iter().filter(|c| !c.is_empty()) {
            let client = client.clone();
            let url = format!("{base}/wallets");
            handles.push(tokio::spawn(async move {
                let mut report = PhaseReport::new("replay");
                let deadline = Instant::now() + duration;
                for request in completed.iter().cycle() {
                    if Instant::now() >= deadline {
                        break;
                    }
                    send(&client, &url, &request.key, &request.body, &mut report).await;
                }
                report
            }));
        }
        let mut replay = PhaseReport::new("replay");
        for handle in handles {
            replay.merge(&handle.await?);
        }
        replay.elapsed = started.elapsed();
        println!("{}", replay.summary());
        reports.push(replay);
    }
    Ok(reports)
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &str,
    report: &mut PhaseReport,
) -> Option<u16> {
    let sent = Instant::now();
    let result = client
        .post(url)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_owned())
        .send()
        .await;
    let status = match result {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read the body so the connection is reused.
            let _ = response.bytes().await;
            Some(status)
        }
        Err(_) => None,
    };
    let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
    let _ = report.latencies.record(micros.max(1));
    match status {
        Some(status) => *report.statuses.entry(status).or_default() += 1,
        None => report.transport_errors += 1,
    }
    status
}
