//! Building a `kube::Client` from the agent's own kubeconfig file.

use std::path::Path;

/// A client from a kubeconfig file; the error says what was wrong with it.
pub async fn from_kubeconfig(path: &Path) -> Result<kube::Client, String> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| format!("reading kubeconfig: {e}"))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| format!("loading kubeconfig: {e}"))?;
    kube::Client::try_from(config).map_err(|e| format!("building the client: {e}"))
}
