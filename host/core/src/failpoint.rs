//! Test-only crash injection.
//!
//! Why it exists: the claims "a crash between the append and the commit leaves nothing behind" and
//! "a key in flight answers 409" need a way to stop the process, or hold a request, at an exact step.
//! With the `failpoints` cargo feature (enabled only for the test build, never in release), the
//! environment variable `WALLEX_FAILPOINTS` names actions per point, e.g.
//! `after-append=abort,before-commit=sleep(2000)`. Without the feature, [`hit`] compiles to nothing.
//!
//! Points of the write path: `before-claim` (per request: about to be queued for a committer; its
//! key may have been looked up, it is not claimed), `after-append` (per batch: events appended,
//! outbox not yet written), `before-commit` (per batch: everything written, transaction not
//! committed).

/// Runs the action configured for failpoint `name`, if any.
#[allow(clippy::unused_async)]
pub async fn hit(name: &'static str) {
    #[cfg(feature = "failpoints")]
    imp::hit(name).await;
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

#[cfg(feature = "failpoints")]
mod imp {
    use std::time::Duration;

    /// Environment variable that configures the failpoints.
    const FAILPOINTS_ENV: &str = "WALLEX_FAILPOINTS";
    /// Hits of `abort-after(n)` failpoints in this process.
    static HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    pub async fn hit(name: &'static str) {
        let Ok(spec) = std::env::var(FAILPOINTS_ENV) else {
            return;
        };
        for entry in spec.split(',') {
            let Some((point, action)) = entry.split_once('=') else {
                continue;
            };
            if point.trim() != name {
                continue;
            }
            let action = action.trim();
            if let Some(n) = action
                .strip_prefix("abort-after(")
                .and_then(|rest| rest.strip_suffix(')'))
                .and_then(|n| n.parse::<u64>().ok())
            {
                // Abort on the n-th hit of this failpoint in this process.
                let hits = HITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                if hits >= n {
                    tracing::error!(failpoint = name, hits, "failpoint: aborting the process");
                    std::process::abort();
                }
                continue;
            }
            if action == "abort" {
                tracing::error!(failpoint = name, "failpoint: aborting the process");
                std::process::abort();
            }
            if let Some(ms) = action
                .strip_prefix("sleep(")
                .and_then(|rest| rest.strip_suffix(')'))
                .and_then(|ms| ms.parse::<u64>().ok())
            {
                tracing::warn!(failpoint = name, ms, "failpoint: sleeping");
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
    }
}
