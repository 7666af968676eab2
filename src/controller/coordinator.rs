//! Applying the window ([`super::window`]) of each AdvancedRollingUpdate object: create the
//! grants it decides, delete the finished, stale and expired ones, report a halt. Thin on
//! purpose: every decision is the pure function's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use tokio::time::Instant;

use super::expectations::{Expectations, Held};
use super::window::{Decision, GrantState, GrantView, Input, Member, Phase, decide};
use crate::desired::ObjectKey;
use crate::manifest::mirror::{CONFIG_SOURCE, pod_hash, pod_ready};
use crate::resources::RolloutControls;
use crate::rollout::events::{Reason, Recorder};
use crate::rollout::grant::{self, Grant, NODE_ANNOTATION};

/// Annotation on an object: the hash promoted past the canary step (`rollout promote`).
pub const PROMOTED_ANNOTATION: &str = "staticpod-puller.openyurt.io/promoted";
/// Node label: upgrade this node in the canary step, before the others.
pub const CANARY_LABEL: &str = "staticpod-puller.openyurt.io/canary";
/// The pod condition saying the new template's images are on the node (OpenYurt's name).
pub const IMAGE_READY_CONDITION: &str = crate::images::IMAGE_READY;

/// Field selector: mirror pods only. The API server's ServiceAccount admission sets `default`
/// on every pod created without a service account, and refuses a mirror pod that names one.
pub const MIRROR_PODS: &str = "spec.serviceAccountName=";

/// Keep of a pod only what coordination and status read: its name, namespace, node, the hash
/// and config-source annotations, and the Ready and PodImageReady conditions. The controller
/// caches every mirror pod of the cluster; most of each pod is spec it never reads.
pub fn trim_pod(pod: &mut Pod) {
    use crate::manifest::HASH_ANNOTATION;
    pod.metadata.managed_fields = None;
    pod.metadata.labels = None;
    pod.metadata.owner_references = None;
    if let Some(annotations) = pod.metadata.annotations.as_mut() {
        annotations.retain(|k, _| k == HASH_ANNOTATION || k == CONFIG_SOURCE);
    }
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    pod.spec = node.map(|node_name| k8s_openapi::api::core::v1::PodSpec {
        node_name: Some(node_name),
        ..Default::default()
    });
    if let Some(status) = pod.status.as_mut() {
        let conditions = status.conditions.take().map(|cs| {
            cs.into_iter()
                .filter(|c| c.type_ == "Ready" || c.type_ == IMAGE_READY_CONDITION)
                .collect()
        });
        *status = k8s_openapi::api::core::v1::PodStatus {
            conditions,
            ..Default::default()
        };
    }
}

/// Members of every object, from the mirror pods in one pass: (namespace, object name) →
/// members. A mirror pod is `<object name>-<node name>` with a non-`api` config source.
pub fn members_by_object(
    pods: &[Arc<Pod>],
    canary_nodes: &HashSet<String>,
) -> HashMap<(String, String), Vec<Member>> {
    let mut members: HashMap<(String, String), Vec<Member>> = HashMap::new();
    for pod in pods {
        let Some((object, node)) = mirror_object(pod) else {
            continue;
        };
        let hash = pod_hash(pod).map(str::to_string);
        members.entry(object).or_default().push(Member {
            node: node.to_string(),
            hash,
            ready: pod_ready(pod),
            canary: canary_nodes.contains(node),
            // True: the message names the hash whose images are on the node (the pod
            // itself still runs the old one); False: the reason (Pulling, PullFailed).
            images_ready: image_condition(pod)
                .filter(|c| c.status == "True")
                .map(|c| c.message.clone().unwrap_or_default()),
            images_not_ready: image_condition(pod)
                .filter(|c| c.status == "False")
                .map(|c| {
                    (
                        c.reason.clone().unwrap_or_default(),
                        c.message.clone().unwrap_or_default(),
                    )
                }),
        });
    }
    members
}

/// The object a mirror pod is a member of, `(namespace, object name)`, and its node; None
/// for a pod that is not a static pod's mirror.
pub fn mirror_object(pod: &Pod) -> Option<((String, String), &str)> {
    let namespace = pod.metadata.namespace.as_deref()?;
    let name = pod.metadata.name.as_deref()?;
    let node = pod.spec.as_ref()?.node_name.as_deref()?;
    let is_static = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_SOURCE))
        .is_some_and(|s| s != "api");
    let object = name.strip_suffix(node)?.strip_suffix('-')?;
    (is_static && !object.is_empty()).then(|| ((namespace.to_string(), object.to_string()), node))
}

/// A pod's `PodImageReady` condition.
fn image_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == IMAGE_READY_CONDITION)
}

