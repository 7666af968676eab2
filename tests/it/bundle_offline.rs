//! End to end: bundles fetched over HTTP and who is authoritative. Two nodes' agents poll the
//! same bundle URL (served by this test); the cluster defines the same object. The node cut
//! off from the API server applies the bundle once `bundle.offlineAfter` has passed, the
//! connected one holds it back; a bundle by an untrusted signer changes nothing; and when the
//! partition heals the cluster's template is reconciled back with a `BundleSuperseded` Event.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use staticpod_puller::bundle::{self, PrivateKey};
use staticpod_puller::controller::status::{pod_hash, pod_ready};
use staticpod_puller::manifest::{hash_of_manifest, template_hash};
use staticpod_puller::resources::StaticPod;
use staticpod_puller::sim::cluster::{DevCluster, DevClusterOptions, agent_user};
use staticpod_puller::sim::kubelet::Timings;
use staticpod_puller::sim::resource::ResourceKey;
use tokio::time::Instant;

use crate::support;

const NS: &str = "default";
const OLD_IMAGE: &str = "nginx:1.19.1";
const NEW_IMAGE: &str = "nginx:1.19.2";
const FORGED_IMAGE: &str = "nginx:forged";
/// Short, so the test sees the authority rule switch.
const OFFLINE_AFTER: &str = "2s";
const LONG: Duration = Duration::from_secs(60);

fn items(image: &str) -> String {
    format!(
        "apiVersion: apps.openyurt.io/v1alpha1\nkind: StaticPod\nmetadata:\n  name: nginx\n  namespace: {NS}\nspec:\n  staticPodManifest: nginx\n  upgradeStrategy:\n    type: AdvancedRollingUpdate\n  template:\n    metadata:\n      name: nginx\n    spec:\n      containers:\n      - name: web\n        image: {image}\n"
    )
}

/// The bundle file an HTTP server serves: whatever the test puts there, with an ETag.
#[derive(Clone, Default)]
struct Served(Arc<Mutex<Vec<u8>>>);

impl Served {
    fn set(&self, body: Vec<u8>) {
        *self.0.lock().expect("the served body") = body;
    }

