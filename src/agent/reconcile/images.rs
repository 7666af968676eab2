//! Pre-pull: the images of a member's new template, pulled before its upgrade and reported on
//! its mirror pod (`PodImageReady`, which the controller reads) and in Events.

use kube::runtime::reflector::ObjectRef;

use super::Reconciler;
use crate::desired::DesiredObject;
use crate::images::{self, IMAGE_READY, PullState};
use crate::rollout::events::Reason;
use crate::rollout::grant::{Finish, Grant};

impl Reconciler {
    /// Where `d`'s images stand on this node, their pull started if it was not; what changed
    /// is reported. A pull over within [`images::REPORT_AFTER`] (the images were there) is not
    /// reported at all: most templates cost no extra write. Ready when pre-pull is off.
    pub(super) async fn images(&mut self, d: &DesiredObject, mirror_name: &str) -> PullState {
        if !self.prepull.enabled() {
            return PullState::Ready;
        }
        // The manifest is parsed for its images only to start a pull, or to report one.
        let state = self
            .prepull
            .ensure(&d.manifest, &d.hash, || images::images_of(&d.rendered));
        let reported = self.images_reported(d);
        match state {
            PullState::Pulling if !self.prepull.long_running(&d.manifest, &d.hash) => {
                return state;
            }
            PullState::Ready if reported.is_none() => return state,
            _ => {}
        }
        let wanted = images::images_of(&d.rendered);
        let (status, reason, message) = images::condition(&d.hash, &wanted, &state);
        if reported != Some(reason) {
            self.memory
                .images
                .insert(d.manifest.clone(), (d.hash.clone(), reason));
            let event = match state {
                PullState::Pulling => Reason::PullingImages,
                PullState::Ready => Reason::ImagesReady,
                PullState::Failed(_) => Reason::ImagePullFailed,
            };
            tracing::info!(object = %d.key, node = %self.node, %message, "images");
            self.events.emit(&d.key, &d.uid, event, &message).await;
        }
        // Kept on the pod even after kubelet recreated it without the condition.
        if let Some(pod) = self
            .caches
            .pods
            .get(&ObjectRef::new(mirror_name).within(&d.key.namespace))
            && let Err(e) =
                crate::ota::set_condition(&self.client, &pod, IMAGE_READY, status, reason, &message)
                    .await
        {
            tracing::warn!(object = %d.key, node = %self.node, error = %e, "setting PodImageReady");
        }
        state
    }

    /// The `PodImageReady` reason last reported for `d`'s desired hash, if any.
    pub(super) fn images_reported(&self, d: &DesiredObject) -> Option<&'static str> {
        self.memory
            .images
            .get(&d.manifest)
            .filter(|(hash, _)| *hash == d.hash)
            .map(|(_, reason)| *reason)
    }

    /// Give back a grant the node cannot use yet (its images are not there): the controller
    /// hands the unit to a node that is ready, and grants this one once its images are.
    pub(super) async fn give_back(&self, d: &DesiredObject, grant: &Grant) {
        match self.grants.finish(grant, &Finish::Released).await {
            Ok(()) => {
                tracing::info!(object = %d.key, node = %self.node, grant = %grant.lease_name, "grant given back: the images are not on the node yet")
            }
            Err(e) => {
                tracing::warn!(object = %d.key, node = %self.node, error = %e, "giving a grant back")
            }
        }
    }
}
