//! What the agent reads instead of asking the API server: reflectors (kube-runtime watchers:
//! resume from resourceVersion, relist on 410, backoff with jitter) over both kinds, this
//! node's pods, Node and grants, plus a watch of the manifest directory. Any
//! change wakes the reconcile pass.

use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tokio::sync::Notify;

use crate::config::Config;
use crate::kubeclient::{WatchTask, reflect};
use crate::manifest::mirror::{pod_hash, pod_ready};
use crate::resources::{StaticPod, YurtStaticSet};
use crate::rollout::grant::Grants;
use crate::rollout::plan::MirrorState;
use crate::rollout::upgrade::MirrorPods;

/// Mirror pods of this node, from the pod reflector.
pub(super) struct ReflectedPods {
    pub(super) pods: Store<Pod>,
    pub(super) node: Store<Node>,
    pub(super) changed: Arc<tokio::sync::watch::Sender<()>>,
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

/// The caches the agent reads, and a signal when any of them changes. Cheap to clone: each
/// store is shared with its reflector.
#[derive(Clone)]
pub(super) struct Caches {
    pub(super) static_pods: Store<StaticPod>,
    pub(super) yurt_static_sets: Store<YurtStaticSet>,
    pub(super) pods: Store<Pod>,
    pub(super) leases: Store<Lease>,
    /// This node's Node object (a list of at most one).
    pub(super) node: Store<Node>,
    pub(super) changed: Arc<Notify>,
    /// Marked on every change of this node's pods, for upgrades waiting on their mirror pod.
    pub(super) pods_changed: Arc<tokio::sync::watch::Sender<()>>,
}

impl Caches {
    /// Wait until the caches hold a first full list (bounded: offline, the agent keeps going
    /// on the cached desired state).
    pub(super) async fn ready(&self, timeout: std::time::Duration) -> bool {
        let all = async {
            let _ = self.static_pods.wait_until_ready().await;
            let _ = self.yurt_static_sets.wait_until_ready().await;
            let _ = self.pods.wait_until_ready().await;
            let _ = self.leases.wait_until_ready().await;
        };
        tokio::time::timeout(timeout, all).await.is_ok()
    }
}

/// The reflectors' tasks: they run while this is alive.
pub(super) struct Reflectors {
    _watches: Vec<WatchTask>,
}

/// Keep a reflector's task alive with the caches; hand back its store.
fn keep<K>(watches: &mut Vec<WatchTask>, (store, task): (Store<K>, WatchTask)) -> Store<K>
where
    K: kube::Resource + Clone,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    watches.push(task);
    store
}

/// Start one reflector per watched resource; each runs until the agent is dropped.
pub(super) fn start_reflectors(
    client: &kube::Client,
    config: &Config,
    node: &str,
) -> (Caches, Reflectors) {
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
    let caches = Caches {
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
            // Only this node's grants: a grant write reaches its node and the controller,
            // never the fleet (nor the controller's leader Lease).
            reflect(
                Api::<Lease>::namespaced(client.clone(), &config.agent_namespace),
                watcher::Config::default().labels(&Grants::selector(node)),
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
    };
    (caches, Reflectors { _watches: watches })
}

/// Wake the reconcile loop when the manifest directory changes, so a hand edit is seen at once
/// (the 1 s pass would find it anyway; without the watch it is only slower).
pub(super) fn watch_manifest_dir(
    dir: &std::path::Path,
    changed: Arc<Notify>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let watched = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| changes_manifests(&e)) {
            changed.notify_one();
        }
    })
    .and_then(|mut watcher| {
        watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
        Ok(watcher)
    });
    match watched {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            // Once per process: the demo's thousand agent tasks share the per-user inotify
            // limit, and the same line a thousand times would say nothing more.
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the manifest directory; relying on periodic passes");
            } else {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot watch the manifest directory; relying on periodic passes");
            }
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
