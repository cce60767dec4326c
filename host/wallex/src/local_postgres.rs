//! A private PostgreSQL for `cargo run` and `wallex dev` on a machine where none is running.
//!
//! Why it exists: the quickstart is two commands. With no `DATABASE_URL` and nothing listening on
//! `127.0.0.1:5432`, `wallex serve` (and `wallex dev`) start a PostgreSQL of their own from the
//! machine's binaries (`initdb`/`pg_ctl` on `PATH`, else the newest `/usr/lib/postgresql/*/bin`)
//! in a data directory they name, on [`DEFAULT_PORT`], and stop it on exit. Where no binaries
//! exist, one line says how to install PostgreSQL. Nothing is downloaded.
//!
//! As root (CI, containers), `initdb` refuses to run; the server is then run as the `postgres`
//! system user (`runuser`), which owns the data directory.
//!
//! Architecture invariant: it only ever touches its own data directory, and stops only a server
//! it started. API boundary: processes and files; it hands the caller a database URL.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Port of the private server (one that a system PostgreSQL does not use).
pub const DEFAULT_PORT: u16 = 54329;
/// The address whose silence means "no PostgreSQL here".
pub const PROBE_ADDR: &str = "127.0.0.1:5432";
/// How long the probe waits for a connection.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long `pg_ctl` may take to start or stop the server, in seconds.
const PG_CTL_WAIT_SECS: &str = "60";
/// The system user that runs the server when wallex runs as root.
const POSTGRES_USER: &str = "postgres";

/// When to start a private PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Only when `DATABASE_URL` is not set and nothing listens on 127.0.0.1:5432.
    Auto,
    /// Always (a throwaway development database whatever else runs).
    Always,
    /// Never: without a database the server fails to start.
    Never,
}

/// Settings of the private PostgreSQL.
#[derive(Debug, Clone, Args)]
pub struct PrivatePostgresArgs {
    /// When to start a private PostgreSQL from the machine's binaries.
    #[arg(
        long,
        env = "WALLEX_PRIVATE_POSTGRES",
        value_enum,
        default_value = "auto"
    )]
    pub private_postgres: Mode,
    /// Its data directory (default: `$XDG_DATA_HOME/wallex/postgres`, else
    /// `~/.local/share/wallex/postgres`; as root `/tmp/wallex-postgres`); created and initialised
    /// if empty, kept between runs.
    #[arg(long, env = "WALLEX_PRIVATE_POSTGRES_DIR")]
    pub private_postgres_dir: Option<PathBuf>,
    /// Its port on 127.0.0.1.
    #[arg(long, env = "WALLEX_PRIVATE_POSTGRES_PORT", default_value_t = DEFAULT_PORT)]
    pub private_postgres_port: u16,
}

/// Why a private PostgreSQL could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PrivatePostgresError {
    /// No server binaries on this machine.
    #[error("no PostgreSQL is reachable at {PROBE_ADDR} and none is installed to start a private one: install PostgreSQL 15 or later (Debian/Ubuntu: `apt-get install postgresql`) or set DATABASE_URL")]
    NotInstalled,
    /// Running as root without a `postgres` system user to run the server as.
    #[error("initdb cannot run as root and there is no `postgres` system user to run it as: run wallex as another user, or set DATABASE_URL")]
    NoUser,
    /// A step failed; the message says which, with the tool's output.
    #[error("the private PostgreSQL in {dir}: {step} failed: {detail}")]
    Step {
        /// The data directory.
        dir: String,
        /// `initdb`, `pg_ctl start`, …
        step: &'static str,
        /// The tool's output or error.
        detail: String,
    },
}

/// A PostgreSQL this process started; stopped when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    run_as_postgres: bool,
    port: u16,
}

