//! The controller's rollout controls, end to end with agents as processes: the failure budget
//! halts a broken template, `rollout retry` grants the failed again, pause holds new grants,
//! a canary step waits for promotion, and `rollout status` says where it stands.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use staticpod_puller::manifest::hash_of_manifest;
use staticpod_puller::sim::kubelet::Timings;

use super::env::{Env, Outcome, Settings, run_to_end};
use super::watch::{BudgetWatch, DirWatch, mirror};
use super::{FIXED_IMAGE, NEW_IMAGE, NS, OLD_IMAGE, static_pod, web};
use crate::support;

/// A StaticPod with rollout controls beside maxUnavailable.
fn controlled(max_unavailable: Value, controls: Value, image: &str) -> Value {
    let mut object = static_pod("nginx", "nginx", max_unavailable, web(image));
    if let (Some(strategy), Some(extra)) = (
        object["spec"]["upgradeStrategy"].as_object_mut(),
        controls.as_object(),
    ) {
        strategy.extend(extra.clone());
    }
    object
}

impl Env {
    /// Run `staticpod-puller rollout ARGS` as an operator (the admin kubeconfig).
    async fn rollout(&self, args: &[&str]) -> Outcome {
        let mut cmd = tokio::process::Command::new(support::binary());
        cmd.arg("rollout")
            .args(args)
            .arg("--kubeconfig")
            .arg(self.cluster.admin_kubeconfig())
            .args(["--agent-namespace", "staticpod-system"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        run_to_end(cmd, Duration::from_secs(60)).await
    }

    /// Wait until the object's status phase is `phase` and its condition of the same name is
    /// True; the condition's message.
    async fn wait_phase(&self, phase: &str, timeout: Duration) -> String {
        self.wait(&format!("status phase {phase}"), timeout, async || {
            let sp = self
                .static_pods()
                .get("nginx")
                .await
                .map_err(|e| e.to_string())?;
            let status = sp.status.ok_or("no status yet")?;
            let message = status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == phase && c.status == "True")
                .and_then(|c| c.message);
            match (status.phase.as_deref(), message) {
                (Some(p), Some(m)) if p == phase => Ok(m),
                (p, _) => Err(format!("phase {p:?}, condition {phase} not True")),
            }
        })
        .await
    }

    /// Nodes whose manifest ever carried `hash`, from a directory watch.
    fn writers(history: &[super::watch::Version], hash: &str) -> BTreeSet<String> {
        history
            .iter()
            .filter(|v| v.bytes.as_deref().and_then(hash_of_manifest).as_deref() == Some(hash))
            .filter_map(|v| {
                v.file
                    .parent()?
                    .parent()?
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_template_halts_after_the_failure_budget_and_retry_and_a_fix_go_on() {
    let (nodes, budget, max_failed) = (6, 2, 2);
    let deadline = Duration::from_secs(2);
    let mut env = Env::start(nodes, Timings::fast()).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    env.create(controlled(
        json!(budget),
        json!({"maxFailed": max_failed}),
        OLD_IMAGE,
    ))
    .await;
    env.start_controller();
    env.start_agents(Settings::deadline(deadline));
    let dirs = env.nodes().iter().map(|n| env.manifest_dir(n)).collect();
    let watch = DirWatch::start(dirs, "nginx.yaml");

    env.cluster.set_broken_image(NEW_IMAGE, true);
    let (_, bad_hash) = env.set_image("nginx", NEW_IMAGE).await;
    let message = env.wait_phase("Halted", Duration::from_secs(30)).await;
    // Grants already out finish; then nothing more goes out for the bad hash.
    env.holds(
        "no further node writes the bad hash",
        deadline + Duration::from_secs(2),
        async || {
            let writers = Env::writers(&watch.history(), &bad_hash);
            if writers.len() < max_failed + budget {
                Ok(())
            } else {
                Err(format!("{writers:?}"))
            }
        },
    )
    .await;
    let writers = Env::writers(&watch.history(), &bad_hash);
    assert!(
        (max_failed..=max_failed + budget - 1).contains(&writers.len()),
        "between maxFailed ({max_failed}) and maxFailed + maxUnavailable - 1 nodes write a failing hash; saw {writers:?}"
    );
    let failed: Vec<&String> = writers
        .iter()
        .filter(|n| message.contains(n.as_str()))
        .collect();
    assert!(
        failed.len() >= max_failed && message.contains("not Ready"),
        "the Halted condition names the failed nodes and why: {message}"
    );
    let halted = env.wait_event("RolloutHalted", &bad_hash).await;
    assert!(halted.contains("maxFailed"), "{halted}");
    let status = env.rollout(&["status", "sp/nginx"]).await;
    assert_eq!(
        status.status.code(),
        Some(2),
        "exit 2 when halted: {}{}",
        status.stdout,
        status.stderr
    );
    assert!(
        status.stdout.contains("Halted")
            && status.stdout.contains("failed: ")
            && status.stdout.contains("rollout retry"),
        "{}",
        status.stdout
    );

    // Retry: the failed members are granted the same hash again (and fail again: still broken).
    let before = env.events("UpgradeStarted").await.expect("events").len();
    let retried = env.rollout(&["retry", "sp/default/nginx"]).await;
    assert!(
        retried.status.success(),
        "{}{}",
        retried.stdout,
        retried.stderr
    );
    assert!(
        retried.stdout.contains("granted again"),
        "{}",
        retried.stdout
    );
    env.wait(
        "the failed members upgrading again",
        Duration::from_secs(20),
        async || {
            let now = env.events("UpgradeStarted").await?.len();
            if now > before {
                Ok(())
            } else {
                Err(format!("{now} UpgradeStarted events"))
            }
        },
    )
    .await;

    // A fixed template starts afresh and reaches every node.
    env.cluster.set_broken_image(NEW_IMAGE, false);
    let (generation, _) = env.set_image("nginx", FIXED_IMAGE).await;
    env.wait_status("nginx", generation, (6, 6, 6), Duration::from_secs(60))
        .await;
    let done = env
        .rollout(&["status", "sp/nginx", "--watch", "--timeout", "30s"])
        .await;
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}{}",
        done.stdout,
        done.stderr
    );
    assert!(done.stdout.contains("Complete"), "{}", done.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_step_waits_for_promotion_and_pause_holds_new_grants() {
    let mut env = Env::start(5, Timings::fast()).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let canary_node = env.nodes()[4].clone();
    let nodes: Api<Node> = Api::all(env.admin.clone());
    nodes
        .patch(
            &canary_node,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"staticpod-puller.openyurt.io/canary": "true"}}}),
            ),
        )
        .await
        .expect("labelling the canary node");
    env.create(controlled(json!(1), json!({"canary": 2}), OLD_IMAGE))
        .await;
    env.start_controller();
    env.start_agents(Settings::patient());

