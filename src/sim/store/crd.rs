//! CustomResourceDefinitions: a CRD written makes the store serve the resource it defines.

use serde_json::{Value, json};

use super::fields::{meta_str, set_field};
use super::generated::now_rfc3339;
use super::{Store, Subresource};
use crate::sim::admission::crd_rules::SchemaRules;
use crate::sim::error::ApiError;
use crate::sim::resource::{ResourceKey, ResourceType};

impl Store {
    fn set_rules(&self, key: &ResourceKey, rules: Option<SchemaRules>) {
        let mut inner = self.lock();
        match rules {
            Some(r) => inner.rules.insert(key.clone(), std::sync::Arc::new(r)),
            None => inner.rules.remove(key),
        };
    }

    /// A CRD was created or changed: serve (or re-serve) the resource it defines and mark it
    /// Established, as the API server does.
    pub(super) fn crd_written(&self, crd: &Value) -> Result<(), ApiError> {
        let Some(rt) = ResourceType::from_crd(crd) else {
            return Ok(());
        };
        let rules =
            SchemaRules::compile(crd, &rt.version).map_err(|e| ApiError::invalid(&rt, "", &e))?;
        self.set_rules(&rt.key(), rules);
        self.register(rt);
        let name = meta_str(crd, "name").unwrap_or_default().to_string();
        let established = crd
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Established"));
        if established {
            return Ok(());
        }
        let now = now_rfc3339();
        let accepted = crd.pointer("/spec/names").cloned().unwrap_or(Value::Null);
        self.modify(&ResourceKey::crds(), None, &name, Subresource::Status, |obj| {
            set_field(
                obj,
                "status",
                json!({
                    "acceptedNames": accepted,
                    "storedVersions": [crd_storage_version(crd)],
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                         "message": "no conflicts found", "lastTransitionTime": now},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                         "message": "the initial names have been accepted", "lastTransitionTime": now},
                    ],
                }),
            );
        })?;
        Ok(())
    }
}

/// Refuse a CRD whose validation rules do not compile, as the API server does (before it is
/// stored).
pub(super) fn check_crd_rules(crds: &ResourceType, crd: &Value) -> Result<(), ApiError> {
    let Some(rt) = ResourceType::from_crd(crd) else {
        return Ok(());
    };
    let name = meta_str(crd, "name").unwrap_or_default();
    SchemaRules::compile(crd, &rt.version)
        .map(|_| ())
        .map_err(|e| ApiError::invalid(crds, name, &e))
}

fn crd_storage_version(crd: &Value) -> Value {
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v["storage"] == true))
        .map(|v| v["name"].clone())
        .unwrap_or(Value::Null)
}
