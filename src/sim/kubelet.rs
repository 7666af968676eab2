//! A simulated kubelet: turns the files of one node's manifest directory into mirror pods,
//! with the timing measured on a real kubelet (DESIGN.md, "Facts measured").
//!
//! Like kubelet it ignores files whose names start with `.`, names mirror pods
//! `<pod name>-<node name>`, annotates them with `kubernetes.io/config.{source,mirror,hash}`,
//! recreates a mirror pod deleted through the API, keeps pod conditions it does not own, and
//! never makes a pod Ready whose image is broken. It also serves its own pod list on a
//! loopback port, as kubelet's `/pods` does, so readiness can be read without the API server.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ring::digest;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::resource::ResourceKey;
use super::store::{Store, Subresource, now_rfc3339};

/// Delays between a manifest change and what kubelet reports. `realistic()` uses the figures
/// measured on a real kubelet; `fast()` keeps tests quick while keeping the same order of events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timings {
    /// How often the directory is read (kubelet reacts to inotify; a poll is close enough).
    pub poll: Duration,
    /// New file → mirror pod exists (not yet Ready).
    pub appear: Duration,
    /// Container started → pod Ready.
    pub ready: Duration,
    /// Changed file → the old pod is killed (no longer Ready).
    pub kill: Duration,
    /// Changed file, renamed into place → the new mirror pod appears.
    pub replace_renamed: Duration,
    /// Changed file, rewritten in place → the new mirror pod appears (kubelet notices later).
    pub replace_rewritten: Duration,
    /// Removed file → mirror pod gone.
    pub remove: Duration,
    /// Mirror pod deleted through the API → recreated.
    pub recreate: Duration,
}

impl Timings {
    pub fn realistic() -> Self {
        Timings {
            poll: Duration::from_millis(50),
            appear: Duration::from_millis(50),
            ready: Duration::from_millis(400),
            kill: Duration::from_millis(700),
            replace_renamed: Duration::from_secs(3),
            replace_rewritten: Duration::from_secs(15),
            remove: Duration::from_millis(3500),
            recreate: Duration::from_secs(2),
        }
    }

    pub fn fast() -> Self {
        Timings {
            poll: Duration::from_millis(25),
            appear: Duration::from_millis(20),
            ready: Duration::from_millis(100),
            kill: Duration::from_millis(50),
            replace_renamed: Duration::from_millis(200),
            replace_rewritten: Duration::from_millis(600),
            remove: Duration::from_millis(200),
            recreate: Duration::from_millis(300),
        }
    }
}

/// Images that never become Ready (shared by all kubelets of a dev cluster).
pub type BrokenImages = Arc<RwLock<HashSet<String>>>;

/// One static pod as this kubelet runs it.
#[derive(Debug, Clone)]
struct LocalPod {
    namespace: String,
    /// The mirror pod's name, `<pod name>-<node name>`.
    mirror_name: String,
    config_hash: String,
    manifest: Value,
    /// When the mirror pod should exist.
    appear_at: Instant,
    /// When the containers are up (Ready unless the image is broken).
    ready_at: Instant,
    /// Killed (being replaced or removed): never Ready again.
    killed: bool,
    /// The mirror pod was seen missing (deleted through the API): recreate at this time.
    recreate_at: Option<Instant>,
    /// The status last written and the mirror pod's resourceVersion after that write: while
    /// both are unchanged there is nothing to write.
    reported: Option<(String, Value)>,
}

/// What happens to a running pod whose file changed or went away.
#[derive(Debug, Clone)]
struct Transition {
    kill_at: Instant,
    /// Replace with this version (None: remove).
    next: Option<(String, Value)>,
    done_at: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

#[derive(Default)]
struct State {
    /// Keyed by (namespace, pod name in the manifest).
    pods: BTreeMap<(String, String), LocalPod>,
    transitions: BTreeMap<(String, String), Transition>,
    /// Parsed files by name, re-read only when their stamp changes.
    files: BTreeMap<String, (FileStamp, Option<ParsedManifest>)>,
    /// When to look next for mirror pods with no local pod (a list over all pods: too costly
    /// for every tick of hundreds of kubelets).
    next_sweep: Option<Instant>,
}

/// How often a kubelet looks for orphaned mirror pods when nothing asks for it sooner.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct ParsedManifest {
    key: (String, String),
    hash: String,
    manifest: Value,
}

