//! What the agent on this node believes, for `GET /status` and `staticpod-puller status`.

use serde::Serialize;

use super::Ota;
use crate::images::PullState;
use crate::rollout::plan::{MirrorState, Plan, plan};

/// The agent's view of this node.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub node: String,
    /// Whether the API server answered just now.
    pub api_server_reachable: bool,
    pub objects: Vec<ObjectStatus>,
    /// Objects this agent will not act on, and why.
    pub refused: Vec<RefusedObject>,
    /// Grant Leases this node holds (upgrades the controller let it run).
    pub grants_held: Vec<String>,
    /// Fetched bundles verified but held back: the cluster is authoritative while the API
    /// server is reachable.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held_bundles: Vec<HeldBundle>,
    /// Manifests a bundle set that the cluster has not reconciled yet.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_bundles: Vec<crate::desired::applied::Application>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldBundle {
    pub url: String,
    pub sequence: u64,
    pub items: usize,
    pub expires_at: String,
    /// When it was fetched and verified.
    pub since: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    pub object: String,
    pub manifest: String,
    pub strategy: String,
    pub desired_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_hash: Option<String>,
    /// not-member, current, drifted, upgrading, pulling-images, image-pull-failed,
    /// waiting-for-grant, upgrade-available, rolled-back.
    pub phase: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefusedObject {
    pub object: String,
    pub reason: String,
}

impl Ota {
    pub async fn status(&self) -> NodeStatus {
        let desired = self
            .desired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let failed = self.upgrader.failed.snapshot();
        let mut objects = Vec::new();
        for d in desired.values() {
            let local = self.store.read(&d.manifest).ok().flatten();
            let mirror_name = format!("{}-{}", d.key.name, self.node);
            let mirror = self
                .pod(&d.key.namespace, &mirror_name)
                .map(|p| MirrorState {
                    hash: crate::manifest::mirror::pod_hash(&p).map(str::to_string),
                    ready: crate::manifest::mirror::pod_ready(&p),
                });
            let phase = if self.running.contains(&d.manifest) {
                "upgrading"
            } else {
                let pull = self.prepull.state(&d.manifest, &d.hash);
                match plan(d, local.as_deref(), mirror.as_ref(), &failed) {
                    Plan::NotMember => "not-member",
                    Plan::Current => "current",
                    Plan::Drifted => "drifted",
                    Plan::HeldBack { .. } => "rolled-back",
                    Plan::UpgradeAvailable | Plan::Upgrade { .. }
                        if pull == Some(PullState::Pulling) =>
                    {
                        "pulling-images"
                    }
                    Plan::UpgradeAvailable | Plan::Upgrade { .. }
                        if matches!(pull, Some(PullState::Failed(_))) =>
                    {
                        "image-pull-failed"
                    }
                    Plan::UpgradeAvailable => "upgrade-available",
                    Plan::Upgrade { .. } => "waiting-for-grant",
                }
            };
            let pull_error = match self.prepull.state(&d.manifest, &d.hash) {
                Some(PullState::Failed(reason)) => Some(reason),
                _ => None,
            };
            let last_error = self
                .records
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&(d.key.namespace.clone(), mirror_name.clone()))
                .filter(|r| matches!(r.phase, super::Phase::RolledBack | super::Phase::Failed))
                .and_then(|r| r.message.clone())
                .or_else(|| {
                    failed
                        .get(&d.manifest)
                        .filter(|h| **h == d.hash)
                        .map(|h| format!("{h} was rolled back on this node"))
                })
                .or(pull_error);
            objects.push(ObjectStatus {
                object: d.key.to_string(),
                manifest: format!("{}.yaml", d.manifest),
                strategy: d.strategy.as_str().to_string(),
                desired_hash: d.hash.clone(),
                local_hash: local.as_deref().and_then(crate::manifest::hash_of_manifest),
                phase,
                last_error,
            });
        }
        let refused = self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| RefusedObject {
                object: r.key.to_string(),
                reason: r.reason.clone(),
            })
            .collect();
        let mut grants_held: Vec<String> = self
            .leases
            .state()
            .iter()
            .filter(|l| {
                l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(&self.node)
            })
            .filter_map(|l| l.metadata.name.clone())
            .collect();
        grants_held.sort();
        let held_bundles = self
            .held_bundles()
            .into_iter()
            .map(|h| HeldBundle {
                url: h.url,
                sequence: h.sequence,
                items: h.items,
                expires_at: h.expires_at.to_string(),
                since: h.since.to_string(),
            })
            .collect();
        NodeStatus {
            node: self.node.clone(),
            api_server_reachable: self.online().await,
            objects,
            refused,
            grants_held,
            held_bundles,
            from_bundles: self.applied.all(),
        }
    }
}

impl Ota {
    /// The exposition text: the process's counters and, per object, an info gauge with its
    /// hashes and phase, plus whether the API server answers and the grants held.
    pub async fn metrics(&self) -> String {
        use crate::metrics::Gauge;
        let status = self.status().await;
        let mut gauges = Vec::new();
        for o in &status.objects {
            gauges.push(Gauge {
                name: "staticpod_puller_object_info",
                help: "One per object this agent follows: its manifest, strategy, local and desired hash, and phase.",
                labels: vec![
                    ("object".into(), o.object.clone()),
                    ("manifest".into(), o.manifest.clone()),
                    ("strategy".into(), o.strategy.clone()),
                    ("local_hash".into(), o.local_hash.clone().unwrap_or_default()),
                    ("desired_hash".into(), o.desired_hash.clone()),
                    ("phase".into(), o.phase.to_string()),
                ],
                value: 1.0,
            });
        }
        gauges.push(Gauge {
            name: "staticpod_puller_api_server_reachable",
            help: "1 when the API server answered the last probe.",
            labels: Vec::new(),
            value: if status.api_server_reachable {
                1.0
            } else {
                0.0
            },
        });
        gauges.push(Gauge {
            name: "staticpod_puller_grants_held",
            help: "Grant Leases this node holds.",
            labels: Vec::new(),
            value: status.grants_held.len() as f64,
        });
        gauges.push(Gauge {
            name: "staticpod_puller_objects_refused",
            help: "Objects this agent refuses to act on.",
            labels: Vec::new(),
            value: status.refused.len() as f64,
        });
        crate::metrics::render(crate::metrics::Role::Agent, &gauges)
    }
}
