//! Reading a manifest file as kubelet does.

use ring::digest;
use serde_json::Value;

/// A manifest kubelet would run: the pod's (namespace, name), the hash of the file's bytes
/// (its `kubernetes.io/config.hash`), and the pod.
#[derive(Debug, Clone)]
pub(super) struct ParsedManifest {
    pub(super) key: (String, String),
    pub(super) hash: String,
    pub(super) manifest: Value,
}

/// Parse a manifest file as kubelet would: a `v1 Pod` with a name and at least one container.
pub(super) fn parse_manifest(bytes: &[u8], file: &str, node: &str) -> Option<ParsedManifest> {
    let text = std::str::from_utf8(bytes).ok()?;
    let manifest: Value = match serde_saphyr::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(node, file, error = %e, "simulated kubelet: unreadable manifest skipped");
            return None;
        }
    };
    let kind_ok = manifest.get("kind").and_then(Value::as_str) == Some("Pod")
        && manifest.get("apiVersion").and_then(Value::as_str) == Some("v1");
    let name = manifest
        .pointer("/metadata/name")
        .and_then(Value::as_str)?
        .to_string();
    let has_containers = manifest
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .is_some_and(|c| !c.is_empty());
    if !kind_ok || name.is_empty() || !has_containers {
        tracing::debug!(
            node,
            file,
            "simulated kubelet: not a valid static pod manifest, skipped"
        );
        return None;
    }
    let namespace = manifest
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    let hash: String = digest::digest(&digest::SHA256, bytes).as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(ParsedManifest {
        key: (namespace, name),
        hash,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_kubelet_would_not_run_are_skipped() {
        let good = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: nginx\nspec:\n  containers:\n  - name: web\n    image: nginx:1.19.1\n";
        let parsed = parse_manifest(good, "nginx.yaml", "n1").expect("a valid manifest parses");
        assert_eq!(parsed.key, ("default".to_string(), "nginx".to_string()));
        assert!(
            parse_manifest(
                b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec: {}\n",
                "x.yaml",
                "n1"
            )
            .is_none()
        );
        assert!(parse_manifest(b"{{{", "bad.yaml", "n1").is_none());
        let other = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: nginx\nspec:\n  containers:\n  - name: web\n    image: nginx:1.19.2\n";
        assert_ne!(
            parse_manifest(other, "nginx.yaml", "n1").unwrap().hash,
            parsed.hash
        );
    }
}
