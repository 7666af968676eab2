//! The cloud side (`staticpod-puller controller`): the rollout coordinator and status, one
//! active replica at a time.
//!
//! Watch-driven and debounced: reflectors over both kinds, mirror pods (only: a field selector
//! on the empty service account, which every mirror pod has and the API server gives every
//! other pod), grants (Leases in the agents' namespace labelled with an object) and
//! canary-labelled Nodes. After a change, one pass visits the objects it touched
//! ([`changes`]): decides each rolling object's window ([`window`]), applies it
//! ([`coordinator`]) and writes the status if it differs, at most one write per object per
//! second. A replica leads
//! through one Lease ([`leader`]); a new leader acts only once its caches have synced, and
//! since grants are Leases, a failover forgets none.

mod changes;
pub mod coordinator;
mod expectations;
mod leader;
pub mod operate;
pub mod status;
pub mod window;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;

use crate::desired::{Kind, ObjectKey};
use crate::kubeclient::Touch;
use crate::resources::{
    RolloutControls, StaticPod, StaticPodSpec, StaticPodStatus, StatusCondition, Strategy,
    YurtStaticSet,
};
use crate::rollout::grant;
use changes::{Changes, ObjectName, Visit, grant_object};
use coordinator::{CANARY_LABEL, Coordinator, PROMOTED_ANNOTATION, Rollout};
use leader::{SlotOwner, Slots};
use window::{Decision, Member};

/// Changes arriving within this window are handled in one pass. Short: a grant handed over
/// waits for it.
const DEBOUNCE: Duration = Duration::from_millis(10);
/// At most one status write per object per this long: every write reaches every agent
/// watching the kind.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: impl FnMut(&mut K) + Send + 'static,
    on_touch: impl Fn(Touch<'_, K>) + Send + 'static,
    watches: &mut Vec<crate::kubeclient::WatchTask>,
) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, task) = crate::kubeclient::reflect_touches(api, config, trim, on_touch);
    watches.push(task);
    store
}

/// What the controller reads.
struct Caches {
    static_pods: Store<StaticPod>,
    yurt_static_sets: Store<YurtStaticSet>,
    pods: Store<Pod>,
    grants: Store<Lease>,
    canary_nodes: Store<Node>,
}

impl Caches {
    /// The objects of both kinds named `name` (a mirror pod or a grant cannot tell which).
    fn named(&self, name: &ObjectName) -> (Option<Arc<StaticPod>>, Option<Arc<YurtStaticSet>>) {
        (
            self.static_pods
                .get(&ObjectRef::new(&name.1).within(&name.0)),
            self.yurt_static_sets
                .get(&ObjectRef::new(&name.1).within(&name.0)),
        )
    }

    /// Every object's name.
    fn names(&self) -> HashSet<ObjectName> {
        let static_pods = self.static_pods.state();
        let yurt_static_sets = self.yurt_static_sets.state();
        static_pods
            .iter()
            .map(|o| name_of(&**o))
            .chain(yurt_static_sets.iter().map(|o| name_of(&**o)))
            .collect()
    }

    async fn ready(&self) {
        let _ = self.static_pods.wait_until_ready().await;
        let _ = self.yurt_static_sets.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        let _ = self.grants.wait_until_ready().await;
        let _ = self.canary_nodes.wait_until_ready().await;
    }
}

