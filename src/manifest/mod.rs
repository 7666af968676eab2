//! The static pod manifest: rendered from an object's template, hashed, validated as kubelet
//! would; and (in [`store`]) the manifest directory the agent writes.
//!
//! The hash (the desired revision) is the first 16 hex digits of the SHA-256 of the template's
//! canonical JSON: the `PodTemplateSpec` as Kubernetes serializes it (unset fields omitted),
//! object keys sorted at every level, no white space. Key order in the YAML an operator wrote
//! therefore does not change it, nor does the machine.

pub mod mirror;
pub mod store;

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

/// The annotation carrying the template hash (the name OpenYurt uses).
pub const HASH_ANNOTATION: &str = "openyurt.io/static-pod-hash";
/// kubelet refuses larger manifests; so do we.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;

/// Why a manifest or an object was refused: which object, which field, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {reason}")]
pub struct ManifestError {
    pub object: String,
    pub field: String,
    pub reason: String,
}

/// A rendered manifest: the pod, its bytes, and the template hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub pod: Pod,
    pub bytes: Vec<u8>,
    pub hash: String,
}

/// JSON with object keys sorted at every level and no white space.
pub fn canonical_json(value: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let ordered: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sorted(v))).collect();
                Value::Object(ordered.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // serde_json writes map entries in the map's order; `sorted` fixed that order.
    sorted(value).to_string()
}

/// The template hash (see the module documentation for exactly what is hashed).
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let value = serde_json::to_value(template).unwrap_or(Value::Null);
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical_json(&value).as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Render the manifest of object `namespace/name`: a v1 Pod named like the object, with the
/// template's labels and annotations plus the hash annotation.
pub fn render(
    object: &str,
    namespace: &str,
    name: &str,
    template: &PodTemplateSpec,
) -> Result<Rendered, ManifestError> {
    let hash = template_hash(template);
    let meta = template.metadata.clone().unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(HASH_ANNOTATION.to_string(), hash.clone());
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: meta.labels,
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    };
    let yaml = serde_saphyr::to_string(&pod).map_err(|e| ManifestError {
        object: object.to_string(),
        field: "spec.template".into(),
        reason: format!("cannot be rendered as YAML: {e}"),
    })?;
    let bytes =
        format!("# Managed by staticpod-puller for {object}; local edits are undone.\n{yaml}")
            .into_bytes();
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError {
            object: object.to_string(),
            field: "spec.template".into(),
            reason: format!(
                "the rendered manifest is {} bytes, over the 1 MiB kubelet accepts",
                bytes.len()
            ),
        });
    }
    Ok(Rendered { pod, bytes, hash })
}

/// Parse manifest bytes as a Pod.
pub fn parse_manifest(bytes: &[u8]) -> Result<Pod, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    serde_saphyr::from_str(text).map_err(|e| format!("not a v1 Pod: {e}"))
}

/// The hash annotation of a manifest, if it parses and has one.
pub fn hash_of_manifest(bytes: &[u8]) -> Option<String> {
    parse_manifest(bytes)
        .ok()?
        .metadata
        .annotations?
        .get(HASH_ANNOTATION)
        .cloned()
}

/// True when a local manifest is the same pod as a rendered one, ignoring the hash annotation
/// and formatting (a hand-placed manifest that already equals the template).
pub fn same_pod(local: &[u8], rendered: &[u8]) -> bool {
    let normalize = |bytes: &[u8]| -> Option<Value> {
        let mut pod = parse_manifest(bytes).ok()?;
        if let Some(a) = pod.metadata.annotations.as_mut() {
            a.remove(HASH_ANNOTATION);
        }
        if pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.is_empty())
        {
            pod.metadata.annotations = None;
        }
        if pod.metadata.labels.as_ref().is_some_and(|l| l.is_empty()) {
            pod.metadata.labels = None;
        }
        if pod.metadata.namespace.as_deref().is_none_or(str::is_empty) {
            pod.metadata.namespace = Some("default".into());
        }
        pod.status = None;
        serde_json::to_value(&pod).ok()
    };
    matches!((normalize(local), normalize(rendered)), (Some(a), Some(b)) if a == b)
}

