//! `GET /metrics`: Prometheus text exposition of the projections' health.
//!
//! Why it exists: a failing or skipping projection must be visible to monitoring, not only in
//! logs and the admin API. Names follow the reference design (`outbox_lag_events`,
//! `projector_*`). Counters are this process's since it started; gauges are read from the
//! database at scrape time (one cheap query).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::problem::Problem;
use super::AppState;
use wallex_core::outbox;
use wallex_runtime::checkpoint;

/// `Content-Type` of the text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Checkpoint statuses reported as `projector_status` (one series each, 0 or 1).
const STATUSES: [&str; 3] = ["running", "failing", "failed"];

/// `GET /metrics`: outbox lag and status per projection, and this process's projector counters,
/// in the Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, Problem> {
    // Live checkpoints only (`read_all` leaves out a rebuild's `<name>#rebuild`).
    let checkpoints = checkpoint::read_all(&state.pool)
        .await
        .map_err(|e| Problem::internal(&e))?;
    let last = outbox::last_position(&state.pool)
        .await
        .map_err(|e| Problem::internal(&e))?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP outbox_lag_events Outbox events after the projection's checkpoint (by position)."
    );
    let _ = writeln!(out, "# TYPE outbox_lag_events gauge");
    for checkpoint in &checkpoints {
        let name = &checkpoint.projection;
        let lag = last
            .unwrap_or(0)
            .saturating_sub(checkpoint.cursor.position)
            .max(0);
        let _ = writeln!(out, "outbox_lag_events{{projection=\"{name}\"}} {lag}");
    }
    let _ = writeln!(
        out,
        "# HELP projector_status 1 for the projection's reported status."
    );
    let _ = writeln!(out, "# TYPE projector_status gauge");
    for checkpoint in &checkpoints {
        let name = &checkpoint.projection;
        for candidate in STATUSES {
            let value = u8::from(checkpoint.status.as_str() == candidate);
            let _ = writeln!(
                out,
                "projector_status{{projection=\"{name}\",status=\"{candidate}\"}} {value}"
            );
        }
    }
    let projectors = state.projections.all();
    let counter = |out: &mut String,
                   metric: &str,
                   help: &str,
                   value: &dyn Fn(&wallex_runtime::worker::Projector) -> String| {
        let _ = writeln!(out, "# HELP {metric} {help}");
        let _ = writeln!(out, "# TYPE {metric} counter");
        for projector in &projectors {
            let _ = writeln!(
                out,
                "{metric}{{projection=\"{}\"}} {}",
                projector.name(),
                value(projector)
            );
        }
    };
    let count = |n: &AtomicU64| n.load(Ordering::Relaxed).to_string();
    let seconds = |micros: &AtomicU64| {
        let micros = micros.load(Ordering::Relaxed);
        format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
    };
    counter(
        &mut out,
        "projector_batches_applied_total",
        "Batches committed by this process.",
        &|p| count(&p.counters.batches_applied),
    );
    counter(
        &mut out,
        "projector_batches_failed_total",
        "Failed batch attempts in this process.",
        &|p| count(&p.counters.batches_failed),
    );
    counter(
        &mut out,
        "projector_dead_letters_total",
        "Events dead-lettered by this process (on_poison = skip).",
        &|p| count(&p.counters.dead_letters),
    );
    counter(
        &mut out,
        "projector_events_applied_total",
        "Outbox rows committed by this process.",
        &|p| p.events_applied().to_string(),
    );
    counter(
        &mut out,
        "projector_guest_seconds_total",
        "Guest time of the projection's calls in this process.",
        &|p| seconds(&p.counters.guest_micros),
    );
    counter(
        &mut out,
        "projector_failed_guest_seconds_total",
        "Guest time burned by calls that failed (the base of the penalty wait).",
        &|p| seconds(&p.counters.failed_guest_micros),
    );
    let _ = writeln!(
        out,
        "# HELP projector_quarantined Whether the projection's calls run on the quarantine thread."
    );
    let _ = writeln!(out, "# TYPE projector_quarantined gauge");
    for projector in &projectors {
        let _ = writeln!(
            out,
            "projector_quarantined{{projection=\"{}\"}} {}",
            projector.name(),
            u8::from(projector.in_quarantine())
        );
    }
    let writes = state.write_path.stats();
    for (metric, help, value) in [
        (
            "wallet_write_transactions_total",
            "Write transactions committed by this process (group commit: one per batch).",
            writes.transactions(),
        ),
        (
            "wallet_write_requests_total",
            "Create requests answered by those transactions.",
            writes.requests(),
        ),
        (
            "wallet_write_batch_splits_total",
            "Write batches re-run one transaction per request (a key completed meanwhile, or a damaged stream).",
            writes.splits(),
        ),
    ] {
        let _ = writeln!(out, "# HELP {metric} {help}");
        let _ = writeln!(out, "# TYPE {metric} counter");
        let _ = writeln!(out, "{metric} {value}");
    }
    Ok(([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], out))
}
