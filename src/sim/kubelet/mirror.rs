//! The mirror pod kubelet reports for a local pod: the object, and its status at a given time.

use std::collections::HashSet;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::conditions::condition;
use super::state::LocalPod;
use crate::sim::store::now_rfc3339;

pub(super) fn mirror_pod(node: &str, pod: &LocalPod) -> Value {
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
pub(super) fn pod_status(pod: &LocalPod, now: Instant, broken: &HashSet<String>) -> Value {
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
                json!({"running": {"startedAt": pod.started_at}})
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
