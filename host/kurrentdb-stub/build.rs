//! Generates the gRPC server code from the `.proto` files in `proto/`, without `protoc`:
//! `protox` parses them (it also supplies the `google/protobuf/*.proto` well-known types they
//! import) and `tonic-build` turns the descriptors into Rust.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", proto_dir.display());

    // `streams.proto` imports `shared.proto`, `status.proto` (which imports `code.proto`) and the
    // well-known types; `compile` follows the imports.
    let mut fds = protox::compile([proto_dir.join("streams.proto")], [&proto_dir])?;
    // The comments of the well-known types hold examples in other languages, which rustdoc would
    // run as doctests: drop their source info (tonic-build 0.13's `disable_comments` does not
    // reach the message generator).
    for file in &mut fds.file {
        if file.name().starts_with("google/protobuf/") {
            file.source_code_info = None;
        }
    }

    tonic_build::configure()
        .build_client(false)
        .build_server(true)
        // `google.protobuf.{Timestamp,Duration,Empty,Any}` are generated here rather than taken
        // from `prost-types`, which this crate does not depend on.
        .compile_well_known_types(true)
        // As the client does: the empty message is `()`.
        .extern_path(".event_store.client.Empty", "()")
        .compile_fds(fds)?;
    Ok(())
}
