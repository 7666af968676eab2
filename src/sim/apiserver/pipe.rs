//! Connections to the API server from this process without a socket: each is an in-memory
//! pipe, with the same TLS and HTTP on both ends as over TCP. A fleet of thousands of agents
//! run as tasks needs about ten connections each, and over TCP each costs two file
//! descriptors in this one process (20,000 at most here); a pipe costs none.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// How much each direction of a pipe buffers (a socket's buffer is of this order).
const BUFFER: usize = 64 * 1024;

/// Opens pipes to one API server: a connector for hyper's client.
#[derive(Clone)]
pub struct PipeConnector(pub(super) mpsc::UnboundedSender<DuplexStream>);

impl tower::Service<http::Uri> for PipeConnector {
    type Response = Pipe;
    type Error = io::Error;
    type Future = std::future::Ready<Result<Pipe, io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (client, server) = tokio::io::duplex(BUFFER);
        std::future::ready(match self.0.send(server) {
            Ok(()) => Ok(Pipe(TokioIo::new(client))),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "the dev cluster API server has stopped",
            )),
        })
    }
}

/// The client's end of one pipe.
pub struct Pipe(TokioIo<DuplexStream>);

impl hyper::rt::Read for Pipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Pipe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connection for Pipe {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// A client with the identity, server name and CA of `kubeconfig` whose connections are pipes
/// made by `connector` (TLS, authentication and the request path as kube's own client has them).
pub async fn client(kubeconfig: &Path, connector: PipeConnector) -> Result<kube::Client, String> {
    use kube::client::ConfigExt as _;
    let config = crate::kubeclient::config_from_kubeconfig(kubeconfig).await?;
    let https = config
        .rustls_https_connector_with_connector(connector)
        .map_err(|e| format!("TLS for {}: {e}", kubeconfig.display()))?;
    let http: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    let auth = config
        .auth_layer()
        .map_err(|e| format!("credentials of {}: {e}", kubeconfig.display()))?;
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(auth)
        .map_err(tower::BoxError::from)
        .service(http);
    Ok(kube::Client::new(service, config.default_namespace))
}
