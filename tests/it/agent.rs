//! End-to-end tests of the node agent. The dev cluster and the status controller run inside
//! the test; every node's agent is a separate `staticpod-puller run` (or `sync --once`) process
//! of the built binary, with its own identity, configuration file, manifest and state
//! directories, as on a real node. Each test has its own temporary directory, waits on
//! conditions with deadlines, and says what it expected and what it saw.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use staticpod_puller::config::HumanDuration;
use staticpod_puller::manifest::mirror::{pod_hash, pod_ready};
use staticpod_puller::manifest::{hash_of_manifest, parse_manifest, template_hash};
use staticpod_puller::resources::StaticPod;
use staticpod_puller::rollout::slots::OBJECT_ANNOTATION;
use staticpod_puller::sim::cluster::{DevCluster, DevClusterOptions};
use staticpod_puller::sim::kubelet::Timings;
use staticpod_puller::sim::resource::ResourceKey;
use staticpod_puller::sim::store::Store;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support;

pub(crate) const NS: &str = "default";
pub(crate) const OLD_IMAGE: &str = "nginx:1.19.1";
pub(crate) const NEW_IMAGE: &str = "nginx:1.19.2";
const FIXED_IMAGE: &str = "nginx:1.19.3";
/// How often the tests' own watchers sample files and pods.
const SAMPLE: Duration = Duration::from_millis(20);

/// A manifest as an operator places it by hand: no hash annotation.
pub(crate) fn hand_placed(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: web\n    image: {image}\n"
    )
}

/// A pod spec with one container.
pub(crate) fn web(image: &str) -> Value {
    json!({"containers": [{"name": "web", "image": image}]})
}

/// A StaticPod as an operator writes it for OpenYurt.
pub(crate) fn static_pod(name: &str, manifest: &str, max_unavailable: Value, spec: Value) -> Value {
    json!({
        "apiVersion": "apps.openyurt.io/v1alpha1", "kind": "StaticPod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"staticPodManifest": manifest,
                 "upgradeStrategy": {"type": "AdvancedRollingUpdate", "maxUnavailable": max_unavailable},
                 "template": {"metadata": {"name": name}, "spec": spec}},
    })
}

/// The agents' rollout settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    progress_deadline: Duration,
    lease_duration: Duration,
    /// `drift.mode`: `restore` or `report`.
    drift: &'static str,
}

impl Settings {
    /// For upgrades expected to succeed: a deadline no busy CI machine reaches.
    fn patient() -> Self {
        Settings {
            progress_deadline: Duration::from_secs(20),
            lease_duration: Duration::from_secs(3),
            drift: "restore",
        }
    }

    /// For upgrades expected to be rolled back.
    pub(crate) fn deadline(progress_deadline: Duration) -> Self {
        Settings {
            progress_deadline,
            ..Settings::patient()
        }
    }
}

/// One agent process, killed (SIGKILL) when dropped.
pub(crate) struct AgentProc {
    child: Child,
}

impl AgentProc {
    /// `kill -9`, and reap it.
    fn kill9(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.child.wait().expect("reaping the killed agent")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The mirror pod of an object on a node, as the API server holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mirror {
    pub(crate) hash: Option<String>,
    pub(crate) ready: bool,
}

pub(crate) fn mirror(store: &Store, name: &str, node: &str) -> Option<Mirror> {
    let value = store
        .get(
            &ResourceKey::core("pods"),
            Some(NS),
            &format!("{name}-{node}"),
        )
        .ok()?;
    let pod: Pod = serde_json::from_value((*value).clone()).ok()?;
    Some(Mirror {
        hash: pod_hash(&pod).map(str::to_string),
        ready: pod_ready(&pod),
    })
}

/// Identity of one version of a file: a rewrite (even with equal bytes) changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    mtime: (i64, i64),
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        inode: m.ino(),
        mtime: (m.mtime(), m.mtime_nsec()),
        len: m.len(),
    })
}

/// Every entry of a directory (dot files included) with its stamp.
fn listing(dir: &Path) -> BTreeMap<String, Option<Stamp>> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, stamp(&e.path()))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn file_hash(path: &Path) -> Option<String> {
    hash_of_manifest(&std::fs::read(path).ok()?)
}

/// One test's world: a dev cluster with the CRDs and RBAC, its controller, and agents.
pub(crate) struct Env {
    pub(crate) cluster: DevCluster,
    pub(crate) admin: kube::Client,
    pub(crate) dir: tempfile::TempDir,
    agents: BTreeMap<String, AgentProc>,
    controller: Option<JoinHandle<()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(c) = self.controller.take() {
            c.abort();
        }
    }
}

impl Env {
    pub(crate) async fn start(nodes: usize, timings: Timings) -> Env {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut options = DevClusterOptions::new(dir.path(), nodes);
        options.timings = timings;
        let cluster = DevCluster::start(options)
            .await
            .expect("the dev cluster starts");
        let objects = staticpod_puller::demo::bootstrap_objects().expect("the bootstrap objects");
        cluster
            .apply(&objects)
            .expect("CRDs, namespace and agent RBAC applied");
        let admin = cluster.admin_client().await.expect("an admin client");
        Env {
            cluster,
            admin,
            dir,
            agents: BTreeMap::new(),
            controller: None,
        }
    }

    pub(crate) fn nodes(&self) -> Vec<String> {
        self.cluster
            .nodes()
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    fn manifest_dir(&self, node: &str) -> PathBuf {
        self.cluster
            .node(node)
            .unwrap_or_else(|| panic!("no node {node}"))
            .manifest_dir
            .clone()
    }

    pub(crate) fn state_dir(&self, node: &str) -> PathBuf {
        self.cluster
            .node(node)
            .unwrap_or_else(|| panic!("no node {node}"))
            .state_dir
            .clone()
    }

    pub(crate) fn manifest(&self, node: &str, manifest: &str) -> PathBuf {
        self.manifest_dir(node).join(format!("{manifest}.yaml"))
    }

    pub(crate) fn store(&self) -> &Store {
        self.cluster.store()
    }

    /// Place `<manifest>.yaml` by hand on every node and wait for its pods to be Ready.
    async fn hand_place_everywhere(&self, name: &str, image: &str) {
        for node in self.nodes() {
            let path = self.manifest(&node, name);
            std::fs::write(&path, hand_placed(name, image))
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        }
        self.wait(
            &format!("the hand-placed {name} pods to be Ready on every node"),
            Duration::from_secs(20),
            async || self.all_mirrors(name, |m| m.ready && m.hash.is_none()),
        )
        .await;
    }

    /// Ok when `ok` holds for the mirror pod of `name` on every node; else what each node has.
    fn all_mirrors(&self, name: &str, ok: impl Fn(&Mirror) -> bool) -> Result<(), String> {
        let seen: BTreeMap<String, Option<Mirror>> = self
            .nodes()
            .into_iter()
            .map(|n| {
                let m = mirror(self.store(), name, &n);
                (n, m)
            })
            .collect();
        if seen.values().all(|m| m.as_ref().is_some_and(&ok)) {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    }

    fn start_controller(&mut self) {
        let client = self.admin.clone();
        self.controller = Some(tokio::spawn(async move {
            staticpod_puller::controller::run(
                client,
                "staticpod-system",
                "test-controller",
                Duration::from_secs(3),
            )
            .await;
        }));
    }

    /// Write a node's agent configuration file (the keys of packaging/config.yaml).
    fn write_config(&self, node: &str, settings: Settings, tag: &str) -> PathBuf {
        self.write_config_with(node, settings, tag, "localApi:\n  listen: 127.0.0.1:0\n")
    }

    /// As `write_config`, with `sections` (YAML: the localApi section and any others, such as
    /// `ota`, `bundle` or `trust`) in place of the default localApi section.
    pub(crate) fn write_config_with(
        &self,
        node: &str,
        settings: Settings,
        tag: &str,
        sections: &str,
    ) -> PathBuf {
        let n = self
            .cluster
            .node(node)
            .unwrap_or_else(|| panic!("no node {node}"));
        let path = self.dir.path().join(format!("{node}.{tag}.yaml"));
        let text = format!(
            "nodeName: {}\nkubeconfig: {}\nmanifestDir: {}\nstateDir: {}\nrollout:\n  progressDeadline: {}\n  leaseDuration: {}\ndrift:\n  mode: {}\nmetrics:\n  listen: 127.0.0.1:0\n{}log:\n  level: info\n",
            n.name,
            n.agent_kubeconfig.display(),
            n.manifest_dir.display(),
            n.state_dir.display(),
            HumanDuration(settings.progress_deadline),
            HumanDuration(settings.lease_duration),
            settings.drift,
            sections,
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    fn log_path(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.agent.log"))
    }

    /// What `node`'s agent has logged so far (empty before it starts).
    pub(crate) fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.log_path(node)).unwrap_or_default()
    }

    /// Spawn `staticpod-puller --config <file> run` for a node (stderr appended to its log).
    fn spawn_agent(&self, node: &str, settings: Settings) -> AgentProc {
        let config = self.write_config(node, settings, "run");
        self.spawn_agent_with(node, &config)
    }

    /// Spawn `staticpod-puller --config <config> run` for a node.
    pub(crate) fn spawn_agent_with(&self, node: &str, config: &Path) -> AgentProc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(node))
            .expect("the agent log file");
        let child = Command::new(support::binary())
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the agent of {node}: {e}"));
        AgentProc { child }
    }

    fn start_agent(&mut self, node: &str, settings: Settings) {
        let agent = self.spawn_agent(node, settings);
        self.agents.insert(node.to_string(), agent);
    }

    fn start_agents(&mut self, settings: Settings) {
        for node in self.nodes() {
            self.start_agent(&node, settings);
        }
    }

