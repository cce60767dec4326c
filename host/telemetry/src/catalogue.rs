//! Every metric wallex exports: name, type, unit, labels and histogram buckets.
//!
//! Why it exists: the names are a contract with dashboards and alert rules
//! (`host/ops/prometheus/wallex-alerts.yml`); keeping them in one place keeps the code, the
//! metrics table of host/docs/monitoring.md and the rules in step. Names follow the reference
//! design where it has one (`wallet_create_duration_ms`, `wallet_create_total`,
//! `outbox_lag_events`, `projector_*`). Labels are bounded sets: no wallet ids, keys or raw paths.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use crate::TelemetryError;

/// HTTP requests answered, by `method`, `route` (the matched route template, or `unmatched`)
/// and `status` (the numeric code). Counter.
pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
/// Time to answer an HTTP request, by `method` and `route`. Histogram, seconds.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";

/// Time to answer `POST /wallets`, by `status` (as [`WALLET_CREATE_TOTAL`]). Histogram,
/// milliseconds (the reference design's unit).
pub const WALLET_CREATE_DURATION_MS: &str = "wallet_create_duration_ms";
/// `POST /wallets` answers by `status`: `success`, `replayed`, `conflict`, `invalid`, `error`.
/// Counter.
pub const WALLET_CREATE_TOTAL: &str = "wallet_create_total";
/// Writes that carried an `Idempotency-Key`, by `outcome`: `new`, `replayed`, `in_flight`,
/// `reused`. The hit rate is the `replayed` share. Counter.
pub const IDEMPOTENCY_REQUESTS_TOTAL: &str = "idempotency_requests_total";
/// Write transactions committed (group commit: one per batch). Counter.
pub const WALLET_WRITE_TRANSACTIONS_TOTAL: &str = "wallet_write_transactions_total";
/// Create requests answered by committed write transactions. Counter.
pub const WALLET_WRITE_REQUESTS_TOTAL: &str = "wallet_write_requests_total";
/// Write batches re-run one transaction per request. Counter.
pub const WALLET_WRITE_BATCH_SPLITS_TOTAL: &str = "wallet_write_batch_splits_total";
/// Requests per committed write transaction. Histogram.
pub const WALLET_WRITE_BATCH_SIZE: &str = "wallet_write_batch_size";

/// Connections of the database pool by `state`: `idle`, `in_use`. Gauge.
pub const DB_POOL_CONNECTIONS: &str = "db_pool_connections";
/// Most connections the pool opens. Gauge.
pub const DB_POOL_MAX_CONNECTIONS: &str = "db_pool_max_connections";
/// Time the write path waited for a pooled connection. Histogram, seconds.
pub const DB_POOL_ACQUIRE_DURATION_SECONDS: &str = "db_pool_acquire_duration_seconds";

/// Redis commands that failed or timed out, by `op` (`lock`, `unlock`, `cache_get`,
/// `cache_set`). Counter.
pub const REDIS_ERRORS_TOTAL: &str = "redis_errors_total";
/// Replay-cache look-ups, by `result` (`hit`, `miss`). Counter.
pub const REDIS_REPLAY_CACHE_TOTAL: &str = "redis_replay_cache_total";
/// Wallet-lock attempts, by `result` (`acquired`, `acquired_after_wait`, `wait_expired`,
/// `unavailable`). Counter.
pub const REDIS_LOCK_TOTAL: &str = "redis_lock_total";
/// KurrentDB calls that failed because it could not be reached in time, by `op` (`append`,
/// `read`). Counter.
pub const KURRENTDB_UNAVAILABLE_TOTAL: &str = "kurrentdb_unavailable_total";
/// Passes of the KurrentDB reconciliation, by `result` (`ok`, `error`, `skipped` when another
/// instance was running one). Counter.
pub const KURRENTDB_RECONCILE_PASSES_TOTAL: &str = "kurrentdb_reconcile_passes_total";
/// Wallets the reconciliation completed in PostgreSQL from an event only KurrentDB had.
/// Counter.
pub const KURRENTDB_RECONCILED_WALLETS_TOTAL: &str = "kurrentdb_reconciled_wallets_total";

