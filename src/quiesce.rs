//! `spec.quiesce`: the controller scales the named Deployments and StatefulSets of a
//! migration's namespace to zero before the first write and back afterwards, through
//! their scale subresource (the only thing the quiesce role grants).
//!
//! The former replica counts are written to the migration's status before anything is
//! scaled, so a controller restarted mid-run still knows what to give back. Used by the
//! controller only; the engine knows nothing of it.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::api::{QuiescedWorkload, TenantMigration, WorkloadKind, WorkloadRef};

/// Why workloads could not be stopped or given back; each names the workload.
#[derive(Debug, thiserror::Error)]
pub enum QuiesceError {
    #[error("{kind} {namespace}/{name} (spec.quiesce) not found")]
    NotFound {
        kind: WorkloadKind,
        namespace: String,
        name: String,
    },
    #[error(
        "{kind} {namespace}/{name}: the controller may not scale it ({message}); grant the quiesce role \
         (Helm value quiesce.enabled=true, or kubectl apply -k deploy/quiesce)"
    )]
    Forbidden {
        kind: WorkloadKind,
        namespace: String,
        name: String,
        message: String,
    },
    #[error("{kind} {namespace}/{name}: the API server refused the scale ({code}): {message}")]
    Refused {
        kind: WorkloadKind,
        namespace: String,
        name: String,
        code: u16,
        message: String,
    },
    #[error("{kind} {namespace}/{name}: {source}")]
    Kube {
        kind: WorkloadKind,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("{kind} {namespace}/{name} still runs {pods} pod(s) {seconds} s after being scaled to zero")]
    StillRunning {
        kind: WorkloadKind,
        namespace: String,
        name: String,
        pods: i32,
        seconds: u64,
    },
    #[error("cannot record the quiesced workloads in status: {0}")]
    Status(kube::Error),
}

/// Scales one migration's workloads.
pub struct Quiescer {
    client: Client,
    namespace: String,
    migration: Api<TenantMigration>,
    name: String,
    /// How long to wait for the pods of a workload scaled to zero to be gone.
    pub timeout: Duration,
}

const MANAGER: &str = "tenant-migrator";
const STATUS_MANAGER: &str = "tenant-migrator-quiesce";

