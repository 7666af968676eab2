//! Writes: create, update, patch, modify and delete, with the API server's rules for names,
//! resourceVersions, generations, server-owned metadata and the status subresource.

use std::sync::Arc;

use serde_json::{Value, json};

use super::crd::check_crd_rules;
use super::fields::{meta_str, metadata_mut, set_field, set_type_meta, spec_of};
use super::generated::{new_uid, now_rfc3339, random_suffix};
use super::{ChangeKind, Inner, Store, Subresource};
use crate::sim::admission::{self, Admit, Operation, Proposed};
use crate::sim::error::ApiError;
use crate::sim::patch::{self, PatchKind};
use crate::sim::resource::{ResourceKey, ResourceType};

impl Store {
    /// POST, with `admit` deciding on the object as it would be stored (`&()` admits all:
    /// the dev cluster's own writes).
    pub fn create(
        &self,
        key: &ResourceKey,
        ns: Option<&str>,
        mut obj: Value,
        admit: &dyn Admit,
    ) -> Result<Arc<Value>, ApiError> {
        let mut inner = self.lock();
        let rt = inner.served(key)?.clone();
        let ns = rt.scope(ns)?;
        let meta = metadata_mut(&mut obj)?;
        match meta.get("namespace").and_then(Value::as_str) {
            Some(body_ns) if rt.namespaced && !body_ns.is_empty() && body_ns != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {}
        }
        // The prefix, when the name is generated.
        let mut generate = None;
        let mut name = match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    generate = Some(prefix.to_string());
                    format!("{prefix}{}", random_suffix())
                }
                _ => {
                    return Err(ApiError::invalid(
                        &rt,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            },
        };
        validate_name(&rt, &name)?;
        if rt.namespaced && !inner.namespace_exists(&ns) {
            let ns_type = inner.types[&ResourceKey::core("namespaces")].clone();
            return Err(ApiError::not_found(&ns_type, &ns));
        }
        let taken = |n: &str| inner.objects[key].contains_key(&(ns.clone(), n.to_string()));
        if taken(&name) {
            match &generate {
                Some(prefix) => {
                    name = generate_again(prefix, taken, random_suffix)
                        .ok_or_else(|| ApiError::already_exists(&rt, &name))?;
                }
                None => return Err(ApiError::already_exists(&rt, &name)),
            }
        }
        let rv = inner.rv + 1;
        let meta = metadata_mut(&mut obj)?;
        meta.insert("name".into(), json!(name));
        if rt.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("generation".into(), json!(1));
        meta.remove("deletionTimestamp");
        set_type_meta(&rt, &mut obj);
        if rt.has_status {
            reset_status_on_create(&rt, &mut obj);
        }
        if rt.is_crd() {
            check_crd_rules(&rt, &obj)?;
        }
        inner.check_rules(&rt, &name, &obj, None)?;
        admit.admit(
            &rt,
            &Proposed {
                operation: Operation::Create,
                subresource: None,
                namespace: rt.namespaced.then_some(ns.as_str()),
                name: &name,
                object: Some(&obj),
                old_object: None,
            },
        )?;
        let obj = Arc::new(obj);
        inner.commit(rv, key, (ns, name), ChangeKind::Added, None, obj.clone());
        drop(inner);
        if rt.is_crd() {
            self.crd_written(&obj)?;
        }
        Ok(obj)
    }

    /// PUT: replace an object, with `admit` deciding on it as it would be stored. A
    /// `metadata.resourceVersion` that is not current is a conflict.
    pub fn update(
        &self,
        key: &ResourceKey,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        sub: Subresource,
        admit: &dyn Admit,
    ) -> Result<Arc<Value>, ApiError> {
        self.write(key, ns, name, sub, admit, |_rt, _current| Ok(obj))
    }

