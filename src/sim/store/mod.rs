//! The dev cluster's object store: every object as JSON, one cluster-wide resourceVersion,
//! and a bounded change history that watches resume from.
//!
//! The semantics are the API server's where the agent depends on them: 409 Conflict on a
//! stale resourceVersion, 409 AlreadyExists, `metadata.generation` bumped by spec changes
//! only, the status subresource changing only status, no-op writes not bumping the
//! resourceVersion, and 410 Gone for a watch older than the history kept.

mod crd;
mod fields;
mod generated;
mod watch;
mod write;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

pub use fields::meta_str;
pub(super) use generated::random_bytes;
pub use generated::{now_rfc3339, rfc3339_after};
pub use watch::{WatchFrom, WatchStart};

use super::admission::crd_rules::SchemaRules;
use super::error::ApiError;
use super::resource::{ResourceKey, ResourceType};
use super::selector::{IndexKey, Selectors, field_text};

/// How many changes the store keeps for watches to resume from.
pub const DEFAULT_HISTORY: usize = 20_000;

/// One change to one object, as watches see it.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub resource: ResourceKey,
    pub kind: ChangeKind,
    /// The object before the change (absent for additions).
    pub old: Option<Arc<Value>>,
    /// The object after the change (for deletions: the last state, with the deletion's rv).
    pub new: Arc<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Main,
    Status,
}

struct Inner {
    rv: u64,
    types: BTreeMap<ResourceKey, ResourceType>,
    objects: BTreeMap<ResourceKey, BTreeMap<(String, String), Arc<Value>>>,
    history: VecDeque<Arc<Change>>,
    /// The highest resourceVersion no longer in `history`.
    compacted: u64,
    history_limit: usize,
    /// One live feed per resource type, made when first watched: a change reaches only the
    /// watches of its type (as the API server's per-resource watch caches do), so thousands of
    /// watches of other types cost nothing.
    feeds: BTreeMap<ResourceKey, Feed>,
    /// Objects by the value at a field path, per resource type: built when a list first
    /// requires an equality on the path (a kubelet listing its node's pods), kept by every
    /// commit after, so such a list reads its own objects instead of all of them.
    indexes: HashMap<(ResourceKey, Vec<String>), FieldIndex>,
    /// The validation rules of each custom resource whose CRD has any, compiled.
    rules: HashMap<ResourceKey, Arc<SchemaRules>>,
}

/// Value at a field path → the (namespace, name) of the objects with it.
type FieldIndex = HashMap<String, BTreeSet<(String, String)>>;

/// The live changes of one resource type. A watch whose selectors require an equality (an
/// agent's pods by `spec.nodeName`, its grants by node label) reads a feed keyed by that value,
/// as the API server's watch cache indexes pods by node: a change reaches the watches of the
/// values it had before and after, not every watch of the type.
struct Feed {
    all: broadcast::Sender<Arc<Change>>,
    /// Field path → wanted value → feed.
    keyed: HashMap<Vec<String>, HashMap<String, broadcast::Sender<Arc<Change>>>>,
}

impl Feed {
    fn new() -> Feed {
        Feed {
            all: broadcast::channel(FEED_CAPACITY).0,
            keyed: HashMap::new(),
        }
    }

    fn subscribe(&mut self, index: Option<IndexKey>) -> broadcast::Receiver<Arc<Change>> {
        let Some(IndexKey { path, value }) = index else {
            return self.all.subscribe();
        };
        let by_value = self.keyed.entry(path).or_default();
        // Feeds whose watches have all ended go when the next watch of the path starts.
        by_value.retain(|_, tx| tx.receiver_count() > 0);
        by_value
            .entry(value)
            .or_insert_with(|| broadcast::channel(FEED_CAPACITY).0)
            .subscribe()
    }

    fn send(&self, change: &Arc<Change>) {
        // No receivers is normal (no watches open).
        if self.all.receiver_count() > 0 {
            let _ = self.all.send(change.clone());
        }
        for (path, by_value) in &self.keyed {
            let new = field_text(&change.new, path);
            if let Some(tx) = by_value.get(new.as_ref()) {
                let _ = tx.send(change.clone());
            }
            if let Some(old) = change.old.as_deref() {
                let old = field_text(old, path);
                if old != new
                    && let Some(tx) = by_value.get(old.as_ref())
                {
                    let _ = tx.send(change.clone());
                }
            }
        }
    }
}

/// Changes a feed holds for a slow watch before it lags.
const FEED_CAPACITY: usize = 16_384;

/// The in-memory object store. Cheap to share: `Arc<Store>`.
pub struct Store {
    inner: Mutex<Inner>,
}

