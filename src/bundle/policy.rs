//! The trust policy: which keys may sign, how many must, and what else a bundle must satisfy
//! before anything in it is used.
//!
//! The order is the point: size caps → envelope → payload type → signatures over the PAE →
//! threshold of distinct trusted keys → *only then* the payload is parsed, from the verified
//! bytes → expiry → clock check → anti-rollback → targeting. Each refusal is a [`Refusal`]
//! with a stable [`Refusal::reason`] label and a human message.
//!
//! Anti-rollback and the clock check need memory across restarts: [`BundleState`] (highest
//! accepted sequence, latest time seen), persisted by [`StateStore`] as a small JSON file.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::dsse::{DsseError, Envelope, EnvelopeLimits, PAYLOAD_TYPE};
use super::keys::{KeyError, KeyId, PublicKey};
use super::payload::{self, Bundle, NotTargeted, PayloadError};

/// How far the clock may be behind the latest time seen (or a bundle's `issuedAt` ahead of
/// the clock) before it is treated as wrong rather than as ordinary skew.
pub const CLOCK_TOLERANCE: SignedDuration = SignedDuration::from_secs(5 * 60);

/// The state file's name inside the directory given to [`StateStore::new`].
pub const STATE_FILE: &str = "bundle-state.json";

/// Every cap a bundle must fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub envelope: EnvelopeLimits,
    pub max_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            envelope: EnvelopeLimits::default(),
            max_items: payload::DEFAULT_MAX_ITEMS,
        }
    }
}

/// The trust policy is unusable as configured.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("trust policy: no trusted keys")]
    NoKeys,
    #[error("trust policy: threshold 0 would accept unsigned bundles; it must be at least 1")]
    ThresholdZero,
    #[error("trust policy: threshold {threshold} exceeds the {distinct} distinct trusted keys")]
    ThresholdTooHigh { threshold: usize, distinct: usize },
    #[error("trust policy: {0}")]
    Key(#[from] KeyError),
}

/// Why a bundle was refused. Nothing from a refused bundle may be used.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Envelope(DsseError),
    #[error("payload type {found:?} is not ours ({PAYLOAD_TYPE})")]
    PayloadType { found: String },
    #[error("bad signature from key {key} (threshold {threshold} not met: {valid} valid)")]
    BadSignature {
        key: KeyId,
        threshold: usize,
        valid: usize,
    },
    #[error("threshold {threshold} not met: {valid} valid{}", untrusted_suffix(.untrusted))]
    Threshold {
        threshold: usize,
        valid: usize,
        /// Key ids of signatures by keys that are not trusted.
        untrusted: Vec<String>,
    },
    #[error("{0}")]
    Payload(PayloadError),
    #[error("expired at {expires_at} (now {now})")]
    Expired {
        expires_at: Timestamp,
        now: Timestamp,
    },
    #[error("issued at {issued_at}, in the future (now {now})")]
    NotYetValid {
        issued_at: Timestamp,
        now: Timestamp,
    },
    #[error("the clock went backwards: now {now}, already seen {seen}")]
    ClockRollback { now: Timestamp, seen: Timestamp },
    #[error("sequence {sequence} ≤ accepted {accepted}")]
    Replayed { sequence: u64, accepted: u64 },
    #[error("{0}")]
    NotTargeted(NotTargeted),
}

fn untrusted_suffix(untrusted: &[String]) -> String {
    if untrusted.is_empty() {
        return String::new();
    }
    let ids: Vec<&str> = untrusted
        .iter()
        .map(|id| if id.is_empty() { "(no keyid)" } else { id })
        .collect();
    format!("; signatures by untrusted keys: {}", ids.join(", "))
}

impl Refusal {
    /// A short stable label for metrics and `.reason` files.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Envelope(DsseError::TooLarge { .. } | DsseError::TooManySignatures { .. })
            | Refusal::Payload(PayloadError::TooManyItems { .. }) => "too_large",
            Refusal::Payload(PayloadError::InvalidItem { .. }) => "invalid_item",
            Refusal::Envelope(_) | Refusal::Payload(_) => "malformed",
            Refusal::PayloadType { .. } => "payload_type",
            Refusal::BadSignature { .. } => "bad_signature",
            Refusal::Threshold { .. } => "threshold",
            Refusal::Expired { .. } => "expired",
            Refusal::NotYetValid { .. } => "not_yet_valid",
            Refusal::ClockRollback { .. } => "clock_rollback",
            Refusal::Replayed { .. } => "replayed",
            Refusal::NotTargeted(_) => "not_targeted",
        }
    }
}

