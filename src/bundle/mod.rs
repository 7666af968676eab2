//! Signed bundles: how desired state reaches a node that cannot reach the API server.
//!
//! A bundle is a DSSE envelope ([`dsse`]) whose payload ([`payload`]) lists StaticPod and
//! YurtStaticSet objects with a sequence number, an expiry and optional node targeting. It is
//! signed with Ed25519 keys kept in the PEM files openssl writes ([`keys`]), and admitted only
//! by a [`TrustPolicy`] ([`policy`]): k of n trusted keys, verified before the payload is
//! parsed, then expiry, clock and anti-rollback checks against persisted [`BundleState`].
//!
//! No I/O here besides reading and writing key files and the small bundle state file; fetching
//! bundles and applying their items belong to the agent.
//!
//! ```no_run
//! # use std::collections::BTreeMap;
//! # use std::path::{Path, PathBuf};
//! # use staticpod_puller::bundle::{self, StateStore, TrustPolicy};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let now = k8s_openapi::jiff::Timestamp::now();
//! let key = bundle::PrivateKey::load(Path::new("signer.key"))?;
//! let items = std::fs::read_to_string("items.yaml")?;
//! let day = std::time::Duration::from_secs(86_400);
//! let envelope = bundle::sign(&items, &[key], 42, day * 30, None, now)?;
//!
//! let policy = TrustPolicy::load(&[PathBuf::from("signer.pub")], 1)?;
//! let store = StateStore::new(Path::new("/var/lib/staticpod-puller"));
//! match bundle::accept(&policy, &store, &envelope, "edge-1", &BTreeMap::new(), now) {
//!     Ok(verified) => println!("apply {} items", verified.bundle.items.len()),
//!     Err(e) => println!("refused: {e}"),
//! }
//! # Ok(())
//! # }
//! ```

pub mod dsse;
pub mod keys;
pub mod payload;
pub mod policy;
pub mod template;

#[cfg(test)]
mod tamper_tests;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::Value;

pub use dsse::{Envelope, EnvelopeLimits, PAYLOAD_TYPE, SignatureCheck};
pub use keys::{KeyError, KeyFiles, KeyId, PrivateKey, PublicKey, keygen};
pub use payload::{Bundle, BundleItem, NodeSelector, NotTargeted, PayloadError, Targets};
pub use policy::{
    AcceptError, BundleState, Limits, PolicyError, Refusal, StateError, StateStore, TrustPolicy,
    Verified, accept,
};

/// Signing a bundle failed; nothing was produced.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("signing a bundle: no signing keys given")]
    NoKeys,
    #[error("signing a bundle: key {0} given more than once")]
    DuplicateKey(KeyId),
    #[error("signing a bundle: reading the items YAML: {0}")]
    Items(String),
    #[error("signing a bundle: an item document is a {0}, not an object or a list of objects")]
    NotAnObject(&'static str),
    #[error("signing a bundle: expiry {issued_at} + {valid_for:?} is out of range")]
    Expiry {
        issued_at: Timestamp,
        valid_for: std::time::Duration,
    },
    #[error(
        "signing a bundle: the payload is {size} bytes, over the {limit}-byte limit agents accept"
    )]
    TooLarge { size: usize, limit: usize },
    #[error("signing a bundle: {0}")]
    Payload(#[from] PayloadError),
}

