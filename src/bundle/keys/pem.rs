//! The PEM armour around a key's DER: the labels, reading the first block, writing one as
//! openssl does.

use base64::Engine;

use super::KeyFormatError;

pub(super) const PRIVATE_LABEL: &str = "PRIVATE KEY";
pub(super) const PUBLIC_LABEL: &str = "PUBLIC KEY";

/// The DER inside the first PEM block, which must carry `expected` as its label.
pub(super) fn pem_block(text: &str, expected: &'static str) -> Result<Vec<u8>, KeyFormatError> {
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

pub(super) fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(chunk));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

#[cfg(test)]
mod tests {
    use super::super::test_keys::{OPENSSL_PRIVATE, OPENSSL_PUBLIC};
    use super::super::{PrivateKey, PublicKey};

    #[test]
    fn clear_errors_for_wrong_pem_blocks() {
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
        let garbage = "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n";
        assert!(pub_err(garbage).starts_with("PEM body of PUBLIC KEY is not base64"));
    }
}
