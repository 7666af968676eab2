//! The upgrade journal: one small file per upgrade in progress, in the state directory, so a
//! restarted agent (even after `kill -9`) finishes or rolls back what it was doing.
//!
//! The entry is written before the manifest is touched and removed after the upgrade ends
//! (succeeded or rolled back), both atomically. It names the revision to restore (saved in
//! the state directory before the write) and when the upgrade started (wall clock, the only
//! clock that survives a restart) so the deadline still holds across restarts.

use serde::{Deserialize, Serialize};

use crate::manifest::store::{ManifestStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "journal entry {file} is unreadable ({reason}); remove it to let the agent reconcile afresh"
    )]
    Corrupt { file: String, reason: String },
}

/// One upgrade in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// `Kind ns/name` of the object.
    pub object: String,
    /// The `staticPodManifest` (file stem) being upgraded.
    pub manifest: String,
    /// The revision saved before writing (restored on rollback); None if the node had no
    /// readable previous content.
    pub previous_revision: Option<String>,
    /// The hash being rolled out.
    pub target_hash: String,
    /// The grant Lease held, if any (`slot` in journals written before grants).
    #[serde(alias = "slot")]
    pub grant: Option<String>,
    /// Unix seconds when the upgrade started.
    pub started_at: i64,
}

/// The journal of one agent.
pub struct Journal<'a> {
    store: &'a ManifestStore,
}

impl<'a> Journal<'a> {
    pub fn new(store: &'a ManifestStore) -> Self {
        Journal { store }
    }

    fn file(manifest: &str) -> String {
        format!("journal-{manifest}.json")
    }

    /// Record an upgrade about to write its manifest.
    pub fn begin(&self, entry: &Entry) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec_pretty(entry).map_err(|e| JournalError::Corrupt {
            file: Self::file(&entry.manifest),
            reason: e.to_string(),
        })?;
        self.store
            .write_state(&Self::file(&entry.manifest), &bytes)?;
        Ok(())
    }

    /// The upgrade of this manifest ended (succeeded or rolled back).
    pub fn end(&self, manifest: &str) -> Result<(), JournalError> {
        self.store.remove_state(&Self::file(manifest))?;
        Ok(())
    }

    /// The entry for a manifest, if an upgrade of it was in progress.
    pub fn get(&self, manifest: &str) -> Result<Option<Entry>, JournalError> {
        let file = Self::file(manifest);
        match self.store.read_state(&file)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| JournalError::Corrupt {
                        file,
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// Every entry left by a previous run.
    pub fn pending(&self) -> Result<Vec<Entry>, JournalError> {
        let mut entries = Vec::new();
        let dir = self.store.state_dir();
        let listing = std::fs::read_dir(dir).map_err(|source| StoreError::Io {
            action: "listing state directory",
            path: dir.to_path_buf(),
            source,
        })?;
        for item in listing.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            if let Some(manifest) = name
                .strip_prefix("journal-")
                .and_then(|n| n.strip_suffix(".json"))
                && let Some(entry) = self.get(manifest)?
            {
                entries.push(entry);
            }
        }
        entries.sort_by(|a, b| a.manifest.cmp(&b.manifest));
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_restart_and_end_removes_them() {
        let root = tempfile::tempdir().unwrap();
        let entry = Entry {
            object: "StaticPod default/nginx".into(),
            manifest: "nginx".into(),
            previous_revision: Some("abc".into()),
            target_hash: "def".into(),
            grant: Some("sp.default.nginx.edge-1".into()),
            started_at: 1_700_000_000,
        };
        {
            let store =
                ManifestStore::open(&root.path().join("m"), &root.path().join("s")).unwrap();
            Journal::new(&store).begin(&entry).unwrap();
        }
        let store = ManifestStore::open(&root.path().join("m"), &root.path().join("s")).unwrap();
        let journal = Journal::new(&store);
        assert_eq!(journal.pending().unwrap(), vec![entry.clone()]);
        journal.end("nginx").unwrap();
        assert_eq!(journal.pending().unwrap(), vec![]);
        journal.end("nginx").unwrap();
    }

    #[test]
    fn a_corrupt_entry_is_reported_not_ignored() {
        let root = tempfile::tempdir().unwrap();
        let store = ManifestStore::open(&root.path().join("m"), &root.path().join("s")).unwrap();
        store
            .write_state("journal-nginx.json", b"{not json")
            .unwrap();
        let err = Journal::new(&store).pending().unwrap_err().to_string();
        assert!(err.contains("journal-nginx.json"), "{err}");
    }
}
