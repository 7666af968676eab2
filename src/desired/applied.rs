//! What signed bundles set on this node: for each manifest a bundle upgraded, the bundle's
//! sequence, where it came from and the hash it wrote. Kept in `stateDir/bundle-applied.json`
//! (written atomically), so an agent restarted before the API server is back still knows.
//!
//! Each pass asks [`judge`] about every desired object. While the API server is unreachable a
//! manifest a bundle set is kept as it is (the cached cluster state must not undo it); once the
//! cluster is authoritative again and its template differs, the agent says so with an Event on
//! the object, forgets the record, and reconciles as usual.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::ObjectKey;
use crate::manifest::store::ManifestStore;

/// The record's file name in the state directory.
pub const FILE: &str = "bundle-applied.json";

/// One manifest a bundle upgraded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Application {
    pub object: ObjectKey,
    /// The manifest file stem.
    pub manifest: String,
    pub sequence: u64,
    /// Where the bundle came from: its URL, or the dropped file.
    pub source: String,
    /// The template hash the bundle wrote.
    pub hash: String,
    pub applied_at: Timestamp,
}

/// What a pass should do about one desired object, given what bundles set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No bundle set this manifest: plan as usual.
    NotFromBundle,
    /// A bundle's upgrade of it is running: let it end (its own deadline and rollback).
    Applying { sequence: u64 },
    /// The record no longer describes the file (edited, rolled back, or reconciled already):
    /// forget it and plan as usual.
    Stale,
    /// The cluster's template is the bundle's: forget the record, nothing to report.
    Agrees,
    /// The file is the bundle's and the cluster's (cached) template differs, but the API server
    /// is unreachable: keep the file as it is.
    KeptOffline(Application),
    /// The cluster is authoritative and its template differs: report, forget, reconcile.
    Superseded(Application),
}

/// Decide for one object: `applying` is the sequence of a bundle upgrade running on its
/// manifest; `record` what a finished one wrote; `local_hash` the hash in the file now.
pub fn judge(
    applying: Option<u64>,
    record: Option<&Application>,
    local_hash: Option<&str>,
    desired_hash: &str,
    cluster_authoritative: bool,
) -> Verdict {
    if let Some(sequence) = applying {
        return Verdict::Applying { sequence };
    }
    let Some(record) = record else {
        return Verdict::NotFromBundle;
    };
    if local_hash != Some(record.hash.as_str()) {
        return Verdict::Stale;
    }
    if record.hash == desired_hash {
        return Verdict::Agrees;
    }
    if cluster_authoritative {
        Verdict::Superseded(record.clone())
    } else {
        Verdict::KeptOffline(record.clone())
    }
}

/// The records, shared by the bundle sources (which write them) and the reconcile loop.
pub struct Applied {
    store: Arc<ManifestStore>,
    records: Mutex<BTreeMap<String, Application>>,
    /// Manifest → sequence of the bundle upgrade running on it.
    applying: Mutex<BTreeMap<String, u64>>,
}

