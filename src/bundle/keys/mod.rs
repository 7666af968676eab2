//! Ed25519 signing keys in the PEM files openssl writes, so operators can make and inspect keys
//! with the tools they already have.
//!
//! - Private key: `-----BEGIN PRIVATE KEY-----`, PKCS#8 (`openssl genpkey -algorithm ed25519`
//!   writes v1: DER `302e020100300506032b657004220420` then the 32-byte seed). v2 files (with
//!   the public key appended, as ring writes them) are read too.
//! - Public key: `-----BEGIN PUBLIC KEY-----`, SubjectPublicKeyInfo (`openssl pkey -pubout`:
//!   DER `302a300506032b6570032100` then the 32-byte key).
//!
//! A key's [`KeyId`] is the lowercase hex of the first 16 bytes of the SHA-256 of its SPKI DER
//! (the bytes inside the `PUBLIC KEY` PEM): 32 hex characters. It is computed, never trusted
//! from a file, so the same key always has the same id. Reproduce it with
//! `openssl pkey -pubin -in k.pub -outform DER | sha256sum | cut -c1-32`.

mod der;
mod files;
mod key_info;
mod pem;
#[cfg(test)]
mod test_keys;

use std::fmt;
use std::path::{Path, PathBuf};

use ring::rand::SecureRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

pub use files::{KeyFiles, keygen};

use files::read_key_file;
use key_info::{PKCS8_V1_PREFIX, parse_pkcs8, parse_spki, spki_der};
use pem::{PRIVATE_LABEL, PUBLIC_LABEL, pem_block, pem_encode};

/// Length of an Ed25519 seed, public key, and signature.
const SEED_LEN: usize = 32;
const PUBLIC_LEN: usize = 32;
pub const SIGNATURE_LEN: usize = 64;

/// Why bytes are not an Ed25519 key in the expected PEM format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("not PEM: no -----BEGIN ...----- line")]
    NotPem,
    #[error("not PEM: no -----END {label}----- line")]
    Unterminated { label: String },
    #[error("PEM body of {label} is not base64: {reason}")]
    Base64 { label: String, reason: String },
    #[error("expected a PEM {expected} block, found {found}{hint}")]
    WrongLabel {
        expected: &'static str,
        found: String,
        hint: &'static str,
    },
    #[error("not an Ed25519 key: {found}")]
    NotEd25519 { found: String },
    #[error("bad length: {what} is {found} bytes, expected {expected}")]
    BadLength {
        what: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("malformed DER in {what}: {reason}")]
    Der { what: &'static str, reason: String },
    #[error("the public key inside the private key does not match its seed")]
    PublicKeyMismatch,
}

