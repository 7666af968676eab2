//! The Node object a simulated kubelet registers, and its Ready condition.

use serde_json::{Value, json};

use super::conditions::merge_conditions;
use crate::sim::resource::ResourceKey;
use crate::sim::store::{Store, Subresource, now_rfc3339};

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

pub(super) fn set_node_ready(store: &Store, node: &str, ready: bool) {
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