    /// The last lines of every agent's log, for failure messages.
    pub(crate) fn logs(&self) -> String {
        let mut out = String::new();
        for node in self.nodes() {
            let Ok(text) = std::fs::read_to_string(self.log_path(&node)) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- agent of {node} (last lines)\n"));
            for line in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Poll `check` until Ok or the deadline; the panic says what was awaited, what was last
    /// seen, and what the agents logged.
    pub(crate) async fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl AsyncFnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = match check().await {
                Ok(v) => return v,
                Err(seen) => seen,
            };
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last seen: {seen}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Check that `check` keeps holding for `window` (an absence of change, observed).
    pub(crate) async fn holds(
        &self,
        what: &str,
        window: Duration,
        mut check: impl AsyncFnMut() -> Result<(), String>,
    ) {
        let started = Instant::now();
        loop {
            if let Err(seen) = check().await {
                panic!(
                    "expected {what} for {window:?}; after {:?} saw: {seen}\n{}",
                    started.elapsed(),
                    self.logs()
                );
            }
            if started.elapsed() >= window {
                return;
            }
            tokio::time::sleep(SAMPLE).await;
        }
    }

    fn static_pods(&self) -> Api<StaticPod> {
        Api::namespaced(self.admin.clone(), NS)
    }

    /// Create a StaticPod; returns its generation and template hash.
    pub(crate) async fn create(&self, object: Value) -> (i64, String) {
        let sp: StaticPod = serde_json::from_value(object).expect("a valid StaticPod");
        let created = self
            .static_pods()
            .create(&PostParams::default(), &sp)
            .await
            .unwrap_or_else(|e| panic!("creating StaticPod {:?}: {e}", sp.metadata.name));
        (
            created.metadata.generation.unwrap_or_default(),
            template_hash(&created.spec.template),
        )
    }

    /// `kubectl patch`: change the image; returns the new generation and template hash.
    pub(crate) async fn set_image(&self, name: &str, image: &str) -> (i64, String) {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}}});
        let updated = self
            .static_pods()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("patching StaticPod {name}: {e}"));
        (
            updated.metadata.generation.unwrap_or_default(),
            template_hash(&updated.spec.template),
        )
    }

    /// Wait until the status reads (total, ready, upgraded) for `generation`.
    async fn wait_status(
        &self,
        name: &str,
        generation: i64,
        want: (i32, i32, i32),
        timeout: Duration,
    ) {
        let api = self.static_pods();
        self.wait(
            &format!(
                "StaticPod {name} status (total, ready, upgraded) = {want:?} with observedGeneration {generation}"
            ),
            timeout,
            async || {
                let sp = api.get(name).await.map_err(|e| e.to_string())?;
                let row = sp.status.as_ref().map(|s| {
                    (
                        (s.total_number, s.ready_number, s.upgraded_number),
                        s.observed_generation,
                    )
                });
                match row {
                    Some((r, Some(g))) if r == want && g == generation => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    }

    /// The slot Leases of StaticPod `name` (the controller's own Lease is not one).
    async fn slot_leases(&self, name: &str) -> Result<Vec<Lease>, String> {
        let api: Api<Lease> = Api::namespaced(self.admin.clone(), "staticpod-system");
        let owner = format!("sp {NS}/{name}");
        Ok(api
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter(|l| {
                l.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(OBJECT_ANNOTATION))
                    == Some(&owner)
            })
            .collect())
    }

    /// Wait until every slot Lease of `name` has no holder (and at least one exists).
    async fn wait_slots_released(&self, name: &str) {
        self.wait_slots_released_within(name, Duration::from_secs(10))
            .await
    }

    async fn wait_slots_released_within(&self, name: &str, timeout: Duration) {
        self.wait(
            &format!("every slot Lease of {name} released (holderIdentity empty)"),
            timeout,
            async || {
                let leases = self.slot_leases(name).await?;
                let holders: Vec<(Option<String>, Option<String>)> = leases
                    .iter()
                    .map(|l| {
                        (
                            l.metadata.name.clone(),
                            l.spec.as_ref().and_then(|s| s.holder_identity.clone()),
                        )
                    })
                    .collect();
                if !holders.is_empty()
                    && holders
                        .iter()
                        .all(|(_, h)| h.as_deref().is_none_or(str::is_empty))
                {
                    Ok(())
                } else {
                    Err(format!("leases and holders {holders:?}"))
                }
            },
        )
        .await;
    }

    /// Events in the namespace with this reason.
    pub(crate) async fn events(&self, reason: &str) -> Result<Vec<Event>, String> {
        let api: Api<Event> = Api::namespaced(self.admin.clone(), NS);
        Ok(api
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect())
    }

    /// Wait for an Event with `reason` whose message contains `text`; returns the message.
    async fn wait_event(&self, reason: &str, text: &str) -> String {
        self.wait(
            &format!("a {reason} event saying {text:?}"),
            Duration::from_secs(10),
            async || {
                self.events(reason)
                    .await?
                    .into_iter()
                    .filter_map(|e| e.message)
                    .find(|m| m.contains(text))
                    .ok_or_else(|| "none yet".to_string())
            },
        )
        .await
    }

    /// Wait until every node's agent has cached the object at this hash (it has run a pass
    /// with it: the cache is saved at the start of the pass that plans with it).
    async fn wait_agents_saw(&self, hash: &str) {
        self.wait(
            &format!("every agent to have cached the desired hash {hash}"),
            Duration::from_secs(20),
            async || {
                let missing: Vec<String> = self
                    .nodes()
                    .into_iter()
                    .filter(|n| {
                        !std::fs::read_to_string(self.state_dir(n).join("desired.json"))
                            .is_ok_and(|t| t.contains(hash))
                    })
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("not yet on {missing:?}"))
                }
            },
        )
        .await;
    }

    /// Run `staticpod-puller --config <file> sync --once <extra>` for a node.
    async fn sync_once(&self, node: &str, settings: Settings, extra: &[&str]) -> Outcome {
        let config = self.write_config(node, settings, "sync");
        let mut cmd = tokio::process::Command::new(support::binary());
        cmd.arg("--config")
            .arg(&config)
            .args(["sync", "--once"])
            .args(extra)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        run_to_end(cmd, Duration::from_secs(60)).await
    }
}

/// How a short-lived process ended.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

