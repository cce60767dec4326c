// The variables a nested cargo (the guest build in `build.rs`, the SDK's tests in
// `tests/guest_sdk.rs`) must not inherit from the outer one: its target, flags and wrappers
// (clippy, a host-only `RUSTFLAGS`, a `CARGO_BUILD_TARGET`). Included by both.

/// Variables of the outer cargo that would leak into a nested one.
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
