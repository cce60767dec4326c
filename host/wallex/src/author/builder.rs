//! `wallex projections build DIR`: a project folder into a component, with its language's tool.
//!
//! Why it exists: an author should not need to remember three toolchains' flags. The language
//! is read off the folder (`Cargo.toml`: Rust; `app.py`: Python; `package.json`: JavaScript),
//! the tool is run with the project's own `wit/` folder, and the component always lands in
//! `DIR/target/projection.wasm`. A missing tool is one line naming the command that installs it.
//!
//! Architecture invariant: the build only writes under `DIR/target/` (and the tools' own
//! caches). API boundary: runs external tools; knows nothing of the runtime.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{shown, AuthorError, Language};

/// Where every build leaves its component, under the project folder.
pub const OUTPUT: &str = "target/projection.wasm";
/// The Rust target components are built for.
pub const RUST_TARGET: &str = "wasm32-wasip2";
/// componentize-py, pinned: the version the Python template and the test suite use.
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
/// The JavaScript tools, pinned in the template's `package.json`.
pub const JCO_INSTALL: &str = "npm install (in the project folder; package.json pins @bytecodealliance/jco and @bytecodealliance/componentize-js)";

/// The language of a project folder.
pub fn language(dir: &Path) -> Result<Language, AuthorError> {
    if dir.join("Cargo.toml").is_file() {
        Ok(Language::Rust)
    } else if dir.join("app.py").is_file() {
        Ok(Language::Python)
    } else if dir.join("package.json").is_file() {
        Ok(Language::Javascript)
    } else {
        Err(AuthorError::Invalid(format!(
            "{} is not a projection project: no Cargo.toml (Rust), app.py (Python) or package.json (JavaScript); `wallex projections new NAME` makes one",
            shown(dir)
        )))
    }
}

/// Builds the project in `dir`; answers the component's path. With `verbose`, the tool's output
/// goes to the terminal (stderr); otherwise it is shown only when the build fails.
pub fn build(dir: &Path, verbose: bool) -> Result<PathBuf, AuthorError> {
    let language = language(dir)?;
    let out = dir.join(OUTPUT);
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|source| AuthorError::Io {
            path: shown(parent),
            source,
        })?;
    }
    // cargo knows when nothing changed; componentize-py and jco rebuild every time (and their
    // output differs from build to build), so an output newer than every source is kept.
    let fresh = language != Language::Rust && up_to_date(dir, &out);
    match language {
        Language::Rust => build_rust(dir, &out, verbose)?,
        _ if fresh => {}
        Language::Python => {
            let mut command = Command::new("componentize-py");
            command
                .current_dir(dir)
                .args(["-d", "wit", "-w", "projection", "componentize", "app", "-o"])
                .arg(&out);
            run(
                command,
                dir,
                "componentize-py",
                || format!("pip install {COMPONENTIZE_PY}"),
                verbose,
            )?;
        }
        Language::Javascript => {
            let jco = dir.join("node_modules/.bin/jco");
            if !jco.is_file() {
                return Err(AuthorError::MissingTool {
                    tool: "jco",
                    install: JCO_INSTALL.to_owned(),
                });
            }
            let mut command = Command::new(&jco);
            command
                .current_dir(dir)
                .args([
                    "componentize",
                    "projection.js",
                    "--wit",
                    "wit",
                    "--world-name",
                    "projection",
                    "--disable",
                    "all",
                    "-o",
                ])
                .arg(&out);
            run(command, dir, "jco", || JCO_INSTALL.to_owned(), verbose)?;
        }
    }
    if !out.is_file() {
        return Err(AuthorError::BuildFailed {
            dir: shown(dir),
            detail: format!("the build left no {}", shown(&out)),
        });
    }
    Ok(out)
}

/// Folders of a project that hold no sources (build output, installed tools, generated code).
const GENERATED: &[&str] = &["target", "node_modules", "__pycache__", "wit_world", ".git"];
/// The folder of the cases, which are read at test time, not built.
const CASES: &str = "tests";

/// Whether `out` exists and is newer than every source file of the project.
fn up_to_date(dir: &Path, out: &Path) -> bool {
    let Ok(built) = std::fs::metadata(out).and_then(|m| m.modified()) else {
        return false;
    };
    newest_file(dir, false).is_some_and(|newest| newest <= built)
}

