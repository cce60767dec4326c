//! ARCHITECTURE.md's checkable invariants, asserted on the source tree: which crate may depend on
//! which, that the HTTP crate builds no SQL, that one crate installs the process's subscriber,
//! exporter and recorder, that no crate's modules import one another in a circle, and that the
//! code map names every module. Reads files only (no build, no database).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The workspace's crates: package name, directory under the repository root.
const CRATES: [(&str, &str); 9] = [
    ("wallex-telemetry", "host/telemetry"),
    ("wallex-core", "host/core"),
    ("wallex-sandbox", "host/sandbox"),
    ("wallex-runtime", "host/runtime"),
    ("wallex-control", "host/control"),
    ("wallex-http", "host/http"),
    ("wallex", "host/wallex"),
    ("wallex-kurrentdb-stub", "host/kurrentdb-stub"),
    ("wallex-test-support", "tests/support"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The names in a manifest's `[dependencies]` table (not dev or build dependencies).
fn dependencies(krate: &str) -> BTreeSet<String> {
    let manifest = read(&root().join(krate).join("Cargo.toml"));
    let mut names = BTreeSet::new();
    let mut inside = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == "[dependencies]";
            continue;
        }
        if !inside || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
        names.insert(name.to_owned());
    }
    names
}

/// Every `.rs` file under `dir`, with its path relative to `dir`.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in fs::read_dir(&next).unwrap_or_else(|e| panic!("{}: {e}", next.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(dir).expect("under dir").to_path_buf();
                files.push((relative, read(&path)));
            }
        }
    }
    files.sort();
    files
}

/// The code of a file without its comment lines (doc links are not dependencies).
fn code(text: &str) -> String {
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn crates_depend_only_on_the_layers_below_them() {
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("wallex-telemetry", &[][..]),
        ("wallex-core", &["wallex-telemetry"][..]),
        ("wallex-sandbox", &[][..]),
        (
            "wallex-runtime",
            &["wallex-sandbox", "wallex-core", "wallex-telemetry"][..],
        ),
        (
            "wallex-control",
            &[
                "wallex-runtime",
                "wallex-sandbox",
                "wallex-core",
                "wallex-telemetry",
            ][..],
        ),
        (
            "wallex-http",
            &[
                "wallex-control",
                "wallex-runtime",
                "wallex-core",
                "wallex-telemetry",
            ][..],
        ),
        (
            "wallex",
            &[
                "wallex-http",
                "wallex-control",
                "wallex-runtime",
                "wallex-sandbox",
                "wallex-core",
                "wallex-telemetry",
            ][..],
        ),
        ("wallex-kurrentdb-stub", &["wallex-telemetry"][..]),
        (
            "wallex-test-support",
            &["wallex-control", "wallex-runtime", "wallex-core"][..],
        ),
    ]);
    let ours: BTreeSet<&str> = CRATES.iter().map(|(name, _)| *name).collect();
    for (name, dir) in CRATES {
        let deps = dependencies(dir);
        let wrong: Vec<&String> = deps
            .iter()
            .filter(|d| ours.contains(d.as_str()) && !allowed[name].contains(&d.as_str()))
            .collect();
        assert!(
            wrong.is_empty(),
            "{name} may not depend on {wrong:?} (ARCHITECTURE.md, Code map)"
        );
    }
    // What each layer deliberately does without.
    let forbidden: [(&str, &[&str]); 9] = [
        (
            "host/telemetry",
            &["clap", "anyhow", "sqlx", "axum", "wasmtime"],
        ),
        ("host/core", &["clap", "anyhow", "axum", "wasmtime"]),
        (
            "host/sandbox",
            &["clap", "anyhow", "axum", "sqlx", "metrics", "serde_json"],
        ),
        ("host/runtime", &["clap", "anyhow", "axum", "wasmtime"]),
        ("host/control", &["clap", "anyhow", "axum", "wasmtime"]),
        ("host/http", &["clap", "anyhow", "wasmtime"]),
        ("host/kurrentdb-stub", &["anyhow", "sqlx"]),
        ("host/wallex", &[]),
        ("tests/support", &["clap", "anyhow", "axum", "wasmtime"]),
    ];
    for (dir, names) in forbidden {
        let deps = dependencies(dir);
        let present: Vec<&&str> = names.iter().filter(|n| deps.contains(**n)).collect();
        assert!(present.is_empty(), "{dir} depends on {present:?}");
    }
    assert!(
        dependencies("host/wallex").contains("clap"),
        "the binary owns the command line"
    );
}

