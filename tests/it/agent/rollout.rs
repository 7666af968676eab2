//! Rollouts: the seed scenario (hand-placed files adopted, then every node upgraded), the
//! maxUnavailable budget, a broken image rolled back, a template superseding an upgrade, and a
//! NotReady node.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use staticpod_puller::manifest::parse_manifest;
use staticpod_puller::rollout::grant::RESULT_ANNOTATION;
use staticpod_puller::sim::kubelet::Timings;

use super::env::{Env, Settings};
use super::watch::{
    BudgetWatch, DirWatch, Mirror, Stamp, file_hash, listing, mirror, stamp, write_and_restore,
};
use super::{FIXED_IMAGE, NEW_IMAGE, OLD_IMAGE, hand_placed, static_pod, web};

// --- The seed scenario --------------------------------------------------------------------

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
    // The agents have planned with the object; equal content is never written. A hand-placed
    // file carries no hash, so the controller cannot tell it is current: it grants, and each
    // node finishes its grant as `current` without writing.
    env.wait_agents_saw(&old_hash).await;
    env.holds(
        "the hand-placed files untouched (same inode and mtime)",
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
            Ok(())
        },
    )
    .await;
    env.wait_grants_finished("nginx").await;
    for lease in env.grant_leases("nginx").await.expect("listing grants") {
        let result = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RESULT_ANNOTATION).cloned());
        assert_eq!(
            result.as_deref(),
            Some("current"),
            "a node already running the template finishes its grant as current: {lease:?}"
        );
    }

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
    env.wait_grants_finished("nginx").await;

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

// --- The budget holds ---------------------------------------------------------------------

/// Roll out on 10 nodes with slow readiness while sampling files and mirror pods; at no sample
/// may more than `budget` members be upgrading (file carries the new hash, mirror pod not yet
/// Ready with it).
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
    env.wait_grants_finished("nginx").await;
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

// --- Broken image → rollback --------------------------------------------------------------

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
    env.wait_grants_finished("nginx").await;
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
    env.wait_grants_finished("nginx").await;
}

// --- A NotReady node ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_ready_node_is_skipped_by_the_others_and_upgraded_when_it_comes_back() {
    let mut env = Env::start(3, Timings::fast()).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    // The NotReady node's pod is unavailable and takes one unit of the window: a budget of 2
    // leaves one for the others, which upgrade one at a time.
    let (generation, _) = env
        .create(static_pod("nginx", "nginx", json!(2), web(OLD_IMAGE)))
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
