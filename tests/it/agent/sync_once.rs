//! `sync --once`: one pass to convergence, exiting zero, or non-zero with the reason when the
//! upgrade is rolled back.

use std::time::Duration;

use serde_json::json;
use staticpod_puller::sim::kubelet::Timings;
use tokio::time::Instant;

use super::env::{Env, Settings};
use super::watch::{Mirror, file_hash, mirror};
use super::{FIXED_IMAGE, NEW_IMAGE, OLD_IMAGE, static_pod, web};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_exits_zero_when_converged_and_non_zero_with_the_reason_when_rolled_back() {
    let mut env = Env::start(1, Timings::fast()).await;
    // Rolling upgrades go ahead on the controller's grants.
    env.start_controller();
    let node = env.nodes()[0].clone();
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let (_, new_hash) = env
        .create(static_pod("nginx", "nginx", json!(1), web(NEW_IMAGE)))
        .await;

    let out = env
        .sync_once(&node, Settings::patient(), &["--timeout", "30s"])
        .await;
    assert!(
        out.status.success() && out.stdout.contains(&format!("node {node} converged")),
        "expected exit 0 and \"node {node} converged\"; got {:?}, stdout: {}, stderr: {}",
        out.status,
        out.stdout,
        out.stderr
    );
    assert_eq!(
        file_hash(&env.manifest(&node, "nginx")).as_deref(),
        Some(new_hash.as_str()),
        "sync --once upgraded the manifest"
    );
    assert_eq!(
        mirror(env.store(), "nginx", &node),
        Some(Mirror {
            hash: Some(new_hash.clone()),
            ready: true
        }),
        "converged means the new pod is Ready"
    );
    let upgraded = std::fs::read(env.manifest(&node, "nginx")).expect("the manifest");

    env.cluster.set_broken_image(FIXED_IMAGE, true);
    let (_, bad_hash) = env.set_image("nginx", FIXED_IMAGE).await;
    // A rolled-back hash will not change by waiting: sync --once says so at once instead of
    // waiting out its --timeout.
    let started = Instant::now();
    let out = env
        .sync_once(
            &node,
            Settings::deadline(Duration::from_millis(1500)),
            &["--timeout", "120s"],
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "sync --once waited {:?} on a held-back hash",
        started.elapsed()
    );
    assert!(
        !out.status.success()
            && out
                .stderr
                .contains(&format!("{bad_hash} was rolled back here")),
        "expected a non-zero exit saying \"{bad_hash} was rolled back here\"; got {:?}, stderr: {}",
        out.status,
        out.stderr
    );
    assert_eq!(
        std::fs::read(env.manifest(&node, "nginx")).expect("the manifest"),
        upgraded,
        "the previous manifest is restored"
    );
}
