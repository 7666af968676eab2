//! A simulated container runtime per node: an image store with a pull time, served as the CRI
//! v1 `ImageService` on a Unix socket (what the agent pre-pulls through), and read by the
//! node's simulated kubelet, which starts a pod only once its images are in the store
//! (pulling them on the spot otherwise, as kubelet does).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use k8s_cri::v1::image_service_server::{ImageService, ImageServiceServer};
use k8s_cri::v1::{
    Image, ImageFsInfoRequest, ImageFsInfoResponse, ImageStatusRequest, ImageStatusResponse,
    ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

/// Images no registry has, cluster-wide (a pull of one fails as not found).
pub type UnpullableImages = Arc<RwLock<HashSet<String>>>;

/// One node's images: each present from an instant on (a pull under way is in the future).
pub struct ImageStore {
    present_from: Mutex<HashMap<String, Instant>>,
    pull_delay: Duration,
    unpullable: UnpullableImages,
}

impl ImageStore {
    pub fn new(pull_delay: Duration, unpullable: UnpullableImages) -> Arc<ImageStore> {
        Arc::new(ImageStore {
            present_from: Mutex::new(HashMap::new()),
            pull_delay,
            unpullable,
        })
    }

    fn images(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.present_from.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Put `image` on the node at once (what the node had before the scenario).
    pub fn preload(&self, image: &str) {
        self.images().insert(image.to_string(), Instant::now());
    }

    pub fn present(&self, image: &str, now: Instant) -> bool {
        self.images().get(image).is_some_and(|at| *at <= now)
    }

    /// Start pulling `image` unless it is there or coming: when it will be present. An image
    /// no registry has is an error.
    pub fn pull(&self, image: &str, now: Instant) -> Result<Instant, String> {
        if self.unpullable.read().is_ok_and(|u| u.contains(image)) {
            return Err(format!(
                "failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": not found"
            ));
        }
        Ok(*self
            .images()
            .entry(image.to_string())
            .or_insert(now + self.pull_delay))
    }

    /// Serve the CRI ImageService on `socket`.
    pub fn serve(self: &Arc<Self>, socket: &Path) -> std::io::Result<JoinHandle<()>> {
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket)?;
        let service = ImageServiceServer::new(CriServer {
            store: self.clone(),
        });
        Ok(tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                tracing::warn!(error = %e, "the simulated CRI server stopped");
            }
        }))
    }
}

/// How much each direction of an in-process connection buffers.
const PIPE_BUFFER: usize = 64 * 1024;

impl ImageStore {
    /// A client channel to this store's ImageService that uses no socket: each connection is
    /// an in-memory pipe to a server task, which ends when the channel's last clone is dropped.
    /// The demo's agent tasks pre-pull through it: over Unix sockets, thousands of nodes' runtimes
    /// and connections exhaust the process's file descriptors.
    pub fn in_process_channel(self: &Arc<Self>) -> tonic::transport::Channel {
        use tokio_stream::StreamExt as _;
        let (pipes, incoming) = tokio::sync::mpsc::unbounded_channel::<tokio::io::DuplexStream>();
        let service = ImageServiceServer::new(CriServer {
            store: self.clone(),
        });
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::UnboundedReceiverStream::new(incoming)
                .map(Ok::<_, std::io::Error>);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                tracing::warn!(error = %e, "the simulated in-process CRI server stopped");
            }
        });
        // The URI is required by tonic and unused: the connector makes a pipe.
        tonic::transport::Endpoint::from_static("http://cri.invalid").connect_with_connector_lazy(
            tower::service_fn(move |_| {
                let (client, server) = tokio::io::duplex(PIPE_BUFFER);
                let sent = pipes.send(server).map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "the simulated runtime has stopped",
                    )
                });
                async move { sent.map(|()| hyper_util::rt::TokioIo::new(client)) }
            }),
        )
    }
}

struct CriServer {
    store: Arc<ImageStore>,
}

fn image_of(spec: Option<k8s_cri::v1::ImageSpec>) -> Result<String, Status> {
    spec.map(|s| s.image)
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Status::invalid_argument("image spec is required"))
}

fn described(image: &str) -> Image {
    Image {
        id: format!("sha256:{:x}", fxhash(image)),
        repo_tags: vec![image.to_string()],
        size: 1 << 20,
        ..Image::default()
    }
}

/// A stable id for an image name (the simulation has no content to digest).
fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[tonic::async_trait]
impl ImageService for CriServer {
    async fn list_images(
        &self,
        _: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let now = Instant::now();
        let images = self
            .store
            .images()
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(i, _)| described(i))
            .collect();
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let image = image_of(request.into_inner().image)?;
        let present = self.store.present(&image, Instant::now());
        Ok(Response::new(ImageStatusResponse {
            image: present.then(|| described(&image)),
            info: HashMap::new(),
        }))
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let image = image_of(request.into_inner().image)?;
        let at = self
            .store
            .pull(&image, Instant::now())
            .map_err(Status::not_found)?;
        tokio::time::sleep_until(at).await;
        Ok(Response::new(PullImageResponse {
            image_ref: described(&image).id,
        }))
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let image = image_of(request.into_inner().image)?;
        self.store.images().remove(&image);
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        Ok(Response::new(ImageFsInfoResponse::default()))
    }
}
