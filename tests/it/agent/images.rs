//! Images before the upgrade: each node pulls the new template's images through its runtime
//! (the simulated CRI ImageService) before it writes the manifest; a pull that fails writes
//! nothing and gets no grant; YurtHub's imagepull path; a CRI socket that is not one stops
//! the agent with the key named.

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use serde_json::{Value, json};
use staticpod_puller::ota::client::LocalClient;
use staticpod_puller::sim::kubelet::Timings;
use staticpod_puller::sim::resource::ResourceKey;

use super::env::{Env, Settings};
use super::local_api::get_metrics;
use super::ota::{call, ota_static_pod};
use super::watch::file_hash;
use super::{NEW_IMAGE, NS, OLD_IMAGE, static_pod, web};

/// Longer than the agent's report threshold (3 s), so the pull is reported as under way.
const PULL: Duration = Duration::from_millis(3500);

fn rv(e: &Event) -> u64 {
    e.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// The `PodImageReady` condition of `nginx` on `node`: (status, reason, message).
fn image_ready(env: &Env, node: &str) -> Option<(String, String, String)> {
    let pod = env
        .store()
        .get(
            &ResourceKey::core("pods"),
            Some(NS),
            &format!("nginx-{node}"),
        )
        .ok()?;
    let c = pod
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "PodImageReady")?
        .clone();
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((text("status"), text("reason"), text("message")))
}

