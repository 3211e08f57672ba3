//! The listener's client-certificate rule, over real TLS: an operator
//! certificate from the operator CA is admitted (its CN is the operator),
//! no certificate reaches only public routes (403 elsewhere), and a
//! certificate from another CA does not get a connection at all.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use std::sync::Arc;

use mctc_console::config::{StoresConfig, TlsConfig};
use mctc_console::live::Live;
use mctc_console::server::{AppState, router, serve, tls_config};
use mctc_console::shutdown;
use mctc_console::stores::Stores;
use mctc_tests::{CertFiles, Pki};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

fn client(ca: &std::path::Path, identity: Option<&CertFiles>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity {
        Some(id) => {
            let chain = CertificateDer::pem_file_iter(&id.cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(&id.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(config))
}

/// `GET path` over TLS; the status code, or the error that ended the
/// connection first.
async fn get(port: u16, connector: &TlsConnector, path: &str) -> Result<(u16, String), String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {text}"))?;
    Ok((status, text))
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_need_a_certificate_from_the_operator_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki")).unwrap();
    let foreign = Pki::new(&dir.path().join("foreign")).unwrap();
    let server = pki.server("mctc-console").unwrap();
    let alice = pki.client("operator-alice").unwrap();
    let mallory = foreign.client("operator-alice").unwrap();
    let tls = tls_config(&TlsConfig {
        cert: server.cert.clone(),
        key: server.key.clone(),
        operator_ca: pki.ca_path().to_owned(),
    })
    .unwrap();
    // Databases that do not exist: the operator's page is then a 503,
    // which is still past the certificate check.
    let state = Arc::new(AppState {
        stores: Stores::new(&StoresConfig {
            authority: dir.path().join("authority.db"),
            collector: dir.path().join("collector.db"),
        }),
        live: Live::new(false),
        silent_after_secs: 60,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (trigger, signal) = shutdown::channel();
    let server_task = tokio::spawn(serve(listener, tls, router(state), signal));

    let ca = pki.ca_path();
    let (status, text) = get(port, &client(ca, Some(&alice)), "/").await.unwrap();
    // Admitted (not 403): the page fails only at the absent database.
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("authority database"), "{text}");

    let (status, text) = get(port, &client(ca, None), "/api/v1/fleet").await.unwrap();
    assert_eq!(status, 403, "{text}");
    let (status, _) = get(port, &client(ca, None), "/healthz").await.unwrap();
    assert_eq!(status, 200);

    // Another CA's certificate with the same CN: no connection at all.
    let refused = get(port, &client(ca, Some(&mallory)), "/").await;
    assert!(
        refused.is_err(),
        "a foreign operator certificate got {refused:?}"
    );

    trigger.fire();
    server_task.await.unwrap().unwrap();
}
