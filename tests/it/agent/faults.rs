//! API faults: injected errors, dropped watches and a partitioned node, with the budget held
//! throughout.

use std::time::Duration;

use serde_json::json;
use staticpod_puller::sim::kubelet::Timings;
use tokio::time::Instant;

use super::env::{Env, Settings};
use super::watch::{BudgetWatch, Mirror, file_hash, mirror};
use super::{NEW_IMAGE, OLD_IMAGE, static_pod, web};

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
    env.wait_grants_finished_within("nginx", Duration::from_secs(60))
        .await;
}
