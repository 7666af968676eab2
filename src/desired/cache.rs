//! The last desired state from the cluster, cached in the state directory so that an agent
//! restarted while the API server is down still knows it (and keeps the node as it is).

use std::collections::BTreeMap;

use super::{DesiredObject, ObjectKey};
use crate::manifest::store::{ManifestStore, StoreError};

const CACHE_FILE: &str = "desired.json";
/// This node's labels as last seen, for bundle targeting by an agent restarted offline.
const NODE_LABELS_FILE: &str = "node-labels.json";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the desired-state cache {file} is unreadable ({reason}); it will be rebuilt from the API server"
    )]
    Corrupt { file: String, reason: String },
}

/// Save the desired objects (atomic replace).
pub fn save(
    store: &ManifestStore,
    objects: &BTreeMap<ObjectKey, DesiredObject>,
) -> Result<(), CacheError> {
    let list: Vec<&DesiredObject> = objects.values().collect();
    let bytes = serde_json::to_vec(&list).map_err(|e| CacheError::Corrupt {
        file: CACHE_FILE.into(),
        reason: e.to_string(),
    })?;
    store.write_state(CACHE_FILE, &bytes)?;
    Ok(())
}

/// Save this node's labels (atomic replace).
pub fn save_node_labels(
    store: &ManifestStore,
    labels: &BTreeMap<String, String>,
) -> Result<(), CacheError> {
    let bytes = serde_json::to_vec(labels).map_err(|e| CacheError::Corrupt {
        file: NODE_LABELS_FILE.into(),
        reason: e.to_string(),
    })?;
    store.write_state(NODE_LABELS_FILE, &bytes)?;
    Ok(())
}

/// This node's labels as last saved; `None` when never saved.
pub fn load_node_labels(
    store: &ManifestStore,
) -> Result<Option<BTreeMap<String, String>>, CacheError> {
    let Some(bytes) = store.read_state(NODE_LABELS_FILE)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| CacheError::Corrupt {
            file: NODE_LABELS_FILE.into(),
            reason: e.to_string(),
        })
}

/// Load the cached desired objects (empty when there is no cache yet).
pub fn load(store: &ManifestStore) -> Result<BTreeMap<ObjectKey, DesiredObject>, CacheError> {
    let Some(bytes) = store.read_state(CACHE_FILE)? else {
        return Ok(BTreeMap::new());
    };
    let list: Vec<DesiredObject> =
        serde_json::from_slice(&bytes).map_err(|e| CacheError::Corrupt {
            file: CACHE_FILE.into(),
            reason: e.to_string(),
        })?;
    Ok(list.into_iter().map(|d| (d.key.clone(), d)).collect())
}
