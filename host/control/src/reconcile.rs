//! Reconciliation: every instance makes what it runs equal to what the registry says.
//!
//! Why it exists: operators change a projection through any instance (or by dropping a file into
//! the watched directory); the others learn it from `NOTIFY wallex_registry` and a periodic
//! resync, then compile the registry's bytes (once per SHA-256 and process), swap the version a
//! projector runs at its next batch boundary, start or stop workers and follow rebuilds.
//!
//! Architecture invariant: what runs is what the registry says — compiled from the stored bytes,
//! one reconciliation at a time per process. API boundary: reads the registry through its owner
//! ([`wallex_runtime::registry`]); never changes it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{ComponentError, OperationError};
use crate::{LoadError, Projections};
use wallex_runtime::config;
use wallex_runtime::registry::{self, Deployment, DeploymentState, Rebuild};
use wallex_runtime::schema::ProjectionSchema;
use wallex_runtime::worker::{Active, Desired, RebuildTarget};
use wallex_sandbox::engine::LoadedComponent;

impl Projections {
    /// Re-reads the registry whenever it announces a change, and every resync interval.
    pub(crate) async fn reconcile_loop(
        self,
        mut registry: tokio::sync::watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                changed = registry.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(self.inner.config.registry_resync) => {}
                _ = shutdown.cancelled() => return,
            }
            if let Err(error) = self.reconcile_all().await {
                tracing::warn!(%error, "cannot reconcile with the projection registry");
            }
        }
    }

    /// Makes this process run what the registry says, for every projection.
    pub async fn reconcile_all(&self) -> Result<(), LoadError> {
        let pool = &self.inner.pool;
        let deployments = registry::deployments(pool)
            .await
            .map_err(LoadError::Registry)?;
        let mut rebuilds: HashMap<String, Rebuild> = registry::rebuilds(pool)
            .await
            .map_err(LoadError::Registry)?
            .into_iter()
            .map(|r| (r.projection.clone(), r))
            .collect();
        let known: HashSet<String> = deployments.iter().map(|d| d.projection.clone()).collect();
        let mut referenced = HashSet::new();
        for deployment in deployments {
            referenced.insert(deployment.sha256.clone());
            let rebuild = rebuilds.remove(&deployment.projection);
            if let Some(r) = &rebuild {
                referenced.insert(r.sha256.clone());
            }
            let name = deployment.projection.clone();
            if let Err(error) = self.apply_registry(&name, Some(deployment), rebuild).await {
                tracing::error!(projection = %name, %error, "cannot run the registry's version");
            }
        }
        for projector in self.all() {
            if !known.contains(projector.name()) {
                self.apply_registry(projector.name(), None, None).await?;
            }
        }
        self.prune_compiled(&referenced);
        Ok(())
    }

    /// Makes this process run what the registry says for one projection.
    pub async fn reconcile_one(&self, name: &str) -> Result<(), LoadError> {
        let pool = &self.inner.pool;
        let deployment = registry::deployment(pool, name)
            .await
            .map_err(LoadError::Registry)?;
        let mut conn = pool.acquire().await.map_err(LoadError::Registry)?;
        let rebuild = registry::rebuild(&mut conn, name)
            .await
            .map_err(LoadError::Registry)?;
        drop(conn);
        self.apply_registry(name, deployment, rebuild).await
    }

    pub(crate) async fn apply_registry(
        &self,
        name: &str,
        deployment: Option<Deployment>,
        rebuild: Option<Rebuild>,
    ) -> Result<(), LoadError> {
        let _one_at_a_time = self.inner.reconciling.lock().await;
        let local = self.get(name);
        let Some(deployment) = deployment.filter(|d| d.state() != DeploymentState::Deleted) else {
            if let Some(local) = local.filter(|p| p.desired().generation > 0) {
                tracing::info!(projection = name, "projection deleted; stopping its worker");
                local.stop();
                self.write_projectors().remove(name);
            }
            return Ok(());
        };
        if let Some(local) = &local {
            if local.desired().generation >= deployment.generation {
                return Ok(());
            }
        }
        let live = self.compiled(name, &deployment.sha256).await?;
        let policy = self.inner.config.policy(name, &deployment.settings());
        let rebuild = match rebuild {
            Some(r) => Some(RebuildTarget {
                active: self
                    .version(
                        name,
                        &r.sha256,
                        r.namespace.clone(),
                        r.source.clone(),
                        policy,
                    )
                    .await?,
                failed: !r.in_progress(),
                drift: r.is_drift(),
            }),
            None => None,
        };
        let desired = Desired {
            active: Active {
                schema: Arc::new(self.schema_of(&live, deployment.namespace.clone())?),
                handler: live,
                sha256: deployment.sha256.clone(),
                source: deployment.source.clone(),
                policy,
            },
            rebuild,
            paused: deployment.state() == DeploymentState::Paused,
            generation: deployment.generation,
        };
        match local {
            Some(local) => {
                let previous = local.active();
                if previous.sha256 != desired.active.sha256
                    || previous.schema.namespace != desired.active.schema.namespace
                {
                    tracing::info!(
                        projection = name,
                        from = %previous.sha256,
                        to = %desired.active.sha256,
                        namespace = %desired.active.schema.namespace,
                        "activating a new version at the next batch"
                    );
                }
                local.set_desired(desired);
            }
            None => {
                self.insert(desired);
            }
        }
        Ok(())
    }

    pub(crate) async fn version(
        &self,
        name: &str,
        sha256: &str,
        namespace: String,
        source: String,
        policy: config::Policy,
    ) -> Result<Active, LoadError> {
        let component = self.compiled(name, sha256).await?;
        Ok(Active {
            schema: Arc::new(self.schema_of(&component, namespace)?),
            handler: component,
            sha256: sha256.to_owned(),
            source,
            policy,
        })
    }

    pub(crate) fn schema_of(
        &self,
        component: &LoadedComponent,
        namespace: String,
    ) -> Result<ProjectionSchema, LoadError> {
        let info = component
            .info()
            .ok_or_else(|| ComponentError::Join("component was loaded without describe".into()))?;
        ProjectionSchema::from_info(info)
            .and_then(|schema| schema.with_stream_owners(component.stream_owners()))
            .map(|schema| schema.with_namespace(namespace))
            .map_err(|source| LoadError::Schema {
                origin: component.origin().to_owned(),
                source,
            })
    }

    /// The compiled component stored under `sha256` (compiled once per process).
    pub(crate) async fn compiled(
        &self,
        name: &str,
        sha256: &str,
    ) -> Result<Arc<LoadedComponent>, LoadError> {
        if let Some(hit) = self.cached(sha256) {
            return Ok(hit);
        }
        let bytes = registry::component_bytes(&self.inner.pool, sha256)
            .await
            .map_err(LoadError::Registry)?
            .ok_or_else(|| LoadError::MissingComponent {
                projection: name.to_owned(),
                sha256: sha256.to_owned(),
            })?;
        // The artifact's store goes on in the background (under the compile lock).
        let (component, _artifact_store) = self
            .compile(
                format!("registry:{name}@{}", &sha256[..12.min(sha256.len())]),
                sha256,
                Arc::new(bytes),
            )
            .await
            .map_err(|error| match error {
                OperationError::Component(e) => LoadError::Component(e),
                other => LoadError::Deploy {
                    origin: name.to_owned(),
                    source: other,
                },
            })?;
        self.cache(sha256, Arc::clone(&component));
        Ok(component)
    }

    pub(crate) fn cached(&self, sha256: &str) -> Option<Arc<LoadedComponent>> {
        match self.inner.compiled.lock() {
            Ok(map) => map.get(sha256).cloned(),
            Err(poisoned) => poisoned.into_inner().get(sha256).cloned(),
        }
    }

    /// Every compiled component this process holds, by SHA-256.
    pub(crate) fn compiled_components(&self) -> Vec<(String, Arc<LoadedComponent>)> {
        let map = match self.inner.compiled.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.iter()
            .map(|(sha, c)| (sha.clone(), Arc::clone(c)))
            .collect()
    }

    /// Bytes of compiled code held by this process's loaded components.
    pub fn compiled_memory_bytes(&self) -> usize {
        self.compiled_components()
            .iter()
            .map(|(_, c)| c.compiled_bytes())
            .sum()
    }

    pub(crate) fn cache(&self, sha256: &str, component: Arc<LoadedComponent>) {
        let mut map = match self.inner.compiled.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.insert(sha256.to_owned(), component);
    }

    pub(crate) fn prune_compiled(&self, referenced: &HashSet<String>) {
        let mut map = match self.inner.compiled.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.retain(|sha, _| referenced.contains(sha));
    }
}