impl Applied {
    /// Load the records (none when the file is missing; a corrupt file is reported and
    /// ignored: it only feeds reports, never a decision to write).
    pub fn load(store: Arc<ManifestStore>) -> Applied {
        let records = match store.read_state(FILE) {
            Ok(None) => BTreeMap::new(),
            Ok(Some(bytes)) => match serde_json::from_slice::<Vec<Application>>(&bytes) {
                Ok(list) => list.into_iter().map(|a| (a.manifest.clone(), a)).collect(),
                Err(e) => {
                    tracing::warn!(file = FILE, error = %e, "ignoring the unreadable record of bundle-applied manifests");
                    BTreeMap::new()
                }
            },
            Err(e) => {
                tracing::warn!(file = FILE, error = %e, "reading the record of bundle-applied manifests");
                BTreeMap::new()
            }
        };
        Applied {
            store,
            records: Mutex::new(records),
            applying: Mutex::new(BTreeMap::new()),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Application>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn applying(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.applying.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A bundle upgrade of `manifest` starts.
    pub fn begin(&self, manifest: &str, sequence: u64) {
        self.applying().insert(manifest.to_string(), sequence);
    }

    /// A bundle upgrade ended; `succeeded` holds what it wrote when the new pod became Ready.
    /// A rollback leaves any earlier record (the file it restored may be an earlier bundle's).
    pub fn end(&self, manifest: &str, succeeded: Option<Application>) {
        if let Some(application) = succeeded {
            let mut records = self.records();
            records.insert(manifest.to_string(), application);
            self.save(&records);
        }
        self.applying().remove(manifest);
    }

    /// Forget what a bundle set on `manifest`.
    pub fn forget(&self, manifest: &str) {
        let mut records = self.records();
        if records.remove(manifest).is_some() {
            self.save(&records);
        }
    }

    /// [`judge`] with this node's records.
    pub fn judge(
        &self,
        manifest: &str,
        local_hash: Option<&str>,
        desired_hash: &str,
        cluster_authoritative: bool,
    ) -> Verdict {
        let applying = self.applying().get(manifest).copied();
        let records = self.records();
        judge(
            applying,
            records.get(manifest),
            local_hash,
            desired_hash,
            cluster_authoritative,
        )
    }

    /// Every record, by manifest.
    pub fn all(&self) -> Vec<Application> {
        self.records().values().cloned().collect()
    }

    fn save(&self, records: &BTreeMap<String, Application>) {
        let list: Vec<&Application> = records.values().collect();
        let result = serde_json::to_vec_pretty(&list)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                self.store
                    .write_state(FILE, &bytes)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = result {
            tracing::warn!(file = FILE, error = %e, "saving the record of bundle-applied manifests");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::Kind;

    fn application(hash: &str) -> Application {
        Application {
            object: ObjectKey {
                kind: Kind::StaticPod,
                namespace: "default".into(),
                name: "nginx".into(),
            },
            manifest: "nginx".into(),
            sequence: 7,
            source: "https://bundles.example/edge.bundle".into(),
            hash: hash.into(),
            applied_at: "2025-01-10T00:00:00Z".parse().expect("timestamp"),
        }
    }

    #[test]
    fn a_bundle_file_is_kept_offline_and_reported_once_the_cluster_is_back() {
        let a = application("bbb");
        let judged = |reachable| judge(None, Some(&a), Some("bbb"), "ccc", reachable);
        assert_eq!(judged(false), Verdict::KeptOffline(a.clone()));
        assert_eq!(judged(true), Verdict::Superseded(a.clone()));
    }

    #[test]
    fn a_running_bundle_upgrade_is_left_to_end() {
        let a = application("bbb");
        assert_eq!(
            judge(Some(8), Some(&a), Some("bbb"), "ccc", true),
            Verdict::Applying { sequence: 8 }
        );
    }

    #[test]
    fn records_that_no_longer_describe_the_file_or_agree_with_the_cluster_are_dropped() {
        let a = application("bbb");
        assert_eq!(
            judge(None, None, Some("bbb"), "ccc", true),
            Verdict::NotFromBundle
        );
        assert_eq!(
            judge(None, Some(&a), Some("aaa"), "ccc", true),
            Verdict::Stale
        );
        assert_eq!(judge(None, Some(&a), None, "ccc", false), Verdict::Stale);
        assert_eq!(
            judge(None, Some(&a), Some("bbb"), "bbb", true),
            Verdict::Agrees
        );
    }

    #[test]
    fn records_survive_a_restart_and_forgetting_is_persisted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (manifests, state) = (dir.path().join("m"), dir.path().join("s"));
        let store = Arc::new(ManifestStore::open(&manifests, &state).expect("store"));
        let applied = Applied::load(store.clone());
        applied.begin("nginx", 7);
        assert!(matches!(
            applied.judge("nginx", Some("bbb"), "ccc", true),
            Verdict::Applying { sequence: 7 }
        ));
        applied.end("nginx", Some(application("bbb")));
        drop(applied);
        drop(store);

        let store = Arc::new(ManifestStore::open(&manifests, &state).expect("store again"));
        let applied = Applied::load(store.clone());
        assert_eq!(applied.all(), vec![application("bbb")]);
        assert_eq!(
            applied.judge("nginx", Some("bbb"), "ccc", true),
            Verdict::Superseded(application("bbb"))
        );
        applied.forget("nginx");
        drop(applied);
        drop(store);
        let store = Arc::new(ManifestStore::open(&manifests, &state).expect("store again"));
        assert!(Applied::load(store).all().is_empty());
    }
}
