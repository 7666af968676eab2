//! The seed scenario: hand-placed pods, the StaticPod created, its image changed, and the
//! rollout (or, with a broken image, the rollback) shown with its figures.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::agents::start_agents;
use super::cluster::{print_access, start_cluster};
use super::grants::{GrantFigures, GrantWatch};
use super::ota::play_ota;
use super::progress::{PodLines, follow, status_row, table_header, wait_until};
use super::{AgentMode, DemoError, DemoOptions, wait_for_shutdown};
use crate::resources::{self, StaticPod};
use crate::sim::apiserver::UsageCounts;
use crate::sim::cluster::{DevCluster, agent_user};

pub(super) const OLD_IMAGE: &str = "nginx:1.19.1";
pub(super) const NEW_IMAGE: &str = "nginx:1.19.2";
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

/// The seed scenario. Returns normally when the rollout (or, with `bad_image`, the rollback)
/// was shown.
pub async fn play(options: DemoOptions) -> Result<(), DemoError> {
    let n = options.nodes;
    println!("== staticpod-puller demo: {n} edge nodes, StaticPod nginx {OLD_IMAGE} → {NEW_IMAGE}");
    let cluster = start_cluster(&options).await?;
    let client = cluster.admin_client().await?;
    let pods = PodLines::start(cluster.store())?;
    let sps: Api<StaticPod> = Api::namespaced(client.clone(), "default");

    println!("-- each node gets a hand-placed /etc/kubernetes/manifests/nginx.yaml ({OLD_IMAGE})");
    for node in cluster.nodes() {
        let path = node.manifest_dir.join("nginx.yaml");
        std::fs::write(&path, SEED_MANIFEST).map_err(|source| DemoError::Io { path, source })?;
    }
    wait_until(
        Duration::from_secs(60),
        "the hand-placed pods to be Ready",
        || async { Ok(pods.snapshot().values().filter(|l| l.ready).count() == n) },
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

    // Its own process, as a Deployment replica runs it: its CPU time and memory are read
    // from /proc for the figures. Its log goes to a file (it would interleave with the table).
    let controller = start_controller(&cluster)?;
    let agents = start_agents(&cluster, &options).await?;
    println!(
        "-- {} agents started ({}), controller started",
        agents.len(),
        match options.agents {
            AgentMode::Processes => "one `staticpod-puller run` process per node",
            AgentMode::Tasks => "as tasks of this process, each with its own client and identity",
        }
    );
    table_header();
    // Agents and the controller list and watch before the first status: longer for a fleet.
    let start_up = Duration::from_secs(60) + Duration::from_millis(60) * n as u32;
    follow(&sps, &pods, start_up, |sp, _| {
        let (total, ready, _) = status_row(sp);
        total as usize == n && ready as usize == n
    })
    .await?;
    println!("   (hand-placed files equal to the template are left untouched: not rewritten)");
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
    let grants = GrantWatch::start(cluster.store())?;
    let usage_before = cluster.api().usage();
    let controller_before = ProcessFigures::read(controller.id());
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
        let deadline = options.progress_deadline * 4 + Duration::from_secs(60);
        follow(&sps, &pods, deadline, |sp, nodes| {
            let halted = sp.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Halted");
            halted && nodes.values().all(|l| l.image == OLD_IMAGE && l.ready)
        })
        .await?;
        let list = events.list(&ListParams::default()).await?;
        let rolled_back: Vec<&Event> = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("RolledBack"))
            .collect();
        for e in &rolled_back {
            println!(
                "   Warning RolledBack: {}",
                e.message.as_deref().unwrap_or_default()
            );
        }
        for e in list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("RolloutHalted"))
        {
            println!(
                "   Warning RolloutHalted: {}",
                e.message.as_deref().unwrap_or_default()
            );
        }
        let wrote = manifest_write_delays(&cluster, changed_wall).len();
        println!(
            "== rollout halted: {} of {n} nodes rolled {new_hash} back and are on {OLD_IMAGE} again; {} never wrote it (staticpod-puller rollout status sp/default/nginx)",
            rolled_back.len(),
            n.saturating_sub(wrote)
        );
    } else {
        // The rollout ends when every pod runs the new hash and is Ready (the status, written
        // at most once a second, says so a little later).
        let mut converged_at = None;
        // When each node was first seen with the new hash's images (PodImageReady=True).
        let mut images_ready: BTreeMap<String, Instant> = BTreeMap::new();
        // Members that rolled the new hash back (a fleet too large for this machine can see
        // some simulated kubelets miss the deadline): the rollout ends without them.
        let mut failed = 0usize;
        follow(&sps, &pods, Duration::from_secs(1800), |sp, nodes| {
            for (node, line) in nodes {
                if line
                    .image_ready
                    .as_ref()
                    .is_some_and(|(s, m)| s == "True" && m.contains(&new_hash))
                {
                    images_ready
                        .entry(node.clone())
                        .or_insert_with(Instant::now);
                }
            }
            if converged_at.is_none()
                && nodes.len() == n
                && nodes.values().all(|l| l.ready && l.hash == new_hash)
            {
                converged_at = Some(Instant::now());
            }
            let (total, ready, upgraded) = status_row(sp);
            let current =
                sp.status.as_ref().and_then(|s| s.observed_generation) == Some(generation);
            failed = sp
                .status
                .as_ref()
                .and_then(|s| s.failed_number)
                .unwrap_or(0)
                .max(0) as usize;
            current && total as usize == n && ready as usize == n && upgraded as usize + failed == n
        })
        .await?;
        let took = converged_at.unwrap_or_else(Instant::now) - changed_at;
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
        if failed == 0 {
            println!("== rollout complete: {n}/{n}/{n} on {NEW_IMAGE} (hash {new_hash})");
        } else {
            println!(
                "== rollout ended: {}/{n} on {NEW_IMAGE} (hash {new_hash}), {failed} rolled it back (timed until then)",
                n - failed
            );
        }
        let pull = options.pull_delay;
        if pull.is_zero() {
            println!(
                "   took {:.2}s; ideal ceil({n}/{budget}) × ready-delay = {waves} × {:?} = {:.2}s",
                took.as_secs_f64(),
                options.ready_delay,
                ideal.as_secs_f64()
            );
        } else {
            println!(
                "   took {:.2}s; ideal pull + ceil({n}/{budget}) × ready-delay = {:?} + {waves} × {:?} = {:.2}s (without pre-pull: {waves} × ({:?} + {:?}) = {:.2}s)",
                took.as_secs_f64(),
                pull,
                options.ready_delay,
                (pull + ideal).as_secs_f64(),
                pull,
                options.ready_delay,
                ((pull + options.ready_delay) * waves as u32).as_secs_f64()
            );
            let first_write = manifest_write_delays(&cluster, changed_wall)
                .into_iter()
                .min();
            let last_ready = images_ready.values().max().map(|at| *at - changed_at);
            println!(
                "   images pulled before the upgrade: PodImageReady=True seen on {}/{n} nodes, the last {} ms after the template change; first manifest written at {} ms",
                images_ready.len(),
                last_ready.map_or(0, |d| d.as_millis()),
                first_write.map_or(0, |d| d.as_millis())
            );
        }
        let figures = grants.stop(&new_hash, budget);
        let GrantFigures {
            holds,
            handovers,
            missed,
        } = &figures;
        if *missed > 0 {
            println!("   (the grant figures below missed {missed} changes: the demo fell behind)");
        }
        if !holds.is_empty() {
            let mean = holds.iter().sum::<Duration>() / holds.len() as u32;
            println!(
                "   grants held on average {} ms ({} grants)",
                mean.as_millis(),
                holds.len()
            );
        }
        if let (Some(p50), Some(p99), Some(max)) = (
            figures.handover(0.5),
            figures.handover(0.99),
            figures.handover(1.0),
        ) {
            println!(
                "   a freed unit's next grant (grant finished → next handed out, {} handovers): p50 {} ms, p99 {} ms, max {} ms",
                handovers.len(),
                p50.as_millis(),
                p99.as_millis(),
                max.as_millis()
            );
        }
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
        print_cost(&cluster, &usage_before, "during the rollout", None);
        if let (Some(before), Some(after)) =
            (controller_before, ProcessFigures::read(controller.id()))
        {
            println!(
                "   controller (its own process): {:.2} s of CPU during the rollout; resident {:.1} MiB (peak {:.1} MiB)",
                (after.cpu - before.cpu).as_secs_f64(),
                after.rss_kib as f64 / 1024.0,
                after.peak_kib as f64 / 1024.0
            );
        }
        let idle = options.idle_window;
        if !idle.is_zero() {
            let before = cluster.api().usage();
            tokio::time::sleep(idle).await;
            print_cost(&cluster, &before, "per node per idle minute", Some(idle));
        }
    }

    if options.keep_running {
        print_access(&cluster);
        println!("The cluster and agents keep running. Press Ctrl-C to stop.");
        wait_for_shutdown().await?;
    }
    drop(agents);
    drop(controller);
    cluster.shutdown().await;
    Ok(())
}