/// Outbox rows after a projection's live checkpoint, by `projection`. Gauge.
pub const OUTBOX_LAG_EVENTS: &str = "outbox_lag_events";
/// Age of the oldest of those rows (0 when caught up), by `projection`. Gauge, seconds.
pub const OUTBOX_LAG_SECONDS: &str = "outbox_lag_seconds";
/// 1 for a projection's current `status` (`running`, `failing`, `failed`, `paused`,
/// `rebuilding`, `stalled`), 0 for the others. Gauge.
pub const PROJECTOR_STATUS: &str = "projector_status";
/// Bytes of compiled code this process keeps mapped for the component a projection runs here, by
/// `projection`. Gauge, bytes.
pub const PROJECTOR_COMPILED_BYTES: &str = "projector_compiled_bytes";
/// Bytes of compiled code of every component loaded in this process (what
/// `WALLEX_COMPILED_MEMORY_MAX_MIB` bounds). Gauge, bytes.
pub const PROJECTOR_COMPILED_BYTES_TOTAL: &str = "projector_compiled_bytes_total";
/// Batches committed by this process, by `projection`. Counter.
pub const PROJECTOR_BATCHES_APPLIED_TOTAL: &str = "projector_batches_applied_total";
/// Failed batch attempts in this process, by `projection`. Counter.
pub const PROJECTOR_BATCHES_FAILED_TOTAL: &str = "projector_batches_failed_total";
/// Outbox rows committed by this process's live batches, by `projection`. Counter.
pub const PROJECTOR_EVENTS_APPLIED_TOTAL: &str = "projector_events_applied_total";
/// Events dead-lettered by this process (`on_poison = skip`), by `projection`. Counter.
pub const PROJECTOR_DEAD_LETTERS_TOTAL: &str = "projector_dead_letters_total";
/// Time of a committed batch (read, guest, apply, commit), by `projection`. Histogram, seconds.
pub const PROJECTOR_BATCH_DURATION_SECONDS: &str = "projector_batch_duration_seconds";
/// Outbox rows per committed batch, by `projection`. Histogram.
pub const PROJECTOR_BATCH_EVENTS: &str = "projector_batch_events";
/// Guest time of one component call, by `projection` and `outcome` (`ok`, `failed`).
/// Histogram, seconds: its `_sum` is the guest time spent, `{outcome="failed"}` the time burned
/// by failing calls (the base of the penalty wait).
pub const PROJECTOR_GUEST_CALL_DURATION_SECONDS: &str = "projector_guest_call_duration_seconds";
/// Whether a projection's calls run on the quarantine thread, by `projection`. Gauge, 0 or 1.
pub const PROJECTOR_QUARANTINED: &str = "projector_quarantined";
/// 1 for a rebuild's `status` (`running`, `failed`), 0 for the other, by `projection`; both 0
/// when no rebuild exists. Gauge.
pub const PROJECTOR_REBUILD_STATUS: &str = "projector_rebuild_status";
/// Share of a rebuild done (rows applied / rows to apply), by `projection`; 0 when no rebuild
/// exists. Gauge, 0 to 1.
pub const PROJECTOR_REBUILD_PROGRESS_RATIO: &str = "projector_rebuild_progress_ratio";
/// Restarts of a stalled projection's worker by stall detection in this process, by
/// `projection`. Counter.
pub const PROJECTOR_STALL_RESTARTS_TOTAL: &str = "projector_stall_restarts_total";
/// Age of the oldest outbox row some projection has not applied (0 when all are caught up).
/// Gauge, seconds.
pub const OUTBOX_OLDEST_UNPROCESSED_AGE_SECONDS: &str = "outbox_oldest_unprocessed_age_seconds";
/// Recovery checks run by this process, by `kind` (`read-model-check`) and `outcome` (`clean`,
/// `drift`, `failed`). Counter.
pub const RECOVERY_RUNS_TOTAL: &str = "recovery_runs_total";

