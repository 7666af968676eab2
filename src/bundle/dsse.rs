//! The DSSE envelope (<https://github.com/secure-systems-lab/dsse>): a payload, its type, and
//! signatures over the pre-authentication encoding (PAE) of both, so a signature can never be
//! replayed under another payload type.
//!
//! Reading is lenient where the spec allows (standard or URL-safe base64, with or without
//! padding; unknown fields ignored; `keyid` optional) and bounded (envelope, payload and
//! signature count caps are checked before the bytes are decoded). Writing is canonical:
//! standard base64 with padding.

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;

use super::keys::{KeyId, PrivateKey, PublicKey};

/// Our payload type: a bundle payload, version 1 (YAML, of which JSON is a subset).
pub const PAYLOAD_TYPE: &str = "application/vnd.staticpod-puller.bundle.v1+yaml";

/// Size caps applied while reading an envelope, before anything is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeLimits {
    /// The whole envelope file.
    pub max_envelope_bytes: usize,
    /// The decoded payload.
    pub max_payload_bytes: usize,
    /// Signature entries (each costs a verification).
    pub max_signatures: usize,
}

impl Default for EnvelopeLimits {
    /// 6 MiB envelope, 4 MiB payload (base64 grows it by a third), 16 signatures.
    fn default() -> Self {
        EnvelopeLimits {
            max_envelope_bytes: 6 << 20,
            max_payload_bytes: 4 << 20,
            max_signatures: 16,
        }
    }
}

/// Reading an envelope failed.
#[derive(Debug, thiserror::Error)]
pub enum DsseError {
    #[error("reading the DSSE envelope: {what} is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("reading the DSSE envelope: {count} signatures, over the limit of {limit}")]
    TooManySignatures { count: usize, limit: usize },
    #[error("parsing the DSSE envelope JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("decoding the DSSE envelope's {field} as base64: {source}")]
    Base64 {
        field: String,
        #[source]
        source: base64::DecodeError,
    },
}

/// One signature entry. `keyid` is an unauthenticated hint (empty when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub keyid: String,
    pub sig: Vec<u8>,
}

/// A decoded envelope. The payload is opaque bytes here: nothing reads it before the
/// signatures over it have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub payload_type: String,
    pub payload: Vec<u8>,
    pub signatures: Vec<Signature>,
}

#[derive(Deserialize)]
struct RawEnvelope {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    signatures: Vec<RawSignature>,
}

#[derive(Deserialize)]
struct RawSignature {
    #[serde(default)]
    keyid: String,
    sig: String,
}

/// The outcome of checking an envelope's signatures against trusted keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureCheck {
    /// Distinct trusted keys with a valid signature, in envelope order: what counts toward a
    /// threshold (a key signing twice counts once).
    pub valid: Vec<KeyId>,
    /// Trusted keys named by a signature that did not verify, and with no valid one.
    pub bad: Vec<KeyId>,
    /// Key ids of signatures no trusted key accounts for (`""` when the entry had none).
    pub untrusted: Vec<String>,
}

/// The DSSE pre-authentication encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII decimal bytes.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let header = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        body.len()
    );
    let mut out = Vec::with_capacity(header.len() + body.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

/// An envelope over `payload`, signed by each key (key ids filled in).
pub fn sign(payload_type: &str, payload: Vec<u8>, keys: &[PrivateKey]) -> Envelope {
    let message = pae(payload_type, &payload);
    let signatures = keys
        .iter()
        .map(|key| Signature {
            keyid: key.id().to_string(),
            sig: key.sign(&message).to_vec(),
        })
        .collect();
    Envelope {
        payload_type: payload_type.to_string(),
        payload,
        signatures,
    }
}

impl Envelope {
    /// Parse an envelope file, enforcing `limits` before decoding.
    pub fn parse(bytes: &[u8], limits: &EnvelopeLimits) -> Result<Envelope, DsseError> {
        if bytes.len() > limits.max_envelope_bytes {
            return Err(DsseError::TooLarge {
                what: "the envelope",
                size: bytes.len(),
                limit: limits.max_envelope_bytes,
            });
        }
        let raw: RawEnvelope = serde_json::from_slice(bytes).map_err(DsseError::Json)?;
        let estimate = base64::decoded_len_estimate(raw.payload.len());
        // The estimate may exceed the true size by two bytes; leave that slack.
        if estimate > limits.max_payload_bytes.saturating_add(2) {
            return Err(DsseError::TooLarge {
                what: "the payload",
                size: estimate,
                limit: limits.max_payload_bytes,
            });
        }
        if raw.signatures.len() > limits.max_signatures {
            return Err(DsseError::TooManySignatures {
                count: raw.signatures.len(),
                limit: limits.max_signatures,
            });
        }
        let payload = decode_base64("payload", &raw.payload)?;
        if payload.len() > limits.max_payload_bytes {
            return Err(DsseError::TooLarge {
                what: "the payload",
                size: payload.len(),
                limit: limits.max_payload_bytes,
            });
        }
        let signatures = raw
            .signatures
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                Ok(Signature {
                    sig: decode_base64(&format!("signatures[{i}].sig"), &s.sig)?,
                    keyid: s.keyid,
                })
            })
            .collect::<Result<_, DsseError>>()?;
        Ok(Envelope {
            payload_type: raw.payload_type,
            payload,
            signatures,
        })
    }

    /// The envelope as JSON (standard padded base64), newline-terminated.
    pub fn to_json(&self) -> Vec<u8> {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let signatures: Vec<serde_json::Value> = self
            .signatures
            .iter()
            .map(|s| serde_json::json!({ "keyid": s.keyid, "sig": b64(&s.sig) }))
            .collect();
        let value = serde_json::json!({
            "payloadType": self.payload_type,
            "payload": b64(&self.payload),
            "signatures": signatures,
        });
        format!("{value:#}\n").into_bytes()
    }

    /// Check every signature over the PAE against `trusted`.
    ///
    /// A signature naming a trusted key id is checked against that key only; one without a
    /// key id is tried against each trusted key; one naming an unknown key is untrusted.
    pub fn verify(&self, trusted: &[PublicKey]) -> SignatureCheck {
        let message = pae(&self.payload_type, &self.payload);
        let mut check = SignatureCheck::default();
        for signature in &self.signatures {
            let named = trusted
                .iter()
                .find(|k| k.id().as_str().eq_ignore_ascii_case(&signature.keyid));
            let verified = match named {
                Some(key) if key.verify(&message, &signature.sig) => Some(key),
                Some(key) => {
                    push_unique(&mut check.bad, key.id());
                    None
                }
                None if signature.keyid.is_empty() => {
                    trusted.iter().find(|k| k.verify(&message, &signature.sig))
                }
                None => None,
            };
            match verified {
                Some(key) => push_unique(&mut check.valid, key.id()),
                None if named.is_none() => check.untrusted.push(signature.keyid.clone()),
                None => {}
            }
        }
        let valid = check.valid.clone();
        check.bad.retain(|id| !valid.contains(id));
        check
    }
}