/// `staticpod-puller controller` as a child process (killed when dropped), against the dev
/// cluster as its admin, logging to `controller.log` in the cluster's directory.
fn start_controller(cluster: &DevCluster) -> Result<tokio::process::Child, DemoError> {
    let exe = std::env::current_exe().map_err(|source| DemoError::Io {
        path: "current executable".into(),
        source,
    })?;
    let log = cluster.dir().join("controller.log");
    let log_file = std::fs::File::create(&log).map_err(|source| DemoError::Io {
        path: log.clone(),
        source,
    })?;
    let mut command = tokio::process::Command::new(exe);
    command
        .args(["--config", "/dev/null", "--log-level", "warn", "controller"])
        .arg("--kubeconfig")
        .arg(cluster.admin_kubeconfig())
        .args([
            "--identity",
            "demo-controller",
            "--lease-namespace",
            "staticpod-system",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true);
    super::dies_with_the_demo(&mut command);
    command.spawn().map_err(DemoError::Controller)
}

/// A process's CPU time and memory, from /proc.
struct ProcessFigures {
    cpu: Duration,
    rss_kib: u64,
    peak_kib: u64,
}

impl ProcessFigures {
    fn read(pid: Option<u32>) -> Option<ProcessFigures> {
        let pid = pid?;
        // schedstat's first field: nanoseconds on a CPU (no clock-tick conversion needed).
        let schedstat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
        let cpu = Duration::from_nanos(schedstat.split_whitespace().next()?.parse().ok()?);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        };
        Some(ProcessFigures {
            cpu,
            rss_kib: kib("VmRSS:")?,
            peak_kib: kib("VmHWM:")?,
        })
    }
}

