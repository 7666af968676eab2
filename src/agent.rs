//! The node agent (`run` and `sync --once`): watch the desired state, and for each object
//! whose manifest this node holds, plan → take a slot → upgrade → release.
//!
//! Data flows one way. Reflectors (kube-runtime watchers: resume from resourceVersion, relist
//! on 410, backoff with jitter) keep in-memory caches of both kinds, of this node's pods and of
//! the slot Leases; a reconcile pass reads only those caches and the manifest directory, so a
//! pass costs no API request unless it writes (a slot, a status, an Event).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{Config, DriftMode};
use crate::desired::applied::{Application, Applied, Verdict};
use crate::desired::authority::{Connectivity, probe_interval};
use crate::desired::drop::{DropDir, Dropped};
use crate::desired::http::{FetchSettings, Fetcher, HttpSource, Polled, Released};
use crate::desired::{DesiredObject, Kind, ObjectKey, Refusal, Strategy, cache, cluster};
use crate::kubeclient::reflect;
use crate::manifest::mirror::{is_member_pod, pod_hash, pod_ready};
use crate::manifest::store::{ManifestStore, StoreError};
use crate::ota::{self, Ota, api};
use crate::resources::{StaticPod, YurtStaticSet};
use crate::rollout::events::{Reason, Recorder};
use crate::rollout::journal::Journal;
use crate::rollout::plan::{MirrorState, Plan, plan};
use crate::rollout::slots::{SlotOwner, Slots};
use crate::rollout::upgrade::{FailedHashes, InFlight, MirrorPods, Outcome, Upgrader};
use crate::rules::{jittered, random_below};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("connecting to the API server with {path}: {reason}")]
    Client { path: String, reason: String },
    #[error("{0}")]
    NotConverged(String),
    /// Not converged, and waiting will not change it: only an operator or a new template can
    /// (an OTA upgrade waiting, a hash rolled back here, an edit kept in report mode).
    #[error("{0}")]
    Settled(String),
}

/// Mirror pods of this node, from the pod reflector.
struct ReflectedPods {
    pods: Store<Pod>,
    node: Store<Node>,
    changed: Arc<tokio::sync::watch::Sender<()>>,
}

impl MirrorPods for ReflectedPods {
    fn mirror(&self, namespace: &str, pod_name: &str) -> Option<MirrorState> {
        let pod = self.pods.get(&ObjectRef::new(pod_name).within(namespace))?;
        Some(MirrorState {
            hash: pod_hash(&pod).map(str::to_string),
            ready: pod_ready(&pod),
        })
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<()> {
        self.changed.subscribe()
    }

    fn node_ready(&self) -> bool {
        // Unknown (not listed yet, or not readable) counts as Ready: the deadline then runs as
        // without this check.
        self.node.state().first().is_none_or(|n| node_is_ready(n))
    }
}

fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|c| c.status == "True")
}

/// The caches the agent reads, and a signal when any of them changes.
struct Caches {
    static_pods: Store<StaticPod>,
    yurt_static_sets: Store<YurtStaticSet>,
    pods: Store<Pod>,
    leases: Store<Lease>,
    /// This node's Node object (a list of at most one).
    node: Store<Node>,
    changed: Arc<Notify>,
    /// Marked on every change of this node's pods, for upgrades waiting on their mirror pod.
    pods_changed: Arc<tokio::sync::watch::Sender<()>>,
    _watches: Vec<crate::kubeclient::WatchTask>,
}

/// Keep a reflector's task alive with the caches; hand back its store.
fn keep<K>(
    watches: &mut Vec<crate::kubeclient::WatchTask>,
    (store, task): (Store<K>, crate::kubeclient::WatchTask),
) -> Store<K>
where
    K: kube::Resource + Clone,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    watches.push(task);
    store
}

/// Start one reflector per watched resource; each runs until the agent is dropped.
fn start_reflectors(client: &kube::Client, config: &Config, node: &str) -> Caches {
    let changed = Arc::new(Notify::new());
    let kinds_api = |ns: Option<&str>| -> (Api<StaticPod>, Api<YurtStaticSet>) {
        match ns {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        }
    };
    // One namespace, or all: a list of several would need one watch per namespace per kind.
    let ns = (config.namespaces.len() == 1).then(|| config.namespaces[0].as_str());
    let (sp, yss) = kinds_api(ns);
    let wake = |changed: &Arc<Notify>| {
        let changed = changed.clone();
        move || changed.notify_one()
    };
    let pods_changed = Arc::new(tokio::sync::watch::Sender::new(()));
    let on_pod_change = {
        let (changed, pods_changed) = (changed.clone(), pods_changed.clone());
        move || {
            changed.notify_one();
            pods_changed.send_replace(());
        }
    };
    let mut watches = Vec::new();
    let static_pods = keep(
        &mut watches,
        reflect(sp, watcher::Config::default(), wake(&changed)),
    );
    let yurt_static_sets = keep(
        &mut watches,
        reflect(yss, watcher::Config::default(), wake(&changed)),
    );
    Caches {
        static_pods,
        yurt_static_sets,
        pods: keep(
            &mut watches,
            reflect(
                Api::<Pod>::all(client.clone()),
                watcher::Config::default().fields(&format!("spec.nodeName={node}")),
                on_pod_change,
            ),
        ),
        leases: keep(
            &mut watches,
            reflect(
                Api::<Lease>::namespaced(client.clone(), &config.agent_namespace),
                watcher::Config::default(),
                wake(&changed),
            ),
        ),
        node: keep(
            &mut watches,
            reflect(
                Api::<Node>::all(client.clone()),
                watcher::Config::default().fields(&format!("metadata.name={node}")),
                {
                    let (changed, pods_changed) = (changed.clone(), pods_changed.clone());
                    move || {
                        changed.notify_one();
                        pods_changed.send_replace(());
                    }
                },
            ),
        ),
        changed,
        pods_changed,
        _watches: watches,
    }
}

