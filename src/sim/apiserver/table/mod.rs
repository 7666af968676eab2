//! Server-side printing: `meta.k8s.io/v1 Table` responses, which `kubectl get` asks for.
//!
//! Columns follow the real API server's printers for the types the dev cluster serves (pods,
//! nodes, leases, events, namespaces, CRDs) and a CRD's `additionalPrinterColumns` for custom
//! resources. Ages are rendered by the server, as the real one does (kubectl prints cells as
//! they come).

mod cells;
mod columns;
mod duration;
mod json_path;
mod node_cells;
mod pod_cells;

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value, json};

pub use duration::human_duration;

use crate::sim::resource::ResourceType;
use cells::cells;
use columns::columns;

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
