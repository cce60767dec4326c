//! `wallex recovery …`: the recovery service over the admin API (`/admin/recovery`).
//!
//! Why it exists: "is any projection stuck?" and "does the read model still say what the write
//! model says?" should be one command each, readable or `--json`, with the same one-line errors
//! as `wallex projections`.

use clap::{Args, Subcommand};

use super::{print_json, CliError, Client, ServerArgs};
use wallex_http::wire::{RecoveryRunBody, RecoveryStatusBody};

/// `wallex recovery …`.
#[derive(Debug, Clone, Args)]
pub struct RecoveryCli {
    /// The server.
    #[command(flatten)]
    pub server: ServerArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: RecoveryCommand,
}

/// The operations of `wallex recovery`.
#[derive(Debug, Clone, Subcommand)]
pub enum RecoveryCommand {
    /// Stalled projections, the outbox's oldest unprocessed event, the latest checks.
    Status,
    /// Compare the write model's wallets with the read model's, row by row, and store the report.
    CheckReadModel,
    /// One stored check, with its sample of differing rows.
    Run {
        /// The run's number (from `status`).
        id: i64,
    },
}

enum Output {
    Status(RecoveryStatusBody),
    Run(Box<RecoveryRunBody>),
}

/// Runs one `wallex recovery` command.
pub async fn run(cli: RecoveryCli) -> Result<(), CliError> {
    let client = Client::new(&cli.server)?;
    let output = match cli.command {
        RecoveryCommand::Status => Output::Status(
            client
                .send(reqwest::Method::GET, "/admin/recovery", None)
                .await?,
        ),
        RecoveryCommand::CheckReadModel => Output::Run(
            client
                .send(
                    reqwest::Method::POST,
                    "/admin/recovery/read-model-check",
                    None,
                )
                .await?,
        ),
        RecoveryCommand::Run { id } => Output::Run(
            client
                .send(
                    reqwest::Method::GET,
                    &format!("/admin/recovery/runs/{id}"),
                    None,
                )
                .await?,
        ),
    };
    if cli.server.json {
        return match &output {
            Output::Status(v) => print_json(v),
            Output::Run(v) => print_json(v),
        };
    }
    match output {
        Output::Status(status) => print_status(&status),
        Output::Run(run) => print_run(&run),
    }
    Ok(())
}

fn print_status(status: &RecoveryStatusBody) {
    println!(
        "stall detection: every {} s, stalled after {} s without progress",
        status.interval_secs, status.stall_secs
    );
    match status.oldest_unprocessed_at {
        Some(at) => println!(
            "oldest unprocessed event: {:.1} s old (recorded {at})",
            status.oldest_unprocessed_age_seconds
        ),
        None => println!("oldest unprocessed event: none (every projection is caught up)"),
    }
    if status.stalls.is_empty() {
        println!("stalled projections: none");
    } else {
        println!("stalled projections:");
        for stall in &status.stalls {
            println!(
                "  {}: stuck at position {} since {}, {} restart(s)",
                stall.projection, stall.stuck_position, stall.stuck_since, stall.restarts
            );
        }
    }
    if status.runs.is_empty() {
        println!("checks: none yet");
        return;
    }
    println!("latest checks:");
    println!(
        "  {:>6}  {:<18} {:<8} {:>10} {:>8} {:>8} {:>9}  started",
        "run", "kind", "outcome", "checked", "missing", "extra", "different"
    );
    for run in &status.runs {
        println!(
            "  {:>6}  {:<18} {:<8} {:>10} {:>8} {:>8} {:>9}  {}",
            run.id,
            run.kind,
            run.outcome,
            run.checked,
            run.missing,
            run.extra,
            run.different,
            run.started_at
        );
    }
}

fn print_run(run: &RecoveryRunBody) {
    let took = (run.finished_at - run.started_at).num_milliseconds() as f64 / 1000.0;
    println!(
        "run {}: {} of {} by {}: {} in {took:.1} s",
        run.id,
        run.kind,
        run.projection.as_deref().unwrap_or("-"),
        run.requested_by,
        run.outcome
    );
    if let Some(error) = &run.error {
        println!("error: {error}");
        return;
    }
    println!(
        "checked {}, not yet comparable {}; missing {}, extra {}, different {}",
        run.checked, run.in_flight, run.missing, run.extra, run.different
    );
    for row in &run.sample {
        println!("  {} {}", row.drift, row.id);
        for column in &row.columns {
            println!(
                "      {}: write {} / read {}",
                column.column,
                column.write.as_deref().unwrap_or("(none)"),
                column.read.as_deref().unwrap_or("(none)")
            );
        }
    }
    let shown = run.sample.len() as i64;
    let total = run.missing + run.extra + run.different;
    if total > shown {
        println!("  … and {} more", total - shown);
    }
}