/// One object to coordinate.
pub struct Rollout<'a> {
    pub key: &'a ObjectKey,
    pub uid: &'a str,
    pub hash: &'a str,
    pub controls: RolloutControls,
    pub promoted: bool,
    pub members: &'a [Member],
    /// This object's grant Leases.
    pub grants: &'a [Arc<Lease>],
}

/// The controller's side of grants.
pub struct Coordinator {
    api: Api<Lease>,
    lease_duration: Duration,
    events: Recorder,
    /// Grant → (resourceVersion, when this replica saw it change): expiry by our own clock.
    observed: HashMap<String, (String, Instant)>,
    /// Halts already reported: (object, hash).
    halts_reported: HashSet<(ObjectKey, String)>,
    /// Its own writes the cache does not show yet.
    expectations: Expectations,
    /// Members with a mirror pod at the last visit of their object (None), or since when one
    /// is without it (first noticed at a visit): one whose pod vanished within a
    /// lease duration counts as unavailable (kubelet replacing it), not as gone.
    seen: HashMap<(ObjectKey, String), Option<Instant>>,
    /// Members whose grant expired unused, and when: passed over for [`STALLED_FOR`] lease
    /// durations.
    stalled: HashMap<(ObjectKey, String), Instant>,
    /// Objects a grant write failed for (the API server's error), and when to visit them again:
    /// nothing else may change to bring them back.
    retry: HashMap<ObjectKey, Instant>,
}

/// How soon a failed grant write is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Grant writes in flight at once (per batch of a pass).
const IN_FLIGHT: usize = 32;

/// How many lease durations a node whose grant expired unused is passed over.
const STALLED_FOR: u32 = 5;

/// Past a time-based change (the comparisons are strict), so the pass due then sees it.
const MARGIN: Duration = Duration::from_millis(10);

