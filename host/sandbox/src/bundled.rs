//! The three projections shipped inside the binary, built from `projections/` by `build.rs`.
//!
//! Why it exists: `cargo run` from a fresh clone must serve with working projections without
//! any file to deploy; `WALLEX_PROJECTIONS_DIR` replaces them with the `.wasm` files of a
//! directory.

/// (origin, component bytes) of each bundled projection.
pub const BUNDLED: &[(&str, &[u8])] = &[
    (
        "bundled:read-model",
        include_bytes!(concat!(
            env!("WALLEX_WASM_DIR"),
            "/wallex_projection_read_model.wasm"
        )),
    ),
    (
        "bundled:ledger",
        include_bytes!(concat!(
            env!("WALLEX_WASM_DIR"),
            "/wallex_projection_ledger.wasm"
        )),
    ),
    (
        "bundled:audit",
        include_bytes!(concat!(
            env!("WALLEX_WASM_DIR"),
            "/wallex_projection_audit.wasm"
        )),
    ),
];

/// Where `build.rs` put the components, including test-only fixtures such as
/// `wallex_projection_bad_mutation.wasm`.
pub const WASM_DIR: &str = env!("WALLEX_WASM_DIR");
