//! The `wallex` command line: `serve` (the default), `migrate`, `bench …`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use wallex::bench::create::CreateBenchArgs;
use wallex::bench::projections::ProjectionBenchArgs;
use wallex::config::{DatabaseArgs, GlobalArgs, LogFormat, ServeConfig};
use wallex::{app, bench};
use wallex_core::db;
use wallex_telemetry::{Telemetry, TelemetryConfig};

/// mimalloc instead of the system allocator: a request allocates and frees many small buffers
/// (HTTP, JSON, gRPC, SQL), and glibc's malloc took ~15 % of the server's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Event-sourced wallets with WebAssembly projections.
#[derive(Debug, Parser)]
#[command(name = "wallex", version, about)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server (applies migrations first). The default command.
    Serve(Box<ServeConfig>),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
    /// A local server with a projection folder watched: every change rebuilds it, runs its
    /// golden tests and redeploys it.
    Dev(Box<wallex::dev::DevArgs>),
    /// Operate projections on a running server (deploy, reload, rebuild, pause, ...), and write
    /// new ones (new, build, test).
    Projections(wallex::cli::ProjectionsCli),
    /// Stall status and the read-model check on a running server.
    Recovery(wallex::cli::recovery::RecoveryCli),
    /// Measure a running server.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Wallet-creation throughput and latency, then idempotent replays.
    Create(CreateBenchArgs),
    /// Projection throughput (WASM and native baseline), or read-model lag with `--lag-url`.
    Projections(ProjectionBenchArgs),
    /// Time from a component upload to the new version applying events (admin API).
    Deploy(wallex::bench::deploy::DeployBenchArgs),
    /// Blue/green rebuild throughput of the read-model (own bench database).
    Rebuild(wallex::bench::deploy::RebuildBenchArgs),
    /// Creates/s with the projections live, their lag and catch-up, and (with --pgbench-url)
    /// the ratio to PostgreSQL's 4-insert transaction ceiling measured in the same run.
    System(wallex::bench::system::SystemBenchArgs),
}

/// `wallex` with no subcommand: `serve` configured from the environment.
#[derive(Debug, Parser)]
struct DefaultServe {
    #[command(flatten)]
    serve: ServeConfig,
}

fn main() -> ExitCode {
    // A missing .env is fine; a malformed one is reported.
    if let Err(error) = dotenvy::dotenv() {
        if !error.not_found() {
            eprintln!("error: cannot read .env: {error}");
            return ExitCode::FAILURE;
        }
    }
    let cli = Cli::parse();
    let command = cli
        .command
        .unwrap_or_else(|| Command::Serve(Box::new(DefaultServe::parse_from(["wallex"]).serve)));
    // Metrics and exported traces belong to the server; the other commands only log.
    let (metrics, traces) = match &command {
        Command::Serve(config) => (config.metrics_enabled, true),
        Command::Dev(args) => (args.serve.metrics_enabled, false),
        _ => (false, false),
    };
    let telemetry = match wallex_telemetry::init(TelemetryConfig {
        log_format: match cli.global.log_format {
            LogFormat::Text => wallex_telemetry::LogFormat::Text,
            LogFormat::Json => wallex_telemetry::LogFormat::Json,
        },
        metrics,
        traces,
    }) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(command, telemetry.clone()));
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The private PostgreSQL `serve` starts when no database is configured or running.
async fn start_private_postgres(
    config: &ServeConfig,
) -> anyhow::Result<Option<wallex::local_postgres::PrivatePostgres>> {
    let args = config.private_postgres.clone();
    let chosen = config.database_chosen();
    Ok(tokio::task::spawn_blocking(move || {
        wallex::local_postgres::PrivatePostgres::start_if_needed(&args, chosen)
    })
    .await??)
}

async fn run(command: Command, telemetry: Telemetry) -> anyhow::Result<()> {
    match command {
        Command::Serve(mut config) => {
            let private = start_private_postgres(&config).await?;
            if let Some(server) = &private {
                config.database.database_url = server.url();
            }
            let served = app::serve(*config, telemetry, CancellationToken::new()).await;
            // Stopped after the server (also when it failed).
            drop(private);
            served?;
        }
        Command::Dev(args) => wallex::dev::run(*args, telemetry).await?,
        Command::Migrate(args) => {
            let config = args.settings();
            db::ensure_database(&config).await?;
            let pool = db::pool(&config)?;
            db::migrate(&pool).await?;
            pool.close().await;
            println!("migrations applied");
        }
        Command::Projections(cli) => {
            if !wallex::cli::run(cli).await? {
                // A failed golden test: the report said what; the exit code says it failed.
                std::process::exit(1);
            }
        }
        Command::Recovery(cli) => wallex::cli::recovery::run(cli).await?,
        Command::Bench(BenchCommand::Create(args)) => {
            bench::create::run(args).await?;
        }
        Command::Bench(BenchCommand::Deploy(args)) => {
            wallex::bench::deploy::run_deploy(args).await?
        }
        Command::Bench(BenchCommand::Rebuild(args)) => {
            wallex::bench::deploy::run_rebuild(args).await?
        }
        Command::Bench(BenchCommand::Projections(args)) => {
            bench::projections::run(args).await?;
        }
        Command::Bench(BenchCommand::System(args)) => bench::system::run(args).await?,
    }
    Ok(())
}
