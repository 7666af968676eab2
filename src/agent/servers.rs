//! The agent's servers: the node-local API (OTA, YurtHub's paths) and Prometheus metrics.
//! Each writes the address it bound into the state directory, for clients and tests.

use std::sync::Arc;

use super::AgentError;
use crate::config::Config;
use crate::manifest::store::ManifestStore;
use crate::ota::{Ota, api};

/// Serve Prometheus metrics on `metrics.listen`, and write the bound address to
/// `stateDir/metrics.addr`.
pub(super) async fn serve_metrics(
    node: &str,
    config: &Config,
    store: &ManifestStore,
    ota: Arc<Ota>,
) -> Result<(), AgentError> {
    if config.metrics.listen.is_empty() {
        return Ok(());
    }
    let addr =
        config.metrics.listen.parse().map_err(|_| {
            AgentError::Config(format!("metrics.listen: {:?}", config.metrics.listen))
        })?;
    let bound = api::serve_metrics(addr, ota)
        .await
        .map_err(|e| AgentError::Config(e.to_string()))?;
    store
        .write_state(api::METRICS_ADDRESS_FILE, bound.as_bytes())
        .map_err(AgentError::Store)?;
    tracing::info!(node = %node, address = %bound, "metrics listening");
    Ok(())
}

/// Start the node-local API (`localApi.listen`), and write the address it bound to
/// `stateDir/local-api.addr`.
pub(super) async fn serve_local_api(
    node: &str,
    config: &Config,
    store: &ManifestStore,
    ota: Arc<Ota>,
) -> Result<(), AgentError> {
    let listen = config
        .local_api
        .address()
        .map_err(|e| AgentError::Config(format!("localApi.listen: {e}")))?;
    let Some(listen) = listen else {
        return Ok(());
    };
    let token = match &config.local_api.token_file {
        Some(path) => Some(api::read_token(path).map_err(|e| AgentError::Config(e.to_string()))?),
        None => None,
    };
    let bound = api::serve(&listen, token, ota)
        .await
        .map_err(|e| AgentError::Config(e.to_string()))?;
    store
        .write_state(api::ADDRESS_FILE, bound.as_bytes())
        .map_err(AgentError::Store)?;
    tracing::info!(node = %node, address = %bound, "local API listening");
    Ok(())
}
