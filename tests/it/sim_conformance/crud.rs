//! Create, get, replace and delete through typed and dynamic APIs with one increasing
//! resourceVersion, and conflicts, AlreadyExists and NotFound as Status errors.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions};

use super::{Sim, assert_status, lease, rv_of, status, widget, within};

#[tokio::test]
async fn crud_with_typed_and_dynamic_apis_shares_one_resource_version() {
    let sim = Sim::start().await;
    sim.namespace("apps").await;
    let pods = sim.pods("apps");
    let created = sim.running_pod("apps", "web", "n1").await;
    let fetched = within("get", pods.get("web"))
        .await
        .expect("get the created pod");
    assert_eq!(
        fetched.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("n1")
    );
    assert_eq!(fetched.metadata.uid, created.metadata.uid);

    let leases: Api<Lease> = Api::namespaced(sim.admin.clone(), "apps");
    let l = within(
        "create lease",
        leases.create(&PostParams::default(), &lease("slot-0", "n1")),
    )
    .await
    .expect("create a lease");
    let ar = sim.widget_crd().await;
    let widgets: Api<DynamicObject> = Api::namespaced_with(sim.admin.clone(), "apps", &ar);
    let w = within(
        "create widget",
        widgets.create(&PostParams::default(), &widget(&ar, "w1", "s")),
    )
    .await
    .expect("create a widget");
    let (p, l, w) = (rv_of(&created), rv_of(&l), rv_of(&w));
    assert!(
        p < l && l < w,
        "one cluster-wide, increasing resourceVersion: pod {p} < lease {l} < widget {w}"
    );
    assert_eq!(
        sim.store.current_rv(),
        w,
        "the store's rv is the newest write's"
    );

    let mut replaced = within("get", leases.get("slot-0"))
        .await
        .expect("get the lease");
    replaced.spec.get_or_insert_default().holder_identity = Some("n2".into());
    let replaced = within(
        "replace",
        leases.replace("slot-0", &PostParams::default(), &replaced),
    )
    .await
    .expect("replace the lease");
    assert!(rv_of(&replaced) > w, "an update bumps the resourceVersion");
    assert_eq!(
        replaced.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("n2")
    );

    let list = within("list", leases.list(&ListParams::default()))
        .await
        .expect("list leases");
    assert_eq!(
        list.items.len(),
        1,
        "one lease in apps, saw {:?}",
        list.items
    );
    assert!(
        list.metadata.resource_version.is_some(),
        "lists carry the store's resourceVersion"
    );

    within("delete", widgets.delete("w1", &DeleteParams::default()))
        .await
        .expect("delete the widget");
    within("delete", leases.delete("slot-0", &DeleteParams::default()))
        .await
        .expect("delete the lease");
    let s = status(
        "get a deleted lease",
        within("get", leases.get("slot-0")).await,
    );
    assert_status("get a deleted lease", &s, 404, "NotFound");
    assert!(
        s.message.contains("slot-0"),
        "the 404 names the object: {}",
        s.message
    );
    let nss = within(
        "list namespaces",
        Api::<Namespace>::all(sim.admin.clone()).list(&ListParams::default()),
    )
    .await
    .expect("list namespaces");
    let names: Vec<_> = nss
        .items
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    for want in ["default", "kube-node-lease", "apps"] {
        assert!(
            names.iter().any(|n| n == want),
            "namespace {want} listed; saw {names:?}"
        );
    }
}

#[tokio::test]
async fn conflicts_already_exists_and_not_found_are_status_errors() {
    let sim = Sim::start().await;
    let leases: Api<Lease> = Api::namespaced(sim.admin.clone(), "default");
    let first = within(
        "create",
        leases.create(&PostParams::default(), &lease("slot-0", "n1")),
    )
    .await
    .expect("create");

    let s = status(
        "create it again",
        within(
            "create",
            leases.create(&PostParams::default(), &lease("slot-0", "n2")),
        )
        .await,
    );
    assert_status("create it again", &s, 409, "AlreadyExists");

    let mut newer = first.clone();
    newer.spec.get_or_insert_default().holder_identity = Some("n2".into());
    within(
        "replace",
        leases.replace("slot-0", &PostParams::default(), &newer),
    )
    .await
    .expect("replace with the current rv");
    let mut stale = first.clone();
    stale.spec.get_or_insert_default().holder_identity = Some("n3".into());
    let s = status(
        "replace with a stale rv",
        within(
            "replace",
            leases.replace("slot-0", &PostParams::default(), &stale),
        )
        .await,
    );
    assert_status("replace with a stale rv", &s, 409, "Conflict");

    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: first.metadata.resource_version.clone(),
            uid: None,
        }),
        ..Default::default()
    };
    let s = status(
        "delete with a stale rv precondition",
        within("delete", leases.delete("slot-0", &dp)).await,
    );
    assert_status("delete with a stale rv precondition", &s, 409, "Conflict");

    let s = status(
        "get a missing lease",
        within("get", leases.get("nope")).await,
    );
    assert_status("get a missing lease", &s, 404, "NotFound");
    let s = status(
        "create in a missing namespace",
        within(
            "create",
            Api::<Lease>::namespaced(sim.admin.clone(), "missing")
                .create(&PostParams::default(), &lease("x", "n1")),
        )
        .await,
    );
    assert_status("create in a missing namespace", &s, 404, "NotFound");
}
