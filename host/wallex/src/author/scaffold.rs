//! `wallex projections new NAME [--lang rust|python|javascript] [--dir DIR]`.
//!
//! Why it exists: the shortest way to a working projection is one that already works. A new
//! project has one table, a `handle`, three golden cases (a row, history plus new events, a
//! refused event) and a README, and `wallex projections test DIR` passes on it as it is. The
//! templates live in `projections/templates/` and are compiled into the binary; Python and
//! JavaScript projects get the WIT contract in `DIR/wit/`.
//!
//! Architecture invariant: it writes only into a folder that does not exist or is empty.

use std::path::{Path, PathBuf};

use wallex_runtime::schema::is_projection_name;

use super::builder::COMPONENTIZE_PY;
use super::{shown, AuthorError, Language, NewArgs};

/// jco and componentize-js, pinned in a new JavaScript project's `package.json`.
pub const JCO_VERSION: &str = "1.34.0";
/// See [`JCO_VERSION`].
pub const COMPONENTIZE_JS_VERSION: &str = "0.22.0";

/// The contract a Python or JavaScript project is built against (`DIR/wit/projection.wit`).
const WIT: &str = include_str!("../../../../wit/projection.wit");
/// The SDK of the source tree this binary was built from (the default `--sdk`).
const SOURCE_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../projections/sdk");

macro_rules! template {
    ($path:literal) => {
        include_str!(concat!("../../../../projections/templates/", $path))
    };
}

/// The cases every new project starts with.
const CASES: &[(&str, &str)] = &[
    (
        "tests/wallet-created.json",
        template!("common/tests/wallet-created.json"),
    ),
    ("tests/history.json", template!("common/tests/history.json")),
    (
        "tests/missing-owner.json",
        template!("common/tests/missing-owner.json"),
    ),
];

/// A language's files: (path in the project, template).
fn files(language: Language) -> Vec<(&'static str, &'static str)> {
    let own: &[(&str, &str)] = match language {
        Language::Rust => &[
            ("Cargo.toml", template!("rust/Cargo.toml.tmpl")),
            ("src/lib.rs", template!("rust/src/lib.rs.tmpl")),
            ("README.md", template!("rust/README.md.tmpl")),
            (".gitignore", template!("rust/gitignore.tmpl")),
        ],
        Language::Python => &[
            ("app.py", template!("python/app.py.tmpl")),
            ("README.md", template!("python/README.md.tmpl")),
            (".gitignore", template!("python/gitignore.tmpl")),
            ("wit/projection.wit", WIT),
        ],
        Language::Javascript => &[
            ("projection.js", template!("javascript/projection.js.tmpl")),
            ("package.json", template!("javascript/package.json.tmpl")),
            ("README.md", template!("javascript/README.md.tmpl")),
            (".gitignore", template!("javascript/gitignore.tmpl")),
            ("wit/projection.wit", WIT),
        ],
    };
    own.iter().chain(CASES).copied().collect()
}

/// What `new` made.
#[derive(Debug, Clone)]
pub struct Created {
    /// The project folder.
    pub dir: PathBuf,
    /// The files written, relative to it.
    pub files: Vec<&'static str>,
}

/// Creates the project.
pub fn create(args: &NewArgs) -> Result<Created, AuthorError> {
    if !is_projection_name(&args.name) {
        return Err(AuthorError::Invalid(format!(
            "{:?} is not a projection name ([a-z][a-z0-9_-], at most 41 characters)",
            args.name
        )));
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    let occupied = dir
        .read_dir()
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    if occupied || dir.is_file() {
        return Err(AuthorError::Invalid(format!(
            "{} exists and is not empty; choose another --dir",
            shown(&dir)
        )));
    }
    let sdk = match (&args.sdk, args.lang) {
        (_, Language::Python | Language::Javascript) => String::new(),
        (Some(sdk), Language::Rust) => absolute(sdk)?,
        (None, Language::Rust) => absolute(Path::new(SOURCE_SDK)).map_err(|_| {
            AuthorError::Invalid(format!(
                "the wallex projection SDK is not at {SOURCE_SDK} (this binary's source tree); pass --sdk PATH/projections/sdk"
            ))
        })?,
    };
    if args.lang == Language::Rust && !Path::new(&sdk).join("Cargo.toml").is_file() {
        return Err(AuthorError::Invalid(format!(
            "{sdk} is not the wallex projection SDK (no Cargo.toml); pass --sdk PATH/projections/sdk"
        )));
    }
    let crate_name = format!("projection-{}", args.name.replace('_', "-"));
    let pip = COMPONENTIZE_PY;
    let written = files(args.lang);
    for (path, template) in &written {
        let text = template
            .replace("{{name}}", &args.name)
            .replace("{{crate}}", &crate_name)
            .replace("{{sdk}}", &sdk)
            .replace("{{componentize_py}}", pip)
            .replace("{{jco}}", JCO_VERSION)
            .replace("{{componentize_js}}", COMPONENTIZE_JS_VERSION);
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|source| AuthorError::Io {
                path: shown(parent),
                source,
            })?;
        }
        std::fs::write(&target, text).map_err(|source| AuthorError::Io {
            path: shown(&target),
            source,
        })?;
    }
    Ok(Created {
        dir,
        files: written.iter().map(|(path, _)| *path).collect(),
    })
}

fn absolute(path: &Path) -> Result<String, AuthorError> {
    std::fs::canonicalize(path)
        .map(|p| p.display().to_string())
        .map_err(|source| AuthorError::Io {
            path: shown(path),
            source,
        })
}

/// What to run next, after `new`.
pub fn print_next_steps(created: &Created, args: &NewArgs) {
    let dir = shown(&created.dir);
    println!(
        "created {} projection {} in {dir} ({} files)",
        args.lang.as_str(),
        args.name,
        created.files.len()
    );
    match args.lang {
        Language::Rust => {}
        Language::Python => println!("  pip install {COMPONENTIZE_PY}    # once"),
        Language::Javascript => println!("  (cd {dir} && npm install)    # once"),
    }
    println!("  wallex projections test {dir}");
    println!("  wallex projections deploy {dir}/target/projection.wasm");
}
