//! `wallex bench projections`: projection throughput, the WASM/native ratio, and (with `--lag-url`)
//! commit-to-read-model lag of a running server.
//!
//! Why it exists: the projection runtime has speed targets (events/s for the three bundled
//! components, WASM at least 0.8 of native, lag p95 under 50 ms) that are checked by hand on a
//! quiet machine, never by timed tests. Throughput: preloads `--events` `WalletCreated` events into
//! a bench database, then for each scenario drops the projections' tables and checkpoints and
//! times workers from the start of the outbox until caught up. The native baseline is a Rust
//! read model producing exactly the mutations of the WASM one, run by the same worker — so the
//! ratio isolates the cost of the sandbox.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{format_latencies, latency_histogram};
use crate::config::DatabaseConfig;
use wallex_control::Projections;
use wallex_core::db;
use wallex_runtime::schema::ProjectionSchema;
use wallex_runtime::worker::BatchHandler;
use wallex_runtime::{checkpoint, ProjectionConfig};
use wallex_sandbox::bundled;
use wallex_sandbox::engine::{wit, ComponentError, ProjectionRuntime};

/// How often the bench checks whether the workers caught up.
const CATCH_UP_POLL: Duration = Duration::from_millis(5);
/// Longest any scenario may take.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(1800);
/// Name of the native baseline projection.
const NATIVE_NAME: &str = "native-read-model";

/// Settings of `wallex bench projections`.
#[derive(Debug, Clone, Args)]
pub struct ProjectionBenchArgs {
    /// Events to preload (and project in every scenario).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(i64).range(1..=100_000_000))]
    pub events: i64,
    /// Database of the bench (created if missing; its projections are dropped and rebuilt).
    #[arg(
        long,
        env = "WALLEX_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/wallex_bench_projections"
    )]
    pub database_url: String,
    /// Events per batch.
    #[arg(long, default_value_t = wallex_runtime::config::DEFAULT_BATCH_SIZE)]
    pub batch_size: u32,
    /// Instead of throughput: measure commit-to-read-model lag against the server at this URL
    /// (run `wallex bench create` against it at the same time for load).
    #[arg(long)]
    pub lag_url: Option<String>,
    /// Probes of the lag measurement.
    #[arg(long, default_value_t = 1_000)]
    pub lag_samples: u32,
}

