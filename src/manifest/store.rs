//! The manifest directory, as the agent writes it, and the state directory beside it.
//!
//! A manifest is written by: a temp file whose name starts with `.` in the same directory
//! (kubelet skips dot files), fsync, rename over the target, fsync of the directory. kubelet
//! therefore never sees a partial file or two files for one pod. Equal bytes are not written
//! (no mtime change, no kubelet restart). Backups and revision history live in the state
//! directory, never in the manifest directory, where kubelet would run them. An exclusive lock
//! on the state directory keeps two agents (or an agent and `sync --once`) from writing at once.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The lock file inside the state directory.
pub const LOCK_FILE: &str = "lock";
const REVISIONS_DIR: &str = "revisions";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "another staticpod-puller holds the lock on {path}{holder}: only one agent (or `sync --once`) may manage a node at a time"
    )]
    Locked { path: PathBuf, holder: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{name:?} is not a manifest file name")]
    BadName { name: String },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The file already had these bytes: nothing was touched.
    Unchanged,
    Written,
}

/// The manifest directory and the agent's state directory, locked for this process.
pub struct ManifestStore {
    manifest_dir: PathBuf,
    state_dir: PathBuf,
    /// Held for the life of the store; the OS releases it when the process dies (even kill -9).
    _lock: File,
}

