//! `staticpod-puller demo`: the embedded dev cluster for people.
//!
//! Without `--serve` it plays the seed scenario of the OpenYurt StaticPod guide: nodes each
//! holding a hand-placed `nginx.yaml` (nginx:1.19.1), the StaticPod `nginx` created, its
//! template changed to nginx:1.19.2, and real agents (one `staticpod-puller run` process per
//! node, each with its own identity and directories) plus the controller rolling it out, while
//! the demo prints `kubectl get staticpods` as it changes. `--serve` starts the cluster with the
//! CRDs and RBAC installed and keeps it running for kubectl.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::manifest::mirror::{is_member_pod, pod_hash, pod_ready};
use crate::resources::{self, StaticPod};
use crate::sim::apiserver::human_duration;
use crate::sim::cluster::{DevCluster, DevClusterError, DevClusterOptions, SimNode, agent_user};
use crate::sim::kubelet::Timings;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Cluster(#[from] DevClusterError),
    #[error("preparing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the shipped cluster manifests: {0}")]
    Manifests(String),
    #[error("waiting for a shutdown signal: {0}")]
    Signal(std::io::Error),
    #[error("talking to the dev cluster: {0}")]
    Api(#[from] kube::Error),
    #[error("starting the agent of {node}: {source}")]
    Agent {
        node: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Timeout(String),
}

/// Options shared by the scenario and `--serve`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub nodes: usize,
    /// Where kubeconfigs and node directories go; a fresh temporary directory if None.
    pub dir: Option<PathBuf>,
    pub listen: SocketAddr,
    /// How long after its manifest is written an upgraded pod is Ready.
    pub ready_delay: Duration,
    /// The seed's `maxUnavailable`.
    pub max_unavailable: String,
    /// The new image never becomes Ready: show the rollback.
    pub bad_image: bool,
    /// The agents' progress deadline (how long before rollback).
    pub progress_deadline: Duration,
    /// Keep the cluster (and agents) running after the scenario, for kubectl.
    pub keep_running: bool,
    /// The agents' `log.level`.
    pub agent_log_level: String,
    /// The StaticPod's upgrade strategy.
    pub strategy: resources::Strategy,
}

const OLD_IMAGE: &str = "nginx:1.19.1";
const NEW_IMAGE: &str = "nginx:1.19.2";
const SEED_MANIFEST: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: nginx
spec:
  containers:
  - name: web
    image: nginx:1.19.1
";

/// The shipped cluster manifests the demo applies (the files an operator applies).
const CLUSTER_MANIFESTS: [(&str, &str); 2] = [
    (
        "config/00-namespace.yaml",
        include_str!("../config/00-namespace.yaml"),
    ),
    (
        "config/10-rbac-agent.yaml",
        include_str!("../config/10-rbac-agent.yaml"),
    ),
];

/// The objects every demo cluster starts with: the CRDs, the agents' namespace and RBAC.
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

async fn start_cluster(options: &DemoOptions) -> Result<DevCluster, DemoError> {
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
        replace_renamed: replace,
        kill: fast.kill.min(replace),
        appear,
        ready: ready_delay.saturating_sub(replace + appear),
        ..fast
    }
}

fn print_access(cluster: &DevCluster) {
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
}

/// `demo --serve`: start the dev cluster and keep it running until Ctrl-C or SIGTERM.
pub async fn serve(options: DemoOptions) -> Result<(), DemoError> {
    let cluster = start_cluster(&options).await?;
    print_access(&cluster);
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

/// One agent process per node, killed when dropped.
struct Agents {
    children: Vec<tokio::process::Child>,
}

fn write_agent_config(node: &SimNode, options: &DemoOptions) -> Result<PathBuf, DemoError> {
    let path = node
        .state_dir
        .parent()
        .unwrap_or(&node.state_dir)
        .join("agent.yaml");
    let text = format!(
        "nodeName: {}\nkubeconfig: {}\nmanifestDir: {}\nstateDir: {}\nrollout:\n  progressDeadline: {}\n  leaseDuration: 15s\nlocalApi:\n  listen: 127.0.0.1:0\nmetrics:\n  listen: 127.0.0.1:0\nlog:\n  level: {:?}\n",
        node.name,
        node.agent_kubeconfig.display(),
        node.manifest_dir.display(),
        node.state_dir.display(),
        crate::config::HumanDuration(options.progress_deadline),
        options.agent_log_level,
    );
    std::fs::write(&path, text).map_err(|source| DemoError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn start_agents(cluster: &DevCluster, options: &DemoOptions) -> Result<Agents, DemoError> {
    let exe = std::env::current_exe().map_err(|source| DemoError::Io {
        path: "current executable".into(),
        source,
    })?;
    let mut children = Vec::new();
    for node in cluster.nodes() {
        let config = write_agent_config(node, options)?;
        let log = node
            .state_dir
            .parent()
            .unwrap_or(&node.state_dir)
            .join("agent.log");
        let log_file = std::fs::File::create(&log).map_err(|source| DemoError::Io {
            path: log.clone(),
            source,
        })?;
        let child = tokio::process::Command::new(&exe)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| DemoError::Agent {
                node: node.name.clone(),
                source,
            })?;
        children.push(child);
    }
    Ok(Agents { children })
}

/// What the demo prints about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeLine {
    image: String,
    hash: String,
    ready: bool,
    /// `PodNeedUpgrade` (OTA), when set.
    need_upgrade: Option<String>,
}

async fn node_lines(pods: &Api<Pod>) -> Result<BTreeMap<String, NodeLine>, DemoError> {
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
            (
                node,
                NodeLine {
                    image,
                    hash,
                    ready: pod_ready(p),
                    need_upgrade,
                },
            )
        })
        .collect())
}