/// Wake the reconcile loop when the manifest directory changes, so a hand edit is seen at once
/// (the 1 s pass would find it anyway; without the watch it is only slower).
fn watch_manifest_dir(
    dir: &std::path::Path,
    changed: Arc<Notify>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| changes_manifests(&e)) {
            changed.notify_one();
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the manifest directory; relying on periodic passes"))
    .ok()?;
    match watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
        Ok(()) => Some(watcher),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the manifest directory; relying on periodic passes");
            None
        }
    }
}

/// Whether a manifest-directory event can change what a pass would see. Reads are not: the
/// pass itself and kubelet read the files, and waking on those would loop. Dot files (our own
/// temp files) and editors' swap and backup files are not manifests.
fn changes_manifests(event: &notify::Event) -> bool {
    use notify::EventKind;
    let relevant_kind = matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any
    ) || matches!(
        event.kind,
        EventKind::Modify(notify::event::ModifyKind::Data(_))
            | EventKind::Modify(notify::event::ModifyKind::Name(_))
            | EventKind::Modify(notify::event::ModifyKind::Any)
    );
    relevant_kind
        && (event.paths.is_empty()
            || event.paths.iter().any(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    !n.starts_with('.') && !n.ends_with('~') && !n.ends_with(".swp")
                })
            }))
}

/// This node's labels, for bundle targeting: from the Node watch, or, before the Node is
/// cached (an agent restarted while the API server is away), as last saved in the state
/// directory. Saved whenever they change, so a selector-targeted bundle still finds its node
/// offline.
struct NodeLabels {
    node: String,
    cache: Store<Node>,
    store: Arc<ManifestStore>,
    saved: Mutex<Option<BTreeMap<String, String>>>,
}

impl NodeLabels {
    fn new(node: &str, cache: Store<Node>, store: Arc<ManifestStore>) -> NodeLabels {
        let saved = cache::load_node_labels(&store).unwrap_or_else(|e| {
            tracing::warn!(node = %node, error = %e, "ignoring the saved node labels");
            None
        });
        NodeLabels {
            node: node.to_string(),
            cache,
            store,
            saved: Mutex::new(saved),
        }
    }

    fn current(&self) -> BTreeMap<String, String> {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let Some(node) = self.cache.state().into_iter().next() else {
            return saved.clone().unwrap_or_default();
        };
        let labels = node.metadata.labels.clone().unwrap_or_default();
        if saved.as_ref() != Some(&labels) {
            match cache::save_node_labels(&self.store, &labels) {
                Ok(()) => *saved = Some(labels.clone()),
                Err(e) => {
                    tracing::warn!(node = %self.node, error = %e, "saving the node labels")
                }
            }
        }
        labels
    }
}

/// Where an accepted bundle came from, for the record of what bundles set.
struct Origin {
    sequence: u64,
    /// Its URL, or the dropped file.
    source: String,
}

/// What applying bundles needs from the agent (cloned into the drop-directory and URL tasks).
#[derive(Clone)]
struct BundleApplier {
    node: String,
    upgrader: Arc<Upgrader>,
    running: Arc<InFlight>,
    store: Arc<ManifestStore>,
    changed: Arc<Notify>,
    applied: Arc<Applied>,
    /// kubelet's pod list URL and token (readiness without the API server).
    kubelet: (String, Option<String>),
}

/// Upgrade each member of a bundle's objects that is behind, without slots, reading readiness
/// from kubelet's pod list; record what succeeded (see [`Applied`]).
fn apply_bundle(applier: &BundleApplier, origin: &Origin, objects: Vec<DesiredObject>) {
    let BundleApplier {
        node,
        upgrader,
        running,
        store,
        changed,
        applied,
        kubelet: (url, token),
    } = applier;
    let failed = upgrader.failed.snapshot();
    for d in objects {
        let local = match store.read(&d.manifest) {
            Ok(Some(local)) => local,
            Ok(None) => {
                tracing::info!(object = %d.key, "bundle item: this node is not a member");
                continue;
            }
            Err(e) => {
                tracing::warn!(object = %d.key, error = %e, "bundle item: reading the manifest");
                continue;
            }
        };
        match plan(&d, Some(&local), None, &failed) {
            Plan::Upgrade { .. } | Plan::UpgradeAvailable | Plan::Drifted => {}
            other => {
                tracing::info!(object = %d.key, plan = ?other, "bundle item: nothing to do");
                continue;
            }
        }
        let Some(latest) = running.begin(&d.manifest, &d.hash) else {
            tracing::warn!(object = %d.key, "bundle item: an upgrade of it is running; skipped");
            continue;
        };
        let kubelet = match crate::ota::kubelet::KubeletPods::start(url, token.clone()) {
            Ok(k) => k,
            Err(e) => {
                running.end(&d.manifest);
                tracing::error!(object = %d.key, error = %e, "bundle item: cannot read readiness");
                continue;
            }
        };
        applied.begin(&d.manifest, origin.sequence);
        let offline_upgrader = upgrader.with_mirrors(kubelet);
        let (running, changed, applied) = (running.clone(), changed.clone(), applied.clone());
        let (node, sequence, source) = (node.clone(), origin.sequence, origin.source.clone());
        tokio::spawn(async move {
            let target = d.hash.clone();
            let superseded = || *latest.lock().unwrap_or_else(|e| e.into_inner()) != target;
            let succeeded = match offline_upgrader.upgrade(&d, None, superseded, || {}).await {
                Ok(outcome) => {
                    tracing::info!(object = %d.key, node = %node, sequence, ?outcome, "bundle item applied");
                    matches!(outcome, Outcome::Succeeded { .. }).then(|| Application {
                        object: d.key.clone(),
                        manifest: d.manifest.clone(),
                        sequence,
                        source,
                        hash: d.hash.clone(),
                        applied_at: k8s_openapi::jiff::Timestamp::now(),
                    })
                }
                Err(e) => {
                    tracing::error!(object = %d.key, node = %node, sequence, error = %e, "bundle item failed");
                    None
                }
            };
            applied.end(&d.manifest, succeeded);
            running.end(&d.manifest);
            changed.notify_one();
        });
    }
}

