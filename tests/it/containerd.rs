//! The agent's CRI client against a real containerd (started by `.ci/run` with
//! `packaging/ci-containerd.sh`, its own root and socket, and a registry on loopback serving a
//! tiny image): the image is pulled, `ImageStatus` then finds it, a second pull is a no-op,
//! and an image the registry lacks is refused as not found.

use std::sync::Arc;
use std::time::Duration;

use staticpod_puller::images::cri::{Cri, resolve};
use staticpod_puller::images::{Prepull, PullState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_containerd_pulls_through_the_agent_s_cri_client() {
    let (Ok(endpoint), Ok(image)) = (
        std::env::var("STATICPOD_PULLER_CRI_ENDPOINT"),
        std::env::var("STATICPOD_PULLER_CRI_IMAGE"),
    ) else {
        // CI always sets both (.ci/run starts containerd); a bare `cargo test` may not.
        eprintln!(
            "skipped: no containerd (set STATICPOD_PULLER_CRI_ENDPOINT and STATICPOD_PULLER_CRI_IMAGE, as .ci/run does with packaging/ci-containerd.sh)"
        );
        return;
    };
    let socket = resolve(Some(&endpoint))
        .expect("the endpoint is a socket")
        .expect("pre-pull on");
    let cri = Cri::new(&socket);
    assert!(
        !cri.present(&image).await.expect("ImageStatus answers"),
        "a fresh containerd does not have {image}"
    );
    let image_ref = cri.pull(&image).await.expect("PullImage pulls it");
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    assert!(cri.present(&image).await.expect("ImageStatus answers"));

    // The pre-pull finds it there: nothing pulled again.
    let changed = Arc::new(tokio::sync::Notify::new());
    let prepull = Prepull::new(Some(cri.clone()), Duration::from_secs(60), 2, changed);
    tokio::time::timeout(
        Duration::from_secs(30),
        prepull.ready("tiny", "hash-1", || vec![image.clone()]),
    )
    .await
    .expect("within 30 s")
    .expect("ready");
    assert_eq!(prepull.state("tiny", "hash-1"), Some(PullState::Ready));

    let missing = image.replace(":1", ":does-not-exist");
    let e = cri.pull(&missing).await.expect_err("not in the registry");
    assert!(e.permanent(), "a missing image is not retried: {e}");
}
