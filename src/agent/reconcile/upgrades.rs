//! Starting upgrades (with the controller's grant, or without one when the pod is already
//! down), finishing a grant whose upgrade is already done, and on start, finishing or rolling
//! back what the journal says was under way.

use super::Reconciler;
use crate::desired::DesiredObject;
use crate::manifest::mirror::pod_hash;
use crate::rollout::grant::{Finish, Grant};
use crate::rollout::journal::Journal;

impl Reconciler {
    /// This node's open grant of `d`'s desired hash, if the controller handed one out.
    pub(super) fn grant_for(&self, d: &DesiredObject, hash: &str) -> Option<Grant> {
        self.grants.of(&d.key).filter(|g| g.open && g.hash == hash)
    }

    /// Start an upgrade in its own task, holding `grant` (if any) until it ends.
    pub(super) async fn start_upgrade(&mut self, d: &DesiredObject, grant: Option<Grant>) {
        let Some(latest) = self.running.begin(&d.manifest, &d.hash) else {
            return;
        };
        let (upgrader, grants, running, changed) = (
            self.upgrader.clone(),
            self.grants.clone(),
            self.running.clone(),
            self.caches.changed.clone(),
        );
        let d = d.clone();
        tokio::spawn(async move {
            let held = grant.as_ref().map(|g| (&*grants, g));
            let target = d.hash.clone();
            let superseded = || *latest.lock().unwrap_or_else(|e| e.into_inner()) != target;
            if let Err(e) = upgrader.upgrade(&d, held, superseded, || {}).await {
                tracing::error!(object = %d.key, error = %e, "upgrade failed");
            }
            running.end(&d.manifest);
            changed.notify_one();
        });
    }

    /// A grant still open for a hash this node already runs: the agent was stopped after the
    /// upgrade ended but before it finished the grant, or the node's hand-placed manifest is
    /// the template already (its pod carries no hash, so the controller could not tell).
    /// Finish it once the pod is Ready, so the window moves on at once rather than after the
    /// grant expires.
    pub(super) async fn finish_done_grant(&self, d: &DesiredObject, mirror_name: &str) {
        let Some(grant) = self.grant_for(d, &d.hash) else {
            return;
        };
        let pod = self
            .caches
            .pods
            .get(&kube::runtime::reflector::ObjectRef::new(mirror_name).within(&d.key.namespace));
        let Some(pod) = pod.filter(|p| crate::manifest::mirror::pod_ready(p)) else {
            return;
        };
        let how = if pod_hash(&pod) == Some(d.hash.as_str()) {
            Finish::Succeeded
        } else {
            Finish::Current
        };
        match self.grants.finish(&grant, &how).await {
            Ok(()) => {
                tracing::info!(object = %d.key, node = %self.node, grant = %grant.lease_name, "grant of an upgrade already done finished")
            }
            Err(e) => {
                tracing::warn!(object = %d.key, node = %self.node, error = %e, "finishing a grant")
            }
        }
    }

    /// Finish or roll back upgrades a previous run left in the journal, holding the grant it
    /// had if the controller has not withdrawn it.
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
            let grant = d
                .as_ref()
                .and_then(|d| self.grant_for(d, &entry.target_hash));
            let held = grant.as_ref().map(|g| (&*self.grants, g));
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
