//! What changed since the controller's last pass, so a pass visits only the objects whose
//! inputs moved (their spec or status, one of their mirror pods, one of their grants) rather
//! than every object of the cluster; and which mirror pods belong to which object, kept from
//! the pod watch's own events, so a pass reads an object's members without scanning every pod.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::Notify;

use super::coordinator::mirror_object;
use crate::kubeclient::Touch;
use crate::rollout::grant::OBJECT_ANNOTATION;

/// An object as both kinds name it: `(namespace, name)`. A mirror pod cannot tell a StaticPod
/// from a YurtStaticSet of the same name, so a pass looks both up.
pub type ObjectName = (String, String);

/// The objects to visit at the next pass, and the mirror pods of each object.
#[derive(Default)]
pub struct Changes {
    inner: Mutex<Inner>,
    /// The pod cache, once built: a relist rebuilds the member index from it at once.
    pods: std::sync::OnceLock<Store<Pod>>,
    /// Woken on every change: the controller's loop waits on it.
    pub notify: Notify,
}

#[derive(Default)]
struct Inner {
    dirty: HashSet<ObjectName>,
    /// Visit every object (a relist, a canary label, a new leader term).
    everything: bool,
    /// The pod cache was relisted: the member index is rebuilt from it at the next pass.
    pods_relisted: bool,
    /// Mirror pod names of each object.
    members: HashMap<ObjectName, HashSet<String>>,
    /// The canary-labelled nodes: a pass over everything when the set changes.
    canary: HashSet<String>,
}

/// What a pass is to visit.
#[derive(Debug, PartialEq, Eq)]
pub enum Visit {
    Everything,
    Objects(HashSet<ObjectName>),
}

impl Changes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark(&self, object: ObjectName) {
        self.lock().dirty.insert(object);
        self.notify.notify_one();
    }

    pub fn everything(&self) {
        self.lock().everything = true;
        self.notify.notify_one();
    }

    /// A StaticPod or YurtStaticSet changed (or a relist of one kind: everything).
    pub fn object<K: kube::Resource>(&self, touch: Touch<'_, K>) {
        match touch {
            Touch::Applied(o) | Touch::Deleted(o) => self.mark((
                o.meta().namespace.clone().unwrap_or_default(),
                o.meta().name.clone().unwrap_or_default(),
            )),
            Touch::Relisted => self.everything(),
        }
    }

    /// A pod changed: its object (if it is a mirror pod) is visited, and its membership noted.
    pub fn pod(&self, touch: Touch<'_, Pod>) {
        let (pod, present) = match touch {
            Touch::Applied(p) => (p, true),
            Touch::Deleted(p) => (p, false),
            Touch::Relisted => {
                let mut inner = self.lock();
                match self.pods.get() {
                    // The store holds the relist already (a reflector applies, then tells).
                    Some(pods) => inner.rebuild(pods),
                    None => inner.pods_relisted = true,
                }
                inner.everything = true;
                drop(inner);
                self.notify.notify_one();
                return;
            }
        };
        let (Some((object, _)), Some(name)) = (mirror_object(pod), pod.metadata.name.clone())
        else {
            return;
        };
        {
            let mut inner = self.lock();
            let names = inner.members.entry(object.clone()).or_default();
            if present {
                names.insert(name);
            } else {
                names.remove(&name);
                if names.is_empty() {
                    inner.members.remove(&object);
                }
            }
            inner.dirty.insert(object);
        }
        self.notify.notify_one();
    }

    /// A canary-labelled Node changed: everything is visited if the set of canary nodes did
    /// (not on the Node's own status updates).
    pub fn canary_node(&self, touch: Touch<'_, k8s_openapi::api::core::v1::Node>) {
        let changed = {
            let mut inner = self.lock();
            match touch {
                Touch::Applied(n) => inner
                    .canary
                    .insert(n.metadata.name.clone().unwrap_or_default()),
                Touch::Deleted(n) => inner
                    .canary
                    .remove(n.metadata.name.as_deref().unwrap_or_default()),
                Touch::Relisted => true,
            }
        };
        if changed {
            self.everything();
        }
    }

    /// A grant changed: its object is visited (named by the grant's annotation; a Lease
    /// without it means everything, so nothing is missed).
    pub fn grant(&self, touch: Touch<'_, Lease>) {
        match touch {
            Touch::Applied(l) | Touch::Deleted(l) => match grant_object(l) {
                Some(object) => self.mark(object),
                None => self.everything(),
            },
            Touch::Relisted => self.everything(),
        }
    }

    /// The pod cache the member index follows (relists rebuild the index from it).
    pub fn follow_pods(&self, pods: Store<Pod>) {
        let _ = self.pods.set(pods);
    }

    /// What to visit now (and forget it); rebuilds the member index first if the pod cache
    /// was relisted before [`Changes::follow_pods`].
    pub fn take(&self, pods: &Store<Pod>) -> Visit {
        let mut inner = self.lock();
        if std::mem::take(&mut inner.pods_relisted) {
            inner.rebuild(pods);
        }
        let dirty = std::mem::take(&mut inner.dirty);
        if std::mem::take(&mut inner.everything) {
            Visit::Everything
        } else {
            Visit::Objects(dirty)
        }
    }

    /// The mirror pods of `object`, from the pod cache.
    pub fn members(&self, object: &ObjectName, pods: &Store<Pod>) -> Vec<Arc<Pod>> {
        let inner = self.lock();
        let Some(names) = inner.members.get(object) else {
            return Vec::new();
        };
        names
            .iter()
            .filter_map(|name| pods.get(&ObjectRef::new(name).within(&object.0)))
            .collect()
    }
}

