//! What the tests observe: manifest files (every version a rewrite makes, sampled every few
//! milliseconds) and mirror pods as the API server holds them, and how many members are
//! upgrading at once while a rollout runs.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use staticpod_puller::manifest::hash_of_manifest;
use staticpod_puller::manifest::mirror::{pod_hash, pod_ready};
use staticpod_puller::sim::resource::ResourceKey;
use staticpod_puller::sim::store::Store;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::env::Env;
use super::{NS, SAMPLE};

/// The mirror pod of an object on a node, as the API server holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mirror {
    pub(crate) hash: Option<String>,
    pub(crate) ready: bool,
}

pub(crate) fn mirror(store: &Store, name: &str, node: &str) -> Option<Mirror> {
    let value = store
        .get(
            &ResourceKey::core("pods"),
            Some(NS),
            &format!("{name}-{node}"),
        )
        .ok()?;
    let pod: Pod = serde_json::from_value((*value).clone()).ok()?;
    Some(Mirror {
        hash: pod_hash(&pod).map(str::to_string),
        ready: pod_ready(&pod),
    })
}

/// Identity of one version of a file: a rewrite (even with equal bytes) changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stamp {
    inode: u64,
    mtime: (i64, i64),
    len: u64,
}

pub(super) fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        inode: m.ino(),
        mtime: (m.mtime(), m.mtime_nsec()),
        len: m.len(),
    })
}

/// Every entry of a directory (dot files included) with its stamp.
pub(super) fn listing(dir: &Path) -> BTreeMap<String, Option<Stamp>> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, stamp(&e.path()))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn file_hash(path: &Path) -> Option<String> {
    hash_of_manifest(&std::fs::read(path).ok()?)
}

/// One version of a watched file, when a watcher first saw it.
#[derive(Clone)]
pub(super) struct Version {
    pub(super) file: PathBuf,
    pub(super) at: Instant,
    /// None: the file was missing.
    pub(super) bytes: Option<Vec<u8>>,
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let content = match &self.bytes {
            Some(b) => String::from_utf8_lossy(b).into_owned(),
            None => "(missing)".to_string(),
        };
        write!(f, "\n{} at {:?}:\n{content}", self.file.display(), self.at)
    }
}

/// Records every distinct version of every non-dot file in some directories (and the absence
/// of expected ones), sampling every few milliseconds. A rename is atomic, so each read sees
/// one whole version.
pub(super) struct DirWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Version>>>,
    task: JoinHandle<()>,
}

impl DirWatch {
    pub(super) fn start(dirs: Vec<PathBuf>, expected: &str) -> DirWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<Version>>> = Arc::default();
        let expected = expected.to_string();
        let task = tokio::spawn({
            let (stop, seen) = (stop.clone(), seen.clone());
            async move {
                let mut last: BTreeMap<PathBuf, Option<Vec<u8>>> = BTreeMap::new();
                loop {
                    // One last sample after the stop: `finish` sees everything before it.
                    let stopping = stop.load(Ordering::SeqCst);
                    for dir in &dirs {
                        let mut files: BTreeSet<PathBuf> = std::fs::read_dir(dir)
                            .map(|es| {
                                es.flatten()
                                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                                    .map(|e| e.path())
                                    .collect()
                            })
                            .unwrap_or_default();
                        files.insert(dir.join(&expected));
                        for file in files {
                            let bytes = std::fs::read(&file).ok();
                            if last.get(&file) != Some(&bytes) {
                                last.insert(file.clone(), bytes.clone());
                                seen.lock().unwrap().push(Version {
                                    file,
                                    at: Instant::now(),
                                    bytes,
                                });
                            }
                        }
                    }
                    if stopping {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        DirWatch { stop, seen, task }
    }

    pub(super) fn history(&self) -> Vec<Version> {
        self.seen.lock().unwrap().clone()
    }

    pub(super) async fn finish(self) -> Vec<Version> {
        self.stop.store(true, Ordering::SeqCst);
        let seen = self.seen.clone();
        let _ = self.task.await;
        seen.lock().unwrap().clone()
    }
}

/// When `file` was first seen with `hash`, and when it was next seen with other content.
pub(super) fn write_and_restore(
    history: &[Version],
    file: &Path,
    hash: &str,
) -> Option<(Instant, Instant)> {
    let versions: Vec<&Version> = history.iter().filter(|v| v.file == file).collect();
    let written = versions.iter().position(|v| {
        v.bytes
            .as_deref()
            .and_then(hash_of_manifest)
            .is_some_and(|h| h == hash)
    })?;
    let restored = versions[written + 1..].first()?;
    Some((versions[written].at, restored.at))
}

/// Samples, while a rollout runs, how many members are upgrading at once: the manifest file
/// holds the new hash but the mirror pod is not yet Ready on it.
pub(super) struct BudgetWatch {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(usize, usize, String)>,
}

impl BudgetWatch {
    pub(super) fn start(env: &Env, name: &str, new_hash: &str) -> BudgetWatch {
        let store = env.cluster.store().clone();
        let files: Vec<(String, PathBuf)> = env
            .nodes()
            .into_iter()
            .map(|n| {
                let f = env.manifest(&n, name);
                (n, f)
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (name, new_hash) = (name.to_string(), new_hash.to_string());
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut max, mut samples, mut worst) = (0usize, 0usize, String::new());
                while !stop.load(Ordering::SeqCst) {
                    // Files first, then pods: a pod only moves towards Ready-with-the-new-hash,
                    // and a slot is freed only after that, so this order never overcounts.
                    let written: Vec<&String> = files
                        .iter()
                        .filter(|(_, f)| file_hash(f).as_deref() == Some(new_hash.as_str()))
                        .map(|(n, _)| n)
                        .collect();
                    let upgrading: Vec<(&String, Option<Mirror>)> = written
                        .into_iter()
                        .map(|n| (n, mirror(&store, &name, n)))
                        .filter(|(_, m)| {
                            !m.as_ref()
                                .is_some_and(|m| m.ready && m.hash.as_deref() == Some(&new_hash))
                        })
                        .collect();
                    samples += 1;
                    if upgrading.len() > max {
                        max = upgrading.len();
                        worst = format!("{upgrading:?}");
                    }
                    tokio::time::sleep(SAMPLE).await;
                }
                (max, samples, worst)
            }
        });
        BudgetWatch { stop, task }
    }

    /// Stop sampling; assert at most `budget` were ever upgrading at once, and that the
    /// rollout was seen at all.
    pub(super) async fn assert_within(self, budget: usize) {
        self.stop.store(true, Ordering::SeqCst);
        let (max, samples, worst) = self.task.await.expect("the budget watcher");
        println!("at most {max} upgrading over {samples} samples (budget {budget})");
        assert!(
            max <= budget,
            "{budget} members may upgrade at once; saw {max}: {worst}"
        );
        assert!(
            max >= 1 && samples >= 10,
            "the watcher should have seen the rollout: max {max} upgrading over {samples} samples"
        );
    }
}