    /// PATCH: apply a JSON merge, JSON, or strategic merge patch to the current object, with
    /// `admit` deciding on the patched object.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        key: &ResourceKey,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        sub: Subresource,
        admit: &dyn Admit,
    ) -> Result<Arc<Value>, ApiError> {
        self.write(key, ns, name, sub, admit, |rt, current| {
            if kind == PatchKind::Strategic && !rt.builtin {
                return Err(ApiError::unsupported_media_type(
                    "strategic merge patch is not supported for custom resources",
                ));
            }
            patch::apply(kind, current, body).map_err(|e| match e {
                // As the API server: a JSON patch that does not apply (a failed `test` op) is
                // 422 Invalid, a malformed one 400.
                patch::PatchError::Json(_) => ApiError::invalid(rt, name, &e.to_string()),
                _ => ApiError::bad_request(&e.to_string()),
            })
        })
    }

    /// Change an object in place with a closure (the simulated kubelet's status updates).
    /// Retries never needed: the closure runs under the store's lock.
    pub fn modify(
        &self,
        key: &ResourceKey,
        ns: Option<&str>,
        name: &str,
        sub: Subresource,
        f: impl FnOnce(&mut Value),
    ) -> Result<Arc<Value>, ApiError> {
        self.write(key, ns, name, sub, &(), |_rt, current| {
            let mut next = current.clone();
            f(&mut next);
            Ok(next)
        })
    }

    fn write(
        &self,
        key: &ResourceKey,
        ns: Option<&str>,
        name: &str,
        sub: Subresource,
        admit: &dyn Admit,
        next: impl FnOnce(&ResourceType, &Value) -> Result<Value, ApiError>,
    ) -> Result<Arc<Value>, ApiError> {
        let mut inner = self.lock();
        let rt = inner.served(key)?.clone();
        let ns = rt.scope(ns)?;
        if sub == Subresource::Status && !rt.has_status {
            return Err(ApiError::not_found_path(&format!("{}/status", rt.plural)));
        }
        let id = (ns.clone(), name.to_string());
        let current = inner.objects[key]
            .get(&id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt, name))?;
        let mut proposed = next(&rt, &current)?;
        if !proposed.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        let current_rv = meta_str(&current, "resourceVersion").unwrap_or_default();
        match meta_str(&proposed, "resourceVersion") {
            Some(rv) if !rv.is_empty() && rv != current_rv => {
                return Err(ApiError::conflict(&rt, name));
            }
            _ => {}
        }
        if let Some(body_name) = meta_str(&proposed, "name")
            && !body_name.is_empty()
            && body_name != name
        {
            return Err(ApiError::bad_request(&format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let merged = match sub {
            Subresource::Status => {
                let mut merged = (*current).clone();
                let status = proposed.get("status").cloned().unwrap_or(Value::Null);
                set_field(&mut merged, "status", status);
                merged
            }
            Subresource::Main => {
                if rt.has_status {
                    let status = current.get("status").cloned().unwrap_or(Value::Null);
                    set_field(&mut proposed, "status", status);
                }
                // Server-owned metadata comes from the stored object.
                let old_meta = current
                    .get("metadata")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                let meta = metadata_mut(&mut proposed)?;
                for field in [
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "namespace",
                    "name",
                    "deletionTimestamp",
                ] {
                    match old_meta.get(field) {
                        Some(v) => meta.insert(field.into(), v.clone()),
                        None => meta.remove(field),
                    };
                }
                set_type_meta(&rt, &mut proposed);
                if spec_of(&proposed) != spec_of(&current) {
                    let generation = old_meta
                        .get("generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(1);
                    metadata_mut(&mut proposed)?.insert("generation".into(), json!(generation + 1));
                }
                proposed
            }
        };
        let mut merged = merged;
        metadata_mut(&mut merged)?.insert("resourceVersion".into(), json!(current_rv));
        if sub == Subresource::Main {
            if rt.is_crd() {
                check_crd_rules(&rt, &merged)?;
            }
            inner.check_rules(&rt, name, &merged, Some(&current))?;
        }
        admit.admit(
            &rt,
            &Proposed {
                operation: Operation::Update,
                subresource: (sub == Subresource::Status).then_some("status"),
                namespace: rt.namespaced.then_some(id.0.as_str()),
                name,
                object: Some(&merged),
                old_object: Some(&current),
            },
        )?;
        if merged == *current {
            // A no-op write does not bump the resourceVersion or notify watchers.
            return Ok(current);
        }
        let rv = inner.rv + 1;
        metadata_mut(&mut merged)?.insert("resourceVersion".into(), json!(rv.to_string()));
        let obj = Arc::new(merged);
        inner.commit(
            rv,
            key,
            id,
            ChangeKind::Modified,
            Some(current),
            obj.clone(),
        );
        drop(inner);
        if rt.is_crd() {
            self.crd_written(&obj)?;
        }
        Ok(obj)
    }

    /// Delete an object, honouring `preconditions` (uid, resourceVersion) when given, with
    /// `admit` deciding on the object as it is stored.
    pub fn delete(
        &self,
        key: &ResourceKey,
        ns: Option<&str>,
        name: &str,
        preconditions: Option<&Value>,
        admit: &dyn Admit,
    ) -> Result<Arc<Value>, ApiError> {
        let mut inner = self.lock();
        let rt = inner.served(key)?.clone();
        let ns = rt.scope(ns)?;
        let id = (ns, name.to_string());
        let current = inner.objects[key]
            .get(&id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt, name))?;
        if let Some(pre) = preconditions {
            for field in ["uid", "resourceVersion"] {
                if let Some(want) = pre.get(field).and_then(Value::as_str)
                    && meta_str(&current, field) != Some(want)
                {
                    return Err(ApiError::conflict_precondition(&rt, name, field, want));
                }
            }
        }
        admit.admit(
            &rt,
            &Proposed {
                operation: Operation::Delete,
                subresource: None,
                namespace: rt.namespaced.then_some(id.0.as_str()),
                name,
                object: None,
                old_object: Some(&current),
            },
        )?;
        let rv = inner.rv + 1;
        let mut last = (*current).clone();
        metadata_mut(&mut last)?.insert("resourceVersion".into(), json!(rv.to_string()));
        let last = Arc::new(last);
        inner.commit(
            rv,
            key,
            id,
            ChangeKind::Deleted,
            Some(current),
            last.clone(),
        );
        drop(inner);
        if rt.is_crd()
            && let Some(served) = ResourceType::from_crd(&last)
        {
            self.unregister(&served.key());
        }
        Ok(last)
    }
}

/// A generated name that is not taken, generating it again up to 7 times, as the API server
/// does since 1.32 (RetryGenerateName): thousands of Events would otherwise collide.
fn generate_again(
    prefix: &str,
    taken: impl Fn(&str) -> bool,
    mut suffix: impl FnMut() -> String,
) -> Option<String> {
    (0..7)
        .map(|_| format!("{prefix}{}", suffix()))
        .find(|n| !taken(n))
}

fn validate_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    let ok = name.len() <= 253
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    // Custom resource names and a few built-ins allow more, but every name the agent writes is
    // a DNS subdomain, and that is what this checks.
    let ok = ok || (rt.kind == "Event" && name.bytes().all(|b| b.is_ascii_graphic()));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            rt,
            name,
            &format!(
                "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
            ),
        ))
    }
}