impl Inner {
    fn rebuild(&mut self, pods: &Store<Pod>) {
        self.members.clear();
        for pod in pods.state() {
            if let (Some((object, _)), Some(name)) =
                (mirror_object(&pod), pod.metadata.name.clone())
            {
                self.members.entry(object).or_default().insert(name);
            }
        }
    }
}

/// The object a grant is for, from its `Kind namespace/name` annotation.
pub fn grant_object(lease: &Lease) -> Option<ObjectName> {
    let text = lease
        .metadata
        .annotations
        .as_ref()?
        .get(OBJECT_ANNOTATION)?;
    let (_, rest) = text.split_once(' ')?;
    let (namespace, name) = rest.split_once('/')?;
    Some((namespace.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn mirror(name: &str, node: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "kube-system", "resourceVersion": "1",
                "annotations": {"kubernetes.io/config.source": "file"}},
            "spec": {"nodeName": node},
        }))
        .expect("a pod")
    }

    fn object(name: &str) -> ObjectName {
        ("kube-system".to_string(), name.to_string())
    }

    #[test]
    fn a_mirror_pod_marks_its_object_and_joins_its_members() {
        let (pods, mut writer) = reflector::store::<Pod>();
        let changes = Changes::default();
        let p = mirror("nginx-edge-1", "edge-1");
        writer.apply_watcher_event(&Event::Apply(p.clone()));
        changes.pod(Touch::Applied(&p));
        // A pod of no object (an ordinary pod) marks nothing.
        let mut plain = mirror("web-abc", "edge-1");
        plain.metadata.annotations = None;
        changes.pod(Touch::Applied(&plain));
        assert_eq!(
            changes.take(&pods),
            Visit::Objects(HashSet::from([object("nginx")]))
        );
        assert_eq!(changes.members(&object("nginx"), &pods).len(), 1);
        assert_eq!(changes.take(&pods), Visit::Objects(HashSet::new()));

        writer.apply_watcher_event(&Event::Delete(p.clone()));
        changes.pod(Touch::Deleted(&p));
        assert_eq!(
            changes.take(&pods),
            Visit::Objects(HashSet::from([object("nginx")]))
        );
        assert!(changes.members(&object("nginx"), &pods).is_empty());
    }

    #[test]
    fn a_relist_rebuilds_the_members_from_the_cache_and_visits_everything() {
        let (pods, mut writer) = reflector::store::<Pod>();
        let changes = Changes::default();
        let gone = mirror("nginx-edge-1", "edge-1");
        changes.pod(Touch::Applied(&gone));
        // The relist holds another pod; the first went while the watch was down.
        let kept = mirror("nginx-edge-2", "edge-2");
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(kept.clone()));
        writer.apply_watcher_event(&Event::InitDone);
        changes.pod(Touch::Relisted);
        assert_eq!(changes.take(&pods), Visit::Everything);
        // Once the controller has handed over its cache, a relist rebuilds the index at once.
        changes.follow_pods(pods.clone());
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(gone.clone()));
        writer.apply_watcher_event(&Event::InitDone);
        changes.pod(Touch::Relisted);
        assert_eq!(changes.members(&object("nginx"), &pods).len(), 1);
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(kept.clone()));
        writer.apply_watcher_event(&Event::InitDone);
        changes.pod(Touch::Relisted);
        let members = changes.members(&object("nginx"), &pods);
        assert_eq!(
            members
                .iter()
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect::<Vec<_>>(),
            ["nginx-edge-2"]
        );
    }

    #[test]
    fn a_canary_node_s_own_updates_do_not_visit_everything() {
        let (pods, _) = reflector::store::<Pod>();
        let changes = Changes::default();
        let node: k8s_openapi::api::core::v1::Node =
            serde_json::from_value(json!({"metadata": {"name": "edge-1"}})).expect("a node");
        changes.canary_node(Touch::Applied(&node));
        assert_eq!(changes.take(&pods), Visit::Everything);
        // Its heartbeat: the set of canary nodes is the same.
        changes.canary_node(Touch::Applied(&node));
        assert_eq!(changes.take(&pods), Visit::Objects(HashSet::new()));
        // Its label removed (the label-selected watch says deleted).
        changes.canary_node(Touch::Deleted(&node));
        assert_eq!(changes.take(&pods), Visit::Everything);
    }

    #[test]
    fn a_grant_marks_the_object_its_annotation_names() {
        let (pods, _) = reflector::store::<Pod>();
        let changes = Changes::default();
        let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "g",
            "annotations": {OBJECT_ANNOTATION: "StaticPod kube-system/nginx"}}}))
        .expect("a lease");
        changes.grant(Touch::Applied(&lease));
        assert_eq!(
            changes.take(&pods),
            Visit::Objects(HashSet::from([object("nginx")]))
        );
        let unnamed = Lease::default();
        changes.grant(Touch::Deleted(&unnamed));
        assert_eq!(changes.take(&pods), Visit::Everything);
    }
}
