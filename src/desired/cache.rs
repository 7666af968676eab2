//! The last desired state from the cluster, cached in the state directory so that an agent
//! restarted while the API server is down still knows it (and keeps the node as it is).

use std::collections::BTreeMap;

use super::{DesiredObject, ObjectKey};
use crate::manifest::store::{ManifestStore, StoreError};

const CACHE_FILE: &str = "desired.json";

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
