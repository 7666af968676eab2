//! Pod and Node conditions as kubelet writes them: its own conditions merged by type, the
//! conditions it does not own kept.

use serde_json::{Value, json};

use crate::sim::store::now_rfc3339;

pub(super) fn condition(kind: &str, ok: bool, reason: Option<&str>) -> Value {
    let mut c = json!({"type": kind, "status": if ok { "True" } else { "False" }});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    c
}

/// Set kubelet's part of a pod status, keeping conditions kubelet does not own (such as
/// `PodNeedUpgrade`) as the real kubelet does. Transition times change only with the status.
pub(super) fn apply_status(obj: &mut Value, status: &Value) {
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
pub(super) fn merge_conditions(obj: &mut Value, updates: &[Value]) {
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
}