/// Run the controller until the process ends. `identity` names this replica in the Lease;
/// grants live in `lease_namespace` (the agents' namespace).
pub async fn run(
    client: kube::Client,
    lease_namespace: &str,
    identity: &str,
    lease_duration: Duration,
) {
    let changes = Arc::new(Changes::default());
    // Dropped (watches stopped) when this future is: a stopped controller leaves nothing behind.
    let mut watches = Vec::new();
    let leader_leases: Store<Lease> = reflect(
        Api::namespaced(client.clone(), lease_namespace),
        watcher::Config::default().fields(&format!(
            "metadata.name={}",
            leader_owner(lease_namespace).lease_name(0)
        )),
        |_| {},
        |_| {},
        &mut watches,
    );
    let slots = Slots::new(
        client.clone(),
        leader_leases.clone(),
        lease_namespace,
        identity,
        lease_duration,
    );
    let owner = leader_owner(lease_namespace);
    let caches = Caches {
        static_pods: reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            |_| {},
            {
                let changes = changes.clone();
                move |t| changes.object(t)
            },
            &mut watches,
        ),
        yurt_static_sets: reflect(
            Api::all(client.clone()),
            watcher::Config::default(),
            |_| {},
            {
                let changes = changes.clone();
                move |t| changes.object(t)
            },
            &mut watches,
        ),
        pods: reflect(
            Api::all(client.clone()),
            watcher::Config::default().fields(coordinator::MIRROR_PODS),
            coordinator::trim_pod,
            {
                let changes = changes.clone();
                move |t| changes.pod(t)
            },
            &mut watches,
        ),
        grants: reflect(
            Api::namespaced(client.clone(), lease_namespace),
            watcher::Config::default().labels(grant::OBJECT_LABEL),
            |_| {},
            {
                let changes = changes.clone();
                move |t| changes.grant(t)
            },
            &mut watches,
        ),
        canary_nodes: reflect(
            Api::all(client.clone()),
            watcher::Config::default().labels(&format!("{CANARY_LABEL}=true")),
            |_| {},
            {
                let changes = changes.clone();
                move |t| changes.canary_node(t)
            },
            &mut watches,
        ),
    };
    changes.follow_pods(caches.pods.clone());
    let _ = leader_leases.wait_until_ready().await;
    loop {
        // Become the leader (or wait for the current one's Lease to expire).
        let held = loop {
            match slots.acquire(&owner, 1).await {
                Ok(Some(slot)) => break slot,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "taking the controller lease"),
            }
            tokio::time::sleep(lease_duration / 3).await;
        };
        tracing::info!(identity, "controller is the leader");
        // Nothing is granted before the caches hold a full list: a grant out that a new
        // leader has not seen yet must not be handed out twice.
        caches.ready().await;
        changes.everything();
        let mut pass = Pass::new(client.clone(), lease_namespace, lease_duration, identity);
        let mut renew = tokio::time::interval(lease_duration / 3);
        let mut wake_at: Option<Instant> = None;
        loop {
            let wake = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = changes.notify.notified() => tokio::time::sleep(DEBOUNCE).await,
                _ = wake => {}
                _ = renew.tick() => match slots.renew(&held).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(identity, "controller lease lost; standing by");
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing the controller lease"),
                },
            }
            let started = std::time::Instant::now();
            wake_at = pass.run(&caches, &changes).await;
            crate::metrics::inc("staticpod_puller_controller_reconciles_total", &[]);
            crate::metrics::observe(
                "staticpod_puller_controller_reconcile_seconds",
                started.elapsed().as_secs_f64(),
            );
        }
    }
}

fn leader_owner(lease_namespace: &str) -> SlotOwner {
    SlotOwner {
        kind_short: "controller",
        namespace: lease_namespace.to_string(),
        name: "status".to_string(),
    }
}

/// One leader term's passes and what they remember.
struct Pass {
    client: kube::Client,
    coordinator: Coordinator,
    /// When each object's status was last written (writes are coalesced).
    written: HashMap<ObjectKey, Instant>,
    /// Objects to visit again at a time (a status write held back).
    due: HashMap<ObjectName, Instant>,
}

impl Pass {
    fn new(
        client: kube::Client,
        namespace: &str,
        lease_duration: Duration,
        identity: &str,
    ) -> Pass {
        Pass {
            coordinator: Coordinator::new(client.clone(), namespace, lease_duration, identity),
            client,
            written: HashMap::new(),
            due: HashMap::new(),
        }
    }

