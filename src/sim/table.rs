//! Discovery documents and `meta.k8s.io/v1 Table` output, so kubectl works against the dev
//! cluster: `kubectl get` asks for a Table and prints its columns.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::resource::{PrinterColumn, ResourceType};

/// `/apis`: every group with its served version.
pub fn group_list(types: &[ResourceType]) -> Value {
    let mut groups: BTreeMap<&str, &str> = BTreeMap::new();
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        groups.insert(&t.group, &t.version);
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/api/v1` or `/apis/{group}/{version}`: the resources served there.
pub fn resource_list(group: &str, version: &str, types: &[ResourceType]) -> Value {
    let mut resources = Vec::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        resources.push(json!({
            "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            "shortNames": t.short_names, "categories": t.categories,
        }));
        if t.has_status {
            resources.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                                  "kind": t.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn column(name: &str, type_: &str, priority: i64, description: &str) -> PrinterColumn {
    PrinterColumn {
        name: name.into(),
        type_: type_.into(),
        json_path: String::new(),
        description: description.into(),
        priority,
    }
}

/// A Table of objects of one type, with the columns kubectl shows for it.
pub fn table(rt: &ResourceType, objects: &[Arc<Value>], rv: u64, include: &str) -> Value {
    let columns = columns(rt);
    // Events list by time; their name is shown only with -o wide, as the API server does.
    let name_priority = if rt.kind == "Event" { 1 } else { 0 };
    let mut defs = vec![json!({"name": "Name", "type": "string", "format": "name",
                               "description": "Name of the object", "priority": name_priority})];
    defs.extend(columns.iter().map(|c| {
        json!({"name": c.name, "type": if c.type_ == "date" { "string" } else { c.type_.as_str() },
               "format": "", "description": c.description, "priority": c.priority})
    }));
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut cells = vec![obj.pointer("/metadata/name").cloned().unwrap_or(Value::Null)];
            cells.extend(columns.iter().map(|c| cell(rt, c, obj)));
            let object = match include {
                "None" => Value::Null,
                "Object" => (**obj).clone(),
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()},
           "columnDefinitions": defs, "rows": rows})
}

fn columns(rt: &ResourceType) -> Vec<PrinterColumn> {
    if !rt.printer_columns.is_empty() {
        return rt.printer_columns.clone();
    }
    let c = column;
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => vec![
            c("Ready", "string", 0, "containers ready"),
            c("Status", "string", 0, "pod status"),
            c("Restarts", "string", 0, "container restarts"),
            c("Age", "date", 0, "age"),
            c("IP", "string", 1, "pod IP"),
            c("Node", "string", 1, "node"),
            c("Nominated Node", "string", 1, "nominated node"),
            c("Readiness Gates", "string", 1, "readiness gates"),
        ],
        ("", "Node") => vec![
            c("Status", "string", 0, "node status"),
            c("Roles", "string", 0, "roles"),
            c("Age", "date", 0, "age"),
            c("Version", "string", 0, "kubelet version"),
        ],
        ("", "Namespace") => vec![
            c("Status", "string", 0, "phase"),
            c("Age", "date", 0, "age"),
        ],
        ("", "Event") => vec![
            c("Last Seen", "string", 0, "last seen"),
            c("Type", "string", 0, "type"),
            c("Reason", "string", 0, "reason"),
            c("Object", "string", 0, "object"),
            c("Message", "string", 0, "message"),
        ],
        ("coordination.k8s.io", "Lease") => vec![
            c("Holder", "string", 0, "holder"),
            c("Age", "date", 0, "age"),
        ],
        _ => vec![c("Age", "date", 0, "age")],
    }
}

fn cell(rt: &ResourceType, c: &PrinterColumn, obj: &Value) -> Value {
    let s = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let age_at = |p: &str| {
        json!(
            obj.pointer(p)
                .and_then(Value::as_str)
                .map(age)
                .unwrap_or_else(|| "<unknown>".into())
        )
    };
    if !rt.printer_columns.is_empty() {
        let pointer = c.json_path.trim_start_matches('.').replace('.', "/");
        let v = obj
            .pointer(&format!("/{pointer}"))
            .cloned()
            .unwrap_or(Value::Null);
        return match (c.type_.as_str(), &v) {
            ("date", Value::String(t)) => json!(age(t)),
            (_, Value::Null) if c.type_ == "integer" => json!(0),
            _ => v,
        };
    }
    let none = || json!("<none>");
    match c.name.as_str() {
        "Age" => age_at("/metadata/creationTimestamp"),
        "Ready" => {
            let statuses = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array);
            let total = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = statuses.map_or(0, |s| s.iter().filter(|c| c["ready"] == true).count());
            json!(format!("{ready}/{total}"))
        }
        "Status" if rt.kind == "Pod" => {
            let waiting = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .and_then(|cs| {
                    cs.iter()
                        .find_map(|c| c.pointer("/state/waiting/reason").and_then(Value::as_str))
                });
            let phase = s("/status/phase");
            json!(waiting.map(str::to_string).unwrap_or(if phase.is_empty() {
                "Pending".into()
            } else {
                phase
            }))
        }
        "Status" if rt.kind == "Node" => {
            let ready = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .is_some_and(|c| c["status"] == "True");
            json!(if ready { "Ready" } else { "NotReady" })
        }
        "Status" => json!(s("/status/phase")),
        "Restarts" => {
            let n: i64 = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .map_or(0, |cs| {
                    cs.iter().filter_map(|c| c["restartCount"].as_i64()).sum()
                });
            json!(n.to_string())
        }
        "IP" => obj.pointer("/status/podIP").cloned().unwrap_or_else(none),
        "Node" => obj.pointer("/spec/nodeName").cloned().unwrap_or_else(none),
        "Nominated Node" | "Readiness Gates" | "Roles" => none(),
        "Version" => json!(s("/status/nodeInfo/kubeletVersion")),
        "Holder" => obj
            .pointer("/spec/holderIdentity")
            .cloned()
            .unwrap_or(json!("")),
        "Last Seen" => {
            let t = [
                s("/lastTimestamp"),
                s("/eventTime"),
                s("/metadata/creationTimestamp"),
            ]
            .into_iter()
            .find(|t| !t.is_empty());
            json!(t.map(|t| age(&t)).unwrap_or_default())
        }
        "Type" => json!(s("/type")),
        "Reason" => json!(s("/reason")),
        "Object" => json!(format!(
            "{}/{}",
            s("/involvedObject/kind").to_lowercase(),
            s("/involvedObject/name")
        )),
        "Message" => json!(s("/message")),
        _ => Value::Null,
    }
}

/// The age of an RFC 3339 timestamp, as kubectl prints it (`45s`, `5m20s`, `3h4m`, `2d`).
pub fn age(timestamp: &str) -> String {
    let Ok(t) = timestamp.parse::<k8s_openapi::jiff::Timestamp>() else {
        return "<invalid>".into();
    };
    let secs = k8s_openapi::jiff::Timestamp::now()
        .as_second()
        .saturating_sub(t.as_second())
        .max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{m}m{}s", s % 60),
        s if s < 3 * 3600 => format!("{m}m"),
        s if s < 8 * 3600 => format!("{h}h{}m", m % 60),
        s if s < 48 * 3600 => format!("{h}h"),
        s if s < 8 * 86_400 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}
