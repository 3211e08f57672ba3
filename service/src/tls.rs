//! TLS 1.3 client configuration with client certificates, on ring.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{BrokerConfig, ServiceError, files};

fn pem_err(path: &Path) -> impl Fn(rustls_pki_types::pem::Error) -> ServiceError + '_ {
    move |e| ServiceError::Pem {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Reads every certificate in a PEM file; an empty file is an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServiceError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_err(path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err(path))?;
    if certs.is_empty() {
        return Err(ServiceError::Pem {
            path: path.display().to_string(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// The client configuration for the broker: TLS 1.3 only, the configured CA
/// as the only trust anchor, and this client's certificate and key (the key
/// file must not be readable by others).
pub fn client_config(broker: &BrokerConfig) -> Result<Arc<rustls::ClientConfig>, ServiceError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(&broker.ca)? {
        roots.add(cert)?;
    }
    let chain = read_certs(&broker.cert)?;
    files::check_secret_mode(&broker.key)?;
    let key = PrivateKeyDer::from_pem_file(&broker.key).map_err(pem_err(&broker.key))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}
