//! `wallex-kurrentdb-stub`: serves an in-memory KurrentDB (the part of its gRPC protocol the
//! `kurrentdb` client uses to append and read) until Ctrl-C or SIGTERM. For benchmarks and tests
//! where no KurrentDB can run; nothing it stores survives the process.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use tracing::{error, info};
use wallex_kurrentdb_stub::{StubOptions, StubServer};
use wallex_telemetry::{LogFormat, TelemetryConfig};

/// An in-memory, NOT durable stand-in for a KurrentDB server, for tests and benchmarks only.
///
/// It serves the part of KurrentDB's gRPC protocol that the official `kurrentdb` client uses to
/// append to and read streams (with KurrentDB's expected-version and idempotency rules), without
/// TLS or authentication. Everything is kept in memory and lost when the process ends. Connect
/// with the connection string it logs at start, `kurrentdb://HOST:PORT?tls=false`. Logging is
/// set with RUST_LOG (default `info`).
#[derive(Debug, Parser)]
#[command(name = "wallex-kurrentdb-stub", version)]
struct Args {
    /// Address and port to listen on (port 0 picks a free one).
    #[arg(long, env = "KURRENTDB_STUB_LISTEN", default_value = "127.0.0.1:2113")]
    listen: SocketAddr,

    /// Acknowledge every TCP read at once (TCP_QUICKACK): removes the up to 40 ms a client
    /// without TCP_NODELAY (the published kurrentdb 1.2; not wallex's patched copy) waits for a
    /// delayed ACK on each append.
    #[arg(long, env = "KURRENTDB_STUB_QUICK_ACK")]
    quick_ack: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Logs as the server writes them (the one subscriber installer is wallex-telemetry's).
    if let Err(error) = wallex_telemetry::init(TelemetryConfig {
        log_format: LogFormat::Text,
        metrics: false,
        traces: false,
    }) {
        eprintln!("wallex-kurrentdb-stub: {error}");
        return ExitCode::FAILURE;
    }

    let options = StubOptions {
        quick_ack: args.quick_ack,
    };
    let mut server = match StubServer::start_with(args.listen, options).await {
        Ok(server) => server,
        Err(error) => {
            error!(listen = %args.listen, %error, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    info!(
        connection_string = %server.connection_string(),
        "wallex-kurrentdb-stub ready (in memory, not durable: for tests and benchmarks only)"
    );

    if let Err(error) = shutdown_signal().await {
        error!(%error, "cannot wait for a shutdown signal");
        server.stop().await;
        return ExitCode::FAILURE;
    }
    info!("shutting down");
    server.stop().await;
    ExitCode::SUCCESS
}

/// Waits for Ctrl-C (SIGINT) or, on Unix, SIGTERM.
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = terminate.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
