//! The dev cluster's object store: every object as JSON, one cluster-wide resourceVersion,
//! and a bounded change history that watches resume from.
//!
//! The semantics are the API server's where the agent depends on them: 409 Conflict on a
//! stale resourceVersion, 409 AlreadyExists, `metadata.generation` bumped by spec changes
//! only, the status subresource changing only status, no-op writes not bumping the
//! resourceVersion, and 410 Gone for a watch older than the history kept.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::error::ApiError;
use super::patch::{self, PatchKind};
use super::resource::{ResourceKey, ResourceType};
use super::selector::Selectors;

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

/// Where a watch starts.
#[derive(Debug, Clone, Copy)]
pub enum WatchFrom {
    /// Synthetic ADDED events for every current object, then changes (rv unset or "0").
    Current,
    /// Every change after this resourceVersion.
    Version(u64),
}

/// A started watch: the changes to replay, then the live feed.
pub struct WatchStart {
    pub replay: Vec<Arc<Change>>,
    pub live: broadcast::Receiver<Arc<Change>>,
    /// The store's resourceVersion when the watch started (for bookmarks).
    pub rv: u64,
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
}

/// The in-memory object store. Cheap to share: `Arc<Store>`.
pub struct Store {
    inner: Mutex<Inner>,
    feed: broadcast::Sender<Arc<Change>>,
}

