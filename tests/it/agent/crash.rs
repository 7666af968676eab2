//! One agent per state directory, and an agent killed (`kill -9`) in the middle of an upgrade
//! and restarted: it completes the upgrade, or rolls it back, from its journal.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use staticpod_puller::manifest::{hash_of_manifest, parse_manifest};
use staticpod_puller::sim::kubelet::Timings;
use tokio::time::Instant;

use super::env::{Env, Settings, run_to_end};
use super::watch::{DirWatch, Version, file_hash, mirror, stamp, write_and_restore};
use super::{NEW_IMAGE, OLD_IMAGE, hand_placed, static_pod, web};
use crate::support;

// --- One agent per state directory --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_state_directory_exits_saying_who_holds_the_lock() {
    let mut env = Env::start(1, Timings::fast()).await;
    let node = env.nodes()[0].clone();
    env.start_agent(&node, Settings::patient());
    let pid = env.agents[&node].child.id().to_string();
    let lock = env.state_dir(&node).join("lock");
    env.wait(
        "the first agent to hold the lock (its pid in the lock file)",
        Duration::from_secs(10),
        async || match std::fs::read_to_string(&lock) {
            Ok(text) if text.trim() == pid => Ok(()),
            other => Err(format!("{other:?}, want {pid}")),
        },
    )
    .await;

    let config = env.write_config(&node, Settings::patient(), "second");
    let mut second = tokio::process::Command::new(support::binary());
    second
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = run_to_end(second, Duration::from_secs(20)).await;
    assert!(
        !out.status.success() && out.stderr.contains("holds the lock") && out.stderr.contains(&pid),
        "expected the second `run` to exit non-zero naming the lock holder (pid {pid}); got {:?}, stderr: {}",
        out.status,
        out.stderr
    );

    let out = env.sync_once(&node, Settings::patient(), &[]).await;
    assert!(
        !out.status.success() && out.stderr.contains("holds the lock"),
        "expected `sync --once` beside a running agent to exit non-zero (holds the lock); got {:?}, stderr: {}",
        out.status,
        out.stderr
    );
    let agent = env.agents.get_mut(&node).expect("the first agent");
    assert!(
        agent
            .child
            .try_wait()
            .expect("polling the first agent")
            .is_none(),
        "the first agent keeps running\n{}",
        env.logs()
    );
}

// --- kill -9 in the middle of an upgrade --------------------------------------------------

