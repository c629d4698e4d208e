//! TLS for the API: a server certificate issued by the ring 0 CA for the names clients reach
//! the server by, and a rustls configuration with the ring crypto provider passed explicitly
//! (no process-wide default provider, and never a second provider). The certificate's key lives
//! only in memory; a server issues a fresh one each time it starts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use enjin_pki::{PkiError, RingCa};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How long an API server certificate is valid. It is issued again at every start.
pub const API_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The certificate's common name.
const API_CERT_NAME: &str = "enjin-api";

/// Why [`server_config`] could not make the API's TLS configuration. Each is fatal at start:
/// the server does not fall back to plain HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ApiTlsError {
    /// The CA refused to issue the certificate (a name it cannot carry, a signing failure).
    #[error("failed to issue the API server certificate: {0}")]
    Issue(#[from] PkiError),
    /// The issued certificate, the CA's certificate or the key did not parse as PEM: a bug in
    /// issuing, not in the configuration.
    #[error("failed to read the API server certificate PEM: {0}")]
    Pem(rustls_pki_types::pem::Error),
    /// rustls rejected the certificate chain or key, or the protocol versions.
    #[error("failed to build the API TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The names an API server's certificate carries: `localhost`, `127.0.0.1` and `::1`, the
/// address it listens on (unless it is the unspecified address, which no client connects
/// to by name), and `extra` (`[api] tls_names`), in that order without repeats.
pub fn api_names(listen: SocketAddr, extra: &[String]) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        IpAddr::V4(Ipv4Addr::LOCALHOST).to_string(),
        IpAddr::V6(Ipv6Addr::LOCALHOST).to_string(),
    ];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names.extend(extra.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.to_ascii_lowercase()));
    names
}

/// Whether `name` can be a subject alternative name a client checks: an IP address or a DNS
/// name (for `[api] tls_names`).
pub fn valid_name(name: &str) -> bool {
    rustls_pki_types::ServerName::try_from(name).is_ok()
}

/// A server configuration presenting a certificate `ca` issues now for `names`: HTTP/1.1 over
/// TLS 1.2 or 1.3, no client certificates (callers authenticate with tokens).
pub fn server_config(ca: &RingCa, names: &[String]) -> Result<Arc<rustls::ServerConfig>, ApiTlsError> {
    let issued = ca.issue(API_CERT_NAME, names, API_CERT_VALIDITY)?;
    let mut chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiTlsError::Pem)?;
    // The CA too, so a client that has the CA can check the chain whatever it was given.
    chain.extend(
        CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiTlsError::Pem)?,
    );
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).map_err(ApiTlsError::Pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_loopback_the_listen_address_and_extras_once() {
        let listen: SocketAddr = "10.0.0.5:7480".parse().expect("addr");
        let names = api_names(listen, &["enjin.example".into(), "LOCALHOST".into(), "10.0.0.5".into()]);
        assert_eq!(names, ["localhost", "127.0.0.1", "::1", "10.0.0.5", "enjin.example"]);
        let any: SocketAddr = "0.0.0.0:7480".parse().expect("addr");
        assert_eq!(api_names(any, &[]), ["localhost", "127.0.0.1", "::1"]);
        assert!(valid_name("enjin.example") && valid_name("10.1.2.3") && valid_name("::1"));
        assert!(!valid_name("not a name") && !valid_name("") && !valid_name("a/b"));
    }

    #[test]
    fn a_configuration_is_built_from_the_ring_0_ca() {
        let ca = RingCa::generate(0).expect("ca");
        let config = server_config(&ca, &api_names("127.0.0.1:0".parse().expect("addr"), &[]));
        assert!(config.is_ok(), "{config:?}");
    }
}