async fn run_to_end(mut cmd: tokio::process::Command, timeout: Duration) -> Outcome {
    let output = tokio::time::timeout(timeout, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not exit within {timeout:?}"))
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    Outcome {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// One version of a watched file, when a watcher first saw it.
#[derive(Clone)]
struct Version {
    file: PathBuf,
    at: Instant,
    /// None: the file was missing.
    bytes: Option<Vec<u8>>,
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let content = match &self.bytes {
            Some(b) => String::from_utf8_lossy(b).into_owned(),
            None => "(missing)".to_string(),
        };
        write!(f, "\n{} at {:?}:\n{content}", self.file.display(), self.at)
    }
}

/// Records every distinct version of every non-dot file in some directories (and the absence
/// of expected ones), sampling every few milliseconds. A rename is atomic, so each read sees
/// one whole version.
struct DirWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Version>>>,
    task: JoinHandle<()>,
}

impl DirWatch {
    fn start(dirs: Vec<PathBuf>, expected: &str) -> DirWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<Version>>> = Arc::default();
        let expected = expected.to_string();
        let task = tokio::spawn({
            let (stop, seen) = (stop.clone(), seen.clone());
            async move {
                let mut last: BTreeMap<PathBuf, Option<Vec<u8>>> = BTreeMap::new();
                loop {
                    // One last sample after the stop: `finish` sees everything before it.
                    let stopping = stop.load(Ordering::SeqCst);
                    for dir in &dirs {
                        let mut files: BTreeSet<PathBuf> = std::fs::read_dir(dir)
                            .map(|es| {
                                es.flatten()
                                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                                    .map(|e| e.path())
                                    .collect()
                            })
                            .unwrap_or_default();
                        files.insert(dir.join(&expected));
                        for file in files {
                            let bytes = std::fs::read(&file).ok();
                            if last.get(&file) != Some(&bytes) {
                                last.insert(file.clone(), bytes.clone());
                                seen.lock().unwrap().push(Version {
                                    file,
                                    at: Instant::now(),
                                    bytes,
                                });
                            }
                        }
                    }
                    if stopping {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        DirWatch { stop, seen, task }
    }

    fn history(&self) -> Vec<Version> {
        self.seen.lock().unwrap().clone()
    }

    async fn finish(self) -> Vec<Version> {
        self.stop.store(true, Ordering::SeqCst);
        let seen = self.seen.clone();
        let _ = self.task.await;
        seen.lock().unwrap().clone()
    }
}

/// When `file` was first seen with `hash`, and when it was next seen with other content.
fn write_and_restore(history: &[Version], file: &Path, hash: &str) -> Option<(Instant, Instant)> {
    let versions: Vec<&Version> = history.iter().filter(|v| v.file == file).collect();
    let written = versions.iter().position(|v| {
        v.bytes
            .as_deref()
            .and_then(hash_of_manifest)
            .is_some_and(|h| h == hash)
    })?;
    let restored = versions[written + 1..].first()?;
    Some((versions[written].at, restored.at))
}

// --- 1. The seed scenario -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_adopts_hand_placed_files_without_writing_then_upgrades_every_node() {
    let mut env = Env::start(3, Timings::fast()).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let before: BTreeMap<String, Option<Stamp>> = env
        .nodes()
        .iter()
        .map(|n| (n.clone(), stamp(&env.manifest(n, "nginx"))))
        .collect();

    let (generation, old_hash) = env
        .create(static_pod("nginx", "nginx", json!(3), web(OLD_IMAGE)))
        .await;
    env.start_controller();
    env.start_agents(Settings::patient());
    env.wait_status("nginx", generation, (3, 3, 0), Duration::from_secs(20))
        .await;
    // The agents have planned with the object; equal content is never written, and no slot is
    // taken for a node that is already current.
    env.wait_agents_saw(&old_hash).await;
    env.holds(
        "the hand-placed files untouched (same inode and mtime) and no slot Lease",
        Duration::from_secs(1),
        async || {
            let now: BTreeMap<String, Option<Stamp>> = env
                .nodes()
                .iter()
                .map(|n| (n.clone(), stamp(&env.manifest(n, "nginx"))))
                .collect();
            if now != before {
                return Err(format!("stamps were {before:?}, now {now:?}"));
            }
            let leases = env.slot_leases("nginx").await?;
            if !leases.is_empty() {
                let names: Vec<_> = leases.iter().map(|l| l.metadata.name.clone()).collect();
                return Err(format!("slot Leases created: {names:?}"));
            }
            Ok(())
        },
    )
    .await;

    let (generation, new_hash) = env.set_image("nginx", NEW_IMAGE).await;
    assert_ne!(new_hash, old_hash, "a new image is a new revision");
    env.wait_status("nginx", generation, (3, 3, 3), Duration::from_secs(30))
        .await;
    for node in env.nodes() {
        let path = env.manifest(&node, "nginx");
        let bytes = std::fs::read(&path).expect("the manifest is still there");
        let pod = parse_manifest(&bytes).expect("the written manifest is a v1 Pod");
        let annotations = pod.metadata.annotations.unwrap_or_default();
        assert_eq!(
            annotations.get("openyurt.io/static-pod-hash"),
            Some(&new_hash),
            "{}: expected the hash annotation of the new template",
            path.display()
        );
        let image = pod
            .spec
            .and_then(|s| s.containers.into_iter().next()?.image);
        assert_eq!(image.as_deref(), Some(NEW_IMAGE), "{}", path.display());
        let names: Vec<String> = listing(&env.manifest_dir(&node)).into_keys().collect();
        assert_eq!(
            names,
            vec!["nginx.yaml".to_string()],
            "{node}: only the manifest in the manifest directory (no temp file, no backup)"
        );
    }
    env.wait_slots_released("nginx").await;

    // The controller (in this process) counted its passes, their durations and its writes.
    let metrics =
        staticpod_puller::metrics::render(staticpod_puller::metrics::Role::Controller, &[]);
    for series in [
        "staticpod_puller_controller_reconciles_total ",
        "staticpod_puller_controller_reconcile_seconds_count ",
        "staticpod_puller_controller_status_writes_total{result=\"ok\"} ",
    ] {
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.parse::<f64>().ok());
        assert!(
            value.is_some_and(|v| v >= 1.0),
            "{series}counted; metrics:\n{metrics}"
        );
    }
}

// --- 2. The budget holds ------------------------------------------------------------------

/// Roll out on 10 nodes with slow readiness while sampling files and mirror pods; at no sample
/// may more than `budget` members be upgrading (file carries the new hash, mirror pod not yet
/// Ready with it).
/// Samples, while a rollout runs, how many members are upgrading at once: the manifest file
/// holds the new hash but the mirror pod is not yet Ready on it.
struct BudgetWatch {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(usize, usize, String)>,
}

impl BudgetWatch {
    fn start(env: &Env, name: &str, new_hash: &str) -> BudgetWatch {
        let store = env.cluster.store().clone();
        let files: Vec<(String, PathBuf)> = env
            .nodes()
            .into_iter()
            .map(|n| {
                let f = env.manifest(&n, name);
                (n, f)
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (name, new_hash) = (name.to_string(), new_hash.to_string());
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut max, mut samples, mut worst) = (0usize, 0usize, String::new());
                while !stop.load(Ordering::SeqCst) {
                    // Files first, then pods: a pod only moves towards Ready-with-the-new-hash,
                    // and a slot is freed only after that, so this order never overcounts.
                    let written: Vec<&String> = files
                        .iter()
                        .filter(|(_, f)| file_hash(f).as_deref() == Some(new_hash.as_str()))
                        .map(|(n, _)| n)
                        .collect();
                    let upgrading: Vec<(&String, Option<Mirror>)> = written
                        .into_iter()
                        .map(|n| (n, mirror(&store, &name, n)))
                        .filter(|(_, m)| {
                            !m.as_ref()
                                .is_some_and(|m| m.ready && m.hash.as_deref() == Some(&new_hash))
                        })
                        .collect();
                    samples += 1;
                    if upgrading.len() > max {
                        max = upgrading.len();
                        worst = format!("{upgrading:?}");
                    }
                    tokio::time::sleep(SAMPLE).await;
                }
                (max, samples, worst)
            }
        });
        BudgetWatch { stop, task }
    }

    /// Stop sampling; assert at most `budget` were ever upgrading at once, and that the
    /// rollout was seen at all.
    async fn assert_within(self, budget: usize) {
        self.stop.store(true, Ordering::SeqCst);
        let (max, samples, worst) = self.task.await.expect("the budget watcher");
        println!("at most {max} upgrading over {samples} samples (budget {budget})");
        assert!(
            max <= budget,
            "{budget} members may upgrade at once; saw {max}: {worst}"
        );
        assert!(
            max >= 1 && samples >= 10,
            "the watcher should have seen the rollout: max {max} upgrading over {samples} samples"
        );
    }
}

async fn rollout_respects_budget(max_unavailable: Value, budget: usize) {
    let timings = Timings {
        ready: Duration::from_millis(800),
        ..Timings::fast()
    };
    let mut env = Env::start(10, timings).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let (generation, _) = env
        .create(static_pod(
            "nginx",
            "nginx",
            max_unavailable.clone(),
            web(OLD_IMAGE),
        ))
        .await;
    env.start_controller();
    env.start_agents(Settings::patient());
    env.wait_status("nginx", generation, (10, 10, 0), Duration::from_secs(30))
        .await;

    let (generation, new_hash) = env.set_image("nginx", NEW_IMAGE).await;
    let budget_watch = BudgetWatch::start(&env, "nginx", &new_hash);
    env.wait_status("nginx", generation, (10, 10, 10), Duration::from_secs(60))
        .await;
    budget_watch.assert_within(budget).await;
    for node in env.nodes() {
        assert_eq!(
            file_hash(&env.manifest(&node, "nginx")).as_deref(),
            Some(new_hash.as_str()),
            "{node}: expected the new revision in the manifest"
        );
    }
    env.wait_slots_released("nginx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_never_has_more_upgrading_than_max_unavailable_count() {
    rollout_respects_budget(json!(2), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_never_has_more_upgrading_than_max_unavailable_percent() {
    // 25% of 10 members, rounded up.
    rollout_respects_budget(json!("25%"), 3).await;
}

// --- 3. Broken image → rollback -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_image_is_rolled_back_within_the_deadline_and_not_retried_until_the_template_changes()
 {
    let deadline = Duration::from_secs(3);
    let mut env = Env::start(2, Timings::fast()).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let (generation, old_hash) = env
        .create(static_pod("nginx", "nginx", json!(2), web(OLD_IMAGE)))
        .await;
    env.start_controller();
    env.start_agents(Settings::deadline(deadline));
    env.wait_status("nginx", generation, (2, 2, 0), Duration::from_secs(20))
        .await;
    env.wait_agents_saw(&old_hash).await;

    let dirs = env.nodes().iter().map(|n| env.manifest_dir(n)).collect();
    let watch = DirWatch::start(dirs, "nginx.yaml");
    env.cluster.set_broken_image(NEW_IMAGE, true);
    let (_, bad_hash) = env.set_image("nginx", NEW_IMAGE).await;

    let rolled_back = env
        .wait(
            "a RolledBack event from every node",
            deadline + Duration::from_secs(15),
            async || {
                let events = env.events("RolledBack").await?;
                let missing: Vec<String> = env
                    .nodes()
                    .into_iter()
                    .filter(|n| {
                        !events.iter().any(|e| {
                            e.message
                                .as_deref()
                                .is_some_and(|m| m.contains(&format!("node {n}:")))
                        })
                    })
                    .collect();
                if missing.is_empty() {
                    Ok(events)
                } else {
                    Err(format!("none yet from {missing:?}"))
                }
            },
        )
        .await;
    for e in &rolled_back {
        let message = e.message.clone().unwrap_or_default();
        assert_eq!(e.type_.as_deref(), Some("Warning"), "{message}");
        assert_eq!(
            (
                e.involved_object.kind.as_deref(),
                e.involved_object.name.as_deref()
            ),
            (Some("StaticPod"), Some("nginx")),
            "{message}"
        );
        assert!(
            message.contains(&bad_hash),
            "expected the rolled back hash {bad_hash} in: {message}"
        );
    }
    let history = watch.history();
    for node in env.nodes() {
        let path = env.manifest(&node, "nginx");
        let bytes = std::fs::read(&path).expect("the manifest is still there");
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            hand_placed("nginx", OLD_IMAGE),
            "{node}: expected the previous (hand-placed) manifest restored byte for byte"
        );
        let (written, restored) =
            write_and_restore(&history, &path, &bad_hash).unwrap_or_else(|| {
                panic!("{node}: expected to see {bad_hash} written then replaced; saw {history:?}")
            });
        let took = restored - written;
        assert!(
            took + Duration::from_millis(100) >= deadline
                && took <= deadline + Duration::from_secs(3),
            "{node}: expected the rollback {deadline:?} after the write (the progress deadline); it came after {took:?}"
        );
    }
    env.wait_slots_released("nginx").await;
    env.wait(
        "the restored pods Ready again",
        Duration::from_secs(10),
        async || env.all_mirrors("nginx", |m| m.ready && m.hash.is_none()),
    )
    .await;

    // The failed hash is not retried, not even by a restarted agent (it is remembered in the
    // state directory): the files stay as they are, no new upgrade starts.
    let restarted = env.nodes()[0].clone();
    env.agents
        .get_mut(&restarted)
        .expect("the first agent")
        .kill9();
    env.start_agent(&restarted, Settings::deadline(deadline));
    env.wait(
        &format!("the agent of {restarted} started again"),
        Duration::from_secs(10),
        async || {
            let starts = env.log(&restarted).matches("agent started").count();
            if starts >= 2 {
                Ok(())
            } else {
                Err(format!("{starts} \"agent started\" lines"))
            }
        },
    )
    .await;
    let started = env.events("UpgradeStarted").await.expect("listing events");
    let watched = watch.history().len();
    env.holds(
        "the restored manifests left alone (the failed hash is not retried)",
        Duration::from_secs(3),
        async || {
            for node in env.nodes() {
                let bytes =
                    std::fs::read(env.manifest(&node, "nginx")).map_err(|e| e.to_string())?;
                if bytes != hand_placed("nginx", OLD_IMAGE).as_bytes() {
                    return Err(format!("{node}: {}", String::from_utf8_lossy(&bytes)));
                }
            }
            let now = env.events("UpgradeStarted").await?;
            if now.len() != started.len() {
                return Err(format!(
                    "{} UpgradeStarted events, was {}",
                    now.len(),
                    started.len()
                ));
            }
            Ok(())
        },
    )
    .await;
    let history = watch.finish().await;
    assert_eq!(
        history.len(),
        watched,
        "no manifest version after the rollback; saw {:?}",
        &history[watched..]
    );

    // A fixed template rolls out.
    let (generation, fixed_hash) = env.set_image("nginx", FIXED_IMAGE).await;
    env.wait_status("nginx", generation, (2, 2, 2), Duration::from_secs(20))
        .await;
    for node in env.nodes() {
        assert_eq!(
            file_hash(&env.manifest(&node, "nginx")).as_deref(),
            Some(fixed_hash.as_str()),
            "{node}: expected the fixed revision"
        );
    }
}

// --- 4. One agent per state directory ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_state_directory_exits_saying_who_holds_the_lock() {
    let mut env = Env::start(1, Timings::fast()).await;
    let node = env.nodes()[0].clone();
    env.start_agent(&node, Settings::patient());
    let pid = env.agents[&node].child.id().to_string();
    let lock = env.state_dir(&node).join("lock");
    env.wait(
        "the first agent to hold the lock (its pid in the lock file)",
        Duration::from_secs(10),
        async || match std::fs::read_to_string(&lock) {
            Ok(text) if text.trim() == pid => Ok(()),
            other => Err(format!("{other:?}, want {pid}")),
        },
    )
    .await;

    let config = env.write_config(&node, Settings::patient(), "second");
    let mut second = tokio::process::Command::new(support::binary());
    second
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = run_to_end(second, Duration::from_secs(20)).await;
    assert!(
        !out.status.success() && out.stderr.contains("holds the lock") && out.stderr.contains(&pid),
        "expected the second `run` to exit non-zero naming the lock holder (pid {pid}); got {:?}, stderr: {}",
        out.status,
        out.stderr
    );

    let out = env.sync_once(&node, Settings::patient(), &[]).await;
    assert!(
        !out.status.success() && out.stderr.contains("holds the lock"),
        "expected `sync --once` beside a running agent to exit non-zero (holds the lock); got {:?}, stderr: {}",
        out.status,
        out.stderr
    );
    let agent = env.agents.get_mut(&node).expect("the first agent");
    assert!(
        agent
            .child
            .try_wait()
            .expect("polling the first agent")
            .is_none(),
        "the first agent keeps running\n{}",
        env.logs()
    );
}

// --- 5. Hostile objects -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_objects_are_refused_and_write_nothing_while_a_good_object_converges() {
    let mut env = Env::start(1, Timings::fast()).await;
    let node = env.nodes()[0].clone();
    let manifest_dir = env.manifest_dir(&node);
    // Where `../../etc/cron.d/x` points from the manifest directory: make it writable.
    let cron_d = manifest_dir.join("../../etc/cron.d");
    std::fs::create_dir_all(&cron_d).expect("creating the decoy cron.d");
    std::fs::write(
        manifest_dir.join("leaky.yaml"),
        hand_placed("leaky", OLD_IMAGE),
    )
    .expect("placing leaky.yaml");
    std::fs::write(manifest_dir.join("web.yaml"), hand_placed("web", OLD_IMAGE))
        .expect("placing web.yaml");
    env.wait(
        "the hand-placed pods Ready",
        Duration::from_secs(20),
        async || {
            let m = (
                mirror(env.store(), "leaky", &node),
                mirror(env.store(), "web", &node),
            );
            match &m {
                (Some(a), Some(b)) if a.ready && b.ready => Ok(()),
                _ => Err(format!("{m:?}")),
            }
        },
    )
    .await;
    let leaky_before = stamp(&manifest_dir.join("leaky.yaml"));

    env.create(static_pod(
        "escape",
        "../../etc/cron.d/x",
        json!(1),
        web(NEW_IMAGE),
    ))
    .await;
    let mut secret = web(NEW_IMAGE);
    secret["volumes"] = json!([{"name": "creds", "secret": {"secretName": "node-creds"}}]);
    secret["containers"][0]["volumeMounts"] = json!([{"name": "creds", "mountPath": "/creds"}]);
    env.create(static_pod("leaky", "leaky", json!(1), secret))
        .await;
    let (generation, web_hash) = env
        .create(static_pod("web", "web", json!(1), web(NEW_IMAGE)))
        .await;
    env.start_controller();
    env.start_agents(Settings::patient());

    env.wait_status("web", generation, (1, 1, 1), Duration::from_secs(20))
        .await;
    let refused = env
        .wait(
            "Refused events for escape and leaky",
            Duration::from_secs(10),
            async || {
                let events = env.events("Refused").await?;
                let names: BTreeSet<String> = events
                    .iter()
                    .filter_map(|e| e.involved_object.name.clone())
                    .collect();
                if names.contains("escape") && names.contains("leaky") {
                    Ok(events)
                } else {
                    Err(format!("Refused events for {names:?}"))
                }
            },
        )
        .await;
    for e in &refused {
        let message = e.message.clone().unwrap_or_default();
        assert_eq!(e.type_.as_deref(), Some("Warning"), "{message}");
        let field = match e.involved_object.name.as_deref() {
            Some("escape") => "spec.staticPodManifest",
            Some("leaky") => "secret",
            other => panic!("unexpected Refused event for {other:?}: {message}"),
        };
        assert!(
            message.contains(&node) && message.contains(field),
            "expected the node and {field} named in: {message}"
        );
    }

    let after = listing(&manifest_dir);
    let names: Vec<&String> = after.keys().collect();
    assert_eq!(
        names,
        vec!["leaky.yaml", "web.yaml"],
        "expected nothing but the two manifests in the manifest directory"
    );
    assert_eq!(
        stamp(&manifest_dir.join("leaky.yaml")),
        leaky_before,
        "leaky.yaml must not be rewritten by a refused object"
    );
    assert_eq!(
        file_hash(&manifest_dir.join("web.yaml")).as_deref(),
        Some(web_hash.as_str()),
        "the good object converges on the same node"
    );
    let escaped: Vec<String> = listing(&cron_d).into_keys().collect();
    assert!(
        escaped.is_empty(),
        "nothing may be written outside the manifest directory; {} holds {escaped:?}",
        cron_d.display()
    );
}

// --- 6. sync --once -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_exits_zero_when_converged_and_non_zero_with_the_reason_when_rolled_back() {
    let env = Env::start(1, Timings::fast()).await;
    let node = env.nodes()[0].clone();
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let (_, new_hash) = env
        .create(static_pod("nginx", "nginx", json!(1), web(NEW_IMAGE)))
        .await;

    let out = env
        .sync_once(&node, Settings::patient(), &["--timeout", "30s"])
        .await;
    assert!(
        out.status.success() && out.stdout.contains(&format!("node {node} converged")),
        "expected exit 0 and \"node {node} converged\"; got {:?}, stdout: {}, stderr: {}",
        out.status,
        out.stdout,
        out.stderr
    );
    assert_eq!(
        file_hash(&env.manifest(&node, "nginx")).as_deref(),
        Some(new_hash.as_str()),
        "sync --once upgraded the manifest"
    );
    assert_eq!(
        mirror(env.store(), "nginx", &node),
        Some(Mirror {
            hash: Some(new_hash.clone()),
            ready: true
        }),
        "converged means the new pod is Ready"
    );
    let upgraded = std::fs::read(env.manifest(&node, "nginx")).expect("the manifest");

    env.cluster.set_broken_image(FIXED_IMAGE, true);
    let (_, bad_hash) = env.set_image("nginx", FIXED_IMAGE).await;
    // A rolled-back hash will not change by waiting: sync --once says so at once instead of
    // waiting out its --timeout.
    let started = Instant::now();
    let out = env
        .sync_once(
            &node,
            Settings::deadline(Duration::from_millis(1500)),
            &["--timeout", "120s"],
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "sync --once waited {:?} on a held-back hash",
        started.elapsed()
    );
    assert!(
        !out.status.success()
            && out
                .stderr
                .contains(&format!("{bad_hash} was rolled back here")),
        "expected a non-zero exit saying \"{bad_hash} was rolled back here\"; got {:?}, stderr: {}",
        out.status,
        out.stderr
    );
    assert_eq!(
        std::fs::read(env.manifest(&node, "nginx")).expect("the manifest"),
        upgraded,
        "the previous manifest is restored"
    );
}

