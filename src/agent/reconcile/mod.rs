//! The reconcile pass: desired state (from the caches) → plan (per object, what differs) →
//! act (start an upgrade, restore or report drift, announce OTA, report refusals). A pass reads
//! only the caches and the manifest directory, so it costs no API request unless it writes
//! (a grant, a status, an Event).

mod announce;
mod bundle_set;
mod drift;
mod images;
mod upgrades;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::caches::Caches;
use crate::bundle::TrustPolicy;
use crate::config::{Config, DriftMode};
use crate::desired::applied::Applied;
use crate::desired::authority::Connectivity;
use crate::desired::{DesiredObject, ObjectKey, Refusal, Strategy, cache, cluster};
use crate::images::{Prepull, PullState};
use crate::manifest::store::ManifestStore;
use crate::ota::Ota;
use crate::rollout::events::{Reason, Recorder};
use crate::rollout::grant::Grants;
use crate::rollout::plan::{Plan, plan};
use crate::rollout::upgrade::{InFlight, Upgrader};

/// Something not converged after a pass.
pub(super) struct Pending {
    pub(super) what: String,
    /// Waiting will not change it (only the operator or a new template can).
    pub(super) settled: bool,
}

impl Pending {
    fn moving(what: String) -> Pending {
        Pending {
            what,
            settled: false,
        }
    }

    fn settled(what: String) -> Pending {
        Pending {
            what,
            settled: true,
        }
    }
}

/// The reconcile pass and what it remembers between passes (what it already reported, which
/// manifests it saw, what it last cached).
pub(super) struct Reconciler {
    pub(super) node: String,
    pub(super) config: Config,
    pub(super) client: kube::Client,
    pub(super) store: Arc<ManifestStore>,
    pub(super) caches: Caches,
    pub(super) grants: Arc<Grants>,
    pub(super) upgrader: Arc<Upgrader>,
    pub(super) events: Recorder,
    pub(super) running: Arc<InFlight>,
    /// OTA: announcements and upgrades asked for through the local API.
    pub(super) ota: Arc<Ota>,
    /// Pulls of new templates' images, before their upgrades.
    pub(super) prepull: Arc<Prepull>,
    /// Set with trust.requireSignedTemplates: the keys object signatures must verify against.
    pub(super) template_policy: Option<TrustPolicy>,
    /// Whether the API server answers, and since when not (who is authoritative).
    pub(super) connectivity: Arc<Connectivity>,
    /// What bundles set on this node.
    pub(super) applied: Arc<Applied>,
    /// The desired state last saved to the state directory's cache.
    pub(super) last_cached: BTreeMap<ObjectKey, DesiredObject>,
    /// What earlier passes saw and reported.
    pub(super) memory: Memory,
    /// The desired state last selected from the caches, with what it came from.
    pub(super) selected: Option<Selected>,
}

/// The desired state selected from the objects with these (uid, resourceVersion): a pass over
/// the same objects uses it again instead of rendering every template once a second.
pub(super) struct Selected {
    from: Vec<(String, String)>,
    desired: BTreeMap<ObjectKey, DesiredObject>,
    refusals: Vec<Refusal>,
}

/// What the pass remembers between passes, so it reports a thing once.
#[derive(Default)]
pub(super) struct Memory {
    /// Refusals already reported: (uid, reason).
    refused: HashSet<(String, String)>,
    /// Manifests this node held at the last pass (to notice one being removed).
    members: HashSet<String>,
    /// Drift already reported (manifest, content digest), in report mode.
    drift: HashSet<(String, String)>,
    /// Bundle-set manifests already reported as kept while offline: (manifest, sequence).
    kept: HashSet<(String, u64)>,
    /// The image state last reported per manifest: (hash, PodImageReady reason).
    images: HashMap<String, (String, &'static str)>,
}

impl Reconciler {
    /// The desired objects and refusals, from the caches.
    fn desired(&mut self) -> (BTreeMap<ObjectKey, DesiredObject>, Vec<Refusal>) {
        let static_pods = self.caches.static_pods.state();
        let yurt_static_sets = self.caches.yurt_static_sets.state();
        let version = |m: &kube::api::ObjectMeta| {
            let uid = m.uid.clone().unwrap_or_default();
            (uid, m.resource_version.clone().unwrap_or_default())
        };
        let mut from: Vec<(String, String)> = static_pods
            .iter()
            .map(|o| version(&o.metadata))
            .chain(yurt_static_sets.iter().map(|o| version(&o.metadata)))
            .collect();
        from.sort_unstable();
        if let Some(s) = self.selected.as_ref().filter(|s| s.from == from) {
            return (s.desired.clone(), s.refusals.clone());
        }
        let (desired, refusals) = cluster::select(
            &static_pods,
            &yurt_static_sets,
            self.template_policy.as_ref(),
            &self.config.namespaces,
        );
        self.selected = Some(Selected {
            from,
            desired: desired.clone(),
            refusals: refusals.clone(),
        });
        (desired, refusals)
    }