/// Build a bundle from `items_yaml` and sign it with every key: the envelope JSON, ready to
/// serve or drop onto a node.
///
/// `items_yaml` holds the objects as `kubectl get ... -o yaml` prints them: one or more YAML
/// documents, each an object, a `kind: List`, or a sequence of objects. Status and server-set
/// metadata are dropped. The bundle is issued at `issued_at` and expires `valid_for` later.
/// Everything an agent would refuse for its content (kinds, caps, targeting syntax, and items
/// it would not write: manifest names, pod templates, strategies, checked by the same code)
/// is refused here first, naming the item.
pub fn sign(
    items_yaml: &str,
    keys: &[PrivateKey],
    sequence: u64,
    valid_for: std::time::Duration,
    targets: Option<Targets>,
    issued_at: Timestamp,
) -> Result<Vec<u8>, SignError> {
    if keys.is_empty() {
        return Err(SignError::NoKeys);
    }
    for (i, key) in keys.iter().enumerate() {
        if keys[..i].iter().any(|k| k.id() == key.id()) {
            return Err(SignError::DuplicateKey(key.id().clone()));
        }
    }
    let expires_at = SignedDuration::try_from(valid_for)
        .ok()
        .and_then(|d| issued_at.checked_add(d).ok())
        .ok_or(SignError::Expiry {
            issued_at,
            valid_for,
        })?;
    let items = read_items(items_yaml)?;
    // Validates kinds, duplicates, the item cap and each item's template, as an agent will.
    payload::parse_items(items.clone(), payload::DEFAULT_MAX_ITEMS)?;
    let document = payload::PayloadDocument {
        api_version: payload::API_VERSION.to_string(),
        kind: payload::KIND.to_string(),
        sequence,
        issued_at,
        expires_at,
        targets,
        items,
    };
    // JSON: a subset of YAML with one reading, so what is signed is what agents parse.
    let mut bytes =
        serde_json::to_vec_pretty(&document).map_err(|e| PayloadError::Serialize(e.to_string()))?;
    bytes.push(b'\n');
    let limit = EnvelopeLimits::default().max_payload_bytes;
    if bytes.len() > limit {
        return Err(SignError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    payload::parse(&bytes, payload::DEFAULT_MAX_ITEMS)?;
    Ok(dsse::sign(PAYLOAD_TYPE, bytes, keys).to_json())
}

/// The item objects of a kubectl-style YAML stream, status and server metadata removed.
fn read_items(items_yaml: &str) -> Result<Vec<Value>, SignError> {
    let documents: Vec<Value> =
        serde_saphyr::from_multiple_with_options(items_yaml, payload::yaml_options())
            .map_err(|e| SignError::Items(e.to_string()))?;
    let mut items = Vec::new();
    for document in documents {
        match document {
            Value::Array(list) => items.extend(list),
            Value::Object(mut object)
                if object.get("kind").and_then(Value::as_str) == Some("List") =>
            {
                match object.remove("items") {
                    Some(Value::Array(list)) => items.extend(list),
                    Some(Value::Null) | None => {}
                    Some(other) => return Err(SignError::NotAnObject(json_type(&other))),
                }
            }
            Value::Object(object) => items.push(Value::Object(object)),
            Value::Null => {}
            other => return Err(SignError::NotAnObject(json_type(&other))),
        }
    }
    for item in &mut items {
        payload::strip_server_fields(item);
    }
    Ok(items)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// What an envelope claims, without trusting it (for `bundle inspect`).
#[derive(Debug)]
pub struct Inspection {
    pub payload_type: String,
    /// The key ids the signatures name (unverified hints).
    pub keyids: Vec<String>,
    pub payload_bytes: usize,
    /// The payload parsed as if it were trusted; it is not.
    pub bundle: Result<Bundle, PayloadError>,
}

/// Read an envelope and its payload without checking any signature.
pub fn inspect(envelope: &[u8], limits: &Limits) -> Result<Inspection, dsse::DsseError> {
    let envelope = Envelope::parse(envelope, &limits.envelope)?;
    Ok(Inspection {
        keyids: envelope
            .signatures
            .iter()
            .map(|s| s.keyid.clone())
            .collect(),
        payload_bytes: envelope.payload.len(),
        bundle: payload::parse(&envelope.payload, limits.max_items),
        payload_type: envelope.payload_type,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::payload::tests::KUBECTL_YSS;
    use super::*;

    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

    fn now() -> Timestamp {
        "2025-01-10T00:00:00Z".parse().expect("timestamp")
    }

    fn signers(n: usize) -> Vec<PrivateKey> {
        (0..n)
            .map(|_| PrivateKey::generate().expect("keygen"))
            .collect()
    }

    #[test]
    fn sign_then_accept() {
        let keys = signers(2);
        let items = format!(
            "{KUBECTL_YSS}---\n{}",
            KUBECTL_YSS.replace("YurtStaticSet", "StaticPod")
        );
        let targets = Targets {
            nodes: vec!["edge-1".into()],
            node_selector: Some(NodeSelector::parse("zone=a").expect("selector")),
        };
        let envelope =
            sign(&items, &keys, 42, DAY * 30, Some(targets.clone()), now()).expect("signs");
        let trusted: Vec<PublicKey> = keys.iter().map(|k| k.public_key().clone()).collect();
        let policy = TrustPolicy::new(trusted, 2).expect("policy");
        let labels = BTreeMap::from([("zone".to_string(), "a".to_string())]);
        let mut state = BundleState::default();
        let verified = policy
            .admit(&envelope, "edge-1", &labels, &mut state, now())
            .expect("admitted");
        let bundle = &verified.bundle;
        assert_eq!(bundle.sequence, 42);
        assert_eq!(bundle.issued_at, now());
        assert_eq!(bundle.expires_at.to_string(), "2025-02-09T00:00:00Z");
        assert_eq!(bundle.targets, Some(targets));
        let kinds: Vec<&str> = bundle.items.iter().map(BundleItem::kind).collect();
        assert_eq!(kinds, ["YurtStaticSet", "StaticPod"]);
        // Server fields were not signed at all.
        let text = String::from_utf8(verified.payload).expect("utf-8");
        assert!(
            !text.contains("resourceVersion") && !text.contains("managedFields"),
            "{text}"
        );
        assert!(!text.contains("status"), "{text}");

        let inspection = inspect(&envelope, &Limits::default()).expect("inspects");
        assert_eq!(inspection.payload_type, PAYLOAD_TYPE);
        assert_eq!(inspection.keyids.len(), 2);
        assert_eq!(inspection.bundle.expect("parses").sequence, 42);
    }

    #[test]
    fn kubectl_lists_and_sequences_are_read() {
        let keys = signers(1);
        let item = KUBECTL_YSS.replace('\n', "\n  ");
        let list = format!("apiVersion: v1\nkind: List\nitems:\n-{item}");
        let envelope = sign(&list, &keys, 1, DAY, None, now()).expect("a List signs");
        let inspection = inspect(&envelope, &Limits::default()).expect("inspects");
        assert_eq!(inspection.bundle.expect("parses").items.len(), 1);
        let sequence = format!("-{item}");
        sign(&sequence, &keys, 1, DAY, None, now()).expect("a sequence signs");
    }

    #[test]
    fn sign_refuses_what_agents_would_refuse() {
        let keys = signers(1);
        let deployment = KUBECTL_YSS.replace("kind: YurtStaticSet", "kind: Deployment");
        let err = sign(&deployment, &keys, 1, DAY, None, now()).expect_err("wrong kind");
        assert!(
            err.to_string().contains("item 0: kind \"Deployment\""),
            "{err}"
        );
        // Items a node would refuse to write are refused at signing, naming the item.
        for (from, to, expected) in [
            (
                "staticPodManifest: nginx",
                "staticPodManifest: ../../etc/cron.d/x",
                "item 0 would be refused: YurtStaticSet default/nginx: spec.staticPodManifest: \
                 must be a plain file name (no path), got \"../../etc/cron.d/x\"",
            ),
            (
                "hostPath: {path: /etc/nginx}",
                "secret: {secretName: tls}",
                "spec.template.spec.volumes[0].secret: a static pod may not reference a secret volume",
            ),
            (
                "type: AdvancedRollingUpdate",
                "type: Sometimes",
                "YurtStaticSet default/nginx: ",
            ),
        ] {
            assert!(KUBECTL_YSS.contains(from), "fixture lacks {from:?}");
            let items = KUBECTL_YSS.replacen(from, to, 1);
            let err = sign(&items, &keys, 1, DAY, None, now()).expect_err(to);
            assert!(
                matches!(
                    &err,
                    SignError::Payload(PayloadError::InvalidItem { index: 0, .. })
                ),
                "{err:?}"
            );
            assert!(err.to_string().contains(expected), "{to}: {err}");
        }
        let err = sign(KUBECTL_YSS, &keys, 0, DAY, None, now()).expect_err("sequence 0");
        assert!(
            err.to_string().contains("sequence must be at least 1"),
            "{err}"
        );
        let err = sign(KUBECTL_YSS, &[], 1, DAY, None, now()).expect_err("no keys");
        assert!(matches!(err, SignError::NoKeys), "{err}");
        let err = sign("just a string", &keys, 1, DAY, None, now()).expect_err("not objects");
        assert!(matches!(err, SignError::NotAnObject("string")), "{err}");
        let err = sign(
            KUBECTL_YSS,
            &keys,
            1,
            std::time::Duration::ZERO,
            None,
            now(),
        )
        .expect_err("zero validity");
        assert!(err.to_string().contains("is not after issuedAt"), "{err}");
    }
}
