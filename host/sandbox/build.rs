//! Builds the bundled projection components (`projections/`, a separate cargo workspace) for
//! `wasm32-wasip2`, so that a fresh clone needs no manual step: the host embeds the resulting
//! `.wasm` files (see `src/bundled.rs`), and the tests use the test-only fixtures.
//!
//! The nested cargo must not inherit the outer build's target, flags or wrappers (clippy, a
//! host-only `RUSTFLAGS`, a `CARGO_BUILD_TARGET`), so those are cleared.

use std::path::PathBuf;
use std::process::Command;

include!("nested_cargo_env.rs");

const GUEST_TARGET: &str = "wasm32-wasip2";

fn main() {
    if let Err(message) = ensure_guest_target() {
        // One line, no panic backtrace: a missing target is a setup problem, not a bug.
        eprintln!("error: {message}");
        std::process::exit(1);
    }
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    // host/sandbox → the repository root.
    let root = manifest_dir
        .ancestors()
        .nth(2)
        .expect("host/sandbox has a repository root above it")
        .to_path_buf();
    let guests = root.join("projections");
    let target_dir = root.join("target").join("wasm-guests");
    for watched in [
        "wit",
        "projections/Cargo.toml",
        "projections/Cargo.lock",
        "projections/sdk",
        "projections/read-model",
        "projections/ledger",
        "projections/audit",
        "projections/fixtures",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&guests)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            GUEST_TARGET,
            "--target-dir",
        ])
        .arg(&target_dir);
    for name in CLEARED_ENV {
        command.env_remove(name);
    }
    // Outer `CARGO_PROFILE_*` / `CARGO_ENCODED_*` settings describe the host build, not the guests.
    for (name, _) in std::env::vars_os() {
        if let Some(name) = name.to_str() {
            if name.starts_with("CARGO_PROFILE_") {
                command.env_remove(name);
            }
        }
    }
    match command.status() {
        Ok(status) if status.success() => {}
        Ok(_) => {
            eprintln!(
                "error: building the projection components for {GUEST_TARGET} failed (see the cargo output above)"
            );
            std::process::exit(1);
        }
        Err(error) => {
            eprintln!("error: could not run cargo to build the projection components: {error}");
            std::process::exit(1);
        }
    }
    let wasm_dir = target_dir.join(GUEST_TARGET).join("release");
    println!("cargo:rustc-env=WALLEX_WASM_DIR={}", wasm_dir.display());
}

/// Makes sure the standard library for [`GUEST_TARGET`] is installed for the toolchain that runs
/// this build, installing it through rustup when it is missing (a fresh machine with the pinned
/// toolchain but not its targets, or `RUSTUP_AUTO_INSTALL=0`). Errors are one line naming the
/// command that fixes the setup.
fn ensure_guest_target() -> Result<(), String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok();
    let fix = match &toolchain {
        Some(toolchain) => format!("rustup target add --toolchain {toolchain} {GUEST_TARGET}"),
        None => format!("rustup target add {GUEST_TARGET}"),
    };
    if target_installed(&rustc)? {
        return Ok(());
    }
    println!(
        "cargo:warning=the {GUEST_TARGET} target is missing; trying to install it with `{fix}`"
    );
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add"]);
    if let Some(toolchain) = &toolchain {
        rustup.args(["--toolchain", toolchain]);
    }
    rustup.arg(GUEST_TARGET);
    let installed = match rustup.status() {
        Ok(status) => status.success(),
        Err(_) => false,
    };
    if installed && target_installed(&rustc)? {
        Ok(())
    } else {
        Err(format!(
            "the Rust target {GUEST_TARGET} (needed to build the projection components) is not installed and could not be installed automatically; run `{fix}`"
        ))
    }
}

/// Whether the toolchain's sysroot has a standard library for [`GUEST_TARGET`].
fn target_installed(rustc: &std::ffi::OsStr) -> Result<bool, String> {
    let output = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", GUEST_TARGET])
        .output()
        .map_err(|error| {
            format!("could not run rustc to find the {GUEST_TARGET} target: {error}")
        })?;
    if !output.status.success() {
        // An unknown target (a rustc too old for it) also ends here: treat it as missing.
        return Ok(false);
    }
    let libdir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    Ok(libdir
        .read_dir()
        .map(|mut entries| {
            entries.any(|entry| {
                entry
                    .map(|entry| entry.file_name().to_string_lossy().starts_with("libcore-"))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false))
}
