//! Property tests: no change to a signed envelope is accepted unless what it carries is still
//! exactly the signed content.
//!
//! A valid bundle signed by two keys (threshold 2) is mutated at random — byte flips,
//! insertions, deletions, truncations, the payload re-encoded with one byte changed (valid
//! base64, signatures kept), the payload type swapped, bytes shifted between the type and the
//! body — and run through [`accept`]. Whatever is accepted must have the original payload
//! bytes: whitespace in the JSON or another base64 alphabet may be accepted, a different
//! content never.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::Value;

use super::dsse::{PAYLOAD_TYPE, pae};
use super::payload::tests::KUBECTL_YSS;
use super::{PrivateKey, PublicKey, StateStore, TrustPolicy, accept};

/// The fixture: trusted keys, the signed envelope, and the payload it carries.
struct Signed {
    keys: Vec<PrivateKey>,
    policy: TrustPolicy,
    envelope: Vec<u8>,
    payload: Vec<u8>,
}

fn now() -> Timestamp {
    "2025-01-10T00:00:00Z".parse().expect("timestamp")
}

fn signed() -> &'static Signed {
    static SIGNED: OnceLock<Signed> = OnceLock::new();
    SIGNED.get_or_init(|| {
        let keys: Vec<PrivateKey> = (0..2)
            .map(|_| PrivateKey::generate().expect("keygen"))
            .collect();
        let publics: Vec<PublicKey> = keys.iter().map(|k| k.public_key().clone()).collect();
        let policy = TrustPolicy::new(publics, 2).expect("policy");
        let day = std::time::Duration::from_secs(86_400);
        let envelope =
            super::sign(KUBECTL_YSS, &keys, 7, day, None, now()).expect("the fixture signs");
        let payload = policy
            .verify(&envelope, now())
            .expect("the fixture")
            .payload;
        Signed {
            keys,
            policy,
            envelope,
            payload,
        }
    })
}

/// One change to the envelope.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte of the envelope file (position taken modulo its length).
    Flip {
        at: usize,
        xor: u8,
    },
    Insert {
        at: usize,
        byte: u8,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Truncate {
        to: usize,
    },
    /// Decode the payload, XOR one byte, re-encode it (valid base64, alphabet `engine`),
    /// signatures untouched.
    PayloadByte {
        at: usize,
        xor: u8,
        engine: u8,
    },
    /// Re-encode the payload unchanged in another base64 alphabet or padding.
    Reencode {
        engine: u8,
    },
    /// XOR one byte of signature `sig`.
    SigByte {
        sig: usize,
        at: usize,
        xor: u8,
    },
    /// Replace the payload type.
    PayloadType(String),
    /// Move `n` bytes from the start of the body to the end of the type (or back), the PAE
    /// confusion a naive concatenation would allow.
    Shift {
        n: usize,
        into_type: bool,
    },
    /// Re-sign the PAE of a shifted (type, body) pair with the real keys, then present the
    /// original type and body: the signatures are over other bytes.
    SignedShift {
        n: usize,
    },
}

fn engine(choice: u8) -> &'static base64::engine::GeneralPurpose {
    match choice % 4 {
        0 => &STANDARD,
        1 => &STANDARD_NO_PAD,
        2 => &URL_SAFE,
        _ => &URL_SAFE_NO_PAD,
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let xor = 1..=255u8;
    prop_oneof![
        4 => (any::<usize>(), xor.clone()).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        2 => (any::<usize>(), 1..64usize).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => any::<usize>().prop_map(|to| Mutation::Truncate { to }),
        4 => (any::<usize>(), xor.clone(), any::<u8>())
            .prop_map(|(at, xor, engine)| Mutation::PayloadByte { at, xor, engine }),
        1 => any::<u8>().prop_map(|engine| Mutation::Reencode { engine }),
        2 => (0..2usize, 0..64usize, xor)
            .prop_map(|(sig, at, xor)| Mutation::SigByte { sig, at, xor }),
        2 => prop_oneof![
            Just(String::new()),
            Just(PAYLOAD_TYPE.to_uppercase()),
            Just(format!("{PAYLOAD_TYPE} ")),
            Just("application/vnd.in-toto+json".to_string()),
            Just(super::template::PAYLOAD_TYPE.to_string()),
            "[ -~]{0,60}",
        ]
        .prop_map(Mutation::PayloadType),
        2 => (1..40usize, any::<bool>())
            .prop_map(|(n, into_type)| Mutation::Shift { n, into_type }),
        1 => (1..40usize).prop_map(|n| Mutation::SignedShift { n }),
    ]
}