/// A running simulated kubelet.
pub struct Kubelet {
    node: String,
    manifest_dir: PathBuf,
    reporting: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    store: Arc<Store>,
    pods_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Kubelet {
    /// Start a kubelet for `node` reading `manifest_dir`, and its local `/pods` endpoint.
    pub async fn start(
        store: Arc<Store>,
        node: &str,
        manifest_dir: &Path,
        timings: Timings,
        broken: BrokenImages,
    ) -> std::io::Result<Kubelet> {
        std::fs::create_dir_all(manifest_dir)?;
        let state = Arc::new(Mutex::new(State::default()));
        let reporting = Arc::new(AtomicBool::new(true));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let pods_addr = listener.local_addr()?;

        let sync = Sync {
            node: node.to_string(),
            dir: manifest_dir.to_path_buf(),
            timings,
            broken: broken.clone(),
            store: store.clone(),
            state: state.clone(),
            reporting: reporting.clone(),
        };
        let sync_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(timings.poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                sync.once(Instant::now());
            }
        });

        let local = LocalPods {
            node: node.to_string(),
            state: state.clone(),
            broken,
        };
        let app = axum::Router::new().route(
            "/pods",
            axum::routing::get(move || {
                let local = local.clone();
                async move { axum::Json(local.pod_list(Instant::now())) }
            }),
        );
        let serve_task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "simulated kubelet /pods endpoint stopped");
            }
        });

        Ok(Kubelet {
            node: node.to_string(),
            manifest_dir: manifest_dir.to_path_buf(),
            reporting,
            state,
            store,
            pods_addr,
            tasks: vec![sync_task, serve_task],
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn manifest_dir(&self) -> &Path {
        &self.manifest_dir
    }

    /// The kubelet's local pod list, as `http://127.0.0.1:PORT/pods`.
    pub fn pods_url(&self) -> String {
        format!("http://{}/pods", self.pods_addr)
    }

    /// Take the node NotReady (false) or bring it back (true). A NotReady node's kubelet stops
    /// reporting; as the node lifecycle controller does, its Node and its pods turn not Ready.
    pub fn set_reporting(&self, on: bool) {
        self.reporting.store(on, Ordering::SeqCst);
        // Back from NotReady: mirror pods of files removed meanwhile go at the next tick.
        lock(&self.state).next_sweep = None;
        set_node_ready(&self.store, &self.node, on);
        if !on {
            let pods: Vec<_> = lock(&self.state).pods.values().cloned().collect();
            for pod in pods {
                let _ = self.store.modify(
                    &pods_key(),
                    Some(&pod.namespace),
                    &pod.mirror_name,
                    Subresource::Status,
                    |obj| {
                        merge_conditions(obj, &[condition("Ready", false, Some("NodeNotReady"))]);
                    },
                );
            }
        }
    }

    pub fn is_reporting(&self) -> bool {
        self.reporting.load(Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // State is only replaced whole-field at a time; a panic mid-tick leaves it usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pods_key() -> ResourceKey {
    ResourceKey::core("pods")
}

/// The Node object a simulated kubelet registers.
pub fn node_object(node: &str, index: usize) -> Value {
    json!({
        "metadata": {
            "name": node,
            "labels": {
                "kubernetes.io/hostname": node,
                "kubernetes.io/os": "linux",
                "openyurt.io/is-edge-worker": "true",
            },
        },
        "spec": {},
        "status": {
            "conditions": [node_ready_condition(true)],
            "addresses": [
                {"type": "InternalIP", "address": format!("10.0.{}.{}", index / 250, index % 250 + 1)},
                {"type": "Hostname", "address": node},
            ],
            "nodeInfo": {"kubeletVersion": "v1.34.0", "containerRuntimeVersion": "sim://1.0",
                         "operatingSystem": "linux", "architecture": "amd64"},
        },
    })
}

fn node_ready_condition(ready: bool) -> Value {
    let now = now_rfc3339();
    if ready {
        json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
               "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now})
    } else {
        json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
               "message": "Kubelet stopped posting node status.", "lastHeartbeatTime": now, "lastTransitionTime": now})
    }
}

fn set_node_ready(store: &Store, node: &str, ready: bool) {
    let result = store.modify(
        &ResourceKey::core("nodes"),
        None,
        node,
        Subresource::Status,
        |obj| {
            merge_conditions(obj, &[node_ready_condition(ready)]);
        },
    );
    if let Err(e) = result {
        tracing::warn!(node, error = %e, "simulated kubelet could not update its Node");
    }
}

/// The directory-to-API-server loop of one kubelet.
struct Sync {
    node: String,
    dir: PathBuf,
    timings: Timings,
    broken: BrokenImages,
    store: Arc<Store>,
    state: Arc<Mutex<State>>,
    reporting: Arc<AtomicBool>,
}

impl Sync {
    fn once(&self, now: Instant) {
        let desired = self.read_dir();
        let mut state = lock(&self.state);
        self.plan(&mut state, &desired, now);
        self.advance(&mut state, now);
        if self.reporting.load(Ordering::SeqCst) {
            self.report(&mut state, now);
        }
    }

    /// The pods the directory asks for, by (namespace, name).
    fn read_dir(&self) -> BTreeMap<(String, String), (ParsedManifest, bool)> {
        let mut desired = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return desired;
        };
        let mut state = lock(&self.state);
        let mut seen = HashSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // kubelet skips hidden files: that is what makes the agent's temp files invisible.
            if name.starts_with('.') {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            use std::os::unix::fs::MetadataExt;
            let stamp = FileStamp {
                inode: meta.ino(),
                len: meta.len(),
                modified: meta.modified().ok(),
            };
            seen.insert(name.clone());
            let previous = state.files.get(&name).cloned();
            let renamed = previous
                .as_ref()
                .is_some_and(|(old, _)| old.inode != stamp.inode);
            let parsed = match &previous {
                Some((old, parsed)) if *old == stamp => parsed.clone(),
                _ => {
                    let parsed = std::fs::read(entry.path())
                        .ok()
                        .and_then(|b| parse_manifest(&b, &name, &self.node));
                    state.files.insert(name.clone(), (stamp, parsed.clone()));
                    parsed
                }
            };
            if let Some(p) = parsed {
                desired.insert(p.key.clone(), (p, renamed || previous.is_none()));
            }
        }
        state.files.retain(|name, _| seen.contains(name));
        desired
    }

    /// Start transitions for pods whose file appeared, changed or went away.
    fn plan(
        &self,
        state: &mut State,
        desired: &BTreeMap<(String, String), (ParsedManifest, bool)>,
        now: Instant,
    ) {
        let t = self.timings;
        for (key, (parsed, renamed)) in desired {
            match state.pods.get(key) {
                None if !state.transitions.contains_key(key) => {
                    state.pods.insert(key.clone(), self.new_pod(parsed, now));
                }
                Some(pod) if pod.config_hash != parsed.hash => {
                    let pending = state
                        .transitions
                        .get(key)
                        .and_then(|tr| tr.next.as_ref())
                        .map(|(h, _)| h);
                    if pending != Some(&parsed.hash) {
                        let delay = if *renamed {
                            t.replace_renamed
                        } else {
                            t.replace_rewritten
                        };
                        state.transitions.insert(
                            key.clone(),
                            Transition {
                                kill_at: now + t.kill,
                                next: Some((parsed.hash.clone(), parsed.manifest.clone())),
                                done_at: now + delay.max(t.kill),
                            },
                        );
                    }
                }
                // Back to the running version before the replacement happened: cancel it.
                Some(_)
                    if state
                        .transitions
                        .get(key)
                        .is_some_and(|tr| tr.kill_at > now) =>
                {
                    state.transitions.remove(key);
                }
                Some(_) => {}
                None => {}
            }
        }
        for key in state.pods.keys() {
            if !desired.contains_key(key)
                && state
                    .transitions
                    .get(key)
                    .is_none_or(|tr| tr.next.is_some())
            {
                state.transitions.insert(
                    key.clone(),
                    Transition {
                        kill_at: now + t.kill.min(t.remove),
                        next: None,
                        done_at: now + t.remove,
                    },
                );
            }
        }
    }

    fn new_pod(&self, parsed: &ParsedManifest, now: Instant) -> LocalPod {
        let appear_at = now + self.timings.appear;
        LocalPod {
            namespace: parsed.key.0.clone(),
            mirror_name: format!("{}-{}", parsed.key.1, self.node),
            config_hash: parsed.hash.clone(),
            manifest: parsed.manifest.clone(),
            appear_at,
            ready_at: appear_at + self.timings.ready,
            killed: false,
            recreate_at: None,
            reported: None,
        }
    }

    /// Apply due transitions to the local pods.
    fn advance(&self, state: &mut State, now: Instant) {
        let due: Vec<_> = state
            .transitions
            .iter()
            .map(|(k, tr)| (k.clone(), tr.clone()))
            .collect();
        for (key, tr) in due {
            if tr.kill_at <= now
                && let Some(pod) = state.pods.get_mut(&key)
            {
                pod.killed = true;
            }
            if tr.done_at <= now {
                state.transitions.remove(&key);
                let old = state.pods.remove(&key);
                if let Some(old) = old
                    && self.reporting.load(Ordering::SeqCst)
                {
                    self.delete_mirror(&old);
                }
                if let Some((hash, manifest)) = tr.next {
                    let parsed = ParsedManifest {
                        key: key.clone(),
                        hash,
                        manifest,
                    };
                    state.pods.insert(key, self.new_pod(&parsed, now));
                }
            }
        }
    }

    /// Make the API server's mirror pods match the local pods.
    fn report(&self, state: &mut State, now: Instant) {
        let broken = self.broken.read().map(|b| b.clone()).unwrap_or_default();
        for pod in state.pods.values_mut() {
            if pod.appear_at > now {
                continue;
            }
            let current = self
                .store
                .get(&pods_key(), Some(&pod.namespace), &pod.mirror_name)
                .ok();
            let ours = current.as_deref().is_some_and(|m| {
                m.pointer("/metadata/annotations/kubernetes.io~1config.hash")
                    .and_then(Value::as_str)
                    == Some(pod.config_hash.as_str())
            });
            if !ours {
                if current.is_some() {
                    // A mirror pod of an older version (the node was not reporting during the
                    // replacement): replace it now.
                    let _ = self.store.delete(
                        &pods_key(),
                        Some(&pod.namespace),
                        &pod.mirror_name,
                        None,
                    );
                } else if pod.recreate_at.is_none() && pod.appear_at + self.timings.poll < now {
                    // Deleted through the API: kubelet recreates it on its next sync.
                    pod.recreate_at = Some(now + self.timings.recreate);
                    continue;
                }
                if pod.recreate_at.is_some_and(|at| at > now) {
                    continue;
                }
                pod.recreate_at = None;
                let mirror = mirror_pod(&self.node, pod);
                if let Err(e) = self.store.create(&pods_key(), Some(&pod.namespace), mirror) {
                    tracing::debug!(node = %self.node, pod = %pod.mirror_name, error = %e, "creating mirror pod");
                    continue;
                }
            }
            let status = pod_status(pod, now, &broken);
            let current_rv = current
                .as_deref()
                .filter(|_| ours)
                .and_then(|m| m.pointer("/metadata/resourceVersion"))
                .and_then(Value::as_str);
            if let (Some(rv), Some((reported_rv, reported))) = (current_rv, &pod.reported)
                && rv == reported_rv
                && *reported == status
            {
                continue;
            }
            let result = self.store.modify(
                &pods_key(),
                Some(&pod.namespace),
                &pod.mirror_name,
                Subresource::Status,
                |obj| {
                    apply_status(obj, &status);
                },
            );
            match result {
                Ok(written) => {
                    let rv = written
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    pod.reported = Some((rv.to_string(), status));
                }
                Err(e) => {
                    tracing::debug!(node = %self.node, pod = %pod.mirror_name, error = %e, "updating mirror pod status")
                }
            }
        }
        // Mirror pods of this node with no local pod (the node was not reporting when the file
        // went away) are deleted.
        if state.next_sweep.is_some_and(|at| at > now) {
            return;
        }
        state.next_sweep = Some(now + SWEEP_EVERY);
        if let Ok((mirrors, _)) =
            self.store
                .list(&pods_key(), None, &node_mirror_selector(&self.node))
        {
            for m in mirrors {
                let ns = m
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let name = m
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let known = state
                    .pods
                    .values()
                    .any(|p| p.namespace == ns && p.mirror_name == name);
                let is_mirror = m
                    .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
                    .is_some();
                if is_mirror && !known {
                    let _ = self.store.delete(&pods_key(), Some(ns), name, None);
                }
            }
        }
    }

    fn delete_mirror(&self, pod: &LocalPod) {
        match self
            .store
            .delete(&pods_key(), Some(&pod.namespace), &pod.mirror_name, None)
        {
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => {
                tracing::debug!(node = %self.node, pod = %pod.mirror_name, error = %e, "deleting mirror pod")
            }
        }
    }
}

