//! The cloud side (`staticpod-puller controller`): status aggregation for StaticPod and
//! YurtStaticSet objects, one active replica at a time.
//!
//! Watch-driven and debounced: reflectors over both kinds and all pods; after a change, one
//! pass recomputes every object's counts from memory and patches only the statuses that
//! differ. Leader election is one Lease taken like an upgrade slot (budget 1), so expiry is
//! judged on our own clock, as for slots.

pub mod status;
pub mod window;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;

use crate::resources::{StaticPod, StaticPodSpec, StaticPodStatus, StatusCondition, YurtStaticSet};
use crate::rollout::slots::{SlotOwner, Slots};

/// Changes arriving within this window are handled in one pass.
const DEBOUNCE: Duration = Duration::from_millis(100);

fn reflect<K>(
    api: Api<K>,
    changed: Arc<Notify>,
    watches: &mut Vec<crate::kubeclient::WatchTask>,
) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, task) =
        crate::kubeclient::reflect(api, kube::runtime::watcher::Config::default(), move || {
            changed.notify_one()
        });
    watches.push(task);
    store
}

/// Run the controller until the process ends. `identity` names this replica in the Lease.
pub async fn run(
    client: kube::Client,
    lease_namespace: &str,
    identity: &str,
    lease_duration: Duration,
) {
    let changed = Arc::new(Notify::new());
    // Dropped (watches stopped) when this future is: a stopped controller leaves nothing behind.
    let mut watches = Vec::new();
    let leases: Store<Lease> = reflect(
        Api::namespaced(client.clone(), lease_namespace),
        changed.clone(),
        &mut watches,
    );
    let slots = Slots::new(
        client.clone(),
        leases.clone(),
        lease_namespace,
        identity,
        lease_duration,
    );
    let owner = SlotOwner {
        kind_short: "controller",
        namespace: lease_namespace.to_string(),
        name: "status".to_string(),
    };
    let static_pods: Store<StaticPod> =
        reflect(Api::all(client.clone()), changed.clone(), &mut watches);
    let yurt_static_sets: Store<YurtStaticSet> =
        reflect(Api::all(client.clone()), changed.clone(), &mut watches);
    let pods: Store<Pod> = reflect(Api::all(client.clone()), changed.clone(), &mut watches);
    let _ = leases.wait_until_ready().await;
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
        let _ = static_pods.wait_until_ready().await;
        let _ = yurt_static_sets.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        let mut renew = tokio::time::interval(lease_duration / 3);
        loop {
            tokio::select! {
                _ = changed.notified() => tokio::time::sleep(DEBOUNCE).await,
                _ = renew.tick() => match slots.renew(&held).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(identity, "controller lease lost; standing by");
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing the controller lease"),
                },
            }
            // Also on every renewal: a status write that failed is retried without a new change.
            let started = std::time::Instant::now();
            let all_pods = pods.state();
            for o in static_pods.state() {
                update_status::<StaticPod>(&client, &o, &o.spec, o.status.as_ref(), &all_pods)
                    .await;
            }
            for o in yurt_static_sets.state() {
                let spec: StaticPodSpec = o.spec.clone().into();
                update_status::<YurtStaticSet>(&client, &o, &spec, o.status.as_ref(), &all_pods)
                    .await;
            }
            crate::metrics::inc("staticpod_puller_controller_reconciles_total", &[]);
            crate::metrics::observe(
                "staticpod_puller_controller_reconcile_seconds",
                started.elapsed().as_secs_f64(),
            );
        }
    }
}

/// The status an object should have, from the pods in memory.
pub fn desired_status(
    name: &str,
    namespace: &str,
    generation: i64,
    spec: &StaticPodSpec,
    current: Option<&StaticPodStatus>,
    pods: &[Arc<Pod>],
) -> StaticPodStatus {
    let hash = crate::manifest::template_hash(&spec.template);
    let in_ns = pods
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace))
        .map(|p| &**p);
    let counts = status::count(name, &hash, in_ns);
    let previous = current
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let conditions = status::conditions(&counts)
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
        conditions: Some(conditions),
    }
}

#[tracing::instrument(skip_all, fields(object = %format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())))]
async fn update_status<K>(
    client: &kube::Client,
    o: &K,
    spec: &StaticPodSpec,
    current: Option<&StaticPodStatus>,
    pods: &[Arc<Pod>],
) where
    K: Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let namespace = o.namespace().unwrap_or_default();
    let generation = o.meta().generation.unwrap_or_default();
    let next = desired_status(&o.name_any(), &namespace, generation, spec, current, pods);
    if current == Some(&next) {
        return;
    }
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    let patch = json!({"status": next});
    match api
        .patch_status(
            &o.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
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
