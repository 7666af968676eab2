//! What the API server refuses, with the real kubectl against `demo --serve`: malformed
//! objects (the CRDs' CEL rules) and an agent acting for another node (the admission policy
//! in config/). The dev cluster evaluates both as the API server does.

use std::time::Duration;

use crate::support::{Kubectl, Proc, SEED_STATICPOD, wait_for};

const POLICY: &str = "staticpod-puller-agent-own-node";
/// Grants of edge-node-1 and edge-node-2, and the controller's leader Lease.
const OWN: &str = "sp.default.nginx.edge-node-1";
const OTHER: &str = "sp.default.nginx.edge-node-2";
const LEADER: &str = "controller.staticpod-system.status.0";

/// A dev cluster served to kubectl, with the CRDs, RBAC and the admission policy applied.
struct Served {
    _demo: Proc,
    dir: tempfile::TempDir,
    admin: String,
}

impl Served {
    fn start(nodes: &str) -> Served {
        let dir = tempfile::tempdir().expect("temp dir");
        let dir_arg = dir.path().to_str().expect("utf-8 temp path").to_string();
        let mut demo = Proc::spawn(&["demo", "--serve", "--nodes", nodes, "--dir", &dir_arg]);
        let admin = demo.wait_line("kubeconfig:", Duration::from_secs(30));
        Served {
            _demo: demo,
            dir,
            admin,
        }
    }

    fn admin(&self) -> Kubectl<'_> {
        Kubectl {
            kubeconfig: &self.admin,
        }
    }

    fn agent_kubeconfig(&self, node: &str) -> String {
        let path = self
            .dir
            .path()
            .join(format!("nodes/{node}/agent.kubeconfig"));
        path.to_str().expect("utf-8 temp path").to_string()
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {name}: {e}"));
        path.to_str().expect("utf-8 temp path").to_string()
    }
}

/// Shaped as OpenYurt's own yurt-hub YurtStaticSet: host paths, an env var from a field
/// reference, priority; no upgrade strategy.
const YURT_HUB_LIKE: &str = "\
apiVersion: apps.openyurt.io/v1alpha1
kind: YurtStaticSet
metadata:
  name: yurt-hub
  namespace: kube-system
spec:
  staticPodManifest: yurthub
  template:
    metadata:
      labels:
        k8s-app: yurt-hub
    spec:
      volumes:
      - name: hub-dir
        hostPath:
          path: /var/lib/yurthub
          type: DirectoryOrCreate
      containers:
      - name: yurt-hub
        image: openyurt/yurthub:v1.6.0
        command: [yurthub, --v=2, --node-name=$(NODE_NAME)]
        volumeMounts:
        - name: hub-dir
          mountPath: /var/lib/yurthub
        env:
        - name: NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: spec.nodeName
      hostNetwork: true
      priorityClassName: system-node-critical
      priority: 2000001000
";

/// OpenYurt's older StaticPod with its lower-case strategy alias and a percentage.
const OTA_LOWER_CASE: &str = "\
apiVersion: apps.openyurt.io/v1alpha1
kind: StaticPod
metadata:
  name: busybox
spec:
  staticPodManifest: busybox
  upgradeStrategy:
    type: ota
    maxUnavailable: 50%
  template:
    spec:
      containers:
      - name: busybox
        image: busybox:1.36
        command: [sleep, '3600']
";

