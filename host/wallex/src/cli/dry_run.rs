//! `wallex projections deploy FILE --dry-run`: a candidate replayed over the live log and
//! compared with the live version, never put live (`/admin/dry-runs`).
//!
//! Why it exists: the question before a deploy is "what would this version write?"; the answer
//! should be one command with a progress bar, a readable report (or `--json`), Ctrl-C to cancel,
//! and an exit status that says whether the run completed.

use std::io::Write;
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::{bar, decode, CliError, Client};
use wallex_http::wire::DryRunBody;

/// How often a dry run is polled while it runs.
pub const POLL: Duration = Duration::from_millis(250);

/// What `deploy --dry-run` asks for.
pub(crate) struct DryRunArgs<'a> {
    /// The name the component must declare.
    pub name: Option<&'a str>,
    /// Keep the shadow tables afterwards.
    pub keep: bool,
    /// Read at most this many outbox rows.
    pub max_events: Option<u64>,
    /// No progress on stderr.
    pub quiet: bool,
}

/// Starts a dry run of `bytes` and follows it to its end; Ctrl-C cancels it (the server drops
/// its shadow) and waits for that.
pub(crate) async fn run(
    client: &Client,
    bytes: Vec<u8>,
    args: &DryRunArgs<'_>,
) -> Result<DryRunBody, CliError> {
    let digest = format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&bytes))
    );
    let mut query = Vec::new();
    if let Some(name) = args.name {
        query.push(("name", name.to_owned()));
    }
    if args.keep {
        query.push(("keep", "true".to_owned()));
    }
    if let Some(max) = args.max_events {
        query.push(("max_events", max.to_string()));
    }
    let path = "/admin/dry-runs";
    let (status, text) = client
        .request(reqwest::Method::POST, path, &query, Some((bytes, digest)))
        .await?;
    let mut run: DryRunBody = decode(status, text, path)?;
    let mut stderr = std::io::stderr();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut cancelled = false;
    while !finished(&run) {
        if !args.quiet {
            let p = &run.progress;
            let line = match run.status.as_str() {
                "compiling" => "compiling…".to_owned(),
                phase => format!(
                    "{}  {phase}  {} poison   ",
                    bar(p.events_read, p.events_total),
                    p.poison_events
                ),
            };
            let _ = write!(stderr, "\r{line}");
            let _ = stderr.flush();
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = &mut ctrl_c, if !cancelled => {
                cancelled = true;
                if !args.quiet {
                    let _ = writeln!(stderr);
                    eprintln!("cancelling dry run {}…", run.id);
                }
                let _: DryRunBody = client
                    .send(reqwest::Method::DELETE, &format!("/admin/dry-runs/{}", run.id), None)
                    .await?;
            }
        }
        run = client
            .send(
                reqwest::Method::GET,
                &format!("/admin/dry-runs/{}", run.id),
                None,
            )
            .await?;
    }
    if !args.quiet {
        let _ = writeln!(stderr);
    }
    Ok(run)
}

fn finished(run: &DryRunBody) -> bool {
    matches!(run.status.as_str(), "completed" | "failed" | "cancelled")
}

/// Prints the report.
pub(crate) fn print(run: &DryRunBody) {
    let name = run.projection.as_deref().unwrap_or("component");
    let short = |sha: &str| sha.chars().take(12).collect::<String>();
    let against = match &run.live_sha256 {
        Some(live) => format!("against the live version {}", short(live)),
        None => "(not live: nothing to compare with)".to_owned(),
    };
    let seconds = (run.replay_ms + run.compare_ms) as f64 / 1000.0;
    println!(
        "dry run {} of {name} {} {against}: {} in {seconds:.1} s",
        run.id,
        short(&run.sha256),
        run.status
    );
    if let Some(error) = &run.error {
        println!("  error: {error}");
    }
    if let Some(d) = &run.declared {
        println!(
            "  declares {} (schema version {}), subscribes to {}",
            d.name,
            d.schema_version,
            d.subscribes_to.join(", ")
        );
        for t in &d.tables {
            println!(
                "    table {} ({}) key ({})",
                t.name,
                t.columns.join(", "),
                t.primary_key.join(", ")
            );
        }
    }
    let p = &run.progress;
    println!(
        "  events: {} read, {} handled, {} poison; {} rows written",
        p.events_read, p.events_handled, p.poison_events, p.rows_written
    );
    for e in &run.poison {
        println!(
            "    poison at position {} ({} {}): {}",
            e.position, e.event_type, e.event_id, e.error
        );
    }
    if let Some(at) = run.compared_at {
        println!("  compared at position {at}:");
    }
    for t in &run.tables {
        let rows = t.rows.map_or_else(|| "-".to_owned(), |r| r.to_string());
        let live = t
            .live_rows
            .map_or_else(|| "-".to_owned(), |r| r.to_string());
        let mut line = format!("    {} [{}]: {rows} rows (live {live})", t.table, t.change);
        if t.live_rows.is_some() && t.rows.is_some() && t.change != "key-changed" {
            line.push_str(&format!(
                "; {} missing, {} extra, {} different",
                t.missing, t.extra, t.different
            ));
        }
        if !t.columns_added.is_empty() {
            line.push_str(&format!("; columns added: {}", t.columns_added.join(", ")));
        }
        if !t.columns_removed.is_empty() {
            line.push_str(&format!(
                "; columns removed: {}",
                t.columns_removed.join(", ")
            ));
        }
        println!("{line}");
    }
    for row in &run.sample {
        let columns = row
            .columns
            .iter()
            .map(|c| {
                format!(
                    "{}: {} -> {}",
                    c.column,
                    c.live.as_deref().unwrap_or("∅"),
                    c.candidate.as_deref().unwrap_or("∅")
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        println!("    {} {} {} ({columns})", row.change, row.table, row.key);
    }
    match &run.shadow {
        Some(namespace) => println!(
            "  shadow kept in schema {namespace}; drop it with `wallex projections dry-run-drop {}`",
            run.id
        ),
        None => println!("  shadow dropped; nothing was deployed"),
    }
}
