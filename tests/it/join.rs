//! `staticpod-puller join` against the dev cluster: a fresh node is configured and synced,
//! a second join changes nothing, and a join that cannot work says why and writes nothing.
//! Also `run` on a node not joined yet: it exits with EX_CONFIG (the unit does not restart on
//! it) saying what is missing.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use staticpod_puller::config::Config;
use staticpod_puller::manifest::{hash_of_manifest, template_hash};
use staticpod_puller::resources::StaticPod;
use staticpod_puller::sim::cluster::{DevCluster, DevClusterOptions};

use crate::support;

/// One run of the binary: exit code, stdout, stderr.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run(args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(support::binary());
    cmd.args(args).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("staticpod-puller {args:?} did not exit within 120s"))
        .expect("running staticpod-puller");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A file's identity: a rewrite, even with equal bytes, changes it.
fn stamp(path: &Path) -> (u64, i64, i64) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.ino(), m.mtime(), m.mtime_nsec())
}

struct Node {
    _dir: tempfile::TempDir,
    cluster: DevCluster,
    /// The cluster's controller: a rolling upgrade the join's sync starts needs its grant.
    _controller: Controller,
    name: String,
    kubeconfig: PathBuf,
    manifest_dir: PathBuf,
    state_dir: PathBuf,
    /// Where join puts the configuration (as /etc/staticpod-puller on a real node).
    etc: PathBuf,
}

/// The controller's task, stopped with the test's node.
struct Controller(tokio::task::JoinHandle<()>);

impl Drop for Controller {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Node {
    /// A one-node dev cluster with a StaticPod `nginx` at `nginx:1.19.2`, and the node running
    /// `nginx:1.19.1` placed by hand, as before the agent existed. Returns the desired hash.
    async fn start() -> (Node, String) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let cluster = DevCluster::start(DevClusterOptions::new(dir.path(), 1))
            .await
            .expect("the dev cluster starts");
        let objects = staticpod_puller::demo::bootstrap_objects().expect("the bootstrap objects");
        cluster.apply(&objects).expect("CRDs and RBAC applied");
        let n = &cluster.nodes()[0];
        let (name, kubeconfig) = (n.name.clone(), n.agent_kubeconfig.clone());
        let (manifest_dir, state_dir) = (n.manifest_dir.clone(), n.state_dir.clone());
        std::fs::write(
            manifest_dir.join("nginx.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: nginx\nspec:\n  containers:\n  - name: web\n    image: nginx:1.19.1\n",
        )
        .expect("placing the old manifest");
        let admin = cluster.admin_client().await.expect("an admin client");
        let sp: StaticPod = serde_json::from_value(json!({
            "apiVersion": "apps.openyurt.io/v1alpha1", "kind": "StaticPod",
            "metadata": {"name": "nginx", "namespace": "default"},
            "spec": {"staticPodManifest": "nginx",
                     "upgradeStrategy": {"type": "AdvancedRollingUpdate", "maxUnavailable": 1},
                     "template": {"metadata": {"name": "nginx"},
                                  "spec": {"containers": [{"name": "web", "image": "nginx:1.19.2"}]}}},
        }))
        .expect("a valid StaticPod");
        let created = Api::<StaticPod>::namespaced(admin.clone(), "default")
            .create(&PostParams::default(), &sp)
            .await
            .expect("creating the StaticPod");
        // Whether the agent's first pass finds the hand-placed pod mirrored (then it waits
        // for a grant) or not yet (down: no grant needed) is a race; a cluster has its
        // controller either way.
        let controller = Controller(tokio::spawn(async move {
            staticpod_puller::controller::run(
                admin,
                "staticpod-system",
                "test-controller",
                Duration::from_secs(15),
            )
            .await;
        }));
        let etc = dir.path().join("etc");
        let node = Node {
            _dir: dir,
            cluster,
            _controller: controller,
            name,
            kubeconfig,
            manifest_dir,
            state_dir,
            etc,
        };
        (node, template_hash(&created.spec.template))
    }

    fn config_path(&self) -> PathBuf {
        self.etc.join("config.yaml")
    }

    /// `staticpod-puller --config ETC/config.yaml join ...` for this node, with `overrides`
    /// replacing the value of a flag or adding one.
    async fn join(&self, kubeconfig: &Path, overrides: &[(&str, &str)]) -> Run {
        let config = self.config_path();
        let mut flags = vec![
            ("--node-name", self.name.clone()),
            ("--kubeconfig", kubeconfig.display().to_string()),
            ("--manifest-dir", self.manifest_dir.display().to_string()),
            ("--state-dir", self.state_dir.display().to_string()),
            ("--sync-timeout", "60s".to_string()),
        ];
        for (flag, value) in overrides {
            match flags.iter_mut().find(|(f, _)| f == flag) {
                Some(slot) => slot.1 = value.to_string(),
                None => flags.push((flag, value.to_string())),
            }
        }
        let mut args = vec![
            "--config".to_string(),
            config.display().to_string(),
            "join".into(),
            "--no-service".into(),
        ];
        for (flag, value) in flags {
            args.push(flag.to_string());
            args.push(value);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args).await
    }

