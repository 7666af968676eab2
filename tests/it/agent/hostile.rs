//! Hostile objects (a manifest name escaping the manifest directory, a pod mounting a secret)
//! are refused with an Event and write nothing, while a good object converges beside them,
//! where the API server lets them through (CRDs without this project's validation rules).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use staticpod_puller::sim::kubelet::Timings;

use super::env::{Env, Settings};
use super::watch::{file_hash, listing, mirror, stamp};
use super::{NEW_IMAGE, OLD_IMAGE, hand_placed, static_pod, web};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_objects_are_refused_and_write_nothing_while_a_good_object_converges() {
    let mut env = Env::start(1, Timings::fast()).await;
    let node = env.nodes()[0].clone();
    let manifest_dir = env.manifest_dir(&node);
    // Where `../../etc/cron.d/x` points from the manifest directory: make it writable.
    let cron_d = manifest_dir.join("../../etc/cron.d");
    std::fs::create_dir_all(&cron_d).expect("creating the decoy cron.d");
    std::fs::write(
        manifest_dir.join("leaky.yaml"),
        hand_placed("leaky", OLD_IMAGE),
    )
    .expect("placing leaky.yaml");
    std::fs::write(manifest_dir.join("web.yaml"), hand_placed("web", OLD_IMAGE))
        .expect("placing web.yaml");
    env.wait(
        "the hand-placed pods Ready",
        Duration::from_secs(20),
        async || {
            let m = (
                mirror(env.store(), "leaky", &node),
                mirror(env.store(), "web", &node),
            );
            match &m {
                (Some(a), Some(b)) if a.ready && b.ready => Ok(()),
                _ => Err(format!("{m:?}")),
            }
        },
    )
    .await;
    let leaky_before = stamp(&manifest_dir.join("leaky.yaml"));
    // The API server refuses these objects (the CRDs' rules); a cluster without the rules
    // lets them through to the agents.
    env.drop_crd_rules();

    env.create(static_pod(
        "escape",
        "../../etc/cron.d/x",
        json!(1),
        web(NEW_IMAGE),
    ))
    .await;
    let mut secret = web(NEW_IMAGE);
    secret["volumes"] = json!([{"name": "creds", "secret": {"secretName": "node-creds"}}]);
    secret["containers"][0]["volumeMounts"] = json!([{"name": "creds", "mountPath": "/creds"}]);
    env.create(static_pod("leaky", "leaky", json!(1), secret))
        .await;
    let (generation, web_hash) = env
        .create(static_pod("web", "web", json!(1), web(NEW_IMAGE)))
        .await;
    env.start_controller();
    env.start_agents(Settings::patient());

    env.wait_status("web", generation, (1, 1, 1), Duration::from_secs(20))
        .await;
    let refused = env
        .wait(
            "Refused events for escape and leaky",
            Duration::from_secs(10),
            async || {
                let events = env.events("Refused").await?;
                let names: BTreeSet<String> = events
                    .iter()
                    .filter_map(|e| e.involved_object.name.clone())
                    .collect();
                if names.contains("escape") && names.contains("leaky") {
                    Ok(events)
                } else {
                    Err(format!("Refused events for {names:?}"))
                }
            },
        )
        .await;
    for e in &refused {
        let message = e.message.clone().unwrap_or_default();
        assert_eq!(e.type_.as_deref(), Some("Warning"), "{message}");
        let field = match e.involved_object.name.as_deref() {
            Some("escape") => "spec.staticPodManifest",
            Some("leaky") => "secret",
            other => panic!("unexpected Refused event for {other:?}: {message}"),
        };
        assert!(
            message.contains(&node) && message.contains(field),
            "expected the node and {field} named in: {message}"
        );
    }

    let after = listing(&manifest_dir);
    let names: Vec<&String> = after.keys().collect();
    assert_eq!(
        names,
        vec!["leaky.yaml", "web.yaml"],
        "expected nothing but the two manifests in the manifest directory"
    );
    assert_eq!(
        stamp(&manifest_dir.join("leaky.yaml")),
        leaky_before,
        "leaky.yaml must not be rewritten by a refused object"
    );
    assert_eq!(
        file_hash(&manifest_dir.join("web.yaml")).as_deref(),
        Some(web_hash.as_str()),
        "the good object converges on the same node"
    );
    let escaped: Vec<String> = listing(&cron_d).into_keys().collect();
    assert!(
        escaped.is_empty(),
        "nothing may be written outside the manifest directory; {} holds {escaped:?}",
        cron_d.display()
    );
}
