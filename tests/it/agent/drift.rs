//! Drift: a managed manifest edited or removed on the node by hand is restored (`drift.mode:
//! restore`) or left and reported (`report`); editors' temporary files change nothing.

use std::time::Duration;

use serde_json::json;
use staticpod_puller::sim::kubelet::Timings;

use super::env::{Env, Settings};
use super::watch::{file_hash, stamp};
use super::{NEW_IMAGE, OLD_IMAGE, static_pod, web};

/// Two nodes on the new revision; the first agent restores hand edits, the second reports them.
async fn upgraded_pair() -> (Env, String, String, String) {
    let mut env = Env::start(2, Timings::fast()).await;
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    env.create(static_pod("nginx", "nginx", json!(2), web(OLD_IMAGE)))
        .await;
    env.start_controller();
    let nodes = env.nodes();
    let (restoring, reporting) = (nodes[0].clone(), nodes[1].clone());
    env.start_agent(&restoring, Settings::patient());
    env.start_agent(
        &reporting,
        Settings {
            drift: "report",
            ..Settings::patient()
        },
    );
    let (generation, new_hash) = env.set_image("nginx", NEW_IMAGE).await;
    env.wait_status("nginx", generation, (2, 2, 2), Duration::from_secs(30))
        .await;
    (env, restoring, reporting, new_hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edit_is_restored_and_editor_temp_files_change_nothing() {
    let (env, node, _, new_hash) = upgraded_pair().await;
    let file = env.manifest(&node, "nginx");
    let desired = std::fs::read(&file).expect("reading the managed manifest");

    // Editors' swap and backup files beside it: no write, no event.
    let before = stamp(&file);
    let dir = env.manifest_dir(&node);
    std::fs::write(dir.join(".nginx.yaml.swp"), b"swap").expect("writing a swap file");
    std::fs::write(dir.join("nginx.yaml~"), &desired).expect("writing a backup file");
    env.holds(
        "the managed manifest untouched while editor files come and go",
        Duration::from_secs(2),
        async || match stamp(&file) {
            s if s == before => Ok(()),
            s => Err(format!("{s:?} (was {before:?})")),
        },
    )
    .await;

    // A hand edit in place (as `vi` with backupcopy=yes does): put back.
    let edited = String::from_utf8_lossy(&desired).replace(NEW_IMAGE, "nginx:hand-edited");
    std::fs::write(&file, edited).expect("editing the manifest by hand");
    env.wait(
        "the hand edit undone",
        Duration::from_secs(10),
        async || match std::fs::read(&file) {
            Ok(b) if b == desired => Ok(()),
            other => Err(format!(
                "{:?}",
                other.map(|b| String::from_utf8_lossy(&b).into_owned())
            )),
        },
    )
    .await;
    assert_eq!(file_hash(&file).as_deref(), Some(new_hash.as_str()));
    let message = env.wait_event("DriftRestored", "edited on the node").await;
    assert!(
        message.contains(&node) && message.contains("edited on the node"),
        "the event names the node and what happened: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_drift_mode_report_a_hand_edit_is_left_and_reported() {
    let (env, _, node, _) = upgraded_pair().await;
    let file = env.manifest(&node, "nginx");
    let desired = std::fs::read_to_string(&file).expect("reading the managed manifest");
    let edited = desired.replace(NEW_IMAGE, "nginx:hand-edited");
    std::fs::write(&file, &edited).expect("editing the manifest by hand");
    let message = env.wait_event("DriftDetected", "left as is").await;
    assert!(
        message.contains(&node) && message.contains("left as is"),
        "the event names the node and says the edit was kept: {message}"
    );
    env.holds(
        "the hand edit kept (drift.mode: report)",
        Duration::from_secs(2),
        async || match std::fs::read_to_string(&file) {
            Ok(t) if t == edited => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_manifest_is_reported_and_the_node_leaves_membership() {
    let (env, node, _, _) = upgraded_pair().await;
    let file = env.manifest(&node, "nginx");
    std::fs::remove_file(&file).expect("removing the managed manifest");
    let message = env.wait_event("DriftDetected", "removed on the node").await;
    assert!(
        message.contains(&node),
        "the event names the node: {message}"
    );
    // The agent never creates a member's file: the node is simply no longer a member.
    env.holds(
        "the removed manifest stays removed",
        Duration::from_secs(2),
        async || {
            if file.exists() {
                Err("recreated".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await;
    let api = env.static_pods();
    env.wait(
        "the status counting one member",
        Duration::from_secs(20),
        async || {
            let sp = api.get("nginx").await.map_err(|e| e.to_string())?;
            match sp.status.map(|s| s.total_number) {
                Some(1) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}
