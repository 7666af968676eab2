//! OTA upgrades: the agent announces an available upgrade with pod condition `PodNeedUpgrade`
//! on its own mirror pod, and upgrades only when asked through the node-local API
//! ([`api`]). The upgrade itself is the rolling upgrade's (back up → atomic write → wait for the
//! new hash and Ready → roll back on the deadline), without a grant, journaled the same way.

pub mod api;
pub mod client;
pub mod kubelet;
pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde::Serialize;
use serde_json::json;
use tokio::sync::Notify;

use crate::desired::{DesiredObject, ObjectKey, Strategy};
use crate::manifest::store::ManifestStore;
use crate::rollout::plan::{MirrorState, Plan, plan};
use crate::rollout::upgrade::{InFlight, Outcome, Upgrader};

/// The pod condition announcing an OTA upgrade (OpenYurt's name).
pub const NEED_UPGRADE: &str = "PodNeedUpgrade";

/// What `PodNeedUpgrade` should say for one OTA member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub need: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The condition for a member given its plan; `None` when the plan says nothing about it.
pub fn announcement(
    d: &DesiredObject,
    plan: &Plan,
    local_hash: Option<&str>,
) -> Option<Announcement> {
    let running = local_hash.unwrap_or("a hand-placed manifest");
    match plan {
        Plan::UpgradeAvailable => Some(Announcement {
            need: true,
            reason: "UpgradeAvailable",
            message: format!("{} is available (running {running})", d.hash),
        }),
        Plan::Current => Some(Announcement {
            need: false,
            reason: "UpToDate",
            message: format!("running {}", d.hash),
        }),
        Plan::HeldBack { hash } => Some(Announcement {
            need: false,
            reason: "RolledBack",
            message: format!(
                "{hash} was rolled back on this node; not offered until the template changes"
            ),
        }),
        _ => None,
    }
}

fn condition_of<'a>(
    pod: &'a Pod,
    type_: &str,
) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// Set `PodNeedUpgrade` on a mirror pod when it differs (also after kubelet recreated the pod
/// without it).
pub async fn announce(
    client: &kube::Client,
    pod: &Pod,
    want: &Announcement,
) -> Result<bool, kube::Error> {
    set_condition(
        client,
        pod,
        NEED_UPGRADE,
        want.need,
        want.reason,
        &want.message,
    )
    .await
}

/// Set condition `type_` on a pod when its status or message differs. A strategic merge patch
/// merges conditions by type, keeping kubelet's. True when it patched.
pub async fn set_condition(
    client: &kube::Client,
    pod: &Pod,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
) -> Result<bool, kube::Error> {
    let status = if status { "True" } else { "False" };
    if let Some(c) = condition_of(pod, type_)
        && c.status == status
        && c.message.as_deref() == Some(message)
    {
        return Ok(false);
    }
    let (Some(ns), Some(name)) = (
        pod.metadata.namespace.as_deref(),
        pod.metadata.name.as_deref(),
    ) else {
        return Ok(false);
    };
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let patch = json!({"status": {"conditions": [{
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    }]}});
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    Ok(true)
}

/// Where an OTA upgrade is, as `GET .../upgrade` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Idle,
    /// The new template's images are being pulled (nothing written yet).
    PullingImages,
    Writing,
    WaitingReady,
    Succeeded,
    RolledBack,
    Superseded,
    Failed,
}

/// The last OTA upgrade of one pod on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub namespace: String,
    pub pod: String,
    pub phase: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why an upgrade request is refused: an HTTP status and a short plain-text reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

