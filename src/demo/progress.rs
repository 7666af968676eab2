//! Following the rollout: `kubectl get staticpods` and one line per node, printed as they
//! change, and waiting for a condition.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::DemoError;
use crate::manifest::mirror::{is_member_pod, pod_hash, pod_ready};
use crate::resources::StaticPod;
use crate::sim::apiserver::human_duration;
use crate::sim::resource::ResourceKey;
use crate::sim::selector::Selectors;
use crate::sim::store::{Change, ChangeKind, Store, WatchFrom};

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

/// The member pods' lines by node, kept from the dev cluster's own feed of pod changes (in
/// this process): listing thousands of pods through the API every 100 ms would load the API
/// server whose rollout is being measured.
pub(super) struct PodLines {
    task: tokio::task::JoinHandle<()>,
    lines: Arc<Mutex<BTreeMap<String, NodeLine>>>,
}

impl Drop for PodLines {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PodLines {
    pub(super) fn start(store: &Arc<Store>) -> Result<PodLines, DemoError> {
        let watching = |store: &Store| {
            store
                .watch(
                    &ResourceKey::core("pods"),
                    WatchFrom::Current,
                    &Selectors::default(),
                )
                .map_err(|e| DemoError::Timeout(format!("watching the pods: {e}")))
        };
        let started = watching(store)?;
        let lines: Arc<Mutex<BTreeMap<String, NodeLine>>> = Arc::default();
        let apply = {
            let lines = lines.clone();
            move |change: &Change| {
                let Ok(pod) = serde_json::from_value::<Pod>((*change.new).clone()) else {
                    return;
                };
                let Some((node, line)) = node_line(&pod) else {
                    return;
                };
                let mut lines = lines.lock().unwrap_or_else(|e| e.into_inner());
                if change.kind == ChangeKind::Deleted {
                    lines.remove(&node);
                } else {
                    lines.insert(node, line);
                }
            }
        };
        for change in &started.replay {
            apply(change);
        }
        let task = tokio::spawn({
            let (store, lines) = (store.clone(), lines.clone());
            let mut live = started.live;
            async move {
                loop {
                    match live.recv().await {
                        Ok(change) => apply(&change),
                        // Fell behind the feed: start again from the pods as they are.
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let Ok(again) = watching(&store) else { return };
                            lines.lock().unwrap_or_else(|e| e.into_inner()).clear();
                            for change in &again.replay {
                                apply(change);
                            }
                            live = again.live;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(PodLines { task, lines })
    }

    /// The lines as they are now.
    pub(super) fn snapshot(&self) -> BTreeMap<String, NodeLine> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The line of a member pod of the demo's StaticPod (in the default namespace), by node.
fn node_line(p: &Pod) -> Option<(String, NodeLine)> {
    if p.metadata.namespace.as_deref() != Some("default") || !is_member_pod("nginx", p) {
        return None;
    }
    let node = p.spec.as_ref()?.node_name.clone()?;
    let image = p
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let hash = pod_hash(p).unwrap_or("(none)").to_string();
    let conditions = p.status.as_ref().and_then(|s| s.conditions.as_ref());
    let condition = |type_: &str| conditions.and_then(|cs| cs.iter().find(|c| c.type_ == type_));
    let need_upgrade = condition(crate::ota::NEED_UPGRADE).map(|c| c.status.clone());
    let image_ready = condition(crate::images::IMAGE_READY)
        .map(|c| (c.status.clone(), c.message.clone().unwrap_or_default()));
    Some((
        node,
        NodeLine {
            image,
            hash,
            ready: pod_ready(p),
            need_upgrade,
            image_ready,
        },
    ))
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
    pods: &PodLines,
    timeout: Duration,
    mut done: impl FnMut(&StaticPod, &BTreeMap<String, NodeLine>) -> bool,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + timeout;
    let mut last_row = None;
    let mut last_nodes = BTreeMap::new();
    loop {
        let sp = sps.get("nginx").await?;
        let nodes = pods.snapshot();
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