impl Store {
    /// A store with the built-in resource types and the standard namespaces.
    pub fn new(history_limit: usize) -> Arc<Store> {
        let store = Arc::new(Store {
            inner: Mutex::new(Inner {
                rv: 1,
                types: BTreeMap::new(),
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                compacted: 1,
                history_limit: history_limit.max(1),
                feeds: BTreeMap::new(),
                indexes: HashMap::new(),
                rules: HashMap::new(),
            }),
        });
        for rt in super::resource::builtin_types() {
            store.register(rt);
        }
        let ns = ResourceKey::core("namespaces");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let created = store.create(
                &ns,
                None,
                json!({"metadata": {"name": name}, "spec": {"finalizers": ["kubernetes"]},
                       "status": {"phase": "Active"}}),
                &(),
            );
            debug_assert!(
                created.is_ok(),
                "a fresh store accepts the standard namespaces"
            );
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent map (every mutation is a single
        // insert/remove at the end of a write), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serve a resource type (built-ins at start, custom resources when their CRD is created).
    pub fn register(&self, rt: ResourceType) {
        let mut inner = self.lock();
        let key = rt.key();
        inner.objects.entry(key.clone()).or_default();
        inner.types.insert(key, rt);
    }

    /// Stop serving a resource type and drop its objects (its CRD was deleted).
    pub fn unregister(&self, key: &ResourceKey) {
        let mut inner = self.lock();
        inner.types.remove(key);
        inner.objects.remove(key);
        inner.indexes.retain(|(of, _), _| of != key);
        inner.rules.remove(key);
    }

    pub fn resource_types(&self) -> Vec<ResourceType> {
        self.lock().types.values().cloned().collect()
    }

    /// The served type with this group and plural (any version the type serves).
    pub fn resource_type(&self, key: &ResourceKey) -> Option<ResourceType> {
        self.lock().types.get(key).cloned()
    }

    /// The type serving `group/version` kind `kind`, if any.
    pub fn resource_for_kind(
        &self,
        group: &str,
        version: &str,
        kind: &str,
    ) -> Option<ResourceType> {
        self.lock()
            .types
            .values()
            .find(|t| t.group == group && t.version == version && t.kind == kind)
            .cloned()
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(
        &self,
        key: &ResourceKey,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        let inner = self.lock();
        let rt = inner.served(key)?;
        let ns = rt.scope(ns)?;
        inner.objects[key]
            .get(&(ns, name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// Objects of a type, in one namespace or all, filtered; with the store's resourceVersion.
    pub fn list(
        &self,
        key: &ResourceKey,
        ns: Option<&str>,
        selectors: &Selectors,
    ) -> Result<(Vec<Arc<Value>>, u64), ApiError> {
        let mut inner = self.lock();
        let rt = inner.served(key)?;
        let ns = if rt.namespaced { ns } else { None };
        let keep = |(obj_ns, _): &(String, String), obj: &Value| {
            ns.is_none_or(|n| n == obj_ns) && selectors.matches(obj)
        };
        let Some(IndexKey { path, value }) = selectors.index_key() else {
            let items = inner.objects[key]
                .iter()
                .filter(|(id, obj)| keep(id, obj))
                .map(|(_, obj)| obj.clone())
                .collect();
            return Ok((items, inner.rv));
        };
        let inner = &mut *inner;
        let objects = &inner.objects[key];
        let index = inner
            .indexes
            .entry((key.clone(), path.clone()))
            .or_insert_with(|| {
                let mut index = FieldIndex::new();
                for (id, obj) in objects {
                    index
                        .entry(field_text(obj, &path).into_owned())
                        .or_default()
                        .insert(id.clone());
                }
                index
            });
        let items = index
            .get(&value)
            .into_iter()
            .flatten()
            .filter_map(|id| objects.get_key_value(id))
            .filter(|(id, obj)| keep(id, obj))
            .map(|(_, obj)| obj.clone())
            .collect();
        Ok((items, inner.rv))
    }
}

impl Inner {
    fn served(&self, key: &ResourceKey) -> Result<&ResourceType, ApiError> {
        self.types
            .get(key)
            .ok_or_else(|| ApiError::not_found_path(&key.to_string()))
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.objects
            .get(&ResourceKey::core("namespaces"))
            .is_some_and(|m| m.contains_key(&(String::new(), ns.to_string())))
    }

    fn commit(
        &mut self,
        rv: u64,
        key: &ResourceKey,
        id: (String, String),
        kind: ChangeKind,
        old: Option<Arc<Value>>,
        new: Arc<Value>,
    ) {
        self.rv = rv;
        for ((of, path), index) in self.indexes.iter_mut() {
            if of != key {
                continue;
            }
            if let Some(old) = old.as_deref()
                && let Some(ids) = index.get_mut(field_text(old, path).as_ref())
            {
                ids.remove(&id);
            }
            if kind != ChangeKind::Deleted {
                index
                    .entry(field_text(&new, path).into_owned())
                    .or_default()
                    .insert(id.clone());
            }
        }
        let objects = self.objects.entry(key.clone()).or_default();
        match kind {
            ChangeKind::Deleted => objects.remove(&id),
            _ => objects.insert(id, new.clone()),
        };
        let change = Arc::new(Change {
            rv,
            resource: key.clone(),
            kind,
            old,
            new,
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        if let Some(feed) = self.feeds.get(key) {
            feed.send(&change);
        }
    }
}

impl ResourceType {
    /// The namespace an object of this type lives in: required for namespaced types,
    /// ignored (empty) for cluster-scoped ones.
    fn scope(&self, ns: Option<&str>) -> Result<String, ApiError> {
        match (self.namespaced, ns) {
            (true, Some(ns)) if !ns.is_empty() => Ok(ns.to_string()),
            (true, _) => Err(ApiError::bad_request(&format!(
                "{} is namespaced: a namespace is required",
                self.plural
            ))),
            (false, _) => Ok(String::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::store::watch::WatchFrom;

    fn pods() -> ResourceKey {
        ResourceKey::core("pods")
    }

    fn names(items: &[Arc<Value>]) -> Vec<&str> {
        items
            .iter()
            .filter_map(|o| o.pointer("/metadata/name").and_then(Value::as_str))
            .collect()
    }

    fn on_node(store: &Store, node: &str) -> Vec<String> {
        let selectors = Selectors::parse(None, Some(&format!("spec.nodeName={node}"))).unwrap();
        let (items, _) = store.list(&pods(), None, &selectors).unwrap();
        names(&items).into_iter().map(str::to_string).collect()
    }

    #[test]
    fn a_list_by_an_indexed_field_follows_creates_moves_and_deletes() {
        let store = Store::new(100);
        for (name, node) in [("a", "n1"), ("b", "n2")] {
            store
                .create(
                    &pods(),
                    Some("default"),
                    json!({"metadata": {"name": name}, "spec": {"nodeName": node}}),
                    &(),
                )
                .unwrap();
        }
        assert_eq!(
            on_node(&store, "n1"),
            ["a"],
            "the index built from what is there"
        );
        store
            .create(
                &pods(),
                Some("kube-system"),
                json!({"metadata": {"name": "c"}, "spec": {"nodeName": "n1"}}),
                &(),
            )
            .unwrap();
        store
            .modify(&pods(), Some("default"), "b", Subresource::Main, |o| {
                o["spec"]["nodeName"] = json!("n1")
            })
            .unwrap();
        assert_eq!(on_node(&store, "n1"), ["a", "b", "c"]);
        assert!(on_node(&store, "n2").is_empty(), "b moved away");
        store
            .delete(&pods(), Some("default"), "a", None, &())
            .unwrap();
        assert_eq!(on_node(&store, "n1"), ["b", "c"]);
        let selectors = Selectors::parse(None, Some("spec.nodeName=n1")).unwrap();
        let (items, _) = store.list(&pods(), Some("default"), &selectors).unwrap();
        assert_eq!(names(&items), ["b"], "the namespace still filters");
    }

    #[test]
    fn a_keyed_watch_sees_the_changes_to_its_value_before_and_after() {
        let store = Store::new(100);
        let selectors = Selectors::parse(None, Some("spec.nodeName=n1")).unwrap();
        let mut watch = store
            .watch(&pods(), WatchFrom::Current, &selectors)
            .unwrap()
            .live;
        let mut all = store
            .watch(&pods(), WatchFrom::Current, &Selectors::default())
            .unwrap()
            .live;
        store
            .create(
                &pods(),
                Some("default"),
                json!({"metadata": {"name": "x"}, "spec": {"nodeName": "n2"}}),
                &(),
            )
            .unwrap();
        store
            .modify(&pods(), Some("default"), "x", Subresource::Main, |o| {
                o["spec"]["nodeName"] = json!("n1")
            })
            .unwrap();
        store
            .modify(&pods(), Some("default"), "x", Subresource::Main, |o| {
                o["spec"]["nodeName"] = json!("n3")
            })
            .unwrap();
        let got: Vec<&str> = std::iter::from_fn(|| watch.try_recv().ok())
            .map(|c| {
                c.event_for(&pods(), None, &selectors)
                    .map_or("none", |(kind, _)| kind)
            })
            .collect();
        assert_eq!(
            got,
            ["ADDED", "DELETED"],
            "moved onto n1, then away; its creation on n2 not sent"
        );
        assert_eq!(std::iter::from_fn(|| all.try_recv().ok()).count(), 3);
    }
}
