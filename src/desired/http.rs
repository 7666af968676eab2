//! Bundles fetched over HTTP(S) (`bundle.urls`).
//!
//! Each URL is polled every `bundle.pollInterval` (each wait drawn within ±20%, so a fleet does
//! not poll in step) with `If-None-Match` carrying the last ETag: a 304, or a body identical to
//! the last one, is *unchanged* and not verified again. A request has a connect timeout and a
//! total timeout; the body is streamed and cut at the envelope cap (nothing larger can be a
//! bundle); connection failures, timeouts and 5xx / 408 / 429 answers are retried with
//! exponential backoff (`backon`). TLS is rustls on the ring provider, trusting the system's
//! roots plus `bundle.caFile`.
//!
//! Anti-rollback and holding back: a fetched body is checked against the trust policy and the
//! persisted bundle state *without* updating that state ([`HttpSource::poll`]); a bundle that
//! would be accepted now is **held**. Only when the authority rule lets fetched bundles apply
//! ([`super::authority`]) is a held bundle admitted for good by [`bundle::accept`]
//! ([`HttpSource::release`]): the same admission, against the same state file, as a dropped
//! one. So a bundle held back while the cluster was authoritative has not spent its sequence and
//! can still apply later; once applied it has, and serving it again is a replay.
//!
//! ```no_run
//! # use std::path::Path;
//! # use staticpod_puller::desired::http::{FetchSettings, Fetched, Fetcher};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let fetcher = Fetcher::new(FetchSettings::new(Some(Path::new("/etc/ca.pem").into()), 6 << 20))?;
//! match fetcher.fetch("https://bundles.internal/edge.bundle", None).await? {
//!     Fetched::Body { bytes, etag } => println!("{} bytes, ETag {etag:?}", bytes.len()),
//!     Fetched::NotModified => println!("unchanged"),
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::jiff::Timestamp;

use crate::bundle::{self, AcceptError, StateStore, TrustPolicy};
use crate::desired::{DesiredObject, bundle_objects};
use crate::rules::read_ca_file;

/// How requests are made.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Time to establish the connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Time for the whole request, body included.
    pub timeout: Duration,
    /// The largest body read; a larger one is refused (`too_large`).
    pub max_bytes: usize,
    /// Retries after the first attempt, for transient failures.
    pub retries: usize,
    /// The first retry's delay (doubling, with jitter, up to `max_backoff`).
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// PEM CA certificates added to the trust roots.
    pub ca_file: Option<PathBuf>,
}

impl FetchSettings {
    /// 10 s to connect, 60 s in all, 3 retries from 1 s up to 10 s.
    pub fn new(ca_file: Option<PathBuf>, max_bytes: usize) -> FetchSettings {
        FetchSettings {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            max_bytes,
            retries: 3,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            ca_file,
        }
    }
}

/// Fetching a bundle failed; nothing was verified.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("bundle.caFile: {0}")]
    CaFile(String),
    #[error("building the HTTP client for bundle URLs: {0}")]
    Client(String),
    #[error("fetching {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("fetching {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("fetching {url}: the body is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
}

impl FetchError {
    /// Worth retrying: the network, a timeout, or a server saying "later".
    fn transient(&self) -> bool {
        match self {
            FetchError::Request { .. } => true,
            FetchError::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            FetchError::CaFile(_) | FetchError::Client(_) | FetchError::TooLarge { .. } => false,
        }
    }
}

/// A reqwest error with its causes ("error sending request" alone says little).
fn with_causes(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What a request brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// 304: the body is the one with the ETag sent.
    NotModified,
    Body {
        bytes: Vec<u8>,
        etag: Option<String>,
    },
}

/// An HTTP(S) client for bundle URLs.
pub struct Fetcher {
    client: reqwest::Client,
    settings: FetchSettings,
}

