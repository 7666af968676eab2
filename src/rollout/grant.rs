//! Grants: the controller's permission for one node to upgrade one object to one hash. A
//! grant is a `coordination.k8s.io/v1` Lease in the agents' namespace, one per (object, node),
//! created by the controller, renewed by the node while it upgrades, then finished by the node
//! (the outcome recorded in an annotation, the holder cleared) and deleted by the controller.
//!
//! Each grant is labelled with its node, so an agent watches only its own grants (a label
//! selector): a grant write reaches one agent and the controller, never the whole fleet.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use crate::desired::ObjectKey;

/// Label: the node a grant is for (its name, or a digest when longer than a label value may be).
pub const NODE_LABEL: &str = "staticpod-puller.openyurt.io/node";
/// Label: the object a grant is for, `<sp|yss>.<namespace>.<name>` (or a digest).
pub const OBJECT_LABEL: &str = "staticpod-puller.openyurt.io/object";
/// Annotation: the hash granted.
pub const HASH_ANNOTATION: &str = "staticpod-puller.openyurt.io/hash";
/// Annotation: the node's full name (the label may be a digest).
pub const NODE_ANNOTATION: &str = "staticpod-puller.openyurt.io/node";
/// Annotation: the object as `Kind namespace/name`, for people reading the Lease.
pub const OBJECT_ANNOTATION: &str = "staticpod-puller.openyurt.io/object";
/// Annotation: how the node's upgrade ended (`succeeded`, `rolled-back: <reason>`, `current`:
/// it ran the hash already, `released`), written when it finishes the grant.
pub const RESULT_ANNOTATION: &str = "staticpod-puller.openyurt.io/result";

