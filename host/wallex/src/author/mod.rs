//! The projection author's kit: `wallex projections new`, `build` and `test`.
//!
//! Why it exists: the people this host exists for ship projections as `.wasm` files. They should
//! go from nothing to a tested component without a server: scaffold a project that builds as it
//! is ([`scaffold`]), build it with its language's own tool ([`builder`]), and check it against
//! golden data files through the real sandbox, validator and planner in a throwaway schema of
//! the local PostgreSQL ([`golden`]).
//!
//! # Layout
//!
//! - this file — the commands' arguments, [`AuthorError`], `test`'s report;
//! - [`scaffold`] — `new`: one project per language from the templates under
//!   `projections/templates/`;
//! - [`builder`] — `build`: the language of a folder, its tool, the component it makes;
//! - [`golden`] — the case files and their runner.

pub mod builder;
pub mod golden;
pub mod scaffold;

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Serialize;
use sqlx::Connection;

use crate::config::ProjectionArgs;
use wallex_core::db::DEFAULT_DATABASE_URL;
use wallex_runtime::schema::ProjectionSchema;
use wallex_sandbox::engine::ProjectionRuntime;

/// Errors of the author commands: each prints as one line.
#[derive(Debug, thiserror::Error)]
pub enum AuthorError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A tool the build needs is not installed; the message names the command that installs it.
    #[error("{tool} is not installed: {install}")]
    MissingTool {
        /// The tool.
        tool: &'static str,
        /// How to install it.
        install: String,
    },
    /// The language's build failed (its output was shown above).
    #[error("building {dir} failed: {detail}")]
    BuildFailed {
        /// The project folder.
        dir: String,
        /// What failed.
        detail: String,
    },
    /// The component could not be loaded, or declares invalid tables.
    #[error("{0}")]
    Component(String),
    /// The local PostgreSQL refused or could not be reached.
    #[error("PostgreSQL: {0}")]
    Database(#[source] sqlx::Error),
    /// The command or a file is not usable; the message says what.
    #[error("{0}")]
    Invalid(String),
}

/// The languages a projection can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Rust on the wallex SDK (`projections/sdk`), built with cargo for `wasm32-wasip2`.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with jco (componentize-js).
    Javascript,
}

impl Language {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rust => "rust",
            Self::Python => "python",
            Self::Javascript => "javascript",
        }
    }
}

/// `wallex projections new`.
#[derive(Debug, Clone, Args)]
pub struct NewArgs {
    /// The projection's name (`[a-z][a-z0-9_-]{0,40}`): its tables live in `projection_<name>`.
    pub name: String,
    /// The language of the project.
    #[arg(long, value_enum, default_value = "rust")]
    pub lang: Language,
    /// Where to create it (default: `./NAME`); it must not exist or be empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The wallex projection SDK crate a Rust project depends on (default: the one in the
    /// source tree this binary was built from).
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

/// `wallex projections build`.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// The project folder.
    pub dir: PathBuf,
}

/// `wallex projections test`.
#[derive(Debug, Clone, Args)]
pub struct TestArgs {
    /// A project folder (built first, cases in its `tests/`) or a built `.wasm` (cases in
    /// `--cases`, default `tests/` beside it).
    pub target: PathBuf,
    /// Run only this case (a file name in the cases folder, without `.json`).
    #[arg(long = "case")]
    pub case: Option<String>,
    /// The folder of case files (default: the project's `tests/`).
    #[arg(long)]
    pub cases: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write what the projection does as each case's expectation.
    #[arg(long)]
    pub update: bool,
    /// The PostgreSQL database the throwaway schemas are created in (created if missing).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
}

/// The outcome of `wallex projections test`: the cases, and whether all passed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TestReport {
    /// The projection's name.
    pub projection: String,
    /// The component tested.
    pub component: String,
    /// Each case.
    pub cases: Vec<golden::CaseOutcome>,
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
    /// Whether `--update` rewrote the case files.
    pub updated: bool,
}

/// The limits a server started with the same environment would give a projection's calls.
fn serve_limits() -> Result<wallex_sandbox::engine::RuntimeLimits, AuthorError> {
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        projection: ProjectionArgs,
    }
    let defaults = <Defaults as clap::Parser>::try_parse_from(["wallex"])
        .map_err(|e| AuthorError::Invalid(format!("projection settings: {e}")))?;
    let options = defaults
        .projection
        .settings()
        .map_err(|e| AuthorError::Invalid(format!("projection settings: {e}")))?;
    Ok(options.resolve().limits)
}