    /// The agent's kubeconfig with the server moved to a port nothing listens on.
    fn unreachable_kubeconfig(&self) -> PathBuf {
        let text = std::fs::read_to_string(&self.kubeconfig).expect("the agent kubeconfig");
        let server = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("server:"))
            .expect("a server line")
            .trim()
            .to_string();
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let path = self._dir.path().join("wrong.kubeconfig");
        std::fs::write(
            &path,
            text.replace(&server, &format!("https://127.0.0.1:{}", closed.port())),
        )
        .expect("writing the wrong kubeconfig");
        path
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_configures_syncs_then_changes_nothing_and_refuses_a_wrong_kubeconfig() {
    let (node, desired) = Node::start().await;
    let manifest = node.manifest_dir.join("nginx.yaml");

    // A fresh node.
    let first = node.join(&node.kubeconfig, &[]).await;
    assert_eq!(
        first.code,
        Some(0),
        "join failed:\nstdout:\n{}\nstderr:\n{}",
        first.stdout,
        first.stderr
    );
    for line in ["kubeconfig", "config"] {
        assert!(
            first
                .stdout
                .lines()
                .any(|l| l.starts_with(line) && l.ends_with(": written")),
            "the first join reports writing the {line}:\n{}",
            first.stdout
        );
    }
    assert!(
        first.stdout.contains("API server: reachable"),
        "{}",
        first.stdout
    );
    assert!(first.stdout.contains("sync: "), "{}", first.stdout);
    assert_eq!(
        std::fs::read(&manifest)
            .ok()
            .and_then(|b| hash_of_manifest(&b)),
        Some(desired.clone()),
        "the node's static pod is current when join returns"
    );
    let config = Config::load(&node.config_path(), true).expect("join wrote a valid config");
    let installed = node.etc.join("kubeconfig");
    assert_eq!(config.node_name, node.name);
    assert_eq!(config.kubeconfig, installed);
    assert_eq!(config.manifest_dir, node.manifest_dir);
    assert_eq!(config.state_dir, node.state_dir);
    assert_eq!(
        std::fs::read(&installed).expect("the installed kubeconfig"),
        std::fs::read(&node.kubeconfig).expect("the source kubeconfig")
    );
    let mode = std::fs::metadata(&installed)
        .expect("the installed kubeconfig")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        mode, 0o600,
        "the agent's credentials are readable by root only"
    );

    // The same join again: nothing is rewritten.
    let before = [
        stamp(&node.config_path()),
        stamp(&installed),
        stamp(&manifest),
    ];
    let second = node.join(&node.kubeconfig, &[]).await;
    assert_eq!(second.code, Some(0), "{}\n{}", second.stdout, second.stderr);
    assert!(
        !second.stdout.contains(": written"),
        "a second join writes nothing:\n{}",
        second.stdout
    );
    assert_eq!(
        second.stdout.matches(": unchanged").count(),
        2,
        "{}",
        second.stdout
    );
    let after = [
        stamp(&node.config_path()),
        stamp(&installed),
        stamp(&manifest),
    ];
    assert_eq!(before, after, "config, kubeconfig and manifest untouched");

    // A kubeconfig whose server does not answer: a clear error, and nothing written.
    let wrong = node.unreachable_kubeconfig();
    let config_bytes = std::fs::read(node.config_path()).expect("the config");
    let third = node.join(&wrong, &[]).await;
    assert_eq!(third.code, Some(1), "{}\n{}", third.stdout, third.stderr);
    assert!(
        third.stderr.contains("cannot reach the API server")
            && third.stderr.contains("no bundle source is configured")
            && third.stderr.contains("nothing was written"),
        "the error says what is wrong:\n{}",
        third.stderr
    );
    assert_eq!(
        std::fs::read(node.config_path()).expect("the config"),
        config_bytes,
        "the working configuration is kept"
    );
    assert_eq!(
        stamp(&installed),
        before[1],
        "the working kubeconfig is kept"
    );

    // The same on a node never joined: no configuration is left behind.
    let fresh = node._dir.path().join("fresh");
    let fresh_config = fresh.join("config.yaml");
    let fourth = run(&[
        "--config",
        &fresh_config.display().to_string(),
        "join",
        "--node-name",
        &node.name,
        "--kubeconfig",
        &wrong.display().to_string(),
        "--no-service",
    ])
    .await;
    assert_eq!(fourth.code, Some(1), "{}\n{}", fourth.stdout, fourth.stderr);
    assert!(
        !fresh.exists(),
        "nothing half-configured: {} exists",
        fresh.display()
    );

