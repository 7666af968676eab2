//! The `demo` subcommand: the seed scenario, the rollback, and the OTA strategy, end to end.

use std::process::Command;

use crate::support;

#[test]
fn demo_strategy_ota_upgrades_only_the_node_asked_through_its_local_api() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = Command::new(support::binary())
        .args(["--log-level", "warn", "demo", "--strategy", "ota", "--dir"])
        .arg(dir.path())
        .output()
        .expect("running the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo --strategy ota failed: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "every node announces PodNeedUpgrade=True",
        "curl -X POST http://127.0.0.1:",
        "/openyurt.io/v1/namespaces/default/pods/nginx-edge-node-2/upgrade",
        "200 Start updating pod default/nginx-edge-node-2",
        "== OTA: only edge-node-2 runs nginx:1.19.2",
    ] {
        assert!(
            stdout.contains(expected),
            "expected {expected:?} in:\n{stdout}"
        );
    }
}
#[test]
fn demo_plays_the_seed_scenario_and_the_rollback() {
    for (args, expected) in [
        (
            &["demo", "--idle-window", "2s"][..],
            "== rollout complete: 3/3/3 on nginx:1.19.2",
        ),
        (
            &[
                "demo",
                "--bad-image",
                "--progress-deadline",
                "2s",
                "--idle-window",
                "0s",
            ][..],
            "== rollout halted: 3 of 3 nodes rolled",
        ),
    ] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let out = Command::new(support::binary())
            .args(["--log-level", "warn"])
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .output()
            .expect("running the demo");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(expected),
            "{args:?}: expected {expected:?}; {:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