impl Coordinator {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        lease_duration: Duration,
        identity: &str,
    ) -> Coordinator {
        Coordinator {
            api: Api::namespaced(client.clone(), namespace),
            lease_duration,
            events: Recorder::controller(client, identity),
            observed: HashMap::new(),
            halts_reported: HashSet::new(),
            expectations: Expectations::default(),
            seen: HashMap::new(),
            stalled: HashMap::new(),
            retry: HashMap::new(),
        }
    }

    /// Note when each grant was last seen changing (call with every grant, every pass; a
    /// grant not passed is forgotten), and return when the next open one would expire.
    pub fn observe(&mut self, grants: &[Arc<Lease>], now: Instant) -> Option<Instant> {
        let mut seen = HashSet::new();
        let mut next = None::<Instant>;
        for lease in grants {
            let (Some(name), rv) = (
                lease.metadata.name.clone(),
                lease.metadata.resource_version.clone().unwrap_or_default(),
            ) else {
                continue;
            };
            let entry = self
                .observed
                .entry(name.clone())
                .or_insert_with(|| (rv.clone(), now));
            if entry.0 != rv {
                *entry = (rv, now);
            }
            if Grant::from_lease(lease).is_some_and(|g| g.open) {
                let at = entry.1 + duration_of(lease, self.lease_duration);
                next = Some(next.map_or(at, |n| n.min(at)));
            }
            seen.insert(name);
        }
        self.observed.retain(|name, _| seen.contains(name));
        next
    }

    fn expired(&self, lease: &Lease, now: Instant) -> bool {
        let name = lease.metadata.name.as_deref().unwrap_or_default();
        self.observed.get(name).is_some_and(|(_, at)| {
            now.duration_since(*at) > duration_of(lease, self.lease_duration)
        })
    }

    /// When `key`'s window may change with nothing else changing: a member whose pod
    /// vanished stops counting as unavailable, a passed-over node becomes eligible again, an
    /// expectation of this replica's own write times out. The controller visits the object
    /// again then.
    pub fn due(&self, key: &ObjectKey) -> Option<Instant> {
        let missing = self
            .seen
            .iter()
            .filter(|((of, _), _)| of == key)
            .filter_map(|(_, gone)| *gone)
            .map(|gone| gone + self.lease_duration + MARGIN);
        let stalled = self
            .stalled
            .iter()
            .filter(|((of, _), _)| of == key)
            .map(|(_, at)| *at + self.lease_duration * STALLED_FOR + MARGIN);
        missing
            .chain(stalled)
            .chain(self.expectations.timeout(key))
            .chain(self.retry.get(key).copied())
            .min()
    }

    /// Decide and apply one object's window.
    #[tracing::instrument(skip_all, fields(object = %rollout.key, hash = %rollout.hash))]
    pub async fn coordinate(&mut self, rollout: &Rollout<'_>, now: Instant) -> Decision {
        let key = rollout.key;
        self.retry.remove(key);
        let cached: Vec<Held> = rollout
            .grants
            .iter()
            .filter_map(|l| {
                Some(Held {
                    uid: l.metadata.uid.clone().unwrap_or_default(),
                    view: grant_view(l, self.expired(l, now))?,
                })
            })
            .collect();
        let held = self.expectations.grants(key, &cached, now);
        let views: Vec<GrantView> = held.values().map(|h| h.view.clone()).collect();
        // Absence is timed from the visit that first notices it (a pod's deletion makes its
        // object visited at once), not from the last visit: an object may go unvisited long.
        let present: HashSet<&str> = rollout.members.iter().map(|m| m.node.as_str()).collect();
        for ((of, node), gone) in self.seen.iter_mut() {
            if of == key && !present.contains(node.as_str()) && gone.is_none() {
                *gone = Some(now);
            }
        }
        for m in rollout.members {
            self.seen.insert((key.clone(), m.node.clone()), None);
        }
        let lately = self.lease_duration;
        self.seen.retain(|(of, _), gone| {
            of != key || gone.is_none_or(|at| now.duration_since(at) <= lately)
        });
        let missing: Vec<String> = self
            .seen
            .iter()
            .filter(|((of, _), gone)| of == key && gone.is_some())
            .map(|((_, node), _)| node.clone())
            .collect();
        let stalled_for = self.lease_duration * STALLED_FOR;
        self.stalled
            .retain(|_, at| now.duration_since(*at) < stalled_for);
        let stalled: std::collections::BTreeSet<String> = self
            .stalled
            .keys()
            .filter(|(of, _)| of == key)
            .map(|(_, node)| node.clone())
            .collect();
        let object = rollout.key.to_string();
        let decision = decide(&Input {
            object: &object,
            hash: rollout.hash,
            members: rollout.members,
            missing: &missing,
            stalled: &stalled,
            grants: &views,
            controls: rollout.controls,
            promoted: rollout.promoted,
        });
        // Deletes first (a node may be granted again under the same name in this pass), then
        // grants; each batch in parallel: a wave of a thousand-node fleet is a hundred grants,
        // and one at a time they would hold it up for seconds.
        self.delete(key, &held, &decision.delete, now).await;
        self.grant(rollout, &decision.grant, now).await;
        if decision.phase == Phase::Halted
            && self
                .halts_reported
                .insert((rollout.key.clone(), rollout.hash.to_string()))
        {
            let failed = super::status::names(
                &decision
                    .failed
                    .iter()
                    .map(|(n, r)| format!("{n} ({r})"))
                    .collect::<Vec<_>>(),
            );
            let message = format!(
                "rollout of {} halted: {} of maxFailed {} members rolled it back: {failed}; fix the template, or `staticpod-puller rollout retry`",
                rollout.hash,
                decision.failed.len(),
                decision.failure_budget
            );
            tracing::warn!(%message, "rollout halted");
            self.events
                .emit(rollout.key, rollout.uid, Reason::RolloutHalted, &message)
                .await;
        }
        decision
    }
    /// Delete the grants of `key` held by `nodes`, each only if it is still the one decided
    /// about (a uid precondition).
    async fn delete(
        &mut self,
        key: &ObjectKey,
        held: &BTreeMap<String, Held>,
        nodes: &[String],
        now: Instant,
    ) {
        let mut deletes = Vec::new();
        for node in nodes {
            let Some(Held { uid, view }) = held.get(node) else {
                continue;
            };
            tracing::debug!(node = %node, grant = ?view, "deleting a grant");
            if view.state == (GrantState::Out { expired: true }) {
                tracing::warn!(node = %node, "grant expired unused: the node's agent is gone or cut off; passing it over for now");
                self.stalled.insert((key.clone(), node.clone()), now);
            }
            let name = grant::lease_name(key, node);
            // Only the grant decided about: a newer one of the same name stays.
            let params = DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            // Owned futures: ones borrowing across the await are not Send to the runtime.
            let (api, uid) = (self.api.clone(), uid.clone());
            deletes.push(async move {
                let result = api.delete(&name, &params).await;
                (uid, name, result)
            });
        }
        let deleted: Vec<_> = futures::stream::iter(deletes)
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for (uid, name, result) in deleted {
            match result {
                Ok(_) => self.expectations.deleted(key, &uid, now),
                // Gone already (the cache is behind): not counted again until it agrees.
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    self.expectations.deleted(key, &uid, now)
                }
                // Replaced by a newer grant since: the next pass sees that one.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => {
                    tracing::warn!(grant = %name, error = %e, "deleting a grant; trying again");
                    self.retry.insert(key.clone(), now + RETRY_AFTER);
                }
            }
        }
    }

    /// Grant `rollout`'s hash to `nodes`.
    async fn grant(&mut self, rollout: &Rollout<'_>, nodes: &[String], now: Instant) {
        let key = rollout.key;
        let creates: Vec<_> = nodes
            .iter()
            .map(|node| {
                let lease = grant::lease(rollout.key, node, rollout.hash, self.lease_duration);
                let (api, node) = (self.api.clone(), node.clone());
                async move {
                    let result = api.create(&PostParams::default(), &lease).await;
                    (node, result)
                }
            })
            .collect();
        let created: Vec<_> = futures::stream::iter(creates)
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for (node, result) in created {
            match result {
                Ok(created) => {
                    tracing::info!(node = %node, "granted");
                    let view = GrantView {
                        node: node.clone(),
                        hash: rollout.hash.to_string(),
                        state: GrantState::Out { expired: false },
                    };
                    let uid = created.metadata.uid.clone().unwrap_or_default();
                    self.expectations.created(key, uid, view, now);
                }
                // Still there from before (its deletion not seen yet): the next pass sees it.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    tracing::debug!(node = %node, "grant exists already")
                }
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "creating a grant; trying again");
                    self.retry.insert(key.clone(), now + RETRY_AFTER);
                }
            }
        }
    }
}

