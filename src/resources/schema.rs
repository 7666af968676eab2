//! The parts of the CRD schema written by hand: where the generated schema needs a shape
//! schemars cannot infer (int-or-string, a template kept whole) and the CEL rules
//! (`x-kubernetes-validations`) that let the API server refuse a malformed object at
//! `kubectl apply`, with no webhook. Each rule is an agent-side check of `validate.rs`; a
//! message names its field and says what is allowed.
//!
//! The API server bounds what CEL may cost: a rule's estimated cost is multiplied by how
//! many times its node can occur in a 3 MiB request (about a million for an object in a
//! list), and a CRD's rules may total 100 million. So the rules on list items are single
//! `has()` tests (about 3 each, some 3 million a rule, about 54 million for the 17 of them),
//! and what needs a comparison across items (container names unique) stays agent-side.

use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

/// Kubelet refuses static pods that reference API objects; the reason every template rule
/// gives.
const API_REFERENCE: &str =
    "a static pod may not reference API objects (kubelet refuses it since Kubernetes 1.34)";

fn rule(rule: &str, message: String) -> Value {
    json!({"rule": rule, "message": message})
}

/// A rule on an object in a list: `field` must be absent.
fn absent(field: &str, what: &str) -> Value {
    json!({
        "rule": format!("!has(self.{field})"),
        "fieldPath": format!(".{field}"),
        "reason": "FieldValueForbidden",
        "message": format!("{what}: {API_REFERENCE}"),
    })
}

/// An object whose fields are kept as written; `properties` are those rules look at.
fn open_object(properties: Value, rules: Vec<Value>) -> Value {
    let mut schema = json!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    });
    if properties.as_object().is_some_and(|p| !p.is_empty()) {
        schema["properties"] = properties;
    }
    if !rules.is_empty() {
        schema["x-kubernetes-validations"] = Value::Array(rules);
    }
    schema
}

fn list_of(items: Value) -> Value {
    json!({"type": "array", "items": items})
}

/// `spec.staticPodManifest`: a plain file name, as the agent requires.
pub(super) fn manifest_name(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "description": "The manifest file name in the node's manifest directory, without `.yaml`.",
        "maxLength": 253,
        "x-kubernetes-validations": [
            rule("size(self) > 0", "staticPodManifest must not be empty: it names the manifest file (<name>.yaml) in each node's manifest directory".into()),
            rule("!self.contains('/')", "staticPodManifest must be a plain file name without '/', such as nginx (the manifest is <name>.yaml in each node's manifest directory)".into()),
            rule("self.contains('/') || !self.startsWith('.')", "staticPodManifest must not start with '.' (kubelet skips hidden files)".into()),
            rule(
                "size(self) == 0 || self.contains('/') || self.startsWith('.') || self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
                "staticPodManifest must be a DNS subdomain: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit".into(),
            ),
        ],
    })
}

/// `spec.upgradeStrategy.type`: OpenYurt's two strategies and their aliases, any case.
pub(super) fn strategy_type(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "description": "AdvancedRollingUpdate (alias auto) or OTA (alias ota), case-insensitive.",
        "x-kubernetes-validations": [rule(
            "self.lowerAscii() in ['', 'advancedrollingupdate', 'auto', 'ota']",
            "upgradeStrategy.type must be AdvancedRollingUpdate or OTA (auto and ota are accepted; case does not matter)".into(),
        )],
    })
}

/// A number of members or a percentage of them, written as an int or a string.
fn portion(field: &str, description: &str) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "description": description,
        "x-kubernetes-validations": [rule(
            "type(self) == int ? self >= 0 : self.matches('^([0-9]+|([0-9]|[1-9][0-9]|100)%)$')",
            format!("upgradeStrategy.{field} must be an integer of 0 or more, or a percentage from 0% to 100% (such as 3 or \"10%\")"),
        )],
    })
}

pub(super) fn max_unavailable(_: &mut SchemaGenerator) -> Schema {
    portion(
        "maxUnavailable",
        "Members that may upgrade at once: a number or a percentage of members (default 10%).",
    )
}

pub(super) fn max_failed(_: &mut SchemaGenerator) -> Schema {
    portion(
        "maxFailed",
        "Members that may roll back the new template before the rollout halts: a number or a percentage of members (default: the resolved maxUnavailable).",
    )
}