fn node_mirror_selector(node: &str) -> super::selector::Selectors {
    // A node name is a DNS subdomain: it cannot break the selector syntax.
    super::selector::Selectors::parse(None, Some(&format!("spec.nodeName={node}")))
        .unwrap_or_default()
}

/// Parse a manifest file as kubelet would: a `v1 Pod` with a name and at least one container.
fn parse_manifest(bytes: &[u8], file: &str, node: &str) -> Option<ParsedManifest> {
    let text = std::str::from_utf8(bytes).ok()?;
    let manifest: Value = match serde_saphyr::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(node, file, error = %e, "simulated kubelet: unreadable manifest skipped");
            return None;
        }
    };
    let kind_ok = manifest.get("kind").and_then(Value::as_str) == Some("Pod")
        && manifest.get("apiVersion").and_then(Value::as_str) == Some("v1");
    let name = manifest
        .pointer("/metadata/name")
        .and_then(Value::as_str)?
        .to_string();
    let has_containers = manifest
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .is_some_and(|c| !c.is_empty());
    if !kind_ok || name.is_empty() || !has_containers {
        tracing::debug!(
            node,
            file,
            "simulated kubelet: not a valid static pod manifest, skipped"
        );
        return None;
    }
    let namespace = manifest
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    let hash: String = digest::digest(&digest::SHA256, bytes).as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(ParsedManifest {
        key: (namespace, name),
        hash,
        manifest,
    })
}

