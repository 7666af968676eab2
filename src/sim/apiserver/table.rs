//! Server-side printing: `meta.k8s.io/v1 Table` responses, which `kubectl get` asks for.
//!
//! Columns follow the real API server's printers for the types the dev cluster serves (pods,
//! nodes, leases, events, namespaces, CRDs) and a CRD's `additionalPrinterColumns` for custom
//! resources. Ages are rendered by the server, as the real one does (kubectl prints cells as
//! they come).

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value, json};

use crate::sim::resource::{PrinterColumn, ResourceType};

/// What a row carries besides its cells (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum IncludeObject {
    None,
    /// `PartialObjectMetadata` (the API server's default).
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

struct Column {
    name: String,
    type_: &'static str,
    format: &'static str,
    description: String,
    priority: i64,
}

fn col(name: &str, type_: &'static str, priority: i64, description: &str) -> Column {
    Column {
        name: name.to_string(),
        type_,
        format: "",
        description: description.to_string(),
        priority,
    }
}

fn name_col() -> Column {
    Column {
        format: "name",
        ..col(
            "Name",
            "string",
            0,
            "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically.",
        )
    }
}

const AGE: &str =
    "CreationTimestamp is a timestamp representing the server time when this object was created.";

/// A `Table` of these objects.
pub(super) fn table(
    rt: &ResourceType,
    objects: &[Arc<Value>],
    rv: &str,
    include: IncludeObject,
) -> Value {
    let columns: Vec<Value> = columns(rt)
        .into_iter()
        .map(|c| {
            json!({"name": c.name, "type": c.type_, "format": c.format,
                   "description": c.description, "priority": c.priority})
        })
        .collect();
    let now = Timestamp::now();
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array(cells(rt, obj, now)));
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row.insert("object".into(), partial_metadata(obj));
                }
                IncludeObject::Object => {
                    row.insert("object".into(), (**obj).clone());
                }
            }
            Value::Object(row)
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// The object as `PartialObjectMetadata`: type meta and metadata only.
pub(super) fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