pub(super) fn canary(_: &mut SchemaGenerator) -> Schema {
    portion(
        "canary",
        "Members that upgrade first (nodes labelled staticpod-puller.openyurt.io/canary=true before others); the rest wait until the hash is promoted. A number or a percentage (default 0: no canary step).",
    )
}

/// `spec.revisionHistoryLimit`: revisions each node keeps.
pub(super) fn history_limit(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "integer",
        "format": "int32",
        "description": "Revisions of the manifest each node keeps in its state directory (default 10).",
        "x-kubernetes-validations": [rule(
            "self >= 0",
            "revisionHistoryLimit must be 0 or more (revisions each node keeps; 0 keeps one)".into(),
        )],
    })
}

/// A container: what it may not take from API objects.
fn container() -> Value {
    let value_from = open_object(
        json!({
            "secretKeyRef": open_object(json!({}), vec![]),
            "configMapKeyRef": open_object(json!({}), vec![]),
        }),
        vec![
            absent("secretKeyRef", "env valueFrom.secretKeyRef"),
            absent("configMapKeyRef", "env valueFrom.configMapKeyRef"),
        ],
    );
    let env_from = open_object(
        json!({
            "secretRef": open_object(json!({}), vec![]),
            "configMapRef": open_object(json!({}), vec![]),
        }),
        vec![
            absent("secretRef", "envFrom.secretRef"),
            absent("configMapRef", "envFrom.configMapRef"),
        ],
    );
    open_object(
        json!({
            "env": list_of(open_object(json!({"valueFrom": value_from}), vec![])),
            "envFrom": list_of(env_from),
        }),
        vec![],
    )
}

/// A volume: kubelet serves a static pod only volumes that need no API object.
fn volume() -> Value {
    let projected_source_fields = [
        "secret",
        "configMap",
        "serviceAccountToken",
        "clusterTrustBundle",
        "podCertificate",
    ];
    let source = open_object(
        projected_source_fields
            .iter()
            .map(|f| (f.to_string(), open_object(json!({}), vec![])))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        projected_source_fields
            .iter()
            .map(|f| absent(f, &format!("a projected {f} source")))
            .collect(),
    );
    let forbidden = ["secret", "configMap", "persistentVolumeClaim", "ephemeral"];
    let mut properties: serde_json::Map<String, Value> = forbidden
        .iter()
        .map(|f| (f.to_string(), open_object(json!({}), vec![])))
        .collect();
    properties.insert(
        "projected".into(),
        open_object(json!({"sources": list_of(source)}), vec![]),
    );
    open_object(
        properties.into(),
        forbidden
            .iter()
            .map(|f| absent(f, &format!("a {f} volume")))
            .collect(),
    )
}

/// `spec.template`: a PodTemplateSpec kept whole (every field as written), with the few
/// fields the rules look at declared.
pub(super) fn template(_: &mut SchemaGenerator) -> Schema {
    let no_service_account = |field: &str| {
        json!({
            "type": "string",
            "x-kubernetes-validations": [{
                "rule": "self == ''",
                "reason": "FieldValueForbidden",
                "message": format!("{field}: {API_REFERENCE}"),
            }],
        })
    };
    let pod_spec = open_object(
        json!({
            "serviceAccountName": no_service_account("serviceAccountName"),
            "serviceAccount": no_service_account("serviceAccount"),
            "resourceClaims": {
                "type": "array",
                "items": open_object(json!({}), vec![]),
                "x-kubernetes-validations": [{
                    "rule": "size(self) == 0",
                    "reason": "FieldValueForbidden",
                    "message": format!("resourceClaims: {API_REFERENCE}"),
                }],
            },
            "volumes": list_of(volume()),
            "initContainers": list_of(container()),
            "containers": list_of(container()),
        }),
        vec![json!({
            "rule": "has(self.containers) && size(self.containers) > 0",
            "fieldPath": ".containers",
            "reason": "FieldValueRequired",
            "message": "containers: a static pod needs at least one container",
        })],
    );
    let schema = open_object(
        json!({"spec": pod_spec}),
        vec![json!({
            "rule": "has(self.spec)",
            "fieldPath": ".spec",
            "reason": "FieldValueRequired",
            "message": "template.spec: a static pod needs a pod spec",
        })],
    );
    let mut schema: Schema = serde_json::from_value(schema).unwrap_or_default();
    schema.insert(
        "description".into(),
        "The static pod's template; its name and namespace are the object's.".into(),
    );
    schema
}