/// Log (and count) what one poll of a bundle URL found. `authoritative`: the cluster is, so a
/// new bundle is held back.
fn report_polled(node: &str, polled: Polled, authoritative: bool, failing: &mut HashSet<String>) {
    let result = match polled {
        Polled::Unchanged { url } => {
            failing.remove(&url);
            "unchanged"
        }
        Polled::Held {
            url,
            sequence,
            items,
        } => {
            failing.remove(&url);
            if authoritative {
                tracing::info!(node = %node, %url, sequence, items, "fetched bundle verified; held back: the cluster is authoritative while the API server is reachable");
            } else {
                tracing::info!(node = %node, %url, sequence, items, "fetched bundle verified");
            }
            "changed"
        }
        Polled::Refused {
            url,
            reason,
            message,
        } => {
            failing.remove(&url);
            crate::metrics::inc(
                "staticpod_puller_bundle_refusals_total",
                &[("reason", reason), ("source", "http")],
            );
            tracing::warn!(node = %node, %url, reason, %message, "fetched bundle refused; nothing from it is used");
            "changed"
        }
        Polled::Failed { url, error } => {
            if failing.insert(url.clone()) {
                tracing::warn!(node = %node, %url, error = %error, "fetching a bundle URL failed (retried with backoff; polled again later)");
            } else {
                tracing::debug!(node = %node, %url, error = %error, "fetching a bundle URL failed again");
            }
            "error"
        }
    };
    crate::metrics::inc(
        "staticpod_puller_bundle_fetches_total",
        &[("result", result)],
    );
}

