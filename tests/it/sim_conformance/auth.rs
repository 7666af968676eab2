//! Authentication, node identities under NodeRestriction, and RBAC for plain users and
//! groups.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use serde_json::{Value, json};

use super::{ALICE, NODE1, Sim, assert_status, from, lease, pod, status, within};

#[tokio::test]
async fn authentication_is_required() {
    let sim = Sim::start().await;
    let stranger = sim.client("not-a-token", "stranger").await;
    let s = status(
        "a request with an unknown token",
        within(
            "list",
            Api::<Pod>::all(stranger.clone()).list(&ListParams::default()),
        )
        .await,
    );
    assert_status("a request with an unknown token", &s, 401, "Unauthorized");
    let v = within("version", stranger.apiserver_version())
        .await
        .expect("/version needs no token");
    assert!(
        v.git_version.starts_with("v1.34."),
        "a 1.34 server: {}",
        v.git_version
    );
}

#[tokio::test]
async fn node_identities_follow_node_restriction() {
    let sim = Sim::start().await;
    sim.namespace("staticpod-system").await;
    sim.running_pod("default", "nginx-n1", "n1").await;
    sim.running_pod("default", "nginx-n2", "n2").await;
    let node1 = sim.client(NODE1, "system:node:n1").await;
    let pods: Api<Pod> = Api::namespaced(node1.clone(), "default");
    let pp = PatchParams::default();
    let need = Patch::Strategic(
        json!({"status": {"conditions": [{"type": "PodNeedUpgrade", "status": "True"}]}}),
    );

    let listed = within("list", pods.list(&ListParams::default()))
        .await
        .expect("nodes may read pods");
    assert_eq!(listed.items.len(), 2);
    within("patch own", pods.patch_status("nginx-n1", &pp, &need))
        .await
        .expect("a node may patch its own mirror pod's status");
    let s = status(
        "patching another node's pod status",
        within("patch other", pods.patch_status("nginx-n2", &pp, &need)).await,
    );
    assert_status("patching another node's pod status", &s, 403, "Forbidden");
    for part in ["system:node:n1", "patch", "pods/status", "\"default\""] {
        assert!(
            s.message.contains(part),
            "the 403 names {part}: {}",
            s.message
        );
    }

    let foreign: Api<Lease> = Api::namespaced(node1.clone(), "staticpod-system");
    let s = status(
        "a node writing a lease outside kube-node-lease",
        within(
            "create",
            foreign.create(&PostParams::default(), &lease("slot-0", "n1")),
        )
        .await,
    );
    assert_status(
        "a node writing a lease outside kube-node-lease",
        &s,
        403,
        "Forbidden",
    );
    assert!(
        s.message.contains("kube-node-lease") && s.message.contains("staticpod-system"),
        "the 403 says where: {}",
        s.message
    );
    let own: Api<Lease> = Api::namespaced(node1.clone(), "kube-node-lease");
    within(
        "create",
        own.create(&PostParams::default(), &lease("n1", "n1")),
    )
    .await
    .expect("a node may write its lease in kube-node-lease");
    let s = status(
        "a node creating a pod for another node",
        within(
            "create",
            pods.create(&PostParams::default(), &pod("x", "n2")),
        )
        .await,
    );
    assert_status(
        "a node creating a pod for another node",
        &s,
        403,
        "Forbidden",
    );
}

#[tokio::test]
async fn rbac_grants_what_roles_and_bindings_say() {
    let sim = Sim::start().await;
    sim.running_pod("default", "web", "n1").await;
    let alice = sim.client(ALICE, "alice").await;
    let pods: Api<Pod> = Api::namespaced(alice.clone(), "default");
    let s = status(
        "alice listing pods without a binding",
        within("list", pods.list(&ListParams::default())).await,
    );
    assert_status("alice listing pods without a binding", &s, 403, "Forbidden");
    assert!(
        s.message
            .contains("User \"alice\" cannot list resource \"pods\"")
            && s.message.contains("\"default\""),
        "403 message: {}",
        s.message
    );

    let rbac = |kind: &str, ns: Option<&str>| {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "rbac.authorization.k8s.io",
            "v1",
            kind,
        ));
        match ns {
            Some(ns) => Api::<DynamicObject>::namespaced_with(sim.admin.clone(), ns, &ar),
            None => Api::<DynamicObject>::all_with(sim.admin.clone(), &ar),
        }
    };
    let create = async |api: Api<DynamicObject>, obj: Value| {
        let obj: DynamicObject = from(obj);
        within(
            "create an RBAC object",
            api.create(&PostParams::default(), &obj),
        )
        .await
        .unwrap_or_else(|e| panic!("creating RBAC object: {e}"));
    };
    create(rbac("Role", Some("default")), json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]})).await;
    create(rbac("RoleBinding", Some("default")), json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "devs-read-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "Group", "name": "devs", "apiGroup": "rbac.authorization.k8s.io"}]})).await;
    within("list", pods.list(&ListParams::default()))
        .await
        .expect("a RoleBinding to alice's group grants list");
    let s = status(
        "alice deleting a pod",
        within("delete", pods.delete("web", &DeleteParams::default())).await,
    );
    assert_status("alice deleting a pod (not granted)", &s, 403, "Forbidden");
    let s = status(
        "alice patching pod status",
        within(
            "patch",
            pods.patch_status("web", &PatchParams::default(), &Patch::Merge(json!({}))),
        )
        .await,
    );
    assert_status("pods does not grant pods/status", &s, 403, "Forbidden");
    let s = status(
        "alice listing pods in all namespaces",
        within(
            "list",
            Api::<Pod>::all(alice.clone()).list(&ListParams::default()),
        )
        .await,
    );
    assert_status(
        "a RoleBinding does not grant cluster-wide lists",
        &s,
        403,
        "Forbidden",
    );

    create(rbac("ClusterRole", None), json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "slot-0"},
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"], "resourceNames": ["slot-0"]},
                  {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]}]})).await;
    create(rbac("ClusterRoleBinding", None), json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "alice-slot-0"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "slot-0"},
        "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]})).await;
    within(
        "admin create",
        Api::<Lease>::namespaced(sim.admin.clone(), "default")
            .create(&PostParams::default(), &lease("slot-0", "n1")),
    )
    .await
    .expect("admin creates the lease");
    let leases: Api<Lease> = Api::namespaced(alice.clone(), "default");
    within("get", leases.get("slot-0"))
        .await
        .expect("resourceNames grants the named lease");
    let s = status(
        "alice getting another lease",
        within("get", leases.get("slot-1")).await,
    );
    assert_status(
        "resourceNames does not grant other names",
        &s,
        403,
        "Forbidden",
    );
    within(
        "patch",
        pods.patch_status("web", &PatchParams::default(), &Patch::Merge(json!({}))),
    )
    .await
    .expect("pods/status granted by the ClusterRole");
}
