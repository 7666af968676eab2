//! What a mirror pod says of the manifest kubelet runs: which object it belongs to, the hash
//! it carries, whether it is Ready.

use k8s_openapi::api::core::v1::Pod;

use super::HASH_ANNOTATION;

/// kubelet's annotation saying where a pod came from (`file` for a manifest, `api` otherwise).
pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";

/// True when `pod` is the mirror pod of a static pod named `name` (the object's name).
pub fn is_member_pod(name: &str, pod: &Pod) -> bool {
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
        return false;
    };
    let source = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_SOURCE));
    let static_pod = source.is_some_and(|s| s != "api");
    static_pod && pod.metadata.name.as_deref() == Some(format!("{name}-{node}").as_str())
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn pod_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(HASH_ANNOTATION)
        .map(String::as_str)
}