/// A grant Lease as the window sees it; `expired` is the observer's to judge.
pub fn grant_view(lease: &Lease, expired: bool) -> Option<GrantView> {
    let g = Grant::from_lease(lease)?;
    let node = lease
        .metadata
        .annotations
        .as_ref()?
        .get(NODE_ANNOTATION)?
        .clone();
    let state = match g.result.as_deref() {
        None if g.open => GrantState::Out { expired },
        None => GrantState::Released,
        Some("succeeded") => GrantState::Succeeded,
        Some("current") => GrantState::Current,
        Some(r) => match r.strip_prefix("rolled-back: ") {
            Some(reason) => GrantState::RolledBack {
                reason: reason.to_string(),
            },
            None => GrantState::Released,
        },
    };
    Some(GrantView {
        node,
        hash: g.hash,
        state,
    })
}

fn duration_of(lease: &Lease, default: Duration) -> Duration {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .map_or(default, |s| Duration::from_secs(s.max(1) as u64))
}

/// Grants by the object label value they carry.
pub fn grants_by_object(leases: &[Arc<Lease>]) -> BTreeMap<String, Vec<Arc<Lease>>> {
    let mut by: BTreeMap<String, Vec<Arc<Lease>>> = BTreeMap::new();
    for lease in leases {
        if let Some(object) = lease
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(grant::OBJECT_LABEL))
        {
            by.entry(object.clone()).or_default().push(lease.clone());
        }
    }
    by
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: &str, source: &str, ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "annotations": {
                    CONFIG_SOURCE: source, crate::manifest::HASH_ANNOTATION: "h1"}},
                "spec": {"nodeName": node, "containers": [{"name": "web"}]},
                "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
            }))
            .expect("a pod"),
        )
    }

    #[test]
    fn a_trimmed_pod_keeps_what_coordination_reads() {
        let full = pod("nginx-edge-1", "edge-1", "file", true);
        let mut trimmed = (*full).clone();
        trimmed
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("big".into(), "x".repeat(1000));
        trim_pod(&mut trimmed);
        let canary = HashSet::new();
        assert_eq!(
            members_by_object(&[Arc::new(trimmed.clone())], &canary),
            members_by_object(&[full], &canary)
        );
        assert!(trimmed.spec.unwrap().containers.is_empty());
        assert_eq!(trimmed.metadata.annotations.unwrap().len(), 2);
    }

    #[test]
    fn members_come_from_mirror_pods_named_after_object_and_node() {
        let pods = vec![
            pod("nginx-edge-1", "edge-1", "file", true),
            pod("nginx-edge-2", "edge-2", "file", false),
            pod("nginx-edge-3", "edge-3", "api", true), // an ordinary pod
            pod("other-edge-9", "edge-1", "file", true), // named for another node
        ];
        let canary = HashSet::from(["edge-2".to_string()]);
        let members = members_by_object(&pods, &canary);
        let nginx = &members[&("default".to_string(), "nginx".to_string())];
        assert_eq!(nginx.len(), 2);
        assert!(nginx[0].ready && !nginx[0].canary);
        assert!(!nginx[1].ready && nginx[1].canary);
        assert_eq!(nginx[0].hash.as_deref(), Some("h1"));
        assert_eq!(members.len(), 1, "{members:?}");
    }
}