/// Refuse a `staticPodManifest` that is not a plain file name.
pub fn validate_manifest_name(object: &str, name: &str) -> Result<(), ManifestError> {
    let err = |reason: &str| ManifestError {
        object: object.to_string(),
        field: "spec.staticPodManifest".into(),
        reason: format!("{reason}, got {name:?}"),
    };
    if name.is_empty() {
        return Err(err("must not be empty"));
    }
    if name.len() > 253 {
        return Err(err("must be at most 253 characters"));
    }
    if name.contains('/') || name.contains('\0') || name == "." || name == ".." {
        return Err(err("must be a plain file name (no path)"));
    }
    if name.starts_with('.') {
        return Err(err(
            "must not start with '.' (kubelet ignores hidden files)",
        ));
    }
    if !crate::rules::is_dns_subdomain(name) {
        return Err(err(
            "must be a DNS subdomain (lowercase letters, digits, '-' and '.')",
        ));
    }
    Ok(())
}

/// Refuse a template kubelet would refuse for a static pod.
pub fn validate_template(object: &str, template: &PodTemplateSpec) -> Result<(), ManifestError> {
    let err = |field: String, reason: String| ManifestError {
        object: object.to_string(),
        field,
        reason,
    };
    let base = "spec.template.spec";
    let spec: &PodSpec = template.spec.as_ref().ok_or_else(|| {
        err(
            base.into(),
            "required: a static pod needs a pod spec".into(),
        )
    })?;
    if spec.containers.is_empty() {
        return Err(err(
            format!("{base}.containers"),
            "required: at least one container".into(),
        ));
    }
    // Since Kubernetes 1.34 kubelet refuses static pods that reference API objects.
    let api_ref = |field: String, what: &str| {
        err(
            field,
            format!(
                "a static pod may not reference {what} (kubelet refuses it since Kubernetes 1.34)"
            ),
        )
    };
    if spec
        .service_account_name
        .as_deref()
        .is_some_and(|s| !s.is_empty())
    {
        return Err(api_ref(
            format!("{base}.serviceAccountName"),
            "a service account",
        ));
    }
    #[allow(deprecated)]
    if spec
        .service_account
        .as_deref()
        .is_some_and(|s| !s.is_empty())
    {
        return Err(api_ref(
            format!("{base}.serviceAccount"),
            "a service account",
        ));
    }
    if spec.resource_claims.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(api_ref(format!("{base}.resourceClaims"), "resource claims"));
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let field = format!("{base}.volumes[{i}]");
        let kind = if v.secret.is_some() {
            Some("secret")
        } else if v.config_map.is_some() {
            Some("configMap")
        } else if v.persistent_volume_claim.is_some() {
            Some("persistentVolumeClaim")
        } else if v.ephemeral.is_some() {
            Some("ephemeral")
        } else {
            None
        };
        if let Some(kind) = kind {
            return Err(api_ref(
                format!("{field}.{kind}"),
                &format!("a {kind} volume"),
            ));
        }
        if let Some(projected) = &v.projected {
            for (j, source) in projected.sources.iter().flatten().enumerate() {
                let as_json = serde_json::to_value(source).unwrap_or(Value::Null);
                if let Some(other) = as_json
                    .as_object()
                    .and_then(|m| m.keys().find(|k| *k != "downwardAPI"))
                {
                    return Err(api_ref(
                        format!("{field}.projected.sources[{j}].{other}"),
                        &format!("a projected {other}"),
                    ));
                }
            }
        }
    }
    let mut names = HashSet::new();
    let groups: [(&str, Vec<Container>); 3] = [
        (
            "initContainers",
            spec.init_containers.clone().unwrap_or_default(),
        ),
        ("containers", spec.containers.clone()),
        (
            "ephemeralContainers",
            spec.ephemeral_containers
                .iter()
                .flatten()
                .map(|e| {
                    serde_json::from_value(serde_json::to_value(e).unwrap_or(Value::Null))
                        .unwrap_or_default()
                })
                .collect(),
        ),
    ];
    for (group, containers) in &groups {
        for (i, c) in containers.iter().enumerate() {
            let field = format!("{base}.{group}[{i}]");
            if c.name.is_empty() {
                return Err(err(format!("{field}.name"), "required".into()));
            }
            if !names.insert(c.name.clone()) {
                return Err(err(
                    format!("{field}.name"),
                    format!("duplicate name {:?}", c.name),
                ));
            }
            for (j, e) in c.env.iter().flatten().enumerate() {
                if let Some(from) = &e.value_from {
                    if from.secret_key_ref.is_some() {
                        return Err(api_ref(
                            format!("{field}.env[{j}].valueFrom.secretKeyRef"),
                            "a secret",
                        ));
                    }
                    if from.config_map_key_ref.is_some() {
                        return Err(api_ref(
                            format!("{field}.env[{j}].valueFrom.configMapKeyRef"),
                            "a configMap",
                        ));
                    }
                }
            }
            for (j, e) in c.env_from.iter().flatten().enumerate() {
                if e.secret_ref.is_some() {
                    return Err(api_ref(
                        format!("{field}.envFrom[{j}].secretRef"),
                        "a secret",
                    ));
                }
                if e.config_map_ref.is_some() {
                    return Err(api_ref(
                        format!("{field}.envFrom[{j}].configMapRef"),
                        "a configMap",
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(yaml: &str) -> PodTemplateSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const NGINX: &str = "metadata:\n  name: nginx\n  labels: {app: nginx, tier: edge}\nspec:\n  containers:\n  - name: web\n    image: nginx:1.19.1\n    ports: [{containerPort: 80}]\n";
    const NGINX_REORDERED: &str = "spec:\n  containers:\n  - ports: [{containerPort: 80}]\n    image: nginx:1.19.1\n    name: web\nmetadata:\n  labels: {tier: edge, app: nginx}\n  name: nginx\n";

    #[test]
    fn the_hash_ignores_key_order_and_changes_with_the_image() {
        let a = template_hash(&template(NGINX));
        assert_eq!(a, template_hash(&template(NGINX_REORDERED)));
        assert_eq!(a.len(), 16);
        assert_ne!(
            a,
            template_hash(&template(&NGINX.replace("1.19.1", "1.19.2")))
        );
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v: Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[{"z":1,"y":2}],"c":null}}"#).unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":null,"d":[{"y":2,"z":1}]},"b":1}"#
        );
    }

    #[test]
    fn render_forces_name_and_namespace_and_sets_the_hash() {
        let t = template(&NGINX.replace(
            "name: nginx\n  labels",
            "name: other\n  namespace: elsewhere\n  labels",
        ));
        let r = render("StaticPod kube-system/nginx", "kube-system", "nginx", &t).unwrap();
        assert_eq!(r.pod.metadata.name.as_deref(), Some("nginx"));
        assert_eq!(r.pod.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(hash_of_manifest(&r.bytes), Some(r.hash.clone()));
        let parsed = parse_manifest(&r.bytes).unwrap();
        assert_eq!(parsed.metadata.labels.unwrap()["app"], "nginx");
        let again = render("StaticPod kube-system/nginx", "kube-system", "nginx", &t).unwrap();
        assert_eq!(r.bytes, again.bytes, "rendering is deterministic");
    }

    #[test]
    fn a_hand_placed_manifest_equal_to_the_template_is_the_same_pod() {
        let hand = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: nginx\nspec:\n  containers:\n  - name: web\n    image: nginx:1.19.1\n";
        let t = template(
            "metadata:\n  name: nginx\nspec:\n  containers:\n  - name: web\n    image: nginx:1.19.1\n",
        );
        let r = render("StaticPod default/nginx", "default", "nginx", &t).unwrap();
        assert!(same_pod(hand, &r.bytes));
        let newer = render(
            "o",
            "default",
            "nginx",
            &template("spec:\n  containers:\n  - name: web\n    image: nginx:1.19.2\n"),
        )
        .unwrap();
        assert!(!same_pod(hand, &newer.bytes));
        assert!(!same_pod(b"not yaml: [", &r.bytes));
    }

    #[test]
    fn manifest_names_that_are_not_plain_file_names_are_refused() {
        let long = "a".repeat(254);
        for bad in [
            "",
            ".",
            "..",
            "../../etc/cron.d/x",
            "a/b",
            ".hidden",
            "UPPER",
            "under_score",
            "a\0b",
            long.as_str(),
        ] {
            let e = validate_manifest_name("StaticPod default/x", bad).expect_err(bad);
            assert_eq!(e.field, "spec.staticPodManifest");
            assert!(
                e.to_string()
                    .starts_with("StaticPod default/x: spec.staticPodManifest"),
                "{e}"
            );
        }
        validate_manifest_name("o", "nginx").unwrap();
        validate_manifest_name("o", "kube-apiserver.v2").unwrap();
    }

    #[test]
    fn templates_kubelet_would_refuse_are_refused_naming_the_field() {
        let c = "  containers:\n  - name: web\n    image: x\n";
        let cases = [
            ("spec:\n  containers: []\n", "spec.template.spec.containers"),
            ("metadata: {}\n", "spec.template.spec"),
            (
                "spec:\n  containers:\n  - name: web\n    image: x\n  - name: web\n    image: y\n",
                "spec.template.spec.containers[1].name",
            ),
            (
                "spec:\n  initContainers:\n  - name: web\n    image: x\n  containers:\n  - name: web\n    image: y\n",
                "spec.template.spec.containers[0].name",
            ),
            (
                &format!("spec:\n  serviceAccountName: admin\n{c}"),
                "spec.template.spec.serviceAccountName",
            ),
            (
                &format!("spec:\n{c}  volumes:\n  - name: s\n    secret: {{secretName: s}}\n"),
                "spec.template.spec.volumes[0].secret",
            ),
            (
                &format!("spec:\n{c}  volumes:\n  - name: s\n    configMap: {{name: s}}\n"),
                "spec.template.spec.volumes[0].configMap",
            ),
            (
                &format!(
                    "spec:\n{c}  volumes:\n  - name: s\n    persistentVolumeClaim: {{claimName: s}}\n"
                ),
                "spec.template.spec.volumes[0].persistentVolumeClaim",
            ),
            (
                &format!(
                    "spec:\n{c}  volumes:\n  - name: p\n    projected:\n      sources:\n      - downwardAPI: {{items: []}}\n      - serviceAccountToken: {{path: t}}\n"
                ),
                "spec.template.spec.volumes[0].projected.sources[1].serviceAccountToken",
            ),
            (
                "spec:\n  containers:\n  - name: web\n    image: x\n    env:\n    - name: P\n      valueFrom: {secretKeyRef: {name: s, key: k}}\n",
                "spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef",
            ),
            (
                "spec:\n  containers:\n  - name: web\n    image: x\n    envFrom:\n    - configMapRef: {name: c}\n",
                "spec.template.spec.containers[0].envFrom[0].configMapRef",
            ),
        ];
        for (yaml, field) in cases {
            let e = validate_template("StaticPod default/x", &template(yaml)).expect_err(yaml);
            assert_eq!(e.field, field, "for {yaml}: {e}");
        }
        let ok = "spec:\n  containers:\n  - name: web\n    image: x\n  volumes:\n  - name: h\n    hostPath: {path: /etc}\n  - name: p\n    projected:\n      sources:\n      - downwardAPI: {items: []}\n";
        validate_template("o", &template(ok)).unwrap();
    }

    #[test]
    fn oversized_manifests_are_refused() {
        let big = "x".repeat(MAX_MANIFEST_BYTES);
        let t = template(&format!(
            "metadata:\n  annotations:\n    big: {big}\nspec:\n  containers:\n  - name: web\n    image: x\n"
        ));
        let e = render("StaticPod default/x", "default", "x", &t).unwrap_err();
        assert!(e.reason.contains("1 MiB"), "{e}");
    }
}
