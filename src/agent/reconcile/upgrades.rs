//! Starting upgrades: the member count a budget resolves against, taking a slot, the upgrade
//! task; and on start, finishing or rolling back what the journal says was under way.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::time::Instant;

use super::Reconciler;
use crate::desired::DesiredObject;
use crate::manifest::mirror::is_member_pod;
use crate::rollout::journal::Journal;
use crate::rollout::slots::SlotOwner;
use crate::rules::random_below;

/// The random delay before asking for a free slot grows by this much per waiting node...
const ACQUIRE_SPREAD_PER_NODE: Duration = Duration::from_millis(2);
/// ...up to this.
const ACQUIRE_SPREAD_MAX: Duration = Duration::from_secs(2);

impl Reconciler {
    /// The member count an object's budget is resolved against: its status when current,
    /// otherwise counted from mirror pods (one list, cached briefly).
    async fn members(&mut self, d: &DesiredObject) -> usize {
        if let Some(n) = d.members {
            return n.max(1) as usize;
        }
        if let Some((at, n)) = self.member_counts.get(&d.key)
            && at.elapsed() < Duration::from_secs(10)
        {
            return *n;
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &d.key.namespace);
        let n = match api.list(&Default::default()).await {
            Ok(list) => list
                .items
                .iter()
                .filter(|p| is_member_pod(&d.key.name, p))
                .count()
                .max(1),
            Err(e) => {
                tracing::warn!(object = %d.key, error = %e, "counting members; assuming 1");
                1
            }
        };
        self.member_counts
            .insert(d.key.clone(), (Instant::now(), n));
        n
    }

    /// Start an upgrade in its own task: take a slot if one is needed (and one looks free),
    /// then upgrade. The slot is released by the upgrade when it ends.
    pub(super) async fn start_upgrade(&mut self, d: &DesiredObject, needs_slot: bool) {
        let owner = SlotOwner {
            kind_short: d.key.kind.short(),
            namespace: d.key.namespace.clone(),
            name: d.key.name.clone(),
        };
        let budget = if needs_slot {
            let members = self.members(d).await;
            let budget = d.max_unavailable.resolve(members);
            let free = self.slots.free(&owner, budget).len();
            if free == 0 {
                crate::metrics::inc(
                    "staticpod_puller_slot_busy_total",
                    &[("object", &d.key.to_string())],
                );
                tracing::debug!(object = %d.key, budget, "all upgrade slots busy");
                return;
            }
            // Before the status catches up with a new template, every member may be waiting.
            let waiting = d.pending.map_or(members, |n| n.max(1) as usize);
            Some((budget, waiting.div_ceil(free)))
        } else {
            None
        };
        let Some(latest) = self.running.begin(&d.manifest, &d.hash) else {
            return;
        };
        let (upgrader, slots, running, changed) = (
            self.upgrader.clone(),
            self.slots.clone(),
            self.running.clone(),
            self.caches.changed.clone(),
        );
        let d = d.clone();
        tokio::spawn(async move {
            let done = |notify: bool| {
                running.end(&d.manifest);
                if notify {
                    changed.notify_one();
                }
            };
            let slot = match budget {
                None => None,
                Some((budget, waiting)) => {
                    // Every waiting node sees a released slot at the same moment. A random
                    // delay spread over the number of waiting nodes per free slot lets about
                    // one of them ask first while the others see the slot taken in their
                    // cache, so a handover costs a few requests, not one per waiting node.
                    let spread = (ACQUIRE_SPREAD_PER_NODE * waiting as u32).min(ACQUIRE_SPREAD_MAX);
                    let delay = random_below(spread.as_micros().max(1) as usize);
                    tokio::time::sleep(Duration::from_micros(delay as u64)).await;
                    match slots.acquire(&owner, budget).await {
                        Ok(Some(slot)) => Some(slot),
                        // Taken by another node: the Lease watch wakes us for the next one.
                        Ok(None) => return done(false),
                        Err(e) => {
                            tracing::warn!(object = %d.key, error = %e, "taking an upgrade slot");
                            return done(false);
                        }
                    }
                }
            };
            let held = slot.as_ref().map(|s| (&*slots, s));
            let target = d.hash.clone();
            let superseded = || *latest.lock().unwrap_or_else(|e| e.into_inner()) != target;
            if let Err(e) = upgrader.upgrade(&d, held, superseded, || {}).await {
                tracing::error!(object = %d.key, error = %e, "upgrade failed");
            }
            done(true);
        });
    }

    /// Finish or roll back upgrades a previous run left in the journal.
    pub(in crate::agent) async fn resume_journal(&mut self) {
        let entries = match Journal::new(&self.store).pending() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "reading the upgrade journal");
                return;
            }
        };
        let (desired, _) = self.desired();
        for entry in entries {
            let d = desired
                .values()
                .find(|d| d.manifest == entry.manifest)
                .cloned();
            let owner = d.as_ref().map(|d| SlotOwner {
                kind_short: d.key.kind.short(),
                namespace: d.key.namespace.clone(),
                name: d.key.name.clone(),
            });
            // Re-take the slot we held (ours by holder identity) so it is renewed, then released.
            let slot = match (&owner, &entry.slot, &d) {
                (Some(o), Some(_), Some(d)) => {
                    let budget = d.max_unavailable.resolve(self.members(d).await);
                    self.slots.reclaim(o, budget).await.ok().flatten()
                }
                _ => None,
            };
            let held = slot.as_ref().map(|s| (&*self.slots, s));
            match self.upgrader.resume(d.as_ref(), &entry, held).await {
                Ok(outcome) => {
                    tracing::info!(manifest = %entry.manifest, ?outcome, "journaled upgrade finished")
                }
                Err(e) => {
                    tracing::error!(manifest = %entry.manifest, error = %e, "finishing a journaled upgrade")
                }
            }
        }
    }
}
