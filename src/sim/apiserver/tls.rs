//! The dev cluster's TLS: a CA generated at start and a serving certificate it signs for the
//! loopback names, so clients verify the server as they would a real cluster's.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating the {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("building the TLS server configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The CA (PEM, for kubeconfigs) and the server configuration presenting a certificate it signed.
pub struct ServingTls {
    pub ca_pem: String,
    pub config: Arc<ServerConfig>,
}

/// Generate a CA and a serving certificate for `localhost`, 127.0.0.1, ::1 and `extra_ip`.
pub fn generate(extra_ip: Option<IpAddr>) -> Result<ServingTls, TlsError> {
    let gen_err = |what| move |source| TlsError::Generate { what, source };

    let ca_key = KeyPair::generate().map_err(gen_err("CA key"))?;
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.distinguished_name = name("staticpod-puller dev cluster CA");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(gen_err("CA certificate"))?;

    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Some(ip) = extra_ip.filter(|ip| !ip.is_loopback() && !ip.is_unspecified()) {
        sans.push(ip.to_string());
    }
    let mut params = CertificateParams::new(sans).map_err(gen_err("serving certificate names"))?;
    params.distinguished_name = name("kube-apiserver");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(gen_err("serving key"))?;
    let cert = params
        .signed_by(&key, &ca)
        .map_err(gen_err("serving certificate"))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    // HTTP/1.1 only: the server is hyper's http1, and chunked watch streams are HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServingTls {
        ca_pem: ca.pem(),
        config: Arc::new(config),
    })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}
