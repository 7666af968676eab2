//! Lists with label and field selectors.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::{Sim, pod, within};

#[tokio::test]
async fn list_with_label_and_field_selectors() {
    let sim = Sim::start().await;
    sim.namespace("other").await;
    for (ns, name, node) in [
        ("default", "a", "n1"),
        ("default", "b", "n2"),
        ("other", "c", "n1"),
    ] {
        within(
            "create",
            sim.pods(ns)
                .create(&PostParams::default(), &pod(name, node)),
        )
        .await
        .expect("create pod");
    }
    within(
        "label",
        sim.pods("default").patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "edge"}}})),
        ),
    )
    .await
    .expect("label pod b");
    let all: Api<Pod> = Api::all(sim.admin.clone());
    let names = |list: kube::api::ObjectList<Pod>| {
        let mut n: Vec<String> = list
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        n.sort();
        n
    };
    for (labels, fields, want) in [
        (None, None, vec!["a", "b", "c"]),
        (None, Some("spec.nodeName=n1"), vec!["a", "c"]),
        (None, Some("metadata.namespace=other"), vec!["c"]),
        (None, Some("metadata.name=b"), vec!["b"]),
        (
            None,
            Some("metadata.namespace!=other,spec.nodeName=n1"),
            vec!["a"],
        ),
        (Some("tier=edge"), None, vec!["b"]),
        (Some("app=web,!tier"), None, vec!["a", "c"]),
        (
            Some("node in (n1,n3)"),
            Some("metadata.namespace=default"),
            vec!["a"],
        ),
    ] {
        let mut lp = ListParams::default();
        if let Some(l) = labels {
            lp = lp.labels(l);
        }
        if let Some(f) = fields {
            lp = lp.fields(f);
        }
        let got = names(within("list", all.list(&lp)).await.expect("list pods"));
        assert_eq!(
            got, want,
            "labelSelector {labels:?} fieldSelector {fields:?}"
        );
    }
    let got = names(
        within(
            "list",
            sim.pods("default")
                .list(&ListParams::default().fields("spec.nodeName=n1")),
        )
        .await
        .expect("list"),
    );
    assert_eq!(got, vec!["a"], "namespaced list with a field selector");
    let meta = within(
        "list metadata",
        all.list_metadata(&ListParams::default().labels("tier=edge")),
    )
    .await
    .expect("list metadata");
    assert_eq!(
        meta.items.len(),
        1,
        "PartialObjectMetadata lists are served"
    );
}