    let (_, new_hash) = env.set_image("nginx", NEW_IMAGE).await;
    let upgraded = |env: &Env| upgraded_to(env, &new_hash);
    env.wait_phase("AwaitingPromotion", Duration::from_secs(30))
        .await;
    let canaries = upgraded(&env);
    assert_eq!(
        canaries.len(),
        2,
        "exactly the canary step upgraded: {canaries:?}"
    );
    assert!(
        canaries.contains(&canary_node),
        "the labelled node goes first: {canaries:?}"
    );
    let status = env.rollout(&["status", "sp/nginx"]).await;
    assert_eq!(
        status.status.code(),
        Some(3),
        "{}{}",
        status.stdout,
        status.stderr
    );
    assert!(
        status.stdout.contains("rollout promote"),
        "{}",
        status.stdout
    );

    // Paused, then promoted: still nothing new starts.
    assert!(env.rollout(&["pause", "sp/nginx"]).await.status.success());
    let promoted = env.rollout(&["promote", "sp/nginx"]).await;
    assert!(
        promoted.stdout.contains(&new_hash),
        "{}{}",
        promoted.stdout,
        promoted.stderr
    );
    env.wait_phase("Paused", Duration::from_secs(10)).await;
    env.holds(
        "no new upgrade while paused",
        Duration::from_secs(2),
        async || {
            let now = upgraded(&env);
            if now.len() == 2 {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        },
    )
    .await;
    assert_eq!(
        env.rollout(&["status", "sp/nginx"]).await.status.code(),
        Some(4),
        "exit 4 while paused"
    );

    assert!(env.rollout(&["resume", "sp/nginx"]).await.status.success());
    let done = env
        .rollout(&["status", "sp/nginx", "--watch", "--timeout", "60s"])
        .await;
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}{}",
        done.stdout,
        done.stderr
    );
    assert!(
        done.stdout.lines().count() >= 2,
        "plain progress lines when not on a terminal: {}",
        done.stdout
    );
    env.wait(
        "every node upgraded and Ready",
        Duration::from_secs(20),
        async || {
            let now = upgraded(&env);
            if now.len() == 5 {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        },
    )
    .await;
}

