//! Clients over in-memory pipes (the demo's agent tasks): the same TLS, authentication and
//! authorization as over TCP, and watches that follow changes.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use serde_json::json;

use super::{NODE1, Sim, assert_status, status, within};

async fn pipe_client(sim: &Sim, token: &str, user: &str) -> (Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, sim.server.kubeconfig(token, user)).expect("writing the kubeconfig");
    let client = staticpod_puller::sim::apiserver::pipe_client(&path, sim.server.pipe_connector())
        .await
        .unwrap_or_else(|e| panic!("a pipe client for {user}: {e}"));
    (client, dir)
}

#[tokio::test]
async fn a_client_over_a_pipe_keeps_its_identity_and_watches() {
    let sim = Sim::start().await;
    sim.running_pod("default", "nginx-n1", "n1").await;
    sim.running_pod("default", "nginx-n2", "n2").await;

    let (stranger, _dir) = pipe_client(&sim, "not-a-token", "stranger").await;
    let s = status(
        "listing with an unknown token over a pipe",
        within(
            "list",
            Api::<Pod>::all(stranger).list(&ListParams::default()),
        )
        .await,
    );
    assert_status("an unknown token over a pipe", &s, 401, "Unauthorized");

    let (node1, _dir) = pipe_client(&sim, NODE1, "system:node:n1").await;
    let pods: Api<Pod> = Api::namespaced(node1, "default");
    let mut watch = within(
        "starting a watch",
        pods.watch(
            &WatchParams::default().fields("metadata.name=nginx-n1"),
            "0",
        ),
    )
    .await
    .expect("a node may watch pods")
    .boxed();
    let need = Patch::Strategic(
        json!({"status": {"conditions": [{"type": "PodNeedUpgrade", "status": "True"}]}}),
    );
    within(
        "patch own",
        pods.patch_status("nginx-n1", &PatchParams::default(), &need),
    )
    .await
    .expect("a node may patch its own mirror pod over a pipe");
    let s = status(
        "patching another node's pod over a pipe",
        within(
            "patch other",
            pods.patch_status("nginx-n2", &PatchParams::default(), &need),
        )
        .await,
    );
    assert_status("another node's pod over a pipe", &s, 403, "Forbidden");
    let seen = within("the watch event", async {
        loop {
            match watch.try_next().await {
                Ok(Some(WatchEvent::Modified(pod))) => break pod,
                Ok(Some(_)) => continue,
                other => panic!("the watch over a pipe ended: {other:?}"),
            }
        }
    })
    .await;
    let conditions = seen.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        conditions.iter().any(|c| c.type_ == "PodNeedUpgrade"),
        "the watch saw the patch: {conditions:?}"
    );
}
