//! What the demo measures of the grants while a rollout runs, from the dev cluster's own feed
//! of changes (in this process, so a change is seen as it is committed): how long each grant
//! was held, and how long a freed unit of the window waited for its next grant.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::DemoError;
use crate::rollout::grant::Grant;
use crate::sim::resource::ResourceKey;
use crate::sim::selector::Selectors;
use crate::sim::store::{ChangeKind, Store, WatchFrom};

/// Each grant (by uid): its hash, when it was first seen handed out, and first seen finished;
/// and how many changes the watch missed (it fell behind the store's feed).
#[derive(Default)]
struct Seen {
    grants: HashMap<String, (String, Instant, Option<Instant>)>,
    missed: u64,
}

pub(super) struct GrantWatch {
    task: tokio::task::JoinHandle<()>,
    seen: Arc<Mutex<Seen>>,
}

/// The grants of one rollout, measured.
pub(super) struct GrantFigures {
    /// How long each finished grant was held.
    pub holds: Vec<Duration>,
    /// For each grant handed out once the window was full: how long after the k-th finish the
    /// (budget + k)-th grant came (the controller's handover, seen from outside); sorted.
    pub handovers: Vec<Duration>,
    /// Changes the watch missed: the figures are incomplete when not 0.
    pub missed: u64,
}

impl GrantWatch {
    /// Start watching the dev cluster's store itself (not through the API, whose watches a
    /// busy demo process may fall behind on).
    pub(super) fn start(store: &Arc<Store>) -> Result<GrantWatch, DemoError> {
        let leases = ResourceKey::new("coordination.k8s.io", "leases");
        let started = store
            .watch(&leases, WatchFrom::Current, &Selectors::default())
            .map_err(|e| DemoError::Timeout(format!("watching the grants: {e}")))?;
        let seen: Arc<Mutex<Seen>> = Default::default();
        let task = tokio::spawn({
            let seen = seen.clone();
            let mut live = started.live;
            async move {
                loop {
                    let change = match live.recv().await {
                        Ok(change) => change,
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            seen.lock().unwrap_or_else(|e| e.into_inner()).missed += missed;
                            continue;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if change.resource != leases || change.kind == ChangeKind::Deleted {
                        continue;
                    }
                    let Ok(lease) = serde_json::from_value::<Lease>((*change.new).clone()) else {
                        continue;
                    };
                    let (Some(grant), Some(uid)) =
                        (Grant::from_lease(&lease), lease.metadata.uid.clone())
                    else {
                        continue;
                    };
                    let now = Instant::now();
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    let entry = seen
                        .grants
                        .entry(uid)
                        .or_insert_with(|| (grant.hash.clone(), now, None));
                    if !grant.open {
                        entry.2.get_or_insert(now);
                    }
                }
            }
        });
        Ok(GrantWatch { task, seen })
    }

    /// Stop watching; the figures of the grants of `hash`, for a window of `budget`.
    pub(super) fn stop(self, hash: &str, budget: usize) -> GrantFigures {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let of_hash: Vec<(Instant, Option<Instant>)> = seen
            .grants
            .values()
            .filter(|(h, _, _)| h == hash)
            .map(|(_, created, finished)| (*created, *finished))
            .collect();
        let holds = of_hash
            .iter()
            .filter_map(|(created, finished)| {
                Some(finished.as_ref()?.saturating_duration_since(*created))
            })
            .collect();
        let mut created: Vec<Instant> = of_hash.iter().map(|(c, _)| *c).collect();
        let mut finished: Vec<Instant> = of_hash.iter().filter_map(|(_, f)| *f).collect();
        created.sort();
        finished.sort();
        let mut handovers: Vec<Duration> = finished
            .iter()
            .zip(created.iter().skip(budget))
            .map(|(freed, granted)| granted.saturating_duration_since(*freed))
            .collect();
        handovers.sort();
        GrantFigures {
            holds,
            handovers,
            missed: seen.missed,
        }
    }
}

impl Drop for GrantWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrantFigures {
    /// The `q` quantile (0..=1) of the handovers.
    pub(super) fn handover(&self, q: f64) -> Option<Duration> {
        let values = &self.handovers;
        let last = values.len().checked_sub(1)?;
        values.get(((last as f64) * q).round() as usize).copied()
    }
}