    /// One pass over the objects that changed (and those due again); returns when the next
    /// pass is due without a change (a grant expiring, a coalesced status write).
    async fn run(&mut self, caches: &Caches, changes: &Changes) -> Option<Instant> {
        let now = Instant::now();
        let grants = caches.grants.state();
        let expiry = self.coordinator.observe(&grants, now);
        let mut visit: HashSet<ObjectName> = match changes.take(&caches.pods) {
            Visit::Everything => caches.names(),
            Visit::Objects(objects) => objects,
        };
        self.due.retain(|object, at| {
            let due = *at <= now;
            if due {
                visit.insert(object.clone());
            }
            !due
        });
        if expiry.is_some_and(|at| at <= now) {
            // A grant may have expired: visit the objects of the open ones, and withdraw those
            // of objects deleted since (nothing else would, and their expiry would come back).
            let mut orphans = Vec::new();
            for lease in grants
                .iter()
                .filter(|l| grant::Grant::from_lease(l).is_some_and(|g| g.open))
            {
                let Some(object) = grant_object(lease) else {
                    continue;
                };
                match caches.named(&object) {
                    (None, None) => orphans.push(lease.clone()),
                    _ => {
                        visit.insert(object);
                    }
                }
            }
            self.withdraw(&orphans).await;
        }
        let canary: HashSet<String> = caches
            .canary_nodes
            .state()
            .iter()
            .map(|n| n.name_any())
            .collect();
        let grants_by_object = coordinator::grants_by_object(&grants);
        let no_grants = Vec::new();
        for object in visit {
            let members =
                coordinator::members_by_object(&changes.members(&object, &caches.pods), &canary)
                    .remove(&object)
                    .unwrap_or_default();
            let (static_pod, yurt_static_set) = caches.named(&object);
            let mut due = None;
            if let Some(o) = static_pod {
                let key = key_of(Kind::StaticPod, &*o);
                let g = grants_by_object
                    .get(&grant::object_label(&key))
                    .unwrap_or(&no_grants);
                due = self
                    .object(&key, &*o, &o.spec, o.status.as_ref(), &members, g, now)
                    .await;
            }
            if let Some(o) = yurt_static_set {
                let key = key_of(Kind::YurtStaticSet, &*o);
                let spec: StaticPodSpec = o.spec.clone().into();
                let g = grants_by_object
                    .get(&grant::object_label(&key))
                    .unwrap_or(&no_grants);
                let also = self
                    .object(&key, &*o, &spec, o.status.as_ref(), &members, g, now)
                    .await;
                due = earliest(due, also);
            }
            if let Some(at) = due {
                self.due.insert(object, at);
            }
        }
        // An expired grant not yet gone is looked at again shortly, not in a busy loop.
        let expiry = expiry.map(|at| at.max(now + DEBOUNCE));
        earliest(expiry, self.due.values().min().copied())
    }

