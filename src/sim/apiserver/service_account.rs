//! The part of the API server's ServiceAccount admission the controller relies on: a pod
//! created without a service account gets `default`, and a mirror pod may not name one. So
//! the empty service account selects exactly the mirror pods (the controller's pod watch).

use serde_json::{Value, json};

use crate::sim::error::ApiError;

const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Admit a pod being created: default its service account, or refuse a mirror pod naming one.
pub(super) fn admit_pod(pod: &mut Value) -> Result<(), ApiError> {
    let mirror = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION));
    let named = pod
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty());
    if mirror && named {
        let name = pod
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return Err(ApiError::with_details(
            403,
            "Forbidden",
            format!(
                "pods \"{name}\" is forbidden: a mirror pod may not reference service accounts"
            ),
            json!({"name": name, "kind": "pods"}),
        ));
    }
    if !mirror
        && !named
        && let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.insert("serviceAccountName".into(), json!("default"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_gets_the_default_service_account_and_a_mirror_pod_may_name_none() {
        let mut pod = json!({"metadata": {"name": "web"}, "spec": {"containers": []}});
        admit_pod(&mut pod).expect("admitted");
        assert_eq!(pod["spec"]["serviceAccountName"], "default");

        let mut mirror = json!({"metadata": {"name": "nginx-n1",
            "annotations": {MIRROR_ANNOTATION: "abc"}}, "spec": {"containers": []}});
        admit_pod(&mut mirror).expect("admitted");
        assert!(mirror["spec"].get("serviceAccountName").is_none());

        mirror["spec"]["serviceAccountName"] = json!("builder");
        let refused = admit_pod(&mut mirror).expect_err("refused");
        assert_eq!(refused.code, 403);
        assert!(
            refused
                .message
                .contains("a mirror pod may not reference service accounts")
        );
    }
}