    node.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_refuses_what_cannot_work_naming_it() {
    let (node, _) = Node::start().await;
    let bad_kubeconfig = node._dir.path().join("not-a-kubeconfig");
    std::fs::write(&bad_kubeconfig, "server: [unterminated").expect("writing");
    let bad = bad_kubeconfig.display().to_string();
    // The same identity with its CA in a file next to it: the installed copy would lose it.
    let text = std::fs::read_to_string(&node.kubeconfig).expect("the agent kubeconfig");
    let with_file = node._dir.path().join("with-ca-file.kubeconfig");
    let ca_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("certificate-authority-data:"))
        .expect("an inline CA");
    std::fs::write(
        &with_file,
        text.replace(ca_line, "    certificate-authority: ca.crt"),
    )
    .expect("writing");
    let with_file = with_file.display().to_string();
    let cases: [(&str, (&str, &str), &str); 6] = [
        (
            "a kubeconfig that refers to a file",
            ("--kubeconfig", &with_file),
            "refers to certificate-authority ca.crt",
        ),
        (
            "a file that is not a kubeconfig",
            ("--kubeconfig", &bad),
            "not a kubeconfig",
        ),
        (
            "a node the API server does not know",
            ("--node-name", "no-such-node"),
            "node no-such-node is not registered",
        ),
        (
            "a manifest directory that does not exist",
            ("--manifest-dir", "/nonexistent/manifests"),
            "--manifest-dir /nonexistent/manifests: not a directory",
        ),
        (
            "a bundle URL that is not http(s)",
            ("--bundle-url", "ftp://example.invalid/b"),
            "bundle.urls",
        ),
        (
            "a trusted key that is not a public key",
            ("--trusted-key", &bad),
            "--trusted-key",
        ),
    ];
    for (what, flag, expected) in cases {
        let out = node.join(&node.kubeconfig, &[flag]).await;
        assert_ne!(out.code, Some(0), "{what}: join succeeded:\n{}", out.stdout);
        assert!(
            out.stderr.contains(expected),
            "{what}: expected {expected:?} in:\n{}",
            out.stderr
        );
        assert!(
            !node.config_path().exists(),
            "{what}: a configuration was written"
        );
    }
    node.cluster.shutdown().await;
}

#[tokio::test]
async fn run_before_join_exits_with_ex_config_saying_what_is_missing() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "kubeconfig: {}/kubeconfig\nstateDir: {}/state\nmanifestDir: {}\n",
            dir.path().display(),
            dir.path().display(),
            dir.path().display()
        ),
    )
    .expect("writing the config");
    let out = run(&["--config", &config.display().to_string(), "run"]).await;
    assert_eq!(out.code, Some(78), "{}", out.stderr);
    assert!(
        out.stderr.contains("this node has not been joined yet")
            && out.stderr.contains("staticpod-puller join"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn man_pages_and_completions_cover_every_subcommand() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out = run(&["man", "--out", &dir.path().display().to_string()]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for page in [
        "staticpod-puller.1",
        "staticpod-puller-join.1",
        "staticpod-puller-run.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page} is roff"
        );
    }
    let join =
        std::fs::read_to_string(dir.path().join("staticpod-puller-join.1")).expect("join page");
    assert!(
        join.contains("bundle\\-url"),
        "the join page lists its flags"
    );
    assert!(join.contains("\\-\\-config"), "and the global ones");
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]).await;
        assert_eq!(out.code, Some(0), "{shell}: {}", out.stderr);
        assert!(
            out.stdout.contains("join") && out.stdout.contains("trusted-key"),
            "{shell} completion knows join and its flags"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_succeeds_while_an_ota_upgrade_waits_for_its_operator() {
    let (node, desired) = Node::start().await;
    std::fs::write(
        node.manifest_dir.join("web.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: web\n    image: nginx:1.19.1\n",
    )
    .expect("placing web.yaml");
    let admin = node.cluster.admin_client().await.expect("an admin client");
    let ota: StaticPod = serde_json::from_value(json!({
        "apiVersion": "apps.openyurt.io/v1alpha1", "kind": "StaticPod",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"staticPodManifest": "web", "upgradeStrategy": {"type": "OTA"},
                 "template": {"metadata": {"name": "web"},
                              "spec": {"containers": [{"name": "web", "image": "nginx:1.19.2"}]}}},
    }))
    .expect("a valid StaticPod");
    Api::<StaticPod>::namespaced(admin, "default")
        .create(&PostParams::default(), &ota)
        .await
        .expect("creating the OTA StaticPod");

    let out = node.join(&node.kubeconfig, &[]).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("OTA upgrade available")
            && out.stdout.contains("waiting for an operator"),
        "{}",
        out.stdout
    );
    assert_eq!(
        std::fs::read(node.manifest_dir.join("nginx.yaml"))
            .ok()
            .and_then(|b| hash_of_manifest(&b)),
        Some(desired),
        "the rolling object is current"
    );
    node.cluster.shutdown().await;
}
