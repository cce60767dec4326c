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
//!
//! Points of the projection runtime: `projector-batch` (per live batch that read events, inside
//! its transaction, holding the checkpoint). A point hit with a subject ([`hit_for`]) can be
//! configured for one subject only: `projector-batch@ledger=sleep-once(600000)` freezes the ledger's
//! worker once and no other.
//!
//! Actions: `abort`, `abort-after(n)` (the n-th hit in the process), `sleep(ms)` (every hit),
//! `sleep-once(ms)` (the first hit in the process only).

/// Runs the action configured for failpoint `name`, if any.
#[allow(clippy::unused_async)]
pub async fn hit(name: &'static str) {
    #[cfg(feature = "failpoints")]
    imp::hit(name, None).await;
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Runs the action configured for failpoint `name`, or for `name@subject`, if any.
#[allow(clippy::unused_async)]
pub async fn hit_for(name: &'static str, subject: &str) {
    #[cfg(feature = "failpoints")]
    imp::hit(name, Some(subject)).await;
    #[cfg(not(feature = "failpoints"))]
    let _ = (name, subject);
}

#[cfg(feature = "failpoints")]
mod imp {
    use std::time::Duration;

    /// Environment variable that configures the failpoints.
    const FAILPOINTS_ENV: &str = "WALLEX_FAILPOINTS";
    /// Hits of `abort-after(n)` failpoints in this process.
    static HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    /// The `sleep-once` entries that have fired in this process.
    static FIRED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

    pub async fn hit(name: &'static str, subject: Option<&str>) {
        let Ok(spec) = std::env::var(FAILPOINTS_ENV) else {
            return;
        };
        for entry in spec.split(',') {
            let Some((point, action)) = entry.split_once('=') else {
                continue;
            };
            let point = point.trim();
            let matches = match point.split_once('@') {
                Some((point, wanted)) => point == name && subject == Some(wanted),
                None => point == name,
            };
            if !matches {
                continue;
            }
            let action = action.trim();
            if let Some(ms) = action
                .strip_prefix("sleep-once(")
                .and_then(|rest| rest.strip_suffix(')'))
                .and_then(|ms| ms.parse::<u64>().ok())
            {
                let first = {
                    let mut fired = FIRED
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let first = !fired.iter().any(|fired| fired == entry);
                    if first {
                        fired.push(entry.to_owned());
                    }
                    first
                };
                if first {
                    tracing::warn!(failpoint = name, ?subject, ms, "failpoint: sleeping once");
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                continue;
            }
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