#[test]
fn the_http_crate_builds_no_sql() {
    const SQL: [&str; 8] = [
        "sqlx::query",
        "\"SELECT ",
        "\"INSERT ",
        "\"UPDATE ",
        "\"DELETE ",
        "\"WITH ",
        "\"CREATE ",
        "\"DROP ",
    ];
    let mut found = Vec::new();
    for (file, text) in sources(&root().join("host/http/src")) {
        let code = code(&text);
        for needle in SQL {
            if code.contains(needle) {
                found.push(format!("{}: {needle}", file.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "wallex-http calls the table owners, it writes no SQL: {found:?}"
    );
}

#[test]
fn only_telemetry_installs_a_subscriber_an_exporter_or_a_recorder() {
    const INSTALLERS: [&str; 6] = [
        "tracing_subscriber",
        "set_global_default",
        "set_global_recorder",
        "install_recorder",
        "opentelemetry_otlp",
        "PrometheusBuilder",
    ];
    let mut found = Vec::new();
    for (_, dir) in CRATES {
        if dir == "host/telemetry" {
            continue;
        }
        for (file, text) in sources(&root().join(dir).join("src")) {
            let code = code(&text);
            for needle in INSTALLERS {
                if code.contains(needle) {
                    found.push(format!("{dir}/src/{}: {needle}", file.display()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "installed outside wallex-telemetry: {found:?}"
    );
    let telemetry = code(&read(&root().join("host/telemetry/src/lib.rs")));
    assert!(
        telemetry.contains("tracing_subscriber::registry()") && telemetry.contains("try_init"),
        "wallex-telemetry is where the subscriber is installed"
    );
}

/// A crate's top-level modules: `src/NAME.rs` and `src/NAME/` (not the crate root).
fn top_modules(src: &Path) -> BTreeSet<String> {
    fs::read_dir(src)
        .expect("src")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?.to_owned();
            if path.is_dir() {
                Some(name)
            } else {
                let module = name.strip_suffix(".rs")?;
                (module != "lib" && module != "main").then(|| module.to_owned())
            }
        })
        .collect()
}

/// The top-level modules that `text` (a file `depth` modules below its top-level module, 0 for
/// the module's own file) names through `crate::`, or through as many `super::` as reach the
/// crate root.
fn references(text: &str, depth: usize, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let code = code(text);
    let mut prefixes = vec!["crate::".to_owned()];
    prefixes.push("super::".repeat(depth + 1));
    let mut found = BTreeSet::new();
    for prefix in &prefixes {
        for (at, _) in code.match_indices(prefix.as_str()) {
            let before = code[..at].chars().next_back();
            let rest = &code[at + prefix.len()..];
            // `super::super::x` also contains `super::x`: only whole prefixes count.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => {
                    let group = &group[..group.find('}').unwrap_or(group.len())];
                    group
                        .split(',')
                        .filter_map(|item| item.trim().split("::").next())
                        .collect()
                }
                None => rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .into_iter()
                    .collect(),
            };
            found.extend(
                names
                    .into_iter()
                    .map(str::trim)
                    .filter(|name| modules.contains(*name))
                    .map(str::to_owned),
            );
        }
    }
    found
}

/// Which top-level module of the crate in `dir` imports which.
fn module_graph(dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join(dir).join("src");
    let modules = top_modules(&src);
    let mut graph: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for (file, text) in sources(&src) {
        let parts: Vec<String> = file
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let first = parts[0].trim_end_matches(".rs").to_owned();
        if !modules.contains(&first) {
            continue; // the crate root
        }
        let mut depth = parts.len() - 1;
        if parts.last().is_some_and(|p| p == "mod.rs") {
            depth -= 1;
        }
        for referenced in references(&text, depth, &modules) {
            if referenced != first {
                graph.entry(first.clone()).or_default().insert(referenced);
            }
        }
    }
    graph
}

/// One circle of `graph`, if there is any: the modules in import order, the first repeated last.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|start| visit(start, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_finder_sees_a_circle_and_a_grouped_import() {
    // The checks below must be able to fail.
    let modules: BTreeSet<String> = ["a", "b", "c"].map(str::to_owned).into();
    let text = "use crate::{a::X, b};\nuse super::super::c::Y;\n// crate::c is only a doc link";
    assert_eq!(
        references(text, 1, &modules),
        ["a", "b", "c"].map(str::to_owned).into()
    );
    assert_eq!(
        references(text, 0, &modules),
        ["a", "b"].map(str::to_owned).into()
    );
    let graph = BTreeMap::from([
        ("a".to_owned(), ["b".to_owned()].into()),
        ("b".to_owned(), ["c".to_owned()].into()),
        ("c".to_owned(), ["a".to_owned()].into()),
    ]);
    assert_eq!(
        circle(&graph),
        Some(["a", "b", "c", "a"].map(str::to_owned).to_vec())
    );
}

#[test]
fn no_crate_has_modules_that_import_one_another_in_a_circle() {
    for (name, dir) in CRATES {
        let graph = module_graph(dir);
        if let Some(found) = circle(&graph) {
            panic!(
                "{name}: modules import one another in a circle: {}",
                found.join(" → ")
            );
        }
    }
}

#[test]
fn the_code_map_names_every_module() {
    let map = read(&root().join("ARCHITECTURE.md"));
    for (name, dir) in CRATES {
        assert!(
            map.contains(&format!("`{dir}`")),
            "ARCHITECTURE.md has no section for {dir}"
        );
        if dir == "host/kurrentdb-stub" {
            continue; // described as a whole
        }
        for module in top_modules(&root().join(dir).join("src")) {
            let file = format!("`{module}.rs`");
            let folder = format!("`{module}/`");
            assert!(
                map.contains(&file) || map.contains(&folder),
                "ARCHITECTURE.md's code map does not name {name}'s module {module}"
            );
        }
    }
}

#[test]
fn only_the_sandbox_touches_wasmtime() {
    // How wallex narrows wasmtime is one crate's concern: no other crate depends on wasmtime or
    // names it in code, so every engine setting and per-call limit is in host/sandbox.
    let mut found = Vec::new();
    for (name, dir) in CRATES {
        if dir == "host/sandbox" {
            continue;
        }
        let deps = dependencies(dir);
        for crate_name in ["wasmtime", "wasmtime-wasi"] {
            if deps.contains(crate_name) {
                found.push(format!("{name} depends on {crate_name}"));
            }
        }
        for (file, text) in sources(&root().join(dir).join("src")) {
            let code = code(&text);
            if code.contains("wasmtime::") || code.contains("wasmtime_wasi::") {
                found.push(format!("{dir}/src/{}", file.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "wasmtime outside wallex-sandbox: {found:?}"
    );
    assert!(
        dependencies("host/sandbox").contains("wasmtime"),
        "wallex-sandbox is where wasmtime is used"
    );
}
