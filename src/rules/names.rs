//! Kubernetes name rules (RFC 1123), shared by the configuration, the manifest store and the
//! node-local API.

/// A Kubernetes DNS subdomain (RFC 1123): node and object names.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.')
            .all(|label| !label.is_empty() && label_chars_ok(label))
}

/// A Kubernetes DNS label (RFC 1123): namespace names.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && label_chars_ok(s)
}

fn label_chars_ok(label: &str) -> bool {
    let b = label.as_bytes();
    b.iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}
