//! The projection author SDK's own tests (`projections/sdk`: event decoding, mutations, the
//! export glue, its doc examples), run natively.
//!
//! Why here: `projections/` is a separate cargo workspace that this crate's build script builds
//! for `wasm32-wasip2`, so `cargo test --workspace` at the root would never run the SDK's tests.
//! They run in a target directory of their own (`target/sdk-native`), so they never wait on the
//! outer build's lock.

use std::path::PathBuf;
use std::process::Command;

include!("../nested_cargo_env.rs");

#[test]
fn the_author_sdk_passes_its_own_tests() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root.join("projections"))
        .args([
            "test",
            "--locked",
            "-p",
            "wallex-projection-sdk",
            "--target-dir",
        ])
        .arg(root.join("target/sdk-native"));
    for name in CLEARED_ENV {
        command.env_remove(name);
    }
    let output = command.output().expect("cargo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the SDK's tests failed:\n{stdout}\n{stderr}"
    );
    // The unit tests and the doc tests each report; none may be missing.
    let passed: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("test result: ok."))
        .collect();
    assert!(passed.len() >= 2, "no test results in:\n{stdout}");
}