fn mirror_pod(node: &str, pod: &LocalPod) -> Value {
    let m = &pod.manifest;
    let mut annotations = m
        .pointer("/metadata/annotations")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(a) = annotations.as_object_mut() {
        a.insert("kubernetes.io/config.source".into(), json!("file"));
        a.insert("kubernetes.io/config.mirror".into(), json!(pod.config_hash));
        a.insert("kubernetes.io/config.hash".into(), json!(pod.config_hash));
        a.insert("kubernetes.io/config.seen".into(), json!(now_rfc3339()));
    }
    let mut spec = m.get("spec").cloned().unwrap_or_else(|| json!({}));
    spec["nodeName"] = json!(node);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.mirror_name,
            "namespace": pod.namespace,
            "labels": m.pointer("/metadata/labels").cloned().unwrap_or_else(|| json!({})),
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "controller": true,
                                 "uid": format!("node-{node}")}],
        },
        "spec": spec,
    })
}

fn containers(manifest: &Value) -> Vec<(String, String)> {
    manifest
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or_default().to_string(),
                        c["image"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The status kubelet reports for a local pod at `now`: (phase, ready, container statuses).
fn pod_status(pod: &LocalPod, now: Instant, broken: &HashSet<String>) -> Value {
    let cs = containers(&pod.manifest);
    let is_broken = cs.iter().any(|(_, image)| broken.contains(image));
    let started = now >= pod.ready_at;
    let ready = started && !is_broken && !pod.killed;
    let statuses: Vec<Value> = cs
        .iter()
        .map(|(name, image)| {
            let state = if pod.killed {
                json!({"terminated": {"exitCode": 0, "reason": "Completed"}})
            } else if !started {
                json!({"waiting": {"reason": "ContainerCreating"}})
            } else if broken.contains(image) {
                json!({"waiting": {"reason": "CrashLoopBackOff",
                                   "message": format!("back-off restarting failed container {name}")}})
            } else {
                json!({"running": {"startedAt": now_rfc3339()}})
            };
            json!({"name": name, "image": image, "imageID": format!("sim://{image}"), "ready": ready,
                   "restartCount": if started && broken.contains(image) { 1 } else { 0 },
                   "started": ready, "state": state})
        })
        .collect();
    let phase = if started { "Running" } else { "Pending" };
    let reason = if is_broken && started {
        Some("ContainersNotReady")
    } else {
        None
    };
    json!({
        "phase": phase,
        "conditions": [
            condition("PodScheduled", true, None),
            condition("Initialized", true, None),
            condition("ContainersReady", ready, reason),
            condition("Ready", ready, reason),
        ],
        "containerStatuses": statuses,
        "qosClass": "BestEffort",
    })
}

fn condition(kind: &str, ok: bool, reason: Option<&str>) -> Value {
    let mut c = json!({"type": kind, "status": if ok { "True" } else { "False" }});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    c
}

/// Set kubelet's part of a pod status, keeping conditions kubelet does not own (such as
/// `PodNeedUpgrade`) as the real kubelet does. Transition times change only with the status.
fn apply_status(obj: &mut Value, status: &Value) {
    let conditions: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    let current = obj.get("status").cloned().unwrap_or_else(|| json!({}));
    let mut next = status.clone();
    next["conditions"] = current
        .get("conditions")
        .cloned()
        .unwrap_or_else(|| json!([]));
    // Keep fields kubelet set once (start time, IPs) stable.
    for field in ["startTime", "podIP", "hostIP"] {
        if let Some(v) = current.get(field) {
            next[field] = v.clone();
        }
    }
    if next.get("startTime").is_none() {
        next["startTime"] = json!(now_rfc3339());
    }
    obj["status"] = next;
    merge_conditions(obj, &conditions);
    // Running containers keep their original start time.
    if let (Some(old), Some(new)) = (
        current.get("containerStatuses").and_then(Value::as_array),
        obj.pointer_mut("/status/containerStatuses")
            .and_then(Value::as_array_mut),
    ) {
        for (n, o) in new.iter_mut().zip(old) {
            if let (Some(o), Some(slot)) = (
                o.pointer("/state/running/startedAt"),
                n.pointer_mut("/state/running/startedAt"),
            ) {
                *slot = o.clone();
            }
        }
    }
}

/// Merge conditions by type into `obj.status.conditions`, stamping `lastTransitionTime` when
/// a condition's status changes.
fn merge_conditions(obj: &mut Value, updates: &[Value]) {
    if !obj["status"].is_object() {
        obj["status"] = json!({});
    }
    if !obj["status"]["conditions"].is_array() {
        obj["status"]["conditions"] = json!([]);
    }
    let Some(list) = obj["status"]["conditions"].as_array_mut() else {
        return;
    };
    for update in updates {
        let mut update = update.clone();
        match list.iter_mut().find(|c| c["type"] == update["type"]) {
            Some(existing) => {
                let time = if existing["status"] == update["status"] {
                    existing.get("lastTransitionTime").cloned()
                } else {
                    None
                };
                update["lastTransitionTime"] = time.unwrap_or_else(|| json!(now_rfc3339()));
                *existing = update;
            }
            None => {
                update["lastTransitionTime"] = json!(now_rfc3339());
                list.push(update);
            }
        }
    }
}

/// The local pod list served on `/pods`.
#[derive(Clone)]
struct LocalPods {
    node: String,
    state: Arc<Mutex<State>>,
    broken: BrokenImages,
}

impl LocalPods {
    fn pod_list(&self, now: Instant) -> Value {
        let broken = self.broken.read().map(|b| b.clone()).unwrap_or_default();
        let state = lock(&self.state);
        let items: Vec<Value> = state
            .pods
            .values()
            .filter(|p| p.appear_at <= now)
            .map(|p| {
                let mut pod = mirror_pod(&self.node, p);
                pod["status"] = pod_status(p, now, &broken);
                pod
            })
            .collect();
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_kubelet_does_not_own_survive_its_status_updates() {
        let mut pod = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "PodNeedUpgrade", "status": "True", "reason": "UpgradeAvailable"}
        ]}});
        let status = json!({"phase": "Running", "conditions": [condition("Ready", false, None)]});
        apply_status(&mut pod, &status);
        let conditions = pod["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 2, "got {conditions:?}");
        assert_eq!(conditions[0]["status"], "False");
        assert_eq!(conditions[1]["type"], "PodNeedUpgrade");
    }

    #[test]
    fn manifests_kubelet_would_not_run_are_skipped() {
        let good = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: nginx\nspec:\n  containers:\n  - name: web\n    image: nginx:1.19.1\n";
        let parsed = parse_manifest(good, "nginx.yaml", "n1").expect("a valid manifest parses");
        assert_eq!(parsed.key, ("default".to_string(), "nginx".to_string()));
        assert!(
            parse_manifest(
                b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec: {}\n",
                "x.yaml",
                "n1"
            )
            .is_none()
        );
        assert!(parse_manifest(b"{{{", "bad.yaml", "n1").is_none());
        let other = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: nginx\nspec:\n  containers:\n  - name: web\n    image: nginx:1.19.2\n";
        assert_ne!(
            parse_manifest(other, "nginx.yaml", "n1").unwrap().hash,
            parsed.hash
        );
    }
}