/// What the agents cost the API server since `before`: requests, watch events, and of those
/// the object's status (StaticPod writes). `per_minute_of`: scale to a minute of this window.
fn print_cost(
    cluster: &DevCluster,
    before: &UsageCounts,
    when: &str,
    per_minute_of: Option<Duration>,
) {
    let now = cluster.api().usage();
    let agents: HashSet<String> = cluster
        .nodes()
        .iter()
        .map(|n| agent_user(&n.name))
        .collect();
    let is_agent = |u: &str| agents.contains(u);
    let n = cluster.nodes().len().max(1) as f64;
    let requests = now.requests_by(is_agent) - before.requests_by(is_agent);
    let events = |what: &dyn Fn(&str) -> bool| {
        now.watch_events_to(is_agent, what) - before.watch_events_to(is_agent, what)
    };
    let all = events(&|_| true);
    let status = events(&|r| r == "staticpods" || r == "yurtstaticsets");
    let nodes = events(&|r| r == "nodes");
    match per_minute_of {
        None => {
            println!(
                "   API requests by agents {when}: {requests} ({:.1} per node)",
                requests as f64 / n
            );
            println!(
                "   watch events delivered to agents: {all} ({:.1} per node), of which the object's status: {status} ({:.1} per node)",
                all as f64 / n,
                status as f64 / n
            );
        }
        Some(window) => {
            let scale = 60.0 / window.as_secs_f64().max(0.001) / n;
            println!(
                "   idle, {:.0}s measured: {:.2} requests and {:.2} watch events {when} ({:.2} of them the agent's own Node)",
                window.as_secs_f64(),
                requests as f64 * scale,
                all as f64 * scale,
                nodes as f64 * scale
            );
        }
    }
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
