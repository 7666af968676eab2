//! Watches: resuming from a resourceVersion with selectors, 410 Expired from a compacted one,
//! bookmarks and initial events, and `kube::runtime::watcher` across closed watches.

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use serde_json::json;

use super::{STEP, Sim, lease, next_change, next_event, pod, within};

#[tokio::test]
async fn watch_resumes_from_a_resource_version_and_follows_selectors() {
    let sim = Sim::start().await;
    let leases: Api<Lease> = Api::namespaced(sim.admin.clone(), "default");
    let first = within(
        "create",
        leases.create(&PostParams::default(), &lease("l1", "n1")),
    )
    .await
    .expect("create l1");
    let from = first.metadata.resource_version.clone().expect("rv");
    within(
        "create",
        leases.create(&PostParams::default(), &lease("l2", "n1")),
    )
    .await
    .expect("create l2");
    within(
        "patch",
        leases.patch(
            "l1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "n2"}})),
        ),
    )
    .await
    .expect("patch l1");
    within("delete", leases.delete("l2", &DeleteParams::default()))
        .await
        .expect("delete l2");

    let mut stream = within(
        "watch",
        leases.watch(&WatchParams::default().timeout(60), &from),
    )
    .await
    .expect("watch from l1's rv")
    .boxed();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_change("a replayed change", &mut stream).await);
    }
    let kinds: Vec<_> = seen.iter().map(|(k, n, _)| format!("{k} {n}")).collect();
    assert_eq!(
        kinds,
        ["ADDED l2", "MODIFIED l1", "DELETED l2"],
        "the changes after rv {from}, in order"
    );
    assert!(
        seen.windows(2).all(|w| w[0].2 < w[1].2),
        "resourceVersions increase: {seen:?}"
    );

    within(
        "create",
        leases.create(&PostParams::default(), &lease("l3", "n1")),
    )
    .await
    .expect("create l3");
    let (kind, name, _) = next_change("a live change", &mut stream).await;
    assert_eq!(
        (kind, name.as_str()),
        ("ADDED", "l3"),
        "live changes follow the replay"
    );

    // A label-selected watch sees an object leave and enter the selection.
    let mut selected = within(
        "watch",
        leases.watch(&WatchParams::default().labels("pick=yes").timeout(60), "0"),
    )
    .await
    .expect("watch selected")
    .boxed();
    let pick = |v: Option<&str>| Patch::Merge(json!({"metadata": {"labels": {"pick": v}}}));
    within(
        "label",
        leases.patch("l3", &PatchParams::default(), &pick(Some("yes"))),
    )
    .await
    .expect("label l3");
    assert_eq!(
        next_change("l3 entering the selection", &mut selected)
            .await
            .0,
        "ADDED"
    );
    within(
        "unlabel",
        leases.patch("l3", &PatchParams::default(), &pick(None)),
    )
    .await
    .expect("unlabel l3");
    assert_eq!(
        next_change("l3 leaving the selection", &mut selected)
            .await
            .0,
        "DELETED"
    );
}

#[tokio::test]
async fn watch_from_a_compacted_resource_version_gets_410_expired() {
    let sim = Sim::with_history(3).await;
    let leases: Api<Lease> = Api::namespaced(sim.admin.clone(), "default");
    let first = within(
        "create",
        leases.create(&PostParams::default(), &lease("l0", "n1")),
    )
    .await
    .expect("create");
    for i in 1..6 {
        within(
            "create",
            leases.create(&PostParams::default(), &lease(&format!("l{i}"), "n1")),
        )
        .await
        .expect("create");
    }
    let from = first.metadata.resource_version.expect("rv");
    let mut stream = within("watch", leases.watch(&WatchParams::default(), &from))
        .await
        .expect("the watch starts (200)")
        .boxed();
    match next_event("the ERROR event", &mut stream).await {
        WatchEvent::Error(s) => assert_eq!(
            (s.code, s.reason.as_str()),
            (410, "Expired"),
            "ERROR event carries 410 Expired: {s:?}"
        ),
        other => {
            panic!("expected an ERROR event with 410 for rv {from} (history of 3), got {other:?}")
        }
    }
    assert!(
        within("the stream end", stream.next()).await.is_none(),
        "the watch ends after the 410"
    );
}