/// A bundle whose signatures met the threshold, parsed from the verified bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub bundle: Bundle,
    /// The distinct trusted keys that signed it.
    pub signers: Vec<KeyId>,
    /// The verified payload bytes (what was parsed).
    pub payload: Vec<u8>,
}

/// Trusted keys, a threshold of distinct keys, and limits.
#[derive(Debug, Clone)]
pub struct TrustPolicy {
    keys: Vec<PublicKey>,
    threshold: usize,
    limits: Limits,
}

impl TrustPolicy {
    /// A key listed twice counts once; the threshold must be 1..=distinct keys.
    pub fn new(keys: Vec<PublicKey>, threshold: usize) -> Result<TrustPolicy, PolicyError> {
        let mut distinct: Vec<PublicKey> = Vec::with_capacity(keys.len());
        for key in keys {
            if !distinct.iter().any(|k| k.id() == key.id()) {
                distinct.push(key);
            }
        }
        if distinct.is_empty() {
            return Err(PolicyError::NoKeys);
        }
        if threshold == 0 {
            return Err(PolicyError::ThresholdZero);
        }
        if threshold > distinct.len() {
            return Err(PolicyError::ThresholdTooHigh {
                threshold,
                distinct: distinct.len(),
            });
        }
        Ok(TrustPolicy {
            keys: distinct,
            threshold,
            limits: Limits::default(),
        })
    }

    /// Load public key files (PEM, as `openssl pkey -pubout` writes them).
    pub fn load(paths: &[PathBuf], threshold: usize) -> Result<TrustPolicy, PolicyError> {
        let keys = paths
            .iter()
            .map(|p| PublicKey::load(p))
            .collect::<Result<Vec<_>, _>>()?;
        TrustPolicy::new(keys, threshold)
    }

    pub fn with_limits(mut self, limits: Limits) -> TrustPolicy {
        self.limits = limits;
        self
    }

    /// The distinct trusted keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Signatures and threshold, then the payload from the verified bytes. No time checks.
    pub fn authenticate(&self, envelope: &[u8]) -> Result<Verified, Refusal> {
        let envelope =
            Envelope::parse(envelope, &self.limits.envelope).map_err(Refusal::Envelope)?;
        if envelope.payload_type != PAYLOAD_TYPE {
            return Err(Refusal::PayloadType {
                found: envelope.payload_type,
            });
        }
        let check = envelope.verify(&self.keys);
        let valid = check.valid.len();
        if valid < self.threshold {
            return Err(match check.bad.into_iter().next() {
                Some(key) => Refusal::BadSignature {
                    key,
                    threshold: self.threshold,
                    valid,
                },
                None => Refusal::Threshold {
                    threshold: self.threshold,
                    valid,
                    untrusted: check.untrusted,
                },
            });
        }
        // Only now, and only these bytes.
        let payload = envelope.payload;
        let bundle = payload::parse(&payload, self.limits.max_items).map_err(Refusal::Payload)?;
        Ok(Verified {
            bundle,
            signers: check.valid,
            payload,
        })
    }

    /// Everything that needs no memory: [`Self::authenticate`], expiry, not issued in the
    /// future. What `bundle verify` checks.
    pub fn verify(&self, envelope: &[u8], now: Timestamp) -> Result<Verified, Refusal> {
        let verified = self.authenticate(envelope)?;
        check_expiry(&verified.bundle, now)?;
        check_issued(&verified.bundle, now)?;
        Ok(verified)
    }