impl Fetcher {
    pub fn new(settings: FetchSettings) -> Result<Fetcher, FetchError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .user_agent(concat!("staticpod-puller/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &settings.ca_file {
            for der in read_ca_file(path).map_err(FetchError::CaFile)? {
                let cert = reqwest::Certificate::from_der(&der)
                    .map_err(|e| FetchError::CaFile(format!("{}: {e}", path.display())))?;
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| FetchError::Client(with_causes(&e)))?;
        Ok(Fetcher { client, settings })
    }

    /// GET `url` (with `If-None-Match: etag` when given), retrying transient failures.
    #[tracing::instrument(skip(self, etag), fields(url = %url))]
    pub async fn fetch(&self, url: &str, etag: Option<&str>) -> Result<Fetched, FetchError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.settings.first_backoff)
            .with_max_delay(self.settings.max_backoff)
            .with_max_times(self.settings.retries)
            .with_jitter();
        (|| self.fetch_once(url, etag))
            .retry(backoff)
            .when(FetchError::transient)
            .notify(|e, wait| tracing::debug!(url, error = %e, retry_in = ?wait, "bundle fetch failed; retrying"))
            .await
    }

    async fn fetch_once(&self, url: &str, etag: Option<&str>) -> Result<Fetched, FetchError> {
        let failed = |e: reqwest::Error| FetchError::Request {
            url: url.to_string(),
            reason: with_causes(&e),
        };
        let mut request = self.client.get(url);
        if let Some(etag) = etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let mut response = request.send().await.map_err(failed)?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        if !status.is_success() {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        let limit = self.settings.max_bytes;
        let too_large = || FetchError::TooLarge {
            url: url.to_string(),
            limit,
        };
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if bytes.len() + chunk.len() > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Fetched::Body { bytes, etag })
    }
}

/// A fetched bundle that passed every check but has not been admitted (its sequence is not
/// spent): it waits for the authority rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub url: String,
    pub sequence: u64,
    pub expires_at: Timestamp,
    pub items: usize,
    /// When it was fetched and found acceptable.
    pub since: Timestamp,
    envelope: Vec<u8>,
}

/// What one poll of one URL found.
#[derive(Debug)]
pub enum Polled {
    /// 304, or the same body as last time: nothing verified again.
    Unchanged { url: String },
    /// A new acceptable bundle, now held.
    Held {
        url: String,
        sequence: u64,
        items: usize,
    },
    /// A new body refused (nothing from it is used); `reason` is the metric label.
    Refused {
        url: String,
        reason: &'static str,
        message: String,
    },
    /// No answer after the retries; a held bundle stays held.
    Failed { url: String, error: FetchError },
}

/// What releasing a held bundle gave.
#[derive(Debug)]
pub enum Released {
    Accepted {
        url: String,
        sequence: u64,
        objects: Vec<DesiredObject>,
        /// Items that could not become desired state (invalid templates), with the reason.
        refused: Vec<String>,
    },
    Refused {
        url: String,
        sequence: u64,
        reason: &'static str,
        message: String,
    },
}

/// One URL's memory.
struct Source {
    url: String,
    etag: Option<String>,
    /// SHA-256 of the last body judged (to skip one served again without an ETag).
    digest: Option<Vec<u8>>,
    /// The last refusal of a body cut at the cap (no digest to compare): said once.
    too_large: bool,
    held: Option<Held>,
}

/// The configured URLs, the trust policy and the bundle state they are judged against.
pub struct HttpSource {
    fetcher: Fetcher,
    policy: TrustPolicy,
    state: StateStore,
    sources: Vec<Source>,
}

impl HttpSource {
    /// `state_dir` holds the anti-rollback state shared with the drop directory.
    pub fn new(urls: &[String], fetcher: Fetcher, policy: TrustPolicy, state_dir: &Path) -> Self {
        HttpSource {
            fetcher,
            policy,
            state: StateStore::new(state_dir),
            sources: urls
                .iter()
                .map(|url| Source {
                    url: url.clone(),
                    etag: None,
                    digest: None,
                    too_large: false,
                    held: None,
                })
                .collect(),
        }
    }

    /// Fetch every URL once and judge what changed. `node` and `labels` are this node's, for
    /// targeting; `now` is the wall clock for expiry.
    pub async fn poll(
        &mut self,
        node: &str,
        labels: &BTreeMap<String, String>,
        now: Timestamp,
    ) -> Vec<Polled> {
        let mut out = Vec::new();
        for i in 0..self.sources.len() {
            let (url, etag) = (self.sources[i].url.clone(), self.sources[i].etag.clone());
            let fetched = self.fetcher.fetch(&url, etag.as_deref()).await;
            out.push(self.judge(i, fetched, node, labels, now));
        }
        out
    }