#[test]
fn malformed_objects_are_refused_at_apply_with_their_field_and_message() {
    let served = Served::start("1");
    let k = served.admin();
    // (what is changed in the seed, the field the error names, words of its message)
    let cases: [(&str, &str, &str, &str); 9] = [
        (
            "staticPodManifest: nginx",
            "staticPodManifest: ../x",
            "spec.staticPodManifest",
            "must be a plain file name without '/'",
        ),
        (
            "staticPodManifest: nginx",
            "staticPodManifest: .hidden",
            "spec.staticPodManifest",
            "must not start with '.'",
        ),
        (
            "staticPodManifest: nginx",
            "staticPodManifest: Nginx_1",
            "spec.staticPodManifest",
            "must be a DNS subdomain",
        ),
        (
            "type: AdvancedRollingUpdate",
            "type: rolling",
            "spec.upgradeStrategy.type",
            "must be AdvancedRollingUpdate or OTA",
        ),
        (
            "maxUnavailable: 3",
            "maxUnavailable: -1",
            "spec.upgradeStrategy.maxUnavailable",
            "an integer of 0 or more, or a percentage from 0% to 100%",
        ),
        (
            "maxUnavailable: 3",
            "maxUnavailable: 150%",
            "spec.upgradeStrategy.maxUnavailable",
            "a percentage from 0% to 100%",
        ),
        (
            "maxUnavailable: 3",
            "maxUnavailable: 3\n    maxFailed: lots",
            "spec.upgradeStrategy.maxFailed",
            "upgradeStrategy.maxFailed must be",
        ),
        (
            "staticPodManifest: nginx",
            "staticPodManifest: nginx\n  revisionHistoryLimit: -2",
            "spec.revisionHistoryLimit",
            "must be 0 or more",
        ),
        (
            "image: nginx:1.19.1",
            "image: nginx:1.19.1\n        envFrom:\n        - secretRef:\n            name: creds",
            "spec.template.spec.containers[0].envFrom[0].secretRef",
            "may not reference API objects",
        ),
    ];
    for (i, (from, to, field, words)) in cases.iter().enumerate() {
        let name = format!("bad-{i}");
        let text = SEED_STATICPOD
            .replace(from, to)
            .replace("name: nginx\nspec", &format!("name: {name}\nspec"));
        assert_ne!(text, SEED_STATICPOD, "case {i} changes the seed");
        let file = served.write(&format!("{name}.yaml"), &text);
        let err = k
            .run(&["apply", "-f", &file])
            .expect_err(&format!("{to:?} is refused"));
        assert!(
            err.contains(&format!("The StaticPod \"{name}\" is invalid"))
                && err.contains(field)
                && err.contains(words),
            "{to:?}: expected {field} and {words:?}; kubectl said: {err}"
        );
        let got = k
            .run(&["get", "staticpod", &name])
            .expect_err("nothing stored");
        assert!(
            err.contains("is invalid") && got.contains("NotFound"),
            "{name}: {got}"
        );
    }

    // Volumes and service accounts too, in a YurtStaticSet.
    let volume = YURT_HUB_LIKE
        .replace("name: yurt-hub\n  namespace", "name: with-secret\n  namespace")
        .replace(
            "      - name: hub-dir\n        hostPath:",
            "      - name: creds\n        secret:\n          secretName: creds\n      - name: hub-dir\n        hostPath:",
        );
    let err = k
        .run(&["apply", "-f", &served.write("secret-volume.yaml", &volume)])
        .expect_err("a secret volume is refused");
    assert!(
        err.contains("spec.template.spec.volumes[0].secret: Forbidden: a secret volume: a static pod may not reference API objects"),
        "kubectl said: {err}"
    );
    let account = SEED_STATICPOD.replace(
        "    spec:\n      containers:",
        "    spec:\n      serviceAccountName: default\n      containers:",
    );
    let err = k
        .run(&["apply", "-f", &served.write("account.yaml", &account)])
        .expect_err("a service account is refused");
    assert!(
        err.contains("spec.template.spec.serviceAccountName: Forbidden"),
        "kubectl said: {err}"
    );

    // What OpenYurt users write passes unchanged.
    for (file, text, created) in [
        (
            "seed.yaml",
            SEED_STATICPOD,
            "staticpod.apps.openyurt.io/nginx created",
        ),
        (
            "yurt-hub.yaml",
            YURT_HUB_LIKE,
            "yurtstaticset.apps.openyurt.io/yurt-hub created",
        ),
        (
            "ota.yaml",
            OTA_LOWER_CASE,
            "staticpod.apps.openyurt.io/busybox created",
        ),
    ] {
        let out = k.ok(&["apply", "-f", &served.write(file, text)]);
        assert!(out.contains(created), "{file}: {out}");
    }
    // An update is checked too; a change that keeps the object valid passes.
    let err = k
        .run(&[
            "patch",
            "staticpod",
            "nginx",
            "--type=merge",
            "-p",
            r#"{"spec":{"staticPodManifest":"a/b"}}"#,
        ])
        .expect_err("an invalid update is refused");
    assert!(
        err.contains("spec.staticPodManifest"),
        "kubectl said: {err}"
    );
    k.ok(&[
        "patch",
        "staticpod",
        "nginx",
        "--type=merge",
        "-p",
        r#"{"spec":{"upgradeStrategy":{"maxUnavailable":"25%"}}}"#,
    ]);
    let manifest = k.ok(&[
        "get",
        "staticpod",
        "nginx",
        "-o",
        "jsonpath={.spec.staticPodManifest} {.spec.upgradeStrategy.maxUnavailable}",
    ]);
    assert_eq!(manifest.trim(), "nginx 25%");
}