fn columns(rt: &ResourceType) -> Vec<Column> {
    if !rt.builtin {
        let mut cols = vec![name_col()];
        if rt.printer_columns.is_empty() {
            // A CRD without printer columns gets an Age column, as from the API server.
            cols.push(col("Age", "date", 0, AGE));
        }
        cols.extend(rt.printer_columns.iter().map(|c| Column {
            name: c.name.clone(),
            type_: match c.type_.as_str() {
                "integer" => "integer",
                "number" => "number",
                "boolean" => "boolean",
                "date" => "date",
                _ => "string",
            },
            format: "",
            description: c.description.clone(),
            priority: c.priority,
        }));
        return cols;
    }
    let s = "string";
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => vec![
            name_col(),
            col(
                "Ready",
                s,
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                s,
                0,
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                s,
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            col("Age", s, 0, AGE),
            col(
                "IP",
                s,
                1,
                "podIP address allocated to the pod. Routable at least within the cluster.",
            ),
            col(
                "Node",
                s,
                1,
                "NodeName indicates in which node this pod is scheduled.",
            ),
            col(
                "Nominated Node",
                s,
                1,
                "nominatedNodeName is set only when this pod preempts other pods on the node.",
            ),
            col(
                "Readiness Gates",
                s,
                1,
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        ("", "Node") => vec![
            name_col(),
            col("Status", s, 0, "The status of the node"),
            col("Roles", s, 0, "The roles of the node"),
            col("Age", s, 0, AGE),
            col("Version", s, 0, "Kubelet Version reported by the node."),
            col(
                "Internal-IP",
                s,
                1,
                "List of addresses reachable to the node.",
            ),
            col(
                "External-IP",
                s,
                1,
                "List of addresses reachable to the node.",
            ),
            col(
                "OS-Image",
                s,
                1,
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            ),
            col(
                "Kernel-Version",
                s,
                1,
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            ),
            col(
                "Container-Runtime",
                s,
                1,
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            ),
        ],
        ("coordination.k8s.io", "Lease") => vec![
            name_col(),
            col(
                "Holder",
                s,
                0,
                "holderIdentity contains the identity of the holder of a current lease.",
            ),
            col("Age", s, 0, AGE),
        ],
        ("" | "events.k8s.io", "Event") => vec![
            col(
                "Last Seen",
                s,
                0,
                "The time at which the most recent occurrence of this event was recorded.",
            ),
            col(
                "Type",
                s,
                0,
                "Type of this event (Normal, Warning), new types could be added in the future",
            ),
            col(
                "Reason",
                s,
                0,
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            col("Object", s, 0, "The object that this event is about."),
            col(
                "Subobject",
                s,
                1,
                "The field of the object the event is about.",
            ),
            col("Source", s, 1, "The component reporting this event."),
            col(
                "Message",
                s,
                0,
                "A human-readable description of the status of this operation.",
            ),
            col(
                "First Seen",
                s,
                1,
                "The time at which the event was first recorded.",
            ),
            col(
                "Count",
                s,
                1,
                "The number of times this event has occurred.",
            ),
            Column {
                priority: 1,
                ..name_col()
            },
        ],
        ("", "Namespace") => vec![
            name_col(),
            col("Status", s, 0, "The status of the namespace"),
            col("Age", s, 0, AGE),
        ],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            vec![name_col(), col("Created At", "date", 0, AGE)]
        }
        _ => vec![name_col(), col("Age", s, 0, AGE)],
    }
}

fn cells(rt: &ResourceType, obj: &Value, now: Timestamp) -> Vec<Value> {
    let name = json!(str_at(obj, "/metadata/name"));
    let age_cell = json!(age(obj.pointer("/metadata/creationTimestamp"), now));
    if !rt.builtin {
        let mut cells = vec![name];
        if rt.printer_columns.is_empty() {
            cells.push(age_cell);
        }
        cells.extend(rt.printer_columns.iter().map(|c| custom_cell(c, obj, now)));
        return cells;
    }
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => pod_cells(obj, name, age_cell, now),
        ("", "Node") => node_cells(obj, name, age_cell),
        ("coordination.k8s.io", "Lease") => {
            vec![name, json!(str_at(obj, "/spec/holderIdentity")), age_cell]
        }
        ("", "Event") => {
            let last = ["/series/lastObservedTime", "/lastTimestamp", "/eventTime"]
                .iter()
                .find_map(|p| obj.pointer(p).filter(|v| v.is_string()));
            let first = ["/firstTimestamp", "/eventTime"]
                .iter()
                .find_map(|p| obj.pointer(p).filter(|v| v.is_string()));
            let source = [
                str_at(obj, "/source/component"),
                str_at(obj, "/source/host"),
            ]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
            vec![
                json!(age(last, now)),
                json!(str_at(obj, "/type")),
                json!(str_at(obj, "/reason")),
                json!(involved(obj.get("involvedObject"))),
                json!(str_at(obj, "/involvedObject/fieldPath")),
                json!(source),
                json!(str_at(obj, "/message")),
                json!(age(first, now)),
                json!(obj.pointer("/count").and_then(Value::as_i64).unwrap_or(1)),
                name,
            ]
        }
        ("events.k8s.io", "Event") => {
            let last = [
                "/series/lastObservedTime",
                "/deprecatedLastTimestamp",
                "/eventTime",
            ]
            .iter()
            .find_map(|p| obj.pointer(p).filter(|v| v.is_string()));
            let first = ["/deprecatedFirstTimestamp", "/eventTime"]
                .iter()
                .find_map(|p| obj.pointer(p).filter(|v| v.is_string()));
            vec![
                json!(age(last, now)),
                json!(str_at(obj, "/type")),
                json!(str_at(obj, "/reason")),
                json!(involved(obj.get("regarding"))),
                json!(str_at(obj, "/regarding/fieldPath")),
                json!(str_at(obj, "/reportingController")),
                json!(str_at(obj, "/note")),
                json!(age(first, now)),
                json!(
                    obj.pointer("/deprecatedCount")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                ),
                name,
            ]
        }
        ("", "Namespace") => vec![name, json!(str_at(obj, "/status/phase")), age_cell],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            vec![
                name,
                obj.pointer("/metadata/creationTimestamp")
                    .cloned()
                    .unwrap_or(Value::Null),
            ]
        }
        _ => vec![name, age_cell],
    }
}

fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn or_none(s: &str) -> Value {
    json!(if s.is_empty() { "<none>" } else { s })
}

