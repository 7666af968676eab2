//! Bundles dropped into a directory (a USB stick's files copied over, `scp`): each complete
//! file is verified once against the trust policy, then moved to `processed/` or, with a
//! `.reason` file beside it, to `rejected/`. Accepted bundles' items apply at once, whatever
//! the API server's state: the person who dropped the file is on the device.
//!
//! A file is complete when it was renamed into the directory (write elsewhere or under a dot
//! name, then rename), or when its size and modification time have not changed for
//! [`SETTLE`]. Dot files and `*.part` / `*.tmp` files are never read.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::bundle::{self, AcceptError, StateStore, TrustPolicy};
use crate::desired::{DesiredObject, bundle_objects};

/// How long a file's size and mtime must hold still before it is read.
pub const SETTLE: Duration = Duration::from_secs(2);
/// Largest file read from the drop directory (the envelope cap, with room for whitespace).
const MAX_FILE: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("preparing the drop directory {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("moving {from} to {to}: {source}")]
    Move {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
}

/// What became of one dropped file.
#[derive(Debug)]
pub enum Dropped {
    /// Verified and accepted: apply these objects.
    Accepted {
        file: PathBuf,
        sequence: u64,
        objects: Vec<DesiredObject>,
        /// Items that could not become desired state (invalid templates), with the reason.
        refused: Vec<String>,
    },
    Rejected {
        file: PathBuf,
        reason: &'static str,
        message: String,
    },
}

/// The drop directory and what it has seen settling.
pub struct DropDir {
    dir: PathBuf,
    policy: TrustPolicy,
    state: StateStore,
    /// Files seen but not settled yet: (size, mtime) and since when.
    settling: HashMap<PathBuf, ((u64, Option<SystemTime>), Instant)>,
}

impl DropDir {
    /// Create `dir`, `dir/processed` and `dir/rejected` if needed. The anti-rollback state
    /// lives in `state_dir`.
    pub fn open(dir: &Path, policy: TrustPolicy, state_dir: &Path) -> Result<DropDir, DropError> {
        for d in [
            dir.to_path_buf(),
            dir.join("processed"),
            dir.join("rejected"),
        ] {
            std::fs::create_dir_all(&d).map_err(|source| DropError::Prepare { path: d, source })?;
        }
        Ok(DropDir {
            dir: dir.to_path_buf(),
            policy,
            state: StateStore::new(state_dir),
            settling: HashMap::new(),
        })
    }

    /// Look at the directory once: process every complete file. `node` and `labels` are this
    /// node's, for targeting.
    pub fn scan(
        &mut self,
        node: &str,
        labels: &BTreeMap<String, String>,
        now: Instant,
    ) -> Vec<Result<Dropped, DropError>> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ready = Vec::new();
        let mut present = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with(".part") || name.ends_with(".tmp") {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let path = entry.path();
            present.push(path.clone());
            let stamp = (meta.len(), meta.modified().ok());
            match self.settling.get(&path) {
                Some((seen, since)) if *seen == stamp => {
                    if now.duration_since(*since) >= SETTLE {
                        ready.push(path);
                    }
                }
                _ => {
                    self.settling.insert(path, (stamp, now));
                }
            }
        }
        self.settling.retain(|p, _| present.contains(p));
        ready.sort();
        ready
            .into_iter()
            .map(|path| {
                self.settling.remove(&path);
                self.process(&path, node, labels)
            })
            .collect()
    }

    fn process(
        &self,
        path: &Path,
        node: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Dropped, DropError> {
        let bytes = read_capped(path);
        let verdict = match bytes {
            Err(refusal) => Err(refusal),
            Ok(bytes) => bundle::accept(
                &self.policy,
                &self.state,
                &bytes,
                node,
                labels,
                k8s_openapi::jiff::Timestamp::now(),
            )
            .map_err(|e| match e {
                AcceptError::Refused(r) => (r.reason(), r.to_string()),
                AcceptError::State(s) => ("state", s.to_string()),
            }),
        };
        match verdict {
            Ok(verified) => {
                let file = self.move_to(path, "processed")?;
                let (objects, refused) = bundle_objects(&verified.bundle);
                Ok(Dropped::Accepted {
                    file,
                    sequence: verified.bundle.sequence,
                    objects,
                    refused,
                })
            }
            Err((reason, message)) => {
                let file = self.move_to(path, "rejected")?;
                let mut reason_file = file.clone().into_os_string();
                reason_file.push(".reason");
                let text = format!("{reason}: {message}\n");
                if let Err(e) = std::fs::write(&reason_file, text) {
                    tracing::warn!(file = %file.display(), error = %e, "writing the .reason file");
                }
                Ok(Dropped::Rejected {
                    file,
                    reason,
                    message,
                })
            }
        }
    }

    /// Move a processed file aside; a name already taken there gets a numeric suffix.
    fn move_to(&self, path: &Path, sub: &str) -> Result<PathBuf, DropError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut to = self.dir.join(sub).join(&name);
        let mut n = 1;
        while to.exists() {
            to = self.dir.join(sub).join(format!("{name}.{n}"));
            n += 1;
        }
        std::fs::rename(path, &to).map_err(|source| DropError::Move {
            from: path.to_path_buf(),
            to: to.clone(),
            source,
        })?;
        Ok(to)
    }
}

/// The file's bytes, or the refusal reason label and message.
fn read_capped(path: &Path) -> Result<Vec<u8>, (&'static str, String)> {
    use std::io::Read;
    let unreadable = |e: std::io::Error| ("unreadable", format!("reading {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err((
            "too_large",
            format!("{} is larger than {MAX_FILE} bytes", path.display()),
        ));
    }
    Ok(bytes)
}