fn reset_status_on_create(rt: &ResourceType, obj: &mut Value) {
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Pod") => {
            let status = obj.get("status").cloned().unwrap_or(Value::Null);
            let qos = status
                .get("qosClass")
                .cloned()
                .unwrap_or(json!("BestEffort"));
            set_field(obj, "status", json!({"phase": "Pending", "qosClass": qos}));
        }
        // A new namespace is Active, as the API server's namespace strategy makes it.
        ("", "Namespace") => {
            if obj.pointer("/status/phase").is_none() {
                set_field(obj, "status", json!({"phase": "Active"}));
            }
        }
        // Nodes are created with their status by their kubelets.
        ("", "Node") => {}
        _ => set_field(obj, "status", Value::Null),
    }
}

impl Inner {
    /// A custom resource's validation rules (its CRD's `x-kubernetes-validations`), on the
    /// object as it would be stored: 422 Invalid listing every rule that fails.
    fn check_rules(
        &self,
        rt: &ResourceType,
        name: &str,
        new: &Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let Some(rules) = self.rules.get(&rt.key()) else {
            return Ok(());
        };
        let errors = rules.validate(new, old);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(admission::invalid(rt, name, &errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::generate_again;

    #[test]
    fn a_taken_generated_name_is_generated_again_up_to_seven_times() {
        let suffixes = |list: &'static [&'static str]| {
            let mut it = list.iter();
            move || it.next().map(|s| s.to_string()).unwrap_or_default()
        };
        let taken = |n: &str| n != "web.free";
        assert_eq!(
            generate_again("web.", taken, suffixes(&["a", "b", "free"])).as_deref(),
            Some("web.free")
        );
        assert_eq!(
            generate_again(
                "web.",
                taken,
                suffixes(&["1", "2", "3", "4", "5", "6", "7", "free"])
            ),
            None,
            "seven tries, then a 409"
        );
    }
}
