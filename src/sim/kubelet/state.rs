//! What a kubelet remembers between ticks: the pods it runs, the replacements and removals in
//! progress, and the manifest files it has already parsed.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::Value;
use tokio::time::Instant;

use super::manifest::ParsedManifest;

/// One static pod as this kubelet runs it.
#[derive(Debug, Clone)]
pub(super) struct LocalPod {
    pub(super) namespace: String,
    /// The mirror pod's name, `<pod name>-<node name>`.
    pub(super) mirror_name: String,
    pub(super) config_hash: String,
    pub(super) manifest: Value,
    /// When the mirror pod should exist.
    pub(super) appear_at: Instant,
    /// When the containers are up (Ready unless the image is broken).
    pub(super) ready_at: Instant,
    /// The containers' `startedAt` (RFC 3339), fixed when the pod is planned, so a status
    /// computed again is equal to the one reported and costs no write.
    pub(super) started_at: String,
    /// Killed (being replaced or removed): never Ready again.
    pub(super) killed: bool,
    /// The mirror pod was seen missing (deleted through the API): recreate at this time.
    pub(super) recreate_at: Option<Instant>,
    /// The status last written and the mirror pod's resourceVersion after that write: while
    /// both are unchanged there is nothing to write.
    pub(super) reported: Option<(String, Value)>,
}

/// What happens to a running pod whose file changed or went away.
#[derive(Debug, Clone)]
pub(super) struct Transition {
    pub(super) kill_at: Instant,
    /// Replace with this version (None: remove).
    pub(super) next: Option<(String, Value)>,
    pub(super) done_at: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileStamp {
    pub(super) inode: u64,
    pub(super) len: u64,
    pub(super) modified: Option<std::time::SystemTime>,
}

#[derive(Default)]
pub(super) struct State {
    /// Keyed by (namespace, pod name in the manifest).
    pub(super) pods: BTreeMap<(String, String), LocalPod>,
    pub(super) transitions: BTreeMap<(String, String), Transition>,
    /// Parsed files by name, re-read only when their stamp changes.
    pub(super) files: BTreeMap<String, (FileStamp, Option<ParsedManifest>)>,
    /// When to look next for mirror pods with no local pod (a list over all pods: too costly
    /// for every tick of hundreds of kubelets).
    pub(super) next_sweep: Option<Instant>,
}

impl State {
    /// The next moment a pod changes by time alone (appears, turns Ready, is killed, replaced,
    /// removed or recreated), if any is to come.
    pub(super) fn next_due(&self, now: Instant) -> Option<Instant> {
        let pods = self
            .pods
            .values()
            .flat_map(|p| [Some(p.appear_at), Some(p.ready_at), p.recreate_at])
            .flatten();
        let transitions = self
            .transitions
            .values()
            .flat_map(|t| [t.kill_at, t.done_at]);
        pods.chain(transitions).filter(|at| *at > now).min()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // State is only replaced whole-field at a time; a panic mid-tick leaves it usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
