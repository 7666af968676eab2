//! One test's world: a dev cluster with the CRDs and RBAC, its status controller, and the
//! agent processes of its nodes, with the waits and the API calls the tests make on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use staticpod_puller::config::HumanDuration;
use staticpod_puller::desired::{Kind, ObjectKey};
use staticpod_puller::manifest::template_hash;
use staticpod_puller::resources::StaticPod;
use staticpod_puller::rollout::grant::{Grant, OBJECT_LABEL, object_label};
use staticpod_puller::sim::cluster::{DevCluster, DevClusterOptions};
use staticpod_puller::sim::kubelet::Timings;
use staticpod_puller::sim::resource::ResourceKey;
use staticpod_puller::sim::store::{Store, Subresource};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::watch::{Mirror, mirror};
use super::{NS, SAMPLE, hand_placed};
use crate::support;

/// The agents' rollout settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(super) progress_deadline: Duration,
    pub(super) lease_duration: Duration,
    /// `drift.mode`: `restore` or `report`.
    pub(super) drift: &'static str,
}

impl Settings {
    /// For upgrades expected to succeed: a deadline no busy CI machine reaches.
    pub(super) fn patient() -> Self {
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
    pub(super) child: Child,
}

impl AgentProc {
    /// `kill -9`, and reap it.
    pub(super) fn kill9(&mut self) -> ExitStatus {
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

/// One test's world: a dev cluster with the CRDs and RBAC, its controller, and agents.
pub(crate) struct Env {
    pub(crate) cluster: DevCluster,
    pub(crate) admin: kube::Client,
    pub(crate) dir: tempfile::TempDir,
    pub(super) agents: BTreeMap<String, AgentProc>,
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
    /// The simulated kubelet's local pod list of `node` (its `/pods`).
    pub(crate) fn kubelet_pods_url(&self, node: &str) -> String {
        self.cluster
            .node(node)
            .unwrap_or_else(|| panic!("no node {node}"))
            .kubelet
            .pods_url()
            .expect("the nodes serve /pods")
    }

    pub(crate) async fn start(nodes: usize, timings: Timings) -> Env {
        Env::start_pulling(nodes, timings, Duration::ZERO).await
    }

    /// As [`Env::start`], with each node's runtime taking `pull_delay` to pull an image (the
    /// seed's old image is on every node already).
    pub(crate) async fn start_pulling(nodes: usize, timings: Timings, pull_delay: Duration) -> Env {
        // What the in-process controller logs goes to the test's captured output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("staticpod_puller::controller=debug")
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut options = DevClusterOptions::new(dir.path(), nodes);
        options.timings = timings;
        options.pull_delay = pull_delay;
        options.preloaded = vec![super::OLD_IMAGE.to_string()];
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

    pub(super) fn manifest_dir(&self, node: &str) -> PathBuf {
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
    pub(super) async fn hand_place_everywhere(&self, name: &str, image: &str) {
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
    pub(super) fn all_mirrors(
        &self,
        name: &str,
        ok: impl Fn(&Mirror) -> bool,
    ) -> Result<(), String> {
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

    /// Start the controller (once: it hands out the grants rolling upgrades wait for).
    pub(crate) fn start_controller(&mut self) {
        self.start_controller_granting(Duration::from_secs(3));
    }

    /// Start the controller, its grants lasting `grant_duration` unless renewed.
    pub(super) fn start_controller_granting(&mut self, grant_duration: Duration) {
        if self.controller.is_some() {
            return;
        }
        let client = self.admin.clone();
        self.controller = Some(tokio::spawn(async move {
            staticpod_puller::controller::run(
                client,
                "staticpod-system",
                "test-controller",
                grant_duration,
            )
            .await;
        }));
    }

    /// Write a node's agent configuration file (the keys of packaging/config.yaml).
    pub(super) fn write_config(&self, node: &str, settings: Settings, tag: &str) -> PathBuf {
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
            "nodeName: {}\nkubeconfig: {}\nmanifestDir: {}\nstateDir: {}\nrollout:\n  progressDeadline: {}\n  leaseDuration: {}\ndrift:\n  mode: {}\nmetrics:\n  listen: 127.0.0.1:0\ncri:\n  endpoint: {}\n{}log:\n  level: info\n",
            n.name,
            n.agent_kubeconfig.display(),
            n.manifest_dir.display(),
            n.state_dir.display(),
            HumanDuration(settings.progress_deadline),
            HumanDuration(settings.lease_duration),
            settings.drift,
            n.kubelet.cri_endpoint().expect("the nodes serve the CRI"),
            sections,
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    pub(super) fn log_path(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.agent.log"))
    }

    /// What `node`'s agent has logged so far (empty before it starts).
    pub(crate) fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.log_path(node)).unwrap_or_default()
    }

    /// Spawn `staticpod-puller --config <file> run` for a node (stderr appended to its log).
    pub(super) fn spawn_agent(&self, node: &str, settings: Settings) -> AgentProc {
        let config = self.write_config(node, settings, "run");
        self.spawn_agent_with(node, &config)
    }

    /// Spawn `staticpod-puller --config <config> run` for a node.
    pub(crate) fn spawn_agent_with(&self, node: &str, config: &Path) -> AgentProc {
        self.spawn_agent_env(node, config, &[])
    }

    /// As [`Env::spawn_agent_with`], with `vars` set in the agent's environment.
    pub(super) fn spawn_agent_env(
        &self,
        node: &str,
        config: &Path,
        vars: &[(&str, &str)],
    ) -> AgentProc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(node))
            .expect("the agent log file");
        let child = Command::new(support::binary())
            .arg("--config")
            .arg(config)
            .arg("run")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the agent of {node}: {e}"));
        AgentProc { child }
    }

    pub(super) fn start_agent(&mut self, node: &str, settings: Settings) {
        let agent = self.spawn_agent(node, settings);
        self.agents.insert(node.to_string(), agent);
    }

    pub(super) fn start_agents(&mut self, settings: Settings) {
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

    pub(super) fn static_pods(&self) -> Api<StaticPod> {
        Api::namespaced(self.admin.clone(), NS)
    }

    /// Serve the kinds from CRDs without validation rules, as a cluster with OpenYurt's own
    /// CRDs (or this project's from before the rules) does: malformed objects then reach the
    /// agents, which must refuse them themselves.
    pub(crate) fn drop_crd_rules(&self) {
        fn strip(v: &mut Value) {
            match v {
                Value::Object(fields) => {
                    fields.remove("x-kubernetes-validations");
                    fields.values_mut().for_each(strip);
                }
                Value::Array(items) => items.iter_mut().for_each(strip),
                _ => {}
            }
        }
        for crd in staticpod_puller::resources::crds() {
            let mut crd = serde_json::to_value(&crd).expect("a CRD serializes");
            strip(&mut crd);
            let name = crd["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            self.store()
                .update(
                    &ResourceKey::crds(),
                    None,
                    &name,
                    crd,
                    Subresource::Main,
                    &(),
                )
                .unwrap_or_else(|e| panic!("replacing CRD {name}: {e}"));
        }
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
    pub(super) async fn wait_status(
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

    /// The grant Leases of StaticPod `name` (the controller's own Lease is not one).
    pub(super) async fn grant_leases(&self, name: &str) -> Result<Vec<Lease>, String> {
        let api: Api<Lease> = Api::namespaced(self.admin.clone(), "staticpod-system");
        let key = ObjectKey {
            kind: Kind::StaticPod,
            namespace: NS.to_string(),
            name: name.to_string(),
        };
        let selector = format!("{OBJECT_LABEL}={}", object_label(&key));
        Ok(api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| e.to_string())?
            .items)
    }

    /// Wait until no node holds a grant of `name` (finished grants are deleted by the
    /// controller; a rolled-back one stays as the record of the failure).
    pub(super) async fn wait_grants_finished(&self, name: &str) {
        self.wait_grants_finished_within(name, Duration::from_secs(10))
            .await
    }

    pub(super) async fn wait_grants_finished_within(&self, name: &str, timeout: Duration) {
        self.wait(&format!("no grant of {name} held"), timeout, async || {
            let held: Vec<String> = self
                .grant_leases(name)
                .await?
                .iter()
                .filter(|l| Grant::from_lease(l).is_some_and(|g| g.open))
                .filter_map(|l| l.metadata.name.clone())
                .collect();
            if held.is_empty() {
                Ok(())
            } else {
                Err(format!("grants held: {held:?}"))
            }
        })
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
    pub(super) async fn wait_event(&self, reason: &str, text: &str) -> String {
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
    pub(super) async fn wait_agents_saw(&self, hash: &str) {
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
    pub(super) async fn sync_once(
        &self,
        node: &str,
        settings: Settings,
        extra: &[&str],
    ) -> Outcome {
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
pub(super) struct Outcome {
    pub(super) status: ExitStatus,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

pub(super) async fn run_to_end(mut cmd: tokio::process::Command, timeout: Duration) -> Outcome {
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
