//! Merge, JSON and strategic merge patches.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;

use super::{Sim, assert_status, from, pod, status, widget, within};

#[tokio::test]
async fn merge_json_and_strategic_patches() {
    let sim = Sim::start().await;
    let ar = sim.widget_crd().await;
    let widgets: Api<DynamicObject> = Api::namespaced_with(sim.admin.clone(), "default", &ar);
    within(
        "create",
        widgets.create(&PostParams::default(), &widget(&ar, "w1", "s")),
    )
    .await
    .expect("create");
    let pp = PatchParams::default();
    let w = within(
        "merge patch",
        widgets.patch("w1", &pp, &Patch::Merge(json!({"spec": {"colour": "red"}}))),
    )
    .await
    .expect("merge patch");
    assert_eq!(
        w.data["spec"],
        json!({"size": "s", "colour": "red"}),
        "merge patch merges maps"
    );
    let ops: json_patch::Patch = from(json!([
        {"op": "test", "path": "/spec/size", "value": "s"},
        {"op": "replace", "path": "/spec/size", "value": "m"},
        {"op": "remove", "path": "/spec/colour"},
    ]));
    let w = within(
        "json patch",
        widgets.patch("w1", &pp, &Patch::<()>::Json(ops)),
    )
    .await
    .expect("json patch");
    assert_eq!(w.data["spec"], json!({"size": "m"}), "JSON patch ops apply");
    let failing: json_patch::Patch =
        from(json!([{"op": "test", "path": "/spec/size", "value": "nope"}]));
    let s = status(
        "a failing JSON patch test op",
        within(
            "json patch",
            widgets.patch("w1", &pp, &Patch::<()>::Json(failing)),
        )
        .await,
    );
    assert!(
        s.code == 422 || s.code == 400,
        "a failed test op is refused: {s:?}"
    );
    let s = status(
        "strategic merge patch on a CR",
        within(
            "smp",
            widgets.patch("w1", &pp, &Patch::Strategic(json!({"spec": {}}))),
        )
        .await,
    );
    assert_status(
        "strategic merge patch on a custom resource",
        &s,
        415,
        "UnsupportedMediaType",
    );

    // Pod status: SMP merges conditions by type (kubelet's Ready survives); a merge patch
    // replaces the list.
    sim.running_pod("default", "mirror-n1", "n1").await;
    let pods = sim.pods("default");
    let need = json!({"status": {"conditions": [{"type": "PodNeedUpgrade", "status": "True"}]}});
    let p = within(
        "smp",
        pods.patch_status("mirror-n1", &pp, &Patch::Strategic(need.clone())),
    )
    .await
    .expect("strategic merge patch");
    let types = |p: &Pod| -> Vec<String> {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(|cs| cs.iter().map(|c| c.type_.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        types(&p),
        ["PodScheduled", "Ready", "PodNeedUpgrade"],
        "SMP keeps Ready"
    );
    let p = within(
        "merge",
        pods.patch_status("mirror-n1", &pp, &Patch::Merge(need)),
    )
    .await
    .expect("merge patch");
    assert_eq!(
        types(&p),
        ["PodNeedUpgrade"],
        "a merge patch replaces the conditions list"
    );

    let s = status(
        "server-side apply",
        within(
            "apply",
            pods.patch(
                "mirror-n1",
                &PatchParams::apply("test"),
                &Patch::Apply(json!({})),
            ),
        )
        .await,
    );
    assert_status("server-side apply", &s, 415, "UnsupportedMediaType");
    assert!(
        s.message.contains("server-side apply"),
        "the 415 says why: {}",
        s.message
    );
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let s = status(
        "dry-run create",
        within("create", pods.create(&dry, &pod("dry", "n1"))).await,
    );
    assert_status("dry-run create", &s, 400, "BadRequest");
    assert!(
        within("get", pods.get_opt("dry"))
            .await
            .expect("get")
            .is_none(),
        "a refused dry run persists nothing"
    );
}
