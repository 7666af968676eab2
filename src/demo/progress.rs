//! Following the rollout: `kubectl get staticpods` and one line per node, printed as they
//! change, and waiting for a condition.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use tokio::time::Instant;

use super::DemoError;
use crate::manifest::mirror::{is_member_pod, pod_hash, pod_ready};
use crate::resources::StaticPod;
use crate::sim::apiserver::human_duration;

/// What the demo prints about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodeLine {
    pub(super) image: String,
    pub(super) hash: String,
    pub(super) ready: bool,
    /// `PodNeedUpgrade` (OTA), when set.
    pub(super) need_upgrade: Option<String>,
    /// `PodImageReady` (images pre-pulled), when set: its status and message.
    pub(super) image_ready: Option<(String, String)>,
}

pub(super) async fn node_lines(pods: &Api<Pod>) -> Result<BTreeMap<String, NodeLine>, DemoError> {
    let list = pods.list(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .filter(|p| is_member_pod("nginx", p))
        .map(|p| {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            let image = p
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            let hash = pod_hash(p).unwrap_or("(none)").to_string();
            let need_upgrade = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == crate::ota::NEED_UPGRADE))
                .map(|c| c.status.clone());
            let image_ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == crate::images::IMAGE_READY))
                .map(|c| (c.status.clone(), c.message.clone().unwrap_or_default()));
            (
                node,
                NodeLine {
                    image,
                    hash,
                    ready: pod_ready(p),
                    need_upgrade,
                    image_ready,
                },
            )
        })
        .collect())
}

pub(super) fn status_row(sp: &StaticPod) -> (i32, i32, i32) {
    sp.status.as_ref().map_or((0, 0, 0), |s| {
        (s.total_number, s.ready_number, s.upgraded_number)
    })
}

/// Print the table and node lines whenever they change, until `done` says so or `timeout`.
/// Fleets larger than this show the status row only.
const MAX_NODE_LINES: usize = 24;

pub(super) async fn follow(
    sps: &Api<StaticPod>,
    pods: &Api<Pod>,
    timeout: Duration,
    mut done: impl FnMut(&StaticPod, &BTreeMap<String, NodeLine>) -> bool,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + timeout;
    let mut last_row = None;
    let mut last_nodes = BTreeMap::new();
    loop {
        let sp = sps.get("nginx").await?;
        let nodes = node_lines(pods).await?;
        let row = status_row(&sp);
        if Some(row) != last_row {
            let created = sp
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| {
                    human_duration(
                        k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second(),
                    )
                })
                .unwrap_or_default();
            println!(
                "  {:<6}{:<8}{:<14}{:<14}{}",
                "nginx", created, row.0, row.1, row.2
            );
            last_row = Some(row);
        }
        // Per-node lines only for a fleet that fits on a screen.
        for (node, line) in nodes.iter().filter(|_| nodes.len() <= MAX_NODE_LINES) {
            if last_nodes.get(node) != Some(line) {
                let need = line
                    .need_upgrade
                    .as_ref()
                    .map(|s| format!("  PodNeedUpgrade={s}"))
                    .unwrap_or_default();
                let images = line
                    .image_ready
                    .as_ref()
                    .map(|(s, _)| format!("  PodImageReady={s}"))
                    .unwrap_or_default();
                let text = format!(
                    "      {node:<16} {:<14} hash {:<16} {:<9}{need}{images}",
                    line.image,
                    line.hash,
                    if line.ready { "Ready" } else { "not ready" }
                );
                println!("{}", text.trim_end());
            }
        }
        last_nodes = nodes;
        if done(&sp, &last_nodes) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DemoError::Timeout(format!(
                "the rollout did not finish within {timeout:?}; status {row:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) fn table_header() {
    println!(
        "  {:<6}{:<8}{:<14}{:<14}UPGRADEDNUMBER",
        "NAME", "AGE", "TOTALNUMBER", "READYNUMBER"
    );
}

pub(super) async fn wait_until<F, Fut>(
    timeout: Duration,
    what: &str,
    mut check: F,
) -> Result<(), DemoError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, DemoError>>,
{
    let deadline = Instant::now() + timeout;
    while !check().await? {
        if Instant::now() > deadline {
            return Err(DemoError::Timeout(format!(
                "timed out after {timeout:?} waiting for {what}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