/// Every metric name above, for checks that dashboards and rules use no other.
pub const ALL: [&str; 36] = [
    HTTP_REQUESTS_TOTAL,
    HTTP_REQUEST_DURATION_SECONDS,
    WALLET_CREATE_DURATION_MS,
    WALLET_CREATE_TOTAL,
    IDEMPOTENCY_REQUESTS_TOTAL,
    WALLET_WRITE_TRANSACTIONS_TOTAL,
    WALLET_WRITE_REQUESTS_TOTAL,
    WALLET_WRITE_BATCH_SPLITS_TOTAL,
    WALLET_WRITE_BATCH_SIZE,
    DB_POOL_CONNECTIONS,
    DB_POOL_MAX_CONNECTIONS,
    DB_POOL_ACQUIRE_DURATION_SECONDS,
    REDIS_ERRORS_TOTAL,
    REDIS_REPLAY_CACHE_TOTAL,
    REDIS_LOCK_TOTAL,
    KURRENTDB_UNAVAILABLE_TOTAL,
    KURRENTDB_RECONCILE_PASSES_TOTAL,
    KURRENTDB_RECONCILED_WALLETS_TOTAL,
    OUTBOX_LAG_EVENTS,
    OUTBOX_LAG_SECONDS,
    PROJECTOR_STATUS,
    PROJECTOR_COMPILED_BYTES,
    PROJECTOR_COMPILED_BYTES_TOTAL,
    PROJECTOR_BATCHES_APPLIED_TOTAL,
    PROJECTOR_BATCHES_FAILED_TOTAL,
    PROJECTOR_EVENTS_APPLIED_TOTAL,
    PROJECTOR_DEAD_LETTERS_TOTAL,
    PROJECTOR_BATCH_DURATION_SECONDS,
    PROJECTOR_BATCH_EVENTS,
    PROJECTOR_GUEST_CALL_DURATION_SECONDS,
    PROJECTOR_QUARANTINED,
    PROJECTOR_REBUILD_STATUS,
    PROJECTOR_REBUILD_PROGRESS_RATIO,
    PROJECTOR_STALL_RESTARTS_TOTAL,
    OUTBOX_OLDEST_UNPROCESSED_AGE_SECONDS,
    RECOVERY_RUNS_TOTAL,
];

/// Buckets of the latency histograms in seconds.
pub const SECONDS_BUCKETS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of [`WALLET_CREATE_DURATION_MS`].
pub const MILLISECONDS_BUCKETS: [f64; 12] = [
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];
/// Buckets of [`PROJECTOR_GUEST_CALL_DURATION_SECONDS`] (calls are often sub-millisecond).
pub const GUEST_SECONDS_BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0, 10.0,
];
/// Buckets of [`WALLET_WRITE_BATCH_SIZE`].
pub const WRITE_BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
/// Buckets of [`PROJECTOR_BATCH_EVENTS`].
pub const BATCH_EVENTS_BUCKETS: [f64; 9] =
    [1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0];
/// Gauges not set for this long are dropped from `/metrics` (a deleted projection's series).
/// Gauges are set at every scrape, so a live series never goes idle.
pub const IDLE_GAUGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Every histogram and its buckets.
pub fn histograms() -> [(&'static str, &'static [f64]); 7] {
    [
        (HTTP_REQUEST_DURATION_SECONDS, &SECONDS_BUCKETS),
        (WALLET_CREATE_DURATION_MS, &MILLISECONDS_BUCKETS),
        (WALLET_WRITE_BATCH_SIZE, &WRITE_BATCH_BUCKETS),
        (DB_POOL_ACQUIRE_DURATION_SECONDS, &SECONDS_BUCKETS),
        (PROJECTOR_BATCH_DURATION_SECONDS, &SECONDS_BUCKETS),
        (PROJECTOR_BATCH_EVENTS, &BATCH_EVENTS_BUCKETS),
        (
            PROJECTOR_GUEST_CALL_DURATION_SECONDS,
            &GUEST_SECONDS_BUCKETS,
        ),
    ]
}

/// Installs the Prometheus recorder as the global `metrics` recorder and describes every metric.
pub fn install_prometheus() -> Result<PrometheusHandle, TelemetryError> {
    let mut builder =
        PrometheusBuilder::new().idle_timeout(MetricKindMask::GAUGE, Some(IDLE_GAUGE_TIMEOUT));
    for (name, buckets) in histograms() {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
            .map_err(|error| TelemetryError::Recorder(error.to_string()))?;
    }
    let handle = builder
        .install_recorder()
        .map_err(|error| TelemetryError::Recorder(error.to_string()))?;
    describe();
    Ok(handle)
}

