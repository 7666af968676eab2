//! One upgrade of one manifest on this node: back up → journal → atomic write → wait until
//! the mirror pod carries the new hash and is Ready → done; on the deadline, remember the
//! failed hash, restore the previous manifest atomically, and report.
//!
//! The grant (if any) is the controller's; the upgrade renews it while waiting and finishes it
//! (the outcome recorded, the grant released) when it ends, before it closes the journal: an
//! open journal entry means "not over", so a restarted agent finds every upgrade whose grant
//! may still be open, and a closed one means the grant carries the outcome.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::events::{Reason, Recorder};
use super::grant::{Finish, Grant, Grants};
use super::journal::{Entry, Journal, JournalError};
use super::plan::{MirrorState, local_hash};
use crate::desired::DesiredObject;
use crate::kill_point::{KillPoint, reached};
use crate::manifest::store::{ManifestStore, StoreError};

/// File in the state directory remembering hashes rolled back on this node, per manifest.
const FAILED_FILE: &str = "failed.json";

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrading {object}: {source}")]
    Store { object: String, source: StoreError },
    #[error("upgrading {object}: {source}")]
    Journal {
        object: String,
        source: JournalError,
    },
    #[error("upgrading {object}: the node has no {manifest}.yaml any more")]
    Vanished { object: String, manifest: String },
}

/// How an upgrade ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded {
        elapsed: Duration,
    },
    RolledBack {
        reason: String,
        /// The revision put back.
        restored: String,
    },
    /// A newer template arrived while waiting; the caller starts over with it.
    Superseded,
}

/// Where the agent reads its mirror pods (a reflector over this node's pods, or kubelet's
/// local pod list when the API server is unreachable).
pub trait MirrorPods: Send + Sync {
    fn mirror(&self, namespace: &str, pod_name: &str) -> Option<MirrorState>;
    /// A receiver that is marked changed whenever the pods (or the node) may have changed.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<()>;
    /// False while this node is known to be NotReady: its kubelet is not reporting, so no
    /// upgrade can be seen to succeed, and the progress deadline does not run.
    fn node_ready(&self) -> bool;
}

/// The upgrades running on this node, by manifest: at most one per manifest, whoever started
/// it (the rolling upgrade loop, or the local API for OTA).
#[derive(Default)]
pub struct InFlight {
    /// Manifest → the newest desired hash (differs from the one being written once superseded).
    latest: Mutex<HashMap<String, Arc<Mutex<String>>>>,
}

impl InFlight {
    /// Register an upgrade of `manifest` to `hash`; `None` when one is already running. The
    /// returned cell is what `superseded` checks.
    pub fn begin(&self, manifest: &str, hash: &str) -> Option<Arc<Mutex<String>>> {
        let mut map = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(manifest) {
            return None;
        }
        let cell = Arc::new(Mutex::new(hash.to_string()));
        map.insert(manifest.to_string(), cell.clone());
        Some(cell)
    }

    pub fn end(&self, manifest: &str) {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(manifest);
    }

    /// Record the newest desired hash of a running upgrade; false when none is running.
    pub fn update(&self, manifest: &str, hash: &str) -> bool {
        let map = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(manifest) {
            Some(cell) => {
                *cell.lock().unwrap_or_else(|e| e.into_inner()) = hash.to_string();
                true
            }
            None => false,
        }
    }

    pub fn contains(&self, manifest: &str) -> bool {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(manifest)
    }

    pub fn is_empty(&self) -> bool {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }
}

/// Hashes rolled back on this node: not retried until the template changes.
#[derive(Default)]
pub struct FailedHashes {
    by_manifest: Mutex<HashMap<String, String>>,
}

impl FailedHashes {
    pub fn load(store: &ManifestStore) -> Self {
        let map = store
            .read_state(FAILED_FILE)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        FailedHashes {
            by_manifest: Mutex::new(map),
        }
    }

    pub fn snapshot(&self) -> HashMap<String, String> {
        self.by_manifest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn record(&self, store: &ManifestStore, manifest: &str, hash: &str) -> Result<(), StoreError> {
        let mut map = self.by_manifest.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(manifest.to_string(), hash.to_string());
        save(store, &map)
    }

    /// `hash` is being tried again (a retry): forget that it failed, so a failure recorded
    /// from now on is this attempt's.
    fn forget(&self, store: &ManifestStore, manifest: &str, hash: &str) -> Result<(), StoreError> {
        let mut map = self.by_manifest.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(manifest).map(String::as_str) != Some(hash) {
            return Ok(());
        }
        map.remove(manifest);
        save(store, &map)
    }

    fn failed(&self, manifest: &str, hash: &str) -> bool {
        self.by_manifest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(manifest)
            .is_some_and(|h| h == hash)
    }
}

fn save(store: &ManifestStore, failed: &HashMap<String, String>) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(failed).unwrap_or_default();
    store.write_state(FAILED_FILE, &bytes)
}

