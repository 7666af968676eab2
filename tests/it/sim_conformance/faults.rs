//! Fault injection (errors, latency, partitions) and the admin endpoint that sets it.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use staticpod_puller::sim::apiserver::Verb;

use super::{
    ADMIN, ALICE, NODE1, STEP, Sim, assert_status, eventually, lease, next_event, status, within,
};

#[tokio::test]
async fn faults_fail_delay_and_partition() {
    let sim = Sim::start().await;
    let faults = sim.server.faults();
    let admin = sim.client_without_retries(ADMIN, "admin").await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "default");
    within(
        "create",
        leases.create(&PostParams::default(), &lease("slot-0", "n1")),
    )
    .await
    .expect("create");

    faults.set_error_rate(Verb::Get, 1.0);
    let s = status(
        "a get with error rate 1.0",
        within("get", leases.get("slot-0")).await,
    );
    assert_status("a get with error rate 1.0", &s, 503, "ServiceUnavailable");
    assert!(
        s.message.contains("injected"),
        "the 503 says it is injected: {}",
        s.message
    );
    within("list", leases.list(&ListParams::default()))
        .await
        .expect("other verbs unaffected");
    faults.clear();
    within("get", leases.get("slot-0")).await.expect("cleared");

    faults.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    within("get", leases.get("slot-0"))
        .await
        .expect("get with latency");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "latency added: took {:?}",
        started.elapsed()
    );
    faults.clear();

    // A partitioned user's requests fail at the connection; others' do not; its watches end.
    sim.running_pod("default", "nginx-n1", "n1").await;
    let node1 = sim.client(NODE1, "system:node:n1").await;
    let n1_pods: Api<Pod> = Api::namespaced(node1.clone(), "default");
    let mut watch = within(
        "watch",
        n1_pods.watch(&WatchParams::default().timeout(120), "0"),
    )
    .await
    .expect("n1 watches")
    .boxed();
    assert!(matches!(
        next_event("n1's initial ADDED", &mut watch).await,
        WatchEvent::Added(_)
    ));
    faults.partition("system:node:n1");
    loop {
        match within("n1's watch to end after the partition", watch.next()).await {
            None | Some(Err(_)) => break,
            Some(Ok(WatchEvent::Bookmark(_))) => {}
            Some(Ok(other)) => panic!("expected n1's watch to end, got {other:?}"),
        }
    }
    match within("a partitioned get", n1_pods.get("nginx-n1")).await {
        Err(kube::Error::Api(s)) => panic!("a partition gives no HTTP answer, got {s:?}"),
        Err(_) => {}
        Ok(_) => panic!("a partitioned user's request succeeded"),
    }
    within("admin get", sim.pods("default").get("nginx-n1"))
        .await
        .expect("other users are not partitioned");
    faults.heal("system:node:n1");
    eventually("n1 to reach the server after heal", STEP, || async {
        n1_pods.get("nginx-n1").await.map_err(|e| e.to_string())
    })
    .await;
    let counts = sim.server.requests_by_user();
    assert!(
        counts.get("system:node:n1").copied().unwrap_or(0) >= 2,
        "requests counted per user: {counts:?}"
    );
    assert!(
        counts.get("admin").copied().unwrap_or(0) >= 5,
        "requests counted per user: {counts:?}"
    );
}

#[tokio::test]
async fn the_faults_admin_endpoint_is_for_cluster_admins() {
    let sim = Sim::start().await;
    let set = json!({"errorRate": {"list": 1.0}, "latencyMs": 5, "partition": ["bob"]});
    let shown = sim
        .raw(&sim.admin, "POST", "/sim/faults", None, Some(set))
        .await
        .expect("admin sets faults");
    assert_eq!(shown["errorRate"]["list"], 1.0, "{shown}");
    assert_eq!(shown["partitioned"], json!(["bob"]), "{shown}");
    let quiet = sim.client_without_retries(ADMIN, "admin").await;
    let s = status(
        "a list with the list error rate at 1.0",
        within("list", Api::<Pod>::all(quiet).list(&ListParams::default())).await,
    );
    assert_status(
        "a list with the list error rate at 1.0",
        &s,
        503,
        "ServiceUnavailable",
    );
    let shown = sim
        .raw(&sim.admin, "GET", "/sim/faults", None, None)
        .await
        .expect("admin reads faults");
    assert_eq!(shown["latencyMs"], 5, "{shown}");
    let bad = sim
        .raw(
            &sim.admin,
            "POST",
            "/sim/faults",
            None,
            Some(json!({"errorRate": {"gett": 1.0}})),
        )
        .await;
    assert_status(
        "an unknown verb",
        &status("an unknown verb", bad),
        400,
        "BadRequest",
    );
    let cleared = sim
        .raw(
            &sim.admin,
            "POST",
            "/sim/faults",
            None,
            Some(json!({"clear": true})),
        )
        .await
        .expect("clear");
    assert_eq!(cleared["partitioned"], json!([]), "{cleared}");

    let alice = sim.client(ALICE, "alice").await;
    let s = status(
        "alice setting faults",
        sim.raw(
            &alice,
            "POST",
            "/sim/faults",
            None,
            Some(json!({"clear": true})),
        )
        .await,
    );
    assert_status("alice setting faults", &s, 403, "Forbidden");
}
