//! The kubelet's own pod list, served on `/pods` as kubelet's read-only endpoint serves it.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::time::Instant;

use super::BrokenImages;
use super::mirror::{mirror_pod, pod_status};
use super::state::{State, lock};

/// The local pod list served on `/pods`.
#[derive(Clone)]
pub(super) struct LocalPods {
    pub(super) node: String,
    pub(super) state: Arc<Mutex<State>>,
    pub(super) broken: BrokenImages,
}

impl LocalPods {
    pub(super) fn pod_list(&self, now: Instant) -> Value {
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