    /// One pass. Returns what is not converged yet (for `sync --once`).
    pub(super) async fn pass(&mut self) -> Vec<Pending> {
        let (desired, refusals) = self.desired();
        self.ota.set_desired(desired.clone(), refusals.clone());
        for r in refusals {
            if self
                .memory
                .refused
                .insert((r.uid.clone(), r.reason.clone()))
            {
                tracing::warn!(object = %r.key, node = %self.node, reason = %r.reason, "object refused; nothing written");
                self.events
                    .emit(&r.key, &r.uid, Reason::Refused, &r.reason)
                    .await;
            }
        }
        if desired != self.last_cached {
            // Off the runtime's threads: an fsync on slow storage must not hold up the agent's
            // other work (its local API, its watches), nor, in the demo, a thousand agents'.
            let (store, saving) = (self.store.clone(), desired.clone());
            match tokio::task::spawn_blocking(move || cache::save(&store, &saving)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "saving the desired-state cache"),
                Err(e) => {
                    tracing::warn!(error = %e, "saving the desired-state cache: the task failed")
                }
            }
            self.last_cached = desired.clone();
        }
        let failed = self.upgrader.failed.snapshot();
        let mut pending: Vec<Pending> = Vec::new();
        let cluster_authoritative = self.connectivity.reach().cluster_authoritative();
        for d in desired.values() {
            let local = match self.store.read(&d.manifest) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(object = %d.key, error = %e, "reading manifest");
                    continue;
                }
            };
            if let Some(p) = self
                .after_bundle(d, local.as_deref(), cluster_authoritative)
                .await
            {
                pending.push(p);
                continue;
            }
            if self.running.update(&d.manifest, &d.hash) {
                pending.push(Pending::moving(format!("{} upgrading", d.key)));
                continue;
            }
            let mirror_name = format!("{}-{}", d.key.name, self.node);
            let mirror = self.upgrader.mirrors.mirror(&d.key.namespace, &mirror_name);
            let next = plan(d, local.as_deref(), mirror.as_ref(), &failed);
            if d.strategy == Strategy::Ota {
                self.announce(d, &next, local.as_deref(), &mirror_name)
                    .await;
            }
            match next {
                Plan::NotMember => {
                    if self.memory.members.remove(&d.manifest) {
                        tracing::warn!(object = %d.key, node = %self.node, manifest = %d.manifest, "manifest removed on the node: no longer a member");
                        let message = format!(
                            "{}.yaml was removed on the node: no longer a member",
                            d.manifest
                        );
                        self.events
                            .emit(&d.key, &d.uid, Reason::DriftDetected, &message)
                            .await;
                    }
                }
                Plan::Current => {
                    self.memory.members.insert(d.manifest.clone());
                    self.finish_done_grant(d, &mirror_name).await;
                }
                Plan::Drifted => {
                    self.memory.members.insert(d.manifest.clone());
                    self.drifted(d, local.as_deref().unwrap_or_default()).await;
                    if self.config.drift.mode == DriftMode::Report {
                        pending.push(Pending::settled(format!(
                            "{}: manifest edited on the node (drift.mode: report)",
                            d.key
                        )));
                    }
                }
                // A grant for a hash rolled back here is the operator's retry (`rollout retry`).
                Plan::HeldBack { hash } => match self.grant_for(d, &hash) {
                    Some(grant) if self.upgrader.mirrors.node_ready() => {
                        tracing::info!(object = %d.key, node = %self.node, %hash, "retrying a hash rolled back here: the controller granted it again");
                        pending.push(Pending::moving(format!("{} retrying {hash}", d.key)));
                        self.start_upgrade(d, Some(grant)).await;
                    }
                    _ => pending.push(Pending::settled(format!(
                        "{}: {hash} was rolled back here and is not retried until the template changes",
                        d.key
                    ))),
                },
                Plan::UpgradeAvailable => {
                    // OTA: the images are pulled ahead, so the upgrade asked for later is quick.
                    self.images(d, &mirror_name).await;
                    pending.push(Pending::settled(format!(
                        "{}: OTA upgrade available, waiting for the node's operator",
                        d.key
                    )));
                }
                Plan::Upgrade { .. } if !self.upgrader.mirrors.node_ready() => {
                    // Nothing could be seen to succeed; the upgrade starts when the node is back.
                    self.memory.members.insert(d.manifest.clone());
                    pending.push(Pending::moving(format!(
                        "{} behind; waiting for the node to be Ready",
                        d.key
                    )));
                }
                Plan::Upgrade { .. } if self.images(d, &mirror_name).await != PullState::Ready => {
                    self.memory.members.insert(d.manifest.clone());
                    // A grant is given back once the pull is reported (the controller then
                    // waits for it), not before: most checks end within seconds.
                    if self.images_reported(d).is_some()
                        && let Some(grant) = self.grant_for(d, &d.hash)
                    {
                        self.give_back(d, &grant).await;
                    }
                    match self.prepull.state(&d.manifest, &d.hash) {
                        Some(PullState::Failed(reason)) => pending.push(Pending::settled(format!(
                            "{}: the images of {} could not be pulled: {reason}",
                            d.key, d.hash
                        ))),
                        _ => pending.push(Pending::moving(format!(
                            "{} behind; pulling the images of {}",
                            d.key, d.hash
                        ))),
                    }
                }
                Plan::Upgrade { needs_grant: false } => {
                    self.memory.members.insert(d.manifest.clone());
                    pending.push(Pending::moving(format!("{} behind", d.key)));
                    // A grant this node holds (kept by a restart) goes with it, to be finished.
                    let grant = self.grant_for(d, &d.hash);
                    self.start_upgrade(d, grant).await;
                }
                Plan::Upgrade { needs_grant: true } => {
                    self.memory.members.insert(d.manifest.clone());
                    match self.grant_for(d, &d.hash) {
                        Some(grant) => {
                            pending.push(Pending::moving(format!("{} behind", d.key)));
                            self.start_upgrade(d, Some(grant)).await;
                        }
                        None => pending.push(Pending::moving(format!(
                            "{} behind; waiting for the controller's grant",
                            d.key
                        ))),
                    }
                }
            }
        }
        pending
    }
}