impl Store {
    /// A store with the built-in resource types and the standard namespaces.
    pub fn new(history_limit: usize) -> Arc<Store> {
        let (feed, _) = broadcast::channel(16_384);
        let store = Arc::new(Store {
            inner: Mutex::new(Inner {
                rv: 1,
                types: BTreeMap::new(),
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                compacted: 1,
                history_limit: history_limit.max(1),
            }),
            feed,
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
        let inner = self.lock();
        let rt = inner.served(key)?;
        let ns = if rt.namespaced { ns } else { None };
        let items = inner.objects[key]
            .iter()
            .filter(|((obj_ns, _), _)| ns.is_none_or(|n| n == obj_ns))
            .filter(|(_, obj)| selectors.matches(obj))
            .map(|(_, obj)| obj.clone())
            .collect();
        Ok((items, inner.rv))
    }

    pub fn create(
        &self,
        key: &ResourceKey,
        ns: Option<&str>,
        mut obj: Value,
    ) -> Result<Arc<Value>, ApiError> {
        let mut inner = self.lock();
        let rt = inner.served(key)?.clone();
        let ns = rt.scope(ns)?;
        let meta = metadata_mut(&mut obj)?;
        match meta.get("namespace").and_then(Value::as_str) {
            Some(body_ns) if rt.namespaced && !body_ns.is_empty() && body_ns != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {}
        }
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => format!("{prefix}{}", random_suffix()),
                _ => {
                    return Err(ApiError::invalid(
                        &rt,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            },
        };
        validate_name(&rt, &name)?;
        if rt.namespaced && !inner.namespace_exists(&ns) {
            let ns_type = inner.types[&ResourceKey::core("namespaces")].clone();
            return Err(ApiError::not_found(&ns_type, &ns));
        }
        if inner.objects[key].contains_key(&(ns.clone(), name.clone())) {
            return Err(ApiError::already_exists(&rt, &name));
        }
        let rv = inner.rv + 1;
        let meta = metadata_mut(&mut obj)?;
        meta.insert("name".into(), json!(name));
        if rt.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("generation".into(), json!(1));
        meta.remove("deletionTimestamp");
        set_type_meta(&rt, &mut obj);
        if rt.has_status {
            reset_status_on_create(&rt, &mut obj);
        }
        let obj = Arc::new(obj);
        inner.commit(
            &self.feed,
            rv,
            key,
            (ns, name),
            ChangeKind::Added,
            None,
            obj.clone(),
        );
        drop(inner);
        if rt.is_crd() {
            self.crd_written(&obj)?;
        }
        Ok(obj)
    }

    /// PUT: replace an object. A `metadata.resourceVersion` that is not current is a conflict.
    pub fn update(
        &self,
        key: &ResourceKey,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        sub: Subresource,
    ) -> Result<Arc<Value>, ApiError> {
        self.write(key, ns, name, sub, |_rt, _current| Ok(obj))
    }

    /// PATCH: apply a JSON merge, JSON, or strategic merge patch to the current object.
    pub fn patch(
        &self,
        key: &ResourceKey,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        sub: Subresource,
    ) -> Result<Arc<Value>, ApiError> {
        self.write(key, ns, name, sub, |rt, current| {
            if kind == PatchKind::Strategic && !rt.builtin {
                return Err(ApiError::unsupported_media_type(
                    "strategic merge patch is not supported for custom resources",
                ));
            }
            patch::apply(kind, current, body).map_err(|e| ApiError::bad_request(&e.to_string()))
        })
    }

    /// Change an object in place with a closure (the simulated kubelet's status updates).
    /// Retries never needed: the closure runs under the store's lock.
    pub fn modify(
        &self,
        key: &ResourceKey,
        ns: Option<&str>,
        name: &str,
        sub: Subresource,
        f: impl FnOnce(&mut Value),
    ) -> Result<Arc<Value>, ApiError> {
        self.write(key, ns, name, sub, |_rt, current| {
            let mut next = current.clone();
            f(&mut next);
            Ok(next)
        })
    }

    fn write(
        &self,
        key: &ResourceKey,
        ns: Option<&str>,
        name: &str,
        sub: Subresource,
        next: impl FnOnce(&ResourceType, &Value) -> Result<Value, ApiError>,
    ) -> Result<Arc<Value>, ApiError> {
        let mut inner = self.lock();
        let rt = inner.served(key)?.clone();
        let ns = rt.scope(ns)?;
        if sub == Subresource::Status && !rt.has_status {
            return Err(ApiError::not_found_path(&format!("{}/status", rt.plural)));
        }
        let id = (ns.clone(), name.to_string());
        let current = inner.objects[key]
            .get(&id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt, name))?;
        let mut proposed = next(&rt, &current)?;
        if !proposed.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        let current_rv = meta_str(&current, "resourceVersion").unwrap_or_default();
        match meta_str(&proposed, "resourceVersion") {
            Some(rv) if !rv.is_empty() && rv != current_rv => {
                return Err(ApiError::conflict(&rt, name));
            }
            _ => {}
        }
        if let Some(body_name) = meta_str(&proposed, "name")
            && !body_name.is_empty()
            && body_name != name
        {
            return Err(ApiError::bad_request(&format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let merged = match sub {
            Subresource::Status => {
                let mut merged = (*current).clone();
                let status = proposed.get("status").cloned().unwrap_or(Value::Null);
                set_field(&mut merged, "status", status);
                merged
            }
            Subresource::Main => {
                if rt.has_status {
                    let status = current.get("status").cloned().unwrap_or(Value::Null);
                    set_field(&mut proposed, "status", status);
                }
                // Server-owned metadata comes from the stored object.
                let old_meta = current
                    .get("metadata")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                let meta = metadata_mut(&mut proposed)?;
                for field in [
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "namespace",
                    "name",
                    "deletionTimestamp",
                ] {
                    match old_meta.get(field) {
                        Some(v) => meta.insert(field.into(), v.clone()),
                        None => meta.remove(field),
                    };
                }
                set_type_meta(&rt, &mut proposed);
                if spec_of(&proposed) != spec_of(&current) {
                    let generation = old_meta
                        .get("generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(1);
                    metadata_mut(&mut proposed)?.insert("generation".into(), json!(generation + 1));
                }
                proposed
            }
        };
        let mut merged = merged;
        metadata_mut(&mut merged)?.insert("resourceVersion".into(), json!(current_rv));
        if merged == *current {
            // A no-op write does not bump the resourceVersion or notify watchers.
            return Ok(current);
        }
        let rv = inner.rv + 1;
        metadata_mut(&mut merged)?.insert("resourceVersion".into(), json!(rv.to_string()));
        let obj = Arc::new(merged);
        inner.commit(
            &self.feed,
            rv,
            key,
            id,
            ChangeKind::Modified,
            Some(current),
            obj.clone(),
        );
        drop(inner);
        if rt.is_crd() {
            self.crd_written(&obj)?;
        }
        Ok(obj)
    }

    /// Delete an object, honouring `preconditions` (uid, resourceVersion) when given.
    pub fn delete(
        &self,
        key: &ResourceKey,
        ns: Option<&str>,
        name: &str,
        preconditions: Option<&Value>,
    ) -> Result<Arc<Value>, ApiError> {
        let mut inner = self.lock();
        let rt = inner.served(key)?.clone();
        let ns = rt.scope(ns)?;
        let id = (ns, name.to_string());
        let current = inner.objects[key]
            .get(&id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt, name))?;
        if let Some(pre) = preconditions {
            for field in ["uid", "resourceVersion"] {
                if let Some(want) = pre.get(field).and_then(Value::as_str)
                    && meta_str(&current, field) != Some(want)
                {
                    return Err(ApiError::conflict_precondition(&rt, name, field, want));
                }
            }
        }
        let rv = inner.rv + 1;
        let mut last = (*current).clone();
        metadata_mut(&mut last)?.insert("resourceVersion".into(), json!(rv.to_string()));
        let last = Arc::new(last);
        inner.commit(
            &self.feed,
            rv,
            key,
            id,
            ChangeKind::Deleted,
            Some(current),
            last.clone(),
        );
        drop(inner);
        if rt.is_crd()
            && let Some(served) = ResourceType::from_crd(&last)
        {
            self.unregister(&served.key());
        }
        Ok(last)
    }

    /// Start a watch on a type: the history to replay (or the current objects), then the feed.
    /// The caller filters by namespace and selectors with [`Change::event_for`].
    pub fn watch(&self, key: &ResourceKey, from: WatchFrom) -> Result<WatchStart, ApiError> {
        let inner = self.lock();
        inner.served(key)?;
        let live = self.feed.subscribe();
        let replay = match from {
            WatchFrom::Current => inner.objects[key]
                .values()
                .map(|obj| {
                    Arc::new(Change {
                        rv: meta_str(obj, "resourceVersion")
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0),
                        resource: key.clone(),
                        kind: ChangeKind::Added,
                        old: None,
                        new: obj.clone(),
                    })
                })
                .collect(),
            WatchFrom::Version(rv) => {
                if rv < inner.compacted {
                    return Err(ApiError::gone(rv, inner.compacted));
                }
                inner
                    .history
                    .iter()
                    .filter(|c| c.rv > rv && &c.resource == key)
                    .cloned()
                    .collect()
            }
        };
        Ok(WatchStart {
            replay,
            live,
            rv: inner.rv,
        })
    }

    /// A CRD was created or changed: serve (or re-serve) the resource it defines and mark it
    /// Established, as the API server does.
    fn crd_written(&self, crd: &Value) -> Result<(), ApiError> {
        let Some(rt) = ResourceType::from_crd(crd) else {
            return Ok(());
        };
        self.register(rt);
        let name = meta_str(crd, "name").unwrap_or_default().to_string();
        let established = crd
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Established"));
        if established {
            return Ok(());
        }
        let now = now_rfc3339();
        let accepted = crd.pointer("/spec/names").cloned().unwrap_or(Value::Null);
        self.modify(&ResourceKey::crds(), None, &name, Subresource::Status, |obj| {
            set_field(
                obj,
                "status",
                json!({
                    "acceptedNames": accepted,
                    "storedVersions": [crd_storage_version(crd)],
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                         "message": "no conflicts found", "lastTransitionTime": now},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                         "message": "the initial names have been accepted", "lastTransitionTime": now},
                    ],
                }),
            );
        })?;
        Ok(())
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

    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        feed: &broadcast::Sender<Arc<Change>>,
        rv: u64,
        key: &ResourceKey,
        id: (String, String),
        kind: ChangeKind,
        old: Option<Arc<Value>>,
        new: Arc<Value>,
    ) {
        self.rv = rv;
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
        // No receivers is normal (no watches open).
        let _ = feed.send(change);
    }
}

impl Change {
    /// The watch event a watcher of `key` in `ns` with `selectors` sees for this change, if
    /// any. An object that stops matching a selector is seen as DELETED, one that starts
    /// matching as ADDED, as the API server does.
    pub fn event_for(
        &self,
        key: &ResourceKey,
        ns: Option<&str>,
        selectors: &Selectors,
    ) -> Option<(&'static str, &Value)> {
        if &self.resource != key {
            return None;
        }
        if let Some(ns) = ns
            && meta_str(&self.new, "namespace").unwrap_or_default() != ns
        {
            return None;
        }
        let new_matches = selectors.matches(&self.new);
        let old_matches = self.old.as_deref().is_some_and(|o| selectors.matches(o));
        match self.kind {
            ChangeKind::Added if new_matches => Some(("ADDED", &self.new)),
            ChangeKind::Deleted if old_matches || new_matches => Some(("DELETED", &self.new)),
            ChangeKind::Modified => match (old_matches, new_matches) {
                (true, true) => Some(("MODIFIED", &self.new)),
                (false, true) => Some(("ADDED", &self.new)),
                (true, false) => Some(("DELETED", &self.new)),
                (false, false) => None,
            },
            _ => None,
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

fn validate_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    let ok = name.len() <= 253
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    // Custom resource names and a few built-ins allow more, but every name the agent writes is
    // a DNS subdomain, and that is what this checks.
    let ok = ok || (rt.kind == "Event" && name.bytes().all(|b| b.is_ascii_graphic()));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            rt,
            name,
            &format!(
                "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
            ),
        ))
    }
}

