//! The node's container runtime, through the CRI v1 `ImageService` (gRPC over the runtime's
//! Unix socket): whether an image is on the node, and pulling it.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{ImageSpec, ImageStatusRequest, PullImageRequest};
use tonic::transport::{Channel, Endpoint};

/// The standard sockets of containerd and CRI-O, in the order they are tried.
pub const DEFAULT_ENDPOINTS: [&str; 2] =
    ["/run/containerd/containerd.sock", "/var/run/crio/crio.sock"];

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cri.endpoint {endpoint}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("{call} {image}: {status}")]
    Call {
        call: &'static str,
        image: String,
        code: tonic::Code,
        status: String,
    },
}

impl CriError {
    /// Retrying will not help: the image does not exist, or the runtime refuses the request.
    pub fn permanent(&self) -> bool {
        match self {
            CriError::Endpoint { .. } => true,
            CriError::Call { code, status, .. } => {
                matches!(
                    code,
                    tonic::Code::NotFound
                        | tonic::Code::InvalidArgument
                        | tonic::Code::PermissionDenied
                        | tonic::Code::Unauthenticated
                ) || status.contains("not found")
            }
        }
    }
}

/// Where to reach the runtime: `configured` as `cri.endpoint` says it (`None`: the first
/// standard socket that exists; empty: none). `Ok(None)` means no pre-pull, with the reason.
pub fn resolve(configured: Option<&str>) -> Result<Result<PathBuf, String>, CriError> {
    match configured {
        Some("") => Ok(Err("cri.endpoint is empty".to_string())),
        Some(endpoint) => {
            let path = Path::new(endpoint.strip_prefix("unix://").unwrap_or(endpoint));
            let invalid = |reason: String| CriError::Endpoint {
                endpoint: endpoint.to_string(),
                reason,
            };
            let meta = std::fs::metadata(path)
                .map_err(|e| invalid(format!("cannot use {}: {e}", path.display())))?;
            if !is_socket(&meta) {
                return Err(invalid(format!(
                    "{} is not a Unix socket (the container runtime's CRI socket, such as {})",
                    path.display(),
                    DEFAULT_ENDPOINTS[0]
                )));
            }
            Ok(Ok(path.to_path_buf()))
        }
        None => Ok(DEFAULT_ENDPOINTS
            .iter()
            .map(Path::new)
            .find(|p| std::fs::metadata(p).is_ok_and(|m| is_socket(&m)))
            .map(Path::to_path_buf)
            .ok_or_else(|| {
                format!(
                    "no container runtime socket at {} (set cri.endpoint)",
                    DEFAULT_ENDPOINTS.join(" or ")
                )
            })),
    }
}

fn is_socket(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    meta.file_type().is_socket()
}

/// A client of one runtime's ImageService. Cheap to clone (one HTTP/2 connection).
#[derive(Clone)]
pub struct Cri {
    client: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connect lazily to the runtime at `socket`: the first call dials it, and a runtime
    /// restarted meanwhile is dialled again.
    pub fn new(socket: &Path) -> Cri {
        let path = socket.to_path_buf();
        // The URI is required by tonic and unused: the connector dials the socket.
        let channel = Endpoint::from_static("http://cri.invalid").connect_with_connector_lazy(
            tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(TokioIo::new)
                }
            }),
        );
        Cri {
            client: ImageServiceClient::new(channel),
        }
    }

    /// A client over a channel the caller connected (the dev cluster's in-process runtimes).
    pub fn over(channel: Channel) -> Cri {
        Cri {
            client: ImageServiceClient::new(channel),
        }
    }

    fn spec(image: &str) -> Option<ImageSpec> {
        Some(ImageSpec {
            image: image.to_string(),
            user_specified_image: image.to_string(),
            ..ImageSpec::default()
        })
    }

    /// Whether `image` is on the node.
    pub async fn present(&self, image: &str) -> Result<bool, CriError> {
        let response = self
            .client
            .clone()
            .image_status(ImageStatusRequest {
                image: Self::spec(image),
                verbose: false,
            })
            .await
            .map_err(|s| call_error("ImageStatus", image, &s))?;
        Ok(response.into_inner().image.is_some())
    }

    /// Pull `image`; returns the runtime's reference to it.
    pub async fn pull(&self, image: &str) -> Result<String, CriError> {
        let response = self
            .client
            .clone()
            .pull_image(PullImageRequest {
                image: Self::spec(image),
                auth: None,
                sandbox_config: None,
            })
            .await
            .map_err(|s| call_error("PullImage", image, &s))?;
        Ok(response.into_inner().image_ref)
    }
}

fn call_error(call: &'static str, image: &str, status: &tonic::Status) -> CriError {
    let message = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_string()
    };
    CriError::Call {
        call,
        image: image.to_string(),
        code: status.code(),
        status: message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_that_is_missing_or_not_a_socket_is_a_configuration_error() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let missing = dir.path().join("nothing.sock");
        let e = resolve(Some(&format!("unix://{}", missing.display()))).expect_err("missing");
        assert!(e.to_string().starts_with("cri.endpoint unix://"), "{e}");
        let file = dir.path().join("file");
        std::fs::write(&file, "").expect("a plain file");
        let e = resolve(Some(file.to_str().expect("utf-8"))).expect_err("not a socket");
        assert!(e.to_string().contains("is not a Unix socket"), "{e}");
        let socket = dir.path().join("cri.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("a socket");
        let found = resolve(Some(socket.to_str().expect("utf-8"))).expect("a socket is fine");
        assert_eq!(found, Ok(socket));
        assert!(resolve(Some("")).expect("empty disables").is_err());
    }
}