    /// Coordinate one object (when rolling) and write its status if it changed; returns when
    /// it is to be visited again without a change (a status write held back, a window that
    /// changes with time).
    #[allow(clippy::too_many_arguments)]
    async fn object<K>(
        &mut self,
        key: &ObjectKey,
        o: &K,
        spec: &StaticPodSpec,
        current: Option<&StaticPodStatus>,
        members: &[Member],
        grants: &[Arc<Lease>],
        now: Instant,
    ) -> Option<Instant>
    where
        K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned,
    {
        let hash = crate::manifest::template_hash(&spec.template);
        let strategy = spec.upgrade_strategy.as_ref();
        let rolling = Strategy::parse(strategy.and_then(|s| s.type_.as_deref()))
            == Ok(Strategy::AdvancedRollingUpdate);
        let controls = RolloutControls::parse(strategy);
        // When the window may change by time alone.
        let mut again = None;
        let decision = match (rolling, controls) {
            (true, Ok(controls)) => {
                let promoted = o
                    .meta()
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(PROMOTED_ANNOTATION))
                    .is_some_and(|p| *p == hash);
                let uid = o.meta().uid.clone().unwrap_or_default();
                let rollout = Rollout {
                    key,
                    uid: &uid,
                    hash: &hash,
                    controls,
                    promoted,
                    members,
                    grants,
                };
                let decision = self.coordinator.coordinate(&rollout, now).await;
                again = self.coordinator.due(key);
                Some(decision)
            }
            // OTA (nothing to grant), or a strategy the agents refuse too: no grants stay out.
            _ => {
                self.withdraw(grants).await;
                None
            }
        };
        let generation = o.meta().generation.unwrap_or_default();
        let next = desired_status(&hash, generation, current, members, decision.as_ref());
        if current == Some(&next) {
            return again;
        }
        if let Some(at) = self.written.get(key)
            && now.duration_since(*at) < STATUS_INTERVAL
        {
            return earliest(again, Some(*at + STATUS_INTERVAL));
        }
        self.written.insert(key.clone(), now);
        write_status::<K>(&self.client, key, &next).await;
        again
    }

    async fn withdraw(&self, grants: &[Arc<Lease>]) {
        for g in grants {
            let Some(name) = g.metadata.name.as_deref() else {
                continue;
            };
            let api: Api<Lease> = Api::namespaced(
                self.client.clone(),
                g.metadata.namespace.as_deref().unwrap_or_default(),
            );
            if let Err(e) = api.delete(name, &Default::default()).await {
                tracing::warn!(grant = %name, error = %e, "withdrawing a grant");
            }
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn name_of<K: Resource>(o: &K) -> ObjectName {
    (
        o.meta().namespace.clone().unwrap_or_default(),
        o.meta().name.clone().unwrap_or_default(),
    )
}

fn key_of<K: Resource>(kind: Kind, o: &K) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: o.meta().namespace.clone().unwrap_or_default(),
        name: o.meta().name.clone().unwrap_or_default(),
    }
}

/// The status an object should have: counts from its members, and for a rolling object the
/// rollout's phase, failures and conditions.
pub fn desired_status(
    hash: &str,
    generation: i64,
    current: Option<&StaticPodStatus>,
    members: &[Member],
    rollout: Option<&Decision>,
) -> StaticPodStatus {
    let counts = status::Counts::of_members(hash, members);
    let previous = current
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut conditions = status::conditions(&counts);
    if let Some(d) = rollout {
        conditions.extend(status::rollout_conditions(hash, d));
    }
    let conditions = conditions
        .into_iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" }.to_string();
            // The transition time moves only when the condition's status does.
            let since = previous
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == status)
                .and_then(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            StatusCondition {
                type_: c.type_.to_string(),
                status,
                reason: Some(c.reason.to_string()),
                message: Some(c.message),
                last_transition_time: Some(since),
            }
        })
        .collect();
    StaticPodStatus {
        total_number: counts.total,
        ready_number: counts.ready,
        upgraded_number: counts.upgraded,
        observed_generation: Some(generation),
        failed_number: rollout.map(|d| d.failed.len() as i32),
        phase: rollout.map(|d| status::phase_name(d.phase).to_string()),
        conditions: Some(conditions),
    }
}

#[tracing::instrument(skip_all, fields(object = %key))]
async fn write_status<K>(client: &kube::Client, key: &ObjectKey, next: &StaticPodStatus)
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), &key.namespace);
    let patch = json!({"status": next});
    match api
        .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            crate::metrics::inc(
                "staticpod_puller_controller_status_writes_total",
                &[("result", "ok")],
            );
            tracing::debug!(
                total = next.total_number,
                ready = next.ready_number,
                upgraded = next.upgraded_number,
                "status updated"
            )
        }
        Err(e) => {
            crate::metrics::inc(
                "staticpod_puller_controller_status_writes_total",
                &[("result", "error")],
            );
            tracing::warn!(error = %e, "updating status")
        }
    }
}