// --- 7. kill -9 in the middle of an upgrade ------------------------------------------------

/// Start an upgrade on one node with slow readiness, `kill -9` its agent right after the write
/// (before Ready), restart it, and return what the manifest directory went through.
async fn kill_after_write(broken: bool) -> (Env, String, String, DirWatch) {
    let timings = Timings {
        ready: Duration::from_millis(2500),
        ..Timings::fast()
    };
    let settings = Settings {
        progress_deadline: if broken {
            Duration::from_secs(4)
        } else {
            Duration::from_secs(20)
        },
        ..Settings::patient()
    };
    let mut env = Env::start(1, timings).await;
    let node = env.nodes()[0].clone();
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let (_, old_hash) = env
        .create(static_pod("nginx", "nginx", json!(1), web(OLD_IMAGE)))
        .await;
    env.start_controller();
    env.start_agent(&node, settings);
    env.wait_agents_saw(&old_hash).await;

    let path = env.manifest(&node, "nginx");
    let watch = DirWatch::start(vec![env.manifest_dir(&node)], "nginx.yaml");
    if broken {
        env.cluster.set_broken_image(NEW_IMAGE, true);
    }
    let (_, new_hash) = env.set_image("nginx", NEW_IMAGE).await;
    // Detect the write as closely as possible, then kill at once.
    let deadline = Instant::now() + Duration::from_secs(20);
    while file_hash(&path).as_deref() != Some(new_hash.as_str()) {
        assert!(
            Instant::now() < deadline,
            "expected the agent to write {new_hash} within 20s\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let status = env.agents.get_mut(&node).expect("the agent").kill9();
    let at_kill = mirror(env.store(), "nginx", &node);
    assert!(
        !at_kill
            .as_ref()
            .is_some_and(|m| m.ready && m.hash.as_deref() == Some(&new_hash)),
        "the kill must land before the new pod is Ready; mirror pod was {at_kill:?}"
    );
    let journal = env.state_dir(&node).join("journal-nginx.json");
    assert!(
        journal.exists(),
        "killed mid-upgrade ({status}): expected the journal entry {}",
        journal.display()
    );
    let written = stamp(&path);

    env.start_agent(&node, settings);
    env.wait(
        "the restarted agent to end the journaled upgrade",
        settings.progress_deadline + Duration::from_secs(10),
        async || {
            if journal.exists() {
                Err(format!("{} still there", journal.display()))
            } else {
                Ok(())
            }
        },
    )
    .await;
    if !broken {
        assert_eq!(
            stamp(&path),
            written,
            "the restarted agent finishes without writing the manifest again"
        );
    }
    (env, node, new_hash, watch)
}

/// Every version seen parses, and is either the hand-placed one or the new revision.
fn assert_only_old_or_new(history: &[Version], new_hash: &str) {
    let old = hand_placed("nginx", OLD_IMAGE);
    for v in history {
        let name = v.file.file_name().unwrap_or_default().to_string_lossy();
        assert_eq!(
            name, "nginx.yaml",
            "no other file may appear in the manifest directory; saw {v:?}"
        );
        let bytes = v
            .bytes
            .as_deref()
            .unwrap_or_else(|| panic!("the manifest was missing at {:?}", v.at));
        parse_manifest(bytes).unwrap_or_else(|e| {
            panic!(
                "every version must parse; {e}: {}",
                String::from_utf8_lossy(bytes)
            )
        });
        let is_old = bytes == old.as_bytes();
        let is_new = hash_of_manifest(bytes).as_deref() == Some(new_hash);
        assert!(
            is_old || is_new,
            "expected the old or the new revision; saw {}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_after_its_write_completes_the_upgrade_when_restarted() {
    let (env, node, new_hash, watch) = kill_after_write(false).await;
    env.wait("the new pod Ready", Duration::from_secs(20), async || {
        env.all_mirrors("nginx", |m| m.ready && m.hash.as_deref() == Some(&new_hash))
    })
    .await;
    env.wait(
        "an UpgradeSucceeded event from the restarted agent",
        Duration::from_secs(10),
        async || {
            let events = env.events("UpgradeSucceeded").await?;
            if events.iter().any(|e| {
                e.message
                    .as_deref()
                    .is_some_and(|m| m.contains(&node) && m.contains(&new_hash))
            }) {
                Ok(())
            } else {
                Err(format!("{} UpgradeSucceeded events", events.len()))
            }
        },
    )
    .await;
    env.wait_slots_released("nginx").await;
    let history = watch.finish().await;
    assert_only_old_or_new(&history, &new_hash);
    assert!(
        history
            .iter()
            .any(|v| v.bytes.as_deref().and_then(hash_of_manifest).as_deref() == Some(&new_hash)),
        "the watcher saw the new revision: {history:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_after_writing_a_broken_image_rolls_back_when_restarted() {
    let (env, node, new_hash, watch) = kill_after_write(true).await;
    let path = env.manifest(&node, "nginx");
    let history = watch.finish().await;
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(&path).expect("the manifest")),
        hand_placed("nginx", OLD_IMAGE),
        "expected the hand-placed manifest restored after the rollback"
    );
    let events = env.events("RolledBack").await.expect("listing events");
    assert!(
        events.iter().any(|e| e
            .message
            .as_deref()
            .is_some_and(|m| m.contains(&node) && m.contains(&new_hash))),
        "expected a RolledBack event for {new_hash} from {node}; got {events:?}"
    );
    let (written, restored) = write_and_restore(&history, &path, &new_hash)
        .unwrap_or_else(|| panic!("expected {new_hash} written then restored; saw {history:?}"));
    // The journal keeps the start time in whole seconds of wall clock: allow a second.
    let took = restored - written;
    assert!(
        took + Duration::from_millis(1200) >= Duration::from_secs(4)
            && took <= Duration::from_secs(4 + 3),
        "the deadline (4s) holds across the restart: rolled back {took:?} after the write"
    );
    env.wait_slots_released("nginx").await;
    assert_only_old_or_new(&history, &new_hash);
}

// --- 8. A NotReady node -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_ready_node_is_skipped_by_the_others_and_upgraded_when_it_comes_back() {
    let mut env = Env::start(3, Timings::fast()).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let (generation, _) = env
        .create(static_pod("nginx", "nginx", json!(1), web(OLD_IMAGE)))
        .await;
    env.start_controller();
    // The node stays down longer than the progress deadline: that must not count as a failed
    // upgrade (no rollback, no held-back hash).
    let progress_deadline = Duration::from_secs(5);
    env.start_agents(Settings::deadline(progress_deadline));
    env.wait_status("nginx", generation, (3, 3, 0), Duration::from_secs(20))
        .await;

    let nodes = env.nodes();
    let (down, up) = (nodes[2].clone(), &nodes[..2]);
    env.cluster
        .node(&down)
        .expect("the third node")
        .kubelet
        .set_reporting(false);
    env.wait_status("nginx", generation, (3, 2, 0), Duration::from_secs(10))
        .await;

    let (generation, new_hash) = env.set_image("nginx", NEW_IMAGE).await;
    env.wait(
        &format!("{up:?} upgraded and Ready while {down} is NotReady"),
        Duration::from_secs(20),
        async || {
            let seen: Vec<Option<Mirror>> =
                up.iter().map(|n| mirror(env.store(), "nginx", n)).collect();
            if seen.iter().all(|m| {
                m.as_ref()
                    .is_some_and(|m| m.ready && m.hash.as_deref() == Some(&new_hash))
            }) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
    // The scenario itself: the node stays NotReady for longer than the deadline.
    tokio::time::sleep(progress_deadline + Duration::from_secs(2)).await;
    let still_down = mirror(env.store(), "nginx", &down);
    assert!(
        still_down.as_ref().is_some_and(|m| !m.ready),
        "{down} stays NotReady while its kubelet is not reporting; mirror pod {still_down:?}"
    );

    env.cluster
        .node(&down)
        .expect("the third node")
        .kubelet
        .set_reporting(true);
    env.wait_status("nginx", generation, (3, 3, 3), Duration::from_secs(20))
        .await;
    assert_eq!(
        file_hash(&env.manifest(&down, "nginx")).as_deref(),
        Some(new_hash.as_str()),
        "{down}: expected the new revision once back"
    );
    let rolled_back = env.events("RolledBack").await.expect("listing events");
    assert!(
        rolled_back.is_empty(),
        "time NotReady is not a failed upgrade; got {rolled_back:?}"
    );
}

// --- 7. Drift ------------------------------------------------------------------------------

/// Two nodes on the new revision; the first agent restores hand edits, the second reports them.
async fn upgraded_pair() -> (Env, String, String, String) {
    let mut env = Env::start(2, Timings::fast()).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    env.create(static_pod("nginx", "nginx", json!(2), web(OLD_IMAGE)))
        .await;
    env.start_controller();
    let nodes = env.nodes();
    let (restoring, reporting) = (nodes[0].clone(), nodes[1].clone());
    env.start_agent(&restoring, Settings::patient());
    env.start_agent(
        &reporting,
        Settings {
            drift: "report",
            ..Settings::patient()
        },
    );
    let (generation, new_hash) = env.set_image("nginx", NEW_IMAGE).await;
    env.wait_status("nginx", generation, (2, 2, 2), Duration::from_secs(30))
        .await;
    (env, restoring, reporting, new_hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edit_is_restored_and_editor_temp_files_change_nothing() {
    let (env, node, _, new_hash) = upgraded_pair().await;
    let file = env.manifest(&node, "nginx");
    let desired = std::fs::read(&file).expect("reading the managed manifest");

    // Editors' swap and backup files beside it: no write, no event.
    let before = stamp(&file);
    let dir = env.manifest_dir(&node);
    std::fs::write(dir.join(".nginx.yaml.swp"), b"swap").expect("writing a swap file");
    std::fs::write(dir.join("nginx.yaml~"), &desired).expect("writing a backup file");
    env.holds(
        "the managed manifest untouched while editor files come and go",
        Duration::from_secs(2),
        async || match stamp(&file) {
            s if s == before => Ok(()),
            s => Err(format!("{s:?} (was {before:?})")),
        },
    )
    .await;

    // A hand edit in place (as `vi` with backupcopy=yes does): put back.
    let edited = String::from_utf8_lossy(&desired).replace(NEW_IMAGE, "nginx:hand-edited");
    std::fs::write(&file, edited).expect("editing the manifest by hand");
    env.wait(
        "the hand edit undone",
        Duration::from_secs(10),
        async || match std::fs::read(&file) {
            Ok(b) if b == desired => Ok(()),
            other => Err(format!(
                "{:?}",
                other.map(|b| String::from_utf8_lossy(&b).into_owned())
            )),
        },
    )
    .await;
    assert_eq!(file_hash(&file).as_deref(), Some(new_hash.as_str()));
    let message = env.wait_event("DriftRestored", "edited on the node").await;
    assert!(
        message.contains(&node) && message.contains("edited on the node"),
        "the event names the node and what happened: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_drift_mode_report_a_hand_edit_is_left_and_reported() {
    let (env, _, node, _) = upgraded_pair().await;
    let file = env.manifest(&node, "nginx");
    let desired = std::fs::read_to_string(&file).expect("reading the managed manifest");
    let edited = desired.replace(NEW_IMAGE, "nginx:hand-edited");
    std::fs::write(&file, &edited).expect("editing the manifest by hand");
    let message = env.wait_event("DriftDetected", "left as is").await;
    assert!(
        message.contains(&node) && message.contains("left as is"),
        "the event names the node and says the edit was kept: {message}"
    );
    env.holds(
        "the hand edit kept (drift.mode: report)",
        Duration::from_secs(2),
        async || match std::fs::read_to_string(&file) {
            Ok(t) if t == edited => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
}

// --- Supersede -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_template_supersedes_an_upgrade_waiting_for_ready() {
    const BROKEN: &str = "nginx:never-ready";
    let mut env = Env::start(1, Timings::fast()).await;
    env.cluster.set_broken_image(BROKEN, true);
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    env.create(static_pod("nginx", "nginx", json!(1), web(OLD_IMAGE)))
        .await;
    env.start_controller();
    // The deadline is far away: only supersession can end the first upgrade in time.
    env.start_agents(Settings::deadline(Duration::from_secs(120)));
    let node = env.nodes()[0].clone();
    let file = env.manifest(&node, "nginx");

    let (_, broken_hash) = env.set_image("nginx", BROKEN).await;
    env.wait(
        "the never-Ready revision written",
        Duration::from_secs(10),
        async || match file_hash(&file) {
            Some(h) if h == broken_hash => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;

    let (generation, fixed_hash) = env.set_image("nginx", NEW_IMAGE).await;
    env.wait_status("nginx", generation, (1, 1, 1), Duration::from_secs(20))
        .await;
    assert_eq!(file_hash(&file).as_deref(), Some(fixed_hash.as_str()));
    let rolled_back = env.events("RolledBack").await.expect("listing events");
    assert!(
        rolled_back.is_empty(),
        "a superseded upgrade is not a rollback: {rolled_back:?}"
    );
    env.wait_slots_released("nginx").await;
}

// --- 8. API faults -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_api_errors_dropped_watches_and_a_partition_every_node_converges_within_budget() {
    const NODES: usize = 6;
    const PARTITION: Duration = Duration::from_secs(30);
    let timings = Timings {
        ready: Duration::from_millis(600),
        ..Timings::fast()
    };
    let mut env = Env::start(NODES, timings).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let (generation, _) = env
        .create(static_pod("nginx", "nginx", json!(2), web(OLD_IMAGE)))
        .await;
    env.start_controller();
    env.start_agents(Settings::patient());
    env.wait_status("nginx", generation, (6, 6, 0), Duration::from_secs(30))
        .await;

    let (generation, new_hash) = env.set_image("nginx", NEW_IMAGE).await;
    let budget_watch = BudgetWatch::start(&env, "nginx", &new_hash);
    let faults = env.cluster.api().faults().clone();
    // 500s: kube's client would retry 503s itself and hide them from the agent.
    faults.set_internal_errors(true);
    for verb in staticpod_puller::sim::apiserver::Verb::ALL {
        faults.set_error_rate(verb, 0.1);
    }
    let cut_off = env.nodes()[NODES - 1].clone();
    let cut_off_user = staticpod_puller::sim::cluster::agent_user(&cut_off);
    faults.partition(&cut_off_user);
    let partitioned_at = Instant::now();
    // Every watch dropped every few seconds, for the whole rollout.
    let dropper = tokio::spawn({
        let faults = faults.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                faults.close_watches();
            }
        }
    });

    let others: Vec<String> = env.nodes()[..NODES - 1].to_vec();
    let converged = |nodes: &[String]| -> Result<(), String> {
        let behind: Vec<(String, Option<String>, Option<Mirror>)> = nodes
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    file_hash(&env.manifest(n, "nginx")),
                    mirror(env.store(), "nginx", n),
                )
            })
            .filter(|(_, f, m)| {
                f.as_deref() != Some(new_hash.as_str())
                    || !m
                        .as_ref()
                        .is_some_and(|m| m.ready && m.hash.as_deref() == Some(&new_hash))
            })
            .collect();
        if behind.is_empty() {
            Ok(())
        } else {
            Err(format!("behind: {behind:?}"))
        }
    };
    env.wait(
        "the connected nodes upgraded despite errors and dropped watches",
        // A deadline, not a duration: watch backoff after repeated injected errors can reach
        // 30 s, and a busy CI machine runs other tests beside this one.
        Duration::from_secs(180),
        async || converged(&others),
    )
    .await;
    assert_ne!(
        file_hash(&env.manifest(&cut_off, "nginx")).as_deref(),
        Some(new_hash.as_str()),
        "{cut_off} cannot have seen the new template while cut off"
    );
    // The scenario itself: the partition lasts its full length.
    tokio::time::sleep(PARTITION.saturating_sub(partitioned_at.elapsed())).await;
    faults.heal(&cut_off_user);
    env.wait(
        "every node upgraded once the partition healed",
        Duration::from_secs(180),
        async || converged(&env.nodes()),
    )
    .await;
    dropper.abort();
    faults.clear();
    budget_watch.assert_within(2).await;
    env.wait_status("nginx", generation, (6, 6, 6), Duration::from_secs(60))
        .await;
    // After a partition, the cut-off agent's watches reconnect with backoff (up to 30 s, so
    // that a thousand nodes coming back do not reconnect in step): it sees its pod Ready, and
    // releases its slot, within that.
    env.wait_slots_released_within("nginx", Duration::from_secs(60))
        .await;
}

// --- OTA and the node-local API ------------------------------------------------------------

/// An OTA StaticPod of `image`.
fn ota_static_pod(image: &str) -> Value {
    static_pod("nginx", "nginx", json!(1), web(image))
        .as_object()
        .map(|o| {
            let mut o = o.clone();
            o["spec"]["upgradeStrategy"] = json!({"type": "OTA"});
            Value::Object(o)
        })
        .expect("a StaticPod object")
}

/// `PodNeedUpgrade` of the mirror pod of `name` on `node`: its status, if set.
fn need_upgrade(store: &Store, name: &str, node: &str) -> Option<String> {
    let value = store
        .get(
            &ResourceKey::core("pods"),
            Some(NS),
            &format!("{name}-{node}"),
        )
        .ok()?;
    value
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "PodNeedUpgrade")
        .and_then(|c| c["status"].as_str())
        .map(str::to_string)
}

impl Env {
    /// The simulated kubelet's local pod list of `node` (its `/pods`).
    pub(crate) fn kubelet_pods_url(&self, node: &str) -> String {
        self.cluster
            .node(node)
            .unwrap_or_else(|| panic!("no node {node}"))
            .kubelet
            .pods_url()
    }

    /// A client of `node`'s local API (the agent wrote the port it bound into its state dir).
    async fn local_api(&self, node: &str) -> staticpod_puller::ota::client::LocalClient {
        let mut config = staticpod_puller::config::Config::default();
        config.local_api.listen = "127.0.0.1:0".into();
        config.state_dir = self.state_dir(node);
        self.wait(
            &format!("the local API of {node}"),
            Duration::from_secs(20),
            async || {
                let client = staticpod_puller::ota::client::LocalClient::from_config(&config)
                    .map_err(|e| e.to_string())?;
                // Any answer will do: with a token configured it is a 401.
                match client.request("GET", "/healthz").await {
                    Ok(_) => Ok(client),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await
    }

    async fn wait_need_upgrade(&self, node: &str, want: &str) {
        self.wait(
            &format!("PodNeedUpgrade={want} on {node}"),
            Duration::from_secs(20),
            async || match need_upgrade(self.store(), "nginx", node) {
                Some(s) if s == want => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .await;
    }
}

/// Wait until the agent's own pod list (what it decides on) shows `PodNeedUpgrade=True`.
async fn wait_agent_sees_need(
    env: &Env,
    api: &staticpod_puller::ota::client::LocalClient,
    pod: &str,
) {
    env.wait(
        &format!("PodNeedUpgrade=True on {pod} in the agent's pod list"),
        Duration::from_secs(20),
        async || {
            let (_, body) = call(api, "GET", "/pods").await;
            let list: Value = serde_json::from_str(&body).map_err(|e| format!("{body}: {e}"))?;
            let need = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["metadata"]["name"] == pod)
                .flat_map(|p| {
                    p["status"]["conditions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .any(|c| c["type"] == "PodNeedUpgrade" && c["status"] == "True");
            if need { Ok(()) } else { Err(body) }
        },
    )
    .await;
}

/// Wait until `GET .../upgrade` of `pod` reports `phase`; returns the record.
async fn wait_phase(
    env: &Env,
    api: &staticpod_puller::ota::client::LocalClient,
    pod: &str,
    phase: &str,
) -> Value {
    env.wait(
        &format!("the upgrade of {pod} in phase {phase}"),
        Duration::from_secs(20),
        async || {
            let (status, body) = call(api, "GET", &upgrade_path(pod)).await;
            let v: Value =
                serde_json::from_str(&body).map_err(|e| format!("{status} {body}: {e}"))?;
            if v["phase"] == phase {
                Ok(v)
            } else {
                Err(body)
            }
        },
    )
    .await
}

fn upgrade_path(pod: &str) -> String {
    format!("/openyurt.io/v1/namespaces/{NS}/pods/{pod}/upgrade")
}

async fn call(
    client: &staticpod_puller::ota::client::LocalClient,
    method: &str,
    path: &str,
) -> (u16, String) {
    let (status, body) = client
        .request(method, path)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ota_both_nodes_announce_the_upgrade_and_only_the_asked_node_upgrades() {
    let mut env = Env::start(2, Timings::fast()).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    env.create(ota_static_pod(OLD_IMAGE)).await;
    env.start_controller();
    env.start_agents(Settings::patient());
    let nodes = env.nodes();
    for node in &nodes {
        env.wait_need_upgrade(node, "False").await;
    }

    let (_, new_hash) = env.set_image("nginx", NEW_IMAGE).await;
    for node in &nodes {
        env.wait_need_upgrade(node, "True").await;
    }
    // Nothing moves by itself in OTA mode.
    let untouched = stamp(&env.manifest(&nodes[0], "nginx"));
    let (asked, other) = (&nodes[1], &nodes[0]);
    let api = env.local_api(asked).await;
    let pod = format!("nginx-{asked}");
    wait_agent_sees_need(&env, &api, &pod).await;
    let (status, body) = call(&api, "POST", &upgrade_path(&pod)).await;
    assert_eq!(
        (status, body.trim()),
        (200, format!("Start updating pod {NS}/{pod}").as_str())
    );
    env.wait(
        &format!("{asked} on the new image, Ready"),
        Duration::from_secs(20),
        async || match mirror(env.store(), "nginx", asked) {
            Some(m) if m.ready && m.hash.as_deref() == Some(&new_hash) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    env.wait_need_upgrade(asked, "False").await;
    let record = wait_phase(&env, &api, &pod, "succeeded").await;
    assert_eq!(record["toHash"], json!(new_hash));
    assert!(
        record["startedAt"].is_string() && record["finishedAt"].is_string(),
        "{record}"
    );

    env.holds(
        &format!("{other} left alone: old manifest, PodNeedUpgrade=True"),
        Duration::from_secs(2),
        async || {
            let now = stamp(&env.manifest(other, "nginx"));
            let need = need_upgrade(env.store(), "nginx", other);
            if now == untouched && need.as_deref() == Some("True") {
                Ok(())
            } else {
                Err(format!(
                    "{now:?} (was {untouched:?}), PodNeedUpgrade {need:?}"
                ))
            }
        },
    )
    .await;

    // The pod list, as YurtHub serves it, from the agent's cache.
    let (status, body) = call(&api, "GET", "/pods").await;
    let list: Value = serde_json::from_str(&body).expect("a PodList");
    assert_eq!((status, &list["kind"]), (200, &json!("PodList")));
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, vec![pod.as_str()], "only this node's pods");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_api_answers_like_yurthub() {
    const BROKEN: &str = "nginx:never-ready";
    let mut env = Env::start(1, Timings::fast()).await;
    env.cluster.set_broken_image(BROKEN, true);
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let node = env.nodes()[0].clone();
    // A static pod no object manages.
    std::fs::write(
        env.manifest(&node, "other"),
        hand_placed("other", OLD_IMAGE),
    )
    .expect("placing other.yaml");
    env.create(ota_static_pod(OLD_IMAGE)).await;
    env.start_controller();
    env.start_agents(Settings::deadline(Duration::from_secs(3)));
    env.wait_need_upgrade(&node, "False").await;
    let api = env.local_api(&node).await;
    let pod = format!("nginx-{node}");

    // Current: nothing to upgrade.
    let (status, body) = call(&api, "POST", &upgrade_path(&pod)).await;
    assert_eq!(status, 403, "current pod: {body}");
    assert!(body.contains("already at"), "{body}");
    // Not managed by any object.
    env.wait(
        "the mirror pod of other.yaml in the agent's pod list",
        Duration::from_secs(20),
        async || {
            let (_, body) = call(&api, "GET", "/pods").await;
            if body.contains(&format!("\"other-{node}\"")) {
                Ok(())
            } else {
                Err(body)
            }
        },
    )
    .await;
    let (status, body) = call(&api, "POST", &upgrade_path(&format!("other-{node}"))).await;
    assert_eq!(status, 403, "non-member pod: {body}");
    assert!(body.contains("not managed"), "{body}");
    // Managed, but by a rolling (not OTA) object.
    std::fs::write(env.manifest(&node, "web"), hand_placed("web", OLD_IMAGE))
        .expect("placing web.yaml");
    env.create(static_pod("web", "web", json!(1), web(OLD_IMAGE)))
        .await;
    env.wait(
        "the agent to know StaticPod web and its pod",
        Duration::from_secs(20),
        async || match call(&api, "POST", &upgrade_path(&format!("web-{node}"))).await {
            (403, body) if body.contains("not OTA-managed") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let (status, body) = call(&api, "GET", "/readyz").await;
    assert_eq!(
        (status, body.trim()),
        (200, "ok"),
        "readyz once the agent has run a pass"
    );
    // Unknown pod.
    let (status, body) = call(&api, "POST", &upgrade_path("nothing-here")).await;
    assert_eq!(status, 404, "unknown pod: {body}");
    // Wrong method, malformed paths.
    let (status, _) = call(&api, "DELETE", &upgrade_path(&pod)).await;
    assert_eq!(status, 405, "DELETE on the upgrade path");
    let (status, _) = call(&api, "POST", "/pods").await;
    assert_eq!(status, 405, "POST /pods");
    for bad in [
        format!("/openyurt.io/v1/namespaces/{NS}/pods/{pod}"),
        format!("/openyurt.io/v1/namespaces/{NS}/pods/Not_A_Name/upgrade"),
        format!("/openyurt.io/v1/namespaces/{NS}/pods/{pod}/upgrade/again"),
    ] {
        let (status, body) = call(&api, "POST", &bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // Oversized request target: refused, nothing started.
    let long = format!("{}?{}", upgrade_path(&pod), "x".repeat(4096));
    let (status, _) = call(&api, "POST", &long).await;
    assert_eq!(status, 414, "an oversized path");

    // Oversized body: refused before anything is read or started.
    let address = std::fs::read_to_string(env.state_dir(&node).join("local-api.addr"))
        .expect("the bound address");
    let mut stream = tokio::net::TcpStream::connect(address.trim())
        .await
        .expect("connecting to the local API");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1048576\r\n\r\n{}",
        upgrade_path(&pod),
        "x".repeat(8192)
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = vec![0u8; 64];
    let n = stream.read(&mut answer).await.expect("an answer");
    let status_line = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(
        status_line.starts_with("HTTP/1.1 413"),
        "an oversized body: {status_line}"
    );

    // An upgrade whose image never becomes Ready: 200, a concurrent POST is 409, then it is
    // rolled back and the state says so.
    let (_, broken_hash) = env.set_image("nginx", BROKEN).await;
    env.wait_need_upgrade(&node, "True").await;
    wait_agent_sees_need(&env, &api, &pod).await;
    let (status, body) = call(&api, "POST", &upgrade_path(&pod)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(&api, "POST", &upgrade_path(&pod)).await;
    assert_eq!(status, 409, "a second POST while upgrading: {body}");
    let record = wait_phase(&env, &api, &pod, "rolled-back").await;
    assert_eq!(record["toHash"], json!(broken_hash));
    assert!(
        record["message"]
            .as_str()
            .is_some_and(|m| m.contains("not Ready")),
        "{record}"
    );
    let (status, body) = call(&api, "POST", &upgrade_path(&pod)).await;
    assert_eq!(
        status, 403,
        "a rolled-back hash is not offered again: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_api_needs_a_token_off_loopback_and_checks_it() {
    let env = Env::start(1, Timings::fast()).await;
    let node = env.nodes()[0].clone();
    let config = env.write_config_with(
        &node,
        Settings::patient(),
        "open",
        "localApi:\n  listen: 0.0.0.0:0\n",
    );
    let out = std::process::Command::new(support::binary())
        .arg("--config")
        .arg(&config)
        .arg("run")
        .output()
        .expect("running the agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("localApi.tokenFile"),
        "a non-loopback listen without a token must refuse to start; got {:?}: {stderr}",
        out.status
    );

    let token_file = env.dir.path().join("local-api.token");
    std::fs::write(&token_file, "s3cret\n").expect("writing the token file");
    let config = env.write_config_with(
        &node,
        Settings::patient(),
        "token",
        &format!(
            "localApi:\n  listen: 127.0.0.1:0\n  tokenFile: {}\n",
            token_file.display()
        ),
    );
    let mut agent = AgentProc {
        child: Command::new(support::binary())
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning the agent"),
    };
    let anonymous = env.local_api(&node).await;
    let (status, _) = call(&anonymous, "GET", "/pods").await;
    assert_eq!(status, 401, "no token");
    let mut with_token = staticpod_puller::config::Config::default();
    with_token.local_api.listen = "127.0.0.1:0".into();
    with_token.local_api.token_file = Some(token_file.clone());
    with_token.state_dir = env.state_dir(&node);
    let client = staticpod_puller::ota::client::LocalClient::from_config(&with_token)
        .expect("a client with the token");
    let (status, body) = call(&client, "GET", "/pods").await;
    assert_eq!(status, 200, "with the token: {body}");
    agent.kill9();
}

#[test]
fn demo_strategy_ota_upgrades_only_the_node_asked_through_its_local_api() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = Command::new(support::binary())
        .args(["--log-level", "warn", "demo", "--strategy", "ota", "--dir"])
        .arg(dir.path())
        .output()
        .expect("running the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo --strategy ota failed: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "every node announces PodNeedUpgrade=True",
        "curl -X POST http://127.0.0.1:",
        "/openyurt.io/v1/namespaces/default/pods/nginx-edge-node-2/upgrade",
        "200 Start updating pod default/nginx-edge-node-2",
        "== OTA: only edge-node-2 runs nginx:1.19.2",
    ] {
        assert!(
            stdout.contains(expected),
            "expected {expected:?} in:\n{stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ota_upgrades_offline_reading_readiness_from_kubelets_pod_list() {
    let mut env = Env::start(1, Timings::fast()).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    env.create(ota_static_pod(OLD_IMAGE)).await;
    env.start_controller();
    let node = env.nodes()[0].clone();
    let kubelet_pods = env.kubelet_pods_url(&node);
    let config = env.write_config_with(
        &node,
        Settings::patient(),
        "offline",
        &format!("localApi:\n  listen: 127.0.0.1:0\nota:\n  kubeletPodsUrl: {kubelet_pods}\n"),
    );
    let agent = env.spawn_agent_with(&node, &config);
    env.agents.insert(node.clone(), agent);
    let (_, new_hash) = env.set_image("nginx", NEW_IMAGE).await;
    env.wait_need_upgrade(&node, "True").await;
    let api = env.local_api(&node).await;
    let pod = format!("nginx-{node}");
    wait_agent_sees_need(&env, &api, &pod).await;

    // The API server is cut off from this node's agent: the upgrade runs from the cached
    // desired state, and readiness comes from kubelet.
    let faults = env.cluster.api().faults().clone();
    let user = staticpod_puller::sim::cluster::agent_user(&node);
    faults.partition(&user);
    let (status, body) = call(&api, "POST", &upgrade_path(&pod)).await;
    assert_eq!(status, 200, "offline upgrade request: {body}");
    let record = wait_phase(&env, &api, &pod, "succeeded").await;
    assert!(
        record["message"]
            .as_str()
            .is_some_and(|m| m.contains("offline")),
        "the state says it ran offline: {record}"
    );
    assert_eq!(
        file_hash(&env.manifest(&node, "nginx")).as_deref(),
        Some(new_hash.as_str())
    );
    // GET /pods still answers, from the agent's cache.
    let (status, _) = call(&api, "GET", "/pods").await;
    assert_eq!(status, 200, "GET /pods while the API server is unreachable");
    faults.heal(&user);
    env.wait_need_upgrade(&node, "False").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_need_upgrade_is_set_again_when_kubelet_recreates_the_mirror_pod() {
    let mut env = Env::start(1, Timings::fast()).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    env.create(ota_static_pod(OLD_IMAGE)).await;
    env.start_controller();
    env.start_agents(Settings::patient());
    let node = env.nodes()[0].clone();
    env.set_image("nginx", NEW_IMAGE).await;
    env.wait_need_upgrade(&node, "True").await;

    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), NS);
    let name = format!("nginx-{node}");
    let old_uid = pods.get(&name).await.expect("the mirror pod").metadata.uid;
    pods.delete(&name, &Default::default())
        .await
        .expect("deleting the mirror pod");
    env.wait(
        "kubelet's new mirror pod with PodNeedUpgrade=True again",
        Duration::from_secs(20),
        async || {
            let pod = pods.get(&name).await.map_err(|e| e.to_string())?;
            let need = need_upgrade(env.store(), "nginx", &node);
            if pod.metadata.uid != old_uid && need.as_deref() == Some("True") {
                Ok(())
            } else {
                Err(format!(
                    "uid {:?}, PodNeedUpgrade {need:?}",
                    pod.metadata.uid
                ))
            }
        },
    )
    .await;
}

/// `GET /metrics` of the agent whose state directory is `state_dir`: the whole HTTP response.
pub(crate) async fn get_metrics(state_dir: &Path) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = std::fs::read_to_string(state_dir.join("metrics.addr")).expect("metrics.addr");
    let mut stream = tokio::net::TcpStream::connect(address.trim())
        .await
        .expect("connecting to the metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .expect("sending the scrape");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("reading the scrape");
    response
}

/// `GET /metrics` from the agent whose state directory is `state_dir`; every sample line is
/// checked to be `name{labels} value` as the text exposition format says.
async fn scrape(state_dir: &Path) -> String {
    let response = get_metrics(state_dir).await;
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        assert!(value.parse::<f64>().is_ok(), "a numeric value: {line}");
        let name = series.split('{').next().unwrap_or_default();
        // A summary's samples are `<family>_sum` and `<family>_count`.
        let family = name
            .strip_suffix("_sum")
            .or_else(|| name.strip_suffix("_count"))
            .filter(|f| body.contains(&format!("# TYPE {f} summary")))
            .unwrap_or(name);
        assert!(
            name.starts_with("staticpod_puller_")
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "a metric name: {line}"
        );
        assert!(
            body.contains(&format!("# TYPE {family} ")),
            "every metric has a TYPE: {line}"
        );
    }
    body.to_string()
}

/// `staticpod-puller --config <config> <args>`; (exit success, stdout, stderr).
async fn cli(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(support::binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .await
        .expect("running the CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_and_upgrade_wait_talk_to_the_agent_over_a_unix_socket() {
    const BROKEN: &str = "nginx:never-ready";
    let mut env = Env::start(1, Timings::fast()).await;
    env.cluster.set_broken_image(BROKEN, true);
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    env.create(ota_static_pod(OLD_IMAGE)).await;
    env.start_controller();
    let node = env.nodes()[0].clone();
    let socket = env.dir.path().join("local-api.sock");
    let config = env.write_config_with(
        &node,
        Settings::deadline(Duration::from_secs(3)),
        "socket",
        &format!("localApi:\n  listen: {}\n", socket.display()),
    );
    let agent = env.spawn_agent_with(&node, &config);
    env.agents.insert(node.clone(), agent);
    let pod = format!("nginx-{node}");

    for (image, outcome) in [(NEW_IMAGE, "succeeded"), (BROKEN, "rolled-back")] {
        let (_, hash) = env.set_image("nginx", image).await;
        let table = env
            .wait(
                "`pods` showing the upgrade available",
                Duration::from_secs(20),
                async || {
                    let (ok, out, err) = cli(&config, &["pods"]).await;
                    let row = out.lines().find(|l| l.contains(&pod)).unwrap_or_default();
                    if ok && row.ends_with("True") {
                        Ok(out)
                    } else {
                        Err(format!("{out}{err}"))
                    }
                },
            )
            .await;
        assert!(
            table.starts_with("NAMESPACE") && table.contains("NEED-UPGRADE"),
            "{table}"
        );
        let (ok, out, err) = cli(&config, &["upgrade", &format!("{NS}/{pod}"), "--wait"]).await;
        assert!(
            out.contains(&format!("Start updating pod {NS}/{pod}")) && out.contains(outcome),
            "upgrade --wait to {image}: {out}{err}"
        );
        assert_eq!(
            ok,
            outcome == "succeeded",
            "exit status of upgrade --wait ending {outcome}: {out}{err}"
        );
        if outcome == "succeeded" {
            assert_eq!(
                file_hash(&env.manifest(&node, "nginx")).as_deref(),
                Some(hash.as_str())
            );
        }
    }
    // Prometheus metrics: parseable, and counting what happened.
    let metrics = scrape(&env.state_dir(&node)).await;
    for expected in [
        "# TYPE staticpod_puller_upgrades_total counter",
        "staticpod_puller_upgrades_total{object=\"StaticPod default/nginx\",result=\"succeeded\"} 1",
        "staticpod_puller_upgrades_total{object=\"StaticPod default/nginx\",result=\"rolled_back\"} 1",
        "staticpod_puller_api_server_reachable 1",
        "phase=\"rolled-back\"",
    ] {
        assert!(
            metrics.contains(expected),
            "expected {expected:?} in:\n{metrics}"
        );
    }

    // `status` says what the agent believes: the hash rolled back, and why.
    let (ok, out, err) = cli(&config, &["status"]).await;
    let row = out
        .lines()
        .find(|l| l.starts_with("StaticPod default/nginx"))
        .unwrap_or_default();
    assert!(
        ok && out.contains(&format!("node {node} (API server reachable)"))
            && row.contains("OTA")
            && row.contains("rolled-back")
            && row.contains("not Ready")
            && out.contains("slots held: none"),
        "status after a rollback: {out}{err}"
    );
    let (ok, _, err) = cli(&config, &["upgrade", "no-slash-here"]).await;
    assert!(
        !ok && err.contains("expected NAMESPACE/PODNAME"),
        "a malformed argument: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_manifest_is_reported_and_the_node_leaves_membership() {
    let (env, node, _, _) = upgraded_pair().await;
    let file = env.manifest(&node, "nginx");
    std::fs::remove_file(&file).expect("removing the managed manifest");
    let message = env.wait_event("DriftDetected", "removed on the node").await;
    assert!(
        message.contains(&node),
        "the event names the node: {message}"
    );
    // The agent never creates a member's file: the node is simply no longer a member.
    env.holds(
        "the removed manifest stays removed",
        Duration::from_secs(2),
        async || {
            if file.exists() {
                Err("recreated".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await;
    let api = env.static_pods();
    env.wait(
        "the status counting one member",
        Duration::from_secs(20),
        async || {
            let sp = api.get("nginx").await.map_err(|e| e.to_string())?;
            match sp.status.map(|s| s.total_number) {
                Some(1) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

// --- Bundles dropped on the node -----------------------------------------------------------

/// The items of a bundle: the nginx StaticPod (rolling update) at `image`.
pub(crate) fn bundle_items(image: &str) -> String {
    format!(
        "\
apiVersion: apps.openyurt.io/v1alpha1
kind: StaticPod
metadata:
  name: nginx
  namespace: {NS}
spec:
  staticPodManifest: nginx
  upgradeStrategy:
    type: AdvancedRollingUpdate
  template:
    metadata:
      name: nginx
    spec:
      containers:
      - name: web
        image: {image}
"
    )
}

/// Run the CLI in `dir`; assert it succeeded; its standard output.
fn cli_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, stdout, stderr) = support::run_in(dir, args);
    assert!(ok, "{args:?}: {stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_bundle_is_verified_applied_once_and_bad_ones_are_rejected_with_a_reason() {
    let mut env = Env::start(1, Timings::fast()).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let node = env.nodes()[0].clone();
    let d = env.dir.path().to_path_buf();
    let bin = |args: &[&str]| cli_ok(&d, args);
    bin(&["bundle", "keygen", "--out", "ops"]);
    bin(&["bundle", "keygen", "--out", "stranger"]);
    let items = bundle_items(NEW_IMAGE);
    std::fs::write(d.join("items.yaml"), &items).expect("writing items");
    bin(&[
        "bundle",
        "sign",
        "--key",
        "ops.key",
        "--sequence",
        "5",
        "--node",
        &node,
        "items.yaml",
        "-o",
        "good.bundle",
    ]);
    bin(&[
        "bundle",
        "sign",
        "--key",
        "stranger.key",
        "--sequence",
        "6",
        "items.yaml",
        "-o",
        "forged.bundle",
    ]);
    let drop_dir = d.join("drop");
    let kubelet_pods = env.kubelet_pods_url(&node);
    let config = env.write_config_with(
        &node,
        Settings::patient(),
        "bundles",
        &format!(
            "localApi:\n  listen: 127.0.0.1:0\nota:\n  kubeletPodsUrl: {kubelet_pods}\nbundle:\n  dropDir: {}\ntrust:\n  trustedKeys: [{}]\n",
            drop_dir.display(),
            d.join("ops.pub").display()
        ),
    );
    let agent = env.spawn_agent_with(&node, &config);
    env.agents.insert(node.clone(), agent);
    let sp: StaticPod = serde_saphyr::from_str(&items).expect("the items");
    let new_hash = template_hash(&sp.spec.template);

    // Copied under a dot name, then renamed into place: read once complete.
    env.wait("the drop directory", Duration::from_secs(20), async || {
        if drop_dir.join("processed").is_dir() {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    std::fs::copy(d.join("good.bundle"), drop_dir.join(".good.bundle.part")).expect("copying");
    std::fs::rename(
        drop_dir.join(".good.bundle.part"),
        drop_dir.join("good.bundle"),
    )
    .expect("renaming into place");
    env.wait(
        "the dropped bundle applied and moved to processed/",
        Duration::from_secs(30),
        async || {
            let processed = drop_dir.join("processed/good.bundle").exists();
            match mirror(env.store(), "nginx", &node) {
                Some(m) if processed && m.ready && m.hash.as_deref() == Some(&new_hash) => Ok(()),
                other => Err(format!("processed {processed}, mirror {other:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        file_hash(&env.manifest(&node, "nginx")).as_deref(),
        Some(new_hash.as_str())
    );

    // The same bundle again (replay), and one signed by an untrusted key.
    std::fs::copy(d.join("good.bundle"), drop_dir.join("again.bundle")).expect("copying");
    std::fs::copy(d.join("forged.bundle"), drop_dir.join("forged.bundle")).expect("copying");
    for (name, reason) in [("again.bundle", "replayed"), ("forged.bundle", "")] {
        let reason_file = drop_dir.join(format!("rejected/{name}.reason"));
        let text = env
            .wait(
                &format!("{name} rejected with a reason"),
                Duration::from_secs(20),
                async || std::fs::read_to_string(&reason_file).map_err(|e| e.to_string()),
            )
            .await;
        assert!(
            drop_dir.join("rejected").join(name).exists() && text.contains(reason),
            "{name}: {text}"
        );
        if name == "forged.bundle" {
            assert!(
                text.starts_with("bad_signature") || text.starts_with("threshold"),
                "an untrusted signer: {text}"
            );
        } else {
            assert!(text.contains("sequence 5"), "the replay says why: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_signed_templates_required_only_a_validly_signed_object_is_acted_on() {
    let mut env = Env::start(1, Timings::fast()).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let node = env.nodes()[0].clone();
    let d = env.dir.path().to_path_buf();
    let cli_ok = |args: &[&str]| cli_ok(&d, args);
    cli_ok(&["bundle", "keygen", "--out", "ops"]);
    let config = env.write_config_with(
        &node,
        Settings::patient(),
        "signed",
        &format!(
            "localApi:\n  listen: 127.0.0.1:0\ntrust:\n  trustedKeys: [{}]\n  requireSignedTemplates: true\n",
            d.join("ops.pub").display()
        ),
    );
    let agent = env.spawn_agent_with(&node, &config);
    env.agents.insert(node.clone(), agent);
    let file = env.manifest(&node, "nginx");
    let before = stamp(&file);

    // Unsigned: refused, nothing written.
    let object = static_pod("nginx", "nginx", json!(1), web(NEW_IMAGE));
    let (_, new_hash) = env.create(object.clone()).await;
    let message = env.wait_event("Refused", "not signed").await;
    assert!(message.contains(&node), "{message}");
    assert_eq!(stamp(&file), before, "an unsigned object writes nothing");

    // Signed with `bundle sign-object` and applied: acted on.
    std::fs::write(d.join("object.yaml"), object.to_string()).expect("writing the object");
    let signed = cli_ok(&["bundle", "sign-object", "--key", "ops.key", "object.yaml"]);
    let signed: StaticPod = serde_saphyr::from_str(&signed).expect("the signed object");
    let annotations = json!({"metadata": {"annotations": signed.metadata.annotations}});
    env.static_pods()
        .patch(
            "nginx",
            &PatchParams::default(),
            &Patch::Merge(&annotations),
        )
        .await
        .expect("annotating the object");
    env.wait(
        "the signed template written",
        Duration::from_secs(20),
        async || match file_hash(&file) {
            Some(h) if h == new_hash => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;

    // The template changed without a new signature: refused again, the file stays.
    env.set_image("nginx", FIXED_IMAGE).await;
    env.wait_event("Refused", "template was changed").await;
    assert_eq!(file_hash(&file).as_deref(), Some(new_hash.as_str()));
}

#[test]
fn demo_plays_the_seed_scenario_and_the_rollback() {
    for (args, expected) in [
        (&["demo"][..], "== rollout complete: 3/3/3 on nginx:1.19.2"),
        (
            &["demo", "--bad-image", "--progress-deadline", "2s"][..],
            "== every node rolled back to nginx:1.19.1",
        ),
    ] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let out = Command::new(support::binary())
            .args(["--log-level", "warn"])
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .output()
            .expect("running the demo");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(expected),
            "{args:?}: expected {expected:?}; {:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
