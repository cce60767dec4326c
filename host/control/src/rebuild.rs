//! Blue/green rebuilds — one place for their whole life: start (a fresh namespace filled from the
//! start of the log under `<name>#rebuild`), cut-over (views, live checkpoint and registry switch
//! in one transaction on the lease connection, old tables dropped), cancel, and fail.
//!
//! Architecture invariant: readers never see a half-built table, and a failed or cancelled
//! rebuild leaves the live version untouched. API boundary: the worker decides *when* to cut over
//! (caught up, between two batches); this module decides *how*.

use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::outcome::{execute_ddl, live_deployment, Activation, OperationError, SYSTEM_ACTOR};
use crate::Projections;
use wallex_runtime::registry::{Deployment, Rebuild};
use wallex_runtime::schema::{
    build_namespace, namespace_base, quote, ProjectionSchema, MAX_BUILD_NUMBER,
};
use wallex_runtime::worker::{Active, Projector};
use wallex_runtime::{checkpoint, registry};

impl Projections {
    /// Rebuilds a projection's live version into fresh tables (blue/green).
    pub async fn rebuild(&self, name: &str, actor: &str) -> Result<Activation, OperationError> {
        let mut conn = self.inner.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        let current = live_deployment(&mut tx, name).await?;
        self.rebuild_live(&mut tx, &current, actor).await?;
        registry::notify(&mut tx, name).await?;
        registry::record_action(
            &mut tx,
            actor,
            "rebuild",
            Some(name),
            "rebuild-started",
            &json!({ "sha256": current.sha256 }),
        )
        .await?;
        tx.commit().await?;
        self.reconcile_one(name).await?;
        Ok(Activation::RebuildStarted)
    }

    /// Starts filling fresh tables with `current`'s live version from the start of the log (a
    /// rebuild, or a drift check's shadow), in the caller's transaction under the registry lock:
    /// refused while a rebuild or drift check runs; a failed rebuild or a kept shadow is replaced.
    pub(crate) async fn rebuild_live(
        &self,
        conn: &mut PgConnection,
        current: &Deployment,
        actor: &str,
    ) -> Result<(), OperationError> {
        let name = &current.projection;
        if let Some(existing) = registry::rebuild(&mut *conn, name).await? {
            if existing.in_progress() {
                return Err(OperationError::Conflict(match existing.drift_run {
                    Some(run) if existing.is_drift() => format!(
                        "a drift check of {name} is running (run {run}); wait for it or cancel it"
                    ),
                    _ => format!("a rebuild of {name} is already in progress"),
                }));
            }
            // A failed rebuild, or the shadow a finished drift check kept: replaced.
            drop_rebuild(&mut *conn, &existing).await?;
        }
        let live = self.compiled(name, &current.sha256).await?;
        let schema = self.schema_of(&live, current.namespace.clone())?;
        start_rebuild(
            conn,
            current,
            &schema,
            &current.sha256,
            &current.source,
            actor,
        )
        .await
    }

    /// Stops a rebuild in progress and drops its tables; the live version is untouched.
    pub async fn cancel_rebuild(&self, name: &str, actor: &str) -> Result<(), OperationError> {
        let mut conn = self.inner.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        live_deployment(&mut tx, name).await?;
        let Some(rebuild) = registry::rebuild(&mut tx, name).await? else {
            return Err(OperationError::Conflict(format!(
                "no rebuild of {name} is in progress"
            )));
        };
        drop_rebuild(&mut tx, &rebuild).await?;
        registry::bump(&mut tx, name).await?;
        registry::record_action(
            &mut tx,
            actor,
            "cancel-rebuild",
            Some(name),
            "ok",
            &json!({ "namespace": rebuild.namespace }),
        )
        .await?;
        tx.commit().await?;
        self.reconcile_one(name).await?;
        Ok(())
    }