fn push_unique(ids: &mut Vec<KeyId>, id: &KeyId) {
    if !ids.contains(id) {
        ids.push(id.clone());
    }
}

const PADDING_INDIFFERENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_ANY_PAD: GeneralPurpose =
    GeneralPurpose::new(&alphabet::STANDARD, PADDING_INDIFFERENT);
const URL_SAFE_ANY_PAD: GeneralPurpose =
    GeneralPurpose::new(&alphabet::URL_SAFE, PADDING_INDIFFERENT);

/// Standard or URL-safe base64 (the spec allows either), padded or not; never a mix.
fn decode_base64(field: &str, text: &str) -> Result<Vec<u8>, DsseError> {
    let engine = if text.contains(['-', '_']) {
        &URL_SAFE_ANY_PAD
    } else {
        &STANDARD_ANY_PAD
    };
    engine.decode(text).map_err(|source| DsseError::Base64 {
        field: field.to_string(),
        source,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn keys(n: usize) -> Vec<PrivateKey> {
        (0..n)
            .map(|_| PrivateKey::generate().expect("keygen"))
            .collect()
    }

    pub(crate) fn publics(keys: &[PrivateKey]) -> Vec<PublicKey> {
        keys.iter().map(|k| k.public_key().clone()).collect()
    }

    fn parse(bytes: &[u8]) -> Result<Envelope, DsseError> {
        Envelope::parse(bytes, &EnvelopeLimits::default())
    }

    #[test]
    fn pae_matches_the_spec() {
        // The DSSE spec's example.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
        // Lengths are byte lengths, not character counts.
        assert_eq!(pae("é", "ü".as_bytes()), "DSSEv1 2 é 2 ü".as_bytes());
        // Moving bytes between type and body changes the encoding (no confusion).
        assert_ne!(pae("a 1 b", b"c"), pae("a", b"b 1 c"));
    }

    #[test]
    fn sign_then_verify_round_trips_through_json() {
        let signers = keys(2);
        let envelope = sign(PAYLOAD_TYPE, b"items: []".to_vec(), &signers);
        let parsed = parse(&envelope.to_json()).expect("our JSON parses");
        assert_eq!(parsed, envelope);
        let check = parsed.verify(&publics(&signers));
        let ids: Vec<KeyId> = signers.iter().map(|k| k.id().clone()).collect();
        assert_eq!(check.valid, ids);
        assert!(
            check.bad.is_empty() && check.untrusted.is_empty(),
            "{check:?}"
        );
    }

    #[test]
    fn tampering_and_strangers_are_told_apart() {
        let signers = keys(2);
        let stranger = keys(1);
        let mut envelope = sign(PAYLOAD_TYPE, b"sequence: 1".to_vec(), &signers);
        envelope
            .signatures
            .extend(sign(PAYLOAD_TYPE, b"sequence: 1".to_vec(), &stranger).signatures);
        envelope.payload = b"sequence: 2".to_vec();
        let check = envelope.verify(&publics(&signers));
        assert!(check.valid.is_empty(), "{check:?}");
        assert_eq!(check.bad.len(), 2, "{check:?}");
        assert_eq!(check.untrusted, vec![stranger[0].id().to_string()]);
        // Signed under another payload type: the PAE differs.
        let mut retyped = sign("text/plain", b"sequence: 1".to_vec(), &signers);
        retyped.payload_type = PAYLOAD_TYPE.to_string();
        assert!(retyped.verify(&publics(&signers)).valid.is_empty());
    }

    #[test]
    fn a_key_signing_twice_counts_once_and_missing_keyid_is_tried() {
        let signers = keys(1);
        let mut envelope = sign(PAYLOAD_TYPE, b"x".to_vec(), &signers);
        let mut anonymous = envelope.signatures[0].clone();
        anonymous.keyid.clear();
        envelope.signatures.push(envelope.signatures[0].clone());
        envelope.signatures.push(anonymous);
        let check = envelope.verify(&publics(&signers));
        assert_eq!(check.valid, vec![signers[0].id().clone()]);
        assert!(
            check.bad.is_empty() && check.untrusted.is_empty(),
            "{check:?}"
        );
    }

    #[test]
    fn url_safe_and_unpadded_base64_are_accepted() {
        // Bytes whose base64 uses + and / (standard) or - and _ (URL-safe), and needs padding.
        let payload = vec![0xfb, 0xff, 0xfe, 0x3e, 0x3f];
        let signers = keys(1);
        let envelope = sign(PAYLOAD_TYPE, payload.clone(), &signers);
        let std = base64::engine::general_purpose::STANDARD;
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for (payload_b64, sig_b64) in [
            (
                std.encode(&payload),
                std.encode(&envelope.signatures[0].sig),
            ),
            (
                url.encode(&payload),
                url.encode(&envelope.signatures[0].sig),
            ),
            (
                base64::engine::general_purpose::URL_SAFE.encode(&payload),
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .encode(&envelope.signatures[0].sig),
            ),
        ] {
            let json = serde_json::json!({
                "payloadType": PAYLOAD_TYPE,
                "payload": payload_b64,
                "signatures": [{"keyid": signers[0].id(), "sig": sig_b64}],
            });
            let parsed = parse(json.to_string().as_bytes()).expect("parses");
            assert_eq!(parsed.payload, payload, "{json}");
            assert_eq!(parsed.verify(&publics(&signers)).valid.len(), 1, "{json}");
        }
        let mixed = serde_json::json!({
            "payloadType": PAYLOAD_TYPE, "payload": "+_", "signatures": [],
        });
        let err = parse(mixed.to_string().as_bytes()).expect_err("mixed alphabets");
        assert!(
            err.to_string()
                .starts_with("decoding the DSSE envelope's payload as base64"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_ignored_and_keyid_optional() {
        let json = r#"{"payloadType": "t", "payload": "eA==", "future": {"a": [1]},
            "signatures": [{"sig": "AAAA", "extra": true}]}"#;
        let parsed = parse(json.as_bytes()).expect("parses");
        assert_eq!(parsed.payload, b"x");
        assert_eq!(parsed.signatures[0].keyid, "");
    }

    #[test]
    fn limits_are_checked_before_decoding() {
        let limits = EnvelopeLimits {
            max_envelope_bytes: 100,
            max_payload_bytes: 10,
            max_signatures: 1,
        };
        // Over the envelope cap: refused even though it is not JSON at all.
        let err = Envelope::parse(&[b'{'; 101], &limits).expect_err("too large");
        assert_eq!(
            err.to_string(),
            "reading the DSSE envelope: the envelope is 101 bytes, over the 100-byte limit"
        );
        // A payload over the cap, as invalid base64: the cap is checked first.
        let json = format!(
            r#"{{"payloadType":"t","payload":"{}","signatures":[]}}"#,
            "!".repeat(40)
        );
        let err = Envelope::parse(json.as_bytes(), &limits).expect_err("payload too large");
        assert!(
            matches!(
                err,
                DsseError::TooLarge {
                    what: "the payload",
                    ..
                }
            ),
            "{err}"
        );
        let json = r#"{"payloadType":"t","payload":"","signatures":[{"sig":""},{"sig":""}]}"#;
        let err = Envelope::parse(json.as_bytes(), &limits).expect_err("too many signatures");
        assert!(
            matches!(err, DsseError::TooManySignatures { count: 2, limit: 1 }),
            "{err}"
        );
    }

    #[test]
    fn malformed_envelopes_say_what_is_wrong() {
        for (json, start) in [
            (
                r#"{"payloadType":"t","payload":"eA==""#,
                "parsing the DSSE envelope JSON",
            ),
            (
                r#"{"payload":"eA==","signatures":[]}"#,
                "parsing the DSSE envelope JSON",
            ),
            (
                r#"{"payloadType":"t","payloadType":"u","payload":"","signatures":[]}"#,
                "parsing the DSSE envelope JSON",
            ),
            (
                r#"{"payloadType":"t","payload":"eA==","signatures":[{"sig":"%%"}]}"#,
                "decoding the DSSE envelope's signatures[0].sig as base64",
            ),
        ] {
            let err = parse(json.as_bytes()).expect_err(json);
            assert!(err.to_string().starts_with(start), "{json}: {err}");
        }
    }
}