impl ManifestStore {
    /// Open both directories (creating the state directory) and take the exclusive lock.
    pub fn open(manifest_dir: &Path, state_dir: &Path) -> Result<ManifestStore, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(io("creating state directory", state_dir))?;
        std::fs::create_dir_all(manifest_dir)
            .map_err(io("creating manifest directory", manifest_dir))?;
        let lock_path = state_dir.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io("opening lock file", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                return Err(StoreError::Locked {
                    path: lock_path,
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io("locking", &lock_path)(e)),
        }
        // Record who holds it, for the message a second agent prints.
        lock.set_len(0)
            .map_err(io("writing lock file", &lock_path))?;
        write!(lock, "{}", std::process::id()).map_err(io("writing lock file", &lock_path))?;
        // With the lock held no other writer can be mid-write here: a temp file of ours is
        // what a killed agent left behind, and would stay in kubelet's directory for good.
        remove_stale_temp_files(manifest_dir, |file| file.ends_with(".yaml"));
        remove_stale_temp_files(state_dir, |_| true);
        if let Ok(revisions) = std::fs::read_dir(state_dir.join(REVISIONS_DIR)) {
            for manifest in revisions.flatten() {
                remove_stale_temp_files(&manifest.path(), |_| true);
            }
        }
        Ok(ManifestStore {
            manifest_dir: manifest_dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn manifest_dir(&self) -> &Path {
        &self.manifest_dir
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `<manifestDir>/<staticPodManifest>.yaml`.
    pub fn manifest_path(&self, manifest: &str) -> Result<PathBuf, StoreError> {
        check_name(manifest)?;
        Ok(self.manifest_dir.join(format!("{manifest}.yaml")))
    }

    /// The current bytes of a manifest, or None when the node has no such file (not a member).
    pub fn read(&self, manifest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.manifest_path(manifest)?;
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading manifest", &path)(e)),
        }
    }

    /// Replace a manifest atomically, unless it already holds exactly these bytes.
    pub fn write(&self, manifest: &str, bytes: &[u8]) -> Result<WriteOutcome, StoreError> {
        let path = self.manifest_path(manifest)?;
        if self.read(manifest)?.as_deref() == Some(bytes) {
            return Ok(WriteOutcome::Unchanged);
        }
        write_atomic_mode(&self.manifest_dir, &path, bytes, None, || {
            crate::kill_point::reached(crate::kill_point::KillPoint::MidWrite)
        })?;
        Ok(WriteOutcome::Written)
    }

    /// Keep a copy of a manifest's bytes as a revision in the state directory, and prune the
    /// oldest beyond `limit`. Files are `<sequence>-<revision>.yaml`: the sequence orders them
    /// (mtimes can tie); saving a revision again makes it the newest.
    pub fn save_revision(
        &self,
        manifest: &str,
        revision: &str,
        bytes: &[u8],
        limit: usize,
    ) -> Result<PathBuf, StoreError> {
        check_name(manifest)?;
        check_name(revision)?;
        let dir = self.revision_dir(manifest);
        std::fs::create_dir_all(&dir).map_err(io("creating revision directory", &dir))?;
        let existing = revision_files(&dir)?;
        let next = existing.last().map_or(1, |(seq, _, _)| seq + 1);
        for (_, name, path) in &existing {
            if name == revision {
                std::fs::remove_file(path).map_err(io("replacing revision", path))?;
            }
        }
        let path = dir.join(format!("{next:08}-{revision}.yaml"));
        atomic_write(&dir, &path, bytes)?;
        let files = revision_files(&dir)?;
        let excess = files.len().saturating_sub(limit.max(1));
        for (_, _, old) in &files[..excess] {
            std::fs::remove_file(old).map_err(io("pruning revision", old))?;
        }
        Ok(path)
    }

    /// A saved revision's bytes.
    pub fn load_revision(
        &self,
        manifest: &str,
        revision: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        check_name(manifest)?;
        let Some((_, _, path)) = revision_files(&self.revision_dir(manifest))?
            .into_iter()
            .find(|(_, n, _)| n == revision)
        else {
            return Ok(None);
        };
        std::fs::read(&path)
            .map(Some)
            .map_err(io("reading revision", &path))
    }

    /// Saved revisions of a manifest, oldest first.
    pub fn revisions(&self, manifest: &str) -> Result<Vec<String>, StoreError> {
        check_name(manifest)?;
        Ok(revision_files(&self.revision_dir(manifest))?
            .into_iter()
            .map(|(_, n, _)| n)
            .collect())
    }

    fn revision_dir(&self, manifest: &str) -> PathBuf {
        self.state_dir.join(REVISIONS_DIR).join(manifest)
    }

    /// Write a file of the state directory atomically (journal, cache).
    pub fn write_state(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        check_name(name)?;
        atomic_write(&self.state_dir, &self.state_dir.join(name), bytes)
    }

    pub fn read_state(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_name(name)?;
        let path = self.state_dir.join(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading state file", &path)(e)),
        }
    }

    pub fn remove_state(&self, name: &str) -> Result<(), StoreError> {
        check_name(name)?;
        let path = self.state_dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing state file", &path)(e)),
        }
    }
}

/// A plain file name: no path separators, no leading dot (that is the temp-file namespace).
fn check_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\0']) || name.len() > 253 {
        return Err(StoreError::BadName {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// `(sequence, revision, path)` of the revision files in `dir`, by sequence.
fn revision_files(dir: &Path) -> Result<Vec<(u64, String, PathBuf)>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("listing", dir)(e)),
    };
    let mut files: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (seq, rest) = name.strip_suffix(".yaml")?.split_once('-')?;
            Some((seq.parse::<u64>().ok()?, rest.to_string(), e.path()))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Temp file (dot-prefixed, same directory), fsync, rename, fsync the directory.
fn atomic_write(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_atomic_mode(dir, path, bytes, None, || {})
}

/// The file a temp file of [`write_atomic_mode`] was for (`.<file>.<pid>.tmp` → `<file>`).
fn temp_file_target(name: &str) -> Option<&str> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (file, pid) = rest.rsplit_once('.')?;
    (!file.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(file)
}

/// Remove temp files of ours in `dir` (their naming pattern only, for files `wanted` says
/// are ours).
fn remove_stale_temp_files(dir: &Path, wanted: impl Fn(&str) -> bool + Copy) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_file() && temp_file_target(&name).is_some_and(wanted) {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "removed a temp file a stopped agent left")
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "removing a stale temp file")
                }
            }
        }
    }
}

/// Replace `path` with `bytes` so that readers see the old file or the new one, never a part;
/// the new file gets permission bits `mode` (from its creation on, so a secret is never
/// readable by others, even briefly).
pub fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    write_atomic_mode(dir, path, bytes, Some(mode), || {})
}

