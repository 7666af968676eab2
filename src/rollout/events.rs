//! Events on the object, from each node: upgrade started, succeeded, rolled back, refused,
//! drift, and a bundle's manifest superseded by the cluster after reconnection.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::Api;
use kube::api::PostParams;

use crate::desired::ObjectKey;

/// Why an event is emitted; its `reason` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    UpgradeStarted,
    UpgradeSucceeded,
    RolledBack,
    Refused,
    DriftRestored,
    DriftDetected,
    /// Back online, the cluster's template replaces a manifest a signed bundle set.
    BundleSuperseded,
    /// The controller stopped granting a hash: `maxFailed` members rolled it back.
    RolloutHalted,
    /// The new template's images are being pulled, before the upgrade.
    PullingImages,
    /// The new template's images are on the node.
    ImagesReady,
    /// An image of the new template could not be pulled: the node does not upgrade to it.
    ImagePullFailed,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::UpgradeStarted => "UpgradeStarted",
            Reason::UpgradeSucceeded => "UpgradeSucceeded",
            Reason::RolledBack => "RolledBack",
            Reason::Refused => "Refused",
            Reason::DriftRestored => "DriftRestored",
            Reason::DriftDetected => "DriftDetected",
            Reason::BundleSuperseded => "BundleSuperseded",
            Reason::RolloutHalted => "RolloutHalted",
            Reason::PullingImages => "PullingImages",
            Reason::ImagesReady => "ImagesReady",
            Reason::ImagePullFailed => "ImagePullFailed",
        }
    }

    fn warning(self) -> bool {
        matches!(
            self,
            Reason::RolledBack
                | Reason::Refused
                | Reason::DriftDetected
                | Reason::RolloutHalted
                | Reason::ImagePullFailed
        )
    }
}

/// Posts core/v1 Events (what `kubectl describe` and `kubectl get events` show).
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    /// The reporting node, or the controller replica.
    node: String,
    /// Put before every message (`node NAME: `; empty for the controller).
    prefix: String,
}

impl Recorder {
    pub fn new(client: kube::Client, node: &str) -> Self {
        Recorder {
            client,
            node: node.to_string(),
            prefix: format!("node {node}: "),
        }
    }

    /// Events of the controller replica `identity`, about the whole rollout.
    pub fn controller(client: kube::Client, identity: &str) -> Self {
        Recorder {
            client,
            node: identity.to_string(),
            prefix: String::new(),
        }
    }

    /// Emit an event; failures are logged, never fatal (events are best effort, as in kubelet).
    pub async fn emit(&self, object: &ObjectKey, uid: &str, reason: Reason, message: &str) {
        let now = k8s_openapi::jiff::Timestamp::now();
        let message = format!("{}{message}", self.prefix);
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", object.name)),
                namespace: Some(object.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("apps.openyurt.io/v1alpha1".to_string()),
                kind: Some(object.kind.name().to_string()),
                name: Some(object.name.clone()),
                namespace: Some(object.namespace.clone()),
                uid: (!uid.is_empty()).then(|| uid.to_string()),
                ..Default::default()
            },
            reason: Some(reason.as_str().to_string()),
            message: Some(message.clone()),
            type_: Some(
                if reason.warning() {
                    "Warning"
                } else {
                    "Normal"
                }
                .to_string(),
            ),
            source: Some(EventSource {
                component: Some("staticpod-puller".to_string()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some("staticpod-puller".to_string()),
            reporting_instance: Some(self.node.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            action: Some(reason.as_str().to_string()),
            count: Some(1),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &object.namespace);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(object = %object, node = %self.node, reason = reason.as_str(), error = %e, "could not post event");
        }
    }
}
