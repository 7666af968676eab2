//! OTA: the `PodNeedUpgrade` condition on this node's mirror pod.

use kube::runtime::reflector::ObjectRef;

use super::Reconciler;
use crate::desired::DesiredObject;
use crate::ota;
use crate::rollout::plan::Plan;

impl Reconciler {
    /// OTA: keep `PodNeedUpgrade` on this node's mirror pod saying whether an upgrade is
    /// available (re-applied when kubelet recreates the pod without it).
    pub(super) async fn announce(
        &self,
        d: &DesiredObject,
        next: &Plan,
        local: Option<&[u8]>,
        mirror_name: &str,
    ) {
        let local_hash = local.and_then(crate::manifest::hash_of_manifest);
        let Some(want) = ota::announcement(d, next, local_hash.as_deref()) else {
            return;
        };
        let Some(pod) = self
            .caches
            .pods
            .get(&ObjectRef::new(mirror_name).within(&d.key.namespace))
        else {
            return;
        };
        match ota::announce(&self.client, &pod, &want).await {
            Ok(true) => {
                tracing::info!(object = %d.key, node = %self.node, need = want.need, message = %want.message, "PodNeedUpgrade set")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(object = %d.key, node = %self.node, error = %e, "setting PodNeedUpgrade")
            }
        }
    }
}
