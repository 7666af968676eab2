//! The three patch formats the API server accepts for JSON bodies.
//!
//! Strategic merge patch is implemented for what matters here: maps merge, lists of objects
//! with a known merge key (pod `conditions` by `type`, containers by `name`, ...) merge by that
//! key, `$patch: delete` removes a list item, other lists are replaced. This is what keeps
//! kubelet's Ready condition when another writer sets `PodNeedUpgrade`.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json` (RFC 7386)
    Merge,
    /// `application/json-patch+json` (RFC 6902)
    Json,
    /// `application/strategic-merge-patch+json`
    Strategic,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<PatchKind> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("the patch is not valid JSON: {0}")]
    Syntax(#[from] serde_json::Error),
    #[error("applying the JSON patch: {0}")]
    Json(#[from] json_patch::PatchError),
    #[error("the patch must be a JSON object")]
    NotAnObject,
}

/// Apply a patch body to a copy of `target`.
pub fn apply(kind: PatchKind, target: &Value, body: &[u8]) -> Result<Value, PatchError> {
    let mut doc = target.clone();
    match kind {
        PatchKind::Merge => {
            let patch: Value = serde_json::from_slice(body)?;
            if !patch.is_object() {
                return Err(PatchError::NotAnObject);
            }
            json_patch::merge(&mut doc, &patch);
        }
        PatchKind::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body)?;
            json_patch::patch(&mut doc, &patch)?;
        }
        PatchKind::Strategic => {
            let patch: Value = serde_json::from_slice(body)?;
            let Value::Object(patch) = patch else {
                return Err(PatchError::NotAnObject);
            };
            strategic_merge_map(&mut doc, &patch);
        }
    }
    Ok(doc)
}

/// The merge key of a list field, by the field's name (Kubernetes' `patchMergeKey` tags for
/// the fields a static pod and its status use).
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "conditions" => "type",
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "containerStatuses"
        | "initContainerStatuses"
        | "ephemeralContainerStatuses" => "name",
        "volumeMounts" => "mountPath",
        "ports" => "containerPort",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        _ => return None,
    })
}

fn strategic_merge_map(doc: &mut Value, patch: &Map<String, Value>) {
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = patch.clone();
        replaced.remove("$patch");
        *doc = Value::Object(replaced);
        return;
    }
    let Some(map) = doc.as_object_mut() else {
        return;
    };
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                map.remove(key);
            }
            Value::Object(sub) => {
                strategic_merge_map(map.entry(key.clone()).or_insert(Value::Null), sub)
            }
            Value::Array(items) => match (merge_key(key), map.get_mut(key)) {
                (Some(mk), Some(Value::Array(existing))) => merge_list(existing, items, mk),
                (Some(mk), _) => {
                    let mut fresh = Vec::new();
                    merge_list(&mut fresh, items, mk);
                    map.insert(key.clone(), Value::Array(fresh));
                }
                (None, _) => {
                    map.insert(key.clone(), value.clone());
                }
            },
            _ => {
                map.insert(key.clone(), value.clone());
            }
        }
    }
}

fn merge_list(existing: &mut Vec<Value>, items: &[Value], key: &str) {
    for item in items {
        let Some(obj) = item.as_object() else {
            existing.push(item.clone());
            continue;
        };
        let id = obj.get(key);
        let position = existing
            .iter()
            .position(|e| id.is_some() && e.get(key) == id);
        let delete = obj.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge_map(&mut existing[i], obj),
            (None, false) => {
                let mut fresh = Value::Null;
                strategic_merge_map(&mut fresh, obj);
                existing.push(fresh);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "PodScheduled", "status": "True"}
        ]}})
    }

    #[test]
    fn strategic_patch_merges_conditions_by_type_and_keeps_kubelets() {
        let patch =
            json!({"status": {"conditions": [{"type": "PodNeedUpgrade", "status": "True"}]}});
        let out = apply(PatchKind::Strategic, &pod(), patch.to_string().as_bytes()).unwrap();
        let types: Vec<_> = out["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].clone())
            .collect();
        assert_eq!(
            types,
            vec![
                json!("Ready"),
                json!("PodScheduled"),
                json!("PodNeedUpgrade")
            ]
        );

        let update = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        let out = apply(PatchKind::Strategic, &out, update.to_string().as_bytes()).unwrap();
        assert_eq!(
            out["status"]["conditions"][0],
            json!({"type": "Ready", "status": "False"})
        );
        assert_eq!(out["status"]["conditions"].as_array().unwrap().len(), 3);
        assert_eq!(out["status"]["phase"], "Running");
    }

    #[test]
    fn merge_patch_replaces_lists_as_rfc7386_says() {
        let patch =
            json!({"status": {"conditions": [{"type": "PodNeedUpgrade", "status": "True"}]}});
        let out = apply(PatchKind::Merge, &pod(), patch.to_string().as_bytes()).unwrap();
        assert_eq!(
            out["status"]["conditions"].as_array().unwrap().len(),
            1,
            "merge patch drops Ready"
        );
    }

    #[test]
    fn strategic_delete_directive_and_null_remove() {
        let patch = json!({"status": {"phase": null, "conditions": [{"type": "Ready", "$patch": "delete"}]}});
        let out = apply(PatchKind::Strategic, &pod(), patch.to_string().as_bytes()).unwrap();
        assert!(out["status"].get("phase").is_none());
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "PodScheduled", "status": "True"}])
        );
    }

    #[test]
    fn json_patch_and_errors() {
        let patch = json!([{"op": "replace", "path": "/status/phase", "value": "Failed"}]);
        let out = apply(PatchKind::Json, &pod(), patch.to_string().as_bytes()).unwrap();
        assert_eq!(out["status"]["phase"], "Failed");
        let bad = json!([{"op": "test", "path": "/status/phase", "value": "Pending"}]);
        assert!(apply(PatchKind::Json, &pod(), bad.to_string().as_bytes()).is_err());
        assert!(apply(PatchKind::Merge, &pod(), b"[1]").is_err());
        assert!(apply(PatchKind::Merge, &pod(), b"{").is_err());
    }
}
