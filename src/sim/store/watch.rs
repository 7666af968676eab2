//! Watches: where they start (the current objects or a resourceVersion still in the history)
//! and which event a watcher sees for each change.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

use super::fields::meta_str;
use super::{Change, ChangeKind, Store};
use crate::sim::error::ApiError;
use crate::sim::resource::ResourceKey;
use crate::sim::selector::Selectors;

/// Where a watch starts.
#[derive(Debug, Clone, Copy)]
pub enum WatchFrom {
    /// Synthetic ADDED events for every current object, then changes (rv unset or "0").
    Current,
    /// Every change after this resourceVersion.
    Version(u64),
}

/// A started watch: the changes to replay, then the live feed.
pub struct WatchStart {
    pub replay: Vec<Arc<Change>>,
    pub live: broadcast::Receiver<Arc<Change>>,
    /// The store's resourceVersion when the watch started (for bookmarks).
    pub rv: u64,
}

impl Store {
    /// Start a watch on a type: the history to replay (or the current objects), then the feed
    /// (only the changes `selectors` may match, where they require an equality). The caller
    /// filters by namespace and selectors with [`Change::event_for`].
    pub fn watch(
        &self,
        key: &ResourceKey,
        from: WatchFrom,
        selectors: &Selectors,
    ) -> Result<WatchStart, ApiError> {
        let mut inner = self.lock();
        inner.served(key)?;
        let live = inner
            .feeds
            .entry(key.clone())
            .or_insert_with(super::Feed::new)
            .subscribe(selectors.index_key());
        let replay = match from {
            WatchFrom::Current => inner.objects[key]
                .values()
                .map(|obj| {
                    Arc::new(Change {
                        rv: meta_str(obj, "resourceVersion")
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0),
                        resource: key.clone(),
                        kind: ChangeKind::Added,
                        old: None,
                        new: obj.clone(),
                    })
                })
                .collect(),
            WatchFrom::Version(rv) => {
                if rv < inner.compacted {
                    return Err(ApiError::gone(rv, inner.compacted));
                }
                inner
                    .history
                    .iter()
                    .filter(|c| c.rv > rv && &c.resource == key)
                    .cloned()
                    .collect()
            }
        };
        Ok(WatchStart {
            replay,
            live,
            rv: inner.rv,
        })
    }
}

impl Change {
    /// The watch event a watcher of `key` in `ns` with `selectors` sees for this change, if
    /// any. An object that stops matching a selector is seen as DELETED, one that starts
    /// matching as ADDED, as the API server does.
    pub fn event_for(
        &self,
        key: &ResourceKey,
        ns: Option<&str>,
        selectors: &Selectors,
    ) -> Option<(&'static str, &Value)> {
        if &self.resource != key {
            return None;
        }
        if let Some(ns) = ns
            && meta_str(&self.new, "namespace").unwrap_or_default() != ns
        {
            return None;
        }
        let new_matches = selectors.matches(&self.new);
        let old_matches = self.old.as_deref().is_some_and(|o| selectors.matches(o));
        match self.kind {
            ChangeKind::Added if new_matches => Some(("ADDED", &self.new)),
            ChangeKind::Deleted if old_matches || new_matches => Some(("DELETED", &self.new)),
            ChangeKind::Modified => match (old_matches, new_matches) {
                (true, true) => Some(("MODIFIED", &self.new)),
                (false, true) => Some(("ADDED", &self.new)),
                (true, false) => Some(("DELETED", &self.new)),
                (false, false) => None,
            },
            _ => None,
        }
    }
}