impl PrivatePostgres {
    /// Starts a private PostgreSQL when `args` say so; `database_url_given` is whether the user
    /// chose a database (`DATABASE_URL` or `--database-url`).
    pub fn start_if_needed(
        args: &PrivatePostgresArgs,
        database_url_given: bool,
    ) -> Result<Option<Self>, PrivatePostgresError> {
        let wanted = match args.private_postgres {
            Mode::Never => false,
            Mode::Always => true,
            Mode::Auto => !database_url_given && !listening(PROBE_ADDR),
        };
        if !wanted {
            return Ok(None);
        }
        let data = args
            .private_postgres_dir
            .clone()
            .unwrap_or_else(default_dir);
        Self::start(&data, args.private_postgres_port).map(Some)
    }

    /// Initialises `data` if needed and starts the server on `port`.
    pub fn start(data: &Path, port: u16) -> Result<Self, PrivatePostgresError> {
        let bin = binaries().ok_or(PrivatePostgresError::NotInstalled)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if root && !user_exists(POSTGRES_USER) {
            return Err(PrivatePostgresError::NoUser);
        }
        let server = Self {
            bin,
            data: data.to_owned(),
            run_as_postgres: root,
            port,
        };
        let step = |step: &'static str, detail: String| PrivatePostgresError::Step {
            dir: data.display().to_string(),
            step,
            detail,
        };
        std::fs::create_dir_all(data).map_err(|e| step("creating the directory", e.to_string()))?;
        if root {
            server.run(
                "chown",
                Command::new("chown")
                    .arg("-R")
                    .arg(format!("{POSTGRES_USER}:"))
                    .arg(data),
            )?;
        }
        if !data.join("PG_VERSION").is_file() {
            tracing::info!(dir = %data.display(), "initialising a private PostgreSQL");
            let mut initdb = server.tool("initdb");
            initdb.arg("-D").arg(data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
            ]);
            server.run("initdb", &mut initdb)?;
        }
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            data.display()
        );
        let mut start = server.tool("pg_ctl");
        start
            .arg("-D")
            .arg(data)
            .arg("-l")
            .arg(data.join("server.log"))
            .args(["-o", &options, "-w", "-t", PG_CTL_WAIT_SECS, "start"]);
        server.run("pg_ctl start", &mut start)?;
        tracing::warn!(
            dir = %data.display(),
            url = %server.url(),
            "started a private PostgreSQL (no DATABASE_URL and nothing on {PROBE_ADDR}, or WALLEX_PRIVATE_POSTGRES=always); it stops on exit, its data stays in the directory"
        );
        Ok(server)
    }

    /// The URL of the `wallex` database on it (created by the server at start-up).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/wallex", self.port)
    }

    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        if self.run_as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", POSTGRES_USER, "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn run(&self, step: &'static str, command: &mut Command) -> Result<(), PrivatePostgresError> {
        let failed = |detail: String| PrivatePostgresError::Step {
            dir: self.data.display().to_string(),
            step,
            detail,
        };
        let output = command.output().map_err(|e| failed(e.to_string()))?;
        if output.status.success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&output.stderr);
        let text = if text.trim().is_empty() {
            String::from_utf8_lossy(&output.stdout).into_owned()
        } else {
            text.into_owned()
        };
        Err(failed(
            text.lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("no output")
                .trim()
                .to_owned(),
        ))
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut stop = self.tool("pg_ctl");
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "-t", PG_CTL_WAIT_SECS, "stop"]);
        match self.run("pg_ctl stop", &mut stop) {
            Ok(()) => tracing::info!(dir = %self.data.display(), "private PostgreSQL stopped"),
            Err(error) => tracing::error!(%error, "cannot stop the private PostgreSQL"),
        }
    }
}

/// Whether something accepts TCP connections at `addr`.
fn listening(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .is_ok_and(|addr| TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok())
}

fn default_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // The `postgres` user that runs the server as root cannot enter root's home.
        return std::env::temp_dir().join("wallex-postgres");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("wallex").join("postgres")
}

/// The folder holding `initdb` and `pg_ctl`: on `PATH`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn binaries() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&path).find(|dir| has_both(dir)) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_both(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg("-u")
        .arg(name)
        .output()
        .is_ok_and(|o| o.status.success())
}