fn object_condition(env: &Env, type_: &str) -> Option<Value> {
    let sp = env
        .store()
        .get(
            &ResourceKey::new("apps.openyurt.io", "staticpods"),
            Some(NS),
            "nginx",
        )
        .ok()?;
    sp.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_pulled_before_the_manifest_is_written() {
    let mut env = Env::start_pulling(2, Timings::fast(), PULL).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let (generation, _) = env
        .create(static_pod("nginx", "nginx", json!(2), web(NEW_IMAGE)))
        .await;
    env.start_controller();
    env.start_agents(Settings::patient());
    // While the pull runs: PodImageReady=False (Pulling), the manifest still the old one.
    for node in env.nodes() {
        let (status, reason, message) = env
            .wait(
                &format!("PodImageReady=False Pulling on {node}"),
                Duration::from_secs(20),
                async || match image_ready(&env, &node) {
                    Some(c) if c.1 == "Pulling" => Ok(c),
                    other => Err(format!("{other:?}")),
                },
            )
            .await;
        assert_eq!(status, "False");
        assert!(message.contains(NEW_IMAGE), "{reason}: {message}");
        let on_disk = std::fs::read_to_string(env.manifest(&node, "nginx")).expect("manifest");
        assert!(
            on_disk.contains(OLD_IMAGE),
            "nothing written while pulling: {on_disk}"
        );
    }
    env.wait_status("nginx", generation, (2, 2, 2), Duration::from_secs(30))
        .await;
    // On each node: the pull started, ended, and only then the upgrade (events in the order
    // the API server stored them).
    for node in env.nodes() {
        let of = |events: Vec<Event>| -> Vec<u64> {
            events
                .iter()
                .filter(|e| e.source.as_ref().and_then(|s| s.host.as_deref()) == Some(&node))
                .map(rv)
                .collect()
        };
        let pulling = of(env.events("PullingImages").await.expect("events"));
        let ready = of(env.events("ImagesReady").await.expect("events"));
        let started = of(env.events("UpgradeStarted").await.expect("events"));
        assert!(
            !pulling.is_empty() && !ready.is_empty() && !started.is_empty(),
            "{node}: pulling {pulling:?}, ready {ready:?}, started {started:?}"
        );
        assert!(
            pulling[0] < ready[0] && ready[0] < started[0],
            "{node}: pulling {pulling:?} < ready {ready:?} < upgrade started {started:?}"
        );
        let node_images = env
            .cluster
            .node(&node)
            .expect("node")
            .kubelet
            .images()
            .clone();
        assert!(node_images.present(NEW_IMAGE, tokio::time::Instant::now()));
    }
    let metrics = get_metrics(&env.state_dir(&env.nodes()[0])).await;
    assert!(
        metrics.contains("staticpod_puller_image_pulls_total{result=\"pulled\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("staticpod_puller_image_pull_seconds_count 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pull_writes_nothing_takes_no_grant_and_warns() {
    let mut env = Env::start(2, Timings::fast()).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let before: Vec<Option<String>> = env
        .nodes()
        .iter()
        .map(|n| file_hash(&env.manifest(n, "nginx")))
        .collect();
    env.cluster.set_unpullable_image(NEW_IMAGE, true);
    env.create(static_pod("nginx", "nginx", json!(2), web(NEW_IMAGE)))
        .await;
    env.start_controller();
    env.start_agents(Settings::patient());
    let warning = env.wait_event("ImagePullFailed", NEW_IMAGE).await;
    assert!(warning.contains("not found"), "{warning}");
    // The controller reports the nodes and grants none of them.
    let condition = env
        .wait(
            "the ImagePullFailed condition naming both nodes",
            Duration::from_secs(20),
            async || match object_condition(&env, "ImagePullFailed") {
                Some(c)
                    if c["status"] == "True"
                        && env.nodes().iter().all(|n| {
                            c["message"]
                                .as_str()
                                .unwrap_or_default()
                                .contains(n.as_str())
                        }) =>
                {
                    Ok(c)
                }
                other => Err(format!("{other:?}")),
            },
        )
        .await;
    assert_eq!(condition["reason"], "ImagesNotPulled");
    env.holds(
        "no grant for the hash, nothing written",
        Duration::from_secs(1),
        async || {
            let open: Vec<String> = env
                .grant_leases("nginx")
                .await?
                .iter()
                .filter(|l| {
                    l.spec
                        .as_ref()
                        .and_then(|s| s.holder_identity.as_deref())
                        .is_some()
                })
                .filter_map(|l| l.metadata.name.clone())
                .collect();
            let now: Vec<Option<String>> = env
                .nodes()
                .iter()
                .map(|n| file_hash(&env.manifest(n, "nginx")))
                .collect();
            if !open.is_empty() || now != before {
                return Err(format!(
                    "grants held {open:?}; manifests {before:?} → {now:?}"
                ));
            }
            Ok(())
        },
    )
    .await;
    for node in env.nodes() {
        let (status, reason, _) = image_ready(&env, &node).expect("PodImageReady");
        assert_eq!((status.as_str(), reason.as_str()), ("False", "PullFailed"));
    }
}

/// One node with the seed's OTA object, its runtime pulling in [`PULL`], its agent running:
/// the environment, the node, a client of its local API and its mirror pod's name.
async fn ota_node() -> (Env, String, LocalClient, String) {
    let mut env = Env::start_pulling(1, Timings::fast(), PULL).await;
    let node = env.nodes()[0].clone();
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    env.create(ota_static_pod(OLD_IMAGE)).await;
    env.start_agent(&node, Settings::patient());
    let api = env.local_api(&node).await;
    let pod = format!("nginx-{node}");
    (env, node, api, pod)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_api_takes_yurthub_s_imagepull_requests() {
    let (env, node, api, pod) = ota_node().await;
    let path = format!("/openyurt.io/v1/namespaces/{NS}/pods/{pod}/imagepull");
    env.wait_need_upgrade(&node, "False").await;
    let (status, body) = call(&api, "POST", &path).await;
    assert_eq!(status, 403, "no upgrade available: {body}");
    assert!(body.contains("no upgrade is available"), "{body}");
    let (status, _) = call(
        &api,
        "POST",
        &format!("/openyurt.io/v1/namespaces/{NS}/pods/nope/imagepull"),
    )
    .await;
    assert_eq!(status, 404);

    env.set_image("nginx", NEW_IMAGE).await;
    env.wait_need_upgrade(&node, "True").await;
    let (status, body) = call(&api, "POST", &path).await;
    assert_eq!(
        (status, body.as_str()),
        (
            200,
            format!("Image pre-pull requested for pod {NS}/{pod}").as_str()
        )
    );
    env.wait(
        "PodImageReady=True naming the new hash",
        Duration::from_secs(20),
        async || match image_ready(&env, &node) {
            Some((s, _, m)) if s == "True" && m.contains(NEW_IMAGE) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let on_disk = std::fs::read_to_string(env.manifest(&node, "nginx")).expect("manifest");
    assert!(
        on_disk.contains(OLD_IMAGE),
        "OTA: pulled, not upgraded: {on_disk}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cri_endpoint_that_is_not_a_socket_stops_the_agent_with_the_key_named() {
    let env = Env::start(1, Timings::fast()).await;
    let node = env.nodes()[0].clone();
    let config = env.write_config(&node, Settings::patient(), "run");
    let text = std::fs::read_to_string(&config).expect("config");
    let not_a_socket = env.manifest(&node, "not-a-socket");
    std::fs::write(&not_a_socket, "").expect("a plain file");
    let bad = config.with_extension("bad.yaml");
    let replaced = text
        .lines()
        .map(|l| {
            if l.starts_with("  endpoint: unix://") {
                format!("  endpoint: {}", not_a_socket.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&bad, replaced).expect("bad config");
    let output = std::process::Command::new(crate::support::binary())
        .arg("--config")
        .arg(&bad)
        .arg("run")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cri.endpoint") && stderr.contains("is not a Unix socket"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_template_replaces_a_pull_still_running() {
    use staticpod_puller::images::cri::Cri;
    use staticpod_puller::images::{Prepull, PullState};
    use staticpod_puller::sim::runtime::ImageStore;

    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = dir.path().join("cri.sock");
    let runtime = ImageStore::new(Duration::from_millis(800), Default::default());
    let _server = runtime.serve(&socket).expect("serving the CRI socket");
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let prepull = Prepull::new(Some(Cri::new(&socket)), Duration::from_secs(30), 2, changed);
    let (old, new) = (vec!["web:1".to_string()], vec!["web:2".to_string()]);
    assert_eq!(
        prepull.ensure("web", "hash-1", || old.clone()),
        PullState::Pulling
    );
    assert_eq!(
        prepull.ensure("web", "hash-2", || new.clone()),
        PullState::Pulling
    );
    assert_eq!(
        prepull.state("web", "hash-1"),
        None,
        "the older pull is gone"
    );
    tokio::time::timeout(
        Duration::from_secs(10),
        prepull.ready("web", "hash-2", || new.clone()),
    )
    .await
    .expect("within 10 s")
    .expect("pulled");
    assert_eq!(prepull.state("web", "hash-2"), Some(PullState::Ready));
    assert!(runtime.present("web:2", tokio::time::Instant::now()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imagepull_while_the_upgrade_runs_is_a_conflict_and_the_upgrade_pulls_first() {
    let (env, node, api, pod) = ota_node().await;
    env.set_image("nginx", NEW_IMAGE).await;
    env.wait_need_upgrade(&node, "True").await;
    let upgrade = format!("/openyurt.io/v1/namespaces/{NS}/pods/{pod}/upgrade");
    let (status, body) = call(&api, "POST", &upgrade).await;
    assert_eq!(status, 200, "{body}");
    // The upgrade waits for the pull (3.5 s) before it writes.
    let (status, body) = call(&api, "GET", &upgrade).await;
    assert!(body.contains("pulling-images"), "{status}: {body}");
    let on_disk = std::fs::read_to_string(env.manifest(&node, "nginx")).expect("manifest");
    assert!(
        on_disk.contains(OLD_IMAGE),
        "nothing written while pulling: {on_disk}"
    );
    let (status, body) = call(
        &api,
        "POST",
        &format!("/openyurt.io/v1/namespaces/{NS}/pods/{pod}/imagepull"),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    env.wait(
        "the OTA upgrade to succeed",
        Duration::from_secs(30),
        async || {
            let (_, body) = call(&api, "GET", &upgrade).await;
            if body.contains("\"succeeded\"") {
                Ok(())
            } else {
                Err(body)
            }
        },
    )
    .await;
}