/// `kind/name`, lowercased kind, as kubectl's event printer shows the involved object.
fn involved(obj: Option<&Value>) -> String {
    let kind = obj
        .and_then(|o| o.get("kind"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = obj
        .and_then(|o| o.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    format!("{}/{name}", kind.to_lowercase())
}

/// The Age cell of a timestamp: `<unknown>` when absent or unparsable.
fn age(ts: Option<&Value>, now: Timestamp) -> String {
    ts.and_then(Value::as_str)
        .and_then(|s| s.parse::<Timestamp>().ok())
        .map(|t| human_duration(now.duration_since(t).as_secs()))
        .unwrap_or_else(|| "<unknown>".to_string())
}

/// Kubernetes' `duration.HumanDuration` (k8s.io/apimachinery/pkg/util/duration), which
/// kubectl's AGE columns use: `45s`, `5m20s`, `3h4m`, `2d3h`, ...
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// A CRD printer column's cell, as the apiextensions server renders it: the first JSONPath
/// result, typed by the column (dates as ages), `null` (kubectl shows `<none>`) when absent.
fn custom_cell(column: &PrinterColumn, obj: &Value, now: Timestamp) -> Value {
    let Some(value) = json_path(obj, &column.json_path).into_iter().next() else {
        return Value::Null;
    };
    match column.type_.as_str() {
        "integer" => value
            .as_i64()
            .or_else(|| value.as_f64().map(|f| f as i64))
            .map_or(Value::Null, |i| json!(i)),
        "number" => value.as_f64().map_or(Value::Null, |f| json!(f)),
        "boolean" => value.as_bool().map_or(Value::Null, |b| json!(b)),
        "date" => match value.as_str() {
            Some(s) => match s.parse::<Timestamp>() {
                Ok(t) => json!(human_duration(now.duration_since(t).as_secs())),
                Err(_) => json!("<invalid>"),
            },
            None => Value::Null,
        },
        _ => match value {
            Value::String(s) => json!(s),
            other => json!(other.to_string()),
        },
    }
}

#[derive(Debug, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    /// `[?(@.key=="value")]`
    Filter(Vec<String>, String),
}

/// Evaluate the simple JSONPaths printer columns use: `.a.b`, `.a[0]`, `.a[*].b`,
/// `.a[?(@.type=="Ready")].status`, optionally wrapped in `{}`.
pub(super) fn json_path<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let Some(steps) = parse_path(path) else {
        return Vec::new();
    };
    let mut current = vec![obj];
    for step in &steps {
        let mut next = Vec::new();
        for v in current {
            match step {
                Step::Field(f) => next.extend(v.get(f.as_str())),
                Step::Index(i) => next.extend(v.get(*i)),
                Step::All => match v {
                    Value::Array(items) => next.extend(items.iter()),
                    Value::Object(map) => next.extend(map.values()),
                    _ => {}
                },
                Step::Filter(key, want) => {
                    for item in v.as_array().into_iter().flatten() {
                        let mut field = Some(item);
                        for k in key {
                            field = field.and_then(|f| f.get(k.as_str()));
                        }
                        let matches = match field {
                            Some(Value::String(s)) => s == want,
                            Some(other) => other.to_string().as_str() == want.as_str(),
                            None => false,
                        };
                        if matches {
                            next.push(item);
                        }
                    }
                }
            }
        }
        current = next;
    }
    current
}

fn parse_path(path: &str) -> Option<Vec<Step>> {
    let path = path.trim();
    let path = path
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(path);
    let mut steps = Vec::new();
    let mut rest = path.strip_prefix('$').unwrap_or(path);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end > 0 {
                steps.push(Step::Field(r[..end].to_string()));
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = r[..end].trim();
            rest = &r[end + 1..];
            if inner == "*" {
                steps.push(Step::All);
            } else if let Ok(i) = inner.parse() {
                steps.push(Step::Index(i));
            } else if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')'))
            {
                let (lhs, rhs) = filter.split_once("==")?;
                let key = lhs
                    .trim()
                    .strip_prefix("@.")?
                    .split('.')
                    .map(str::to_string)
                    .collect();
                let want = rhs
                    .trim()
                    .trim_matches(|c| c == '"' || c == '\'')
                    .to_string();
                steps.push(Step::Filter(key, want));
            } else {
                let quoted = inner.trim_matches(|c| c == '"' || c == '\'');
                steps.push(Step::Field(quoted.to_string()));
            }
        } else {
            // A path not starting with `.`: treat the first segment as a field.
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            steps.push(Step::Field(rest[..end].to_string()));
            rest = &rest[end..];
        }
    }
    Some(steps)
}