/// The envelope's JSON fields, for the structured mutations.
fn fields(envelope: &[u8]) -> Option<(String, Vec<u8>, Vec<Value>)> {
    let value: Value = serde_json::from_slice(envelope).ok()?;
    let payload_type = value["payloadType"].as_str()?.to_string();
    let payload = value["payload"]
        .as_str()
        .and_then(|p| STANDARD.decode(p).or_else(|_| URL_SAFE.decode(p)).ok())?;
    let signatures = value["signatures"].as_array()?.clone();
    Some((payload_type, payload, signatures))
}

fn rebuild(payload_type: &str, payload_b64: String, signatures: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "payloadType": payload_type,
        "payload": payload_b64,
        "signatures": signatures,
    }))
    .expect("JSON")
}

/// Apply `m` to `envelope`; structured mutations of an envelope that no longer parses leave it
/// as it is (the byte mutations before them already broke it).
fn apply(envelope: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let mut bytes = envelope;
    let len = bytes.len();
    match m {
        Mutation::Flip { at, xor } if len > 0 => bytes[at % len] ^= xor,
        Mutation::Insert { at, byte } => bytes.insert(at % (len + 1), *byte),
        Mutation::Delete { at, len: n } if len > 0 => {
            let start = at % len;
            bytes.drain(start..(start + n).min(len));
        }
        Mutation::Truncate { to } => bytes.truncate(to % (len + 1)),
        Mutation::Flip { .. } | Mutation::Delete { .. } => {}
        structured => return apply_structured(bytes, structured),
    }
    bytes
}

