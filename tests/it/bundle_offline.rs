//! End to end: bundles fetched over HTTP and who is authoritative. Two nodes' agents poll the
//! same bundle URL (served by this test); the cluster defines the same object. The node cut
//! off from the API server applies the bundle once `bundle.offlineAfter` has passed, the
//! connected one holds it back; a bundle by an untrusted signer changes nothing; and when the
//! partition heals the cluster's template is reconciled back with a `BundleSuperseded` Event.
//! And a bundle dropped on a node cut off from the API server upgrades it; a tampered one is
//! rejected; reconnecting reconciles with the cluster in the same process.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use staticpod_puller::bundle::{self, PrivateKey};
use staticpod_puller::manifest::template_hash;
use staticpod_puller::resources::StaticPod;
use staticpod_puller::sim::cluster::agent_user;
use staticpod_puller::sim::kubelet::Timings;

use crate::agent::{
    Env, NEW_IMAGE, OLD_IMAGE, Settings, bundle_items, file_hash, get_metrics, hand_placed, mirror,
    static_pod, web,
};

const FORGED_IMAGE: &str = "nginx:forged";
/// Short, so the test sees the authority rule switch.
const OFFLINE_AFTER: &str = "2s";
const LONG: Duration = Duration::from_secs(60);

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

/// Wait until `node` runs nginx at `hash` (file and Ready mirror pod).
async fn wait_running(env: &Env, node: &str, hash: &str, why: &str) {
    env.wait(
        &format!("{node} running nginx at {hash} ({why})"),
        LONG,
        async || {
            let file = file_hash(&env.manifest(node, "nginx"));
            match mirror(env.store(), "nginx", node) {
                Some(m)
                    if m.ready
                        && m.hash.as_deref() == Some(hash)
                        && file.as_deref() == Some(hash) =>
                {
                    Ok(())
                }
                other => Err(format!("file {file:?}, mirror {other:?}")),
            }
        },
    )
    .await;
}

/// The agent configuration of `node`: the bundle URL, trusted keys, a short offlineAfter.
fn write_config(env: &Env, node: &str, url: &str, trusted: &Path) -> PathBuf {
    env.write_config_with(
        node,
        Settings::deadline(Duration::from_secs(60)),
        "bundle",
        &format!(
            "localApi:\n  listen: 127.0.0.1:0\nota:\n  kubeletPodsUrl: {}\nbundle:\n  urls: [{url}]\n  pollInterval: 500ms\n  offlineAfter: {OFFLINE_AFTER}\ntrust:\n  trustedKeys: [{}]\n",
            env.kubelet_pods_url(node),
            trusted.display(),
        ),
    )
}

