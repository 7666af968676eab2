//! What bundles set decides first: a bundle upgrade running is left to end, a bundle's file is
//! kept while the API server is unreachable, and once the cluster is authoritative again a
//! bundle's file it differs from is reported, then reconciled as usual.

use kube::Api;

use super::{Pending, Reconciler};
use crate::desired::applied::Verdict;
use crate::desired::{DesiredObject, Kind, cluster};
use crate::resources::{StaticPod, YurtStaticSet};
use crate::rollout::events::Reason;

impl Reconciler {
    /// What bundles set decides first (see [`crate::desired::applied`]): a bundle upgrade
    /// running is left to end, a bundle's file is kept while the API server is unreachable,
    /// and once the cluster is authoritative again a bundle's file it differs from is reported
    /// with an Event, then reconciled as usual. `Some` skips the object in this pass.
    pub(super) async fn after_bundle(
        &mut self,
        d: &DesiredObject,
        local: Option<&[u8]>,
        cluster_authoritative: bool,
    ) -> Option<Pending> {
        let local_hash = local.and_then(crate::manifest::hash_of_manifest);
        match self.applied.judge(
            &d.manifest,
            local_hash.as_deref(),
            &d.hash,
            cluster_authoritative,
        ) {
            Verdict::NotFromBundle => None,
            Verdict::Applying { sequence } => Some(Pending::moving(format!(
                "{} upgrading from bundle {sequence}",
                d.key
            ))),
            Verdict::Stale | Verdict::Agrees => {
                self.applied.forget(&d.manifest);
                None
            }
            Verdict::KeptOffline(a) => {
                if self.memory.kept.insert((d.manifest.clone(), a.sequence)) {
                    tracing::info!(object = %d.key, node = %self.node, sequence = a.sequence, local_hash = %a.hash, cluster_hash = %d.hash, "API server unreachable: keeping the manifest set from the bundle");
                }
                // Not settled: it changes when the API server answers again.
                Some(Pending::moving(format!(
                    "{}: set from bundle {} ({}); the API server is unreachable",
                    d.key, a.sequence, a.hash
                )))
            }
            Verdict::Superseded(a) => {
                // Right after reconnecting the watches may still hold the template from before
                // the outage (they relist with backoff). Revert only to what the API server
                // says now, never to a stale copy: the bundle may carry exactly the template
                // the operator has since applied to the cluster.
                match self.fresh_hash(d).await {
                    Ok(fresh) if fresh == d.hash => {}
                    Ok(fresh) => {
                        return Some(Pending::moving(format!(
                            "{}: set from bundle {} ({}); waiting for the watch to catch up with the cluster's template {fresh}",
                            d.key, a.sequence, a.hash
                        )));
                    }
                    Err(e) => {
                        tracing::debug!(object = %d.key, node = %self.node, error = %e, "reading the object to confirm its template");
                        return Some(Pending::moving(format!(
                            "{}: set from bundle {} ({}); confirming the cluster's template",
                            d.key, a.sequence, a.hash
                        )));
                    }
                }
                let message = format!(
                    "{}.yaml was set from bundle sequence {} ({}) to {}; the API server is reachable again and the cluster's template {} replaces it",
                    d.manifest, a.sequence, a.source, a.hash, d.hash
                );
                tracing::warn!(object = %d.key, node = %self.node, sequence = a.sequence, local_hash = %a.hash, cluster_hash = %d.hash, "reconnected: the cluster's template supersedes the bundle's");
                self.events
                    .emit(&d.key, &d.uid, Reason::BundleSuperseded, &message)
                    .await;
                self.applied.forget(&d.manifest);
                self.memory.kept.remove(&(d.manifest.clone(), a.sequence));
                None
            }
        }
    }

    /// The template hash of `d` as the API server holds it now (not the watch cache).
    async fn fresh_hash(&self, d: &DesiredObject) -> Result<String, String> {
        let (ns, name) = (&d.key.namespace, &d.key.name);
        let fresh = match d.key.kind {
            Kind::StaticPod => Api::<StaticPod>::namespaced(self.client.clone(), ns)
                .get(name)
                .await
                .map_err(|e| e.to_string())
                .and_then(|o| cluster::from_static_pod(&o).map_err(|r| r.reason)),
            Kind::YurtStaticSet => Api::<YurtStaticSet>::namespaced(self.client.clone(), ns)
                .get(name)
                .await
                .map_err(|e| e.to_string())
                .and_then(|o| cluster::from_yurt_static_set(&o).map_err(|r| r.reason)),
        };
        fresh.map(|o| o.hash)
    }
}