fn apply_structured(bytes: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let Some((payload_type, mut payload, mut signatures)) = fields(&bytes) else {
        return bytes;
    };
    match m {
        Mutation::PayloadByte { at, xor, engine: e } if !payload.is_empty() => {
            let i = at % payload.len();
            payload[i] ^= xor;
            return rebuild(&payload_type, engine(*e).encode(&payload), signatures);
        }
        Mutation::Reencode { engine: e } => {
            return rebuild(&payload_type, engine(*e).encode(&payload), signatures);
        }
        Mutation::SigByte { sig, at, xor } => {
            if let Some(s) = signatures.get_mut(*sig) {
                let mut raw = s["sig"]
                    .as_str()
                    .and_then(|t| STANDARD.decode(t).ok())
                    .unwrap_or_default();
                if !raw.is_empty() {
                    let i = at % raw.len();
                    raw[i] ^= xor;
                }
                s["sig"] = Value::from(STANDARD.encode(raw));
            }
            return rebuild(&payload_type, STANDARD.encode(&payload), signatures);
        }
        Mutation::PayloadType(t) => {
            return rebuild(t, STANDARD.encode(&payload), signatures);
        }
        Mutation::Shift { n, into_type } => {
            let (t, body) = if *into_type {
                let n = (*n).min(payload.len());
                let moved = String::from_utf8_lossy(&payload[..n]).into_owned();
                (format!("{payload_type}{moved}"), payload[n..].to_vec())
            } else {
                let n = (*n).min(payload_type.len());
                let cut = payload_type.len() - n;
                let mut body = payload_type.as_bytes()[cut..].to_vec();
                body.extend_from_slice(&payload);
                (payload_type.get(..cut).unwrap_or("").to_string(), body)
            };
            return rebuild(&t, STANDARD.encode(body), signatures);
        }
        Mutation::SignedShift { n } => {
            let n = (*n).min(payload.len());
            let shifted_type = format!(
                "{payload_type} {} {}",
                payload.len(),
                String::from_utf8_lossy(&payload[..n])
            );
            let message = pae(&shifted_type, &payload[n..]);
            let keys = &signed().keys;
            let sigs = keys
                .iter()
                .map(|k| {
                    serde_json::json!({
                        "keyid": k.id(),
                        "sig": STANDARD.encode(k.sign(&message)),
                    })
                })
                .collect();
            return rebuild(&payload_type, STANDARD.encode(&payload), sigs);
        }
        _ => {}
    }
    bytes
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Run the mutated envelope through `accept` with fresh state; an accepted one must carry the
/// original payload.
fn check(mutated: &[u8], mutations: &[Mutation]) -> Result<(), TestCaseError> {
    let fixture = signed();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::new(dir.path());
    if let Ok(verified) = accept(
        &fixture.policy,
        &store,
        mutated,
        "edge-1",
        &BTreeMap::new(),
        now(),
    ) {
        prop_assert_eq!(
            &verified.payload,
            &fixture.payload,
            "accepted after {:?}, with another payload",
            mutations
        );
        prop_assert_eq!(verified.bundle.sequence, 7);
        prop_assert_eq!(verified.signers.len(), 2);
    }
    Ok(())
}

#[test]
fn the_fixture_itself_is_accepted() {
    let fixture = signed();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::new(dir.path());
    let verified = accept(
        &fixture.policy,
        &store,
        &fixture.envelope,
        "edge-1",
        &BTreeMap::new(),
        now(),
    )
    .expect("the unmutated fixture is accepted");
    assert_eq!(verified.payload, fixture.payload);
    // Semantically identical re-encodings are accepted, with the same payload.
    for e in 0..4 {
        let again = apply(fixture.envelope.clone(), &Mutation::Reencode { engine: e });
        let store = StateStore::new(dir.path());
        std::fs::remove_file(store.path()).ok();
        let verified = accept(
            &fixture.policy,
            &store,
            &again,
            "edge-1",
            &BTreeMap::new(),
            now(),
        )
        .expect("another base64 alphabet of the same bytes");
        assert_eq!(verified.payload, fixture.payload);
    }
}

#[test]
fn signed_dsse_shift_is_refused() {
    // A signature over PAE(type + " len " + head, tail) — what a naive concatenation
    // `type || body` would confuse with (type, head + tail) — never verifies.
    let fixture = signed();
    for n in [1, 10, 39] {
        let mutated = apply(fixture.envelope.clone(), &Mutation::SignedShift { n });
        let refusal = fixture
            .policy
            .verify(&mutated, now())
            .expect_err("shifted signatures");
        assert_eq!(refusal.reason(), "bad_signature", "{refusal}");
    }
    assert_ne!(
        pae(&format!("{PAYLOAD_TYPE} 3 abc"), b"def"),
        pae(PAYLOAD_TYPE, b"abcdef")
    );
}

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn no_mutation_is_accepted_with_other_content(
        mutations in prop::collection::vec(mutation(), 1..4)
    ) {
        let fixture = signed();
        let mutated = mutations
            .iter()
            .fold(fixture.envelope.clone(), apply);
        check(&mutated, &mutations)?;
    }

    #[test]
    fn a_changed_payload_byte_in_valid_base64_is_always_refused(
        at in any::<usize>(), xor in 1..=255u8, e in any::<u8>()
    ) {
        let fixture = signed();
        let m = Mutation::PayloadByte { at, xor, engine: e };
        let mutated = apply(fixture.envelope.clone(), &m);
        let refusal = fixture.policy.verify(&mutated, now());
        prop_assert!(
            matches!(&refusal, Err(r) if r.reason() == "bad_signature"),
            "{:?}: {:?}", m, refusal.map(|v| v.bundle.sequence)
        );
    }
}