/// Start an upgrade on one node with slow readiness, `kill -9` its agent right after the write
/// (before Ready), restart it, and return what the manifest directory went through.
async fn kill_after_write(broken: bool) -> (Env, String, String, DirWatch) {
    let timings = Timings {
        ready: Duration::from_millis(2500),
        ..Timings::fast()
    };
    let settings = Settings {
        progress_deadline: if broken {
            Duration::from_secs(4)
        } else {
            Duration::from_secs(20)
        },
        ..Settings::patient()
    };
    let mut env = Env::start(1, timings).await;
    let node = env.nodes()[0].clone();
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let (_, old_hash) = env
        .create(static_pod("nginx", "nginx", json!(1), web(OLD_IMAGE)))
        .await;
    env.start_controller();
    env.start_agent(&node, settings);
    env.wait_agents_saw(&old_hash).await;

    let path = env.manifest(&node, "nginx");
    let watch = DirWatch::start(vec![env.manifest_dir(&node)], "nginx.yaml");
    if broken {
        env.cluster.set_broken_image(NEW_IMAGE, true);
    }
    let (_, new_hash) = env.set_image("nginx", NEW_IMAGE).await;
    // Detect the write as closely as possible, then kill at once.
    let deadline = Instant::now() + Duration::from_secs(20);
    while file_hash(&path).as_deref() != Some(new_hash.as_str()) {
        assert!(
            Instant::now() < deadline,
            "expected the agent to write {new_hash} within 20s\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let status = env.agents.get_mut(&node).expect("the agent").kill9();
    let at_kill = mirror(env.store(), "nginx", &node);
    assert!(
        !at_kill
            .as_ref()
            .is_some_and(|m| m.ready && m.hash.as_deref() == Some(&new_hash)),
        "the kill must land before the new pod is Ready; mirror pod was {at_kill:?}"
    );
    let journal = env.state_dir(&node).join("journal-nginx.json");
    assert!(
        journal.exists(),
        "killed mid-upgrade ({status}): expected the journal entry {}",
        journal.display()
    );
    let written = stamp(&path);

    env.start_agent(&node, settings);
    env.wait(
        "the restarted agent to end the journaled upgrade",
        settings.progress_deadline + Duration::from_secs(10),
        async || {
            if journal.exists() {
                Err(format!("{} still there", journal.display()))
            } else {
                Ok(())
            }
        },
    )
    .await;
    if !broken {
        assert_eq!(
            stamp(&path),
            written,
            "the restarted agent finishes without writing the manifest again"
        );
    }
    (env, node, new_hash, watch)
}

/// Every version seen parses, and is either the hand-placed one or the new revision.
fn assert_only_old_or_new(history: &[Version], new_hash: &str) {
    let old = hand_placed("nginx", OLD_IMAGE);
    for v in history {
        let name = v.file.file_name().unwrap_or_default().to_string_lossy();
        assert_eq!(
            name, "nginx.yaml",
            "no other file may appear in the manifest directory; saw {v:?}"
        );
        let bytes = v
            .bytes
            .as_deref()
            .unwrap_or_else(|| panic!("the manifest was missing at {:?}", v.at));
        parse_manifest(bytes).unwrap_or_else(|e| {
            panic!(
                "every version must parse; {e}: {}",
                String::from_utf8_lossy(bytes)
            )
        });
        let is_old = bytes == old.as_bytes();
        let is_new = hash_of_manifest(bytes).as_deref() == Some(new_hash);
        assert!(
            is_old || is_new,
            "expected the old or the new revision; saw {}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_after_its_write_completes_the_upgrade_when_restarted() {
    let (env, node, new_hash, watch) = kill_after_write(false).await;
    env.wait("the new pod Ready", Duration::from_secs(20), async || {
        env.all_mirrors("nginx", |m| m.ready && m.hash.as_deref() == Some(&new_hash))
    })
    .await;
    let message = env.wait_event("UpgradeSucceeded", &new_hash).await;
    assert!(message.contains(&node), "{message}");
    env.wait_grants_finished("nginx").await;
    let history = watch.finish().await;
    assert_only_old_or_new(&history, &new_hash);
    assert!(
        history
            .iter()
            .any(|v| v.bytes.as_deref().and_then(hash_of_manifest).as_deref() == Some(&new_hash)),
        "the watcher saw the new revision: {history:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_after_writing_a_broken_image_rolls_back_when_restarted() {
    let (env, node, new_hash, watch) = kill_after_write(true).await;
    let path = env.manifest(&node, "nginx");
    let history = watch.finish().await;
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(&path).expect("the manifest")),
        hand_placed("nginx", OLD_IMAGE),
        "expected the hand-placed manifest restored after the rollback"
    );
    // The Event follows the journal's close (the outcome is recorded first).
    let message = env.wait_event("RolledBack", &new_hash).await;
    assert!(message.contains(&node), "{message}");
    let (written, restored) = write_and_restore(&history, &path, &new_hash)
        .unwrap_or_else(|| panic!("expected {new_hash} written then restored; saw {history:?}"));
    // The journal keeps the start time in whole seconds of wall clock: allow a second.
    let took = restored - written;
    assert!(
        took + Duration::from_millis(1200) >= Duration::from_secs(4)
            && took <= Duration::from_secs(4 + 3),
        "the deadline (4s) holds across the restart: rolled back {took:?} after the write"
    );
    env.wait_grants_finished("nginx").await;
    assert_only_old_or_new(&history, &new_hash);
}
