//! The client's TLS: rustls with the ring crypto provider passed explicitly, trusting only the
//! CA an enjin server's certificate comes from (the ring 0 CA of its data directory, or one the
//! user gave), never the system's roots.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Why the CA certificate given could not be made into a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The CA file is not well-formed PEM (a section that does not decode).
    #[error("failed to read the CA certificate PEM: {0}")]
    Pem(rustls_pki_types::pem::Error),
    /// The CA file holds no `CERTIFICATE` section: it is empty, or holds something else (a
    /// key, say).
    #[error("the CA PEM holds no certificate")]
    NoCertificate,
    /// A certificate in the CA file is not one rustls can trust: not a parseable X.509
    /// certificate.
    #[error("the CA certificate was refused as a trust anchor: {0}")]
    Rejected(rustls::Error),
    /// rustls refused to build a configuration with the ring provider and its default protocol
    /// versions; nothing the user gave causes this.
    #[error("failed to build the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting exactly the certificates in `ca_pem`.
pub fn client_config(ca_pem: &str) -> Result<rustls::ClientConfig, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.map_err(TlsConfigError::Pem)?).map_err(TlsConfigError::Rejected)?;
    }
    if roots.is_empty() {
        return Err(TlsConfigError::NoCertificate);
    }
    with_roots(roots).map_err(TlsConfigError::Config)
}

/// A configuration that trusts no server at all: for plain-HTTP clients, which still need one
/// so that nothing falls back to a process-wide provider.
pub fn no_roots() -> Result<rustls::ClientConfig, TlsConfigError> {
    with_roots(RootCertStore::empty()).map_err(TlsConfigError::Config)
}

fn with_roots(roots: RootCertStore) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_pem_must_hold_a_certificate() {
        assert!(matches!(client_config(""), Err(TlsConfigError::NoCertificate)));
        assert!(matches!(client_config("not pem at all"), Err(TlsConfigError::NoCertificate)));
        assert!(no_roots().is_ok());
    }
}