/// Label values are at most 63 characters; longer names are replaced by a digest.
const MAX_LABEL_VALUE: usize = 63;

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("building the patch of grant {name}: {reason}")]
    Patch { name: String, reason: String },
    #[error("{action} grant {namespace}/{name}: {source}")]
    Api {
        action: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// The value of [`NODE_LABEL`] for `node`.
pub fn node_label(node: &str) -> String {
    label_value(node)
}

/// The value of [`OBJECT_LABEL`] for `key`.
pub fn object_label(key: &ObjectKey) -> String {
    label_value(&format!(
        "{}.{}.{}",
        key.kind.short(),
        key.namespace,
        key.name
    ))
}

fn label_value(value: &str) -> String {
    if value.len() <= MAX_LABEL_VALUE {
        return value.to_string();
    }
    format!("h-{}", digest(value, 20))
}

fn digest(value: &str, bytes: usize) -> String {
    ring::digest::digest(&ring::digest::SHA256, value.as_bytes()).as_ref()[..bytes]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The Lease name of the grant of `key` to `node`: `<sp|yss>.<namespace>.<name>.<node>`, or,
/// when longer than a name may be, the kind and namespace followed by a digest of the rest.
pub fn lease_name(key: &ObjectKey, node: &str) -> String {
    let full = format!("{}.{}.{}.{node}", key.kind.short(), key.namespace, key.name);
    if full.len() <= 253 {
        return full;
    }
    format!(
        "{}.{}.h-{}",
        key.kind.short(),
        key.namespace,
        digest(&format!("{}/{node}", key.name), 24)
    )
}

/// The Lease the controller creates to grant `hash` of `key` to `node`.
pub fn lease(key: &ObjectKey, node: &str, hash: &str, duration: Duration) -> Lease {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    Lease {
        metadata: ObjectMeta {
            name: Some(lease_name(key, node)),
            labels: Some(BTreeMap::from([
                (NODE_LABEL.to_string(), node_label(node)),
                (OBJECT_LABEL.to_string(), object_label(key)),
            ])),
            annotations: Some(BTreeMap::from([
                (HASH_ANNOTATION.to_string(), hash.to_string()),
                (NODE_ANNOTATION.to_string(), node.to_string()),
                (OBJECT_ANNOTATION.to_string(), key.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.to_string()),
            lease_duration_seconds: Some(duration.as_secs().clamp(1, i32::MAX as u64) as i32),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..LeaseSpec::default()
        }),
    }
}

/// A grant as read from its Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub lease_name: String,
    /// The Lease's uid: a grant handed out again (`rollout retry`) is a new Lease.
    pub uid: String,
    pub hash: String,
    /// The node still holds it: not finished yet.
    pub open: bool,
    /// What the node recorded when it finished it.
    pub result: Option<String>,
}

impl Grant {
    pub fn from_lease(lease: &Lease) -> Option<Grant> {
        let annotations = lease.metadata.annotations.as_ref()?;
        let hash = annotations.get(HASH_ANNOTATION)?.clone();
        let result = annotations.get(RESULT_ANNOTATION).cloned();
        let held = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            .is_some_and(|h| !h.is_empty());
        Some(Grant {
            lease_name: lease.metadata.name.clone()?,
            uid: lease.metadata.uid.clone().unwrap_or_default(),
            hash,
            open: held && result.is_none(),
            result,
        })
    }
}

/// What to record when a grant is finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Succeeded,
    RolledBack(String),
    /// The node already runs the hash (a hand-placed manifest equal to the template): nothing
    /// was written.
    Current,
    /// Ended without an outcome for the granted hash (superseded, or an error).
    Released,
}

impl Finish {
    pub fn annotation(&self) -> String {
        match self {
            Finish::Succeeded => "succeeded".into(),
            Finish::RolledBack(reason) => format!("rolled-back: {reason}"),
            Finish::Current => "current".into(),
            Finish::Released => "released".into(),
        }
    }
}

/// A node's side of its grants: read from a cache of this node's grant Leases, renewed and
/// finished with one merge patch each.
pub struct Grants {
    api: Api<Lease>,
    cache: Store<Lease>,
    namespace: String,
    node: String,
    /// Grants this node finished (by uid): the watch may still show one open for a moment,
    /// and it must not be taken for a new grant (a retry of a hash rolled back here).
    finished: Mutex<HashSet<String>>,
}

impl Grants {
    /// `cache` is a reflector over the Leases of `namespace` labelled with this node.
    pub fn new(client: kube::Client, cache: Store<Lease>, namespace: &str, node: &str) -> Grants {
        Grants {
            api: Api::namespaced(client, namespace),
            cache,
            namespace: namespace.to_string(),
            node: node.to_string(),
            finished: Mutex::new(HashSet::new()),
        }
    }

    /// The label selector of this node's grants (what the agent's Lease watch uses).
    pub fn selector(node: &str) -> String {
        format!("{NODE_LABEL}={}", node_label(node))
    }

    /// The grant of `key` to this node, if the controller handed one out.
    pub fn of(&self, key: &ObjectKey) -> Option<Grant> {
        let lease: Arc<Lease> = self
            .cache
            .get(&ObjectRef::new(&lease_name(key, &self.node)).within(&self.namespace))?;
        let mut grant = Grant::from_lease(&lease)?;
        if self
            .finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&grant.uid)
        {
            grant.open = false;
        }
        Some(grant)
    }

    /// Every open grant of this node (for `status`).
    pub fn open(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .cache
            .state()
            .iter()
            .filter_map(|l| Grant::from_lease(l))
            .filter(|g| g.open)
            .map(|g| g.lease_name)
            .collect();
        names.sort();
        names
    }

    fn error(&self, action: &'static str, name: &str) -> impl FnOnce(kube::Error) -> GrantError {
        let (namespace, name) = (self.namespace.clone(), name.to_string());
        move |source| GrantError::Api {
            action,
            namespace,
            name,
            source,
        }
    }

    /// Patch this grant and no other: the JSON patch first tests the Lease's uid, since the
    /// controller may have replaced the grant by a new one of the same name (a new template)
    /// since this node read it. False when the grant is gone or replaced (404, or the test's
    /// 422).
    async fn patch_own(
        &self,
        grant: &Grant,
        action: &'static str,
        ops: Vec<serde_json::Value>,
    ) -> Result<bool, GrantError> {
        let mut patch = vec![json!({"op": "test", "path": "/metadata/uid", "value": grant.uid})];
        patch.extend(ops);
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(patch))
            .map_err(|e| GrantError::Patch {
                name: grant.lease_name.clone(),
                reason: e.to_string(),
            })?;
        match self
            .api
            .patch(
                &grant.lease_name,
                &PatchParams::default(),
                &Patch::Json::<()>(patch),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 422 => Ok(false),
            Err(e) => Err(self.error(action, &grant.lease_name)(e)),
        }
    }

    /// Renew `grant` (it is held while the upgrade runs). False when it is gone: the
    /// controller deleted it (expired, or the template changed).
    pub async fn renew(&self, grant: &Grant) -> Result<bool, GrantError> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        self.patch_own(
            grant,
            "renewing",
            vec![json!({"op": "add", "path": "/spec/renewTime", "value": now})],
        )
        .await
    }

    /// Record how the upgrade ended and release the grant, in one request. A grant already
    /// gone (or replaced by a newer one) needs nothing.
    pub async fn finish(&self, grant: &Grant, how: &Finish) -> Result<(), GrantError> {
        {
            let mut finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
            // Forget grants the controller has deleted since.
            if finished.len() > 64 {
                let live: HashSet<String> = self
                    .cache
                    .state()
                    .iter()
                    .filter_map(|l| l.metadata.uid.clone())
                    .collect();
                finished.retain(|uid| live.contains(uid));
            }
            finished.insert(grant.uid.clone());
        }
        // `~1` is `/` in a JSON pointer.
        let result = format!(
            "/metadata/annotations/{}",
            RESULT_ANNOTATION.replace('/', "~1")
        );
        self.patch_own(
            grant,
            "finishing",
            vec![
                json!({"op": "add", "path": result, "value": how.annotation()}),
                json!({"op": "add", "path": "/spec/holderIdentity", "value": null}),
            ],
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::Kind;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            kind: Kind::YurtStaticSet,
            namespace: "kube-system".into(),
            name: name.into(),
        }
    }

    #[test]
    fn names_and_labels_fit_what_the_api_server_accepts() {
        assert_eq!(
            lease_name(&key("yurt-hub"), "edge-1"),
            "yss.kube-system.yurt-hub.edge-1"
        );
        assert_eq!(object_label(&key("yurt-hub")), "yss.kube-system.yurt-hub");
        let long_node = format!("{}.example.com", "n".repeat(240));
        let name = lease_name(&key("yurt-hub"), &long_node);
        assert!(name.len() <= 253, "{name}");
        assert_ne!(name, lease_name(&key("yurt-hub"), "other"));
        let label = node_label(&long_node);
        assert!(label.len() <= 63 && label.starts_with("h-"), "{label}");
        assert_eq!(label, node_label(&long_node), "stable");
        assert_eq!(node_label("edge-1"), "edge-1");
    }

    #[test]
    fn a_created_grant_reads_back_open_and_a_finished_one_with_its_result() {
        let mut lease = lease(&key("web"), "edge-1", "abc123", Duration::from_secs(30));
        let grant = Grant::from_lease(&lease).expect("a grant");
        assert_eq!(grant.hash, "abc123");
        assert!(grant.open);
        assert_eq!(
            lease.spec.as_ref().unwrap().lease_duration_seconds,
            Some(30)
        );
        lease.metadata.annotations.as_mut().unwrap().insert(
            RESULT_ANNOTATION.into(),
            Finish::RolledBack("not Ready".into()).annotation(),
        );
        lease.spec.as_mut().unwrap().holder_identity = None;
        let grant = Grant::from_lease(&lease).expect("a grant");
        assert!(!grant.open);
        assert_eq!(grant.result.as_deref(), Some("rolled-back: not Ready"));
        assert!(
            Grant::from_lease(&Lease::default()).is_none(),
            "not a grant"
        );
    }
}
