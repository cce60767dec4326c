//! The threads that run guest code: a small pool of OS threads at a lower CPU priority.
//!
//! Why it exists: a component's `handle` is synchronous CPU work that the host did not write. It
//! must not run on the async runtime (it would stall HTTP), and a hostile one that spins until
//! its deadline must not take CPU from wallet creation or PostgreSQL. The pool has a fixed number
//! of threads (so guests can never occupy more cores than that) and they run at a higher `nice`
//! value, so the kernel schedules them only when the rest of the machine leaves CPU over.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Default number of guest threads.
pub const DEFAULT_GUEST_THREADS: u64 = 2;
/// Default niceness of guest threads (0 = normal priority, 19 = lowest).
pub const DEFAULT_GUEST_NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a job produced no result.
#[derive(Debug, thiserror::Error)]
pub enum GuestPoolError {
    /// The pool has shut down: the job was not taken, or its thread is gone.
    #[error("the guest thread pool has shut down")]
    Closed,
    /// The job panicked; the text is the panic's message.
    #[error("guest code panicked the host thread: {0}")]
    Panicked(String),
}

/// A fixed pool of low-priority threads, plus one quarantine thread for the components whose
/// last batch failed.
pub struct GuestPool {
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    quarantine: Mutex<Option<mpsc::Sender<Job>>>,
    threads: usize,
    nice: i32,
}

impl std::fmt::Debug for GuestPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestPool")
            .field("threads", &self.threads)
            .field("nice", &self.nice)
            .finish()
    }
}

impl GuestPool {
    /// Starts `threads` threads at niceness `nice` (clamped to 0..=19; lowering it below the
    /// process's needs privileges and is not attempted).
    pub fn new(threads: usize, nice: i32) -> std::io::Result<Arc<Self>> {
        let threads = threads.max(1);
        let nice = nice.clamp(0, 19);
        let sender = spawn_threads("wasm-guest", threads, move || lower_priority(nice))?;
        let quarantine = spawn_threads("wasm-quarantine", QUARANTINE_THREADS, move || {
            lower_priority(nice)
        })?;
        Ok(Arc::new(Self {
            sender: Mutex::new(Some(sender)),
            quarantine: Mutex::new(Some(quarantine)),
            threads,
            nice,
        }))
    }

    /// Runs `job` on the quarantine thread: one thread shared by every component whose last
    /// batch failed, so their retries never occupy the threads of the healthy ones. (It runs at
    /// the same niceness: an idle-priority thread would turn every wall-clock limit into a
    /// timeout on a busy machine and hide the real reason of a failure.)
    pub async fn run_quarantined<R: Send + 'static>(
        &self,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, GuestPoolError> {
        self.submit(&self.quarantine, job).await
    }

    /// Runs `job` on a guest thread and waits for its result without blocking the runtime.
    pub async fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, GuestPoolError> {
        self.submit(&self.sender, job).await
    }

    async fn submit<R: Send + 'static>(
        &self,
        queue: &Mutex<Option<mpsc::Sender<Job>>>,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, GuestPoolError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let wrapped: Job = Box::new(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(job)).map_err(|panic| {
                panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned())
            });
            let _ = done.send(outcome);
        });
        let sent = match queue.lock() {
            Ok(sender) => sender.as_ref().map(|s| s.send(wrapped)),
            Err(poisoned) => poisoned.into_inner().as_ref().map(|s| s.send(wrapped)),
        };
        if !matches!(sent, Some(Ok(()))) {
            return Err(GuestPoolError::Closed);
        }
        match result.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(panic)) => Err(GuestPoolError::Panicked(panic)),
            Err(_) => Err(GuestPoolError::Closed),
        }
    }
}

/// Threads of the quarantine queue.
pub const QUARANTINE_THREADS: usize = 1;

/// Starts `count` threads named `<name>-<i>` that run jobs from one queue, after `setup`.
fn spawn_threads(
    name: &str,
    count: usize,
    setup: impl Fn() + Send + Clone + 'static,
) -> std::io::Result<mpsc::Sender<Job>> {
    let (sender, receiver) = mpsc::channel::<Job>();
    let receiver = Arc::new(Mutex::new(receiver));
    for index in 0..count {
        let receiver = Arc::clone(&receiver);
        let setup = setup.clone();
        std::thread::Builder::new()
            .name(format!("{name}-{index}"))
            .spawn(move || {
                setup();
                loop {
                    let job = match receiver.lock() {
                        Ok(receiver) => receiver.recv(),
                        Err(poisoned) => poisoned.into_inner().recv(),
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            })?;
    }
    Ok(sender)
}

#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: setpriority/gettid have no memory-safety preconditions; on Linux PRIO_PROCESS with
    // a thread id changes only that thread's niceness.
    let result = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if result != 0 {
        tracing::warn!(nice, error = %std::io::Error::last_os_error(), "cannot lower the guest thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_survives_a_panicking_one() {
        let pool = GuestPool::new(1, DEFAULT_GUEST_NICE).expect("pool");
        assert_eq!(pool.run(|| 2 + 2).await.expect("result"), 4);
        let panicked = pool.run(|| -> u32 { panic!("boom") }).await;
        assert!(matches!(panicked, Err(GuestPoolError::Panicked(ref m)) if m == "boom"));
        assert_eq!(pool.run(|| 7).await.expect("still alive"), 7);
        assert_eq!(pool.run_quarantined(|| 8).await.expect("quarantine"), 8);
    }
}
