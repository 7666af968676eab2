//! The OTA variant of the scenario: the upgrade is announced everywhere and started on one
//! node through its local API.

use std::time::Duration;

use kube::Api;

use super::progress::{PodLines, follow, table_header};
use super::scenario::NEW_IMAGE;
use super::{DemoError, DemoOptions};
use crate::resources::StaticPod;
use crate::sim::cluster::DevCluster;

/// OTA: every node announces the upgrade; one node is upgraded through its local API, the
/// way an operator on the device would; only that node moves.
pub(super) async fn play_ota(
    options: &DemoOptions,
    cluster: &DevCluster,
    sps: &Api<StaticPod>,
    pods: &PodLines,
    new_hash: &str,
) -> Result<(), DemoError> {
    follow(sps, pods, Duration::from_secs(60), |_, nodes| {
        nodes.len() == options.nodes
            && nodes
                .values()
                .all(|l| l.need_upgrade.as_deref() == Some("True"))
    })
    .await?;
    println!("-- every node announces PodNeedUpgrade=True; nothing moves until someone asks");
    let nodes = cluster.nodes();
    let chosen = &nodes[1.min(nodes.len() - 1)];
    let pod = format!("nginx-{}", chosen.name);
    let path = format!("/openyurt.io/v1/namespaces/default/pods/{pod}/upgrade");
    let mut config = crate::config::Config::default();
    config.local_api.listen = "127.0.0.1:0".into();
    config.state_dir = chosen.state_dir.clone();
    let client = crate::ota::client::LocalClient::from_config(&config)
        .map_err(|e| DemoError::Manifests(e.to_string()))?;
    let address = std::fs::read_to_string(chosen.state_dir.join(crate::ota::api::ADDRESS_FILE))
        .unwrap_or_default();
    println!(
        "-- on {}: curl -X POST http://{}{path}",
        chosen.name,
        address.trim()
    );
    let (status, body) = client
        .request("POST", &path)
        .await
        .map_err(|e| DemoError::Manifests(e.to_string()))?;
    println!("   {status} {}", String::from_utf8_lossy(&body).trim());
    if status != 200 {
        return Err(DemoError::Timeout(format!(
            "the local API of {} refused the upgrade",
            chosen.name
        )));
    }
    table_header();
    follow(sps, pods, Duration::from_secs(60), |_, lines| {
        lines.get(&chosen.name).is_some_and(|l| {
            l.ready && l.hash == new_hash && l.need_upgrade.as_deref() == Some("False")
        })
    })
    .await?;
    let lines = pods.snapshot();
    let moved: Vec<&String> = lines
        .iter()
        .filter(|(_, l)| l.image == NEW_IMAGE)
        .map(|(n, _)| n)
        .collect();
    println!(
        "== OTA: only {} runs {NEW_IMAGE} (hash {new_hash}); the other nodes still announce the upgrade",
        moved
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
