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

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::rand::SecureRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// The DER of an openssl PKCS#8 v1 Ed25519 private key, up to the seed.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The DER of an Ed25519 SubjectPublicKeyInfo, up to the key.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// The content octets of OID 1.3.101.112 (id-Ed25519, RFC 8410).
const ED25519_OID: [u8; 3] = [0x2b, 0x65, 0x70];

const PRIVATE_LABEL: &str = "PRIVATE KEY";
const PUBLIC_LABEL: &str = "PUBLIC KEY";

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

fn read_key_file(what: &'static str, path: &Path) -> Result<String, KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    // A DER or other binary file: say "not PEM" rather than "invalid UTF-8".
    Ok(String::from_utf8(bytes).unwrap_or_default())
}

fn spki_der(public: &[u8; PUBLIC_LEN]) -> Vec<u8> {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(public);
    der
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The DER inside the first PEM block, which must carry `expected` as its label.
fn pem_block(text: &str, expected: &'static str) -> Result<Vec<u8>, KeyFormatError> {
    let mut lines = text.lines().map(str::trim);
    let label = lines
        .by_ref()
        .find_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .ok_or(KeyFormatError::NotPem)?
        .to_string();
    if label != expected {
        return Err(wrong_label(expected, label));
    }
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    let mut terminated = false;
    for line in lines {
        if line == end {
            terminated = true;
            break;
        }
        body.push_str(line);
    }
    if !terminated {
        return Err(KeyFormatError::Unterminated { label });
    }
    base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|e| KeyFormatError::Base64 {
            label,
            reason: e.to_string(),
        })
}