/// The nodes whose mirror pod runs `hash` and is Ready.
fn upgraded_to(env: &Env, hash: &str) -> Vec<String> {
    env.nodes()
        .into_iter()
        .filter(|n| {
            mirror(env.store(), "nginx", n)
                .is_some_and(|m| m.ready && m.hash.as_deref() == Some(hash))
        })
        .collect()
}

/// `staticpod-puller controller` as a process (what a Deployment replica runs).
fn controller_process(env: &Env, identity: &str) -> tokio::process::Child {
    tokio::process::Command::new(support::binary())
        .args(["--log-level", "warn", "controller", "--kubeconfig"])
        .arg(env.cluster.admin_kubeconfig())
        .args([
            "--identity",
            identity,
            "--lease-namespace",
            "staticpod-system",
            "--lease-duration",
            "2s",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting a controller process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_holds_and_no_grant_is_lost_across_a_controller_failover() {
    let timings = Timings {
        ready: Duration::from_millis(700),
        ..Timings::fast()
    };
    let mut env = Env::start(8, timings).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let (generation, _) = env
        .create(static_pod("nginx", "nginx", json!(2), web(OLD_IMAGE)))
        .await;
    let mut replicas = vec![
        ("controller-a", controller_process(&env, "controller-a")),
        ("controller-b", controller_process(&env, "controller-b")),
    ];
    env.start_agents(Settings::patient());
    env.wait_status("nginx", generation, (8, 8, 0), Duration::from_secs(30))
        .await;

    let (generation, new_hash) = env.set_image("nginx", NEW_IMAGE).await;
    let budget = BudgetWatch::start(&env, "nginx", &new_hash);
    env.wait(
        "the first two nodes upgraded",
        Duration::from_secs(30),
        async || {
            let done = env
                .nodes()
                .iter()
                .filter(|n| {
                    mirror(env.store(), "nginx", n)
                        .is_some_and(|m| m.ready && m.hash.as_deref() == Some(new_hash.as_str()))
                })
                .count();
            if done >= 2 {
                Ok(())
            } else {
                Err(format!("{done} upgraded"))
            }
        },
    )
    .await;
    // Kill the leader (SIGKILL) mid-rollout; the other replica takes over once its Lease
    // expires, from the grants it finds.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(env.admin.clone(), "staticpod-system");
    let leader = leases
        .get("controller.staticpod-system.status.0")
        .await
        .expect("the leader Lease")
        .spec
        .and_then(|s| s.holder_identity)
        .expect("a leader");
    let at = replicas
        .iter()
        .position(|(id, _)| *id == leader)
        .unwrap_or_else(|| panic!("the leader {leader:?} is one of the replicas"));
    let (_, mut killed) = replicas.remove(at);
    killed.kill().await.expect("SIGKILL to the leader");
    env.wait_status("nginx", generation, (8, 8, 8), Duration::from_secs(60))
        .await;
    budget.assert_within(2).await;
    env.wait_grants_finished("nginx").await;
    let survivor = leases
        .get("controller.staticpod-system.status.0")
        .await
        .expect("the leader Lease")
        .spec
        .and_then(|s| s.holder_identity);
    assert_eq!(
        survivor.as_deref(),
        Some(replicas[0].0),
        "the other replica leads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_holding_a_grant_that_never_returns_lets_the_rollout_finish() {
    let mut env = Env::start(4, Timings::fast()).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let (generation, _) = env
        .create(static_pod("nginx", "nginx", json!(1), web(OLD_IMAGE)))
        .await;
    env.start_controller();
    env.start_agents(Settings::patient());
    env.wait_status("nginx", generation, (4, 4, 0), Duration::from_secs(30))
        .await;
    // The first node to get a grant is killed for good right after its grant arrives.
    let (_, new_hash) = env.set_image("nginx", NEW_IMAGE).await;
    let holder = env
        .wait(
            "a node holding the first grant",
            Duration::from_secs(20),
            async || {
                let leases = env.grant_leases("nginx").await?;
                leases
                    .iter()
                    .find_map(|l| l.spec.as_ref()?.holder_identity.clone())
                    .ok_or("no grant yet".to_string())
            },
        )
        .await;
    let mut gone = env.agents.remove(&holder).expect("the holder's agent");
    gone.kill9();
    // Its grant expires (3 s, the controller's clock); its pod decides the rest: if the
    // write happened, the pod restarts on the new hash and counts as upgraded or unavailable.
    env.wait(
        "the other nodes upgraded",
        Duration::from_secs(40),
        async || {
            let behind: Vec<String> = env
                .nodes()
                .into_iter()
                .filter(|n| *n != holder)
                .filter(|n| {
                    !mirror(env.store(), "nginx", n)
                        .is_some_and(|m| m.ready && m.hash.as_deref() == Some(new_hash.as_str()))
                })
                .collect();
            if behind.is_empty() {
                Ok(())
            } else {
                Err(format!("behind: {behind:?}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_finishes_a_grant_it_still_holds_at_once() {
    // The state a kill between "Ready seen" and "grant finished" leaves: the node runs the
    // granted hash, its journal is closed, and its grant is still open.
    let mut env = Env::start(1, Timings::fast()).await;
    let node = env.nodes()[0].clone();
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let (generation, _) = env
        .create(static_pod("nginx", "nginx", json!(1), web(OLD_IMAGE)))
        .await;
    env.start_controller();
    env.start_agent(&node, Settings::patient());
    let (generation2, new_hash) = env.set_image("nginx", NEW_IMAGE).await;
    assert!(generation2 > generation);
    env.wait_status("nginx", generation2, (1, 1, 1), Duration::from_secs(30))
        .await;
    env.wait_grants_finished("nginx").await;
    let mut agent = env.agents.remove(&node).expect("the agent");
    agent.kill9();

    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(env.admin.clone(), "staticpod-system");
    let key = staticpod_puller::desired::ObjectKey {
        kind: staticpod_puller::desired::Kind::StaticPod,
        namespace: "default".into(),
        name: "nginx".into(),
    };
    let name = staticpod_puller::rollout::grant::lease_name(&key, &node);
    let _ = leases.delete(&name, &Default::default()).await;
    let open =
        staticpod_puller::rollout::grant::lease(&key, &node, &new_hash, Duration::from_secs(30));
    leases
        .create(&Default::default(), &open)
        .await
        .expect("the grant left open");

    const FINISHED: &str = "grant of an upgrade already done finished";
    let before = env.log(&node).matches(FINISHED).count();
    let restarted = tokio::time::Instant::now();
    env.start_agent(&node, Settings::patient());
    env.wait(
        "the restarted agent to finish the grant it held",
        Duration::from_secs(10),
        async || {
            let now = env.log(&node).matches(FINISHED).count();
            if now > before {
                Ok(())
            } else {
                Err(format!(
                    "{now} {FINISHED:?} lines, {before} before the restart"
                ))
            }
        },
    )
    .await;
    let took = restarted.elapsed();
    // Well within the grant's 30 s duration: the window moves on at once, not at expiry. The
    // agent's own start-up (its watches' first lists) is most of it.
    assert!(
        took < Duration::from_secs(5),
        "finished {took:?} after the restart"
    );
    println!("grant finished {took:?} after the agent restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_is_sent_mirror_pods_only() {
    let mut env = Env::start(2, Timings::fast()).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let (generation, _) = env
        .create(static_pod("nginx", "nginx", json!(1), web(OLD_IMAGE)))
        .await;
    env.start_controller();
    env.wait_status("nginx", generation, (2, 2, 0), Duration::from_secs(30))
        .await;
    // The in-process controller is the only watcher with the admin's identity.
    let pod_events = || {
        env.cluster
            .api()
            .usage()
            .watch_events_to(|u| u == "admin", |r| r == "pods")
    };
    let before = pod_events();

    // Ordinary pods, as a Deployment would make them: the API server gives each the default
    // service account, so none matches the controller's watch.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(env.admin.clone(), NS);
    const ORDINARY: u64 = 30;
    for i in 0..ORDINARY {
        let pod = serde_json::from_value(json!({
            "metadata": {"name": format!("web-{i}")},
            "spec": {"nodeName": env.nodes()[0], "containers": [{"name": "web", "image": "nginx"}]},
        }))
        .expect("a pod");
        let created = pods
            .create(&Default::default(), &pod)
            .await
            .expect("creating an ordinary pod");
        assert_eq!(
            created.spec.and_then(|s| s.service_account_name).as_deref(),
            Some("default"),
            "the API server defaults an ordinary pod's service account"
        );
    }
    // Then a mirror pod changes (its manifest edited on the node): delivered after the
    // ordinary pods' events, had they matched.
    let node = env.nodes()[1].clone();
    std::fs::write(
        env.manifest(&node, "nginx"),
        super::hand_placed("nginx", NEW_IMAGE),
    )
    .expect("editing the manifest");
    env.wait(
        "the mirror pod's change delivered to the controller",
        Duration::from_secs(20),
        async || {
            let now = pod_events();
            if now > before {
                Ok(())
            } else {
                Err(format!("{now} pod events, {before} before"))
            }
        },
    )
    .await;
    // Let the mirror pod settle; then count.
    env.wait(
        "the edited pod Ready",
        Duration::from_secs(20),
        async || match mirror(env.store(), "nginx", &node) {
            Some(m) if m.ready => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let delivered = pod_events() - before;
    assert!(
        delivered < ORDINARY,
        "the controller was sent {delivered} pod events: the {ORDINARY} ordinary pods' must not be among them"
    );
    println!("pod events to the controller: {delivered} for one mirror pod's change");
}

/// A grant the API server failed to create is asked for again, though nothing else changes:
/// the controller visits an object again after a failed grant write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_the_api_server_failed_to_create_is_created_again() {
    let mut env = Env::start(1, Timings::fast()).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let (generation, old_hash) = env
        .create(static_pod("nginx", "nginx", json!(1), web(OLD_IMAGE)))
        .await;
    env.start_controller();
    env.start_agents(Settings::patient());
    env.wait_agents_saw(&old_hash).await;
    env.wait_status("nginx", generation, (1, 1, 0), Duration::from_secs(30))
        .await;
    env.wait_grants_finished("nginx").await;

    let faults = env.cluster.api().faults().clone();
    faults.set_internal_errors(true);
    faults.set_error_rate(staticpod_puller::sim::apiserver::Verb::Create, 1.0);
    let (generation, new_hash) = env.set_image("nginx", NEW_IMAGE).await;
    // The controller has visited the new template (its status says so) and no grant exists:
    // its create was refused.
    env.wait_status("nginx", generation, (1, 1, 0), Duration::from_secs(30))
        .await;
    let grants = env.grant_leases("nginx").await.expect("listing grants");
    assert!(
        grants.is_empty(),
        "every create fails, so no grant: {grants:?}"
    );
    faults.clear();
    env.wait(
        "the node upgraded once creates succeed again",
        Duration::from_secs(20),
        async || env.all_mirrors("nginx", |m| m.ready && m.hash.as_deref() == Some(&new_hash)),
    )
    .await;
}