/// Everything an upgrade needs.
pub struct Upgrader {
    pub node: String,
    pub store: Arc<ManifestStore>,
    pub mirrors: Arc<dyn MirrorPods>,
    pub events: Recorder,
    pub failed: Arc<FailedHashes>,
    pub progress_deadline: Duration,
    pub lease_duration: Duration,
}

impl Upgrader {
    /// The same upgrader reading pod state from `mirrors` (kubelet's pod list, offline).
    pub fn with_mirrors(&self, mirrors: Arc<dyn MirrorPods>) -> Upgrader {
        Upgrader {
            node: self.node.clone(),
            store: self.store.clone(),
            mirrors,
            events: self.events.clone(),
            failed: self.failed.clone(),
            progress_deadline: self.progress_deadline,
            lease_duration: self.lease_duration,
        }
    }

    /// Run an upgrade to `desired`, holding `grant` (a grant, if any) until it ends: the grant
    /// is renewed while waiting and finished with the outcome before the outcome is reported,
    /// so the next node starts as early as possible. `superseded` is asked while waiting whether a newer template replaced
    /// this one; `on_written` is called once the new manifest is in place.
    #[tracing::instrument(skip_all, fields(object = %desired.key, node = %self.node, hash = %desired.hash))]
    pub async fn upgrade(
        &self,
        desired: &DesiredObject,
        grant: Option<(&Grants, &Grant)>,
        superseded: impl Fn() -> bool,
        on_written: impl FnOnce(),
    ) -> Result<Outcome, UpgradeError> {
        if grant.is_some() {
            reached(KillPoint::Granted);
        }
        let result = match self.write(desired, grant).await {
            Ok(entry) => {
                on_written();
                let deadline = Instant::now() + self.progress_deadline;
                self.wait(desired, &entry, deadline, grant, superseded)
                    .await
            }
            Err(e) => Err(e),
        };
        self.finish(desired, grant, result).await
    }

    /// Finish an upgrade a previous run of the agent left in the journal, holding `grant` (the
    /// one it held, if it is still open) until it ends. Whatever step the run was killed at,
    /// the grant is taken up at once: finished with the outcome, or kept for the upgrade the
    /// reconcile pass starts again.
    pub async fn resume(
        &self,
        desired: Option<&DesiredObject>,
        entry: &Entry,
        grant: Option<(&Grants, &Grant)>,
    ) -> Result<Outcome, UpgradeError> {
        let object = entry.object.clone();
        let local = self
            .store
            .read(&entry.manifest)
            .map_err(|source| UpgradeError::Store {
                object: object.clone(),
                source,
            })?;
        let written =
            local.as_deref().and_then(local_hash).as_deref() == Some(entry.target_hash.as_str());
        let Some(desired) = desired.filter(|d| d.hash == entry.target_hash) else {
            // The template changed since: nothing of this upgrade to finish; the reconcile
            // pass plans afresh from what is on disk.
            release(grant, &Finish::Released).await;
            return self
                .close(&object, &entry.manifest)
                .map(|()| Outcome::Superseded);
        };
        if written {
            let elapsed =
                Duration::from_secs(unix_now().saturating_sub(entry.started_at).max(0) as u64);
            let deadline = Instant::now() + self.progress_deadline.saturating_sub(elapsed);
            tracing::info!(object = %object, node = %self.node, "resuming an upgrade left by a previous run");
            let result = self.wait(desired, entry, deadline, grant, || false).await;
            return self.finish(desired, grant, result).await;
        }
        if self.failed.failed(&entry.manifest, &entry.target_hash) {
            // Killed after the rollback restored the previous revision.
            let rolled_back = Outcome::RolledBack {
                reason: format!(
                    "not Ready on {} within {:?} (rolled back before the agent restarted)",
                    entry.target_hash, self.progress_deadline
                ),
                restored: entry
                    .previous_revision
                    .clone()
                    .unwrap_or_else(|| "nothing".into()),
            };
            return self.finish(desired, grant, Ok(rolled_back)).await;
        }
        // Killed before the write: the grant (still open) stays held, and the reconcile pass
        // starts the upgrade again with it.
        tracing::info!(object = %object, node = %self.node, "an upgrade left by a previous run had not written its manifest; starting it again");
        self.close(&object, &entry.manifest)
            .map(|()| Outcome::Superseded)
    }

    fn close(&self, object: &str, manifest: &str) -> Result<(), UpgradeError> {
        Journal::new(&self.store)
            .end(manifest)
            .map_err(|source| UpgradeError::Journal {
                object: object.to_string(),
                source,
            })
    }

