//! Generates the wit-bindgen bindings of both WIT worlds into `OUT_DIR` (`v0_1_0.rs`,
//! `v0_2_0.rs`), included by `src/export.rs`.
//!
//! This is what `wit_bindgen::generate!` with `pub_export_macro` would expand to, but for one
//! thing: wit-bindgen puts a component-type custom section describing the world's imports in the
//! library itself (besides the full world it puts in the export macro), and custom sections of
//! every crate in a component's graph end up in the component. The 0.2.0 world's "imports"
//! include its world-level type `stream-owner`, so every component built on this crate would
//! carry that type, 0.1.0 ones too. The library's sections are therefore dropped here: a
//! component's world is exactly the one its `export!` names.

use std::path::PathBuf;

use wit_bindgen_core::wit_parser::{Resolve, UnresolvedPackageGroup};
use wit_bindgen_core::{Files, WorldGenerator};
use wit_bindgen_rust::{Opts, WithOption};

/// A world of its own name per version: wit-bindgen names its `#[macro_export]` macros after the
/// world, and both versions' worlds are called `projection`. Each only `include`s its version's
/// world, so a component's imports and exports are exactly that world's.
const WRAPPERS: &str = "
package wallex:projection-sdk;
world v0-1-0 { include wallex:projection/projection@0.1.0; }
world v0-2-0 { include wallex:projection/projection@0.2.0; }
";

/// The 0.1.0 interfaces, generated once (in `v0_1_0`) and reused by `v0_2_0`.
const SHARED: [(&str, &str); 2] = [
    (
        "wallex:projection/types@0.1.0",
        "crate::__private::v0_1_0::wallex::projection0_1_0::types",
    ),
    (
        "wallex:projection/host@0.1.0",
        "crate::__private::v0_1_0::wallex::projection0_1_0::host",
    ),
];

/// The static wit-bindgen names every component-type section it emits.
const SECTION_STATIC: &str = "__WIT_BINDGEN_COMPONENT_TYPE";

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    // projections/sdk → the repository's wit/ (0.2.0 has 0.1.0 as a dependency).
    let wit = manifest_dir.join("../../wit");
    println!("cargo:rerun-if-changed={}", wit.display());
    println!("cargo:rerun-if-changed=build.rs");

    let mut resolve = Resolve::default();
    resolve
        .push_path(wit.join("v0.2.0"))
        .unwrap_or_else(|e| panic!("parsing {}: {e:?}", wit.display()));
    let group = UnresolvedPackageGroup::parse("wallex-projection-sdk.wit", WRAPPERS)
        .expect("the wrapper worlds parse");
    let sdk = resolve
        .push_group(group)
        .expect("the wrapper worlds resolve");

    for (world, module) in [("v0-1-0", "v0_1_0"), ("v0-2-0", "v0_2_0")] {
        let world_id = resolve
            .select_world(&[sdk], Some(world))
            .expect("the wrapper world exists");
        let mut opts = Opts {
            pub_export_macro: true,
            export_macro_name: Some(format!("export_{module}")),
            default_bindings_module: Some(format!("wallex_projection_sdk::__private::{module}")),
            ..Opts::default()
        };
        if module == "v0_1_0" {
            opts.generate_all = true;
        } else {
            opts.with = SHARED
                .iter()
                .map(|(interface, path)| {
                    (
                        (*interface).to_owned(),
                        WithOption::Path((*path).to_owned()),
                    )
                })
                .collect();
        }
        let mut files = Files::default();
        opts.build()
            .generate(&mut resolve, world_id, &mut files)
            .unwrap_or_else(|e| panic!("generating the bindings of {world}: {e:?}"));
        let (_, source) = files.iter().next().expect("one file generated");
        let source = std::str::from_utf8(source).expect("generated code is UTF-8");
        std::fs::write(
            out_dir.join(format!("{module}.rs")),
            without_library_section(source),
        )
        .expect("writing the bindings");
    }
}

/// The generated code without its top-level component-type static (the one describing the
/// library's imports); the one inside the export macro's body is kept.
fn without_library_section(source: &str) -> String {
    let mut file = syn::parse_file(source).expect("generated code parses");
    let before = file.items.len();
    file.items
        .retain(|item| !matches!(item, syn::Item::Static(s) if s.ident == SECTION_STATIC));
    assert_eq!(
        before - file.items.len(),
        1,
        "expected wit-bindgen to emit exactly one top-level {SECTION_STATIC}"
    );
    prettyplease::unparse(&file)
}