/// Something not converged after a pass.
struct Pending {
    what: String,
    /// Waiting will not change it (only the operator or a new template can).
    settled: bool,
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

/// The random delay before asking for a free slot grows by this much per waiting node...
const ACQUIRE_SPREAD_PER_NODE: Duration = Duration::from_millis(2);
/// ...up to this.
const ACQUIRE_SPREAD_MAX: Duration = Duration::from_secs(2);

pub struct Agent {
    node: String,
    config: Config,
    client: kube::Client,
    store: Arc<ManifestStore>,
    caches: Caches,
    slots: Arc<Slots>,
    upgrader: Arc<Upgrader>,
    events: Recorder,
    running: Arc<InFlight>,
    refused_reported: HashSet<(String, String)>,
    /// Manifests this node held at the last pass (to notice one being removed).
    members: HashSet<String>,
    /// Drift already reported (manifest, content digest), in report mode.
    drift_reported: HashSet<(String, String)>,
    /// Keeps the manifest-directory watch alive.
    _dir_watch: Option<notify::RecommendedWatcher>,
    last_cached: BTreeMap<ObjectKey, DesiredObject>,
    member_counts: HashMap<ObjectKey, (Instant, usize)>,
    /// OTA: announcements and upgrades asked for through the local API.
    ota: Arc<Ota>,
    /// Set with trust.requireSignedTemplates: the keys object signatures must verify against.
    template_policy: Option<crate::bundle::TrustPolicy>,
    /// Whether the API server answers, and since when not (who is authoritative).
    connectivity: Arc<Connectivity>,
    /// What bundles set on this node.
    applied: Arc<Applied>,
    /// This node's labels, for bundle targeting (saved for an agent restarted offline).
    node_labels: Arc<NodeLabels>,
    /// Bundle-set manifests already reported as kept while offline: (manifest, sequence).
    kept_reported: HashSet<(String, u64)>,
}

impl Agent {
    pub async fn start(config: Config) -> Result<Agent, AgentError> {
        let node = config.resolved_node_name().map_err(AgentError::Config)?;
        let store = Arc::new(ManifestStore::open(
            &config.manifest_dir,
            &config.state_dir,
        )?);
        let client = crate::kubeclient::from_kubeconfig(&config.kubeconfig)
            .await
            .map_err(|reason| AgentError::Client {
                path: config.kubeconfig.display().to_string(),
                reason,
            })?;
        let caches = start_reflectors(&client, &config, &node);
        let dir_watch = watch_manifest_dir(&config.manifest_dir, caches.changed.clone());
        let slots = Arc::new(Slots::new(
            client.clone(),
            caches.leases.clone(),
            &config.agent_namespace,
            &node,
            config.rollout.lease_duration.0,
        ));
        let events = Recorder::new(client.clone(), &node);
        let upgrader = Arc::new(Upgrader {
            node: node.clone(),
            store: store.clone(),
            mirrors: Arc::new(ReflectedPods {
                pods: caches.pods.clone(),
                node: caches.node.clone(),
                changed: caches.pods_changed.clone(),
            }),
            events: events.clone(),
            failed: Arc::new(FailedHashes::load(&store)),
            progress_deadline: config.rollout.progress_deadline.0,
            lease_duration: config.rollout.lease_duration.0,
        });
        let last_cached = cache::load(&store).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring the desired-state cache");
            BTreeMap::new()
        });
        tracing::info!(node = %node, manifests = %config.manifest_dir.display(), cached_objects = last_cached.len(), "agent started");
        let running = Arc::new(InFlight::default());
        let kubelet_token = match &config.ota.kubelet_token_file {
            Some(path) => {
                Some(api::read_token(path).map_err(|e| AgentError::Config(e.to_string()))?)
            }
            None => None,
        };
        let offline = ota::Offline {
            allow: config.ota.allow_offline,
            kubelet_pods_url: config.ota.kubelet_pods_url.clone(),
            kubelet_token,
        };
        let applied = Arc::new(Applied::load(store.clone()));
        let node_labels = Arc::new(NodeLabels::new(&node, caches.node.clone(), store.clone()));
        // Reachability matters only to bundles: without a bundle source nothing probes.
        let connectivity = if config.bundle.urls.is_empty() && config.bundle.drop_dir.is_empty() {
            Connectivity::fixed(true)
        } else {
            let changed = caches.changed.clone();
            Connectivity::start(
                client.clone(),
                probe_interval(config.bundle.offline_after.0),
                &node,
                move |_| changed.notify_one(),
            )
        };
        let ota = Arc::new(Ota::new(
            &node,
            client.clone(),
            offline,
            caches.pods.clone(),
            caches.leases.clone(),
            store.clone(),
            upgrader.clone(),
            running.clone(),
            caches.changed.clone(),
            applied.clone(),
        ));
        ota.seed_desired(last_cached.clone());
        let template_policy = if config.trust.require_signed_templates {
            Some(
                crate::bundle::TrustPolicy::load(
                    &config.trust.trusted_keys,
                    config.trust.threshold,
                )
                .map_err(|e| AgentError::Config(format!("trust.trustedKeys: {e}")))?,
            )
        } else {
            None
        };
        Ok(Agent {
            node,
            config,
            client,
            store,
            caches,
            slots,
            upgrader,
            events,
            running,
            refused_reported: HashSet::new(),
            members: HashSet::new(),
            drift_reported: HashSet::new(),
            _dir_watch: dir_watch,
            last_cached,
            member_counts: HashMap::new(),
            ota,
            template_policy,
            connectivity,
            applied,
            node_labels,
            kept_reported: HashSet::new(),
        })
    }

    fn bundle_applier(&self) -> BundleApplier {
        BundleApplier {
            node: self.node.clone(),
            upgrader: self.upgrader.clone(),
            running: self.running.clone(),
            store: self.store.clone(),
            changed: self.caches.changed.clone(),
            applied: self.applied.clone(),
            kubelet: (
                self.config.ota.kubelet_pods_url.clone(),
                self.ota.offline.kubelet_token.clone(),
            ),
        }
    }

    /// Watch `bundle.dropDir` (when set): verify each complete file, move it to processed/ or
    /// rejected/, and apply accepted bundles' items to this node's members at once, with
    /// readiness from kubelet's pod list (they must work with the API server away).
    pub fn watch_drop_dir(&self) -> Result<(), AgentError> {
        let settings = &self.config.bundle;
        if settings.drop_dir.is_empty() {
            return Ok(());
        }
        let trust = &self.config.trust;
        let policy = crate::bundle::TrustPolicy::load(&trust.trusted_keys, trust.threshold)
            .map_err(|e| AgentError::Config(format!("trust.trustedKeys: {e}")))?;
        let mut drop_dir = DropDir::open(
            std::path::Path::new(&settings.drop_dir),
            policy,
            &self.config.state_dir,
        )
        .map_err(|e| AgentError::Config(e.to_string()))?;
        let (node, node_labels) = (self.node.clone(), self.node_labels.clone());
        let applier = self.bundle_applier();
        tracing::info!(node = %node, dir = %settings.drop_dir, "watching the bundle drop directory");
        tokio::spawn(async move {
            loop {
                let labels = node_labels.current();
                for result in drop_dir.scan(&node, &labels, Instant::now()) {
                    match result {
                        Err(e) => tracing::error!(node = %node, error = %e, "drop directory"),
                        Ok(Dropped::Rejected {
                            file,
                            reason,
                            message,
                        }) => {
                            crate::metrics::inc(
                                "staticpod_puller_bundle_refusals_total",
                                &[("reason", reason), ("source", "drop")],
                            );
                            tracing::warn!(node = %node, file = %file.display(), reason, %message, "bundle rejected")
                        }
                        Ok(Dropped::Accepted {
                            file,
                            sequence,
                            objects,
                            refused,
                        }) => {
                            tracing::info!(node = %node, file = %file.display(), sequence, objects = objects.len(), "bundle accepted");
                            for r in refused {
                                tracing::warn!(node = %node, sequence, item = %r, "bundle item refused; nothing written for it");
                            }
                            let origin = Origin {
                                sequence,
                                source: file.display().to_string(),
                            };
                            apply_bundle(&applier, &origin, objects);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Ok(())
    }

    /// Poll `bundle.urls` (when set): verify what they serve and hold it while the cluster is
    /// authoritative; once the API server has been unreachable for `bundle.offlineAfter`, admit
    /// the held bundles for good and apply their items as dropped ones are (see
    /// [`crate::desired::http`] and [`crate::desired::authority`]).
    pub fn watch_bundle_urls(&self) -> Result<(), AgentError> {
        let settings = self.config.bundle.clone();
        if settings.urls.is_empty() {
            return Ok(());
        }
        let trust = &self.config.trust;
        let policy = crate::bundle::TrustPolicy::load(&trust.trusted_keys, trust.threshold)
            .map_err(|e| AgentError::Config(format!("trust.trustedKeys: {e}")))?;
        let cap = policy.limits().envelope.max_envelope_bytes;
        let fetcher = Fetcher::new(FetchSettings::new(settings.ca_file.clone(), cap))
            .map_err(|e| AgentError::Config(e.to_string()))?;
        let mut source = HttpSource::new(&settings.urls, fetcher, policy, &self.config.state_dir);
        let (node, node_labels) = (self.node.clone(), self.node_labels.clone());
        let (connectivity, ota, applier) = (
            self.connectivity.clone(),
            self.ota.clone(),
            self.bundle_applier(),
        );
        let (poll_interval, offline_after) = (settings.poll_interval.0, settings.offline_after.0);
        tracing::info!(node = %node, urls = ?settings.urls, poll_interval = %settings.poll_interval, offline_after = %settings.offline_after, "polling bundle URLs");
        tokio::spawn(async move {
            let mut next_poll = Instant::now();
            // URLs whose last fetch failed (said once until one succeeds).
            let mut failing: HashSet<String> = HashSet::new();
            loop {
                let labels = node_labels.current();
                if Instant::now() >= next_poll {
                    let authoritative = !connectivity
                        .reach()
                        .fetched_bundles_apply(Instant::now(), offline_after);
                    for polled in source
                        .poll(&node, &labels, k8s_openapi::jiff::Timestamp::now())
                        .await
                    {
                        report_polled(&node, polled, authoritative, &mut failing);
                    }
                    ota.set_held_bundles(source.held());
                    next_poll = Instant::now() + jittered(poll_interval);
                }
                if !source.held().is_empty()
                    && connectivity
                        .reach()
                        .fetched_bundles_apply(Instant::now(), offline_after)
                {
                    for released in
                        source.release(&node, &labels, k8s_openapi::jiff::Timestamp::now())
                    {
                        match released {
                            Released::Accepted {
                                url,
                                sequence,
                                objects,
                                refused,
                            } => {
                                tracing::info!(node = %node, %url, sequence, objects = objects.len(), "API server unreachable for bundle.offlineAfter: applying the fetched bundle");
                                for r in refused {
                                    tracing::warn!(node = %node, sequence, item = %r, "bundle item refused; nothing written for it");
                                }
                                let origin = Origin {
                                    sequence,
                                    source: url,
                                };
                                apply_bundle(&applier, &origin, objects);
                            }
                            Released::Refused {
                                url,
                                sequence,
                                reason,
                                message,
                            } => {
                                crate::metrics::inc(
                                    "staticpod_puller_bundle_refusals_total",
                                    &[("reason", reason), ("source", "http")],
                                );
                                tracing::warn!(node = %node, %url, sequence, reason, %message, "fetched bundle refused; nothing written");
                            }
                        }
                    }
                    ota.set_held_bundles(source.held());
                }
                let until_poll = next_poll.saturating_duration_since(Instant::now());
                tokio::time::sleep(until_poll.min(Duration::from_secs(1))).await;
            }
        });
        Ok(())
    }

    /// Serve Prometheus metrics on `metrics.listen`, and write the bound address to
    /// `stateDir/metrics.addr`.
    pub async fn serve_metrics(&self) -> Result<(), AgentError> {
        if self.config.metrics.listen.is_empty() {
            return Ok(());
        }
        let addr = self.config.metrics.listen.parse().map_err(|_| {
            AgentError::Config(format!("metrics.listen: {:?}", self.config.metrics.listen))
        })?;
        let bound = api::serve_metrics(addr, self.ota.clone())
            .await
            .map_err(|e| AgentError::Config(e.to_string()))?;
        self.store
            .write_state(api::METRICS_ADDRESS_FILE, bound.as_bytes())
            .map_err(AgentError::Store)?;
        tracing::info!(node = %self.node, address = %bound, "metrics listening");
        Ok(())
    }

    /// Start the node-local API (`localApi.listen`), and write the address it bound to
    /// `stateDir/local-api.addr`.
    pub async fn serve_local_api(&self) -> Result<(), AgentError> {
        let listen = self
            .config
            .local_api
            .address()
            .map_err(|e| AgentError::Config(format!("localApi.listen: {e}")))?;
        let Some(listen) = listen else {
            return Ok(());
        };
        let token = match &self.config.local_api.token_file {
            Some(path) => {
                Some(api::read_token(path).map_err(|e| AgentError::Config(e.to_string()))?)
            }
            None => None,
        };
        let bound = api::serve(&listen, token, self.ota.clone())
            .await
            .map_err(|e| AgentError::Config(e.to_string()))?;
        self.store
            .write_state(api::ADDRESS_FILE, bound.as_bytes())
            .map_err(AgentError::Store)?;
        tracing::info!(node = %self.node, address = %bound, "local API listening");
        Ok(())
    }

    /// Wait until the caches hold a first full list (bounded: offline, we keep going on the
    /// cached desired state).
    async fn caches_ready(&self, timeout: Duration) -> bool {
        let all = async {
            let _ = self.caches.static_pods.wait_until_ready().await;
            let _ = self.caches.yurt_static_sets.wait_until_ready().await;
            let _ = self.caches.pods.wait_until_ready().await;
            let _ = self.caches.leases.wait_until_ready().await;
        };
        tokio::time::timeout(timeout, all).await.is_ok()
    }

    /// The daemon: resume journaled upgrades, then reconcile on every change (and every
    /// second, for slot expiry and deadlines).
    pub async fn run(mut self) -> Result<(), AgentError> {
        while !self.caches_ready(Duration::from_secs(30)).await {
            tracing::warn!(node = %self.node, "API server not reachable yet; keeping the node as it is");
        }
        self.resume_journal().await;
        loop {
            self.reconcile().await;
            tokio::select! {
                _ = self.caches.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// `sync --once`: reconcile until converged or `timeout`; Ok when converged.
    pub async fn sync_once(mut self, timeout: Duration) -> Result<String, AgentError> {
        let deadline = Instant::now() + timeout;
        if !self.caches_ready(timeout).await {
            return Err(AgentError::NotConverged(
                "the API server did not answer in time".into(),
            ));
        }
        self.resume_journal().await;
        loop {
            let pending = self.reconcile().await;
            let upgrading = !self.running.is_empty();
            if pending.is_empty() && !upgrading {
                return Ok(format!("node {} converged", self.node));
            }
            // A held-back hash, a kept hand edit or an OTA upgrade waiting for its operator
            // will not change by waiting: say so now rather than at the timeout.
            let settled = !upgrading && pending.iter().all(|p| p.settled);
            if settled || Instant::now() > deadline {
                let reasons: Vec<&str> = pending.iter().map(|p| p.what.as_str()).collect();
                let message = format!("not converged: {}", reasons.join("; "));
                return Err(if settled {
                    AgentError::Settled(message)
                } else {
                    AgentError::NotConverged(message)
                });
            }
            tokio::select! {
                _ = self.caches.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// The desired objects and refusals, from the caches.
    fn desired(&self) -> (BTreeMap<ObjectKey, DesiredObject>, Vec<Refusal>) {
        let mut objects = BTreeMap::new();
        let mut refusals = Vec::new();
        let static_pods = self.caches.static_pods.state();
        let yurt_static_sets = self.caches.yurt_static_sets.state();
        // With trust.requireSignedTemplates, an object acts only with a valid signature over
        // its kind, namespace, name and template.
        let signed = |d: DesiredObject, meta: &kube::api::ObjectMeta, template| {
            let Some(policy) = &self.template_policy else {
                return Ok(d);
            };
            let annotation = meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::bundle::template::ANNOTATION));
            crate::bundle::template::verify(
                policy,
                annotation.map(String::as_str),
                d.key.kind.name(),
                &d.key.namespace,
                &d.key.name,
                template,
            )
            .map(|()| d.clone())
            .map_err(|reason| Refusal {
                key: d.key.clone(),
                uid: d.uid.clone(),
                reason: format!("{reason} (trust.requireSignedTemplates)"),
            })
        };
        let candidates = static_pods
            .iter()
            .map(|o| {
                cluster::from_static_pod(o).and_then(|d| signed(d, &o.metadata, &o.spec.template))
            })
            .chain(yurt_static_sets.iter().map(|o| {
                cluster::from_yurt_static_set(o)
                    .and_then(|d| signed(d, &o.metadata, &o.spec.template))
            }))
            .filter(|r| match r {
                Ok(d) => {
                    self.config.namespaces.is_empty()
                        || self.config.namespaces.contains(&d.key.namespace)
                }
                Err(r) => {
                    self.config.namespaces.is_empty()
                        || self.config.namespaces.contains(&r.key.namespace)
                }
            });
        for c in candidates {
            match c {
                Ok(d) => {
                    objects.insert(d.key.clone(), d);
                }
                Err(r) => refusals.push(r),
            }
        }
        // Two objects claiming one manifest file: neither may write it.
        let mut claims: HashMap<&str, Vec<&ObjectKey>> = HashMap::new();
        for d in objects.values() {
            claims.entry(&d.manifest).or_default().push(&d.key);
        }
        let contested: Vec<(ObjectKey, String)> = claims
            .values()
            .filter(|keys| keys.len() > 1)
            .flat_map(|keys| {
                let all: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
                keys.iter().map(move |k| ((*k).clone(), all.join(", ")))
            })
            .collect();
        for (key, all) in contested {
            if let Some(d) = objects.remove(&key) {
                refusals.push(Refusal {
                    key,
                    uid: d.uid,
                    reason: format!(
                        "staticPodManifest {:?} is claimed by several objects ({all})",
                        d.manifest
                    ),
                });
            }
        }
        (objects, refusals)
    }

    /// One pass. Returns what is not converged yet (for `sync --once`).
    async fn reconcile(&mut self) -> Vec<Pending> {
        let (desired, refusals) = self.desired();
        self.ota.set_desired(desired.clone(), refusals.clone());
        for r in refusals {
            if self
                .refused_reported
                .insert((r.uid.clone(), r.reason.clone()))
            {
                tracing::warn!(object = %r.key, node = %self.node, reason = %r.reason, "object refused; nothing written");
                self.events
                    .emit(&r.key, &r.uid, Reason::Refused, &r.reason)
                    .await;
            }
        }
        let cacheable: BTreeMap<ObjectKey, DesiredObject> = desired
            .iter()
            .map(|(k, d)| (k.clone(), d.cacheable()))
            .collect();
        if cacheable != self.last_cached {
            if let Err(e) = cache::save(&self.store, &cacheable) {
                tracing::warn!(error = %e, "saving the desired-state cache");
            }
            self.last_cached = cacheable;
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
                    if self.members.remove(&d.manifest) {
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
                    self.members.insert(d.manifest.clone());
                }
                Plan::Drifted => {
                    self.members.insert(d.manifest.clone());
                    self.drifted(d, local.as_deref().unwrap_or_default()).await;
                    if self.config.drift.mode == DriftMode::Report {
                        pending.push(Pending::settled(format!(
                            "{}: manifest edited on the node (drift.mode: report)",
                            d.key
                        )));
                    }
                }
                Plan::HeldBack { hash } => pending.push(Pending::settled(format!(
                    "{}: {hash} was rolled back here and is not retried until the template changes",
                    d.key
                ))),
                Plan::UpgradeAvailable => pending.push(Pending::settled(format!(
                    "{}: OTA upgrade available, waiting for the node's operator",
                    d.key
                ))),
                Plan::Upgrade { .. } if !self.upgrader.mirrors.node_ready() => {
                    // Nothing could be seen to succeed; the upgrade starts when the node is back.
                    self.members.insert(d.manifest.clone());
                    pending.push(Pending::moving(format!(
                        "{} behind; waiting for the node to be Ready",
                        d.key
                    )));
                }
                Plan::Upgrade { needs_slot } => {
                    self.members.insert(d.manifest.clone());
                    pending.push(Pending::moving(format!("{} behind", d.key)));
                    self.start_upgrade(d, needs_slot).await;
                }
            }
        }
        pending
    }

    /// What bundles set decides first (see [`crate::desired::applied`]): a bundle upgrade
    /// running is left to end, a bundle's file is kept while the API server is unreachable,
    /// and once the cluster is authoritative again a bundle's file it differs from is reported
    /// with an Event, then reconciled as usual. `Some` skips the object in this pass.
    async fn after_bundle(
        &mut self,
        d: &DesiredObject,
        local: Option<&[u8]>,
        cluster_authoritative: bool,
    ) -> Option<Pending> {
        let local_hash = local.and_then(crate::manifest::hash_of_manifest);
        match self.applied.judge(
            &d.manifest,
            local_hash.as_deref(),
            &d.hash,
            cluster_authoritative,
        ) {
            Verdict::NotFromBundle => None,
            Verdict::Applying { sequence } => Some(Pending::moving(format!(
                "{} upgrading from bundle {sequence}",
                d.key
            ))),
            Verdict::Stale | Verdict::Agrees => {
                self.applied.forget(&d.manifest);
                None
            }
            Verdict::KeptOffline(a) => {
                if self.kept_reported.insert((d.manifest.clone(), a.sequence)) {
                    tracing::info!(object = %d.key, node = %self.node, sequence = a.sequence, local_hash = %a.hash, cluster_hash = %d.hash, "API server unreachable: keeping the manifest set from the bundle");
                }
                // Not settled: it changes when the API server answers again.
                Some(Pending::moving(format!(
                    "{}: set from bundle {} ({}); the API server is unreachable",
                    d.key, a.sequence, a.hash
                )))
            }
            Verdict::Superseded(a) => {
                // Right after reconnecting the watches may still hold the template from before
                // the outage (they relist with backoff). Revert only to what the API server
                // says now, never to a stale copy: the bundle may carry exactly the template
                // the operator has since applied to the cluster.
                match self.fresh_hash(d).await {
                    Ok(fresh) if fresh == d.hash => {}
                    Ok(fresh) => {
                        return Some(Pending::moving(format!(
                            "{}: set from bundle {} ({}); waiting for the watch to catch up with the cluster's template {fresh}",
                            d.key, a.sequence, a.hash
                        )));
                    }
                    Err(e) => {
                        tracing::debug!(object = %d.key, node = %self.node, error = %e, "reading the object to confirm its template");
                        return Some(Pending::moving(format!(
                            "{}: set from bundle {} ({}); confirming the cluster's template",
                            d.key, a.sequence, a.hash
                        )));
                    }
                }
                let message = format!(
                    "{}.yaml was set from bundle sequence {} ({}) to {}; the API server is reachable again and the cluster's template {} replaces it",
                    d.manifest, a.sequence, a.source, a.hash, d.hash
                );
                tracing::warn!(object = %d.key, node = %self.node, sequence = a.sequence, local_hash = %a.hash, cluster_hash = %d.hash, "reconnected: the cluster's template supersedes the bundle's");
                self.events
                    .emit(&d.key, &d.uid, Reason::BundleSuperseded, &message)
                    .await;
                self.applied.forget(&d.manifest);
                self.kept_reported.remove(&(d.manifest.clone(), a.sequence));
                None
            }
        }
    }

    /// The template hash of `d` as the API server holds it now (not the watch cache).
    async fn fresh_hash(&self, d: &DesiredObject) -> Result<String, String> {
        let (ns, name) = (&d.key.namespace, &d.key.name);
        let fresh = match d.key.kind {
            Kind::StaticPod => Api::<StaticPod>::namespaced(self.client.clone(), ns)
                .get(name)
                .await
                .map_err(|e| e.to_string())
                .and_then(|o| cluster::from_static_pod(&o).map_err(|r| r.reason)),
            Kind::YurtStaticSet => Api::<YurtStaticSet>::namespaced(self.client.clone(), ns)
                .get(name)
                .await
                .map_err(|e| e.to_string())
                .and_then(|o| cluster::from_yurt_static_set(&o).map_err(|r| r.reason)),
        };
        fresh.map(|o| o.hash)
    }

    /// OTA: keep `PodNeedUpgrade` on this node's mirror pod saying whether an upgrade is
    /// available (re-applied when kubelet recreates the pod without it).
    async fn announce(
        &self,
        d: &DesiredObject,
        next: &Plan,
        local: Option<&[u8]>,
        mirror_name: &str,
    ) {
        let local_hash = local.and_then(crate::manifest::hash_of_manifest);
        let Some(want) = ota::announcement(d, next, local_hash.as_deref()) else {
            return;
        };
        let Some(pod) = self
            .caches
            .pods
            .get(&ObjectRef::new(mirror_name).within(&d.key.namespace))
        else {
            return;
        };
        match ota::announce(&self.client, &pod, &want).await {
            Ok(true) => {
                tracing::info!(object = %d.key, node = %self.node, need = want.need, message = %want.message, "PodNeedUpgrade set")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(object = %d.key, node = %self.node, error = %e, "setting PodNeedUpgrade")
            }
        }
    }

    /// The member count an object's budget is resolved against: its status when current,
    /// otherwise counted from mirror pods (one list, cached briefly).
    async fn members(&mut self, d: &DesiredObject) -> usize {
        if let Some(n) = d.members {
            return n.max(1) as usize;
        }
        if let Some((at, n)) = self.member_counts.get(&d.key)
            && at.elapsed() < Duration::from_secs(10)
        {
            return *n;
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &d.key.namespace);
        let n = match api.list(&Default::default()).await {
            Ok(list) => list
                .items
                .iter()
                .filter(|p| is_member_pod(&d.key.name, p))
                .count()
                .max(1),
            Err(e) => {
                tracing::warn!(object = %d.key, error = %e, "counting members; assuming 1");
                1
            }
        };
        self.member_counts
            .insert(d.key.clone(), (Instant::now(), n));
        n
    }

    /// Start an upgrade in its own task: take a slot if one is needed (and one looks free),
    /// then upgrade. The slot is released by the upgrade when it ends.
    async fn start_upgrade(&mut self, d: &DesiredObject, needs_slot: bool) {
        let owner = SlotOwner {
            kind_short: d.key.kind.short(),
            namespace: d.key.namespace.clone(),
            name: d.key.name.clone(),
        };
        let budget = if needs_slot {
            let members = self.members(d).await;
            let budget = d.max_unavailable.resolve(members);
            let free = self.slots.free(&owner, budget).len();
            if free == 0 {
                crate::metrics::inc(
                    "staticpod_puller_slot_busy_total",
                    &[("object", &d.key.to_string())],
                );
                tracing::debug!(object = %d.key, budget, "all upgrade slots busy");
                return;
            }
            // Before the status catches up with a new template, every member may be waiting.
            let waiting = d.pending.map_or(members, |n| n.max(1) as usize);
            Some((budget, waiting.div_ceil(free)))
        } else {
            None
        };
        let Some(latest) = self.running.begin(&d.manifest, &d.hash) else {
            return;
        };
        let (upgrader, slots, running, changed) = (
            self.upgrader.clone(),
            self.slots.clone(),
            self.running.clone(),
            self.caches.changed.clone(),
        );
        let d = d.clone();
        tokio::spawn(async move {
            let done = |notify: bool| {
                running.end(&d.manifest);
                if notify {
                    changed.notify_one();
                }
            };
            let slot = match budget {
                None => None,
                Some((budget, waiting)) => {
                    // Every waiting node sees a released slot at the same moment. A random
                    // delay spread over the number of waiting nodes per free slot lets about
                    // one of them ask first while the others see the slot taken in their
                    // cache, so a handover costs a few requests, not one per waiting node.
                    let spread = (ACQUIRE_SPREAD_PER_NODE * waiting as u32).min(ACQUIRE_SPREAD_MAX);
                    let delay = random_below(spread.as_micros().max(1) as usize);
                    tokio::time::sleep(Duration::from_micros(delay as u64)).await;
                    match slots.acquire(&owner, budget).await {
                        Ok(Some(slot)) => Some(slot),
                        // Taken by another node: the Lease watch wakes us for the next one.
                        Ok(None) => return done(false),
                        Err(e) => {
                            tracing::warn!(object = %d.key, error = %e, "taking an upgrade slot");
                            return done(false);
                        }
                    }
                }
            };
            let held = slot.as_ref().map(|s| (&*slots, s));
            let target = d.hash.clone();
            let superseded = || *latest.lock().unwrap_or_else(|e| e.into_inner()) != target;
            if let Err(e) = upgrader.upgrade(&d, held, superseded, || {}).await {
                tracing::error!(object = %d.key, error = %e, "upgrade failed");
            }
            done(true);
        });
    }

    /// A managed manifest edited on the node: put the desired content back, or report it.
    async fn drifted(&mut self, d: &DesiredObject, local: &[u8]) {
        match self.config.drift.mode {
            DriftMode::Restore => match self.store.write(&d.manifest, &d.rendered) {
                Ok(_) => {
                    tracing::warn!(object = %d.key, node = %self.node, "manifest edited on the node; restored");
                    let message = format!(
                        "{}.yaml was edited on the node; restored {}",
                        d.manifest, d.hash
                    );
                    self.events
                        .emit(&d.key, &d.uid, Reason::DriftRestored, &message)
                        .await;
                }
                Err(e) => {
                    tracing::error!(object = %d.key, error = %e, "restoring an edited manifest")
                }
            },
            DriftMode::Report => {
                let digest = ring::digest::digest(&ring::digest::SHA256, local);
                let digest: String = digest.as_ref()[..8]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                if self.drift_reported.insert((d.manifest.clone(), digest)) {
                    tracing::warn!(object = %d.key, node = %self.node, "manifest edited on the node (drift.mode: report)");
                    let message = format!(
                        "{}.yaml was edited on the node; left as is (drift.mode: report)",
                        d.manifest
                    );
                    self.events
                        .emit(&d.key, &d.uid, Reason::DriftDetected, &message)
                        .await;
                }
            }
        }
    }

    /// Finish or roll back upgrades a previous run left in the journal.
    async fn resume_journal(&mut self) {
        let entries = match Journal::new(&self.store).pending() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "reading the upgrade journal");
                return;
            }
        };
        let (desired, _) = self.desired();
        for entry in entries {
            let d = desired
                .values()
                .find(|d| d.manifest == entry.manifest)
                .cloned();
            let owner = d.as_ref().map(|d| SlotOwner {
                kind_short: d.key.kind.short(),
                namespace: d.key.namespace.clone(),
                name: d.key.name.clone(),
            });
            // Re-take the slot we held (ours by holder identity) so it is renewed, then released.
            let slot = match (&owner, &entry.slot, &d) {
                (Some(o), Some(_), Some(d)) => {
                    let budget = d.max_unavailable.resolve(self.members(d).await);
                    self.slots.reclaim(o, budget).await.ok().flatten()
                }
                _ => None,
            };
            let held = slot.as_ref().map(|s| (&*self.slots, s));
            match self.upgrader.resume(d.as_ref(), &entry, held).await {
                Ok(outcome) => {
                    tracing::info!(manifest = %entry.manifest, ?outcome, "journaled upgrade finished")
                }
                Err(e) => {
                    tracing::error!(manifest = %entry.manifest, error = %e, "finishing a journaled upgrade")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::changes_manifests;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RenameMode};
    use notify::{Event, EventKind};

    fn event(kind: EventKind, name: &str) -> Event {
        Event::new(kind).add_path(format!("/etc/kubernetes/manifests/{name}").into())
    }

    #[test]
    fn reads_of_manifests_do_not_wake_the_agent() {
        // Reading a file (our own pass, kubelet) must not trigger another pass.
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Read)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Read),
        ] {
            assert!(!changes_manifests(&event(kind, "nginx.yaml")), "{kind:?}");
        }
    }

    #[test]
    fn content_changes_wake_the_agent_except_for_temp_and_swap_files() {
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Content));
        assert!(changes_manifests(&event(write, "nginx.yaml")));
        assert!(changes_manifests(&event(
            EventKind::Create(CreateKind::File),
            "nginx.yaml"
        )));
        assert!(changes_manifests(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            "nginx.yaml"
        )));
        assert!(changes_manifests(&event(
            EventKind::Remove(notify::event::RemoveKind::File),
            "nginx.yaml"
        )));
        for name in [".nginx.yaml.tmp", "nginx.yaml~", ".nginx.yaml.swp"] {
            assert!(!changes_manifests(&event(write, name)), "{name}");
        }
    }
}

#[cfg(test)]
mod node_label_tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Node;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    use super::NodeLabels;
    use crate::manifest::store::ManifestStore;

    fn node(labels: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("edge-1".into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n
    }

    #[test]
    fn labels_seen_online_are_used_by_an_agent_restarted_offline() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            Arc::new(
                ManifestStore::open(&dir.path().join("manifests"), &dir.path().join("state"))
                    .unwrap(),
            )
        };

        // Online: the Node is cached; its labels are used and saved.
        let store = open();
        let (reader, mut writer) = reflector::store::<Node>();
        writer.apply_watcher_event(&Event::Apply(node(&[("zone", "north")])));
        let online = NodeLabels::new("edge-1", reader, store.clone());
        let north = BTreeMap::from([("zone".to_string(), "north".to_string())]);
        assert_eq!(online.current(), north);
        // A relabelled node: the new labels replace the saved ones.
        writer.apply_watcher_event(&Event::Apply(node(&[("zone", "south")])));
        let south = BTreeMap::from([("zone".to_string(), "south".to_string())]);
        assert_eq!(online.current(), south);
        drop((online, store));

        // Restarted with the API server away: no Node cached, the saved labels answer.
        let (empty, _writer) = reflector::store::<Node>();
        let offline = NodeLabels::new("edge-1", empty, open());
        assert_eq!(offline.current(), south);
    }
}
