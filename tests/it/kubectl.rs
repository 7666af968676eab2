//! The real kubectl against `staticpod-puller demo --serve`: what an operator sees.

use std::path::Path;
use std::time::Duration;

use crate::support::{Kubectl, Proc, SEED_STATICPOD, repo_path, wait_for};

const SEED_MANIFEST: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: nginx
spec:
  containers:
  - name: web
    image: nginx:1.19.1
";

fn header(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn row<'a>(table: &'a str, name: &str) -> Option<Vec<&'a str>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
}

#[test]
fn kubectl_works_against_the_dev_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir_arg = dir.path().to_str().expect("utf-8 temp path");
    let mut demo = Proc::spawn(&[
        "demo",
        "--serve",
        "--nodes",
        "2",
        "--dir",
        dir_arg,
        "--ready-delay",
        "100ms",
    ]);
    let kubeconfig = demo.wait_line("kubeconfig:", Duration::from_secs(30));
    let k = Kubectl {
        kubeconfig: &kubeconfig,
    };

    // Everything in config/ (the CRDs removed first, so that applying them is what serves the
    // kinds), as the README says to install it.
    k.ok(&[
        "delete",
        "crd",
        "staticpods.apps.openyurt.io",
        "yurtstaticsets.apps.openyurt.io",
    ]);
    wait_for(
        "staticpods to be unknown after deleting their CRD",
        Duration::from_secs(10),
        || match k.run(&["get", "staticpods"]) {
            Err(e) => Ok(e),
            Ok(out) => Err(format!("still served: {out}")),
        },
    );
    let applied = k.ok(&["apply", "-f", repo_path("config").to_str().expect("utf-8")]);
    for expected in [
        "namespace/staticpod-system",
        "customresourcedefinition.apiextensions.k8s.io/staticpods.apps.openyurt.io created",
        "customresourcedefinition.apiextensions.k8s.io/yurtstaticsets.apps.openyurt.io created",
        "clusterrole.rbac.authorization.k8s.io/staticpod-puller-agent",
        "serviceaccount/staticpod-puller-controller created",
        "clusterrole.rbac.authorization.k8s.io/staticpod-puller-controller created",
        "deployment.apps/staticpod-puller-controller created",
        "validatingadmissionpolicy.admissionregistration.k8s.io/staticpod-puller-agent-own-node",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/staticpod-puller-agent-own-node",
    ] {
        assert!(
            applied.contains(expected),
            "expected {expected:?}; apply said: {applied}"
        );
    }
    let deployment = k.ok(&[
        "get",
        "deployment",
        "-n",
        "staticpod-system",
        "staticpod-puller-controller",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(deployment.trim(), "2", "two controller replicas");

    // The seed's StaticPod, and the same object as a YurtStaticSet.
    let sp = dir.path().join("nginx-sp.yaml");
    std::fs::write(&sp, SEED_STATICPOD).expect("write seed");
    let yss = dir.path().join("nginx-yss.yaml");
    std::fs::write(
        &yss,
        SEED_STATICPOD.replace("kind: StaticPod", "kind: YurtStaticSet"),
    )
    .expect("write yss");
    let out = wait_for(
        "kubectl apply of the seed StaticPod",
        Duration::from_secs(10),
        || k.run(&["apply", "-f", path(&sp)]),
    );
    assert!(
        out.contains("staticpod.apps.openyurt.io/nginx created"),
        "apply said: {out}"
    );
    let out = k.ok(&["apply", "-f", path(&yss)]);
    assert!(
        out.contains("yurtstaticset.apps.openyurt.io/nginx created"),
        "apply said: {out}"
    );

    let table = k.ok(&["get", "staticpods"]);
    assert_eq!(
        header(&table),
        [
            "NAME",
            "AGE",
            "TOTALNUMBER",
            "READYNUMBER",
            "UPGRADEDNUMBER"
        ],
        "table:\n{table}"
    );
    assert!(row(&table, "nginx").is_some(), "nginx listed:\n{table}");
    let table = k.ok(&["get", "sp"]);
    assert!(
        row(&table, "nginx").is_some(),
        "short name sp works:\n{table}"
    );
    let table = k.ok(&["get", "sp", "-o", "wide"]);
    assert_eq!(
        header(&table),
        [
            "NAME",
            "AGE",
            "TOTALNUMBER",
            "READYNUMBER",
            "UPGRADEDNUMBER",
            "FAILED",
            "PHASE"
        ],
        "-o wide adds the rollout's columns:\n{table}"
    );
    let table = k.ok(&["get", "yss"]);
    assert_eq!(
        header(&table),
        ["NAME", "TOTAL", "READY", "UPGRADED", "AGE"],
        "table:\n{table}"
    );

    // A merge patch, as operators change the template or the budget.
    let out = k.ok(&["patch", "staticpod", "nginx", "--type=merge", "-p",
        r#"{"spec":{"upgradeStrategy":{"maxUnavailable":"25%"},"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.19.2"}]}}}}"#]);
    assert!(
        out.contains("staticpod.apps.openyurt.io/nginx patched"),
        "patch said: {out}"
    );
    let got = k.ok(&["get", "staticpod", "nginx", "-o", "jsonpath={.spec.upgradeStrategy.maxUnavailable} {.spec.template.spec.containers[0].image} {.metadata.generation}"]);
    assert_eq!(got.trim(), "25% nginx:1.19.2 2");

    // Leases, with their holder column.
    let lease = dir.path().join("lease.yaml");
    std::fs::write(&lease, "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: slot-0\n  namespace: staticpod-system\nspec:\n  holderIdentity: edge-node-1\n  leaseDurationSeconds: 30\n").expect("write lease");
    k.ok(&["apply", "-f", path(&lease)]);
    let table = k.ok(&["get", "leases", "-n", "staticpod-system"]);
    assert_eq!(header(&table), ["NAME", "HOLDER", "AGE"], "table:\n{table}");
    assert_eq!(
        row(&table, "slot-0").map(|r| r[1]),
        Some("edge-node-1"),
        "table:\n{table}"
    );

    // A manifest dropped into a node's directory becomes a Running mirror pod on that node.
    let node_dir = dir.path().join("nodes/edge-node-1/manifests");
    std::fs::write(node_dir.join("nginx.yaml"), SEED_MANIFEST).expect("drop manifest");
    let table = wait_for(
        "the mirror pod to be Running in kubectl get pods -o wide",
        Duration::from_secs(20),
        || {
            let table = k.run(&["get", "pods", "-o", "wide"])?;
            match row(&table, "nginx-edge-node-1") {
                Some(r) if r.get(1) == Some(&"1/1") && r.get(2) == Some(&"Running") => Ok(table),
                _ => Err(table),
            }
        },
    );
    let h = header(&table);
    let node_col = h
        .iter()
        .position(|c| c == "NODE")
        .unwrap_or_else(|| panic!("NODE column in -o wide:\n{table}"));
    assert_eq!(
        row(&table, "nginx-edge-node-1").map(|r| r[node_col]),
        Some("edge-node-1"),
        "table:\n{table}"
    );
    let nodes = k.ok(&["get", "nodes"]);
    assert_eq!(
        row(&nodes, "edge-node-2").map(|r| r[1]),
        Some("Ready"),
        "nodes:\n{nodes}"
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}