/// kubectl's pod printer: READY, STATUS (the same reason kubectl derives), RESTARTS, AGE, and
/// the wide columns.
fn pod_cells(pod: &Value, name: Value, age_cell: Value, now: Timestamp) -> Vec<Value> {
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut reason = str_at(pod, "/status/phase").to_string();
    if let Some(r) = pod
        .pointer("/status/reason")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        reason = r.to_string();
    }
    let mut restarts = 0i64;
    let mut last_restart: Option<Timestamp> = None;
    let mut note_restart = |status: &Value, restarts: &mut i64| {
        *restarts += status["restartCount"].as_i64().unwrap_or(0);
        if let Some(t) = status
            .pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str)
            && let Ok(t) = t.parse::<Timestamp>()
            && last_restart.is_none_or(|l| t > l)
        {
            last_restart = Some(t);
        }
    };
    let exit_reason = |term: &Value| -> String {
        match term["reason"].as_str().filter(|r| !r.is_empty()) {
            Some(r) => r.to_string(),
            None => match term["signal"].as_i64().filter(|s| *s != 0) {
                Some(sig) => format!("Signal:{sig}"),
                None => format!("ExitCode:{}", term["exitCode"].as_i64().unwrap_or(0)),
            },
        }
    };

    let init_statuses = pod
        .pointer("/status/initContainerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let init_total = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut initializing = false;
    for (i, status) in init_statuses.iter().enumerate() {
        note_restart(status, &mut restarts);
        let term = status.pointer("/state/terminated");
        if term.is_some_and(|t| t["exitCode"].as_i64() == Some(0)) {
            continue;
        }
        reason = if let Some(term) = term {
            format!("Init:{}", exit_reason(term))
        } else if let Some(w) = status
            .pointer("/state/waiting/reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty() && *r != "PodInitializing")
        {
            format!("Init:{w}")
        } else {
            format!("Init:{i}/{init_total}")
        };
        initializing = true;
        break;
    }

    let mut ready = 0;
    if !initializing {
        restarts = 0;
        let mut has_running = false;
        let statuses = pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for status in statuses.iter().rev() {
            note_restart(status, &mut restarts);
            if let Some(w) = status
                .pointer("/state/waiting/reason")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
            {
                reason = w.to_string();
            } else if let Some(term) = status.pointer("/state/terminated") {
                reason = exit_reason(term);
            } else if status["ready"] == true && status.pointer("/state/running").is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = pod
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
            reason = if pod_ready { "Running" } else { "NotReady" }.to_string();
        }
    }
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        reason = if str_at(pod, "/status/reason") == "NodeLost" {
            "Unknown"
        } else {
            "Terminating"
        }
        .to_string();
    }
    let restarts_cell = match last_restart {
        Some(t) => json!(format!(
            "{restarts} ({} ago)",
            human_duration(now.duration_since(t).as_secs())
        )),
        None => json!(restarts),
    };
    let gates = pod
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let gates_cell = if gates.is_empty() {
        json!("<none>")
    } else {
        let conditions = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let true_gates = gates
            .iter()
            .filter(|g| {
                conditions
                    .iter()
                    .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
            })
            .count();
        json!(format!("{true_gates}/{}", gates.len()))
    };
    vec![
        name,
        json!(format!("{ready}/{containers}")),
        json!(reason),
        restarts_cell,
        age_cell,
        or_none(str_at(pod, "/status/podIP")),
        or_none(str_at(pod, "/spec/nodeName")),
        or_none(str_at(pod, "/status/nominatedNodeName")),
        gates_cell,
    ]
}

fn node_cells(node: &Value, name: Value, age_cell: Value) -> Vec<Value> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_read_like_kubectl() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (320, "5m20s"),
            (600, "10m"),
            (11_040, "3h4m"),
            (36_000, "10h"),
            (2 * 86_400 + 3 * 3600, "2d3h"),
            (30 * 86_400, "30d"),
            (-1, "0s"),
            (-5, "<invalid>"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
    }

    #[test]
    fn json_paths_printer_columns_use() {
        let obj = json!({"status": {"totalNumber": 3, "conditions": [
            {"type": "Ready", "status": "True"}, {"type": "Other", "status": "False"}]},
            "spec": {"items": [{"n": 1}, {"n": 2}]}});
        assert_eq!(json_path(&obj, ".status.totalNumber"), vec![&json!(3)]);
        assert_eq!(
            json_path(&obj, "{.status.conditions[?(@.type==\"Other\")].status}"),
            vec![&json!("False")]
        );
        assert_eq!(json_path(&obj, ".spec.items[1].n"), vec![&json!(2)]);
        assert_eq!(
            json_path(&obj, ".spec.items[*].n"),
            vec![&json!(1), &json!(2)]
        );
        assert!(json_path(&obj, ".status.missing").is_empty());
    }

    #[test]
    fn pod_status_cells() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "containerStatuses": [
                {"name": "c", "ready": true, "restartCount": 0, "state": {"running": {}}}]}});
        let cells = pod_cells(&pod, json!("p"), json!("1m"), Timestamp::now());
        assert_eq!(cells[1..4], [json!("1/1"), json!("Running"), json!(0)]);
        assert_eq!(cells[5..7], [json!("10.0.0.1"), json!("n1")]);
    }
}