fn status_row(sp: &StaticPod) -> (i32, i32, i32) {
    sp.status.as_ref().map_or((0, 0, 0), |s| {
        (s.total_number, s.ready_number, s.upgraded_number)
    })
}

/// Print the table and node lines whenever they change, until `done` says so or `timeout`.
async fn follow(
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
        for (node, line) in &nodes {
            if last_nodes.get(node) != Some(line) {
                let need = line
                    .need_upgrade
                    .as_ref()
                    .map(|s| format!("  PodNeedUpgrade={s}"))
                    .unwrap_or_default();
                let text = format!(
                    "      {node:<16} {:<14} hash {:<16} {:<9}{need}",
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

fn table_header() {
    println!(
        "  {:<6}{:<8}{:<14}{:<14}UPGRADEDNUMBER",
        "NAME", "AGE", "TOTALNUMBER", "READYNUMBER"
    );
}

/// The seed scenario. Returns normally when the rollout (or, with `bad_image`, the rollback)
/// was shown.
pub async fn play(options: DemoOptions) -> Result<(), DemoError> {
    let n = options.nodes;
    println!("== staticpod-puller demo: {n} edge nodes, StaticPod nginx {OLD_IMAGE} → {NEW_IMAGE}");
    let cluster = start_cluster(&options).await?;
    let client = cluster.admin_client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sps: Api<StaticPod> = Api::namespaced(client.clone(), "default");

    println!("-- each node gets a hand-placed /etc/kubernetes/manifests/nginx.yaml ({OLD_IMAGE})");
    for node in cluster.nodes() {
        let path = node.manifest_dir.join("nginx.yaml");
        std::fs::write(&path, SEED_MANIFEST).map_err(|source| DemoError::Io { path, source })?;
    }
    wait_until(
        Duration::from_secs(60),
        "the hand-placed pods to be Ready",
        || async {
            Ok(node_lines(&pods)
                .await?
                .values()
                .filter(|l| l.ready)
                .count()
                == n)
        },
    )
    .await?;

    println!(
        "-- kubectl apply: StaticPod nginx (AdvancedRollingUpdate, maxUnavailable: {})",
        options.max_unavailable
    );
    let max_unavailable: Value = options
        .max_unavailable
        .parse::<i64>()
        .map(Value::from)
        .unwrap_or(json!(options.max_unavailable));
    let upgrade_strategy = match options.strategy {
        resources::Strategy::Ota => json!({"type": "OTA"}),
        resources::Strategy::AdvancedRollingUpdate => {
            json!({"type": "AdvancedRollingUpdate", "maxUnavailable": max_unavailable})
        }
    };
    let seed: StaticPod = serde_json::from_value(json!({
        "apiVersion": "apps.openyurt.io/v1alpha1", "kind": "StaticPod",
        "metadata": {"name": "nginx", "namespace": "default"},
        "spec": {"staticPodManifest": "nginx",
                 "upgradeStrategy": upgrade_strategy,
                 "template": {"metadata": {"name": "nginx"},
                              "spec": {"containers": [{"name": "web", "image": OLD_IMAGE}]}}},
    }))
    .map_err(|e| DemoError::Manifests(e.to_string()))?;
    sps.create(&PostParams::default(), &seed).await?;

    let controller_client = client.clone();
    let controller = tokio::spawn(async move {
        crate::controller::run(
            controller_client,
            "staticpod-system",
            "demo-controller",
            Duration::from_secs(15),
        )
        .await;
    });
    let agents = start_agents(&cluster, &options)?;
    println!(
        "-- {} agents started (one `staticpod-puller run` process per node), controller started",
        agents.children.len()
    );
    table_header();
    follow(&sps, &pods, Duration::from_secs(60), |sp, _| {
        let (total, ready, _) = status_row(sp);
        total as usize == n && ready as usize == n
    })
    .await?;
    println!(
        "   (hand-placed files equal to the template are left untouched: not rewritten, no slot taken)"
    );
    // Every agent has run a pass with the object (its desired-state cache holds the hash), so
    // the figures below time the rollout, not the agents' start-up.
    let seed_hash = crate::manifest::template_hash(&seed.spec.template);
    let caches: Vec<PathBuf> = cluster
        .nodes()
        .iter()
        .map(|node| node.state_dir.join("desired.json"))
        .collect();
    wait_until(
        Duration::from_secs(120),
        "every agent to have seen StaticPod nginx",
        || async {
            Ok(caches
                .iter()
                .all(|c| std::fs::read_to_string(c).is_ok_and(|text| text.contains(&seed_hash))))
        },
    )
    .await?;

    if options.bad_image {
        cluster.set_broken_image(NEW_IMAGE, true);
        println!("-- {NEW_IMAGE} is broken on every node: it never becomes Ready");
    }
    println!("-- kubectl patch staticpod nginx: image {OLD_IMAGE} → {NEW_IMAGE}");
    let requests_before = agent_requests(&cluster);
    let changed_at = Instant::now();
    let changed_wall = std::time::SystemTime::now();
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": NEW_IMAGE}]}}}});
    let updated = sps
        .patch("nginx", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let generation = updated.metadata.generation.unwrap_or_default();
    let new_hash = crate::manifest::template_hash(&updated.spec.template);
    table_header();

    if options.strategy == resources::Strategy::Ota {
        play_ota(&options, &cluster, &sps, &pods, &new_hash).await?;
    } else if options.bad_image {
        let events: Api<Event> = Api::namespaced(client.clone(), "default");
        let deadline = options.progress_deadline + Duration::from_secs(60);
        let rollback_due = options.progress_deadline;
        follow(&sps, &pods, deadline, |_, nodes| {
            changed_at.elapsed() > rollback_due
                && nodes.values().all(|l| l.image == OLD_IMAGE && l.ready)
        })
        .await?;
        wait_until(
            Duration::from_secs(30),
            "a RolledBack event from every node",
            || async {
                let list = events.list(&ListParams::default()).await?;
                Ok(list
                    .items
                    .iter()
                    .filter(|e| e.reason.as_deref() == Some("RolledBack"))
                    .count()
                    >= n)
            },
        )
        .await?;
        let list = events.list(&ListParams::default()).await?;
        for e in list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("RolledBack"))
        {
            println!(
                "   Warning RolledBack: {}",
                e.message.as_deref().unwrap_or_default()
            );
        }
        println!(
            "== every node rolled back to {OLD_IMAGE}; {new_hash} will not be retried until the template changes"
        );
    } else {
        follow(&sps, &pods, Duration::from_secs(600), |sp, _| {
            let (total, ready, upgraded) = status_row(sp);
            let current =
                sp.status.as_ref().and_then(|s| s.observed_generation) == Some(generation);
            current && total as usize == n && ready as usize == n && upgraded as usize == n
        })
        .await?;
        let took = changed_at.elapsed();
        let budget = resources::MaxUnavailable::parse(
            seed.spec
                .upgrade_strategy
                .as_ref()
                .and_then(|s| s.max_unavailable.as_ref()),
        )
        .map(|m| m.resolve(n))
        .unwrap_or(1);
        let waves = n.div_ceil(budget);
        let ideal = options.ready_delay * waves as u32;
        println!("== rollout complete: {n}/{n}/{n} on {NEW_IMAGE} (hash {new_hash})");
        println!(
            "   took {:.2}s; ideal ceil({n}/{budget}) × ready-delay = {waves} × {:?} = {:.2}s",
            took.as_secs_f64(),
            options.ready_delay,
            ideal.as_secs_f64()
        );
        let mut first_writes = manifest_write_delays(&cluster, changed_wall);
        first_writes.sort();
        if let (Some(first), Some(p50)) = (
            first_writes.first(),
            first_writes.get(first_writes.len().min(budget) / 2),
        ) {
            println!(
                "   template change → first manifest written: {} ms (p50 of the first wave: {} ms)",
                first.as_millis(),
                p50.as_millis()
            );
        }
        let requests = agent_requests(&cluster).saturating_sub(requests_before);
        println!(
            "   API requests by agents during the rollout: {requests} ({:.1} per node)",
            requests as f64 / n as f64
        );
    }

    if options.keep_running {
        print_access(&cluster);
        println!("The cluster and agents keep running. Press Ctrl-C to stop.");
        wait_for_shutdown().await?;
    }
    drop(agents);
    controller.abort();
    cluster.shutdown().await;
    Ok(())
}

/// OTA: every node announces the upgrade; one node is upgraded through its local API, the
/// way an operator on the device would; only that node moves.
async fn play_ota(
    options: &DemoOptions,
    cluster: &DevCluster,
    sps: &Api<StaticPod>,
    pods: &Api<Pod>,
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
    let lines = node_lines(pods).await?;
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

fn agent_requests(cluster: &DevCluster) -> u64 {
    let by_user = cluster.api().requests_by_user();
    cluster
        .nodes()
        .iter()
        .map(|n| by_user.get(&agent_user(&n.name)).copied().unwrap_or(0))
        .sum()
}

/// For each node, how long after the template change its manifest was written.
fn manifest_write_delays(cluster: &DevCluster, since: std::time::SystemTime) -> Vec<Duration> {
    cluster
        .nodes()
        .iter()
        .filter_map(|n| {
            std::fs::metadata(n.manifest_dir.join("nginx.yaml"))
                .ok()?
                .modified()
                .ok()?
                .duration_since(since)
                .ok()
        })
        .collect()
}

async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<(), DemoError>
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
