//! A client of the node-local API, for `staticpod-puller pods` and `upgrade`: plain HTTP/1.1
//! over TCP or a Unix socket.

use std::path::PathBuf;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::config::{Config, Listen};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the local API is disabled (localApi.listen is empty)")]
    Disabled,
    #[error("localApi.listen: {0}")]
    Address(String),
    #[error(
        "the local API listens on port 0 and {path} (written by a running agent) cannot be read: {source}"
    )]
    BoundAddress {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "connecting to the local API at {address}: {source} (is `staticpod-puller run` running?)"
    )]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("talking to the local API at {address}: {source}")]
    Http {
        address: String,
        source: hyper::Error,
    },
    #[error("{0}")]
    Token(String),
}

/// The local API of the agent configured by `config`.
pub struct LocalClient {
    target: Listen,
    token: Option<String>,
}

impl LocalClient {
    pub fn from_config(config: &Config) -> Result<LocalClient, ClientError> {
        let target = config
            .local_api
            .address()
            .map_err(ClientError::Address)?
            .ok_or(ClientError::Disabled)?;
        let target = match target {
            // Port 0: the agent wrote the port it got into its state directory.
            Listen::Tcp(addr) if addr.port() == 0 => {
                let path = config.state_dir.join(super::api::ADDRESS_FILE);
                let text =
                    std::fs::read_to_string(&path).map_err(|source| ClientError::BoundAddress {
                        path: path.clone(),
                        source,
                    })?;
                let bound = text.trim().parse().map_err(|_| {
                    ClientError::Address(format!(
                        "{} holds {text:?}, not host:port",
                        path.display()
                    ))
                })?;
                Listen::Tcp(bound)
            }
            other => other,
        };
        let token = match &config.local_api.token_file {
            Some(path) => {
                Some(super::api::read_token(path).map_err(|e| ClientError::Token(e.to_string()))?)
            }
            None => None,
        };
        Ok(LocalClient { target, token })
    }

    fn address(&self) -> String {
        match &self.target {
            Listen::Tcp(a) => a.to_string(),
            Listen::Unix(p) => p.display().to_string(),
        }
    }

    /// Send one request; returns the status code and the body.
    pub async fn request(&self, method: &str, path: &str) -> Result<(u16, Vec<u8>), ClientError> {
        let address = self.address();
        let connect_err = |source| ClientError::Connect {
            address: address.clone(),
            source,
        };
        let http_err = |source| ClientError::Http {
            address: address.clone(),
            source,
        };
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "localhost");
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| ClientError::Address(format!("building the request: {e}")))?;
        let response = match &self.target {
            Listen::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(connect_err)?;
                send(TokioIo::new(stream), request)
                    .await
                    .map_err(http_err)?
            }
            Listen::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect_err)?;
                send(TokioIo::new(stream), request)
                    .await
                    .map_err(http_err)?
            }
        };
        Ok(response)
    }
}

async fn send<T>(
    io: T,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<(u16, Vec<u8>), hyper::Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, body))
}