    fn etag(body: &[u8]) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, body);
        let hex: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("\"{hex}\"")
    }

    /// Serve on a loopback port; the bundle's URL.
    async fn serve(&self) -> String {
        let served = self.clone();
        let app = Router::new().route(
            "/edge.bundle",
            get(move |headers: HeaderMap| {
                let body = served.0.lock().expect("the served body").clone();
                async move {
                    let etag = Served::etag(&body);
                    if headers
                        .get(header::IF_NONE_MATCH)
                        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
                    {
                        return StatusCode::NOT_MODIFIED.into_response();
                    }
                    ([(header::ETAG, etag)], body).into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the bundle server");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}/edge.bundle")
    }
}

/// An agent process, killed when dropped.
struct AgentProc(Child);

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct World {
    cluster: DevCluster,
    admin: kube::Client,
    dir: tempfile::TempDir,
}

impl World {
    async fn start(nodes: usize) -> World {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut options = DevClusterOptions::new(dir.path(), nodes);
        options.timings = Timings::fast();
        let cluster = DevCluster::start(options)
            .await
            .expect("the dev cluster starts");
        let objects = staticpod_puller::demo::bootstrap_objects().expect("the bootstrap objects");
        cluster
            .apply(&objects)
            .expect("CRDs, namespace and agent RBAC applied");
        let admin = cluster.admin_client().await.expect("an admin client");
        World {
            cluster,
            admin,
            dir,
        }
    }

    fn nodes(&self) -> Vec<String> {
        self.cluster
            .nodes()
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    fn manifest(&self, node: &str) -> PathBuf {
        self.cluster
            .node(node)
            .unwrap_or_else(|| panic!("no node {node}"))
            .manifest_dir
            .join("nginx.yaml")
    }

    fn state_dir(&self, node: &str) -> PathBuf {
        self.cluster
            .node(node)
            .unwrap_or_else(|| panic!("no node {node}"))
            .state_dir
            .clone()
    }

    fn log_path(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.agent.log"))
    }

    fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.log_path(node)).unwrap_or_default()
    }

    /// The last lines of every agent's log, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for node in self.nodes() {
            let text = self.log(&node);
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- agent of {node} (last lines)\n"));
            for line in &lines[lines.len().saturating_sub(20)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Poll `check` until Ok or the deadline; the panic says what was awaited and seen.
    async fn wait<T>(
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

    /// The mirror pod of nginx on `node`: (hash, Ready).
    fn mirror(&self, node: &str) -> Option<(Option<String>, bool)> {
        let value = self
            .cluster
            .store()
            .get(
                &ResourceKey::core("pods"),
                Some(NS),
                &format!("nginx-{node}"),
            )
            .ok()?;
        let pod: Pod = serde_json::from_value((*value).clone()).ok()?;
        Some((pod_hash(&pod).map(str::to_string), pod_ready(&pod)))
    }

    /// Wait until `node` runs nginx at `hash` (file and Ready mirror pod).
    async fn wait_running(&self, node: &str, hash: &str, why: &str) {
        self.wait(
            &format!("{node} running nginx at {hash} ({why})"),
            LONG,
            async || {
                let file = file_hash(&self.manifest(node));
                match self.mirror(node) {
                    Some((Some(h), true)) if h == hash && file.as_deref() == Some(hash) => Ok(()),
                    other => Err(format!("file {file:?}, mirror {other:?}")),
                }
            },
        )
        .await;
    }

    /// The agent configuration of `node`: the bundle URL, trusted keys, a short offlineAfter.
    fn write_config(&self, node: &str, url: &str, trusted: &Path) -> PathBuf {
        let n = self
            .cluster
            .node(node)
            .unwrap_or_else(|| panic!("no node {node}"));
        let path = self.dir.path().join(format!("{node}.yaml"));
        let text = format!(
            "nodeName: {}\nkubeconfig: {}\nmanifestDir: {}\nstateDir: {}\nrollout:\n  progressDeadline: 60s\n  leaseDuration: 3s\nlocalApi:\n  listen: 127.0.0.1:0\nmetrics:\n  listen: 127.0.0.1:0\nota:\n  kubeletPodsUrl: {}\nbundle:\n  urls: [{url}]\n  pollInterval: 500ms\n  offlineAfter: {OFFLINE_AFTER}\ntrust:\n  trustedKeys: [{}]\nlog:\n  level: info\n",
            n.name,
            n.agent_kubeconfig.display(),
            n.manifest_dir.display(),
            n.state_dir.display(),
            n.kubelet.pods_url(),
            trusted.display(),
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    fn spawn_agent(&self, node: &str, config: &Path) -> AgentProc {
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
        AgentProc(child)
    }

    /// Wait until `node`'s log has a line containing every one of `texts`.
    async fn wait_log(&self, node: &str, texts: &[&str]) {
        self.wait(
            &format!("a log line of {node}'s agent saying {texts:?}"),
            LONG,
            async || {
                if self
                    .log(node)
                    .lines()
                    .any(|l| texts.iter().all(|t| l.contains(t)))
                {
                    Ok(())
                } else {
                    Err("not yet".to_string())
                }
            },
        )
        .await;
    }
}

fn file_hash(path: &Path) -> Option<String> {
    hash_of_manifest(&std::fs::read(path).ok()?)
}

/// `GET /metrics` of the agent whose state directory is `state_dir`.
async fn scrape(state_dir: &Path) -> String {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_bundle_applies_only_offline_and_the_cluster_wins_back_with_an_event() {
    let world = World::start(2).await;
    let nodes = world.nodes();
    let (cut, connected) = (nodes[0].clone(), nodes[1].clone());

    // Both nodes run nginx as the cluster says (placed by hand, adopted without a write).
    let hand_placed = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: nginx\nspec:\n  containers:\n  - name: web\n    image: {OLD_IMAGE}\n"
    );
    for node in &nodes {
        std::fs::write(world.manifest(node), &hand_placed).expect("placing nginx.yaml");
    }
    let cluster_object: StaticPod = serde_json::from_value(json!({
        "apiVersion": "apps.openyurt.io/v1alpha1", "kind": "StaticPod",
        "metadata": {"name": "nginx", "namespace": NS},
        "spec": {"staticPodManifest": "nginx",
                 "upgradeStrategy": {"type": "AdvancedRollingUpdate", "maxUnavailable": 1},
                 "template": {"metadata": {"name": "nginx"},
                              "spec": {"containers": [{"name": "web", "image": OLD_IMAGE}]}}},
    }))
    .expect("a StaticPod");
    let created = Api::<StaticPod>::namespaced(world.admin.clone(), NS)
        .create(&PostParams::default(), &cluster_object)
        .await
        .expect("creating the StaticPod");
    let cluster_hash = template_hash(&created.spec.template);

    // A signed bundle with a newer image, served over HTTP to both nodes.
    let d = world.dir.path();
    let ops = bundle::keygen(&d.join("ops")).expect("the operators' key");
    let ops_key = PrivateKey::load(&ops.private).expect("loading the key");
    let stranger = PrivateKey::generate().expect("an untrusted key");
    let sign = |key: &PrivateKey, sequence: u64, image: &str| {
        bundle::sign(
            &items(image),
            std::slice::from_ref(key),
            sequence,
            Duration::from_secs(86_400),
            None,
            k8s_openapi::jiff::Timestamp::now(),
        )
        .expect("signing a bundle")
    };
    let bundle_object: StaticPod = serde_saphyr::from_str(&items(NEW_IMAGE)).expect("the items");
    let bundle_hash = template_hash(&bundle_object.spec.template);
    let served = Served::default();
    served.set(sign(&ops_key, 5, NEW_IMAGE));
    let url = served.serve().await;

    let configs: Vec<PathBuf> = nodes
        .iter()
        .map(|n| world.write_config(n, &url, &ops.public))
        .collect();
    let cut_agent = world.spawn_agent(&cut, &configs[0]);
    let _connected_agent = world.spawn_agent(&connected, &configs[1]);

    // Connected, both agents verify the bundle and hold it back: the cluster is authoritative.
    for node in &nodes {
        world.wait_log(node, &["held back", "sequence=5"]).await;
    }

    // The first node's agent is cut off from the API server: after offlineAfter the bundle
    // applies there (readiness from kubelet's pod list).
    let faults = world.cluster.api().faults().clone();
    faults.partition(&agent_user(&cut));
    world
        .wait_running(&cut, &bundle_hash, "the bundle, applied offline")
        .await;
    world.wait_log(&cut, &["applying the fetched bundle"]).await;

    // The connected node held it back all along, and its sequence is not spent there.
    assert_eq!(
        std::fs::read_to_string(world.manifest(&connected)).expect("nginx.yaml"),
        hand_placed,
        "the connected node's manifest is unchanged\n{}",
        world.logs()
    );
    let state = std::fs::read_to_string(world.state_dir(&connected).join("bundle-state.json"))
        .unwrap_or_default();
    assert!(
        !state.contains("highestSequence"),
        "holding a bundle back spends no sequence: {state}"
    );
    let spent = std::fs::read_to_string(world.state_dir(&cut).join("bundle-state.json"))
        .expect("the cut node's bundle state");
    assert!(spent.contains("\"highestSequence\": 5"), "{spent}");

    // A bundle by an untrusted signer, served next, changes nothing anywhere.
    served.set(sign(&stranger, 6, FORGED_IMAGE));
    for node in &nodes {
        world
            .wait_log(node, &["fetched bundle refused", "reason=\"threshold\""])
            .await;
    }
    let metrics = scrape(&world.state_dir(&cut)).await;
    assert!(
        metrics.contains(
            "staticpod_puller_bundle_refusals_total{reason=\"threshold\",source=\"http\"} 1"
        ),
        "the refusal is counted: {metrics}"
    );
    assert_eq!(
        file_hash(&world.manifest(&cut)).as_deref(),
        Some(bundle_hash.as_str())
    );
    assert_eq!(
        std::fs::read_to_string(world.manifest(&connected)).expect("nginx.yaml"),
        hand_placed
    );
    let record = std::fs::read_to_string(world.state_dir(&cut).join("bundle-applied.json"))
        .expect("the record of what the bundle set");
    assert!(
        record.contains(&bundle_hash) && record.contains("\"sequence\": 5"),
        "{record}"
    );

    // The cut node's agent restarts, still cut off: it remembers what the bundle set (its
    // record in the state directory), so the new process reports it on reconnection.
    drop(cut_agent);
    let _cut_agent = world.spawn_agent(&cut, &configs[0]);
    world
        .wait(
            "the restarted agent to find itself cut off",
            LONG,
            async || {
                let log = world.log(&cut);
                let starts = log.matches("agent started").count();
                let outages = log
                    .matches("API server unreachable: keeping the node")
                    .count();
                if starts == 2 && outages == 2 {
                    Ok(())
                } else {
                    Err(format!("{starts} starts and {outages} outages logged"))
                }
            },
        )
        .await;

    // The partition heals: the cluster's template is reconciled back onto the node, with an
    // Event naming the bundle's sequence and both hashes.
    faults.heal(&agent_user(&cut));
    world
        .wait_running(
            &cut,
            &cluster_hash,
            "the cluster's template, reconciled back",
        )
        .await;
    let events: Api<Event> = Api::namespaced(world.admin.clone(), NS);
    let message = world
        .wait(
            "a BundleSuperseded Event on the StaticPod",
            Duration::from_secs(20),
            async || {
                let list = events
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                list.items
                    .into_iter()
                    .find(|e| {
                        e.reason.as_deref() == Some("BundleSuperseded")
                            && e.involved_object.name.as_deref() == Some("nginx")
                            && e.involved_object.kind.as_deref() == Some("StaticPod")
                    })
                    .and_then(|e| e.message)
                    .ok_or_else(|| "none yet".to_string())
            },
        )
        .await;
    for text in [
        format!("node {cut}"),
        "sequence 5".to_string(),
        bundle_hash.clone(),
        cluster_hash.clone(),
    ] {
        assert!(message.contains(&text), "{text:?} in {message:?}");
    }
    let record = std::fs::read_to_string(world.state_dir(&cut).join("bundle-applied.json"))
        .unwrap_or_default();
    assert!(
        !record.contains(&bundle_hash),
        "forgotten once reported: {record}"
    );
    assert_eq!(
        std::fs::read_to_string(world.manifest(&connected)).expect("nginx.yaml"),
        hand_placed,
        "the connected node never moved"
    );
}