/// The `# HELP` lines.
fn describe() {
    describe_counter!(HTTP_REQUESTS_TOTAL, "HTTP requests answered.");
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time to answer an HTTP request."
    );
    describe_histogram!(
        WALLET_CREATE_DURATION_MS,
        Unit::Milliseconds,
        "Time to answer POST /wallets, in milliseconds."
    );
    describe_counter!(WALLET_CREATE_TOTAL, "POST /wallets answers by status.");
    describe_counter!(
        IDEMPOTENCY_REQUESTS_TOTAL,
        "Writes with an Idempotency-Key, by outcome (the hit rate is the replayed share)."
    );
    describe_counter!(
        WALLET_WRITE_TRANSACTIONS_TOTAL,
        "Write transactions committed by this process (group commit: one per batch)."
    );
    describe_counter!(
        WALLET_WRITE_REQUESTS_TOTAL,
        "Create requests answered by those transactions."
    );
    describe_counter!(
        WALLET_WRITE_BATCH_SPLITS_TOTAL,
        "Write batches re-run one transaction per request (a key completed meanwhile, or a damaged stream)."
    );
    describe_histogram!(
        WALLET_WRITE_BATCH_SIZE,
        "Create requests per committed write transaction."
    );
    describe_gauge!(DB_POOL_CONNECTIONS, "Database pool connections by state.");
    describe_gauge!(
        DB_POOL_MAX_CONNECTIONS,
        "Most connections the database pool opens."
    );
    describe_histogram!(
        DB_POOL_ACQUIRE_DURATION_SECONDS,
        Unit::Seconds,
        "Time the write path waited for a pooled connection."
    );
    describe_counter!(
        REDIS_ERRORS_TOTAL,
        "Redis commands that failed or timed out (the write path went on without Redis)."
    );
    describe_counter!(REDIS_REPLAY_CACHE_TOTAL, "Replay-cache look-ups by result.");
    describe_counter!(REDIS_LOCK_TOTAL, "Wallet-lock attempts by result.");
    describe_counter!(
        KURRENTDB_UNAVAILABLE_TOTAL,
        "KurrentDB calls that failed because it could not be reached in time."
    );
    describe_counter!(
        KURRENTDB_RECONCILE_PASSES_TOTAL,
        "Passes of the KurrentDB reconciliation by result."
    );
    describe_counter!(
        KURRENTDB_RECONCILED_WALLETS_TOTAL,
        "Wallets completed in PostgreSQL from an event only KurrentDB had."
    );
    describe_gauge!(
        OUTBOX_LAG_EVENTS,
        "Outbox events after the projection's checkpoint."
    );
    describe_gauge!(
        OUTBOX_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest outbox event the projection has not applied (0 when caught up)."
    );
    describe_gauge!(
        PROJECTOR_STATUS,
        "1 for the projection's reported status, 0 for the others."
    );
    describe_gauge!(
        PROJECTOR_COMPILED_BYTES,
        Unit::Bytes,
        "Compiled code this process keeps mapped for the projection's component."
    );
    describe_gauge!(
        PROJECTOR_COMPILED_BYTES_TOTAL,
        Unit::Bytes,
        "Compiled code of every component loaded in this process."
    );
    describe_counter!(
        PROJECTOR_BATCHES_APPLIED_TOTAL,
        "Batches committed by this process."
    );
    describe_counter!(
        PROJECTOR_BATCHES_FAILED_TOTAL,
        "Failed batch attempts in this process."
    );
    describe_counter!(
        PROJECTOR_EVENTS_APPLIED_TOTAL,
        "Outbox rows committed by this process's live batches."
    );
    describe_counter!(
        PROJECTOR_DEAD_LETTERS_TOTAL,
        "Events dead-lettered by this process (on_poison = skip)."
    );
    describe_histogram!(
        PROJECTOR_BATCH_DURATION_SECONDS,
        Unit::Seconds,
        "Time of a committed batch: read, guest, apply and commit."
    );
    describe_histogram!(PROJECTOR_BATCH_EVENTS, "Outbox rows per committed batch.");
    describe_histogram!(
        PROJECTOR_GUEST_CALL_DURATION_SECONDS,
        Unit::Seconds,
        "Guest time of one component call, by outcome (ok, failed)."
    );
    describe_gauge!(
        PROJECTOR_QUARANTINED,
        "Whether the projection's calls run on the quarantine thread."
    );
    describe_gauge!(
        PROJECTOR_REBUILD_STATUS,
        "1 for the rebuild's status (running, failed), 0 for the other."
    );
    describe_gauge!(
        PROJECTOR_REBUILD_PROGRESS_RATIO,
        "Share of the rebuild done: rows applied over rows to apply."
    );
    describe_counter!(
        PROJECTOR_STALL_RESTARTS_TOTAL,
        "Restarts of a stalled projection's worker by stall detection."
    );
    describe_gauge!(
        OUTBOX_OLDEST_UNPROCESSED_AGE_SECONDS,
        Unit::Seconds,
        "Age of the oldest outbox row some projection has not applied."
    );
    describe_counter!(
        RECOVERY_RUNS_TOTAL,
        "Recovery checks run, by kind and outcome (clean, drift, failed)."
    );
}