/// Wait until `node`'s log has a line containing every one of `texts`.
async fn wait_log(env: &Env, node: &str, texts: &[&str]) {
    env.wait(
        &format!("a log line of {node}'s agent saying {texts:?}"),
        LONG,
        async || {
            if env
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_bundle_applies_only_offline_and_the_cluster_wins_back_with_an_event() {
    let mut env = Env::start(2, Timings::fast()).await;
    // Rolling upgrades go ahead on the controller's grants.
    env.start_controller();
    let nodes = env.nodes();
    let (cut, connected) = (nodes[0].clone(), nodes[1].clone());
    let nginx = |node: &str| env.manifest(node, "nginx");

    // Both nodes run nginx as the cluster says (placed by hand, adopted without a write).
    let hand_placed = hand_placed("nginx", OLD_IMAGE);
    for node in &nodes {
        std::fs::write(nginx(node), &hand_placed).expect("placing nginx.yaml");
    }
    let (_, cluster_hash) = env
        .create(static_pod("nginx", "nginx", json!(1), web(OLD_IMAGE)))
        .await;

    // A signed bundle with a newer image, served over HTTP to both nodes.
    let d = env.dir.path();
    let ops = bundle::keygen(&d.join("ops")).expect("the operators' key");
    let ops_key = PrivateKey::load(&ops.private).expect("loading the key");
    let stranger = PrivateKey::generate().expect("an untrusted key");
    let sign = |key: &PrivateKey, sequence: u64, image: &str| {
        bundle::sign(
            &bundle_items(image),
            std::slice::from_ref(key),
            sequence,
            Duration::from_secs(86_400),
            None,
            k8s_openapi::jiff::Timestamp::now(),
        )
        .expect("signing a bundle")
    };
    let bundle_object: StaticPod =
        serde_saphyr::from_str(&bundle_items(NEW_IMAGE)).expect("the items");
    let bundle_hash = template_hash(&bundle_object.spec.template);
    let served = Served::default();
    served.set(sign(&ops_key, 5, NEW_IMAGE));
    let url = served.serve().await;

    let configs: Vec<PathBuf> = nodes
        .iter()
        .map(|n| write_config(&env, n, &url, &ops.public))
        .collect();
    let cut_agent = env.spawn_agent_with(&cut, &configs[0]);
    let _connected_agent = env.spawn_agent_with(&connected, &configs[1]);

    // Connected, both agents verify the bundle and hold it back: the cluster is authoritative.
    for node in &nodes {
        wait_log(&env, node, &["held back", "sequence=5"]).await;
    }

    // The first node's agent is cut off from the API server: after offlineAfter the bundle
    // applies there (readiness from kubelet's pod list).
    let faults = env.cluster.api().faults().clone();
    faults.partition(&agent_user(&cut));
    wait_running(&env, &cut, &bundle_hash, "the bundle, applied offline").await;
    wait_log(&env, &cut, &["applying the fetched bundle"]).await;

    // The connected node held it back all along, and its sequence is not spent there.
    assert_eq!(
        std::fs::read_to_string(nginx(&connected)).expect("nginx.yaml"),
        hand_placed,
        "the connected node's manifest is unchanged\n{}",
        env.logs()
    );
    let state = std::fs::read_to_string(env.state_dir(&connected).join("bundle-state.json"))
        .unwrap_or_default();
    assert!(
        !state.contains("highestSequence"),
        "holding a bundle back spends no sequence: {state}"
    );
    let spent = std::fs::read_to_string(env.state_dir(&cut).join("bundle-state.json"))
        .expect("the cut node's bundle state");
    assert!(spent.contains("\"highestSequence\": 5"), "{spent}");

    // A bundle by an untrusted signer, served next, changes nothing anywhere.
    served.set(sign(&stranger, 6, FORGED_IMAGE));
    for node in &nodes {
        wait_log(
            &env,
            node,
            &["fetched bundle refused", "reason=\"threshold\""],
        )
        .await;
    }
    let metrics = get_metrics(&env.state_dir(&cut)).await;
    assert!(
        metrics.contains(
            "staticpod_puller_bundle_refusals_total{reason=\"threshold\",source=\"http\"} 1"
        ),
        "the refusal is counted: {metrics}"
    );
    assert_eq!(
        file_hash(&nginx(&cut)).as_deref(),
        Some(bundle_hash.as_str())
    );
    assert_eq!(
        std::fs::read_to_string(nginx(&connected)).expect("nginx.yaml"),
        hand_placed
    );
    // Recorded when the upgrade ends (the agent sees Ready a moment after this test may).
    let record_path = env.state_dir(&cut).join("bundle-applied.json");
    env.wait("the record of what the bundle set", LONG, async || {
        let record = std::fs::read_to_string(&record_path).unwrap_or_default();
        if record.contains(&bundle_hash) && record.contains("\"sequence\": 5") {
            Ok(())
        } else {
            Err(record)
        }
    })
    .await;

    // The cut node's agent restarts, still cut off: it remembers what the bundle set (its
    // record in the state directory), so the new process reports it on reconnection.
    drop(cut_agent);
    let _cut_agent = env.spawn_agent_with(&cut, &configs[0]);
    env.wait(
        "the restarted agent to find itself cut off",
        LONG,
        async || {
            let log = env.log(&cut);
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
    wait_running(
        &env,
        &cut,
        &cluster_hash,
        "the cluster's template, reconciled back",
    )
    .await;
    let message = superseded_message(&env).await;
    for text in [
        format!("node {cut}"),
        "sequence 5".to_string(),
        bundle_hash.clone(),
        cluster_hash.clone(),
    ] {
        assert!(message.contains(&text), "{text:?} in {message:?}");
    }
    let record = std::fs::read_to_string(env.state_dir(&cut).join("bundle-applied.json"))
        .unwrap_or_default();
    assert!(
        !record.contains(&bundle_hash),
        "forgotten once reported: {record}"
    );
    assert_eq!(
        std::fs::read_to_string(nginx(&connected)).expect("nginx.yaml"),
        hand_placed,
        "the connected node never moved"
    );
}

/// One node running nginx as the cluster says (hand-placed, adopted without a write), its
/// agent watching a drop directory, and the node then cut off from the API server.
struct CutOff {
    env: Env,
    node: String,
    nginx: PathBuf,
    drop_dir: PathBuf,
    ops_key: PrivateKey,
    /// The cluster's template hash (nginx:1.19.1).
    cluster_hash: String,
    _agent: crate::agent::AgentProc,
}

impl CutOff {
    async fn start() -> CutOff {
        let mut env = Env::start(1, Timings::fast()).await;
        // Rolling upgrades go ahead on the controller's grants.
        env.start_controller();
        let node = env.nodes()[0].clone();
        let nginx = env.manifest(&node, "nginx");
        std::fs::write(&nginx, hand_placed("nginx", OLD_IMAGE)).expect("placing nginx.yaml");
        let (_, cluster_hash) = env
            .create(static_pod("nginx", "nginx", json!(1), web(OLD_IMAGE)))
            .await;
        let d = env.dir.path();
        let ops = bundle::keygen(&d.join("ops")).expect("the operators' key");
        let ops_key = PrivateKey::load(&ops.private).expect("loading the key");
        let drop_dir = d.join("drop");
        let config = env.write_config_with(
            &node,
            Settings::deadline(Duration::from_secs(60)),
            "drop",
            &format!(
                "localApi:\n  listen: 127.0.0.1:0\nota:\n  kubeletPodsUrl: {}\nbundle:\n  dropDir: {}\n  offlineAfter: {OFFLINE_AFTER}\ntrust:\n  trustedKeys: [{}]\n",
                env.kubelet_pods_url(&node),
                drop_dir.display(),
                ops.public.display(),
            ),
        );
        let agent = env.spawn_agent_with(&node, &config);
        env.wait(
            "the agent to cache the cluster's object",
            LONG,
            async || {
                let cached = std::fs::read_to_string(env.state_dir(&node).join("desired.json"))
                    .unwrap_or_default();
                if cached.contains(&cluster_hash) {
                    Ok(())
                } else {
                    Err(format!("desired.json: {cached:.200}"))
                }
            },
        )
        .await;
        env.cluster.api().faults().partition(&agent_user(&node));
        wait_log(&env, &node, &["API server unreachable"]).await;
        CutOff {
            env,
            node,
            nginx,
            drop_dir,
            ops_key,
            cluster_hash,
            _agent: agent,
        }
    }

    /// A bundle of nginx at `image`, signed by the trusted key.
    fn signed(&self, sequence: u64, image: &str) -> Vec<u8> {
        bundle::sign(
            &bundle_items(image),
            std::slice::from_ref(&self.ops_key),
            sequence,
            Duration::from_secs(86_400),
            None,
            k8s_openapi::jiff::Timestamp::now(),
        )
        .expect("signing a bundle")
    }

    /// Copy a bundle in as operators do (under a dot name, then renamed into place).
    fn drop_bundle(&self, name: &str, bytes: &[u8]) {
        let part = self.drop_dir.join(format!(".{name}.part"));
        std::fs::write(&part, bytes).expect("copying the bundle");
        std::fs::rename(&part, self.drop_dir.join(name)).expect("renaming it into place");
    }

    fn heal(&self) {
        self.env
            .cluster
            .api()
            .faults()
            .heal(&agent_user(&self.node));
    }
}

/// The message of the `BundleSuperseded` Event on the nginx StaticPod, once there is one.
async fn superseded_message(env: &Env) -> String {
    env.wait(
        "a BundleSuperseded Event on the StaticPod",
        Duration::from_secs(20),
        async || {
            env.events("BundleSuperseded")
                .await?
                .into_iter()
                .find(|e| {
                    e.involved_object.name.as_deref() == Some("nginx")
                        && e.involved_object.kind.as_deref() == Some("StaticPod")
                })
                .and_then(|e| e.message)
                .ok_or_else(|| "none yet".to_string())
        },
    )
    .await
}

/// The template hash of nginx at `image`, as a bundle carries it.
fn bundle_hash(image: &str) -> String {
    let object: StaticPod = serde_saphyr::from_str(&bundle_items(image)).expect("the items");
    template_hash(&object.spec.template)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_bundle_upgrades_a_cut_off_node_and_reconnecting_reconciles_without_a_restart() {
    let cut = CutOff::start().await;
    let (env, node, nginx) = (&cut.env, &cut.node, &cut.nginx);

    // A tampered bundle (one payload byte changed) is rejected and changes nothing.
    let mut tampered: serde_json::Value =
        serde_json::from_slice(&cut.signed(7, FORGED_IMAGE)).expect("the envelope");
    let payload = tampered["payload"].as_str().expect("a payload").to_string();
    let flipped = if payload.starts_with('e') { "f" } else { "e" };
    tampered["payload"] = json!(format!("{flipped}{}", &payload[1..]));
    cut.drop_bundle(
        "tampered.bundle",
        &serde_json::to_vec(&tampered).expect("the tampered envelope"),
    );
    let reason = cut.drop_dir.join("rejected/tampered.bundle.reason");
    env.wait("the tampered bundle rejected", LONG, async || {
        if reason.is_file() {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(nginx).expect("nginx.yaml"),
        hand_placed("nginx", OLD_IMAGE),
        "the tampered bundle changed nothing"
    );

    // A good bundle dropped on the cut-off node upgrades it (readiness from kubelet's list).
    let new_hash = bundle_hash(NEW_IMAGE);
    cut.drop_bundle("good.bundle", &cut.signed(8, NEW_IMAGE));
    wait_running(env, node, &new_hash, "the dropped bundle, applied offline").await;
    assert!(cut.drop_dir.join("processed/good.bundle").is_file());

    // The same process sees the API server again: the cluster's template comes back, with
    // the Event.
    cut.heal();
    wait_running(
        env,
        node,
        &cut.cluster_hash,
        "the cluster's template, reconciled back",
    )
    .await;
    let message = superseded_message(env).await;
    for text in ["sequence 8", &new_hash, &cut.cluster_hash] {
        assert!(message.contains(text), "{text:?} in {message:?}");
    }
    assert_eq!(
        env.log(node).matches("agent started").count(),
        1,
        "one agent process throughout"
    );
}

/// The operator signs the template they also apply to the cluster while the node is away: on
/// reconnection nothing moves, even while the agent's watches still hold the old template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_the_cluster_caught_up_with_is_kept_on_reconnection_without_a_revert() {
    let cut = CutOff::start().await;
    let (env, node, nginx) = (&cut.env, &cut.node, &cut.nginx);
    let new_hash = bundle_hash(NEW_IMAGE);
    cut.drop_bundle("b.bundle", &cut.signed(3, NEW_IMAGE));
    wait_running(env, node, &new_hash, "the dropped bundle").await;

    // Meanwhile the operator applies the same template to the cluster.
    let (_, cluster_hash) = env.set_image("nginx", NEW_IMAGE).await;
    assert_eq!(cluster_hash, new_hash);
    cut.heal();
    // The record is forgotten once the agent sees the cluster agree; until then, and after,
    // the manifest never goes back to the old template and no Event says it was superseded.
    let record = env.state_dir(node).join("bundle-applied.json");
    env.holds(
        "nginx.yaml at the bundle's hash after reconnecting",
        Duration::from_secs(8),
        async || match file_hash(nginx) {
            Some(h) if h == new_hash => Ok(()),
            other => Err(format!("nginx.yaml at {other:?}\n{}", env.logs())),
        },
    )
    .await;
    env.wait("the record forgotten", LONG, async || {
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        if text.contains(&new_hash) {
            Err(text)
        } else {
            Ok(())
        }
    })
    .await;
    let superseded = env.events("BundleSuperseded").await.expect("events");
    assert!(superseded.is_empty(), "{superseded:?}");
    assert_eq!(file_hash(nginx).as_deref(), Some(new_hash.as_str()));
}