/// When the newest file of the project changed (sources, and with `with_cases` the cases too);
/// `None` if the folder cannot be read.
pub fn newest_file(dir: &Path, with_cases: bool) -> Option<std::time::SystemTime> {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).ok()?.flatten() {
            let name = entry.file_name();
            let kind = entry.file_type().ok()?;
            if kind.is_dir() {
                let skipped = GENERATED.iter().any(|n| name == *n)
                    || (!with_cases && folder == dir && name == CASES);
                if !skipped {
                    pending.push(entry.path());
                }
            } else {
                newest = newest.max(entry.metadata().and_then(|m| m.modified()).ok()?);
            }
        }
    }
    Some(newest)
}

fn build_rust(dir: &Path, out: &Path, verbose: bool) -> Result<(), AuthorError> {
    ensure_rust_target()?;
    let manifest = dir.join("Cargo.toml");
    let mut command = Command::new(cargo());
    command
        .current_dir(dir)
        .args([
            "build",
            "--release",
            "--target",
            RUST_TARGET,
            "--manifest-path",
        ])
        .arg(&manifest);
    run(command, dir, "cargo", rustup_hint, verbose)?;
    let name = cdylib_name(dir)?;
    // A CARGO_TARGET_DIR shared by several projects (their dependencies built once) is honoured.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("target"));
    let built = target_dir
        .join(RUST_TARGET)
        .join("release")
        .join(format!("{name}.wasm"));
    std::fs::copy(&built, out).map_err(|source| AuthorError::Io {
        path: shown(&built),
        source,
    })?;
    Ok(())
}

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn rustup_hint() -> String {
    "install Rust with rustup (https://rustup.rs), then `rustup target add wasm32-wasip2`"
        .to_owned()
}

/// The file name cargo gives the project's `cdylib` (its lib name).
fn cdylib_name(dir: &Path) -> Result<String, AuthorError> {
    let output = Command::new(cargo())
        .current_dir(dir)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(dir.join("Cargo.toml"))
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| AuthorError::Io {
            path: "cargo metadata".into(),
            source,
        })?;
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| AuthorError::BuildFailed {
            dir: shown(dir),
            detail: format!("cargo metadata: {e}"),
        })?;
    metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .find(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .and_then(|t| t["name"].as_str().map(|n| n.replace('-', "_")))
        .ok_or_else(|| AuthorError::BuildFailed {
            dir: shown(dir),
            detail: "the package has no `cdylib` library (crate-type = [\"cdylib\"])".into(),
        })
}

/// Installs the Rust target with rustup when it is missing, as the host's own build does.
fn ensure_rust_target() -> Result<(), AuthorError> {
    let installed = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", RUST_TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|libdir| {
            libdir.read_dir().is_ok_and(|mut entries| {
                entries.any(|e| {
                    e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
                })
            })
        });
    if installed {
        return Ok(());
    }
    eprintln!(
        "the {RUST_TARGET} target is missing; installing it with `rustup target add {RUST_TARGET}`"
    );
    let added = Command::new("rustup")
        .args(["target", "add", RUST_TARGET])
        .status()
        .is_ok_and(|s| s.success());
    if added {
        Ok(())
    } else {
        Err(AuthorError::MissingTool {
            tool: "the wasm32-wasip2 Rust target",
            install: format!("rustup target add {RUST_TARGET}"),
        })
    }
}

/// Runs a build tool; a tool that cannot be started is [`AuthorError::MissingTool`].
fn run(
    mut command: Command,
    dir: &Path,
    tool: &'static str,
    install: impl FnOnce() -> String,
    verbose: bool,
) -> Result<(), AuthorError> {
    if verbose {
        command.stdout(Stdio::inherit()).stderr(Stdio::inherit());
    } else {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let output = match command.output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(AuthorError::MissingTool {
                tool,
                install: install(),
            })
        }
        Err(source) => {
            return Err(AuthorError::Io {
                path: tool.to_owned(),
                source,
            })
        }
    };
    if output.status.success() {
        return Ok(());
    }
    if !verbose {
        eprint!("{}", String::from_utf8_lossy(&output.stdout));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
    }
    Err(AuthorError::BuildFailed {
        dir: shown(dir),
        detail: format!("{tool} exited with {}", output.status),
    })
}
