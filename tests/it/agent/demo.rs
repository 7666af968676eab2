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
        // One node at a time: each of the two later grants follows a finished one.
        (
            &["demo", "--max-unavailable", "1", "--idle-window", "0s"][..],
            "next handed out, 2 handovers)",
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
        // Agents as tasks pre-pull through their nodes' runtimes in-process (no socket).
        (
            &[
                "demo",
                "--agents",
                "tasks",
                "--nodes",
                "6",
                "--max-unavailable",
                "2",
                "--pull-delay",
                "4s",
                "--idle-window",
                "0s",
            ][..],
            "images pulled before the upgrade: PodImageReady=True seen on 6/6 nodes",
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

/// The processes whose parent is `pid`, with their state letter (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<(u32, char)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if fields.next().and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            found.push((child, state));
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let (_, rest) = s.rsplit_once(')')?;
            rest.split_whitespace()
                .next()
                .map(|st| st != "Z" && st != "X")
        })
        .unwrap_or(false)
}

#[test]
fn the_demo_s_agents_and_controller_die_with_it_when_it_is_sent_sigterm() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // A slow pull keeps the rollout (and the demo) going long enough to kill it mid-way.
    let mut demo = Command::new(support::binary())
        .args([
            "--log-level",
            "warn",
            "demo",
            "--pull-delay",
            "60s",
            "--dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting the demo");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // Three agents and the controller.
    let children = loop {
        let children: Vec<u32> = children_of(demo.id()).into_iter().map(|(p, _)| p).collect();
        if children.len() >= 4 {
            break children;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected the demo to start 3 agents and the controller; saw children {children:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let status = Command::new("kill")
        .args(["-TERM", &demo.id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -TERM the demo");
    demo.wait().expect("reaping the demo");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left: Vec<u32> = children.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            for pid in &left {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            panic!("the demo's children {left:?} outlived it by 10 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
