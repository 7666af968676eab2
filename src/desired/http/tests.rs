//! The fetcher against in-process HTTP(S) servers, and the hold/release rule against a real
//! trust policy and state file.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::TokioIo;

use super::*;
use crate::bundle::{PrivateKey, PublicKey};
use crate::rules::{check_url, jittered};
use rustls::pki_types::CertificateDer;

/// Quick retries, so the tests do not wait on real backoff.
fn settings(max_bytes: usize) -> FetchSettings {
    FetchSettings {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        max_bytes,
        retries: 2,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        ca_file: None,
    }
}

fn fetcher(max_bytes: usize) -> Fetcher {
    Fetcher::new(settings(max_bytes)).expect("a fetcher")
}

/// Serve `app` over plain HTTP on a loopback port; its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// Serve `app` over HTTPS with `config`; the port.
async fn serve_tls(app: Router, config: Arc<rustls::ServerConfig>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port");
    let port = listener.local_addr().expect("the bound address").port();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    port
}

/// A private CA (PEM) and a server configuration presenting a certificate it signed for
/// 127.0.0.1.
fn private_ca() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose,
    };
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("server names")
        .signed_by(&key, &ca)
        .expect("server certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server configuration");
    (ca.pem(), Arc::new(config))
}

const ETAG: &str = "\"v1\"";

/// A body with an ETag, 304 for a request that already has it; counts requests.
fn etag_app(hits: Arc<AtomicUsize>) -> Router {
    Router::new().route(
        "/edge.bundle",
        get(move |headers: HeaderMap| {
            let hits = hits.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                if headers
                    .get(header::IF_NONE_MATCH)
                    .is_some_and(|v| v.as_bytes() == ETAG.as_bytes())
                {
                    return StatusCode::NOT_MODIFIED.into_response();
                }
                ([(header::ETAG, ETAG)], "the bundle").into_response()
            }
        }),
    )
}

#[tokio::test]
async fn a_body_with_an_etag_then_304_when_unchanged() {
    let hits = Arc::new(AtomicUsize::new(0));
    let base = serve(etag_app(hits.clone())).await;
    let url = format!("{base}/edge.bundle");
    let f = fetcher(1024);
    let first = f.fetch(&url, None).await.expect("a body");
    assert_eq!(
        first,
        Fetched::Body {
            bytes: b"the bundle".to_vec(),
            etag: Some(ETAG.to_string())
        }
    );
    let second = f.fetch(&url, Some(ETAG)).await.expect("an answer");
    assert_eq!(second, Fetched::NotModified);
    assert_eq!(hits.load(Ordering::SeqCst), 2, "one request each");
}

#[tokio::test]
async fn a_body_over_the_cap_is_refused_without_reading_it_all() {
    let app = Router::new()
        .route("/sized", get(|| async { vec![b'x'; 2048] }))
        // No Content-Length, and no end: only stopping at the cap returns.
        .route(
            "/endless",
            get(|| async {
                let chunks = futures::stream::repeat_with(|| {
                    Ok::<_, std::io::Error>(bytes::Bytes::from_static(&[b'x'; 512]))
                });
                Body::from_stream(chunks)
            }),
        )
        .route("/small", get(|| async { vec![b'x'; 1024] }));
    let base = serve(app).await;
    let f = fetcher(1024);
    for path in ["/sized", "/endless"] {
        let err = f
            .fetch(&format!("{base}{path}"), None)
            .await
            .expect_err("over the cap");
        assert!(
            matches!(err, FetchError::TooLarge { limit: 1024, .. }),
            "{path}: {err}"
        );
    }
    let at_cap = f.fetch(&format!("{base}/small"), None).await;
    assert!(
        matches!(&at_cap, Ok(Fetched::Body { bytes, .. }) if bytes.len() == 1024),
        "exactly the cap is read: {at_cap:?}"
    );
}

#[tokio::test]
async fn a_server_error_is_retried_until_it_answers_but_a_404_is_not() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let missing = Arc::new(AtomicUsize::new(0));
    let missing_counted = missing.clone();
    let app = Router::new()
        .route(
            "/flaky",
            get(move || {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        (StatusCode::INTERNAL_SERVER_ERROR, "busy").into_response()
                    } else {
                        "the bundle".into_response()
                    }
                }
            }),
        )
        .route(
            "/missing",
            get(move || {
                missing_counted.fetch_add(1, Ordering::SeqCst);
                async { StatusCode::NOT_FOUND }
            }),
        );
    let base = serve(app).await;
    let f = fetcher(1024);
    let fetched = f.fetch(&format!("{base}/flaky"), None).await;
    assert!(
        matches!(&fetched, Ok(Fetched::Body { bytes, .. }) if bytes == b"the bundle"),
        "{fetched:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2, "a 500, then the retry");
    let err = f
        .fetch(&format!("{base}/missing"), None)
        .await
        .expect_err("a 404");
    assert!(
        matches!(err, FetchError::Status { status: 404, .. }),
        "{err}"
    );
    assert_eq!(missing.load(Ordering::SeqCst), 1, "a 404 is not retried");
}

