//! The kill-point campaign: an agent killed (SIGKILL) at each step of an upgrade it holds a
//! grant for, and restarted at once. Whatever the step, the restarted agent takes its grant up
//! at once (finishes the upgrade and records the outcome, or starts the upgrade again with
//! it), so the next node's grant follows within a second or so of the restart, never after
//! the grant's 30 s expiry; nothing is written twice, no temp file is left, and the window
//! is never exceeded.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::json;
use staticpod_puller::kill_point::KillPoint;
use staticpod_puller::manifest::hash_of_manifest;
use staticpod_puller::rollout::grant::{Grant, NODE_ANNOTATION};
use staticpod_puller::sim::kubelet::Timings;
use staticpod_puller::sim::resource::ResourceKey;
use staticpod_puller::sim::selector::Selectors;
use staticpod_puller::sim::store::Store;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::env::{Env, Settings};
use super::watch::{BudgetWatch, DirWatch, Version, file_hash, listing, mirror};
use super::{NEW_IMAGE, OLD_IMAGE, hand_placed, static_pod, web};

/// Long enough that a rollout waiting for a grant to expire could not pass for a prompt one.
const GRANT_DURATION: Duration = Duration::from_secs(30);

/// When each node's grant of `hash` was created (its `acquireTime`), sampled from the store
/// every few milliseconds: finished grants are deleted soon after.
struct GrantTimes {
    task: JoinHandle<()>,
    seen: Arc<Mutex<BTreeMap<String, SystemTime>>>,
}

