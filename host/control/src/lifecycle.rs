//! Pause, resume, reload and delete a projection by name, for every instance; list and replay
//! its dead letters.
//!
//! Architecture invariant: each is one registry transaction under the registry lock, announced
//! and recorded in the audit trail; the workers act on it at their next batch boundary. API
//! boundary: no HTTP, no worker internals beyond a wake-up.

use serde_json::json;
use sqlx::Connection;

use crate::outcome::{execute_ddl, live_deployment, OperationError};
use crate::rebuild::drop_rebuild;
use crate::Projections;
use wallex_runtime::dead_letters::{self, DeadLetter, ReplayOutcome};
use wallex_runtime::guest_event::to_guest_event;
use wallex_runtime::registry::DeploymentState;
use wallex_runtime::schema::quote;
use wallex_runtime::worker::BatchError;
use wallex_runtime::{checkpoint, registry};
use wallex_sandbox::guest_text::{clip, MAX_ERROR_BYTES};

impl Projections {
    /// Pauses (`paused = true`) or resumes a projection on every instance.
    pub async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        actor: &str,
    ) -> Result<(), OperationError> {
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
            return Err(OperationError::Conflict(format!(
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
    pub async fn reload(&self, name: &str, actor: &str) -> Result<(), OperationError> {
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
    ) -> Result<(), OperationError> {
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
                wallex_runtime::schema::stable_namespace(name),
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

impl Projections {
    /// The dead letters of a projection (open ones, or all with `include_resolved`).
    pub async fn dead_letters(
        &self,
        name: &str,
        include_resolved: bool,
    ) -> Result<Vec<DeadLetter>, OperationError> {
        self.deployed(name).await?;
        Ok(dead_letters::list(self.pool(), name, include_resolved).await?)
    }

    /// Re-runs a projection's open dead letters with its live version (after a fix). Each one that
    /// now succeeds is applied and marked resolved in one transaction; the others keep their row
    /// with the new error. Replayed events are applied after the events that followed them, so a
    /// projection relying on order must tolerate that (guarded upserts do).
    pub async fn replay_dead_letters(
        &self,
        name: &str,
        actor: &str,
    ) -> Result<ReplayOutcome, OperationError> {
        self.deployed(name).await?;
        let projector = self
            .get(name)
            .ok_or_else(|| OperationError::NotFound(name.to_owned()))?;
        let version = projector.active();
        let open = dead_letters::open(self.pool(), name).await?;
        let mut outcome = ReplayOutcome::default();
        for (id, position) in open {
            let mut conn = self.pool().acquire().await?;
            let mut tx = conn.begin().await?;
            if !dead_letters::lock_open(&mut tx, id).await? {
                continue;
            }
            let event = wallex_core::outbox::read_at(&mut tx, position)
                .await
                .map_err(|e| OperationError::Conflict(e.to_string()))?
                .ok_or_else(|| {
                    OperationError::Conflict(format!(
                        "event at position {position} left the outbox"
                    ))
                })?;
            let evaluated = projector
                .evaluate_one(&version, to_guest_event(&event))
                .await;
            // PostgreSQL may still refuse the data: that is the event still failing, not an
            // error of the replay.
            let applied = match evaluated {
                Ok(plan) => {
                    match wallex_runtime::mutation::apply_or_reject(&mut tx, &plan).await? {
                        None => Ok(()),
                        Some(reason) => Err(BatchError::Data(reason)),
                    }
                }
                Err(error) => Err(error),
            };
            match applied {
                Ok(()) => {
                    dead_letters::resolve(&mut tx, id).await?;
                    outcome.replayed += 1;
                }
                Err(error) => {
                    let error = clip(&error.to_string(), MAX_ERROR_BYTES);
                    dead_letters::failed_again(&mut tx, id, &error).await?;
                    outcome.still_failing.push((position, error));
                }
            }
            tx.commit().await?;
        }
        let detail = serde_json::json!({
            "replayed": outcome.replayed,
            "stillFailing": outcome.still_failing.len(),
        });
        let mut conn = self.pool().acquire().await?;
        registry::record_action(
            &mut conn,
            actor,
            "replay-dead-letters",
            Some(name),
            "ok",
            &detail,
        )
        .await?;
        Ok(outcome)
    }
}