#[tokio::test]
async fn a_refused_connection_is_an_error_after_the_retries() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = listener.local_addr().expect("the address");
    drop(listener);
    let err = fetcher(1024)
        .fetch(&format!("http://{addr}/edge.bundle"), None)
        .await
        .expect_err("nothing listens");
    let text = err.to_string();
    assert!(matches!(err, FetchError::Request { .. }), "{text}");
    assert!(
        text.contains(&addr.to_string()) && text.to_lowercase().contains("refused"),
        "says where and why: {text}"
    );
}

#[tokio::test]
async fn https_with_a_private_ca_from_ca_file_and_an_untrusted_one_refused() {
    let (ca_pem, config) = private_ca();
    let hits = Arc::new(AtomicUsize::new(0));
    let port = serve_tls(etag_app(hits.clone()), config).await;
    let url = format!("https://127.0.0.1:{port}/edge.bundle");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).expect("writing the CA");

    let trusting = Fetcher::new(FetchSettings {
        ca_file: Some(ca_file),
        ..settings(1024)
    })
    .expect("a fetcher trusting the private CA");
    let fetched = trusting.fetch(&url, None).await;
    assert!(
        matches!(&fetched, Ok(Fetched::Body { bytes, .. }) if bytes == b"the bundle"),
        "{fetched:?}"
    );

    let err = fetcher(1024)
        .fetch(&url, None)
        .await
        .expect_err("an unknown issuer");
    let text = err.to_string();
    assert!(
        text.to_lowercase().contains("certificate"),
        "says the certificate is not trusted: {text}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "no request reached the server over an untrusted connection"
    );
}

#[test]
fn ca_files_and_urls_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_pem, _) = private_ca();
    let good = dir.path().join("ca.pem");
    std::fs::write(&good, ca_pem).expect("writing");
    assert_eq!(read_ca_file(&good).expect("a CA file").len(), 1);
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("writing");
    let err = read_ca_file(&empty).expect_err("no certificate");
    assert!(err.contains("no certificate"), "{err}");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("writing");
    assert!(read_ca_file(&garbage).is_err(), "not a certificate inside");
    assert!(read_ca_file(&dir.path().join("missing.pem")).is_err());

    for ok in [
        "http://10.0.0.1:8080/b",
        "https://bundles.example/edge.bundle",
    ] {
        assert_eq!(check_url(ok), Ok(()), "{ok}");
    }
    for bad in ["ftp://x/b", "bundles.example/b", "file:///etc/b", "http://"] {
        assert!(check_url(bad).is_err(), "{bad} accepted");
    }
    let with_password = check_url("https://ops:s3cret@bundles.internal/edge.bundle")
        .expect_err("credentials in a URL are refused");
    assert!(
        with_password.contains("credentials") && !with_password.contains("s3cret"),
        "{with_password}"
    );
}

#[test]
fn the_poll_wait_is_within_twenty_percent() {
    let base = Duration::from_secs(60);
    for _ in 0..100 {
        let d = jittered(base);
        assert!(
            d >= Duration::from_secs(48) && d <= Duration::from_secs(72),
            "{d:?}"
        );
    }
}

const ITEMS: &str = "\
apiVersion: apps.openyurt.io/v1alpha1
kind: StaticPod
metadata:
  name: nginx
  namespace: default
spec:
  staticPodManifest: nginx
  template:
    spec:
      containers:
      - name: web
        image: nginx:1.19.2
";

fn signed(key: &PrivateKey, sequence: u64) -> Vec<u8> {
    bundle::sign(
        ITEMS,
        std::slice::from_ref(key),
        sequence,
        Duration::from_secs(86_400),
        None,
        Timestamp::now(),
    )
    .expect("signing")
}

/// Serves whatever `body` holds now, with no ETag (so identical bodies are recognised by
/// their digest).
fn bundle_app(body: Arc<std::sync::Mutex<Vec<u8>>>) -> Router {
    Router::new().route(
        "/edge.bundle",
        get(move || {
            let body = body.lock().expect("the body").clone();
            async move { body }
        }),
    )
}