impl GrantTimes {
    fn start(store: Arc<Store>, hash: &str) -> GrantTimes {
        let seen: Arc<Mutex<BTreeMap<String, SystemTime>>> = Arc::default();
        let hash = hash.to_string();
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                let leases = ResourceKey::new("coordination.k8s.io", "leases");
                loop {
                    let (items, _) = store
                        .list(&leases, Some("staticpod-system"), &Selectors::default())
                        .expect("listing Leases");
                    for value in items {
                        let Ok(lease) = serde_json::from_value::<
                            k8s_openapi::api::coordination::v1::Lease,
                        >((*value).clone()) else {
                            continue;
                        };
                        let Some(grant) = Grant::from_lease(&lease) else {
                            continue;
                        };
                        let node = lease
                            .metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(NODE_ANNOTATION).cloned());
                        let acquired = lease.spec.as_ref().and_then(|s| s.acquire_time.clone());
                        if let (true, Some(node), Some(at)) = (grant.hash == hash, node, acquired) {
                            let at = SystemTime::UNIX_EPOCH
                                + Duration::from_micros(at.0.as_microsecond().max(0) as u64);
                            seen.lock().unwrap().entry(node).or_insert(at);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        GrantTimes { task, seen }
    }

    fn of(&self, node: &str) -> Option<SystemTime> {
        self.seen.lock().unwrap().get(node).copied()
    }
}

impl Drop for GrantTimes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Signed milliseconds from `from` to `to`.
fn millis_between(from: SystemTime, to: SystemTime) -> i64 {
    match to.duration_since(from) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// How many times the file of `node` changed to a version with `hash`.
fn writes_of(history: &[Version], env: &Env, node: &str, hash: &str) -> usize {
    let file = env.manifest(node, "nginx");
    let mut last_had = false;
    let mut writes = 0;
    for v in history.iter().filter(|v| v.file == file) {
        let has = v.bytes.as_deref().and_then(hash_of_manifest).as_deref() == Some(hash);
        if has && !last_had {
            writes += 1;
        }
        last_had = has;
    }
    writes
}

/// What a kill at `point` leaves on the node: proof the agent died where it was meant to.
fn assert_left_behind(env: &Env, node: &str, point: KillPoint, new_hash: &str) {
    let journaled = env.state_dir(node).join("journal-nginx.json").exists();
    let written = file_hash(&env.manifest(node, "nginx")).as_deref() == Some(new_hash);
    let temp_files = listing(&env.manifest_dir(node))
        .into_keys()
        .filter(|n| n.starts_with(".nginx.yaml.") && n.ends_with(".tmp"))
        .count();
    let expected = match point {
        KillPoint::Granted => (false, false, 0),
        KillPoint::Journaled => (true, false, 0),
        KillPoint::MidWrite => (true, false, 1),
        KillPoint::Written | KillPoint::Ready | KillPoint::OutcomeRecorded => (true, true, 0),
        KillPoint::JournalClosed => (false, true, 0),
    };
    assert_eq!(
        (journaled, written, temp_files),
        expected,
        "killed at {} on {node}: (journal open, new manifest written, temp files in the manifest directory)",
        point.name()
    );
}

/// The first agent (other than those in `killed`) to have exited, and how.
async fn wait_killed(env: &mut Env, killed: &[String], point: KillPoint) -> (String, ExitStatus) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (node, agent) in env.agents.iter_mut() {
            if killed.contains(node) {
                continue;
            }
            if let Some(status) = agent.child.try_wait().expect("polling an agent") {
                return (node.clone(), status);
            }
        }
        assert!(
            Instant::now() < deadline,
            "expected an agent killed at {} within 30s (killed so far: {killed:?})\n{}",
            point.name(),
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Roll the seed's new image out over two nodes, one at a time, with both agents armed to
/// die at `point`; restart each at once, unarmed, and check what the issue asks of a restart.
async fn campaign(point: KillPoint) {
    let timings = Timings {
        ready: Duration::from_millis(300),
        ..Timings::fast()
    };
    let settings = Settings {
        lease_duration: GRANT_DURATION,
        ..Settings::patient()
    };
    let mut env = Env::start(2, timings).await;
    let nodes = env.nodes();
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let (generation, old_hash) = env
        .create(static_pod("nginx", "nginx", json!(1), web(OLD_IMAGE)))
        .await;
    env.start_controller_granting(GRANT_DURATION);
    for node in &nodes {
        let config = env.write_config(node, settings, "run");
        let agent = env.spawn_agent_env(node, &config, &[(KillPoint::ENV, point.name())]);
        env.agents.insert(node.clone(), agent);
    }
    env.wait_agents_saw(&old_hash).await;
    env.wait_status("nginx", generation, (2, 2, 0), Duration::from_secs(30))
        .await;
    env.wait_grants_finished("nginx").await;

    let dirs = nodes.iter().map(|n| env.manifest_dir(n)).collect();
    let watch = DirWatch::start(dirs, "nginx.yaml");
    let (_, new_hash) = env.set_image("nginx", NEW_IMAGE).await;
    let budget = BudgetWatch::start(&env, "nginx", &new_hash);
    let grants = GrantTimes::start(env.cluster.store().clone(), &new_hash);

    let mut killed = Vec::new();
    let mut next_grant_after_restart = None;
    for round in 0..2 {
        let (node, status) = wait_killed(&mut env, &killed, point).await;
        assert_eq!(
            status.signal(),
            Some(9),
            "{node}'s agent should have died of SIGKILL at {}; it exited {status:?}\n{}",
            point.name(),
            env.log(&node)
        );
        assert!(
            env.log(&node).contains("kill point reached"),
            "{node}'s agent says where it was killed\n{}",
            env.log(&node)
        );
        assert_left_behind(&env, &node, point, &new_hash);
        killed.push(node.clone());
        let restarted = SystemTime::now();
        env.start_agent(&node, settings);
        if round == 0 {
            let other = nodes.iter().find(|n| **n != node).expect("two nodes");
            let granted = env
                .wait(
                    &format!("{other}'s grant after {node} restarted"),
                    Duration::from_secs(20),
                    async || grants.of(other).ok_or_else(|| "not yet".to_string()),
                )
                .await;
            next_grant_after_restart = Some(millis_between(restarted, granted));
        }
    }
    env.wait(
        "both nodes Ready on the new hash",
        Duration::from_secs(30),
        async || env.all_mirrors("nginx", |m| m.ready && m.hash.as_deref() == Some(&new_hash)),
    )
    .await;
    env.wait_grants_finished("nginx").await;
    env.wait(
        "the restarted agents to close their journals",
        Duration::from_secs(10),
        async || {
            let open: Vec<_> = nodes
                .iter()
                .map(|n| env.state_dir(n).join("journal-nginx.json"))
                .filter(|j| j.exists())
                .collect();
            if open.is_empty() {
                Ok(())
            } else {
                Err(format!("{open:?}"))
            }
        },
    )
    .await;
    budget.assert_within(1).await;
    let history = watch.finish().await;

    let delay = next_grant_after_restart.expect("measured in the first round");
    println!(
        "killed at {}: the next node's grant {delay} ms after the restart (negative: before it)",
        point.name()
    );
    assert!(
        delay < (GRANT_DURATION / 3).as_millis() as i64,
        "killed at {}: the next grant came {delay} ms after the restart; a restarted agent takes \
         its grant up at once, it does not wait for the grant's {GRANT_DURATION:?} expiry",
        point.name()
    );
    let old = hand_placed("nginx", OLD_IMAGE);
    for node in &nodes {
        assert_eq!(
            writes_of(&history, &env, node, &new_hash),
            1,
            "killed at {}: {node}'s manifest is written with the new hash once; saw {history:?}",
            point.name()
        );
        for v in history
            .iter()
            .filter(|v| v.file == env.manifest(node, "nginx"))
        {
            let bytes = v
                .bytes
                .as_deref()
                .unwrap_or_else(|| panic!("{node}'s manifest was missing at {:?}", v.at));
            assert!(
                bytes == old.as_bytes()
                    || hash_of_manifest(bytes).as_deref() == Some(new_hash.as_str()),
                "only the old or the new revision, whole: {}",
                String::from_utf8_lossy(bytes)
            );
        }
        let names: Vec<String> = listing(&env.manifest_dir(node)).into_keys().collect();
        assert_eq!(
            names,
            ["nginx.yaml"],
            "killed at {}: nothing but the manifest in {node}'s manifest directory",
            point.name()
        );
        // The restarted agent may be writing a file of its own (its metrics address) right
        // now: only temp files of other processes are left behind.
        let live = format!(".{}.tmp", env.agents[node].child.id());
        let state: Vec<String> = listing(&env.state_dir(node))
            .into_keys()
            .filter(|n| (n.ends_with(".tmp") && !n.ends_with(&live)) || n.starts_with("journal-"))
            .collect();
        assert!(
            state.is_empty(),
            "killed at {}: no temp file or open journal left in {node}'s state directory: {state:?}",
            point.name()
        );
        assert!(
            mirror(env.store(), "nginx", node)
                .is_some_and(|m| m.ready && m.hash.as_deref() == Some(&new_hash))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holding_a_grant_before_anything_is_written() {
    campaign(KillPoint::Granted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_journaling_before_the_write() {
    campaign(KillPoint::Journaled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_write_with_the_temp_file_in_the_manifest_directory() {
    campaign(KillPoint::MidWrite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_write_before_ready() {
    campaign(KillPoint::Written).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_ready_before_recording_the_outcome() {
    campaign(KillPoint::Ready).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_recording_the_outcome_on_the_grant() {
    campaign(KillPoint::OutcomeRecorded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_closing_the_journal() {
    campaign(KillPoint::JournalClosed).await;
}

/// A rollback's outcome survives a kill between recording it on the grant and closing the
/// journal: the grant still says rolled back, the broken hash is not written again, and the
/// restarted agent reports the rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_killed_before_its_journal_closes_is_not_tried_again() {
    let settings = Settings {
        lease_duration: GRANT_DURATION,
        ..Settings::deadline(Duration::from_secs(2))
    };
    let mut env = Env::start(1, Timings::fast()).await;
    let node = env.nodes()[0].clone();
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let (generation, _) = env
        .create(static_pod("nginx", "nginx", json!(1), web(OLD_IMAGE)))
        .await;
    env.start_controller_granting(GRANT_DURATION);
    let config = env.write_config(&node, settings, "run");
    let agent = env.spawn_agent_env(
        &node,
        &config,
        &[(KillPoint::ENV, KillPoint::OutcomeRecorded.name())],
    );
    env.agents.insert(node.clone(), agent);
    env.wait_status("nginx", generation, (1, 1, 0), Duration::from_secs(30))
        .await;
    env.wait_grants_finished("nginx").await;

    let watch = DirWatch::start(vec![env.manifest_dir(&node)], "nginx.yaml");
    env.cluster.set_broken_image(NEW_IMAGE, true);
    let (_, new_hash) = env.set_image("nginx", NEW_IMAGE).await;
    let (_, status) = wait_killed(&mut env, &[], KillPoint::OutcomeRecorded).await;
    assert_eq!(status.signal(), Some(9), "{}", env.log(&node));
    let journal = env.state_dir(&node).join("journal-nginx.json");
    assert!(
        journal.exists(),
        "killed before the journal closed: the entry is still there"
    );
    env.start_agent(&node, settings);
    env.wait_event("RolledBack", &new_hash).await;
    env.wait(
        "the journal closed by the restarted agent",
        Duration::from_secs(10),
        async || match journal.exists() {
            true => Err("still there".to_string()),
            false => Ok(()),
        },
    )
    .await;
    let results: Vec<String> = env
        .grant_leases("nginx")
        .await
        .expect("listing grants")
        .iter()
        .filter_map(Grant::from_lease)
        .filter(|g| g.hash == new_hash)
        .filter_map(|g| g.result)
        .collect();
    assert!(
        results.len() == 1 && results[0].starts_with("rolled-back"),
        "the grant keeps the rollback as its outcome; got {results:?}"
    );
    // Some time for a wrong retry to show.
    env.holds(
        "the broken hash is not written again",
        Duration::from_secs(3),
        async || {
            let history = watch.history();
            match writes_of(&history, &env, &node, &new_hash) {
                1 => Ok(()),
                n => Err(format!("written {n} times: {history:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(env.manifest(&node, "nginx")).expect("the manifest"),
        hand_placed("nginx", OLD_IMAGE),
        "the hand-placed manifest stays restored"
    );
    let _ = watch.finish().await;
}