    /// Switches a caught-up rebuild live, on the worker's lease connection: the stable views, the
    /// live checkpoint (to the rebuild's) and the registry change in one transaction, which also
    /// drops the old tables.
    pub(super) async fn cut_over(
        &self,
        conn: &mut PgConnection,
        projector: &Projector,
        target: &Active,
    ) -> Result<(), OperationError> {
        let name = projector.name();
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        let rebuild = registry::rebuild(&mut tx, name)
            .await?
            .filter(|r| !r.failed() && r.namespace == target.schema.namespace)
            .ok_or_else(|| {
                OperationError::Conflict(format!("the rebuild of {name} was replaced"))
            })?;
        let current = live_deployment(&mut tx, name).await?;
        let rebuilt = checkpoint::read_in(&mut tx, &checkpoint::rebuild_key(name))
            .await?
            .ok_or_else(|| checkpoint::CheckpointError::Missing(checkpoint::rebuild_key(name)))?;
        for statement in target.schema.view_ddl() {
            execute_ddl(&mut tx, &statement).await?;
        }
        checkpoint::take_over(
            &mut tx,
            name,
            rebuild.schema_version,
            &rebuild.namespace,
            &rebuilt,
        )
        .await?;
        registry::promote_rebuild(&mut tx, &rebuild).await?;
        registry::delete_rebuild(&mut tx, name).await?;
        if current.namespace != rebuild.namespace {
            execute_ddl(
                &mut tx,
                &format!(
                    "DROP SCHEMA IF EXISTS {} CASCADE",
                    quote(&current.namespace)
                ),
            )
            .await?;
        }
        registry::notify(&mut tx, name).await?;
        registry::record_action(
            &mut tx,
            SYSTEM_ACTOR,
            "cut-over",
            Some(name),
            "ok",
            &json!({
                "from": current.namespace,
                "to": rebuild.namespace,
                "sha256": rebuild.sha256,
                "events": rebuilt.events_applied,
                "seconds": (chrono::Utc::now() - rebuild.started_at).num_milliseconds() as f64 / 1000.0,
            }),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(
            projection = name,
            from = %current.namespace,
            to = %rebuild.namespace,
            events = rebuilt.events_applied,
            "rebuild cut over"
        );
        projector.note_progress(rebuilt.cursor);
        self.reconcile_one(name).await?;
        Ok(())
    }

    /// Marks a rebuild failed after its retries (the live version is untouched).
    pub(super) async fn fail_rebuild(
        &self,
        conn: &mut PgConnection,
        name: &str,
        error: &str,
    ) -> Result<(), OperationError> {
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        if let Some(shadow) = registry::rebuild(&mut tx, name)
            .await?
            .filter(|r| r.is_drift())
        {
            // A drift check whose replay fails cannot say anything: it fails, and its shadow goes.
            if let Some(run) = shadow.drift_run {
                crate::recovery_runs::shadow_gone(
                    &mut *tx,
                    run,
                    &format!("the replay failed: {error}"),
                )
                .await?;
            }
            drop_rebuild(&mut tx, &shadow).await?;
        } else {
            registry::fail_rebuild(&mut tx, name, error).await?;
        }
        registry::bump(&mut tx, name).await?;
        registry::record_action(
            &mut tx,
            SYSTEM_ACTOR,
            "rebuild-failed",
            Some(name),
            "failed",
            &json!({ "error": error }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Creates a fresh namespace for `schema`'s tables and a rebuild row and checkpoint that fill it
/// from the start of the log.
pub(crate) async fn start_rebuild(
    conn: &mut PgConnection,
    current: &Deployment,
    schema: &ProjectionSchema,
    sha256: &str,
    source: &str,
    actor: &str,
) -> Result<(), OperationError> {
    let build = current.build_seq + 1;
    if build > MAX_BUILD_NUMBER {
        return Err(OperationError::Conflict(format!(
            "{} has been rebuilt {MAX_BUILD_NUMBER} times; delete it with drop_tables=true and deploy it again",
            current.projection
        )));
    }
    let namespace = build_namespace(&namespace_base(&schema.name, schema.schema_version), build);
    let target = schema.clone().with_namespace(namespace.clone());
    execute_ddl(
        &mut *conn,
        &format!("DROP SCHEMA IF EXISTS {} CASCADE", quote(&namespace)),
    )
    .await?;
    for statement in target.ddl() {
        execute_ddl(&mut *conn, &statement).await?;
    }
    let key = checkpoint::rebuild_key(&current.projection);
    checkpoint::ensure(conn, &key, schema.schema_version, &namespace).await?;
    let (total, _) = wallex_core::outbox::size(&mut *conn).await?;
    registry::insert_rebuild(
        conn,
        &current.projection,
        build,
        sha256,
        schema.schema_version,
        &namespace,
        source,
        total,
        actor,
    )
    .await?;
    Ok(())
}

/// Removes a rebuild, its checkpoint and its tables.
pub(crate) async fn drop_rebuild(
    conn: &mut PgConnection,
    rebuild: &Rebuild,
) -> Result<(), OperationError> {
    execute_ddl(
        &mut *conn,
        &format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            quote(&rebuild.namespace)
        ),
    )
    .await?;
    checkpoint::delete(conn, &checkpoint::rebuild_key(&rebuild.projection)).await?;
    checkpoint::delete(conn, &checkpoint::shadow_key(&rebuild.projection)).await?;
    registry::delete_rebuild(conn, &rebuild.projection).await?;
    if let Some(run) = rebuild.drift_run {
        // A drift check still replaying fails; a finished one no longer lists its shadow.
        crate::recovery_runs::shadow_gone(
            &mut *conn,
            run,
            "its shadow was dropped (replaced, cancelled or deleted)",
        )
        .await?;
    }
    Ok(())
}