    /// Back up the current manifest, journal the upgrade, write the new manifest.
    async fn write(
        &self,
        desired: &DesiredObject,
        grant: Option<(&Grants, &Grant)>,
    ) -> Result<Entry, UpgradeError> {
        let object = desired.key.to_string();
        let store_err = |source| UpgradeError::Store {
            object: object.clone(),
            source,
        };
        let previous = self
            .store
            .read(&desired.manifest)
            .map_err(store_err)?
            .ok_or_else(|| UpgradeError::Vanished {
                object: object.clone(),
                manifest: desired.manifest.clone(),
            })?;
        let previous_revision =
            local_hash(&previous).unwrap_or_else(|| format!("unhashed-{}", short_sha(&previous)));
        self.failed
            .forget(&self.store, &desired.manifest, &desired.hash)
            .map_err(store_err)?;
        self.store
            .save_revision(
                &desired.manifest,
                &previous_revision,
                &previous,
                desired.revision_history_limit,
            )
            .map_err(store_err)?;
        let entry = Entry {
            object: object.clone(),
            manifest: desired.manifest.clone(),
            previous_revision: Some(previous_revision.clone()),
            target_hash: desired.hash.clone(),
            grant: grant.map(|(_, s)| s.lease_name.clone()),
            started_at: unix_now(),
        };
        Journal::new(&self.store)
            .begin(&entry)
            .map_err(|source| UpgradeError::Journal {
                object: object.clone(),
                source,
            })?;
        reached(KillPoint::Journaled);
        tracing::info!(from = %previous_revision, "upgrade started: writing manifest");
        self.store
            .write(&desired.manifest, &desired.rendered)
            .map_err(store_err)?;
        reached(KillPoint::Written);
        // After the write: kubelet works on it while the event is posted.
        self.events
            .emit(
                &desired.key,
                &desired.uid,
                Reason::UpgradeStarted,
                &format!("upgrading {previous_revision} → {}", desired.hash),
            )
            .await;
        Ok(entry)
    }

