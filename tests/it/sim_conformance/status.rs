//! metadata.generation following the spec, and status as a subresource.

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;

use super::{Sim, rv_of, widget, within};

#[tokio::test]
async fn generation_follows_spec_and_status_is_a_subresource() {
    let sim = Sim::start().await;
    let ar = sim.widget_crd().await;
    let widgets: Api<DynamicObject> = Api::namespaced_with(sim.admin.clone(), "default", &ar);
    let w = within(
        "create",
        widgets.create(&PostParams::default(), &widget(&ar, "w1", "s")),
    )
    .await
    .expect("create a widget");
    assert_eq!(
        w.metadata.generation,
        Some(1),
        "a new object has generation 1"
    );

    let pp = PatchParams::default();
    let w = within(
        "patch spec",
        widgets.patch("w1", &pp, &Patch::Merge(json!({"spec": {"size": "m"}}))),
    )
    .await
    .expect("patch spec");
    assert_eq!(
        w.metadata.generation,
        Some(2),
        "a spec change bumps the generation"
    );
    let w = within(
        "patch labels",
        widgets.patch(
            "w1",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        ),
    )
    .await
    .expect("patch labels");
    assert_eq!(
        w.metadata.generation,
        Some(2),
        "a metadata change does not bump the generation"
    );

    let w = within(
        "patch status",
        widgets.patch_status(
            "w1",
            &pp,
            &Patch::Merge(json!({"spec": {"size": "xl"}, "status": {"count": 3}})),
        ),
    )
    .await
    .expect("patch status");
    assert_eq!(
        w.data["status"]["count"], 3,
        "the status subresource writes status"
    );
    assert_eq!(
        w.data["spec"]["size"], "m",
        "the status subresource ignores spec"
    );
    assert_eq!(
        w.metadata.generation,
        Some(2),
        "a status change does not bump the generation"
    );

    let mut replaced = w.clone();
    replaced.data["status"] = json!({"count": 99});
    replaced.data["spec"] = json!({"size": "l"});
    let w = within(
        "replace",
        widgets.replace("w1", &PostParams::default(), &replaced),
    )
    .await
    .expect("replace");
    assert_eq!(
        (
            w.data["spec"]["size"].clone(),
            w.data["status"]["count"].clone()
        ),
        (json!("l"), json!(3)),
        "the main resource ignores status"
    );
    assert_eq!(w.metadata.generation, Some(3));

    let before = rv_of(&w);
    let same = within(
        "no-op patch",
        widgets.patch("w1", &pp, &Patch::Merge(json!({"spec": {"size": "l"}}))),
    )
    .await
    .expect("no-op patch");
    assert_eq!(
        rv_of(&same),
        before,
        "a no-op write keeps the resourceVersion"
    );
}