    /// The full check for a node, against and then updating `state` (in memory; persist it
    /// with [`StateStore::save`] before applying anything).
    pub fn admit(
        &self,
        envelope: &[u8],
        node: &str,
        labels: &BTreeMap<String, String>,
        state: &mut BundleState,
        now: Timestamp,
    ) -> Result<Verified, Refusal> {
        let verified = self.authenticate(envelope)?;
        let bundle = &verified.bundle;
        check_expiry(bundle, now)?;
        state.check_clock(now)?;
        check_issued(bundle, now)?;
        if let Some(accepted) = state.highest_sequence
            && bundle.sequence <= accepted
        {
            return Err(Refusal::Replayed {
                sequence: bundle.sequence,
                accepted,
            });
        }
        bundle
            .check_target(node, labels)
            .map_err(Refusal::NotTargeted)?;
        state.highest_sequence = Some(bundle.sequence);
        state.observe(now);
        state.observe(bundle.issued_at);
        Ok(verified)
    }
}

fn check_expiry(bundle: &Bundle, now: Timestamp) -> Result<(), Refusal> {
    if bundle.expires_at <= now {
        return Err(Refusal::Expired {
            expires_at: bundle.expires_at,
            now,
        });
    }
    Ok(())
}

fn check_issued(bundle: &Bundle, now: Timestamp) -> Result<(), Refusal> {
    let latest_allowed = now.checked_add(CLOCK_TOLERANCE).unwrap_or(Timestamp::MAX);
    if bundle.issued_at > latest_allowed {
        return Err(Refusal::NotYetValid {
            issued_at: bundle.issued_at,
            now,
        });
    }
    Ok(())
}

/// What anti-rollback and the clock check remember.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleState {
    /// The highest sequence accepted; a bundle must exceed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highest_sequence: Option<u64>,
    /// The latest time seen (clock readings and accepted bundles' `issuedAt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_time_seen: Option<Timestamp>,
}

impl BundleState {
    /// Remember `time` if it is the latest seen. The agent may call this periodically so a
    /// clock set back between bundles is noticed too.
    pub fn observe(&mut self, time: Timestamp) {
        if self.latest_time_seen.is_none_or(|seen| time > seen) {
            self.latest_time_seen = Some(time);
        }
    }

    /// Refuse a clock reading well before a time already seen.
    pub fn check_clock(&self, now: Timestamp) -> Result<(), Refusal> {
        if let Some(seen) = self.latest_time_seen {
            let earliest = seen.checked_sub(CLOCK_TOLERANCE).unwrap_or(Timestamp::MIN);
            if now < earliest {
                return Err(Refusal::ClockRollback { now, seen });
            }
        }
        Ok(())
    }
}

/// Reading or writing the persisted bundle state failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading bundle state {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "parsing bundle state {path} (refusing to guess: fix or remove it deliberately): {source}"
    )]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing bundle state {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The bundle state file in a directory: read, and written atomically (temp file, fsync,
/// rename, fsync of the directory), so a crash leaves the old state or the new, never half.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
    path: PathBuf,
}

impl StateStore {
    pub fn new(dir: &Path) -> StateStore {
        StateStore {
            dir: dir.to_path_buf(),
            path: dir.join(STATE_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state; the empty state when no file exists yet. A corrupt file is an error,
    /// never a reset (a reset would re-admit older bundles).
    pub fn load(&self) -> Result<BundleState, StateError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(BundleState::default());
            }
            Err(source) => {
                return Err(StateError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
            path: self.path.clone(),
            source,
        })
    }

    pub fn save(&self, state: &BundleState) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(state).map_err(|source| StateError::Parse {
            path: self.path.clone(),
            source,
        })?;
        let tmp = self
            .dir
            .join(format!(".{STATE_FILE}.{}.tmp", std::process::id()));
        let write = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Write { path, source }
        };
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(write(&tmp))?;
            file.write_all(&json).map_err(write(&tmp))?;
            file.sync_all().map_err(write(&tmp))?;
            std::fs::rename(&tmp, &self.path).map_err(write(&self.path))?;
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(write(&self.dir))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Admitting a bundle against persisted state failed.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("bundle refused: {0}")]
    Refused(Refusal),
    #[error("{0}")]
    State(StateError),
}