/// Errors of the projections bench (each ends the bench).
#[derive(Debug, thiserror::Error)]
pub enum ProjectionBenchError {
    /// The bench database could not be created, reached or migrated.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// A query on the bench database failed.
    #[error("bench database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// The projections could not be set up in the bench process.
    #[error(transparent)]
    Load(#[from] wallex_control::LoadError),
    /// A bundled component could not be loaded or described.
    #[error(transparent)]
    Component(#[from] ComponentError),
    /// A checkpoint could not be read.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// A scenario did not catch up within the time limit; names the scenario.
    #[error("scenario {0} did not catch up within {SCENARIO_TIMEOUT:?}")]
    Timeout(String),
    /// A lag probe's request failed, or the bench could not prepare its run; the message says
    /// what.
    #[error("lag probe failed: {0}")]
    Probe(String),
}

/// A handler and what it declares.
type Described = (wit::ProjectionInfo, Arc<dyn BatchHandler>);

/// Runs the bench and prints its report.
pub async fn run(args: ProjectionBenchArgs) -> Result<(), ProjectionBenchError> {
    if let Some(url) = &args.lag_url {
        return lag(url, args.lag_samples).await;
    }
    let config = DatabaseConfig {
        database_url: args.database_url.clone(),
        database_pool_size: 16,
        database_acquire_timeout_ms: 30_000,
        database_statement_timeout_ms: 600_000,
    };
    db::ensure_database(&config).await?;
    let pool = db::pool(&config)?;
    db::migrate(&pool).await?;
    preload(&pool, args.events).await?;

    let runtime = ProjectionRuntime::new(Default::default())?;
    let mut components = Vec::new();
    for (origin, bytes) in bundled::BUNDLED {
        let component = runtime.load(origin, bytes)?;
        let info = component.describe()?;
        components.push((info, Arc::new(component) as Arc<dyn BatchHandler>));
    }
    let native_info = {
        let mut info = components[0].0.clone();
        info.name = NATIVE_NAME.to_owned();
        info
    };
    let native: Arc<dyn BatchHandler> = Arc::new(NativeReadModel);

    println!(
        "projection throughput: {} events, batch size {}",
        args.events, args.batch_size
    );
    let mut rates = Vec::new();
    let scenarios: Vec<(&str, Vec<Described>)> = vec![
        ("read-model (wasm)", vec![components[0].clone()]),
        ("ledger (wasm)", vec![components[1].clone()]),
        ("audit (wasm)", vec![components[2].clone()]),
        ("all three (wasm)", components.clone()),
        ("read-model (native)", vec![(native_info, native)]),
    ];
    for (label, handlers) in scenarios {
        let rate = scenario(&pool, label, handlers, args.batch_size, args.events).await?;
        rates.push(rate);
    }
    println!(
        "WASM/native read-model ratio: {:.2}",
        rates[0] / rates[4].max(f64::MIN_POSITIVE)
    );
    pool.close().await;
    Ok(())
}

/// Fills the event store and outbox with `events` `WalletCreated` events (one wallet each),
/// unless exactly that many are already there.
pub async fn preload(pool: &PgPool, events: i64) -> Result<(), sqlx::Error> {
    match wallex_core::seed::wallet_created_events(pool, events).await? {
        None => println!("preload: {events} events already present"),
        Some(took) => println!("preload: {events} events in {:.1} s", took.as_secs_f64()),
    }
    Ok(())
}

/// Rebuilds the given projections from the start of the outbox; returns events/s.
async fn scenario(
    pool: &PgPool,
    label: &str,
    handlers: Vec<Described>,
    batch_size: u32,
    events: i64,
) -> Result<f64, ProjectionBenchError> {
    let mut registered = Vec::new();
    let mut names = Vec::new();
    for (info, handler) in handlers {
        let schema = ProjectionSchema::from_info(&info).map_err(|e| {
            ProjectionBenchError::Probe(format!("bundled declaration rejected: {e}"))
        })?;
        sqlx::raw_sql(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            schema.namespace
        ))
        .execute(pool)
        .await?;
        checkpoint::delete(&mut *pool.acquire().await?, &schema.name).await?;
        names.push(schema.name.clone());
        registered.push((schema, handler));
    }
    let mut config = ProjectionConfig::default();
    config.defaults.batch_size = batch_size;
    let projections = Projections::with_handlers(pool.clone(), config, registered).await?;
    let target = wallex_core::outbox::last_cursor(pool)
        .await
        .map_err(|e| ProjectionBenchError::Probe(e.to_string()))?
        .ok_or_else(|| ProjectionBenchError::Probe("the outbox is empty".to_owned()))?;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let tasks = projections.start(stop.clone());
    loop {
        let mut done = true;
        for name in &names {
            if checkpoint::read(pool, name).await?.map(|c| c.cursor) != Some(target) {
                done = false;
            }
        }
        if done {
            break;
        }
        if started.elapsed() > SCENARIO_TIMEOUT {
            stop.cancel();
            return Err(ProjectionBenchError::Timeout(label.to_owned()));
        }
        tokio::time::sleep(CATCH_UP_POLL).await;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    let rate = events as f64 / elapsed.as_secs_f64();
    println!(
        "  {label:<22} {events} events in {:>6.2} s = {rate:>9.0} events/s",
        elapsed.as_secs_f64()
    );
    Ok(rate)
}

/// The read-model projection in native Rust: the same mutations as `projections/read-model`.
struct NativeReadModel;

impl BatchHandler for NativeReadModel {
    fn origin(&self) -> &str {
        "native:read-model"
    }

    fn handle(
        &self,
        batch: &[wit::Event],
        _limits: &wallex_sandbox::engine::RuntimeLimits,
    ) -> Result<Vec<wit::Mutation>, ComponentError> {
        batch.iter().map(native_wallet_created).collect()
    }
}

fn native_wallet_created(event: &wit::Event) -> Result<wit::Mutation, ComponentError> {
    let reject = |message: String| ComponentError::Rejected {
        projection: NATIVE_NAME.to_owned(),
        message,
        position: Some(event.global_position),
    };
    let data: serde_json::Value =
        serde_json::from_str(&event.data).map_err(|e| reject(e.to_string()))?;
    let text = |field: &str| {
        data[field]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| reject(format!("{field} is missing or not a string")))
    };
    let created_at = text("createdAt")?;
    let value = |column: &str, value| wit::ColumnValue {
        column: column.into(),
        value,
    };
    Ok(wit::Mutation::Upsert(wit::UpsertOp {
        table: "wallets".into(),
        values: vec![
            value("id", wit::Value::Text(text("walletId")?)),
            value("owner", wit::Value::Text(text("ownerId")?)),
            value("balance", wit::Value::Decimal(text("initialBalance")?)),
            value("currency", wit::Value::Text(text("currency")?)),
            value("version", wit::Value::S64(event.stream_version)),
            value("created_at", wit::Value::Timestamp(created_at.clone())),
            value("updated_at", wit::Value::Timestamp(created_at)),
        ],
        accumulate: vec![],
        guard: vec!["version".into()],
    }))
}

/// Commit-to-read-model lag as a client sees it: POST a wallet (the response means committed),
/// then read it back with `minPosition`; the lag is from the POST's response to the read's.
async fn lag(url: &str, samples: u32) -> Result<(), ProjectionBenchError> {
    let client = reqwest::Client::new();
    let mut histogram = latency_histogram();
    let probe = |e: reqwest::Error| ProjectionBenchError::Probe(e.to_string());
    let mut failures = 0_u32;
    for i in 0..samples {
        let id = format!("lag-{}-{i}", uuid::Uuid::new_v4().simple());
        let created = client
            .post(format!("{url}/wallets"))
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"walletId":"{id}","ownerId":"lag-probe","initialBalance":"1.00"}}"#
            ))
            .send()
            .await
            .map_err(probe)?;
        let committed = Instant::now();
        let Some(position) = created
            .headers()
            .get("x-global-position")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
        else {
            failures += 1;
            continue;
        };
        let read = client
            .get(format!(
                "{url}/projections/read-model/wallets/{id}?minPosition={position}"
            ))
            .send()
            .await
            .map_err(probe)?;
        if !read.status().is_success() {
            failures += 1;
            continue;
        }
        let lag = committed.elapsed();
        let _ = histogram.record(u64::try_from(lag.as_micros()).unwrap_or(u64::MAX).max(1));
    }
    println!(
        "commit-to-read-model lag over {} probes ({failures} failed): {}",
        histogram.len(),
        format_latencies(&histogram)
    );
    Ok(())
}
