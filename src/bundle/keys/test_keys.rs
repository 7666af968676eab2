//! The keys the tests read: RFC 8032's test key as openssl writes it, and an EC key.

/// RFC 8032 test 1's seed and public key, as openssl writes them.
pub(super) const RFC8032_SEED: &str =
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
pub(super) const RFC8032_PUBLIC: &str =
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
pub(super) const OPENSSL_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g
-----END PRIVATE KEY-----
";
pub(super) const OPENSSL_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=
-----END PUBLIC KEY-----
";
/// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` (a throwaway key).
pub(super) const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgliSjxDOb0DgHSGFq
mewfYH5Fed93xPfa4XhjM7NZO7uhRANCAAS+GKfAZkTajUbcsWjADgnGiGbnXgI3
M7VMfPNLMMnUG5gNqJJHkKvYoIG4b8aYn7w5Q+UKB8j/n7f6nj4bJ1C9
-----END PRIVATE KEY-----
";

pub(super) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
