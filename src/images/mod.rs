//! Images on the node before the upgrade: the agent pulls a new template's images through the
//! node's container runtime (CRI ImageService) before it writes the manifest, and says so on
//! its mirror pod with OpenYurt's condition `PodImageReady` (True once every image of the
//! hash is on the node; False with reason `Pulling` or `PullFailed`; the message names the
//! hash, which the controller reads).

pub mod cri;
mod prepull;

use k8s_openapi::api::core::v1::Pod;

pub use prepull::{Prepull, PullState, REPORT_AFTER};

/// OpenYurt's pod condition: the images of the desired template are on the node.
pub const IMAGE_READY: &str = "PodImageReady";
/// `PodImageReady=False` reasons.
pub const PULLING: &str = "Pulling";
pub const PULL_FAILED: &str = "PullFailed";

/// The images a rendered manifest runs (init containers, then containers), each once.
pub fn images_of(rendered: &[u8]) -> Vec<String> {
    let Ok(pod) = serde_saphyr::from_slice::<Pod>(rendered) else {
        return Vec::new();
    };
    let mut images: Vec<String> = Vec::new();
    let spec = pod.spec.unwrap_or_default();
    for c in spec
        .init_containers
        .unwrap_or_default()
        .iter()
        .chain(&spec.containers)
    {
        if let Some(image) = c.image.as_deref().filter(|i| !i.is_empty())
            && !images.iter().any(|i| i == image)
        {
            images.push(image.to_string());
        }
    }
    images
}

/// The `PodImageReady` condition for `hash` in `state`: (status, reason, message). The message
/// names the hash (the controller matches it against the desired one).
pub fn condition(hash: &str, images: &[String], state: &PullState) -> (bool, &'static str, String) {
    match state {
        PullState::Ready => (
            true,
            "ImagesPresent",
            format!("images of {hash} are on the node: {}", images.join(", ")),
        ),
        PullState::Pulling => (
            false,
            PULLING,
            format!("pulling images of {hash}: {}", images.join(", ")),
        ),
        PullState::Failed(reason) => (
            false,
            PULL_FAILED,
            format!("images of {hash} could not be pulled: {reason}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_listed_once_init_containers_first() {
        let rendered = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  initContainers:\n  - name: i\n    image: busybox:1\n  containers:\n  - name: a\n    image: nginx:1.19.2\n  - name: b\n    image: busybox:1\n";
        assert_eq!(images_of(rendered), ["busybox:1", "nginx:1.19.2"]);
    }
}
