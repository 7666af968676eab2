//! A managed manifest edited on the node: put back, or reported (`drift.mode`).

use super::Reconciler;
use crate::config::DriftMode;
use crate::desired::DesiredObject;
use crate::rollout::events::Reason;

impl Reconciler {
    /// A managed manifest edited on the node: put the desired content back, or report it.
    pub(super) async fn drifted(&mut self, d: &DesiredObject, local: &[u8]) {
        match self.config.drift.mode {
            DriftMode::Restore => match self.store.write(&d.manifest, &d.rendered) {
                Ok(_) => {
                    tracing::warn!(object = %d.key, node = %self.node, "manifest edited on the node; restored");
                    let message = format!(
                        "{}.yaml was edited on the node; restored {}",
                        d.manifest, d.hash
                    );
                    self.events
                        .emit(&d.key, &d.uid, Reason::DriftRestored, &message)
                        .await;
                }
                Err(e) => {
                    tracing::error!(object = %d.key, error = %e, "restoring an edited manifest")
                }
            },
            DriftMode::Report => {
                let digest = ring::digest::digest(&ring::digest::SHA256, local);
                let digest: String = digest.as_ref()[..8]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                if self.memory.drift.insert((d.manifest.clone(), digest)) {
                    tracing::warn!(object = %d.key, node = %self.node, "manifest edited on the node (drift.mode: report)");
                    let message = format!(
                        "{}.yaml was edited on the node; left as is (drift.mode: report)",
                        d.manifest
                    );
                    self.events
                        .emit(&d.key, &d.uid, Reason::DriftDetected, &message)
                        .await;
                }
            }
        }
    }
}