fn wrong_label(expected: &'static str, found: String) -> KeyFormatError {
    let algorithm = [("RSA", "an RSA"), ("EC", "an EC"), ("DSA", "a DSA")]
        .into_iter()
        .find(|(prefix, _)| found.starts_with(&format!("{prefix} ")));
    if let Some((_, algorithm)) = algorithm {
        return KeyFormatError::NotEd25519 {
            found: format!("the PEM label {found} is {algorithm} key"),
        };
    }
    let hint = match (expected, found.as_str()) {
        (_, "ENCRYPTED PRIVATE KEY") => {
            " (encrypted keys are not supported: decrypt with `openssl pkey -in K -out K2`)"
        }
        (PUBLIC_LABEL, PRIVATE_LABEL) => {
            " (this is a private key: extract the public key with `openssl pkey -in K -pubout`)"
        }
        (PRIVATE_LABEL, PUBLIC_LABEL) => " (this is a public key; signing needs the private key)",
        _ => "",
    };
    KeyFormatError::WrongLabel {
        expected,
        found,
        hint,
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(chunk));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

/// PKCS#8 PrivateKeyInfo → (seed, public key if the file is v2).
fn parse_pkcs8(der: &[u8]) -> Result<([u8; SEED_LEN], Option<[u8; PUBLIC_LEN]>), KeyFormatError> {
    const WHAT: &str = "PKCS#8 private key";
    let mut outer = Der::new(WHAT, der);
    let mut info = Der::new(WHAT, outer.element(TAG_SEQUENCE)?);
    outer.finish()?;
    let version = info.element(TAG_INTEGER)?;
    if version != [0] && version != [1] {
        return Err(Der::error(WHAT, format!("unknown version {version:02x?}")));
    }
    check_algorithm(WHAT, info.element(TAG_SEQUENCE)?)?;
    let private = info.element(TAG_OCTET_STRING)?;
    let mut private = Der::new(WHAT, private);
    let seed = private.element(TAG_OCTET_STRING)?;
    private.finish()?;
    let seed: [u8; SEED_LEN] = seed.try_into().map_err(|_| KeyFormatError::BadLength {
        what: "the Ed25519 seed",
        found: seed.len(),
        expected: SEED_LEN,
    })?;
    let mut public = None;
    while !info.is_empty() {
        let (tag, value) = info.any()?;
        // [0] attributes are ignored; [1] is the v2 public key (a BIT STRING's contents).
        if tag == TAG_CONTEXT_1 {
            public = Some(bit_string_key(WHAT, value)?);
        } else if tag != TAG_CONTEXT_0 {
            return Err(Der::error(WHAT, format!("unexpected tag {tag:#04x}")));
        }
    }
    Ok((seed, public))
}

/// SubjectPublicKeyInfo → the raw public key.
fn parse_spki(der: &[u8]) -> Result<[u8; PUBLIC_LEN], KeyFormatError> {
    const WHAT: &str = "SubjectPublicKeyInfo";
    let mut outer = Der::new(WHAT, der);
    let mut info = Der::new(WHAT, outer.element(TAG_SEQUENCE)?);
    outer.finish()?;
    check_algorithm(WHAT, info.element(TAG_SEQUENCE)?)?;
    let key = bit_string_key(WHAT, info.element(TAG_BIT_STRING)?)?;
    info.finish()?;
    Ok(key)
}

/// A BIT STRING's contents (unused-bits byte 0, then the key) → the 32-byte key.
fn bit_string_key(what: &'static str, bits: &[u8]) -> Result<[u8; PUBLIC_LEN], KeyFormatError> {
    let Some((&0, key)) = bits.split_first() else {
        return Err(Der::error(what, "public key BIT STRING has unused bits"));
    };
    key.try_into().map_err(|_| KeyFormatError::BadLength {
        what: "the Ed25519 public key",
        found: key.len(),
        expected: PUBLIC_LEN,
    })
}

/// The AlgorithmIdentifier must be id-Ed25519 with no parameters.
fn check_algorithm(what: &'static str, algorithm: &[u8]) -> Result<(), KeyFormatError> {
    let mut algorithm = Der::new(what, algorithm);
    let oid = algorithm.element(TAG_OID)?;
    if oid != ED25519_OID {
        return Err(KeyFormatError::NotEd25519 {
            found: oid_name(oid),
        });
    }
    if !algorithm.is_empty() {
        return Err(Der::error(what, "Ed25519 takes no algorithm parameters"));
    }
    Ok(())
}

/// A readable name for an algorithm OID, for "not an Ed25519 key" messages.
fn oid_name(oid: &[u8]) -> String {
    let dotted = oid_dotted(oid);
    let name = match dotted.as_str() {
        "1.2.840.113549.1.1.1" => "an RSA key",
        "1.2.840.113549.1.1.10" => "an RSA-PSS key",
        "1.2.840.10045.2.1" => "an EC (ECDSA) key",
        "1.2.840.10040.4.1" => "a DSA key",
        "1.3.101.110" => "an X25519 key",
        "1.3.101.111" => "an X448 key",
        "1.3.101.113" => "an Ed448 key",
        _ => "a key of another algorithm",
    };
    format!("{name} (algorithm OID {dotted})")
}

fn oid_dotted(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    for &b in oid {
        value = value
            .saturating_mul(128)
            .saturating_add(u64::from(b & 0x7f));
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_CONTEXT_0: u8 = 0xa0;
const TAG_CONTEXT_1: u8 = 0x81;

/// Just enough DER to walk a key: single-byte tags, definite lengths.
struct Der<'a> {
    what: &'static str,
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(what: &'static str, bytes: &'a [u8]) -> Der<'a> {
        Der { what, rest: bytes }
    }

    fn error(what: &'static str, reason: impl Into<String>) -> KeyFormatError {
        KeyFormatError::Der {
            what,
            reason: reason.into(),
        }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn finish(&self) -> Result<(), KeyFormatError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Der::error(
                self.what,
                format!("{} trailing bytes", self.rest.len()),
            ))
        }
    }

    /// The next element: (tag, contents).
    fn any(&mut self) -> Result<(u8, &'a [u8]), KeyFormatError> {
        let truncated = || Der::error(self.what, "truncated");
        let (&tag, rest) = self.rest.split_first().ok_or_else(truncated)?;
        let (&first, mut rest) = rest.split_first().ok_or_else(truncated)?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err(Der::error(self.what, "bad length"));
            }
            let (digits, after) = rest.split_at(n);
            rest = after;
            digits
                .iter()
                .fold(0usize, |acc, &d| (acc << 8) | usize::from(d))
        };
        if rest.len() < len {
            return Err(truncated());
        }
        let (value, after) = rest.split_at(len);
        self.rest = after;
        Ok((tag, value))
    }

    fn element(&mut self, tag: u8) -> Result<&'a [u8], KeyFormatError> {
        let (found, value) = self.any()?;
        if found != tag {
            return Err(Der::error(
                self.what,
                format!("expected tag {tag:#04x}, found {found:#04x}"),
            ));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    /// RFC 8032 test 1's seed and public key, as openssl writes them.
    const RFC8032_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const RFC8032_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const OPENSSL_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g
-----END PRIVATE KEY-----
";
    const OPENSSL_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=
-----END PUBLIC KEY-----
";
    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` (a throwaway key).
    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgliSjxDOb0DgHSGFq
mewfYH5Fed93xPfa4XhjM7NZO7uhRANCAAS+GKfAZkTajUbcsWjADgnGiGbnXgI3
M7VMfPNLMMnUG5gNqJJHkKvYoIG4b8aYn7w5Q+UKB8j/n7f6nj4bJ1C9
-----END PRIVATE KEY-----
";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

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

    #[test]
    fn reads_pkcs8_v2_as_ring_writes_it() {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("ring generates");
        let pem = pem_encode(PRIVATE_LABEL, doc.as_ref());
        let key = PrivateKey::from_pem(&pem).expect("v2 parses");
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("ring parses its own");
        assert_eq!(key.public.raw.as_slice(), pair.public_key().as_ref());
    }

    #[test]
    fn clear_errors_for_wrong_inputs() {
        let err = |text: &str| PrivateKey::from_pem(text).expect_err(text).to_string();
        let pub_err = |text: &str| PublicKey::from_pem(text).expect_err(text).to_string();
        assert_eq!(err("hello"), "not PEM: no -----BEGIN ...----- line");
        assert_eq!(
            err(OPENSSL_PUBLIC),
            "expected a PEM PRIVATE KEY block, found PUBLIC KEY (this is a public key; signing needs the private key)"
        );
        assert!(
            pub_err(OPENSSL_PRIVATE)
                .starts_with("expected a PEM PUBLIC KEY block, found PRIVATE KEY"),
            "{}",
            pub_err(OPENSSL_PRIVATE)
        );
        assert_eq!(
            err(EC_PRIVATE),
            "not an Ed25519 key: an EC (ECDSA) key (algorithm OID 1.2.840.10045.2.1)"
        );
        let rsa = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert_eq!(
            err(rsa),
            "not an Ed25519 key: the PEM label RSA PRIVATE KEY is an RSA key"
        );
        let truncated = OPENSSL_PRIVATE.replace("-----END PRIVATE KEY-----\n", "");
        assert_eq!(
            err(&truncated),
            "not PEM: no -----END PRIVATE KEY----- line"
        );
        // A 31-byte seed: the v1 layout with one byte short, lengths adjusted.
        let mut der = vec![0x30, 0x2d, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03];
        der.extend_from_slice(&[0x2b, 0x65, 0x70, 0x04, 0x21, 0x04, 0x1f]);
        der.extend_from_slice(&[7u8; 31]);
        assert_eq!(
            err(&pem_encode(PRIVATE_LABEL, &der)),
            "bad length: the Ed25519 seed is 31 bytes, expected 32"
        );
        let mut spki = vec![0x30, 0x29, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
        spki.extend_from_slice(&[0x03, 0x20, 0x00]);
        spki.extend_from_slice(&[7u8; 31]);
        assert_eq!(
            pub_err(&pem_encode(PUBLIC_LABEL, &spki)),
            "bad length: the Ed25519 public key is 31 bytes, expected 32"
        );
        let garbage = "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n";
        assert!(pub_err(garbage).starts_with("PEM body of PUBLIC KEY is not base64"));
    }

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
