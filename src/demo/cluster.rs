//! The demo's dev cluster: started with the CRDs, the agents' namespace, RBAC and admission
//! policy, and kubelet timings that make the rollout's ideal duration easy to state.

use std::time::Duration;

use serde_json::Value;

use super::{DemoError, DemoOptions};
use crate::resources;
use crate::sim::cluster::{DevCluster, DevClusterOptions};
use crate::sim::kubelet::Timings;

/// The shipped cluster manifests the demo applies (the files an operator applies).
const CLUSTER_MANIFESTS: [(&str, &str); 3] = [
    (
        "config/00-namespace.yaml",
        include_str!("../../config/00-namespace.yaml"),
    ),
    (
        "config/10-rbac-agent.yaml",
        include_str!("../../config/10-rbac-agent.yaml"),
    ),
    (
        "config/30-admission-policy.yaml",
        include_str!("../../config/30-admission-policy.yaml"),
    ),
];

/// The objects every demo cluster starts with: the CRDs, the agents' namespace and RBAC, and
/// the admission policy that holds each agent to its own node.
pub fn bootstrap_objects() -> Result<Vec<Value>, DemoError> {
    let mut objects = Vec::new();
    for crd in resources::crds() {
        objects.push(serde_json::to_value(&crd).map_err(|e| DemoError::Manifests(e.to_string()))?);
    }
    for (file, text) in CLUSTER_MANIFESTS {
        for doc in text.split("\n---\n") {
            if !doc
                .lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            {
                continue;
            }
            let obj: Value = serde_saphyr::from_str(doc)
                .map_err(|e| DemoError::Manifests(format!("{file}: {e}")))?;
            objects.push(obj);
        }
    }
    Ok(objects)
}

pub(super) async fn start_cluster(options: &DemoOptions) -> Result<DevCluster, DemoError> {
    let dir = match &options.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("staticpod-puller-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|source| DemoError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut cluster_options = DevClusterOptions::new(&dir, options.nodes);
    cluster_options.listen = options.listen;
    cluster_options.timings = demo_timings(options.ready_delay);
    cluster_options.pull_delay = options.pull_delay;
    // The nodes run the old image already; the new one is pulled.
    cluster_options.preloaded = vec![super::scenario::OLD_IMAGE.to_string()];
    // Agent tasks reach their nodes in-process; agent processes need the sockets.
    cluster_options.sockets = options.agents == super::AgentMode::Processes;
    let cluster = DevCluster::start(cluster_options).await?;
    cluster.apply(&bootstrap_objects()?)?;
    Ok(cluster)
}

/// Kubelet timings where an upgraded pod is Ready `ready_delay` after its manifest is written
/// (kubelet's replacement of the old pod included), so the rollout's ideal duration is
/// `ceil(nodes / budget) × ready_delay`.
fn demo_timings(ready_delay: Duration) -> Timings {
    let fast = Timings::fast();
    let replace = fast.replace_renamed.min(ready_delay / 4);
    let appear = fast.appear.min(ready_delay / 4);
    Timings {
        // The kubelets react to their directories' changes and to their pods' due transitions;
        // the poll is only their housekeeping, and thousands of them polling every few
        // milliseconds would take the machine from the rollout being measured.
        poll: Duration::from_secs(1),
        replace_renamed: replace,
        kill: fast.kill.min(replace),
        appear,
        ready: ready_delay.saturating_sub(replace + appear),
        ..fast
    }
}

pub(super) fn print_access(cluster: &DevCluster) {
    println!("dev cluster serving at {}", cluster.api().url());
    println!("kubeconfig: {}", cluster.admin_kubeconfig().display());
    for node in cluster.nodes() {
        println!(
            "node {}: manifests {} (kubelet pods {})",
            node.name,
            node.manifest_dir.display(),
            node.kubelet
                .pods_url()
                .unwrap_or_else(|| "in-process only".into())
        );
    }
    println!();
    println!(
        "  export KUBECONFIG={}",
        cluster.admin_kubeconfig().display()
    );
    println!("  kubectl get nodes; kubectl get staticpods -A; kubectl get pods -A -o wide");
}