/// Runs `wallex projections test`: builds a project folder first, then every case.
pub async fn test(args: &TestArgs) -> Result<TestReport, AuthorError> {
    let (wasm, cases_dir) = if args.target.is_dir() {
        let built = builder::build(&args.target, !args.json)?;
        let cases = args
            .cases
            .clone()
            .unwrap_or_else(|| args.target.join(golden::CASES_DIR));
        (built, cases)
    } else {
        let beside = args
            .target
            .parent()
            .map(|p| p.join(golden::CASES_DIR))
            .unwrap_or_else(|| PathBuf::from(golden::CASES_DIR));
        (args.target.clone(), args.cases.clone().unwrap_or(beside))
    };
    let cases = golden::read_cases(&cases_dir, args.case.as_deref())?;
    let limits = serve_limits()?;
    let bytes = std::fs::read(&wasm).map_err(|source| AuthorError::Io {
        path: wasm.display().to_string(),
        source,
    })?;
    let origin = wasm.display().to_string();
    let component = tokio::task::spawn_blocking(move || load_cached(limits, &origin, &bytes))
        .await
        .map_err(|e| AuthorError::Component(e.to_string()))??;
    let info = component
        .info()
        .ok_or_else(|| AuthorError::Component("the component did not describe itself".into()))?;
    let schema = ProjectionSchema::from_info(info)
        .and_then(|s| s.with_stream_owners(component.stream_owners()))
        .map_err(|e| AuthorError::Component(format!("invalid declaration: {e}")))?;
    let mut conn = connect(&args.database_url).await?;
    let mut outcomes = Vec::with_capacity(cases.len());
    for case in &cases {
        let outcome = golden::run_case(&mut conn, &component, &schema, &limits, case).await?;
        if args.update {
            golden::update(case, &outcome)?;
        }
        outcomes.push(outcome);
    }
    let _ = conn.close().await;
    let passed = outcomes.iter().filter(|o| o.passed).count();
    Ok(TestReport {
        projection: schema.name.clone(),
        component: wasm.display().to_string(),
        failed: outcomes.len() - passed,
        passed,
        cases: outcomes,
        updated: args.update,
    })
}

/// Where compiled components are kept between runs of `test` (by engine and SHA-256), so that a
/// warm run does not compile again: `$WALLEX_CACHE_DIR`, else `$XDG_CACHE_HOME/wallex`, else
/// `~/.cache/wallex`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WALLEX_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("wallex")
}

/// Loads a component, from the compiled artifact cached by an earlier run when there is one
/// (written by this process only, under the bytes' SHA-256 and the engine's key).
fn load_cached(
    limits: wallex_sandbox::engine::RuntimeLimits,
    origin: &str,
    bytes: &[u8],
) -> Result<wallex_sandbox::engine::LoadedComponent, AuthorError> {
    let component =
        |e: wallex_sandbox::engine::ComponentError| AuthorError::Component(e.to_string());
    let runtime = ProjectionRuntime::new(limits).map_err(component)?;
    let dir = cache_dir().join("artifacts").join(runtime.engine_key());
    let sha256 = wallex_runtime::registry::sha256_hex(bytes);
    let file = dir.join(format!("{sha256}.cwasm"));
    if let Ok(artifact) = std::fs::read(&file) {
        match runtime
            .deserialize(origin, &artifact)
            .and_then(|compiled| runtime.link(origin, compiled))
        {
            Ok(loaded) => return Ok(loaded),
            Err(error) => {
                tracing::warn!(%error, file = %file.display(), "cached compiled component refused; compiling");
            }
        }
    }
    let compiled = runtime.compile(origin, bytes).map_err(component)?;
    if let Ok(artifact) = compiled.serialize() {
        // A cache that cannot be written only costs the next run a compile.
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            let partial = dir.join(format!("{sha256}.{}.partial", std::process::id()));
            std::fs::write(&partial, &artifact)?;
            std::fs::rename(&partial, &file)
        });
        if let Err(error) = written {
            tracing::debug!(%error, "cannot cache the compiled component");
        }
    }
    runtime.link(origin, compiled).map_err(component)
}

/// One connection to the database of `url`, creating the database if it is missing.
async fn connect(url: &str) -> Result<sqlx::PgConnection, AuthorError> {
    let config = wallex_core::db::DatabaseConfig {
        database_url: url.to_owned(),
        database_pool_size: 1,
        database_acquire_timeout_ms: 3_000,
        database_statement_timeout_ms: 60_000,
    };
    wallex_core::db::ensure_database(&config)
        .await
        .map_err(|e| AuthorError::Invalid(format!("PostgreSQL at {url}: {e}")))?;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .map_err(AuthorError::Database)?;
    // `DROP SCHEMA … CASCADE` notices are not news to an author.
    sqlx::query("SET client_min_messages = warning")
        .execute(&mut conn)
        .await
        .map_err(AuthorError::Database)?;
    Ok(conn)
}

/// Prints a report for people: one line per case, the differences under a failed one, and the
/// closing count.
pub fn print_report(report: &TestReport) {
    println!(
        "{}: {} case{} ({})",
        report.projection,
        report.cases.len(),
        if report.cases.len() == 1 { "" } else { "s" },
        report.component
    );
    for case in &report.cases {
        if case.passed {
            println!("  ok    {} ({} ms)", case.name, case.millis);
        } else {
            println!("  FAIL  {} ({} ms)", case.name, case.millis);
            for mismatch in &case.mismatches {
                println!("        {mismatch}");
            }
        }
    }
    if report.updated {
        println!(
            "wrote what the projection did as the expectation of {} case(s)",
            report.cases.len()
        );
    }
    println!("{} passed, {} failed", report.passed, report.failed);
}

/// The folder a path names, for messages.
pub(crate) fn shown(path: &Path) -> String {
    path.display().to_string()
}