/// Reading, parsing, generating or writing a key file failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading {what} {path}: {source}")]
    Format {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: KeyFormatError,
    },
    #[error("writing {what} {path}: refusing to overwrite an existing file")]
    Exists { what: &'static str, path: PathBuf },
    #[error("writing {what} {path}: {source}")]
    Write {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating an Ed25519 key: the system random number generator failed")]
    Random,
}

/// A key's identity: lowercase hex of the first 16 bytes of SHA-256(SPKI DER).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    /// The id of a raw Ed25519 public key.
    fn of(public: &[u8; PUBLIC_LEN]) -> KeyId {
        let digest = ring::digest::digest(&ring::digest::SHA256, &spki_der(public));
        KeyId(hex(&digest.as_ref()[..16]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Ed25519 public key that signatures are checked against.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    raw: [u8; PUBLIC_LEN],
    id: KeyId,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

impl PublicKey {
    fn from_raw(raw: [u8; PUBLIC_LEN]) -> PublicKey {
        PublicKey {
            id: KeyId::of(&raw),
            raw,
        }
    }

    /// Parse a `PUBLIC KEY` PEM block (SPKI), as `openssl pkey -pubout` writes it.
    pub fn from_pem(text: &str) -> Result<PublicKey, KeyFormatError> {
        let der = pem_block(text, PUBLIC_LABEL)?;
        parse_spki(&der).map(PublicKey::from_raw)
    }

    /// Read and parse a public key file.
    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        let what = "public key";
        let text = read_key_file(what, path)?;
        PublicKey::from_pem(&text).map_err(|source| KeyError::Format {
            what,
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The SubjectPublicKeyInfo DER (what the key id hashes).
    pub fn spki_der(&self) -> Vec<u8> {
        spki_der(&self.raw)
    }

    /// The PEM file text, as `openssl pkey -pubout` writes it.
    pub fn to_pem(&self) -> String {
        pem_encode(PUBLIC_LABEL, &self.spki_der())
    }

    /// Whether `signature` is this key's Ed25519 signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.raw[..])
            .verify(message, signature)
            .is_ok()
    }
}

/// An Ed25519 private key that signs bundles.
pub struct PrivateKey {
    seed: [u8; SEED_LEN],
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl fmt::Debug for PrivateKey {
    /// Never prints the seed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({})", self.public.id)
    }
}

impl PrivateKey {
    fn from_seed(seed: [u8; SEED_LEN]) -> Result<PrivateKey, KeyFormatError> {
        // from_seed_unchecked: openssl's v1 files carry no public key to check against.
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| KeyFormatError::Der {
            what: "private key",
            reason: e.to_string(),
        })?;
        let mut raw = [0u8; PUBLIC_LEN];
        raw.copy_from_slice(pair.public_key().as_ref());
        Ok(PrivateKey {
            seed,
            pair,
            public: PublicKey::from_raw(raw),
        })
    }

    /// A new key from the system random number generator.
    pub fn generate() -> Result<PrivateKey, KeyError> {
        let mut seed = [0u8; SEED_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| KeyError::Random)?;
        PrivateKey::from_seed(seed).map_err(|_| KeyError::Random)
    }

    /// Parse a `PRIVATE KEY` PEM block (PKCS#8 v1 or v2).
    pub fn from_pem(text: &str) -> Result<PrivateKey, KeyFormatError> {
        let der = pem_block(text, PRIVATE_LABEL)?;
        let (seed, public) = parse_pkcs8(&der)?;
        let key = PrivateKey::from_seed(seed)?;
        match public {
            Some(public) if public != key.public.raw => Err(KeyFormatError::PublicKeyMismatch),
            _ => Ok(key),
        }
    }

    /// Read and parse a private key file.
    pub fn load(path: &Path) -> Result<PrivateKey, KeyError> {
        let what = "private key";
        let text = read_key_file(what, path)?;
        PrivateKey::from_pem(&text).map_err(|source| KeyError::Format {
            what,
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    pub fn id(&self) -> &KeyId {
        &self.public.id
    }

    /// The PEM file text: PKCS#8 v1, byte for byte what `openssl genpkey` writes.
    pub fn to_pem(&self) -> String {
        let mut der = PKCS8_V1_PREFIX.to_vec();
        der.extend_from_slice(&self.seed);
        pem_encode(PRIVATE_LABEL, &der)
    }

    /// The Ed25519 signature over `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut sig = [0u8; SIGNATURE_LEN];
        sig.copy_from_slice(self.pair.sign(message).as_ref());
        sig
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::test_keys::{OPENSSL_PRIVATE, OPENSSL_PUBLIC, RFC8032_PUBLIC, RFC8032_SEED, unhex};
    use super::*;

    #[test]
    fn reads_openssl_pem_byte_for_byte() {
        let key = PrivateKey::from_pem(OPENSSL_PRIVATE).expect("openssl private key parses");
        assert_eq!(key.seed.to_vec(), unhex(RFC8032_SEED));
        assert_eq!(key.public.raw.to_vec(), unhex(RFC8032_PUBLIC));
        assert_eq!(
            key.to_pem(),
            OPENSSL_PRIVATE,
            "written back as openssl writes it"
        );
        let public = PublicKey::from_pem(OPENSSL_PUBLIC).expect("openssl public key parses");
        assert_eq!(&public, key.public_key());
        assert_eq!(public.to_pem(), OPENSSL_PUBLIC);
        // RFC 8032 test 1: the empty message.
        let sig = key.sign(b"");
        assert_eq!(
            hex(&sig),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
             5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
        assert!(public.verify(b"", &sig));
        assert!(!public.verify(b"x", &sig));
    }

    #[test]
    fn key_id_is_truncated_sha256_of_spki() {
        let public = PublicKey::from_pem(OPENSSL_PUBLIC).expect("parses");
        let digest = ring::digest::digest(&ring::digest::SHA256, &public.spki_der());
        assert_eq!(public.id().as_str(), hex(&digest.as_ref()[..16]));
        assert_eq!(public.id().as_str().len(), 32);
        assert!(
            public
                .id()
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
}
