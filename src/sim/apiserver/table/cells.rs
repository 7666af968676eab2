//! The cells of one row: the built-in printers' cells for the simpler types, and CRD printer
//! columns' cells.

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::duration::human_duration;
use super::json_path::json_path;
use super::node_cells::node_cells;
use super::pod_cells::pod_cells;
use crate::sim::resource::{PrinterColumn, ResourceType};

pub(super) fn cells(rt: &ResourceType, obj: &Value, now: Timestamp) -> Vec<Value> {
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

pub(super) fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub(super) fn or_none(s: &str) -> Value {
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
