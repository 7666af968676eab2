//! Sources of desired state: the cluster (watched, cached in the state directory) and signed
//! bundles, dropped into a directory ([`drop`]) or fetched over HTTP(S) ([`http`]), and who
//! is authoritative when they disagree ([`authority`]; what bundles set is remembered by
//! [`applied`]). Everything downstream sees a [`DesiredObject`]: an object already validated
//! and rendered, or refused with a reason.

pub mod applied;
pub mod authority;
pub mod cache;
pub mod cluster;
pub mod drop;
pub mod http;

use serde::{Deserialize, Serialize};

pub use crate::resources::{Kind, MaxUnavailable, ObjectKey, Refusal, Strategy};

/// One object's desired state, validated and rendered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredObject {
    pub key: ObjectKey,
    pub uid: String,
    pub generation: i64,
    /// `spec.staticPodManifest`: the manifest file stem.
    pub manifest: String,
    pub strategy: Strategy,
    /// The controller resolves it against the member count; shown in `status`.
    pub max_unavailable: MaxUnavailable,
    pub revision_history_limit: usize,
    /// The template hash (the desired revision).
    pub hash: String,
    /// The manifest bytes to write.
    #[serde(with = "bytes_as_string")]
    pub rendered: Vec<u8>,
}

/// A verified bundle's items as desired objects, and the items that could not become one
/// (invalid templates), each as `object: reason`.
pub fn bundle_objects(bundle: &crate::bundle::Bundle) -> (Vec<DesiredObject>, Vec<String>) {
    let mut objects = Vec::new();
    let mut refused = Vec::new();
    for item in &bundle.items {
        let converted = match item {
            crate::bundle::BundleItem::StaticPod(o) => cluster::from_static_pod(o),
            crate::bundle::BundleItem::YurtStaticSet(o) => cluster::from_yurt_static_set(o),
        };
        match converted {
            Ok(d) => objects.push(d),
            Err(r) => refused.push(format!("{}: {}", r.key, r.reason)),
        }
    }
    (objects, refused)
}

mod bytes_as_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}