fn metadata_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object must be a JSON object"))?;
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

/// A string field of `metadata`.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn set_field(obj: &mut Value, field: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        if value.is_null() {
            map.remove(field);
        } else {
            map.insert(field.into(), value);
        }
    }
}

fn set_type_meta(rt: &ResourceType, obj: &mut Value) {
    if let Some(map) = obj.as_object_mut() {
        map.insert("apiVersion".into(), json!(rt.api_version()));
        map.insert("kind".into(), json!(rt.kind));
    }
}

/// Everything but metadata and status: what `metadata.generation` tracks.
fn spec_of(obj: &Value) -> Vec<(&String, &Value)> {
    obj.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .collect()
        })
        .unwrap_or_default()
}

fn reset_status_on_create(rt: &ResourceType, obj: &mut Value) {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => {
            let status = obj.get("status").cloned().unwrap_or(Value::Null);
            let qos = status
                .get("qosClass")
                .cloned()
                .unwrap_or(json!("BestEffort"));
            set_field(obj, "status", json!({"phase": "Pending", "qosClass": qos}));
        }
        // A new namespace is Active, as the API server's namespace strategy makes it.
        ("", "Namespace") => {
            if obj.pointer("/status/phase").is_none() {
                set_field(obj, "status", json!({"phase": "Active"}));
            }
        }
        // Nodes are created with their status by their kubelets.
        ("", "Node") => {}
        _ => set_field(obj, "status", Value::Null),
    }
}

fn crd_storage_version(crd: &Value) -> Value {
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v["storage"] == true))
        .map(|v| v["name"].clone())
        .unwrap_or(Value::Null)
}

/// RFC 3339 UTC time with second precision, as Kubernetes writes timestamps.
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub(super) fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    // The system random source failing is not recoverable for a dev cluster; fall back to
    // time-derived bytes rather than abort.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (nanos >> ((i % 16) * 8)) as u8;
        }
    }
    bytes
}

fn new_uid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes::<5>()
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}
