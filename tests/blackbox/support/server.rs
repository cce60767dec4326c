//! The real `wallex serve` spawned against a test database on a random port, with every variable
//! it reads removed from its environment first.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a spawned server may take to start listening.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `wallex serve` process.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`, the address it logged.
    pub base: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Spawns `wallex serve` against `database_url` with extra environment and waits until it listens.
    pub fn spawn(database_url: &str, env: &[(&str, &str)]) -> Server {
        Self::try_spawn(database_url, env).expect("wallex exited before it listened")
    }

    /// Like [`Server::spawn`], but `None` if the process exits before it listens (a crash
    /// failpoint hit during start-up).
    pub fn try_spawn(database_url: &str, env: &[(&str, &str)]) -> Option<Server> {
        Self::spawn_inner(database_url, env, None)
    }

    /// Like [`Server::spawn`], under a limit on the process's data segment (`RLIMIT_DATA`, as
    /// `prlimit --data`): an allocation past it fails, and the server aborts.
    pub fn spawn_with_data_limit(database_url: &str, env: &[(&str, &str)], bytes: u64) -> Server {
        Self::spawn_inner(database_url, env, Some(bytes)).expect("wallex exited before it listened")
    }

    fn spawn_inner(
        database_url: &str,
        env: &[(&str, &str)],
        data_limit: Option<u64>,
    ) -> Option<Server> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wallex"));
        if let Some(bytes) = data_limit {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_DATA, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        // Every variable the binary reads, from its own list: a developer's exported settings
        // never leak into a test.
        for name in wallex::config::env_names() {
            command.env_remove(name);
        }
        command
            .arg("serve")
            .current_dir(std::env::temp_dir())
            .env("DATABASE_URL", database_url)
            .env("WALLEX_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info,sqlx=warn")
            .env("WALLEX_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn wallex");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for (stream, addr_tx) in [
            (
                Box::new(stdout) as Box<dyn std::io::Read + Send>,
                Some(addr_tx),
            ),
            (Box::new(stderr), None),
        ] {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(addr_tx) = &addr_tx {
                        if let Some((_, addr)) = line.split_once("listening on http://") {
                            let _ = addr_tx.send(addr.trim().to_owned());
                        }
                    }
                    logs.lock().expect("logs").push(line);
                }
            });
        }
        let addr: SocketAddr = match addr_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => addr.parse().expect("listening address"),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = child.wait();
                return None;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!(
                    "wallex did not start listening; its output:\n{}",
                    logs.lock().expect("logs").join("\n")
                );
            }
        };
        Some(Server {
            child,
            base: format!("http://{addr}"),
            logs,
        })
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A field of `/proc/<pid>/status` in bytes (`VmData`, `VmRSS`, …), if readable.
    pub fn vm_bytes(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status
            .lines()
            .find(|line| line.starts_with(&format!("{field}:")))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// kill -TERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Everything it printed so far (stdout and stderr), one line per line.
    pub fn logs(&self) -> String {
        self.logs.lock().expect("logs").join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