#[tokio::test]
async fn watches_get_bookmarks_and_initial_events() {
    let sim = Sim::start().await;
    let leases: Api<Lease> = Api::namespaced(sim.admin.clone(), "default");
    within(
        "create",
        leases.create(&PostParams::default(), &lease("l1", "n1")),
    )
    .await
    .expect("create");
    let mut stream = within(
        "watch",
        leases.watch(&WatchParams::default().timeout(60), "0"),
    )
    .await
    .expect("watch")
    .boxed();
    match next_event("the synthetic ADDED", &mut stream).await {
        WatchEvent::Added(l) => assert_eq!(l.metadata.name.as_deref(), Some("l1")),
        other => panic!("a watch from rv 0 starts with ADDED for current objects; got {other:?}"),
    }
    let current = sim.store.current_rv();
    match next_event("a bookmark", &mut stream).await {
        WatchEvent::Bookmark(b) => {
            let rv: u64 = b
                .metadata
                .resource_version
                .parse()
                .expect("numeric bookmark rv");
            assert!(
                rv >= current,
                "the bookmark's rv {rv} is at least the store's {current} at watch start"
            );
        }
        other => panic!("expected a bookmark within {STEP:?}, got {other:?}"),
    }
    // Streaming lists: initial events end with an annotated bookmark.
    let wp = WatchParams::default().initial_events().timeout(60);
    let mut stream = within("watch", leases.watch(&wp, "0"))
        .await
        .expect("watch with sendInitialEvents")
        .boxed();
    assert!(matches!(
        next_event("initial ADDED", &mut stream).await,
        WatchEvent::Added(_)
    ));
    match next_event("the initial-events-end bookmark", &mut stream).await {
        WatchEvent::Bookmark(b) => assert!(
            b.metadata
                .annotations
                .contains_key("k8s.io/initial-events-end"),
            "annotated: {:?}",
            b.metadata.annotations
        ),
        other => panic!("expected the initial-events-end bookmark, got {other:?}"),
    }
    // timeoutSeconds ends the stream.
    let mut short = within(
        "watch",
        leases.watch(&WatchParams::default().timeout(1), &current.to_string()),
    )
    .await
    .expect("watch")
    .boxed();
    loop {
        match within("the watch to time out", short.next()).await {
            None => break,
            Some(Ok(WatchEvent::Bookmark(_))) => {}
            Some(other) => panic!("expected no events before the timeout, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn kube_runtime_watcher_sees_changes_and_recovers_after_closed_watches() {
    let sim = Sim::start().await;
    let pods = sim.pods("default");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = watcher(pods.clone(), watcher::Config::default());
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let seen = match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    format!(
                        "apply {} {:?}",
                        p.metadata.name.unwrap_or_default(),
                        p.metadata.labels.unwrap_or_default().get("v")
                    )
                }
                Ok(watcher::Event::Delete(p)) => {
                    format!("delete {}", p.metadata.name.unwrap_or_default())
                }
                Ok(watcher::Event::Init) => "init".into(),
                Ok(watcher::Event::InitDone) => "init done".into(),
                Err(e) => format!("error {e}"),
            };
            if tx.send(seen).is_err() {
                break;
            }
        }
    });
    let mut expect = async |want: &str| {
        let mut seen = Vec::new();
        loop {
            let event = within(
                &format!("the watcher to see {want:?} (seen so far: {seen:?})"),
                rx.recv(),
            )
            .await
            .expect("watcher task alive");
            if event == want {
                return;
            }
            seen.push(event);
        }
    };
    expect("init done").await;
    within(
        "create",
        pods.create(&PostParams::default(), &pod("p1", "n1")),
    )
    .await
    .expect("create p1");
    expect("apply p1 None").await;

    sim.server.faults().close_watches();
    let label = |v: &str| Patch::Merge(json!({"metadata": {"labels": {"v": v}}}));
    within(
        "patch",
        pods.patch("p1", &PatchParams::default(), &label("1")),
    )
    .await
    .expect("patch p1");
    expect("apply p1 Some(\"1\")").await;
    sim.server.faults().close_watches();
    within(
        "patch",
        pods.patch("p1", &PatchParams::default(), &label("2")),
    )
    .await
    .expect("patch p1");
    expect("apply p1 Some(\"2\")").await;
    within("delete", pods.delete("p1", &DeleteParams::default()))
        .await
        .expect("delete p1");
    expect("delete p1").await;
    task.abort();
}
