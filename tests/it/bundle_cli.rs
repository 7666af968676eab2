//! `staticpod-puller bundle ...` as an operator runs it: keys, signing, verifying, inspecting,
//! with keys made by the binary and by openssl.

use std::path::Path;
use std::process::Command;

use crate::support;

const ITEMS: &str = "\
apiVersion: apps.openyurt.io/v1alpha1
kind: StaticPod
metadata:
  name: nginx
  namespace: default
  resourceVersion: \"123\"
  uid: 5f1c0d2e-0000-0000-0000-000000000000
spec:
  staticPodManifest: nginx
  upgradeStrategy:
    type: OTA
  template:
    metadata:
      name: nginx
    spec:
      containers:
      - name: web
        image: nginx:1.19.2
status:
  totalNumber: 3
";

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn keygen_sign_verify_inspect_with_a_two_of_three_threshold() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path();
    std::fs::write(d.join("items.yaml"), ITEMS).expect("writing items");
    for k in ["k1", "k2"] {
        let (ok, out, err) = support::run_in(d, &["bundle", "keygen", "--out", k]);
        assert!(ok && out.contains("key id:"), "keygen {k}: {out}{err}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(d.join(format!("{k}.key")))
                .expect("the private key")
                .permissions(),
        );
        assert_eq!(
            mode & 0o777,
            0o600,
            "the private key is readable by its owner only"
        );
    }
    // The third key is made by openssl.
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", "k3.key"], d);
    openssl(&["pkey", "-in", "k3.key", "-pubout", "-out", "k3.pub"], d);
    let (ok, _, err) = support::run_in(d, &["bundle", "keygen", "--out", "k1"]);
    assert!(
        !ok && err.contains("refusing to overwrite"),
        "keygen refuses to overwrite: {err}"
    );

    let (ok, out, err) = support::run_in(
        d,
        &[
            "bundle",
            "sign",
            "--key",
            "k1.key",
            "--key",
            "k3.key",
            "--sequence",
            "7",
            "--expires",
            "1d",
            "--node",
            "edge-node-2",
            "items.yaml",
            "-o",
            "b.json",
        ],
    );
    assert!(ok && out.contains("sequence 7"), "sign: {out}{err}");

    let trusted = [
        "--trusted-key",
        "k1.pub",
        "--trusted-key",
        "k2.pub",
        "--trusted-key",
        "k3.pub",
    ];
    let verify = |threshold: &str| {
        let mut args = vec!["bundle", "verify"];
        args.extend(trusted);
        args.extend(["--threshold", threshold, "b.json"]);
        support::run_in(d, &args)
    };
    let (ok, out, err) = verify("2");
    assert!(
        ok && out.contains("valid: sequence 7, 1 items"),
        "2 of 3: {out}{err}"
    );
    let (ok, _, err) = verify("3");
    assert!(
        !ok && err.contains("threshold 3 not met: 2 valid"),
        "3 of 3 with two signatures: {err}"
    );

    // A changed byte in the payload breaks every signature.
    let text = std::fs::read_to_string(d.join("b.json")).expect("the bundle");
    let envelope: serde_json::Value = serde_json::from_str(&text).expect("an envelope");
    use base64::Engine;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(envelope["payload"].as_str().expect("payload"))
        .expect("base64");
    let tampered = String::from_utf8(payload)
        .expect("utf-8")
        .replace("nginx:1.19.2", "nginx:6.6.6");
    let mut forged = envelope.clone();
    forged["payload"] =
        serde_json::Value::from(base64::engine::general_purpose::STANDARD.encode(tampered));
    std::fs::write(d.join("forged.json"), forged.to_string()).expect("writing");
    let (ok, _, err) = support::run_in(
        d,
        &["bundle", "verify", "--trusted-key", "k1.pub", "forged.json"],
    );
    assert!(!ok && err.contains("bad_signature"), "tampered: {err}");

    let (ok, out, err) = support::run_in(d, &["bundle", "inspect", "b.json"]);
    assert!(ok, "inspect: {err}");
    for expected in [
        "NOT VERIFIED",
        "sequence:     7",
        "nodes:        edge-node-2",
        "item:         StaticPod default/nginx",
    ] {
        assert!(out.contains(expected), "expected {expected:?} in:\n{out}");
    }
}

#[test]
fn keys_made_by_keygen_work_with_openssl() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path();
    let (ok, _, err) = support::run_in(d, &["bundle", "keygen", "--out", "ours"]);
    assert!(ok, "keygen: {err}");
    std::fs::write(d.join("msg"), b"a message").expect("writing");
    openssl(
        &[
            "pkeyutl", "-sign", "-inkey", "ours.key", "-rawin", "-in", "msg", "-out", "sig",
        ],
        d,
    );
    openssl(
        &[
            "pkeyutl", "-verify", "-pubin", "-inkey", "ours.pub", "-rawin", "-in", "msg",
            "-sigfile", "sig",
        ],
        d,
    );
}

#[test]
fn sign_refuses_items_every_agent_would_refuse_naming_the_item() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path();
    let (ok, _, err) = support::run_in(d, &["bundle", "keygen", "--out", "ops"]);
    assert!(ok, "keygen: {err}");
    let second = ITEMS
        .replace("name: nginx\n  namespace", "name: web\n  namespace")
        .replace("staticPodManifest: nginx", "staticPodManifest: web");
    for (file, from, to, expected) in [
        (
            "traversal.yaml",
            "staticPodManifest: web",
            "staticPodManifest: ../../etc/cron.d/x",
            "item 1 would be refused: StaticPod default/web: spec.staticPodManifest: must be a plain file name (no path), got \"../../etc/cron.d/x\"",
        ),
        (
            "secret.yaml",
            "        image: nginx:1.19.2\n",
            "        image: nginx:1.19.2\n      volumes:\n      - name: tls\n        secret: {secretName: tls}\n",
            "item 1 would be refused: StaticPod default/web: spec.template.spec.volumes[0].secret: a static pod may not reference a secret volume",
        ),
        (
            "kind.yaml",
            "kind: StaticPod",
            "kind: DaemonSet",
            "item 1: kind \"DaemonSet\" is not StaticPod or YurtStaticSet",
        ),
        (
            "strategy.yaml",
            "type: OTA",
            "type: Whenever",
            "item 1 would be refused: StaticPod default/web: ",
        ),
    ] {
        assert!(second.contains(from), "the fixture lacks {from:?}");
        let items = format!("{ITEMS}---\n{}", second.replacen(from, to, 1));
        std::fs::write(d.join(file), items).expect("writing items");
        let (ok, out, err) = support::run_in(
            d,
            &[
                "bundle",
                "sign",
                "--key",
                "ops.key",
                "--sequence",
                "3",
                file,
                "-o",
                "out.bundle",
            ],
        );
        assert!(
            !ok && err.contains(expected),
            "{file}: expected a refusal containing {expected:?}; got {out}{err}"
        );
        assert!(
            !d.join("out.bundle").exists(),
            "{file}: a refused bundle was written"
        );
    }
}
