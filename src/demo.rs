//! `staticpod-puller demo`: the embedded dev cluster for people.
//!
//! `--serve` starts the cluster with the CRDs installed and keeps it running, printing the
//! kubeconfig to use with kubectl and each node's manifest directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::resources;
use crate::sim::cluster::{DevCluster, DevClusterError, DevClusterOptions};
use crate::sim::kubelet::Timings;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Cluster(#[from] DevClusterError),
    #[error("preparing the demo directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rendering the CRDs: {0}")]
    Crds(String),
    #[error("waiting for a shutdown signal: {0}")]
    Signal(std::io::Error),
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub nodes: usize,
    /// Where kubeconfigs and node directories go; a fresh temporary directory if None.
    pub dir: Option<PathBuf>,
    pub listen: SocketAddr,
    /// How long a started pod takes to become Ready.
    pub ready_delay: Duration,
}

/// The objects every demo cluster starts with: the CRDs and the agents' namespace.
pub fn bootstrap_objects(agent_namespace: &str) -> Result<Vec<Value>, DemoError> {
    let mut objects = Vec::new();
    for crd in resources::crds() {
        objects.push(serde_json::to_value(&crd).map_err(|e| DemoError::Crds(e.to_string()))?);
    }
    objects.push(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": agent_namespace}}),
    );
    Ok(objects)
}

/// Start the dev cluster and keep it running until Ctrl-C or SIGTERM.
pub async fn serve(options: ServeOptions) -> Result<(), DemoError> {
    let dir = match &options.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("staticpod-puller-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|source| DemoError::Dir {
        path: dir.clone(),
        source,
    })?;
    let mut cluster_options = DevClusterOptions::new(&dir, options.nodes);
    cluster_options.listen = options.listen;
    cluster_options.timings = Timings {
        ready: options.ready_delay,
        ..Timings::realistic()
    };
    let cluster = DevCluster::start(cluster_options).await?;
    cluster.apply(&bootstrap_objects("staticpod-system")?)?;

    println!("dev cluster serving at {}", cluster.api().url());
    println!("kubeconfig: {}", cluster.admin_kubeconfig().display());
    for node in cluster.nodes() {
        println!(
            "node {}: manifests {} (kubelet pods {})",
            node.name,
            node.manifest_dir.display(),
            node.kubelet.pods_url()
        );
    }
    println!();
    println!(
        "  export KUBECONFIG={}",
        cluster.admin_kubeconfig().display()
    );
    println!("  kubectl get nodes; kubectl get staticpods -A; kubectl get pods -A -o wide");
    println!("Press Ctrl-C to stop.");

    wait_for_shutdown().await?;
    cluster.shutdown().await;
    Ok(())
}

async fn wait_for_shutdown() -> Result<(), DemoError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DemoError::Signal)?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(DemoError::Signal),
        _ = term.recv() => Ok(()),
    }
}
