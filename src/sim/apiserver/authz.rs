//! Authorization, as a cluster with `--authorization-mode=Node,RBAC` and the NodeRestriction
//! admission plugin decides it: `system:masters` may do anything; node identities get the
//! node authorizer's rights, limited by NodeRestriction; everyone else gets what the stored
//! Roles, ClusterRoles and their bindings grant.

use serde_json::Value;

use super::Identity;
use crate::sim::error::ApiError;
use crate::sim::resource::{ResourceKey, ResourceType};
use crate::sim::selector::Selectors;
use crate::sim::store::{Store, meta_str};

const MASTERS: &str = "system:masters";
const NODES: &str = "system:nodes";
const NODE_LEASE_NS: &str = "kube-node-lease";

/// What a request does, as the authorizer sees it.
pub(super) struct Attributes<'a> {
    /// Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'static str,
    pub rt: &'a ResourceType,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    /// The object sent (create and update).
    pub body: Option<&'a Value>,
}

impl Attributes<'_> {
    fn resource(&self) -> String {
        match self.subresource {
            Some(sub) => format!("{}/{sub}", self.rt.plural),
            None => self.rt.plural.clone(),
        }
    }

    fn forbidden(&self, user: &str, reason: Option<&str>) -> ApiError {
        ApiError::forbidden_request(
            user,
            self.verb,
            &self.rt.group,
            &self.resource(),
            self.name,
            self.namespace,
            reason,
        )
    }
}

pub(super) fn is_master(id: &Identity) -> bool {
    id.groups.iter().any(|g| g == MASTERS)
}

/// The node a node identity acts for (`system:node:<name>` in group `system:nodes`).
pub(super) fn node_name(id: &Identity) -> Option<&str> {
    let node = id.user.strip_prefix("system:node:")?;
    (!node.is_empty() && id.groups.iter().any(|g| g == NODES)).then_some(node)
}

/// Allow the request or say why not (a 403 naming user, verb, resource and namespace).
pub(super) fn authorize(
    store: &Store,
    id: &Identity,
    attrs: &Attributes<'_>,
) -> Result<(), ApiError> {
    if is_master(id) {
        return Ok(());
    }
    if let Some(node) = node_name(id) {
        match node_decision(store, node, attrs) {
            Decision::Allow => return Ok(()),
            Decision::Deny(reason) => return Err(attrs.forbidden(&id.user, Some(&reason))),
            Decision::NoOpinion => {}
        }
    }
    if rbac_allows(store, id, attrs) {
        Ok(())
    } else {
        Err(attrs.forbidden(&id.user, None))
    }
}

enum Decision {
    Allow,
    Deny(String),
    NoOpinion,
}

fn is_read(verb: &str) -> bool {
    matches!(verb, "get" | "list" | "watch")
}