    fn judge(
        &mut self,
        i: usize,
        fetched: Result<Fetched, FetchError>,
        node: &str,
        labels: &BTreeMap<String, String>,
        now: Timestamp,
    ) -> Polled {
        let source = &mut self.sources[i];
        let url = source.url.clone();
        let (bytes, etag) = match fetched {
            Ok(Fetched::NotModified) => return Polled::Unchanged { url },
            Ok(Fetched::Body { bytes, etag }) => (bytes, etag),
            Err(error @ FetchError::TooLarge { .. }) => {
                // What the URL serves now is no bundle: an earlier one it served is not held.
                source.held = None;
                source.etag = None;
                source.digest = None;
                if std::mem::replace(&mut source.too_large, true) {
                    return Polled::Unchanged { url };
                }
                return Polled::Refused {
                    url,
                    reason: "too_large",
                    message: error.to_string(),
                };
            }
            Err(error) => return Polled::Failed { url, error },
        };
        source.too_large = false;
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .to_vec();
        if source.digest.as_ref() == Some(&digest) {
            source.etag = etag;
            return Polled::Unchanged { url };
        }
        // Judged as admission would judge it now, against a copy of the state: nothing is
        // spent until the bundle is released.
        let verdict = self
            .state
            .load()
            .map_err(|e| ("state", e.to_string()))
            .and_then(|mut state| {
                self.policy
                    .admit(&bytes, node, labels, &mut state, now)
                    .map_err(|r| (r.reason(), r.to_string()))
            });
        let source = &mut self.sources[i];
        match verdict {
            Ok(verified) => {
                source.etag = etag;
                source.digest = Some(digest);
                let held = Held {
                    url: url.clone(),
                    sequence: verified.bundle.sequence,
                    expires_at: verified.bundle.expires_at,
                    items: verified.bundle.items.len(),
                    since: now,
                    envelope: bytes,
                };
                let (sequence, items) = (held.sequence, held.items);
                source.held = Some(held);
                Polled::Held {
                    url,
                    sequence,
                    items,
                }
            }
            Err(("state", message)) => {
                // Not the bundle's fault: judge it again at the next poll.
                Polled::Refused {
                    url,
                    reason: "state",
                    message,
                }
            }
            Err((reason, message)) => {
                // Remember the body only when the refusal depends on its bytes alone (or can
                // only stay a refusal): a clock not set yet, or labels not known yet, may let
                // the same bundle in at a later poll.
                if !matches!(reason, "not_yet_valid" | "clock_rollback" | "not_targeted") {
                    source.etag = etag;
                    source.digest = Some(digest);
                }
                source.held = None;
                Polled::Refused {
                    url,
                    reason,
                    message,
                }
            }
        }
    }

    /// The bundles held now.
    pub fn held(&self) -> Vec<Held> {
        self.sources.iter().filter_map(|s| s.held.clone()).collect()
    }

    /// Admit every held bundle for good (the authority rule said fetched bundles apply),
    /// highest sequence first: the others are then replays, refused as such.
    pub fn release(
        &mut self,
        node: &str,
        labels: &BTreeMap<String, String>,
        now: Timestamp,
    ) -> Vec<Released> {
        let mut held: Vec<Held> = self
            .sources
            .iter_mut()
            .filter_map(|s| s.held.take())
            .collect();
        held.sort_by_key(|h| std::cmp::Reverse(h.sequence));
        let mut released = Vec::new();
        for h in held {
            match bundle::accept(&self.policy, &self.state, &h.envelope, node, labels, now) {
                Ok(verified) => {
                    let (objects, refused) = bundle_objects(&verified.bundle);
                    released.push(Released::Accepted {
                        url: h.url,
                        sequence: verified.bundle.sequence,
                        objects,
                        refused,
                    });
                }
                Err(e) => {
                    let (reason, message) = match e {
                        AcceptError::Refused(r) => (r.reason(), r.to_string()),
                        AcceptError::State(s) => ("state", s.to_string()),
                    };
                    released.push(Released::Refused {
                        url: h.url.clone(),
                        sequence: h.sequence,
                        reason,
                        message,
                    });
                    if reason == "state" {
                        // Not the bundle's fault (the state file could not be read or
                        // written): hold it again for the next release.
                        if let Some(source) = self.sources.iter_mut().find(|s| s.url == h.url) {
                            source.held = Some(h);
                        }
                    }
                }
            }
        }
        released
    }
}

#[cfg(test)]
mod tests;
