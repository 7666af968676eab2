//! The DER structures an Ed25519 key travels in: PKCS#8 PrivateKeyInfo (v1 as openssl writes
//! it, v2 as ring writes it) and SubjectPublicKeyInfo.

use super::der::{
    Der, TAG_BIT_STRING, TAG_CONTEXT_0, TAG_CONTEXT_1, TAG_INTEGER, TAG_OCTET_STRING, TAG_OID,
    TAG_SEQUENCE,
};
use super::{KeyFormatError, PUBLIC_LEN, SEED_LEN};

/// The DER of an openssl PKCS#8 v1 Ed25519 private key, up to the seed.
pub(super) const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The DER of an Ed25519 SubjectPublicKeyInfo, up to the key.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// The content octets of OID 1.3.101.112 (id-Ed25519, RFC 8410).
const ED25519_OID: [u8; 3] = [0x2b, 0x65, 0x70];

pub(super) fn spki_der(public: &[u8; PUBLIC_LEN]) -> Vec<u8> {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(public);
    der
}

/// PKCS#8 PrivateKeyInfo → (seed, public key if the file is v2).
pub(super) fn parse_pkcs8(
    der: &[u8],
) -> Result<([u8; SEED_LEN], Option<[u8; PUBLIC_LEN]>), KeyFormatError> {
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
pub(super) fn parse_spki(der: &[u8]) -> Result<[u8; PUBLIC_LEN], KeyFormatError> {
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

#[cfg(test)]
mod tests {
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::super::pem::{PRIVATE_LABEL, PUBLIC_LABEL, pem_encode};
    use super::super::test_keys::EC_PRIVATE;
    use super::super::{PrivateKey, PublicKey};

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
    fn clear_errors_for_wrong_key_structures() {
        let err = |text: &str| PrivateKey::from_pem(text).expect_err(text).to_string();
        let pub_err = |text: &str| PublicKey::from_pem(text).expect_err(text).to_string();
        assert_eq!(
            err(EC_PRIVATE),
            "not an Ed25519 key: an EC (ECDSA) key (algorithm OID 1.2.840.10045.2.1)"
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
    }
}