fn write_atomic_mode(
    dir: &Path,
    path: &Path,
    bytes: &[u8],
    mode: Option<u32>,
    before_rename: impl FnOnce(),
) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        if let Some(mode) = mode {
            options.mode(mode);
        }
        let mut f = options.open(&tmp).map_err(io("creating temp file", &tmp))?;
        if let Some(mode) = mode {
            // The umask may have cleared bits the caller asked for.
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(io("setting permissions of", &tmp))?;
        }
        f.write_all(bytes).map_err(io("writing temp file", &tmp))?;
        f.sync_all().map_err(io("syncing temp file", &tmp))?;
        before_rename();
        std::fs::rename(&tmp, path).map_err(io("renaming temp file onto", path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing directory", dir))
    })();
    if result.is_err() {
        // Never leave a stray temp file behind (kubelet ignores it, but operators would not).
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_a_killed_agent_left_are_removed_on_open_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let (manifests, state) = (dir.path().join("m"), dir.path().join("s"));
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        let stale = [
            manifests.join(".nginx.yaml.4242.tmp"),
            state.join(".journal-nginx.json.4242.tmp"),
        ];
        let kept = [
            manifests.join("nginx.yaml"),
            manifests.join(".nginx.yaml.swp"),
            manifests.join(".other.tmp"),
            manifests.join(".notes.txt.17.tmp"), // not a manifest of ours
            manifests.join(".nginx.yaml.12ab.tmp"),
        ];
        for f in stale.iter().chain(&kept) {
            std::fs::write(f, "x").unwrap();
        }
        let _store = ManifestStore::open(&manifests, &state).unwrap();
        for f in &stale {
            assert!(!f.exists(), "{} should be gone", f.display());
        }
        for f in &kept {
            assert!(f.exists(), "{} must stay", f.display());
        }
    }

    fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let m = root.path().join("manifests");
        let s = root.path().join("state");
        (root, m, s)
    }

    #[test]
    fn writes_are_atomic_and_equal_bytes_are_not_rewritten() {
        use std::os::unix::fs::MetadataExt;
        let (_root, m, s) = dirs();
        let store = ManifestStore::open(&m, &s).unwrap();
        assert_eq!(store.read("nginx").unwrap(), None);
        assert_eq!(
            store.write("nginx", b"a: 1\n").unwrap(),
            WriteOutcome::Written
        );
        let before = std::fs::metadata(m.join("nginx.yaml")).unwrap();
        assert_eq!(
            store.write("nginx", b"a: 1\n").unwrap(),
            WriteOutcome::Unchanged
        );
        let after = std::fs::metadata(m.join("nginx.yaml")).unwrap();
        assert_eq!(
            (before.ino(), before.mtime_nsec()),
            (after.ino(), after.mtime_nsec())
        );
        assert_eq!(
            store.write("nginx", b"a: 2\n").unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(
            store.read("nginx").unwrap().as_deref(),
            Some(&b"a: 2\n"[..])
        );
        let names: Vec<_> = std::fs::read_dir(&m)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("nginx.yaml")],
            "no temp file or backup left in the manifest directory"
        );
    }

    #[test]
    fn a_second_store_on_the_same_state_directory_is_refused() {
        let (_root, m, s) = dirs();
        let _first = ManifestStore::open(&m, &s).unwrap();
        let err = ManifestStore::open(&m, &s)
            .err()
            .expect("second open must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("holds the lock") && msg.contains(&std::process::id().to_string()),
            "{msg}"
        );
    }

    #[test]
    fn revisions_live_in_the_state_directory_and_are_pruned() {
        let (_root, m, s) = dirs();
        let store = ManifestStore::open(&m, &s).unwrap();
        for i in 0..4 {
            store
                .save_revision("nginx", &format!("rev{i}"), format!("v{i}").as_bytes(), 3)
                .unwrap();
        }
        assert_eq!(
            store.revisions("nginx").unwrap(),
            vec!["rev1", "rev2", "rev3"]
        );
        store.save_revision("nginx", "rev1", b"v1", 2).unwrap();
        assert_eq!(
            store.revisions("nginx").unwrap(),
            vec!["rev3", "rev1"],
            "saving again makes it newest"
        );
        assert_eq!(
            store.load_revision("nginx", "rev3").unwrap().as_deref(),
            Some(&b"v3"[..])
        );
        assert_eq!(store.load_revision("nginx", "rev0").unwrap(), None);
        assert!(
            std::fs::read_dir(&m).unwrap().next().is_none(),
            "nothing in the manifest directory"
        );
    }

    #[test]
    fn names_that_escape_the_directory_are_refused() {
        let (_root, m, s) = dirs();
        let store = ManifestStore::open(&m, &s).unwrap();
        for bad in ["", "../x", ".hidden", "a/b", "a\0b"] {
            assert!(
                matches!(store.write(bad, b"x"), Err(StoreError::BadName { .. })),
                "{bad:?} accepted"
            );
        }
    }
}