impl Quiescer {
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self {
            migration: Api::namespaced(client.clone(), namespace),
            client,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            timeout: Duration::from_secs(300),
        }
    }

    fn error(&self, kind: WorkloadKind, name: &str, e: kube::Error) -> QuiesceError {
        let (namespace, name) = (self.namespace.clone(), name.to_owned());
        match e {
            kube::Error::Api(s) if s.code == 404 => QuiesceError::NotFound { kind, namespace, name },
            // An admission policy or webhook said no: RBAC is not the cause.
            kube::Error::Api(s) if s.code == 422 || s.message.contains("denied") => QuiesceError::Refused {
                kind,
                namespace,
                name,
                code: s.code,
                message: s.message,
            },
            kube::Error::Api(s) if s.code == 403 => QuiesceError::Forbidden {
                kind,
                namespace,
                name,
                message: s.message,
            },
            source => QuiesceError::Kube {
                kind,
                namespace,
                name,
                source,
            },
        }
    }

    async fn scale(&self, kind: WorkloadKind, name: &str) -> Result<Scale, QuiesceError> {
        let result = match kind {
            WorkloadKind::Deployment => {
                Api::<Deployment>::namespaced(self.client.clone(), &self.namespace)
                    .get_scale(name)
                    .await
            }
            WorkloadKind::StatefulSet => {
                Api::<StatefulSet>::namespaced(self.client.clone(), &self.namespace)
                    .get_scale(name)
                    .await
            }
        };
        result.map_err(|e| self.error(kind, name, e))
    }

    /// Pods of a workload (by its scale's selector) that have not ended: running,
    /// starting, or terminating.
    async fn live_pods(&self, kind: WorkloadKind, name: &str, selector: &str) -> Result<i32, QuiesceError> {
        let pods = Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| self.error(kind, name, e))?;
        let live = pods
            .items
            .iter()
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
            })
            .count();
        Ok(i32::try_from(live).unwrap_or(i32::MAX))
    }

    async fn set_replicas(&self, kind: WorkloadKind, name: &str, replicas: i32) -> Result<(), QuiesceError> {
        let params = PatchParams {
            field_manager: Some(MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(json!({ "spec": { "replicas": replicas } }));
        let result = match kind {
            WorkloadKind::Deployment => {
                Api::<Deployment>::namespaced(self.client.clone(), &self.namespace)
                    .patch_scale(name, &params, &patch)
                    .await
            }
            WorkloadKind::StatefulSet => {
                Api::<StatefulSet>::namespaced(self.client.clone(), &self.namespace)
                    .patch_scale(name, &params, &patch)
                    .await
            }
        };
        result.map(|_| ()).map_err(|e| self.error(kind, name, e))
    }

    /// Server-side apply of `status.quiesced` under a field manager of its own, so the
    /// controller's other status writes never drop it (nor it theirs).
    async fn record(&self, records: &[QuiescedWorkload]) -> Result<(), QuiesceError> {
        let status = json!({ "quiesced": records });
        crate::controller::apply_status(&self.migration, &self.name, STATUS_MANAGER, status)
            .await
            .map_err(QuiesceError::Status)
    }

    /// Records the replica counts of `wanted`, scales each to zero, and waits until
    /// their pods are gone. A workload already recorded and not yet given back keeps
    /// its recorded count (it is at zero because of us).
    pub async fn stop(
        &self,
        wanted: &[WorkloadRef],
        recorded: &[QuiescedWorkload],
    ) -> Result<Vec<QuiescedWorkload>, QuiesceError> {
        let mut records: Vec<QuiescedWorkload> = recorded.iter().filter(|r| !r.restored).cloned().collect();
        for w in wanted {
            if records.iter().any(|r| r.kind == w.kind && r.name == w.name) {
                continue;
            }
            let scale = self.scale(w.kind, &w.name).await?;
            records.push(QuiescedWorkload {
                kind: w.kind,
                name: w.name.clone(),
                replicas: scale.spec.and_then(|s| s.replicas).unwrap_or(1),
                restored: false,
            });
        }
        // Written before the first scale-down: a crash after it still knows the counts.
        self.record(&records).await?;
        for r in &records {
            self.set_replicas(r.kind, &r.name, 0).await?;
            tracing::info!(kind = %r.kind, name = %r.name, former = r.replicas, "scaled to zero");
        }
        let started = Instant::now();
        for r in &records {
            loop {
                let status = self.scale(r.kind, &r.name).await?.status.unwrap_or_default();
                let mut pods = status.replicas;
                if pods == 0
                    && let Some(selector) = status.selector.filter(|s| !s.is_empty())
                {
                    // The scale's count leaves out pods being deleted, which still serve
                    // (and write) through their grace period: wait for them to be gone.
                    pods = self.live_pods(r.kind, &r.name, &selector).await?;
                }
                if pods == 0 {
                    break;
                }
                if started.elapsed() > self.timeout {
                    return Err(QuiesceError::StillRunning {
                        kind: r.kind,
                        namespace: self.namespace.clone(),
                        name: r.name.clone(),
                        pods,
                        seconds: self.timeout.as_secs(),
                    });
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Ok(records)
    }

    /// Gives every recorded workload not yet restored its former replica count and
    /// records that. A workload deleted in the meantime has nothing to restore.
    pub async fn restore(&self, recorded: &[QuiescedWorkload]) -> Result<Vec<QuiescedWorkload>, QuiesceError> {
        let mut records = recorded.to_vec();
        if records.iter().all(|r| r.restored) {
            return Ok(Vec::new());
        }
        let mut restored = Vec::new();
        for r in records.iter_mut().filter(|r| !r.restored) {
            match self.set_replicas(r.kind, &r.name, r.replicas).await {
                Ok(()) => {
                    tracing::info!(kind = %r.kind, name = %r.name, replicas = r.replicas, "replicas restored");
                    restored.push(r.clone());
                }
                Err(QuiesceError::NotFound { .. }) => {
                    tracing::warn!(kind = %r.kind, name = %r.name, "deleted while quiesced; nothing to restore");
                }
                Err(e) => return Err(e),
            }
            r.restored = true;
        }
        self.record(&records).await?;
        Ok(restored)
    }
}

/// `Deployment rag-api: 3, StatefulSet worker: 1`, for Events.
pub fn describe(records: &[QuiescedWorkload]) -> String {
    records
        .iter()
        .map(|r| format!("{} {}: {}", r.kind, r.name, r.replicas))
        .collect::<Vec<_>>()
        .join(", ")
}
