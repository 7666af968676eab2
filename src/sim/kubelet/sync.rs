//! The directory-to-API-server loop of one kubelet: read the manifest files, plan and apply
//! the pod changes they ask for, and make the mirror pods match.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::conditions::apply_status;
use super::manifest::{ParsedManifest, parse_manifest};
use super::mirror::{mirror_pod, pod_status};
use super::state::{FileStamp, LocalPod, State, Transition, lock};
use super::{BrokenImages, Timings, pods_key};
use crate::sim::runtime::ImageStore;
use crate::sim::selector::Selectors;
use crate::sim::store::{Store, Subresource, rfc3339_after};

/// Far enough in the future to never come in a test or a demo.
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// The images of a pod manifest (init containers and containers).
fn manifest_images(manifest: &Value) -> Vec<String> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|group| manifest.pointer(&format!("/spec/{group}"))?.as_array())
        .flatten()
        .filter_map(|c| c["image"].as_str().map(str::to_string))
        .collect()
}

/// How often a kubelet looks for orphaned mirror pods when nothing asks for it sooner.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The directory-to-API-server loop of one kubelet.
pub(super) struct Sync {
    pub(super) node: String,
    pub(super) dir: PathBuf,
    pub(super) timings: Timings,
    pub(super) broken: BrokenImages,
    /// The node's container runtime: a pod starts once its images are there.
    pub(super) images: Arc<ImageStore>,
    pub(super) store: Arc<Store>,
    pub(super) state: Arc<Mutex<State>>,
    pub(super) reporting: Arc<AtomicBool>,
}

impl Sync {
    pub(super) fn once(&self, now: Instant) {
        let desired = self.read_dir();
        let mut state = lock(&self.state);
        // A directory that cannot be read (say, out of file descriptors) changes nothing, as
        // kubelet skips the update: it is not a directory whose files were all removed.
        if let Some(desired) = &desired {
            self.plan(&mut state, desired, now);
        }
        self.advance(&mut state, now);
        if self.reporting.load(Ordering::SeqCst) {
            self.report(&mut state, now);
        }
    }

    /// The pods the directory asks for, by (namespace, name); None when it (or one of its
    /// files) could not be read this time.
    fn read_dir(&self) -> Option<BTreeMap<(String, String), (ParsedManifest, bool)>> {
        let mut desired = BTreeMap::new();
        let entries = std::fs::read_dir(&self.dir).ok()?;
        let mut state = lock(&self.state);
        let mut seen = HashSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // kubelet skips hidden files: that is what makes the agent's temp files invisible.
            if name.starts_with('.') {
                continue;
            }
            let meta = entry.metadata().ok()?;
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
                    // Unreadable now is not "does not parse": it is not remembered as such.
                    let bytes = std::fs::read(entry.path()).ok()?;
                    let parsed = parse_manifest(&bytes, &name, &self.node);
                    state.files.insert(name.clone(), (stamp, parsed.clone()));
                    parsed
                }
            };
            if let Some(p) = parsed {
                desired.insert(p.key.clone(), (p, renamed || previous.is_none()));
            }
        }
        state.files.retain(|name, _| seen.contains(name));
        Some(desired)
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
        // Images not on the node are pulled now (the pod waits, not Ready); one no registry
        // has keeps it waiting for good (ErrImagePull).
        let mut started_at = appear_at;
        for image in manifest_images(&parsed.manifest) {
            started_at = match self.images.pull(&image, now) {
                Ok(at) => started_at.max(at),
                Err(_) => now + NEVER,
            };
        }
        LocalPod {
            namespace: parsed.key.0.clone(),
            mirror_name: format!("{}-{}", parsed.key.1, self.node),
            config_hash: parsed.hash.clone(),
            manifest: parsed.manifest.clone(),
            appear_at,
            ready_at: started_at + self.timings.ready,
            started_at: rfc3339_after(started_at.saturating_duration_since(now)),
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
                        &(),
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
                if let Err(e) = self
                    .store
                    .create(&pods_key(), Some(&pod.namespace), mirror, &())
                {
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
                    let _ = self.store.delete(&pods_key(), Some(ns), name, None, &());
                }
            }
        }
    }

    fn delete_mirror(&self, pod: &LocalPod) {
        match self.store.delete(
            &pods_key(),
            Some(&pod.namespace),
            &pod.mirror_name,
            None,
            &(),
        ) {
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => {
                tracing::debug!(node = %self.node, pod = %pod.mirror_name, error = %e, "deleting mirror pod")
            }
        }
    }
}

fn node_mirror_selector(node: &str) -> Selectors {
    // A node name is a DNS subdomain: it cannot break the selector syntax.
    Selectors::parse(None, Some(&format!("spec.nodeName={node}"))).unwrap_or_default()
}
