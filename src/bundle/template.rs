//! Signed templates: a DSSE envelope in an annotation of a StaticPod / YurtStaticSet, over its
//! kind, namespace, name and template. With `trust.requireSignedTemplates` an agent acts only on
//! objects whose signature verifies against the trusted keys, so a compromised control plane
//! cannot push an arbitrary privileged static pod to the edge.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::json;

use super::dsse::{self, Envelope, EnvelopeLimits};
use super::keys::PrivateKey;
use super::policy::TrustPolicy;

/// The annotation holding the envelope (compact JSON).
pub const ANNOTATION: &str = "staticpod-puller.openyurt.io/signature";
/// The payload type of a template signature.
pub const PAYLOAD_TYPE: &str = "application/vnd.staticpod-puller.template.v1+json";

/// What is signed: the object's identity and its template, as canonical JSON (keys sorted), so
/// any change to the template or a copy under another name breaks the signature.
pub fn payload(kind: &str, namespace: &str, name: &str, template: &PodTemplateSpec) -> Vec<u8> {
    let template = serde_json::to_value(template).unwrap_or_default();
    crate::manifest::canonical_json(&json!({
        "kind": kind,
        "namespace": namespace,
        "name": name,
        "template": template,
    }))
    .into_bytes()
}

/// The annotation value signing this object with every key.
pub fn sign(
    kind: &str,
    namespace: &str,
    name: &str,
    template: &PodTemplateSpec,
    keys: &[PrivateKey],
) -> String {
    let envelope = dsse::sign(PAYLOAD_TYPE, payload(kind, namespace, name, template), keys);
    String::from_utf8_lossy(&envelope.to_json()).into_owned()
}

/// Check an object's signature annotation; the error says why it is not trusted.
pub fn verify(
    policy: &TrustPolicy,
    annotation: Option<&str>,
    kind: &str,
    namespace: &str,
    name: &str,
    template: &PodTemplateSpec,
) -> Result<(), String> {
    let Some(annotation) = annotation else {
        return Err(format!("not signed: no {ANNOTATION} annotation"));
    };
    let envelope = Envelope::parse(annotation.as_bytes(), &EnvelopeLimits::default())
        .map_err(|e| format!("signature annotation {ANNOTATION}: {e}"))?;
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(format!(
            "signature annotation {ANNOTATION}: payload type {:?}, expected {PAYLOAD_TYPE}",
            envelope.payload_type
        ));
    }
    let check = envelope.verify(policy.keys());
    if check.valid.len() < policy.threshold() {
        let bad: Vec<String> = check.bad.iter().map(|k| k.to_string()).collect();
        let mut reason = format!(
            "signature threshold {} not met: {} valid",
            policy.threshold(),
            check.valid.len()
        );
        if !bad.is_empty() {
            reason.push_str(&format!(" (bad signature from key {})", bad.join(", ")));
        }
        return Err(reason);
    }
    if envelope.payload != payload(kind, namespace, name, template) {
        return Err(
            "the signature is valid but covers another template or object: the template was changed after signing"
                .to_string(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({"spec": {"containers": [{"name": "web", "image": image}]}}))
            .expect("a template")
    }

    #[test]
    fn a_signed_template_verifies_and_any_change_breaks_it() {
        let keys = [PrivateKey::generate().expect("keygen")];
        let policy = TrustPolicy::new(vec![keys[0].public_key().clone()], 1).expect("policy");
        let t = template("nginx:1.19.2");
        let signed = sign("StaticPod", "default", "nginx", &t, &keys);
        assert_eq!(
            verify(&policy, Some(&signed), "StaticPod", "default", "nginx", &t),
            Ok(())
        );
        let changed = template("evil:latest");
        let err = verify(
            &policy,
            Some(&signed),
            "StaticPod",
            "default",
            "nginx",
            &changed,
        )
        .expect_err("a changed template");
        assert!(err.contains("template was changed"), "{err}");
        let err = verify(&policy, Some(&signed), "StaticPod", "default", "other", &t)
            .expect_err("another name");
        assert!(err.contains("another template or object"), "{err}");
        let err = verify(&policy, None, "StaticPod", "default", "nginx", &t).expect_err("unsigned");
        assert!(err.contains("not signed"), "{err}");
    }

    #[test]
    fn a_signature_by_an_untrusted_key_is_refused() {
        let trusted = PrivateKey::generate().expect("keygen");
        let stranger = [PrivateKey::generate().expect("keygen")];
        let policy = TrustPolicy::new(vec![trusted.public_key().clone()], 1).expect("policy");
        let t = template("nginx:1.19.2");
        let signed = sign("StaticPod", "default", "nginx", &t, &stranger);
        let err = verify(&policy, Some(&signed), "StaticPod", "default", "nginx", &t)
            .expect_err("untrusted signer");
        assert!(err.contains("threshold 1 not met: 0 valid"), "{err}");
    }
}