/// Load the state, [`TrustPolicy::admit`], and save the updated state: on `Ok` the bundle
/// may be applied; on any error nothing from it may be.
pub fn accept(
    policy: &TrustPolicy,
    store: &StateStore,
    envelope: &[u8],
    node: &str,
    labels: &BTreeMap<String, String>,
    now: Timestamp,
) -> Result<Verified, AcceptError> {
    let mut state = store.load().map_err(AcceptError::State)?;
    let verified = policy
        .admit(envelope, node, labels, &mut state, now)
        .map_err(AcceptError::Refused)?;
    store.save(&state).map_err(AcceptError::State)?;
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::super::dsse;
    use super::super::dsse::tests::{keys, publics};
    use super::super::keys::PrivateKey;
    use super::super::payload::tests::{header, payload};
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    /// Inside the fixture payload's validity (2025-01-01 .. 2025-02-01).
    fn now() -> Timestamp {
        at("2025-01-10T00:00:00Z")
    }

    fn no_labels() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn envelope(payload: &str, signers: &[PrivateKey]) -> Vec<u8> {
        dsse::sign(PAYLOAD_TYPE, payload.as_bytes().to_vec(), signers).to_json()
    }

    fn policy(trusted: &[PrivateKey], threshold: usize) -> TrustPolicy {
        TrustPolicy::new(publics(trusted), threshold).expect("policy")
    }

    fn refusal(result: Result<Verified, Refusal>) -> Refusal {
        match result {
            Ok(v) => panic!("expected a refusal, got bundle {}", v.bundle.sequence),
            Err(r) => r,
        }
    }

    #[test]
    fn keygen_sign_verify_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = super::super::keys::keygen(&dir.path().join("k")).expect("keygen");
        let signer = PrivateKey::load(&files.private).expect("load");
        let policy = TrustPolicy::load(std::slice::from_ref(&files.public), 1).expect("policy");
        let verified = policy
            .verify(&envelope(&payload(1, ""), &[signer]), now())
            .expect("verifies");
        assert_eq!(verified.signers, vec![files.id]);
        assert_eq!(verified.bundle.sequence, 1);
        assert_eq!(verified.payload, payload(1, "").into_bytes());
    }

    #[test]
    fn two_of_three() {
        let trusted = keys(3);
        let policy = policy(&trusted, 2);
        let two = envelope(&payload(1, ""), &trusted[..2]);
        let verified = policy.verify(&two, now()).expect("2 of 3 passes");
        assert_eq!(verified.signers.len(), 2);
        let one = envelope(&payload(1, ""), &trusted[2..]);
        let r = refusal(policy.verify(&one, now()));
        assert_eq!(r.to_string(), "threshold 2 not met: 1 valid");
        assert_eq!(r.reason(), "threshold");
    }

    #[test]
    fn a_key_counts_once() {
        let trusted = keys(2);
        // Listed twice in the policy: still one distinct key, so threshold 2 is impossible.
        let listed_twice = vec![
            trusted[0].public_key().clone(),
            trusted[0].public_key().clone(),
        ];
        let err = TrustPolicy::new(listed_twice.clone(), 2).expect_err("only one distinct key");
        assert_eq!(
            err.to_string(),
            "trust policy: threshold 2 exceeds the 1 distinct trusted keys"
        );
        assert_eq!(
            TrustPolicy::new(listed_twice, 1).expect("ok").keys().len(),
            1
        );
        assert!(matches!(
            TrustPolicy::new(publics(&trusted), 0),
            Err(PolicyError::ThresholdZero)
        ));
        assert!(matches!(
            TrustPolicy::new(vec![], 1),
            Err(PolicyError::NoKeys)
        ));
        // Signing twice with one key (a duplicated signature) does not fake a threshold.
        let policy = policy(&trusted, 2);
        let mut doubled = dsse::sign(PAYLOAD_TYPE, payload(1, "").into_bytes(), &trusted[..1]);
        doubled.signatures.push(doubled.signatures[0].clone());
        let r = refusal(policy.verify(&doubled.to_json(), now()));
        assert_eq!(r.to_string(), "threshold 2 not met: 1 valid");
    }

    #[test]
    fn tampered_payload_is_a_bad_signature() {
        let trusted = keys(1);
        let policy = policy(&trusted, 1);
        let mut env = dsse::sign(PAYLOAD_TYPE, payload(1, "").into_bytes(), &trusted);
        env.payload = payload(2, "").into_bytes();
        let r = refusal(policy.verify(&env.to_json(), now()));
        assert_eq!(r.reason(), "bad_signature");
        assert_eq!(
            r.to_string(),
            format!(
                "bad signature from key {} (threshold 1 not met: 0 valid)",
                trusted[0].id()
            )
        );
    }

    #[test]
    fn untrusted_signers_are_named() {
        let trusted = keys(1);
        let stranger = keys(1);
        let r = refusal(policy(&trusted, 1).verify(&envelope(&payload(1, ""), &stranger), now()));
        assert_eq!(r.reason(), "threshold");
        assert_eq!(
            r.to_string(),
            format!(
                "threshold 1 not met: 0 valid; signatures by untrusted keys: {}",
                stranger[0].id()
            )
        );
    }

    #[test]
    fn url_safe_base64_and_unknown_fields_are_accepted() {
        use base64::Engine;
        let trusted = keys(1);
        let env = dsse::sign(PAYLOAD_TYPE, payload(1, "").into_bytes(), &trusted);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let json = serde_json::json!({
            "payloadType": PAYLOAD_TYPE,
            "payload": url.encode(&env.payload),
            "signatures": [{"keyid": env.signatures[0].keyid, "sig": url.encode(&env.signatures[0].sig), "x": 1}],
            "comment": "unknown fields are ignored",
        });
        policy(&trusted, 1)
            .verify(json.to_string().as_bytes(), now())
            .expect("accepted");
    }

    #[test]
    fn wrong_payload_type_is_refused() {
        let trusted = keys(1);
        let env = dsse::sign(
            "application/vnd.in-toto+json",
            payload(1, "").into_bytes(),
            &trusted,
        );
        let r = refusal(policy(&trusted, 1).verify(&env.to_json(), now()));
        assert_eq!(r.reason(), "payload_type");
        assert_eq!(
            r.to_string(),
            format!("payload type \"application/vnd.in-toto+json\" is not ours ({PAYLOAD_TYPE})")
        );
    }

    #[test]
    fn expired_and_future_bundles_are_refused() {
        let trusted = keys(1);
        let policy = policy(&trusted, 1);
        let env = envelope(&payload(1, ""), &trusted);
        let r = refusal(policy.verify(&env, at("2025-02-01T00:00:00Z")));
        assert_eq!(r.reason(), "expired");
        assert_eq!(
            r.to_string(),
            "expired at 2025-02-01T00:00:00Z (now 2025-02-01T00:00:00Z)"
        );
        // Issued 2025-01-01T00:00:00Z: 4 minutes early is skew, 6 minutes is refused.
        policy
            .verify(&env, at("2024-12-31T23:56:00Z"))
            .expect("within tolerance");
        let r = refusal(policy.verify(&env, at("2024-12-31T23:54:00Z")));
        assert_eq!(r.reason(), "not_yet_valid");
    }

    #[test]
    fn replays_are_refused_and_newer_accepted() {
        let trusted = keys(1);
        let policy = policy(&trusted, 1);
        let mut state = BundleState::default();
        let admit = |seq: u64, state: &mut BundleState| {
            policy.admit(
                &envelope(&payload(seq, ""), &trusted),
                "edge-1",
                &no_labels(),
                state,
                now(),
            )
        };
        admit(9, &mut state).expect("first bundle");
        assert_eq!(state.highest_sequence, Some(9));
        for seq in [9, 7] {
            let r = refusal(admit(seq, &mut state));
            assert_eq!(r.reason(), "replayed");
            assert_eq!(r.to_string(), format!("sequence {seq} ≤ accepted 9"));
        }
        admit(10, &mut state).expect("higher sequence");
        assert_eq!(state.highest_sequence, Some(10));
    }

    #[test]
    fn clock_rollback_is_detected() {
        let trusted = keys(1);
        let policy = policy(&trusted, 1);
        let mut state = BundleState::default();
        state.observe(at("2025-01-20T00:00:00Z"));
        let env = envelope(&payload(1, ""), &trusted);
        let r = refusal(policy.admit(&env, "n", &no_labels(), &mut state, now()));
        assert_eq!(r.reason(), "clock_rollback");
        assert_eq!(
            r.to_string(),
            "the clock went backwards: now 2025-01-10T00:00:00Z, already seen 2025-01-20T00:00:00Z"
        );
        assert_eq!(state.highest_sequence, None, "a refusal changes nothing");
        // Small skew is tolerated.
        policy
            .admit(
                &env,
                "n",
                &no_labels(),
                &mut state,
                at("2025-01-19T23:56:00Z"),
            )
            .expect("within tolerance");
    }

    #[test]
    fn not_targeted_is_refused_without_consuming_the_sequence() {
        let trusted = keys(1);
        let policy = policy(&trusted, 1);
        let mut state = BundleState::default();
        let env = envelope(&payload(3, "targets: {nodes: [edge-2]}\n"), &trusted);
        let r = refusal(policy.admit(&env, "edge-1", &no_labels(), &mut state, now()));
        assert_eq!(r.reason(), "not_targeted");
        assert!(
            r.to_string().starts_with("not targeted at this node: "),
            "{r}"
        );
        assert_eq!(state, BundleState::default());
        policy
            .admit(&env, "edge-2", &no_labels(), &mut state, now())
            .expect("for edge-2");
    }

    #[test]
    fn oversized_envelope_is_refused_before_parsing() {
        let trusted = keys(1);
        let limits = Limits {
            envelope: EnvelopeLimits {
                max_envelope_bytes: 1024,
                ..EnvelopeLimits::default()
            },
            max_items: 256,
        };
        let policy = policy(&trusted, 1).with_limits(limits);
        let r = refusal(policy.verify(&vec![b'x'; 1025], now()));
        assert_eq!(r.reason(), "too_large");
        let r = refusal(policy.verify(b"{not json", now()));
        assert_eq!(r.reason(), "malformed");
    }

    #[test]
    fn payload_is_not_parsed_before_verification() {
        let trusted = keys(2);
        let policy = policy(&trusted, 1);
        let garbage = "{{{ not: yaml: [ at all";
        let unsigned = dsse::Envelope {
            payload_type: PAYLOAD_TYPE.into(),
            payload: garbage.as_bytes().to_vec(),
            signatures: vec![],
        };
        let r = refusal(policy.verify(&unsigned.to_json(), now()));
        assert_eq!(r.reason(), "threshold");
        let stranger = keys(1);
        let r = refusal(policy.verify(&envelope(garbage, &stranger), now()));
        assert_eq!(r.reason(), "threshold");
        let mut forged = dsse::sign(PAYLOAD_TYPE, payload(1, "").into_bytes(), &trusted[..1]);
        forged.payload = garbage.as_bytes().to_vec();
        let r = refusal(policy.verify(&forged.to_json(), now()));
        assert_eq!(r.reason(), "bad_signature");
        // Signed garbage is verified first, then refused as malformed.
        let r = refusal(policy.verify(&envelope(garbage, &trusted[..1]), now()));
        assert_eq!(r.reason(), "malformed");
        let r = refusal(policy.verify(
            &envelope(&format!("{}- 1\n", header(1, "")), &trusted[..1]),
            now(),
        ));
        assert_eq!(r.reason(), "malformed");
        assert!(r.to_string().contains("item 0: is not an object"), "{r}");
    }

    #[test]
    fn state_persists_atomically_and_accept_updates_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::new(dir.path());
        assert_eq!(store.load().expect("no file yet"), BundleState::default());
        let trusted = keys(1);
        let policy = policy(&trusted, 1);
        let env = envelope(&payload(5, ""), &trusted);
        accept(&policy, &store, &env, "n", &no_labels(), now()).expect("accepted");
        let state = store.load().expect("saved");
        assert_eq!(state.highest_sequence, Some(5));
        assert_eq!(state.latest_time_seen, Some(now()));
        let err = accept(&policy, &store, &env, "n", &no_labels(), now()).expect_err("replay");
        assert!(
            matches!(&err, AcceptError::Refused(r) if r.reason() == "replayed"),
            "{err}"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("readdir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(STATE_FILE)]);
        std::fs::write(store.path(), b"{garbage").expect("corrupt");
        let err = store
            .load()
            .expect_err("corrupt state is an error, not a reset");
        assert!(
            err.to_string().starts_with("parsing bundle state "),
            "{err}"
        );
    }
}
