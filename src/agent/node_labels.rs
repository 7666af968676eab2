//! This node's labels, for bundle targeting, kept usable offline.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::Store;

use crate::desired::cache;
use crate::manifest::store::ManifestStore;

/// This node's labels, for bundle targeting: from the Node watch, or, before the Node is
/// cached (an agent restarted while the API server is away), as last saved in the state
/// directory. Saved whenever they change, so a selector-targeted bundle still finds its node
/// offline.
pub(super) struct NodeLabels {
    node: String,
    cache: Store<Node>,
    store: Arc<ManifestStore>,
    saved: Mutex<Option<BTreeMap<String, String>>>,
}

impl NodeLabels {
    pub(super) fn new(node: &str, cache: Store<Node>, store: Arc<ManifestStore>) -> NodeLabels {
        let saved = cache::load_node_labels(&store).unwrap_or_else(|e| {
            tracing::warn!(node = %node, error = %e, "ignoring the saved node labels");
            None
        });
        NodeLabels {
            node: node.to_string(),
            cache,
            store,
            saved: Mutex::new(saved),
        }
    }

    pub(super) fn current(&self) -> BTreeMap<String, String> {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let Some(node) = self.cache.state().into_iter().next() else {
            return saved.clone().unwrap_or_default();
        };
        let labels = node.metadata.labels.clone().unwrap_or_default();
        if saved.as_ref() != Some(&labels) {
            match cache::save_node_labels(&self.store, &labels) {
                Ok(()) => *saved = Some(labels.clone()),
                Err(e) => {
                    tracing::warn!(node = %self.node, error = %e, "saving the node labels")
                }
            }
        }
        labels
    }
}

#[cfg(test)]
mod node_label_tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Node;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    use super::NodeLabels;
    use crate::manifest::store::ManifestStore;

    fn node(labels: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("edge-1".into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n
    }

    #[test]
    fn labels_seen_online_are_used_by_an_agent_restarted_offline() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            Arc::new(
                ManifestStore::open(&dir.path().join("manifests"), &dir.path().join("state"))
                    .unwrap(),
            )
        };

        // Online: the Node is cached; its labels are used and saved.
        let store = open();
        let (reader, mut writer) = reflector::store::<Node>();
        writer.apply_watcher_event(&Event::Apply(node(&[("zone", "north")])));
        let online = NodeLabels::new("edge-1", reader, store.clone());
        let north = BTreeMap::from([("zone".to_string(), "north".to_string())]);
        assert_eq!(online.current(), north);
        // A relabelled node: the new labels replace the saved ones.
        writer.apply_watcher_event(&Event::Apply(node(&[("zone", "south")])));
        let south = BTreeMap::from([("zone".to_string(), "south".to_string())]);
        assert_eq!(online.current(), south);
        drop((online, store));

        // Restarted with the API server away: no Node cached, the saved labels answer.
        let (empty, _writer) = reflector::store::<Node>();
        let offline = NodeLabels::new("edge-1", empty, open());
        assert_eq!(offline.current(), south);
    }
}
