//! Compiled components, stored: wasmtime's serialized artifact of each component, by the
//! component's SHA-256 and the engine's compatibility key (`projection_artifacts`).
//!
//! Why it exists: compiling a large component (a Python one is about 20 MiB) takes Cranelift
//! seconds and hundreds of MiB. With the artifact stored next to the component's bytes, a
//! restart, a rollback or another instance loads it in milliseconds without compiling, and the
//! compile itself happens once per version per cluster: whoever compiles holds a
//! transaction-scoped advisory lock on the (component, engine) pair, and the others wait for it
//! and then load what it stored.
//!
//! Architecture invariant: an artifact is only ever written by the host, from bytes it compiled
//! itself, under the SHA-256 of those bytes; a row that wasmtime refuses (another engine, a
//! damaged row) is ignored and replaced. API boundary: owns `projection_artifacts`; knows nothing
//! of wasmtime (bytes in, bytes out).

use sqlx::{PgConnection, PgExecutor};

/// Name prefix of the advisory lock taken while one (component, engine) pair compiles.
const COMPILE_LOCK: &str = "wallex-compile:";
/// Artifacts of other engines (an older wasmtime, other settings) are removed once they are this
/// old. Artifacts of this engine stay as long as the component bytes they were compiled from
/// (`projection_components` keeps every version, for rollbacks).
pub const STALE_AFTER_HOURS: i32 = 24;

/// The artifact stored for a component and engine, if any.
pub async fn fetch<'e>(
    executor: impl PgExecutor<'e>,
    sha256: &str,
    engine: &str,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT artifact FROM projection_artifacts WHERE sha256 = $1 AND engine = $2",
    )
    .bind(sha256)
    .bind(engine)
    .fetch_optional(executor)
    .await
}

/// Takes the transaction-scoped lock of one (component, engine) compile, waiting at most
/// `wait_ms` (PostgreSQL's `lock_timeout`, which advisory locks honour): the caller compiles
/// only while it holds it, so a cluster compiles each version once.
pub async fn lock_compile(
    tx: &mut PgConnection,
    sha256: &str,
    engine: &str,
    wait_ms: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{wait_ms}ms"))
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("{COMPILE_LOCK}{sha256}:{engine}"))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Stores (or replaces) the artifact of a component for an engine, and removes other engines'
/// stale ones (see [`STALE_AFTER_HOURS`]).
pub async fn store(
    conn: &mut PgConnection,
    sha256: &str,
    engine: &str,
    artifact: &[u8],
    compile_ms: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_artifacts (sha256, engine, artifact, size_bytes, compile_ms)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (sha256, engine) DO UPDATE
         SET artifact = EXCLUDED.artifact, size_bytes = EXCLUDED.size_bytes,
             compile_ms = EXCLUDED.compile_ms, created_at = now()",
    )
    .bind(sha256)
    .bind(engine)
    .bind(artifact)
    .bind(i64::try_from(artifact.len()).unwrap_or(i64::MAX))
    .bind(i64::try_from(compile_ms).unwrap_or(i64::MAX))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "DELETE FROM projection_artifacts
         WHERE engine <> $1 AND created_at < now() - make_interval(hours => $2)",
    )
    .bind(engine)
    .bind(STALE_AFTER_HOURS)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Removes the artifact of a component for an engine (one wasmtime refused to load).
pub async fn remove<'e>(
    executor: impl PgExecutor<'e>,
    sha256: &str,
    engine: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM projection_artifacts WHERE sha256 = $1 AND engine = $2")
        .bind(sha256)
        .bind(engine)
        .execute(executor)
        .await?;
    Ok(())
}