fn refused(status: u16, message: String) -> Refused {
    Refused { status, message }
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// OTA while the API server is unreachable.
#[derive(Debug, Clone)]
pub struct Offline {
    /// `ota.allowOffline`.
    pub allow: bool,
    /// kubelet's local pod list, read for readiness instead of the API server.
    pub kubelet_pods_url: String,
    pub kubelet_token: Option<String>,
}

/// The OTA side of the agent, shared with the local API.
pub struct Ota {
    pub node: String,
    pub client: kube::Client,
    pub offline: Offline,
    pub pods: Store<Pod>,
    pub store: Arc<ManifestStore>,
    pub upgrader: Arc<Upgrader>,
    pub running: Arc<InFlight>,
    pub changed: Arc<Notify>,
    /// This node's grant Leases (to report the ones it holds).
    pub leases: Store<k8s_openapi::api::coordination::v1::Lease>,
    /// The desired objects as of the agent's last pass.
    desired: Mutex<BTreeMap<ObjectKey, DesiredObject>>,
    /// The objects refused at the last pass.
    refused: Mutex<Vec<crate::desired::Refusal>>,
    records: Mutex<HashMap<(String, String), Record>>,
    /// The agent's caches hold a first full list.
    synced: std::sync::atomic::AtomicBool,
    /// What bundles set on this node (for the status).
    applied: Arc<crate::desired::applied::Applied>,
    /// Fetched bundles verified and held back (for the status).
    held_bundles: Mutex<Vec<crate::desired::http::Held>>,
    /// Pulls of new templates' images: an upgrade started here pulls first.
    pub prepull: Arc<crate::images::Prepull>,
}

impl Ota {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: &str,
        client: kube::Client,
        offline: Offline,
        pods: Store<Pod>,
        leases: Store<k8s_openapi::api::coordination::v1::Lease>,
        store: Arc<ManifestStore>,
        upgrader: Arc<Upgrader>,
        running: Arc<InFlight>,
        changed: Arc<Notify>,
        applied: Arc<crate::desired::applied::Applied>,
        prepull: Arc<crate::images::Prepull>,
    ) -> Ota {
        Ota {
            node: node.to_string(),
            client,
            offline,
            pods,
            store,
            upgrader,
            running,
            changed,
            leases,
            desired: Mutex::new(BTreeMap::new()),
            refused: Mutex::new(Vec::new()),
            records: Mutex::new(HashMap::new()),
            synced: std::sync::atomic::AtomicBool::new(false),
            applied,
            held_bundles: Mutex::new(Vec::new()),
            prepull,
        }
    }

    /// Called by the bundle URL poller with the bundles it holds back.
    pub fn set_held_bundles(&self, held: Vec<crate::desired::http::Held>) {
        *self.held_bundles.lock().unwrap_or_else(|e| e.into_inner()) = held;
    }

    pub fn held_bundles(&self) -> Vec<crate::desired::http::Held> {
        self.held_bundles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The desired state cached by a previous run, until the first pass (an agent restarted
    /// while the API server is away).
    pub fn seed_desired(&self, desired: BTreeMap<ObjectKey, DesiredObject>) {
        let mut current = self.desired.lock().unwrap_or_else(|e| e.into_inner());
        if current.is_empty() {
            *current = desired;
        }
    }

    /// Whether the API server answers now.
    pub async fn online(&self) -> bool {
        matches!(
            tokio::time::timeout(
                crate::desired::authority::PROBE_TIMEOUT,
                self.client.apiserver_version()
            )
            .await,
            Ok(Ok(_))
        )
    }

    /// Called by the agent after each pass.
    pub fn set_desired(
        &self,
        desired: BTreeMap<ObjectKey, DesiredObject>,
        refused: Vec<crate::desired::Refusal>,
    ) {
        *self.desired.lock().unwrap_or_else(|e| e.into_inner()) = desired;
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = refused;
        self.synced.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// This node's pods, from the agent's cache (it answers while the API server is away).
    pub fn pods(&self) -> Vec<Pod> {
        let mut pods: Vec<Pod> = self.pods.state().iter().map(|p| (**p).clone()).collect();
        pods.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        pods
    }

    pub(crate) fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods
            .get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))
    }

    /// The object whose mirror pod on this node is `namespace/pod`.
    fn object_of(&self, namespace: &str, pod: &str) -> Option<DesiredObject> {
        let suffix = format!("-{}", self.node);
        let name = pod.strip_suffix(&suffix)?;
        self.desired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|d| d.key.namespace == namespace && d.key.name == name)
            .cloned()
    }

    /// `GET .../upgrade`: the last upgrade of this pod, or idle.
    pub fn record(&self, namespace: &str, pod: &str) -> Result<Record, Refused> {
        if let Some(r) = self
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(namespace.to_string(), pod.to_string()))
        {
            return Ok(r.clone());
        }
        if self.pod(namespace, pod).is_none() && self.object_of(namespace, pod).is_none() {
            return Err(refused(
                404,
                format!("pod {namespace}/{pod} not found on node {}", self.node),
            ));
        }
        Ok(Record {
            namespace: namespace.into(),
            pod: pod.into(),
            phase: Phase::Idle,
            from_hash: None,
            to_hash: None,
            started_at: None,
            finished_at: None,
            message: None,
        })
    }

    fn set_record(&self, namespace: &str, pod: &str, change: impl FnOnce(&mut Record)) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = records.get_mut(&(namespace.to_string(), pod.to_string())) {
            change(r);
        }
    }

    /// The object that manages mirror pod `namespace/pod`; refused 404 when the pod is not
    /// known (`seen`: the pod exists), 403 when no object manages it.
    fn managing(&self, namespace: &str, pod: &str, seen: bool) -> Result<DesiredObject, Refused> {
        self.object_of(namespace, pod).ok_or_else(|| {
            if seen {
                refused(
                    403,
                    format!("pod {namespace}/{pod} is not managed by a StaticPod or YurtStaticSet"),
                )
            } else {
                refused(
                    404,
                    format!("pod {namespace}/{pod} not found on node {}", self.node),
                )
            }
        })
    }

    /// What this node's agent would do for `d` (and the manifest on disk), its pod `mirror`.
    fn plan_for(
        &self,
        d: &DesiredObject,
        mirror: Option<&Pod>,
    ) -> Result<(Plan, Option<Vec<u8>>), Refused> {
        let local = self
            .store
            .read(&d.manifest)
            .map_err(|e| refused(500, format!("reading {}.yaml: {e}", d.manifest)))?;
        let state = mirror.map(|p| MirrorState {
            hash: crate::manifest::mirror::pod_hash(p).map(str::to_string),
            ready: crate::manifest::mirror::pod_ready(p),
        });
        let next = plan(
            d,
            local.as_deref(),
            state.as_ref(),
            &self.upgrader.failed.snapshot(),
        );
        Ok((next, local))
    }

    /// `POST .../imagepull`: pull the images of the upgrade available to mirror pod
    /// `namespace/pod` ahead of it (again, after a failure); the message is the 200 body.
    pub fn image_pull(self: &Arc<Self>, namespace: &str, pod: &str) -> Result<String, Refused> {
        let mirror = self.pod(namespace, pod);
        let d = self.managing(namespace, pod, mirror.is_some())?;
        if self.running.contains(&d.manifest) {
            return Err(refused(
                409,
                format!("an upgrade of pod {namespace}/{pod} is running"),
            ));
        }
        match self.plan_for(&d, mirror.as_deref())?.0 {
            Plan::Upgrade { .. } | Plan::UpgradeAvailable => {}
            _ => {
                return Err(refused(
                    403,
                    format!("no upgrade is available for pod {namespace}/{pod}"),
                ));
            }
        }
        if !self.prepull.enabled() {
            return Err(refused(
                403,
                "image pre-pull is off on this node: no container runtime socket (cri.endpoint)"
                    .to_string(),
            ));
        }
        self.prepull.retry(&d.manifest, &d.hash, || {
            crate::images::images_of(&d.rendered)
        });
        self.changed.notify_one();
        tracing::info!(object = %d.key, node = %self.node, pod, hash = %d.hash, "image pre-pull requested through the local API");
        Ok(format!(
            "Image pre-pull requested for pod {namespace}/{pod}"
        ))
    }

    /// `POST .../upgrade`: start the upgrade of mirror pod `namespace/pod` when one is
    /// available; the message is the 200 body.
    pub async fn start(self: &Arc<Self>, namespace: &str, pod: &str) -> Result<String, Refused> {
        let online = self.online().await;
        if !online && !self.offline.allow {
            return Err(refused(
                503,
                "the API server is unreachable and ota.allowOffline is false".to_string(),
            ));
        }
        let mut mirror = self.pod(namespace, pod);
        let kubelet = if online {
            None
        } else {
            let unreachable = |e: kubelet::KubeletError| {
                refused(503, format!("the API server is unreachable; {e}"))
            };
            let kubelet = kubelet::KubeletPods::start(
                &self.offline.kubelet_pods_url,
                self.offline.kubelet_token.clone(),
            )
            .map_err(unreachable)?;
            let first = kubelet.read_now().await.map_err(unreachable)?;
            // An agent restarted offline has no pods cached: kubelet's list says what runs.
            if mirror.is_none() {
                mirror = first
                    .into_iter()
                    .find(|p| {
                        p.metadata.namespace.as_deref() == Some(namespace)
                            && p.metadata.name.as_deref() == Some(pod)
                    })
                    .map(Arc::new);
            }
            Some(kubelet)
        };
        let d = self.managing(namespace, pod, mirror.is_some())?;
        if d.strategy != Strategy::Ota {
            return Err(refused(
                403,
                format!(
                    "pod {namespace}/{pod} is not OTA-managed ({} uses {})",
                    d.key,
                    d.strategy.as_str()
                ),
            ));
        }
        if self.running.contains(&d.manifest) {
            return Err(refused(
                409,
                format!("an upgrade of pod {namespace}/{pod} is already running"),
            ));
        }
        let (next, local) = self.plan_for(&d, mirror.as_deref())?;
        match next {
            Plan::NotMember => {
                return Err(refused(
                    403,
                    format!(
                        "node {} is not a member of {}: it has no {}.yaml",
                        self.node, d.key, d.manifest
                    ),
                ));
            }
            Plan::Current | Plan::Drifted => {
                return Err(refused(
                    403,
                    format!("pod {namespace}/{pod} is already at {}", d.hash),
                ));
            }
            Plan::HeldBack { hash } => {
                return Err(refused(
                    403,
                    format!(
                        "{hash} was rolled back on this node; it is not offered again until the template changes"
                    ),
                ));
            }
            Plan::Upgrade { .. } | Plan::UpgradeAvailable => {}
        }
        // Offline the condition cannot be kept current; the plan above is what it announces.
        let need = !online
            || mirror
                .as_deref()
                .and_then(|p| condition_of(p, NEED_UPGRADE))
                .is_some_and(|c| c.status == "True");
        if !need {
            return Err(refused(
                403,
                format!("pod {namespace}/{pod} does not have {NEED_UPGRADE}=True"),
            ));
        }
        let Some(latest) = self.running.begin(&d.manifest, &d.hash) else {
            return Err(refused(
                409,
                format!("an upgrade of pod {namespace}/{pod} is already running"),
            ));
        };
        let from = local.as_deref().and_then(crate::manifest::hash_of_manifest);
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (namespace.to_string(), pod.to_string()),
                Record {
                    namespace: namespace.into(),
                    pod: pod.into(),
                    // The images come first (see below).
                    phase: Phase::PullingImages,
                    from_hash: from,
                    to_hash: Some(d.hash.clone()),
                    started_at: Some(now_rfc3339()),
                    finished_at: None,
                    message: (!online)
                        .then(|| "offline: readiness from kubelet's pod list".to_string()),
                },
            );
        tracing::info!(object = %d.key, node = %self.node, pod, hash = %d.hash, "OTA upgrade requested through the local API");
        let answer = format!("Start updating pod {namespace}/{pod}");
        let ota = self.clone();
        let (namespace, pod) = (namespace.to_string(), pod.to_string());
        let upgrader = match kubelet {
            None => ota.upgrader.clone(),
            Some(kubelet) => Arc::new(ota.upgrader.with_mirrors(kubelet)),
        };
        tokio::spawn(async move {
            let target = d.hash.clone();
            let superseded = || *latest.lock().unwrap_or_else(|e| e.into_inner()) != target;
            // The images first: the pod is down only for its restart.
            let pulled = ota
                .prepull
                .ready(&d.manifest, &d.hash, || {
                    crate::images::images_of(&d.rendered)
                })
                .await;
            let result = match pulled {
                Err(reason) => Err(format!("the images could not be pulled: {reason}")),
                Ok(()) => {
                    ota.set_record(&namespace, &pod, |r| r.phase = Phase::Writing);
                    upgrader
                        .upgrade(&d, None, superseded, || {
                            ota.set_record(&namespace, &pod, |r| r.phase = Phase::WaitingReady)
                        })
                        .await
                        .map_err(|e| e.to_string())
                }
            };
            let (phase, message) = match result {
                Ok(Outcome::Succeeded { .. }) => (Phase::Succeeded, None),
                Ok(Outcome::RolledBack { reason, restored }) => (
                    Phase::RolledBack,
                    Some(format!("{reason}; restored {restored}")),
                ),
                Ok(Outcome::Superseded) => {
                    (Phase::Superseded, Some("a newer template arrived".into()))
                }
                Err(e) => (Phase::Failed, Some(e)),
            };
            ota.set_record(&namespace, &pod, |r| {
                r.phase = phase;
                r.message = match (r.message.take(), message) {
                    (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                    (a, b) => a.or(b),
                };
                r.finished_at = Some(now_rfc3339());
            });
            ota.running.end(&d.manifest);
            ota.changed.notify_one();
        });
        Ok(answer)
    }
}
