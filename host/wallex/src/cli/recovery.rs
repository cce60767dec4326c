//! `wallex recovery …`: the recovery service over the admin API (`/admin/recovery`).
//!
//! Why it exists: "is any projection stuck?", "does the read model still say what the write
//! model says?", "is this projection still what the log says it should be?" and "repair it"
//! should be one command each, readable or `--json`, with the same one-line errors as
//! `wallex projections`.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{bar, print_json, CliError, Client, ServerArgs};
use wallex_http::wire::{RecoveryRunBody, RecoveryStatusBody, RepairBody};

/// How often `drift --wait` polls the run.
pub const DRIFT_POLL: Duration = Duration::from_millis(500);

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
    /// Replay a projection's live version from the start of the log into a shadow and compare
    /// every table with the live one, row by row.
    Drift {
        /// The projection.
        name: String,
        /// Wait for the report, with a progress bar on stderr.
        #[arg(long)]
        wait: bool,
        /// Keep the shadow afterwards for `repair` (default: only when rows differ).
        #[arg(long, conflicts_with = "drop")]
        keep: bool,
        /// Drop the shadow afterwards even when rows differ.
        #[arg(long)]
        drop: bool,
    },
    /// Repair a projection: one stream's rows, or the whole projection (cut over to the shadow
    /// a drift check kept, or rebuilt blue/green).
    Repair {
        /// The projection.
        name: String,
        /// Re-derive only this stream's rows (components that say which rows a stream owns).
        #[arg(long)]
        stream: Option<String>,
    },
}

enum Output {
    Status(RecoveryStatusBody),
    Run(Box<RecoveryRunBody>),
    Repair(RepairBody),
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
        RecoveryCommand::Run { id } => Output::Run(get_run(&client, id).await?),
        RecoveryCommand::Drift {
            name,
            wait,
            keep,
            drop,
        } => {
            let query: Vec<(&str, String)> = match (keep, drop) {
                (true, _) => vec![("keep", "true".to_owned())],
                (_, true) => vec![("keep", "false".to_owned())],
                _ => Vec::new(),
            };
            let run: Box<RecoveryRunBody> = client
                .send_query(
                    reqwest::Method::POST,
                    &format!("/admin/recovery/drift/{name}"),
                    &query,
                    None,
                )
                .await?;
            Output::Run(if wait {
                follow(&client, run, cli.server.json).await?
            } else {
                run
            })
        }
        RecoveryCommand::Repair { name, stream } => {
            let query: Vec<(&str, String)> = stream.into_iter().map(|s| ("stream", s)).collect();
            Output::Repair(
                client
                    .send_query(
                        reqwest::Method::POST,
                        &format!("/admin/recovery/repair/{name}"),
                        &query,
                        None,
                    )
                    .await?,
            )
        }
    };
    if cli.server.json {
        return match &output {
            Output::Status(v) => print_json(v),
            Output::Run(v) => print_json(v),
            Output::Repair(v) => print_json(v),
        };
    }
    match output {
        Output::Status(status) => print_status(&status),
        Output::Run(run) => print_run(&run),
        Output::Repair(repair) => print_repair(&repair),
    }
    Ok(())
}

async fn get_run(client: &Client, id: i64) -> Result<Box<RecoveryRunBody>, CliError> {
    client
        .send(
            reqwest::Method::GET,
            &format!("/admin/recovery/runs/{id}"),
            None,
        )
        .await
}

/// Polls a drift check until it ends, drawing its progress on stderr unless `quiet`.
async fn follow(
    client: &Client,
    mut run: Box<RecoveryRunBody>,
    quiet: bool,
) -> Result<Box<RecoveryRunBody>, CliError> {
    let mut stderr = std::io::stderr();
    while run.outcome == "running" {
        if !quiet {
            let line = match &run.progress {
                Some(p) => format!("{}  {}   ", bar(p.events_replayed, p.events_total), p.phase),
                None => "starting…".to_owned(),
            };
            let _ = write!(stderr, "\r{line}");
            let _ = stderr.flush();
        }
        tokio::time::sleep(DRIFT_POLL).await;
        run = get_run(client, run.id).await?;
    }
    if !quiet {
        let _ = writeln!(stderr);
    }
    Ok(run)
}

fn print_repair(repair: &RepairBody) {
    match (&repair.stream, repair.run) {
        (Some(s), _) => println!(
            "{}: stream {} repaired: {} event(s) replayed up to position {}, {} row(s) deleted, {} written in {:.1} ms",
            repair.projection, s.stream_id, s.events, s.position, s.rows_deleted, s.rows_written, s.millis
        ),
        (None, Some(run)) => println!(
            "{}: the shadow of drift check {run} catches up and is cut over (follow it with `wallex projections status {}`)",
            repair.projection, repair.projection
        ),
        (None, None) => println!(
            "{}: no kept shadow of the live version; a blue/green rebuild started (follow it with `wallex projections status {}`)",
            repair.projection, repair.projection
        ),
    }
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
    let took = match run.finished_at {
        Some(end) => format!(
            "in {:.1} s",
            (end - run.started_at).num_milliseconds() as f64 / 1000.0
        ),
        None => "so far".to_owned(),
    };
    println!(
        "run {}: {} of {} by {}: {} {took}",
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
    if let Some(p) = &run.progress {
        println!(
            "{}: {} of about {} events replayed (follow it with `wallex recovery run {}`)",
            p.phase, p.events_replayed, p.events_total, run.id
        );
        return;
    }
    for table in &run.tables {
        println!(
            "  table {}: compared {}; missing {}, extra {}, different {}",
            table.table, table.compared, table.missing, table.extra, table.different
        );
    }
    if let Some(shadow) = &run.shadow {
        println!(
            "shadow kept for a repair: {shadow} (`wallex recovery repair {}`)",
            run.projection.as_deref().unwrap_or("NAME")
        );
    }
    println!(
        "checked {}, not yet comparable {}; missing {}, extra {}, different {}",
        run.checked, run.in_flight, run.missing, run.extra, run.different
    );
    let (truth, held) = if run.kind == "drift-check" {
        ("log", "live")
    } else {
        ("write", "read")
    };
    for row in &run.sample {
        match &row.table {
            Some(table) => println!("  {} {table} {}", row.drift, row.id),
            None => println!("  {} {}", row.drift, row.id),
        }
        for column in &row.columns {
            println!(
                "      {}: {truth} {} / {held} {}",
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
