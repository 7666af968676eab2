//! Table output (the columns kubectl prints, CRD printer columns included) and discovery of
//! the built-in and CRD-defined types.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use serde_json::json;

use super::{Sim, TABLE, lease, widget, within};

#[tokio::test]
async fn tables_print_columns_for_kubectl() {
    let sim = Sim::start().await;
    let ar = sim.widget_crd().await;
    let widgets: Api<DynamicObject> = Api::namespaced_with(sim.admin.clone(), "default", &ar);
    within(
        "create",
        widgets.create(&PostParams::default(), &widget(&ar, "w1", "s")),
    )
    .await
    .expect("create");
    let status_patch = Patch::Merge(
        json!({"status": {"count": 3, "conditions": [{"type": "Ready", "status": "True"}]}}),
    );
    within(
        "status",
        widgets.patch_status("w1", &PatchParams::default(), &status_patch),
    )
    .await
    .expect("patch status");

    let table = sim
        .raw(
            &sim.admin,
            "GET",
            "/apis/example.dev/v1/namespaces/default/widgets",
            Some(TABLE),
            None,
        )
        .await
        .expect("a Table");
    assert_eq!(
        (table["kind"].as_str(), table["apiVersion"].as_str()),
        (Some("Table"), Some("meta.k8s.io/v1")),
        "{table}"
    );
    let columns: Vec<(&str, i64)> = table["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default(),
                c["priority"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [
            ("Name", 0),
            ("Size", 0),
            ("Count", 0),
            ("Ready", 0),
            ("Wide", 1),
            ("Age", 0)
        ],
        "Name + the CRD's printer columns"
    );
    let row = &table["rows"][0];
    let cells = row["cells"].as_array().expect("cells");
    assert_eq!(
        cells[..5],
        [json!("w1"), json!("s"), json!(3), json!("True"), json!("s")],
        "cells from the JSONPaths: {row}"
    );
    let age = cells[5].as_str().unwrap_or_default();
    assert!(
        age.ends_with('s') && age[..age.len() - 1].parse::<u64>().is_ok(),
        "a date column renders as an age like 5s: {age:?}"
    );
    assert_eq!(
        row["object"]["kind"], "PartialObjectMetadata",
        "rows carry the object's metadata by default"
    );
    assert_eq!(row["object"]["metadata"]["name"], "w1");

    let one = sim
        .raw(
            &sim.admin,
            "GET",
            "/apis/example.dev/v1/namespaces/default/widgets/w1?includeObject=Object",
            Some(TABLE),
            None,
        )
        .await
        .expect("a Table for one");
    assert_eq!(
        one["rows"].as_array().map(Vec::len),
        Some(1),
        "a single get gives one row"
    );
    assert_eq!(
        one["rows"][0]["object"]["kind"], "Widget",
        "includeObject=Object embeds the object"
    );

    sim.running_pod("default", "web", "n1").await;
    let pods = sim
        .raw(
            &sim.admin,
            "GET",
            "/api/v1/namespaces/default/pods",
            Some(TABLE),
            None,
        )
        .await
        .expect("pod table");
    let columns: Vec<(&str, i64)> = pods["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default(),
                c["priority"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [
            ("Name", 0),
            ("Ready", 0),
            ("Status", 0),
            ("Restarts", 0),
            ("Age", 0),
            ("IP", 1),
            ("Node", 1),
            ("Nominated Node", 1),
            ("Readiness Gates", 1)
        ]
    );
    assert_eq!(pods["rows"][0]["cells"][2], "Running");
    assert_eq!(pods["rows"][0]["cells"][6], "n1", "the wide NODE column");

    within(
        "lease",
        Api::<Lease>::namespaced(sim.admin.clone(), "default")
            .create(&PostParams::default(), &lease("slot-0", "n1")),
    )
    .await
    .expect("lease");
    let leases = sim
        .raw(
            &sim.admin,
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/default/leases",
            Some(TABLE),
            None,
        )
        .await
        .expect("lease table");
    assert_eq!(
        leases["rows"][0]["cells"]
            .as_array()
            .map(|c| &c[..2])
            .unwrap_or_default(),
        [json!("slot-0"), json!("n1")],
        "NAME HOLDER AGE: {leases}"
    );
}

#[tokio::test]
async fn discovery_serves_builtins_and_crd_defined_types() {
    let sim = Sim::start().await;
    let core = sim
        .raw(&sim.admin, "GET", "/api/v1", None, None)
        .await
        .expect("/api/v1");
    let names: Vec<&str> = core["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for want in ["pods", "pods/status", "nodes", "namespaces", "events"] {
        assert!(names.contains(&want), "/api/v1 lists {want}: {names:?}");
    }
    let gvk = GroupVersionKind::gvk("example.dev", "v1", "Widget");
    let before = within("discovery", kube::Discovery::new(sim.admin.clone()).run())
        .await
        .expect("discovery runs");
    assert!(
        before.resolve_gvk(&gvk).is_none(),
        "no Widget before its CRD"
    );
    sim.widget_crd().await;
    let after = within("discovery", kube::Discovery::new(sim.admin.clone()).run())
        .await
        .expect("discovery runs");
    let (ar, caps) = after
        .resolve_gvk(&gvk)
        .expect("the CRD-defined Widget is discovered");
    assert_eq!(ar.plural, "widgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let group = sim
        .raw(&sim.admin, "GET", "/apis/example.dev/v1", None, None)
        .await
        .expect("group version");
    assert!(
        group.to_string().contains("widgets/status"),
        "the status subresource is listed: {group}"
    );
    let aggregated =
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
    let apis = sim
        .raw(&sim.admin, "GET", "/apis", Some(aggregated), None)
        .await
        .expect("/apis");
    assert_eq!(
        apis["kind"], "APIGroupList",
        "aggregated discovery requests get the plain form"
    );
    for path in ["/healthz", "/readyz", "/livez"] {
        let ok = within(
            path,
            sim.admin
                .request_text(http::Request::get(path).body(vec![]).expect("request")),
        )
        .await
        .expect("health");
        assert_eq!(ok, "ok", "{path}");
    }
}
