//! Pause, resume, reload and delete a projection by name, for every instance.
//!
//! Architecture invariant: each is one registry transaction under the registry lock, announced
//! and recorded in the audit trail; the workers act on it at their next batch boundary. API
//! boundary: no HTTP, no worker internals beyond a wake-up.

use serde_json::json;
use sqlx::Connection;

use crate::deploy::{execute_ddl, live_deployment, DeployError};
use crate::rebuild::drop_rebuild;
use crate::registry::DeploymentState;
use crate::schema::quote;
use crate::{checkpoint, registry, Projections};

impl Projections {
    /// Pauses (`paused = true`) or resumes a projection on every instance.
    pub async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        actor: &str,
    ) -> Result<(), DeployError> {
        let state = if paused {
            DeploymentState::Paused
        } else {
            DeploymentState::Running
        };
        let mut conn = self.inner.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        let current = live_deployment(&mut tx, name).await?;
        if current.state() == state {
            return Err(DeployError::Conflict(format!(
                "{name} is already {}",
                state.as_str()
            )));
        }
        registry::set_state(&mut tx, name, state).await?;
        if !paused {
            checkpoint::clear_failure(&mut tx, name).await?;
        }
        registry::bump(&mut tx, name).await?;
        let action = if paused { "pause" } else { "resume" };
        registry::record_action(&mut tx, actor, action, Some(name), "ok", &json!({})).await?;
        tx.commit().await?;
        self.reconcile_one(name).await?;
        Ok(())
    }

    /// Restarts a projection's worker on its registry version, from its checkpoint (after a
    /// failure, once the cause is fixed).
    pub async fn reload(&self, name: &str, actor: &str) -> Result<(), DeployError> {
        let mut conn = self.inner.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        let current = live_deployment(&mut tx, name).await?;
        checkpoint::clear_failure(&mut tx, name).await?;
        registry::retry_rebuild(&mut tx, name).await?;
        registry::bump(&mut tx, name).await?;
        registry::record_action(
            &mut tx,
            actor,
            "reload",
            Some(name),
            "ok",
            &json!({ "sha256": current.sha256 }),
        )
        .await?;
        tx.commit().await?;
        self.reconcile_one(name).await?;
        if let Some(projector) = self.get(name) {
            projector.poke();
        }
        Ok(())
    }

    /// Stops a projection everywhere. Its tables and checkpoint are kept (a later deploy of the
    /// same version continues from it) unless `drop_tables`.
    pub async fn delete(
        &self,
        name: &str,
        drop_tables: bool,
        actor: &str,
    ) -> Result<(), DeployError> {
        let mut conn = self.inner.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        let current = live_deployment(&mut tx, name).await?;
        if let Some(rebuild) = registry::rebuild(&mut tx, name).await? {
            drop_rebuild(&mut tx, &rebuild).await?;
        }
        registry::set_state(&mut tx, name, DeploymentState::Deleted).await?;
        if drop_tables {
            for namespace in [
                current.namespace.clone(),
                super::schema::stable_namespace(name),
            ] {
                execute_ddl(
                    &mut tx,
                    &format!("DROP SCHEMA IF EXISTS {} CASCADE", quote(&namespace)),
                )
                .await?;
            }
            checkpoint::delete(&mut tx, name).await?;
        }
        registry::bump(&mut tx, name).await?;
        registry::record_action(
            &mut tx,
            actor,
            "delete",
            Some(name),
            "ok",
            &json!({ "dropTables": drop_tables, "namespace": current.namespace }),
        )
        .await?;
        tx.commit().await?;
        self.reconcile_one(name).await?;
        Ok(())
    }
}
