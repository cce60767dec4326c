//! The command line's promise for bad input.

/// Asserts that a command failed with a one-line message starting with `prefix` (the CLI's
/// promise for bad input: one line, non-zero exit).
pub fn assert_one_line_error(output: &std::process::Output, prefix: &str) {
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(prefix), "{stderr}");
}
