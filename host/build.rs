//! Builds the bundled projection components (`projections/`, a separate cargo workspace) for
//! `wasm32-wasip2`, so that a fresh clone needs no manual step: the host embeds the resulting
//! `.wasm` files (see `src/projection/bundled.rs`), and the tests use the test-only fixtures.
//!
//! The nested cargo must not inherit the outer build's target, flags or wrappers (clippy, a
//! host-only `RUSTFLAGS`, a `CARGO_BUILD_TARGET`), so those are cleared.

use std::path::PathBuf;
use std::process::Command;

/// Variables of the outer cargo that would leak into the nested guest build.
const CLEARED_ENV: &[&str] = &[
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "CARGO_PRIMARY_PACKAGE",
    "RUSTDOCFLAGS",
];

const GUEST_TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest_dir
        .parent()
        .expect("host/ has a parent")
        .to_path_buf();
    let guests = root.join("projections");
    let target_dir = root.join("target").join("wasm-guests");
    for watched in [
        "wit",
        "projections/Cargo.toml",
        "projections/Cargo.lock",
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
    let status = command
        .status()
        .expect("could not run cargo to build the projection components");
    assert!(
        status.success(),
        "building the projection components for {GUEST_TARGET} failed"
    );
    let wasm_dir = target_dir.join(GUEST_TARGET).join("release");
    println!("cargo:rustc-env=WALLEX_WASM_DIR={}", wasm_dir.display());
}
