//! The node-local API as YurtHub serves it (answers, refusals, the token off loopback), the
//! CLI talking to it over a unix socket, and the agent's metrics endpoint.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use staticpod_puller::sim::kubelet::Timings;

use super::env::{AgentProc, Env, Settings};
use super::ota::{call, ota_static_pod, upgrade_path, wait_agent_sees_need, wait_phase};
use super::watch::file_hash;
use super::{NEW_IMAGE, NS, OLD_IMAGE, hand_placed, static_pod, web};
use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_api_answers_like_yurthub() {
    const BROKEN: &str = "nginx:never-ready";
    let mut env = Env::start(1, Timings::fast()).await;
    env.cluster.set_broken_image(BROKEN, true);
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let node = env.nodes()[0].clone();
    // A static pod no object manages.
    std::fs::write(
        env.manifest(&node, "other"),
        hand_placed("other", OLD_IMAGE),
    )
    .expect("placing other.yaml");
    env.create(ota_static_pod(OLD_IMAGE)).await;
    env.start_controller();
    env.start_agents(Settings::deadline(Duration::from_secs(3)));
    env.wait_need_upgrade(&node, "False").await;
    let api = env.local_api(&node).await;
    let pod = format!("nginx-{node}");

    // Current: nothing to upgrade.
    let (status, body) = call(&api, "POST", &upgrade_path(&pod)).await;
    assert_eq!(status, 403, "current pod: {body}");
    assert!(body.contains("already at"), "{body}");
    // Not managed by any object.
    env.wait(
        "the mirror pod of other.yaml in the agent's pod list",
        Duration::from_secs(20),
        async || {
            let (_, body) = call(&api, "GET", "/pods").await;
            if body.contains(&format!("\"other-{node}\"")) {
                Ok(())
            } else {
                Err(body)
            }
        },
    )
    .await;
    let (status, body) = call(&api, "POST", &upgrade_path(&format!("other-{node}"))).await;
    assert_eq!(status, 403, "non-member pod: {body}");
    assert!(body.contains("not managed"), "{body}");
    // Managed, but by a rolling (not OTA) object.
    std::fs::write(env.manifest(&node, "web"), hand_placed("web", OLD_IMAGE))
        .expect("placing web.yaml");
    env.create(static_pod("web", "web", json!(1), web(OLD_IMAGE)))
        .await;
    env.wait(
        "the agent to know StaticPod web and its pod",
        Duration::from_secs(20),
        async || match call(&api, "POST", &upgrade_path(&format!("web-{node}"))).await {
            (403, body) if body.contains("not OTA-managed") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let (status, body) = call(&api, "GET", "/readyz").await;
    assert_eq!(
        (status, body.trim()),
        (200, "ok"),
        "readyz once the agent has run a pass"
    );
    // Unknown pod.
    let (status, body) = call(&api, "POST", &upgrade_path("nothing-here")).await;
    assert_eq!(status, 404, "unknown pod: {body}");
    // Wrong method, malformed paths.
    let (status, _) = call(&api, "DELETE", &upgrade_path(&pod)).await;
    assert_eq!(status, 405, "DELETE on the upgrade path");
    let (status, _) = call(&api, "POST", "/pods").await;
    assert_eq!(status, 405, "POST /pods");
    for bad in [
        format!("/openyurt.io/v1/namespaces/{NS}/pods/{pod}"),
        format!("/openyurt.io/v1/namespaces/{NS}/pods/Not_A_Name/upgrade"),
        format!("/openyurt.io/v1/namespaces/{NS}/pods/{pod}/upgrade/again"),
    ] {
        let (status, body) = call(&api, "POST", &bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // Oversized request target: refused, nothing started.
    let long = format!("{}?{}", upgrade_path(&pod), "x".repeat(4096));
    let (status, _) = call(&api, "POST", &long).await;
    assert_eq!(status, 414, "an oversized path");

    // Oversized body: refused before anything is read or started.
    let address = std::fs::read_to_string(env.state_dir(&node).join("local-api.addr"))
        .expect("the bound address");
    let mut stream = tokio::net::TcpStream::connect(address.trim())
        .await
        .expect("connecting to the local API");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1048576\r\n\r\n{}",
        upgrade_path(&pod),
        "x".repeat(8192)
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = vec![0u8; 64];
    let n = stream.read(&mut answer).await.expect("an answer");
    let status_line = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(
        status_line.starts_with("HTTP/1.1 413"),
        "an oversized body: {status_line}"
    );

    // An upgrade whose image never becomes Ready: 200, a concurrent POST is 409, then it is
    // rolled back and the state says so.
    let (_, broken_hash) = env.set_image("nginx", BROKEN).await;
    env.wait_need_upgrade(&node, "True").await;
    wait_agent_sees_need(&env, &api, &pod).await;
    let (status, body) = call(&api, "POST", &upgrade_path(&pod)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(&api, "POST", &upgrade_path(&pod)).await;
    assert_eq!(status, 409, "a second POST while upgrading: {body}");
    let record = wait_phase(&env, &api, &pod, "rolled-back").await;
    assert_eq!(record["toHash"], json!(broken_hash));
    assert!(
        record["message"]
            .as_str()
            .is_some_and(|m| m.contains("not Ready")),
        "{record}"
    );
    let (status, body) = call(&api, "POST", &upgrade_path(&pod)).await;
    assert_eq!(
        status, 403,
        "a rolled-back hash is not offered again: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_api_needs_a_token_off_loopback_and_checks_it() {
    let env = Env::start(1, Timings::fast()).await;
    let node = env.nodes()[0].clone();
    let config = env.write_config_with(
        &node,
        Settings::patient(),
        "open",
        "localApi:\n  listen: 0.0.0.0:0\n",
    );
    let out = std::process::Command::new(support::binary())
        .arg("--config")
        .arg(&config)
        .arg("run")
        .output()
        .expect("running the agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("localApi.tokenFile"),
        "a non-loopback listen without a token must refuse to start; got {:?}: {stderr}",
        out.status
    );

    let token_file = env.dir.path().join("local-api.token");
    std::fs::write(&token_file, "s3cret\n").expect("writing the token file");
    let config = env.write_config_with(
        &node,
        Settings::patient(),
        "token",
        &format!(
            "localApi:\n  listen: 127.0.0.1:0\n  tokenFile: {}\n",
            token_file.display()
        ),
    );
    let mut agent = AgentProc {
        child: Command::new(support::binary())
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning the agent"),
    };
    let anonymous = env.local_api(&node).await;
    let (status, _) = call(&anonymous, "GET", "/pods").await;
    assert_eq!(status, 401, "no token");
    let mut with_token = staticpod_puller::config::Config::default();
    with_token.local_api.listen = "127.0.0.1:0".into();
    with_token.local_api.token_file = Some(token_file.clone());
    with_token.state_dir = env.state_dir(&node);
    let client = staticpod_puller::ota::client::LocalClient::from_config(&with_token)
        .expect("a client with the token");
    let (status, body) = call(&client, "GET", "/pods").await;
    assert_eq!(status, 200, "with the token: {body}");
    agent.kill9();
}
/// `GET /metrics` of the agent whose state directory is `state_dir`: the whole HTTP response.
pub(crate) async fn get_metrics(state_dir: &Path) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = std::fs::read_to_string(state_dir.join("metrics.addr")).expect("metrics.addr");
    let mut stream = tokio::net::TcpStream::connect(address.trim())
        .await
        .expect("connecting to the metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .expect("sending the scrape");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("reading the scrape");
    response
}

/// `GET /metrics` from the agent whose state directory is `state_dir`; every sample line is
/// checked to be `name{labels} value` as the text exposition format says.
async fn scrape(state_dir: &Path) -> String {
    let response = get_metrics(state_dir).await;
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        assert!(value.parse::<f64>().is_ok(), "a numeric value: {line}");
        let name = series.split('{').next().unwrap_or_default();
        // A summary's samples are `<family>_sum` and `<family>_count`.
        let family = name
            .strip_suffix("_sum")
            .or_else(|| name.strip_suffix("_count"))
            .filter(|f| body.contains(&format!("# TYPE {f} summary")))
            .unwrap_or(name);
        assert!(
            name.starts_with("staticpod_puller_")
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "a metric name: {line}"
        );
        assert!(
            body.contains(&format!("# TYPE {family} ")),
            "every metric has a TYPE: {line}"
        );
    }
    body.to_string()
}

/// `staticpod-puller --config <config> <args>`; (exit success, stdout, stderr).
async fn cli(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(support::binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .await
        .expect("running the CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_and_upgrade_wait_talk_to_the_agent_over_a_unix_socket() {
    const BROKEN: &str = "nginx:never-ready";
    let mut env = Env::start(1, Timings::fast()).await;
    env.cluster.set_broken_image(BROKEN, true);
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    env.create(ota_static_pod(OLD_IMAGE)).await;
    env.start_controller();
    let node = env.nodes()[0].clone();
    let socket = env.dir.path().join("local-api.sock");
    let config = env.write_config_with(
        &node,
        Settings::deadline(Duration::from_secs(3)),
        "socket",
        &format!("localApi:\n  listen: {}\n", socket.display()),
    );
    let agent = env.spawn_agent_with(&node, &config);
    env.agents.insert(node.clone(), agent);
    let pod = format!("nginx-{node}");

    for (image, outcome) in [(NEW_IMAGE, "succeeded"), (BROKEN, "rolled-back")] {
        let (_, hash) = env.set_image("nginx", image).await;
        let table = env
            .wait(
                "`pods` showing the upgrade available",
                Duration::from_secs(20),
                async || {
                    let (ok, out, err) = cli(&config, &["pods"]).await;
                    let row = out.lines().find(|l| l.contains(&pod)).unwrap_or_default();
                    if ok && row.ends_with("True") {
                        Ok(out)
                    } else {
                        Err(format!("{out}{err}"))
                    }
                },
            )
            .await;
        assert!(
            table.starts_with("NAMESPACE") && table.contains("NEED-UPGRADE"),
            "{table}"
        );
        let (ok, out, err) = cli(&config, &["upgrade", &format!("{NS}/{pod}"), "--wait"]).await;
        assert!(
            out.contains(&format!("Start updating pod {NS}/{pod}")) && out.contains(outcome),
            "upgrade --wait to {image}: {out}{err}"
        );
        assert_eq!(
            ok,
            outcome == "succeeded",
            "exit status of upgrade --wait ending {outcome}: {out}{err}"
        );
        if outcome == "succeeded" {
            assert_eq!(
                file_hash(&env.manifest(&node, "nginx")).as_deref(),
                Some(hash.as_str())
            );
        }
    }
    // Prometheus metrics: parseable, and counting what happened.
    let metrics = scrape(&env.state_dir(&node)).await;
    for expected in [
        "# TYPE staticpod_puller_upgrades_total counter",
        "staticpod_puller_upgrades_total{object=\"StaticPod default/nginx\",result=\"succeeded\"} 1",
        "staticpod_puller_upgrades_total{object=\"StaticPod default/nginx\",result=\"rolled_back\"} 1",
        "staticpod_puller_api_server_reachable 1",
        "phase=\"rolled-back\"",
    ] {
        assert!(
            metrics.contains(expected),
            "expected {expected:?} in:\n{metrics}"
        );
    }

    // `status` says what the agent believes: the hash rolled back, and why.
    let (ok, out, err) = cli(&config, &["status"]).await;
    let row = out
        .lines()
        .find(|l| l.starts_with("StaticPod default/nginx"))
        .unwrap_or_default();
    assert!(
        ok && out.contains(&format!("node {node} (API server reachable)"))
            && row.contains("OTA")
            && row.contains("rolled-back")
            && row.contains("not Ready")
            && out.contains("grants held: none"),
        "status after a rollback: {out}{err}"
    );
    let (ok, _, err) = cli(&config, &["upgrade", "no-slash-here"]).await;
    assert!(
        !ok && err.contains("expected NAMESPACE/PODNAME"),
        "a malformed argument: {err}"
    );
}
