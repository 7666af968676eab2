//! Watch streams: newline-delimited JSON events over a chunked response, one chunk per event.
//!
//! A watch replays the store's history after the requested resourceVersion (or synthetic
//! ADDED events for the current objects), then follows the live feed. It ends on
//! `timeoutSeconds`, when the client goes away, when its receiver lags behind the feed, on
//! `Faults::close_watches`, and when its user is partitioned. A resourceVersion older than
//! the history kept gets HTTP 200 and a single ERROR event carrying a 410 `Status`, which is
//! what kube's `watcher` and client-go's reflector expect to re-list on.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Response, StatusCode, header};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{Instrument as _, debug};

use super::Shared;
use super::route::Format;
use super::table;
use crate::sim::error::ApiError;
use crate::sim::resource::ResourceType;
use crate::sim::selector::Selectors;
use crate::sim::store::{Change, WatchFrom};

/// How often a watch that allows bookmarks gets one.
pub(super) const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);
/// The longest a watch lasts without `timeoutSeconds` (the API server picks 30–60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Events buffered for a slow client before the watch stops reading the feed (and, if the
/// feed then laps it, ends).
const BUFFERED_EVENTS: usize = 256;

pub(super) struct WatchRequest {
    pub rt: ResourceType,
    pub namespace: Option<String>,
    pub selectors: Selectors,
    pub from: WatchFrom,
    pub bookmarks: bool,
    /// `sendInitialEvents=true`: end the initial ADDED events with a bookmark annotated
    /// `k8s.io/initial-events-end` (streaming lists).
    pub initial_events_end: bool,
    pub timeout: Option<Duration>,
    pub format: Format,
    pub user: String,
}

#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    type_: &'a str,
    object: &'a Value,
}

fn line(type_: &str, object: &Value) -> Bytes {
    // Serializing a `Value` cannot fail (its map keys are strings).
    let mut buf = serde_json::to_vec(&Event { type_, object }).unwrap_or_default();
    buf.push(b'\n');
    Bytes::from(buf)
}

fn response(body: Body) -> Response<Body> {
    let mut res = Response::new(body);
    *res.status_mut() = StatusCode::OK;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}

/// Start a watch: the response whose body streams the events.
pub(super) fn start(shared: &Arc<Shared>, req: WatchRequest) -> Result<Response<Body>, ApiError> {
    let started = match shared.store.watch(&req.rt.key(), req.from, &req.selectors) {
        Ok(started) => started,
        Err(e) if e.code == 410 => {
            debug!(resource = %req.rt.qualified(), "watch from a compacted resourceVersion: 410 in an ERROR event");
            return Ok(response(Body::from(line("ERROR", &e.status_body()))));
        }
        Err(e) => return Err(e),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(BUFFERED_EVENTS);
    let span = tracing::debug_span!("watch", resource = %req.rt.qualified(), namespace = ?req.namespace, user = %req.user);
    let stream = Stream {
        shared: shared.clone(),
        tx,
        last_rv: started.rv,
        req,
    };
    tokio::spawn(stream.run(started.replay, started.live).instrument(span));
    let body = ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>);
    Ok(response(Body::from_stream(body)))
}

struct Stream {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Bytes>,
    /// The newest resourceVersion this watch has seen of the whole store (bookmarks carry it).
    last_rv: u64,
    req: WatchRequest,
}

/// Why a watch stream ended (for the log).
#[derive(Debug)]
enum End {
    ClientGone,
    Timeout,
    Closed,
    Partitioned,
    Lagged,
    FeedClosed,
}

impl Stream {
    async fn run(mut self, replay: Vec<Arc<Change>>, mut live: broadcast::Receiver<Arc<Change>>) {
        let end = self.follow(replay, &mut live).await;
        debug!(?end, last_rv = self.last_rv, "watch ended");
    }

    async fn follow(
        &mut self,
        replay: Vec<Arc<Change>>,
        live: &mut broadcast::Receiver<Arc<Change>>,
    ) -> End {
        let faults = self.shared.faults.clone();
        let mut closed = faults.close_signal();
        let mut partitions = faults.partition_signal();
        let deadline = tokio::time::sleep(self.req.timeout.unwrap_or(DEFAULT_TIMEOUT));
        tokio::pin!(deadline);
        let mut bookmarks = tokio::time::interval_at(
            tokio::time::Instant::now() + BOOKMARK_INTERVAL,
            BOOKMARK_INTERVAL,
        );

        for change in replay {
            if !self.send_change(&change).await {
                return End::ClientGone;
            }
        }
        if self.req.initial_events_end && self.req.bookmarks && !self.send_bookmark(true).await {
            return End::ClientGone;
        }
        loop {
            tokio::select! {
                biased;
                () = self.tx.closed() => return End::ClientGone,
                _ = closed.changed() => return End::Closed,
                _ = partitions.changed() => {
                    if faults.is_partitioned(&self.req.user) {
                        return End::Partitioned;
                    }
                }
                () = &mut deadline => return End::Timeout,
                _ = bookmarks.tick(), if self.req.bookmarks => {
                    // Send what the feed already holds first, so the bookmark's
                    // resourceVersion never runs ahead of an event still to come.
                    loop {
                        match live.try_recv() {
                            Ok(change) => {
                                if !self.send_change(&change).await {
                                    return End::ClientGone;
                                }
                            }
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(broadcast::error::TryRecvError::Lagged(_)) => return End::Lagged,
                            Err(broadcast::error::TryRecvError::Closed) => return End::FeedClosed,
                        }
                    }
                    if !self.send_bookmark(false).await {
                        return End::ClientGone;
                    }
                }
                received = live.recv() => match received {
                    Ok(change) => {
                        if !self.send_change(&change).await {
                            return End::ClientGone;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        debug!(missed, "watch lagged behind the store's feed");
                        return End::Lagged;
                    }
                    Err(broadcast::error::RecvError::Closed) => return End::FeedClosed,
                },
            }
        }
    }

    /// Send the event this change means for this watch, if any. False when the client is gone.
    async fn send_change(&mut self, change: &Change) -> bool {
        self.last_rv = self.last_rv.max(change.rv);
        let Some((type_, object)) = change.event_for(
            &self.req.rt.key(),
            self.req.namespace.as_deref(),
            &self.req.selectors,
        ) else {
            return true;
        };
        let chunk = match self.req.format {
            Format::Json => line(type_, object),
            Format::Metadata => line(type_, &table::partial_metadata(object)),
            Format::Table(include) => {
                let rv = change.rv.to_string();
                line(
                    type_,
                    &table::table(&self.req.rt, &[Arc::new(object.clone())], &rv, include),
                )
            }
        };
        let sent = self.tx.send(chunk).await.is_ok();
        if sent {
            self.shared
                .usage
                .watch_event(&self.req.user, &self.req.rt.plural);
        }
        sent
    }

    async fn send_bookmark(&mut self, initial_events_end: bool) -> bool {
        let mut metadata = json!({"resourceVersion": self.last_rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({"kind": self.req.rt.kind, "apiVersion": self.req.rt.api_version(), "metadata": metadata});
        self.tx.send(line("BOOKMARK", &object)).await.is_ok()
    }
}
