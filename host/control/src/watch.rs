//! The projections directory watch: a new or changed `.wasm` in `WALLEX_PROJECTIONS_DIR` is
//! validated and deployed within a scan interval.
//!
//! Why it exists: local development (rebuild the component, see it live) and plain file-based
//! deployment. It scans instead of relying on file-system events, which behave differently across
//! platforms, editors and container mounts; a scan only reads files whose size or modification
//! time changed. An invalid file changes nothing: the running version keeps running, the reason
//! is logged, recorded in the admin audit trail and shown as the projection's `lastDeployError`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{registry, Projections, COMPONENT_EXTENSION, MAX_COMPONENTS};
use crate::outcome::WATCH_ACTOR;

/// What the watch last saw of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    modified: Option<SystemTime>,
    len: u64,
    sha256: String,
}

/// Scans `dir` every `interval` until shutdown.
pub async fn run(
    projections: Projections,
    dir: PathBuf,
    interval: Duration,
    shutdown: CancellationToken,
) {
    // Start from what start-up loaded (not from the files as they are now: one changed between
    // start-up and this task's first scan must still be deployed). No modification time is
    // known, so the first scan reads every file once and compares digests.
    let loaded = projections.startup_files();
    let mut seen: HashMap<PathBuf, Seen> = HashMap::new();
    for (path, _) in scan(&dir).await {
        if let Some(sha256) = loaded.get(&directory_source(&path)) {
            seen.insert(
                path,
                Seen {
                    modified: None,
                    len: u64::MAX,
                    sha256: sha256.clone(),
                },
            );
        }
    }
    // The projection each file deployed last (to report a later failure on it).
    let mut names: HashMap<PathBuf, String> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        for (path, metadata) in scan(&dir).await {
            let modified = metadata.modified().ok();
            if seen
                .get(&path)
                .is_some_and(|s| s.modified == modified && s.len == metadata.len())
            {
                continue;
            }
            let Ok(bytes) = tokio::fs::read(&path).await else {
                continue;
            };
            let sha256 = registry::sha256_hex(&bytes);
            let unchanged = seen.get(&path).is_some_and(|s| s.sha256 == sha256);
            seen.insert(
                path.clone(),
                Seen {
                    modified,
                    len: metadata.len(),
                    sha256,
                },
            );
            if unchanged {
                continue;
            }
            deploy_file(&projections, &path, bytes, &mut names).await;
        }
    }
}

async fn deploy_file(
    projections: &Projections,
    path: &Path,
    bytes: Vec<u8>,
    names: &mut HashMap<PathBuf, String>,
) {
    let source = directory_source(path);
    let outcome = match projections.validate(bytes, &source).await {
        Ok(candidate) => {
            let name = candidate.schema.name.clone();
            names.insert(path.to_path_buf(), name.clone());
            projections
                .sync_source(candidate, &source, WATCH_ACTOR)
                .await
                .map(|activation| (name, activation))
        }
        Err(error) => Err(error),
    };
    match outcome {
        Ok((name, activation)) => {
            tracing::info!(file = %path.display(), projection = %name, outcome = activation.as_str(), "component file deployed");
            if let Some(projector) = projections.get(&name) {
                projector.set_last_deploy_error(None);
            }
        }
        Err(error) => {
            let message = format!("{}: {error}", path.display());
            tracing::error!(file = %path.display(), %error, "component file rejected; the running version keeps running");
            let name = names.get(path).cloned();
            if let Some(projector) = name.as_deref().and_then(|n| projections.get(n)) {
                projector.set_last_deploy_error(Some(message.clone()));
            }
            let detail = json!({ "file": path.display().to_string(), "error": error.to_string() });
            let recorded = match projections.pool().acquire().await {
                Ok(mut conn) => {
                    registry::record_action(
                        &mut conn,
                        WATCH_ACTOR,
                        "deploy",
                        name.as_deref(),
                        "rejected",
                        &detail,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            if let Err(error) = recorded {
                tracing::warn!(%error, "cannot record the rejected deploy");
            }
        }
    }
}

/// `directory:<file name>`: the source recorded for a component from the directory.
pub fn directory_source(path: &Path) -> String {
    format!(
        "directory:{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    )
}

/// The component files of `dir` with their metadata (at most [`MAX_COMPONENTS`]).
async fn scan(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut found = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        tracing::warn!(dir = %dir.display(), "cannot read the projections directory");
        return found;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != COMPONENT_EXTENSION) {
            continue;
        }
        if let Ok(metadata) = entry.metadata().await {
            if metadata.is_file() {
                found.push((path, metadata));
            }
        }
        if found.len() >= MAX_COMPONENTS {
            break;
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}
