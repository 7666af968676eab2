//! Key files: reading one, and writing a new pair without replacing anything.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{KeyError, KeyId, PrivateKey};

/// Where [`keygen`] wrote a new key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFiles {
    /// `PREFIX.key`, mode 0600.
    pub private: PathBuf,
    /// `PREFIX.pub`, mode 0644.
    pub public: PathBuf,
    pub id: KeyId,
}

/// Generate a key pair and write `PREFIX.key` (0600) and `PREFIX.pub` (0644), refusing to
/// overwrite either file; openssl reads both.
pub fn keygen(prefix: &Path) -> Result<KeyFiles, KeyError> {
    let key = PrivateKey::generate()?;
    let with_suffix = |suffix: &str| {
        let mut name = prefix.as_os_str().to_os_string();
        name.push(suffix);
        PathBuf::from(name)
    };
    let files = KeyFiles {
        private: with_suffix(".key"),
        public: with_suffix(".pub"),
        id: key.id().clone(),
    };
    // Check the public path first, so a clash does not leave a lone private key behind.
    if files.public.exists() {
        return Err(KeyError::Exists {
            what: "public key",
            path: files.public,
        });
    }
    write_new("private key", &files.private, 0o600, &key.to_pem())?;
    if let Err(e) = write_new("public key", &files.public, 0o644, &key.public.to_pem()) {
        let _ = std::fs::remove_file(&files.private);
        return Err(e);
    }
    Ok(files)
}

/// Create `path` with `mode` (never replacing an existing file), write and fsync it.
fn write_new(what: &'static str, path: &Path, mode: u32, text: &str) -> Result<(), KeyError> {
    let write_err = |source| KeyError::Write {
        what,
        path: path.to_path_buf(),
        source,
    };
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    what,
                    path: path.to_path_buf(),
                }
            } else {
                write_err(e)
            }
        })?;
    let result = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = result {
        let _ = std::fs::remove_file(path);
        return Err(write_err(e));
    }
    Ok(())
}

pub(super) fn read_key_file(what: &'static str, path: &Path) -> Result<String, KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    // A DER or other binary file: say "not PEM" rather than "invalid UTF-8".
    Ok(String::from_utf8(bytes).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    use super::super::PublicKey;
    use super::super::test_keys::EC_PRIVATE;
    use super::*;

    #[test]
    fn keygen_writes_modes_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = dir.path().join("signer");
        let files = keygen(&prefix).expect("keygen");
        assert_eq!(files.private, dir.path().join("signer.key"));
        assert_eq!(files.public, dir.path().join("signer.pub"));
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&files.private), 0o600, "private key mode");
        assert!(mode(&files.public) & 0o600 == 0o600, "public key readable");
        let key = PrivateKey::load(&files.private).expect("loads back");
        let public = PublicKey::load(&files.public).expect("loads back");
        assert_eq!(key.public_key(), &public);
        assert_eq!(&files.id, public.id());
        let again = keygen(&prefix).expect_err("second keygen must refuse");
        assert!(
            again.to_string().contains("refusing to overwrite"),
            "{again}"
        );
        let reloaded = PrivateKey::load(&files.private).expect("still there");
        assert_eq!(reloaded.id(), key.id(), "the first key was not replaced");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.pub");
        std::fs::write(&path, EC_PRIVATE).expect("write");
        let err = PublicKey::load(&path).expect_err("not a public key");
        assert!(
            err.to_string()
                .starts_with(&format!("loading public key {}: ", path.display())),
            "{err}"
        );
        let missing = PrivateKey::load(&dir.path().join("none")).expect_err("missing");
        assert!(
            missing.to_string().starts_with("reading private key "),
            "{missing}"
        );
    }

    /// Runs openssl; a missing binary fails the test (CI installs it), never skips it.
    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "running `openssl {}`: {e} (install openssl: this test needs it)",
                    args.join(" ")
                )
            });
        assert!(
            out.status.success(),
            "`openssl {}` failed with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn openssl_keys_work_here_and_ours_work_in_openssl() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("msg"), b"a bundle, or anything else").expect("write msg");

        // openssl's keys, our signature, openssl's verification.
        openssl(d, &["genpkey", "-algorithm", "ed25519", "-out", "k.pem"]);
        openssl(d, &["pkey", "-in", "k.pem", "-pubout", "-out", "k.pub"]);
        let key = PrivateKey::load(&d.join("k.pem")).expect("openssl private key loads");
        let public = PublicKey::load(&d.join("k.pub")).expect("openssl public key loads");
        assert_eq!(key.public_key(), &public);
        std::fs::write(d.join("sig"), key.sign(b"a bundle, or anything else")).expect("sig");
        openssl(
            d,
            &[
                "pkeyutl", "-verify", "-pubin", "-inkey", "k.pub", "-rawin", "-in", "msg",
                "-sigfile", "sig",
            ],
        );

        // Our keys, openssl's signature, our verification.
        let ours = keygen(&d.join("ours")).expect("keygen");
        openssl(
            d,
            &[
                "pkeyutl", "-sign", "-inkey", "ours.key", "-rawin", "-in", "msg", "-out", "sig2",
            ],
        );
        let sig = std::fs::read(d.join("sig2")).expect("read sig2");
        let our_public = PublicKey::load(&ours.public).expect("loads");
        assert!(
            our_public.verify(b"a bundle, or anything else", &sig),
            "openssl's signature with our key did not verify"
        );
        // openssl derives the same public key file from our private key.
        openssl(
            d,
            &["pkey", "-in", "ours.key", "-pubout", "-out", "ours2.pub"],
        );
        let derived = std::fs::read_to_string(d.join("ours2.pub")).expect("read");
        assert_eq!(derived, our_public.to_pem());
        // And the key id matches the documented shell recipe's input.
        openssl(
            d,
            &[
                "pkey", "-pubin", "-in", "ours.pub", "-outform", "DER", "-out", "ours.der",
            ],
        );
        let der = std::fs::read(d.join("ours.der")).expect("read");
        assert_eq!(der, our_public.spki_der());

        // An RSA key is refused by name, private or public.
        openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:1024",
                "-out",
                "rsa.pem",
            ],
        );
        openssl(d, &["pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub"]);
        let err = PrivateKey::load(&d.join("rsa.pem")).expect_err("RSA is not Ed25519");
        assert!(
            err.to_string()
                .ends_with("not an Ed25519 key: an RSA key (algorithm OID 1.2.840.113549.1.1.1)"),
            "{err}"
        );
        let err = PublicKey::load(&d.join("rsa.pub")).expect_err("RSA is not Ed25519");
        assert!(
            err.to_string()
                .ends_with("not an Ed25519 key: an RSA key (algorithm OID 1.2.840.113549.1.1.1)"),
            "{err}"
        );
    }
}