    /// Wait until the mirror pod runs the new hash and is Ready (woken by changes of the pod
    /// cache, not polling), renewing the grant; roll back on the deadline. The journal stays
    /// open: [`Upgrader::finish`] closes it once the grant carries the outcome.
    async fn wait(
        &self,
        desired: &DesiredObject,
        entry: &Entry,
        deadline: Instant,
        grant: Option<(&Grants, &Grant)>,
        superseded: impl Fn() -> bool,
    ) -> Result<Outcome, UpgradeError> {
        let started = Instant::now();
        let mirror_name = format!("{}-{}", desired.key.name, self.node);
        let renew_every = self.lease_duration / 3;
        let mut next_renewal = Instant::now() + renew_every;
        let mut changes = self.mirrors.subscribe();
        let mut deadline = deadline;
        let mut checked = Instant::now();
        let mut paused = false;
        loop {
            // Time spent with the node NotReady does not count against the deadline.
            let now = Instant::now();
            if !self.mirrors.node_ready() {
                deadline += now - checked;
                if !paused {
                    tracing::warn!(
                        "node NotReady: the progress deadline is paused until it is back"
                    );
                }
                paused = true;
            } else {
                paused = false;
            }
            checked = now;
            let mirror = self.mirrors.mirror(&desired.key.namespace, &mirror_name);
            if mirror
                .as_ref()
                .is_some_and(|m| m.ready && m.hash.as_deref() == Some(desired.hash.as_str()))
            {
                reached(KillPoint::Ready);
                return Ok(Outcome::Succeeded {
                    elapsed: started.elapsed(),
                });
            }
            if superseded() {
                tracing::info!("upgrade superseded by a newer template");
                return Ok(Outcome::Superseded);
            }
            let now = Instant::now();
            if now >= deadline {
                let state = match &mirror {
                    None => "no mirror pod".to_string(),
                    Some(m) => format!(
                        "mirror pod hash {}, ready {}",
                        m.hash.as_deref().unwrap_or("none"),
                        m.ready
                    ),
                };
                let reason = format!(
                    "not Ready on {} within {:?} ({state})",
                    desired.hash, self.progress_deadline
                );
                return self.roll_back(desired, entry, reason);
            }
            if let Some((grants, held)) = grant
                && now >= next_renewal
            {
                next_renewal = now + renew_every;
                match grants.renew(held).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(grant = %held.lease_name, "grant withdrawn while upgrading (expired, or the template changed)")
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing the grant"),
                }
            }
            // Woken by a change of the mirror pods, else by the next renewal or the deadline
            // (supersession is checked on the same wake-ups, at most a second late).
            let wake = deadline
                .min(next_renewal)
                .min(Instant::now() + Duration::from_secs(1));
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Remember the failed hash, then restore the previous manifest (in that order: a run
    /// killed in between finds the hash failed, and does not try it again).
    fn roll_back(
        &self,
        desired: &DesiredObject,
        entry: &Entry,
        reason: String,
    ) -> Result<Outcome, UpgradeError> {
        let object = desired.key.to_string();
        let store_err = |source| UpgradeError::Store {
            object: object.clone(),
            source,
        };
        let previous = match &entry.previous_revision {
            Some(rev) => self
                .store
                .load_revision(&entry.manifest, rev)
                .map_err(store_err)?,
            None => None,
        };
        // Restore whatever happens: this process remembers the hash in memory even if the
        // state directory cannot be written.
        if let Err(e) = self
            .failed
            .record(&self.store, &entry.manifest, &entry.target_hash)
        {
            tracing::error!(manifest = %entry.manifest, error = %e, "recording the failed hash; restoring anyway");
        }
        match &previous {
            Some(bytes) => {
                self.store
                    .write(&entry.manifest, bytes)
                    .map_err(store_err)?;
            }
            None => {
                tracing::error!(manifest = %entry.manifest, "no saved revision to restore; leaving the new manifest")
            }
        }
        let restored = entry
            .previous_revision
            .clone()
            .unwrap_or_else(|| "nothing".into());
        Ok(Outcome::RolledBack { reason, restored })
    }

    /// Finish the grant with the outcome, close the journal, then report it (log and Event).
    /// An error leaves the journal open, for the next run to finish.
    async fn finish(
        &self,
        desired: &DesiredObject,
        grant: Option<(&Grants, &Grant)>,
        result: Result<Outcome, UpgradeError>,
    ) -> Result<Outcome, UpgradeError> {
        let how = match &result {
            Ok(Outcome::Succeeded { .. }) => Finish::Succeeded,
            Ok(Outcome::RolledBack { reason, .. }) => Finish::RolledBack(reason.clone()),
            Ok(Outcome::Superseded) | Err(_) => Finish::Released,
        };
        if matches!(result, Ok(Outcome::Succeeded { .. }))
            && let Err(e) = self
                .failed
                .forget(&self.store, &desired.manifest, &desired.hash)
        {
            // A run killed between recording a failure and restoring, whose pod then came up.
            tracing::warn!(manifest = %desired.manifest, error = %e, "forgetting a failure of a hash now running");
        }
        release(grant, &how).await;
        if grant.is_some() {
            reached(KillPoint::OutcomeRecorded);
        }
        let result = match result {
            Ok(outcome) => self
                .close(&desired.key.to_string(), &desired.manifest)
                .map(|()| outcome),
            Err(e) => Err(e),
        };
        reached(KillPoint::JournalClosed);
        let outcome = match &result {
            Ok(Outcome::Succeeded { .. }) => "succeeded",
            Ok(Outcome::RolledBack { .. }) => "rolled_back",
            Ok(Outcome::Superseded) => "superseded",
            Err(_) => "failed",
        };
        crate::metrics::inc(
            "staticpod_puller_upgrades_total",
            &[("object", &desired.key.to_string()), ("result", outcome)],
        );
        match &result {
            Ok(Outcome::Succeeded { elapsed }) => {
                tracing::info!(elapsed_ms = elapsed.as_millis() as u64, "upgrade succeeded");
                self.events
                    .emit(
                        &desired.key,
                        &desired.uid,
                        Reason::UpgradeSucceeded,
                        &format!("running {} and Ready", desired.hash),
                    )
                    .await;
            }
            Ok(Outcome::RolledBack { reason, restored }) => {
                tracing::warn!(reason, restored, "upgrade rolled back");
                self.events
                    .emit(
                        &desired.key,
                        &desired.uid,
                        Reason::RolledBack,
                        &format!("{reason}; restored {restored}; {} will not be retried until the template changes", desired.hash),
                    )
                    .await;
            }
            Ok(Outcome::Superseded) | Err(_) => {}
        }
        result
    }
}

/// Finish the grant, retrying a failed request a few times: a grant left open holds a unit
/// of the window until it expires.
async fn release(grant: Option<(&Grants, &Grant)>, how: &Finish) {
    let Some((grants, held)) = grant else { return };
    let mut pause = Duration::from_millis(100);
    for attempt in 1..=RELEASE_ATTEMPTS {
        match grants.finish(held, how).await {
            Ok(()) => return,
            Err(e) if attempt == RELEASE_ATTEMPTS => {
                tracing::warn!(grant = %held.lease_name, error = %e, "finishing the grant failed; it expires by itself")
            }
            Err(e) => {
                tracing::debug!(grant = %held.lease_name, error = %e, attempt, "finishing the grant; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
}

const RELEASE_ATTEMPTS: u32 = 5;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn short_sha(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