/// The node authorizer and NodeRestriction, for what the dev cluster's nodes do. Reads are
/// allowed (the real node authorizer narrows secrets and configmaps to the node's pods; the
/// agent never relies on that).
fn node_decision(store: &Store, node: &str, a: &Attributes<'_>) -> Decision {
    if is_read(a.verb) {
        return Decision::Allow;
    }
    let rt = a.rt;
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => {
            let stored_node = || {
                a.name.and_then(|name| {
                    store.get(&rt.key(), a.namespace, name).ok().and_then(|p| {
                        p.pointer("/spec/nodeName")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
                })
            };
            let body_node = || {
                a.body
                    .and_then(|b| b.pointer("/spec/nodeName"))
                    .and_then(Value::as_str)
            };
            let own = |n: Option<&str>| n == Some(node);
            match (a.verb, a.subresource) {
                ("create", None) if own(body_node()) => Decision::Allow,
                ("create", None) => Decision::Deny(format!(
                    "node \"{node}\" can only create pods with spec.nodeName set to itself"
                )),
                ("update" | "patch", Some("status")) => match stored_node() {
                    Some(n) if n != node => Decision::Deny(format!(
                        "node \"{node}\" can only update pod status for pods with spec.nodeName set to itself"
                    )),
                    // A missing pod is the store's 404 to report.
                    _ => Decision::Allow,
                },
                ("update" | "patch" | "delete", None) => match stored_node() {
                    Some(n) if n != node => Decision::Deny(format!(
                        "node \"{node}\" can only {} pods with spec.nodeName set to itself",
                        a.verb
                    )),
                    _ if a.verb == "update" && !own(body_node()) => {
                        Decision::Deny(format!("node \"{node}\" cannot move a pod to another node"))
                    }
                    _ => Decision::Allow,
                },
                _ => Decision::NoOpinion,
            }
        }
        ("coordination.k8s.io", "leases") => {
            if a.namespace == Some(NODE_LEASE_NS) {
                Decision::Allow
            } else {
                Decision::Deny(format!(
                    "can only access leases in the \"{NODE_LEASE_NS}\" namespace"
                ))
            }
        }
        ("" | "events.k8s.io", "events") if matches!(a.verb, "create" | "update" | "patch") => {
            Decision::Allow
        }
        ("", "nodes") => {
            let target = a.name.or_else(|| a.body.and_then(|b| meta_str(b, "name")));
            if target == Some(node) && matches!(a.verb, "create" | "update" | "patch") {
                Decision::Allow
            } else {
                Decision::Deny(format!(
                    "node \"{node}\" is not allowed to modify node \"{}\"",
                    target.unwrap_or("")
                ))
            }
        }
        _ => Decision::NoOpinion,
    }
}

/// RBAC: does any (Cluster)RoleBinding naming this user or one of its groups grant a rule
/// matching the request?
fn rbac_allows(store: &Store, id: &Identity, a: &Attributes<'_>) -> bool {
    let rbac = |plural: &str| ResourceKey::new("rbac.authorization.k8s.io", plural);
    let everything = Selectors::default();
    let list = |plural: &str, ns: Option<&str>| {
        store
            .list(&rbac(plural), ns, &everything)
            .map(|(items, _)| items)
            .unwrap_or_default()
    };
    let rules_of = |role_ref: &Value, binding_ns: Option<&str>| -> Vec<Value> {
        let name = role_ref["name"].as_str().unwrap_or_default();
        let role = match role_ref["kind"].as_str() {
            Some("ClusterRole") => store.get(&rbac("clusterroles"), None, name),
            Some("Role") if binding_ns.is_some() => store.get(&rbac("roles"), binding_ns, name),
            _ => return Vec::new(),
        };
        role.ok()
            .and_then(|r| r.get("rules").and_then(Value::as_array).cloned())
            .unwrap_or_default()
    };

    let cluster_grants = list("clusterrolebindings", None)
        .iter()
        .filter(|b| binds(b, id))
        .any(|b| {
            rules_of(&b["roleRef"], None)
                .iter()
                .any(|r| rule_matches(r, a))
        });
    if cluster_grants {
        return true;
    }
    let Some(ns) = a.namespace else { return false };
    list("rolebindings", Some(ns))
        .iter()
        .filter(|b| binds(b, id))
        .any(|b| {
            rules_of(&b["roleRef"], Some(ns))
                .iter()
                .any(|r| rule_matches(r, a))
        })
}

/// Whether a binding's subjects include this identity.
fn binds(binding: &Value, id: &Identity) -> bool {
    let Some(subjects) = binding["subjects"].as_array() else {
        return false;
    };
    subjects.iter().any(|s| {
        let name = s["name"].as_str().unwrap_or_default();
        match s["kind"].as_str() {
            Some("User") => name == id.user,
            Some("Group") => name == "system:authenticated" || id.groups.iter().any(|g| g == name),
            Some("ServiceAccount") => {
                let ns = s["namespace"].as_str().unwrap_or_default();
                id.user == format!("system:serviceaccount:{ns}:{name}")
            }
            _ => false,
        }
    })
}

fn rule_matches(rule: &Value, a: &Attributes<'_>) -> bool {
    let list = |field: &str| -> Vec<&str> {
        rule[field]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    };
    let verbs = list("verbs");
    let groups = list("apiGroups");
    let resources = list("resources");
    let names = list("resourceNames");
    let verb_ok = verbs.iter().any(|v| *v == "*" || *v == a.verb);
    let group_ok = groups.iter().any(|g| *g == "*" || *g == a.rt.group);
    let combined = a.resource();
    let resource_ok = resources.iter().any(|r| {
        *r == "*"
            || *r == combined
            || a.subresource
                .is_some_and(|sub| r.strip_prefix("*/") == Some(sub))
    });
    // resourceNames restrict named requests only; a list, watch or create (no name) matches
    // only a rule without them, as in Kubernetes.
    let name_ok = names.is_empty() || a.name.is_some_and(|n| names.contains(&n));
    verb_ok && group_ok && resource_ok && name_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::resource::builtin_types;
    use serde_json::json;

    fn pods() -> ResourceType {
        builtin_types()
            .into_iter()
            .find(|t| t.plural == "pods")
            .unwrap()
    }

    fn attrs<'a>(
        rt: &'a ResourceType,
        verb: &'static str,
        sub: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Attributes<'a> {
        Attributes {
            verb,
            rt,
            subresource: sub,
            namespace: Some("default"),
            name,
            body: None,
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_and_names() {
        let rt = pods();
        let rule = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]});
        assert!(rule_matches(&rule, &attrs(&rt, "get", None, Some("p"))));
        assert!(!rule_matches(&rule, &attrs(&rt, "patch", None, Some("p"))));
        assert!(
            !rule_matches(&rule, &attrs(&rt, "get", Some("status"), Some("p"))),
            "pods does not cover pods/status"
        );
        let status = json!({"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]});
        assert!(rule_matches(
            &status,
            &attrs(&rt, "patch", Some("status"), Some("p"))
        ));
        let any_status = json!({"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["*"]});
        assert!(rule_matches(
            &any_status,
            &attrs(&rt, "update", Some("status"), Some("p"))
        ));
        let named = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"], "resourceNames": ["p"]});
        assert!(rule_matches(&named, &attrs(&rt, "get", None, Some("p"))));
        assert!(!rule_matches(&named, &attrs(&rt, "get", None, Some("q"))));
        assert!(!rule_matches(&named, &attrs(&rt, "list", None, None)));
    }

    #[test]
    fn node_identities_need_the_nodes_group() {
        let id = Identity {
            user: "system:node:n1".into(),
            groups: vec![NODES.into()],
        };
        assert_eq!(node_name(&id), Some("n1"));
        let impostor = Identity {
            user: "system:node:n1".into(),
            groups: vec![],
        };
        assert_eq!(node_name(&impostor), None);
    }
}
