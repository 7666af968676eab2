//! What the agent trusts: bundles dropped on the node are verified and applied once (replayed
//! or forged ones rejected with a reason), and with signed templates required only a validly
//! signed object is acted on.

use std::path::Path;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use serde_json::json;
use staticpod_puller::manifest::template_hash;
use staticpod_puller::resources::StaticPod;
use staticpod_puller::sim::kubelet::Timings;

use super::env::{Env, Settings};
use super::watch::{file_hash, mirror, stamp};
use super::{FIXED_IMAGE, NEW_IMAGE, OLD_IMAGE, bundle_items, static_pod, web};
use crate::support;

/// Run the CLI in `dir`; assert it succeeded; its standard output.
fn cli_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, stdout, stderr) = support::run_in(dir, args);
    assert!(ok, "{args:?}: {stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_bundle_is_verified_applied_once_and_bad_ones_are_rejected_with_a_reason() {
    let mut env = Env::start(1, Timings::fast()).await;
    // Rolling upgrades go ahead on the controller's grants.
    env.start_controller();
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let node = env.nodes()[0].clone();
    let d = env.dir.path().to_path_buf();
    let bin = |args: &[&str]| cli_ok(&d, args);
    bin(&["bundle", "keygen", "--out", "ops"]);
    bin(&["bundle", "keygen", "--out", "stranger"]);
    let items = bundle_items(NEW_IMAGE);
    std::fs::write(d.join("items.yaml"), &items).expect("writing items");
    bin(&[
        "bundle",
        "sign",
        "--key",
        "ops.key",
        "--sequence",
        "5",
        "--node",
        &node,
        "items.yaml",
        "-o",
        "good.bundle",
    ]);
    bin(&[
        "bundle",
        "sign",
        "--key",
        "stranger.key",
        "--sequence",
        "6",
        "items.yaml",
        "-o",
        "forged.bundle",
    ]);
    let drop_dir = d.join("drop");
    let kubelet_pods = env.kubelet_pods_url(&node);
    let config = env.write_config_with(
        &node,
        Settings::patient(),
        "bundles",
        &format!(
            "localApi:\n  listen: 127.0.0.1:0\nota:\n  kubeletPodsUrl: {kubelet_pods}\nbundle:\n  dropDir: {}\ntrust:\n  trustedKeys: [{}]\n",
            drop_dir.display(),
            d.join("ops.pub").display()
        ),
    );
    let agent = env.spawn_agent_with(&node, &config);
    env.agents.insert(node.clone(), agent);
    let sp: StaticPod = serde_saphyr::from_str(&items).expect("the items");
    let new_hash = template_hash(&sp.spec.template);

    // Copied under a dot name, then renamed into place: read once complete.
    env.wait("the drop directory", Duration::from_secs(20), async || {
        if drop_dir.join("processed").is_dir() {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    std::fs::copy(d.join("good.bundle"), drop_dir.join(".good.bundle.part")).expect("copying");
    std::fs::rename(
        drop_dir.join(".good.bundle.part"),
        drop_dir.join("good.bundle"),
    )
    .expect("renaming into place");
    env.wait(
        "the dropped bundle applied and moved to processed/",
        Duration::from_secs(30),
        async || {
            let processed = drop_dir.join("processed/good.bundle").exists();
            match mirror(env.store(), "nginx", &node) {
                Some(m) if processed && m.ready && m.hash.as_deref() == Some(&new_hash) => Ok(()),
                other => Err(format!("processed {processed}, mirror {other:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        file_hash(&env.manifest(&node, "nginx")).as_deref(),
        Some(new_hash.as_str())
    );

    // The same bundle again (replay), and one signed by an untrusted key.
    std::fs::copy(d.join("good.bundle"), drop_dir.join("again.bundle")).expect("copying");
    std::fs::copy(d.join("forged.bundle"), drop_dir.join("forged.bundle")).expect("copying");
    for (name, reason) in [("again.bundle", "replayed"), ("forged.bundle", "")] {
        let reason_file = drop_dir.join(format!("rejected/{name}.reason"));
        let text = env
            .wait(
                &format!("{name} rejected with a reason"),
                Duration::from_secs(20),
                async || std::fs::read_to_string(&reason_file).map_err(|e| e.to_string()),
            )
            .await;
        assert!(
            drop_dir.join("rejected").join(name).exists() && text.contains(reason),
            "{name}: {text}"
        );
        if name == "forged.bundle" {
            assert!(
                text.starts_with("bad_signature") || text.starts_with("threshold"),
                "an untrusted signer: {text}"
            );
        } else {
            assert!(text.contains("sequence 5"), "the replay says why: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_signed_templates_required_only_a_validly_signed_object_is_acted_on() {
    let mut env = Env::start(1, Timings::fast()).await;
    // Rolling upgrades go ahead on the controller's grants.
    env.start_controller();
    env.hand_place_everywhere("nginx", OLD_IMAGE).await;
    let node = env.nodes()[0].clone();
    let d = env.dir.path().to_path_buf();
    let cli_ok = |args: &[&str]| cli_ok(&d, args);
    cli_ok(&["bundle", "keygen", "--out", "ops"]);
    let config = env.write_config_with(
        &node,
        Settings::patient(),
        "signed",
        &format!(
            "localApi:\n  listen: 127.0.0.1:0\ntrust:\n  trustedKeys: [{}]\n  requireSignedTemplates: true\n",
            d.join("ops.pub").display()
        ),
    );
    let agent = env.spawn_agent_with(&node, &config);
    env.agents.insert(node.clone(), agent);
    let file = env.manifest(&node, "nginx");
    let before = stamp(&file);

    // Unsigned: refused, nothing written.
    let object = static_pod("nginx", "nginx", json!(1), web(NEW_IMAGE));
    let (_, new_hash) = env.create(object.clone()).await;
    let message = env.wait_event("Refused", "not signed").await;
    assert!(message.contains(&node), "{message}");
    assert_eq!(stamp(&file), before, "an unsigned object writes nothing");

    // Signed with `bundle sign-object` and applied: acted on.
    std::fs::write(d.join("object.yaml"), object.to_string()).expect("writing the object");
    let signed = cli_ok(&["bundle", "sign-object", "--key", "ops.key", "object.yaml"]);
    let signed: StaticPod = serde_saphyr::from_str(&signed).expect("the signed object");
    let annotations = json!({"metadata": {"annotations": signed.metadata.annotations}});
    env.static_pods()
        .patch(
            "nginx",
            &PatchParams::default(),
            &Patch::Merge(&annotations),
        )
        .await
        .expect("annotating the object");
    env.wait(
        "the signed template written",
        Duration::from_secs(20),
        async || match file_hash(&file) {
            Some(h) if h == new_hash => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;

    // The template changed without a new signature: refused again, the file stays.
    env.set_image("nginx", FIXED_IMAGE).await;
    env.wait_event("Refused", "template was changed").await;
    assert_eq!(file_hash(&file).as_deref(), Some(new_hash.as_str()));
}