#[tokio::test]
async fn a_fetched_bundle_is_held_without_spending_its_sequence_until_released() {
    let ops = PrivateKey::generate().expect("a key");
    let stranger = PrivateKey::generate().expect("a key");
    let policy = TrustPolicy::new(vec![PublicKey::clone(ops.public_key())], 1).expect("a policy");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateStore::new(dir.path());
    let body = Arc::new(std::sync::Mutex::new(signed(&ops, 5)));
    let url = format!("{}/edge.bundle", serve(bundle_app(body.clone())).await);
    let mut source = HttpSource::new(
        std::slice::from_ref(&url),
        fetcher(6 << 20),
        policy,
        dir.path(),
    );
    let labels = BTreeMap::new();
    let poll = async |source: &mut HttpSource| {
        let mut polled = source.poll("edge-1", &labels, Timestamp::now()).await;
        assert_eq!(polled.len(), 1);
        polled.remove(0)
    };

    let first = poll(&mut source).await;
    assert!(
        matches!(
            first,
            Polled::Held {
                sequence: 5,
                items: 1,
                ..
            }
        ),
        "{first:?}"
    );
    assert_eq!(
        state.load().expect("state").highest_sequence,
        None,
        "holding spends nothing"
    );
    assert!(matches!(poll(&mut source).await, Polled::Unchanged { .. }));
    assert_eq!(source.held().len(), 1);

    let released = source.release("edge-1", &labels, Timestamp::now());
    assert!(
        matches!(&released[..], [Released::Accepted { sequence: 5, objects, .. }] if objects.len() == 1),
        "{released:?}"
    );
    assert_eq!(state.load().expect("state").highest_sequence, Some(5));
    assert!(source.held().is_empty());
    assert!(
        source
            .release("edge-1", &labels, Timestamp::now())
            .is_empty(),
        "released once"
    );
    assert!(
        matches!(poll(&mut source).await, Polled::Unchanged { .. }),
        "the same body again is not judged again"
    );

    // A stranger's bundle is refused; a replay of an applied sequence too.
    *body.lock().expect("the body") = signed(&stranger, 6);
    let refused = poll(&mut source).await;
    assert!(
        matches!(
            &refused,
            Polled::Refused {
                reason: "threshold" | "bad_signature",
                ..
            }
        ),
        "{refused:?}"
    );
    *body.lock().expect("the body") = signed(&ops, 5);
    let replayed = poll(&mut source).await;
    assert!(
        matches!(
            &replayed,
            Polled::Refused {
                reason: "replayed",
                ..
            }
        ),
        "{replayed:?}"
    );
    assert!(source.held().is_empty());
}

#[tokio::test]
async fn of_several_held_bundles_the_highest_applies_and_the_others_are_replays() {
    let ops = PrivateKey::generate().expect("a key");
    let policy = TrustPolicy::new(vec![PublicKey::clone(ops.public_key())], 1).expect("a policy");
    let dir = tempfile::tempdir().expect("tempdir");
    let older = Arc::new(std::sync::Mutex::new(signed(&ops, 3)));
    let newer = Arc::new(std::sync::Mutex::new(signed(&ops, 4)));
    let urls = [
        format!("{}/edge.bundle", serve(bundle_app(older)).await),
        format!("{}/edge.bundle", serve(bundle_app(newer)).await),
    ];
    let mut source = HttpSource::new(&urls, fetcher(6 << 20), policy, dir.path());
    let labels = BTreeMap::new();
    let polled = source.poll("edge-1", &labels, Timestamp::now()).await;
    assert!(
        polled.iter().all(|p| matches!(p, Polled::Held { .. })),
        "{polled:?}"
    );
    let released = source.release("edge-1", &labels, Timestamp::now());
    assert!(
        matches!(
            &released[..],
            [
                Released::Accepted { sequence: 4, .. },
                Released::Refused {
                    sequence: 3,
                    reason: "replayed",
                    ..
                }
            ]
        ),
        "{released:?}"
    );
}

#[tokio::test]
async fn a_bundle_not_targeted_yet_is_judged_again_once_the_labels_are_known() {
    let ops = PrivateKey::generate().expect("a key");
    let policy = TrustPolicy::new(vec![PublicKey::clone(ops.public_key())], 1).expect("a policy");
    let dir = tempfile::tempdir().expect("tempdir");
    let targets = bundle::Targets {
        nodes: Vec::new(),
        node_selector: Some(bundle::NodeSelector::parse("zone=north").expect("a selector")),
    };
    let envelope = bundle::sign(
        ITEMS,
        std::slice::from_ref(&ops),
        5,
        Duration::from_secs(86_400),
        Some(targets),
        Timestamp::now(),
    )
    .expect("signing");
    let body = Arc::new(std::sync::Mutex::new(envelope));
    let url = format!("{}/edge.bundle", serve(bundle_app(body)).await);
    let mut source = HttpSource::new(
        std::slice::from_ref(&url),
        fetcher(6 << 20),
        policy,
        dir.path(),
    );

    // Started offline before the node's labels were ever seen: not targeted, for now.
    let unknown = BTreeMap::new();
    let first = source.poll("edge-1", &unknown, Timestamp::now()).await;
    assert!(
        matches!(
            &first[..],
            [Polled::Refused {
                reason: "not_targeted",
                ..
            }]
        ),
        "{first:?}"
    );
    // The same body once the labels are known: judged again, and held.
    let north = BTreeMap::from([("zone".to_string(), "north".to_string())]);
    let second = source.poll("edge-1", &north, Timestamp::now()).await;
    assert!(
        matches!(&second[..], [Polled::Held { sequence: 5, .. }]),
        "{second:?}"
    );
}
