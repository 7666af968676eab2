//! URLs and CA files the configuration may name (bundle sources).

use std::path::Path;

use rustls::pki_types::CertificateDer;

/// Whether `url` is an absolute http:// or https:// URL with a host.
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| format!("expected an http:// or https:// URL, got {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "expected an http:// or https:// URL, got {url:?} (scheme {:?})",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("expected a URL with a host, got {url:?}"));
    }
    // The URL is shown in logs, `status` and Events: it must not carry a password. Bundles
    // are signed, so the server needs no secret to be trusted.
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "a bundle URL must not carry credentials (it is shown in logs, status and Events), got one for host {:?}",
            parsed.host_str().unwrap_or_default()
        ));
    }
    Ok(())
}

/// The CA certificates in a PEM file, each checked to be usable as a trust anchor.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate (expected PEM `-----BEGIN CERTIFICATE-----` blocks)",
            path.display()
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|e| format!("{}: certificate {}: {e}", path.display(), i + 1))?;
    }
    Ok(certs)
}
