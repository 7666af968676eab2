//! kubectl's node printer.

use serde_json::{Value, json};

use super::cells::{or_none, str_at};

pub(super) fn node_cells(node: &Value, name: Value, age_cell: Value) -> Vec<Value> {
    let conditions = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut status = match conditions
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
    {
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if node.pointer("/spec/unschedulable") == Some(&json!(true)) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| {
                    if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                        (!role.is_empty()).then(|| role.to_string())
                    } else if k == "kubernetes.io/role" {
                        v.as_str().map(str::to_string)
                    } else {
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    roles.dedup();
    let address = |kind: &str| {
        node.pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|a| a["type"] == kind))
            .and_then(|a| a["address"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    vec![
        name,
        json!(status),
        or_none(&roles.join(",")),
        age_cell,
        json!(str_at(node, "/status/nodeInfo/kubeletVersion")),
        or_none(&address("InternalIP")),
        or_none(&address("ExternalIP")),
        json!(if str_at(node, "/status/nodeInfo/osImage").is_empty() {
            "<unknown>"
        } else {
            str_at(node, "/status/nodeInfo/osImage")
        }),
        json!(
            if str_at(node, "/status/nodeInfo/kernelVersion").is_empty() {
                "<unknown>"
            } else {
                str_at(node, "/status/nodeInfo/kernelVersion")
            }
        ),
        json!(
            if str_at(node, "/status/nodeInfo/containerRuntimeVersion").is_empty() {
                "<unknown>"
            } else {
                str_at(node, "/status/nodeInfo/containerRuntimeVersion")
            }
        ),
    ]
}
