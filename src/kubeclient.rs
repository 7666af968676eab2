//! Building a `kube::Client` from a kubeconfig file, and the watch caches the agent and the
//! controller read from.

use std::path::Path;

/// A client from a kubeconfig file; the error says what was wrong with it.
pub async fn from_kubeconfig(path: &Path) -> Result<kube::Client, String> {
    client(config_from_kubeconfig(path).await?)
}

/// The client configuration of a kubeconfig file's current context (its `cluster_url` is the
/// server, for messages).
pub async fn config_from_kubeconfig(path: &Path) -> Result<kube::Config, String> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| format!("reading kubeconfig: {e}"))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| format!("loading kubeconfig: {e}"))
}

/// A client from a loaded configuration.
pub fn client(config: kube::Config) -> Result<kube::Client, String> {
    kube::Client::try_from(config).map_err(|e| format!("building the client: {e}"))
}

/// A reflector over `api`: a watch (resume from resourceVersion, relist on 410, backoff with
/// jitter) keeping an in-memory store, calling `on_change` after every change. The watch task
/// runs until the returned guard is dropped.
pub fn reflect<K>(
    api: kube::Api<K>,
    config: kube::runtime::watcher::Config,
    on_change: impl Fn() + Send + 'static,
) -> (kube::runtime::reflector::Store<K>, WatchTask)
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    reflect_touches(api, config, |_| {}, move |_| on_change())
}

/// What a reflector's store went through, told to a reader that keeps its own index of it.
pub enum Touch<'a, K> {
    /// Added or modified (the object as stored).
    Applied(&'a K),
    Deleted(&'a K),
    /// A full list replaced the store (at start, or after the watch fell behind): objects may
    /// have gone without a `Deleted`.
    Relisted,
}

/// As [`reflect`], with every object passed through `trim` before it is stored (a cache of
/// many objects keeps only the fields its reader needs), telling `on_touch` what each change
/// was once the store holds it.
pub fn reflect_touches<K>(
    api: kube::Api<K>,
    config: kube::runtime::watcher::Config,
    trim: impl FnMut(&mut K) + Send + 'static,
    on_touch: impl Fn(Touch<'_, K>) + Send + 'static,
) -> (kube::runtime::reflector::Store<K>, WatchTask)
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let resource = K::plural(&Default::default()).to_string();
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config).modify(trim)).default_backoff();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(watcher::Event::Apply(o)) => on_touch(Touch::Applied(&o)),
                Ok(watcher::Event::Delete(o)) => on_touch(Touch::Deleted(&o)),
                Ok(watcher::Event::InitDone) => on_touch(Touch::Relisted),
                // A relist's objects reach the store all at once, at InitDone.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(e) => {
                    crate::metrics::inc(
                        "staticpod_puller_watch_errors_total",
                        &[("resource", &resource)],
                    );
                    tracing::warn!(resource, error = %e, "watch error (retrying with backoff)")
                }
            }
        }
    });
    (reader, WatchTask(task))
}

/// A running watch; dropping it stops the watch (so a stopped controller or agent leaves no
/// watch retrying against a server that is gone).
pub struct WatchTask(tokio::task::JoinHandle<()>);

impl Drop for WatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