fn as_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn lease(name: &str, node_label: Option<&str>, holder: &str) -> String {
    let labels = node_label
        .map(|n| format!("  labels:\n    staticpod-puller.openyurt.io/node: {n}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: {name}\n  namespace: staticpod-system\n{labels}spec:\n  holderIdentity: {holder}\n  leaseDurationSeconds: 15\n"
    )
}

#[test]
fn an_agent_identity_may_change_only_what_is_its_own_node_s() {
    let served = Served::start("2");
    let admin = served.admin();
    let dir = served.dir.path();
    for node in ["edge-node-1", "edge-node-2"] {
        std::fs::write(
            dir.join(format!("nodes/{node}/manifests/nginx.yaml")),
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: nginx\nspec:\n  containers:\n  - name: web\n    image: nginx:1.19.1\n",
        )
        .expect("drop a manifest");
    }
    for node in ["edge-node-1", "edge-node-2"] {
        wait_for(
            &format!("the mirror pod of {node}"),
            Duration::from_secs(20),
            || admin.run(&["get", "pod", &format!("nginx-{node}")]),
        );
    }
    for (name, label, holder) in [
        (OWN, Some("edge-node-1"), "edge-node-1"),
        (OTHER, Some("edge-node-2"), "edge-node-2"),
        (LEADER, None, "staticpod-puller-controller-7d9f"),
    ] {
        let file = served.write(&format!("{name}.yaml"), &lease(name, label, holder));
        admin.ok(&["apply", "-f", &file]);
    }

    let agent_config = served.agent_kubeconfig("edge-node-1");
    let agent = Kubectl {
        kubeconfig: &agent_config,
    };
    let condition = r#"{"status":{"conditions":[{"type":"PodNeedUpgrade","status":"True"}]}}"#;
    let own = agent.ok(&[
        "patch",
        "pod",
        "nginx-edge-node-1",
        "--subresource=status",
        "--type=strategic",
        "-p",
        condition,
    ]);
    assert!(own.contains("patched"), "its own pod: {own}");
    let denied = |args: &[&str], words: &str| {
        let err = agent.run(args).expect_err(&format!("{args:?} is refused"));
        let prefix = format!(
            "ValidatingAdmissionPolicy '{POLICY}' with binding '{POLICY}' denied request: agent staticpod-puller:node:edge-node-1 "
        );
        assert!(
            err.contains("is forbidden") && err.contains(&prefix) && err.contains(words),
            "{args:?}: expected the policy's refusal with {words:?}; kubectl said: {err}"
        );
    };
    denied(
        &[
            "patch",
            "pod",
            "nginx-edge-node-2",
            "--subresource=status",
            "--type=strategic",
            "-p",
            condition,
        ],
        "may only change pods on its own node edge-node-1",
    );

    let ns = ["-n", "staticpod-system"];
    let patch = |lease: &str, body: &str| -> Vec<String> {
        ["patch", "lease", lease, "--type=merge", "-p", body]
            .iter()
            .chain(ns.iter())
            .map(|s| s.to_string())
            .collect()
    };

    // Its own grant: renewed, recorded and released.
    let renew = patch(
        OWN,
        r#"{"spec":{"renewTime":"2026-12-02T10:00:00.000000Z"}}"#,
    );
    agent.ok(&as_refs(&renew));
    let release = patch(
        OWN,
        r#"{"metadata":{"annotations":{"staticpod-puller.openyurt.io/result":"succeeded"}},"spec":{"holderIdentity":null}}"#,
    );
    agent.ok(&as_refs(&release));

    // (the grant, the merge patch, words of the refusal)
    let other = "may only change the grant Leases labelled staticpod-puller.openyurt.io/node=edge-node-1, not sp.default.nginx.edge-node-2";
    let refused = [
        // Another node's grant: not taken over, cleared or relabelled.
        (OTHER, r#"{"spec":{"holderIdentity":"edge-node-1"}}"#, other),
        (OTHER, r#"{"spec":{"holderIdentity":null}}"#, other),
        (
            OTHER,
            r#"{"metadata":{"labels":{"staticpod-puller.openyurt.io/node":"edge-node-1"}}}"#,
            other,
        ),
        // Its own grant: not relabelled to, or held as, another node.
        (
            OWN,
            r#"{"metadata":{"labels":{"staticpod-puller.openyurt.io/node":"edge-node-2"}}}"#,
            "may not create a grant for another node or relabel one",
        ),
        (
            OWN,
            r#"{"spec":{"holderIdentity":"edge-node-2"}}"#,
            "may hold a grant only as edge-node-1",
        ),
        // The controller's leader Lease.
        (
            LEADER,
            r#"{"spec":{"holderIdentity":"edge-node-1"}}"#,
            "not controller.staticpod-system.status.0",
        ),
    ];
    for (lease, body, words) in refused {
        denied(&as_refs(&patch(lease, body)), words);
    }

    // Nothing refused was stored; the administrator is not held by the policy.
    let holders = admin.ok(&["get", "leases", "-n", "staticpod-system", "-o", "jsonpath={range .items[*]}{.metadata.name}={.spec.holderIdentity}/{.metadata.labels.staticpod-puller\\.openyurt\\.io/node} {end}"]);
    assert_eq!(
        holders.trim(),
        "controller.staticpod-system.status.0=staticpod-puller-controller-7d9f/ sp.default.nginx.edge-node-1=/edge-node-1 sp.default.nginx.edge-node-2=edge-node-2/edge-node-2"
    );
    admin.ok(&as_refs(&patch(
        OTHER,
        r#"{"spec":{"holderIdentity":"edge-node-1"}}"#,
    )));
}
