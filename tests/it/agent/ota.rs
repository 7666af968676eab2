//! OTA upgrades: every member announces `PodNeedUpgrade`, and only the pod asked for through
//! the node-local API upgrades, online or cut off from the API server. The helpers that talk
//! to the local API are shared with `local_api`.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::{Value, json};
use staticpod_puller::sim::kubelet::Timings;
use staticpod_puller::sim::resource::ResourceKey;
use staticpod_puller::sim::store::Store;

use super::env::{Env, Settings};
use super::watch::{file_hash, mirror, stamp};
use super::{NEW_IMAGE, NS, OLD_IMAGE, static_pod, web};

/// An OTA StaticPod of `image`.
pub(super) fn ota_static_pod(image: &str) -> Value {
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
pub(super) fn need_upgrade(store: &Store, name: &str, node: &str) -> Option<String> {
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
    /// A client of `node`'s local API (the agent wrote the port it bound into its state dir).
    pub(super) async fn local_api(&self, node: &str) -> staticpod_puller::ota::client::LocalClient {
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

    pub(super) async fn wait_need_upgrade(&self, node: &str, want: &str) {
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
pub(super) async fn wait_agent_sees_need(
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
pub(super) async fn wait_phase(
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

pub(super) fn upgrade_path(pod: &str) -> String {
    format!("/openyurt.io/v1/namespaces/{NS}/pods/{pod}/upgrade")
}

pub(super) async fn call(
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
