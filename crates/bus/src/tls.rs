//! Mutual TLS for the ring bus: rustls configurations that trust only the ring's CA, on both
//! sides. The hub refuses any client without a certificate the ring CA signed; a client refuses
//! any hub whose certificate the ring CA did not sign. TLS 1.3 only, with one explicitly chosen
//! crypto provider (ring). This module must never accept a peer on any other basis (no
//! "insecure" switches, no system roots).

use std::fmt;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::KeyId;

/// The ALPN name of the hub protocol. It versions the wire format (see [`crate::frame`]): a hub
/// and a client that speak different versions fail the handshake instead of misreading frames.
pub const ALPN_PROTOCOL: &[u8] = b"enjin-bus/2";

/// What a node needs to join its ring's bus, all PEM.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The ring CA certificate: the only root either side trusts.
    pub ca_pem: String,
    /// This node's certificate, optionally followed by intermediates.
    pub cert_pem: String,
    /// This node's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
}

impl fmt::Debug for TlsMaterial {
    // The private key must not end up in logs through a `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len()))
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Why TLS material could not be turned into a rustls configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `ca_pem` is not valid PEM.
    #[error("failed to parse the ring CA certificate PEM: {0}")]
    CaPem(rustls_pki_types::pem::Error),
    /// `ca_pem` parses but contains no certificate, so nothing could be trusted.
    #[error("the ring CA PEM holds no certificate")]
    NoCaCertificate,
    /// A CA certificate is not usable as a trust anchor (bad DER, unsupported contents).
    #[error("the ring CA certificate was refused as a trust anchor: {0}")]
    CaRejected(rustls::Error),
    /// `cert_pem`, this side's own certificate chain (hub or member), is not valid PEM.
    #[error("failed to parse the node certificate PEM: {0}")]
    CertPem(rustls_pki_types::pem::Error),
    /// `cert_pem` contains no certificate.
    #[error("the node certificate PEM holds no certificate")]
    NoCertificate,
    /// `key_pem` is not valid PEM or holds no private key.
    #[error("failed to parse the node private key PEM: {0}")]
    KeyPem(rustls_pki_types::pem::Error),
    /// The hub's verifier of client certificates could not be built from the CA.
    #[error("failed to build the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// rustls refused the configuration, typically a private key that does not match the
    /// certificate or is of an unsupported kind.
    #[error("failed to build the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The name the hub's certificate must carry is not a valid DNS name or IP address.
    #[error("invalid server name {name:?}: {source}")]
    ServerName {
        /// The name as given.
        name: String,
        /// Why rustls refused it.
        source: rustls_pki_types::InvalidDnsNameError,
    },
}

/// The one crypto provider the bus uses. Passed explicitly to every builder, so nothing depends
/// on (or races to install) a process-wide default provider.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn ring_roots(material: &TlsMaterial) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(material.ca_pem.as_bytes()) {
        roots.add(cert.map_err(TlsError::CaPem)?).map_err(TlsError::CaRejected)?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCaCertificate);
    }
    Ok(Arc::new(roots))
}

fn own_identity(
    material: &TlsMaterial,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = CertificateDer::pem_slice_iter(material.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsError::CertPem)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes()).map_err(TlsError::KeyPem)?;
    Ok((chain, key))
}

/// The hub's configuration: TLS 1.3, presents `cert_pem`, and requires a client certificate
/// chaining to the ring CA.
pub fn server_config(material: &TlsMaterial) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(ring_roots(material)?, provider.clone()).build()?;
    let (chain, key) = own_identity(material)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    // No resumption: a resumed session skips verifying the client's certificate, so an
    // expired one would keep getting in. Members connect for hours; a full handshake each
    // time costs nothing worth keeping.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client's configuration: TLS 1.3, trusts only the ring CA, presents `cert_pem`.
pub fn client_config(material: &TlsMaterial) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let (chain, key) = own_identity(material)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(ring_roots(material)?)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Parse the name a client expects in the hub's certificate (a DNS name or an IP address).
pub fn server_name(name: &str) -> Result<rustls_pki_types::ServerName<'static>, TlsError> {
    rustls_pki_types::ServerName::try_from(name.to_owned())
        .map_err(|source| TlsError::ServerName { name: name.to_owned(), source })
}

/// A printable name for a peer certificate, for logs: the subject common name, else the first DNS
/// subject alternative name. `None` when there is neither or the DER is not what we expect.
///
/// Only call this on a certificate the TLS layer already verified against the ring CA; it exists
/// to label tracing spans, not to make decisions. It walks the DER by hand because the one field
/// is not worth a full X.509 parser as a dependency; every access is bounds-checked.
pub fn peer_name(cert_der: &[u8]) -> Option<String> {
    let (subject, after_subject) = subject(cert_der)?;
    if let Some(cn) = common_name(subject) {
        return Some(printable(cn));
    }
    // subjectPublicKeyInfo, then optional unique ids, then [3] extensions.
    let mut rest = der::tlv(after_subject, der::SEQUENCE)?.2;
    while let Some((tag, content, after)) = der::any_tlv(rest) {
        if tag == 0xa3 {
            return first_dns_san(content).map(printable);
        }
        rest = after;
    }
    None
}

/// The subject common name of a certificate, exactly as written (UTF-8), for decisions: the
/// hub reads a member's role from it (see [`crate::acl`]). `None` when there is none or it is
/// not UTF-8. Only meaningful on a certificate the TLS layer verified against the ring CA, whose
/// key service alone chooses the name.
pub fn certificate_common_name(cert_der: &[u8]) -> Option<String> {
    let (subject, _) = subject(cert_der)?;
    std::str::from_utf8(common_name(subject)?).ok().map(str::to_owned)
}

/// The first certificate of a PEM chain, as DER.
pub fn first_certificate_der(cert_pem: &str) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(cert_pem.as_bytes()).next()?.ok()
}

/// A certificate's validity, subject name and the bytes after the subject.
fn tbs_fields(cert_der: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (_, certificate, _) = der::tlv(cert_der, der::SEQUENCE)?;
    let (_, tbs, _) = der::tlv(certificate, der::SEQUENCE)?;
    let mut rest = tbs;
    // Optional explicit version [0].
    if let Some((_, _, after)) = der::tlv(rest, 0xa0) {
        rest = after;
    }
    // serialNumber, signature, issuer.
    for tag in [der::INTEGER, der::SEQUENCE, der::SEQUENCE] {
        rest = der::tlv(rest, tag)?.2;
    }
    let (_, validity, rest) = der::tlv(rest, der::SEQUENCE)?;
    let (_, subject, after_subject) = der::tlv(rest, der::SEQUENCE)?;
    Some((validity, subject, after_subject))
}

/// A certificate's subject name and the bytes after it.
fn subject(cert_der: &[u8]) -> Option<(&[u8], &[u8])> {
    tbs_fields(cert_der).map(|(_, subject, after)| (subject, after))
}

/// The bus key a member's certificate is bound to: the 64 hex digits the ring's key service
/// writes into the subject's serialNumber attribute (see `enjin_pki::BOUND_KEY_OID`). `None`
/// when there is none or it is not a key. Only meaningful on a verified certificate.
pub fn certificate_bound_key(cert_der: &[u8]) -> Option<KeyId> {
    let (subject, _) = subject(cert_der)?;
    std::str::from_utf8(attribute(subject, OID_SERIAL_NUMBER)?).ok()?.parse().ok()
}

/// When a certificate stops being valid, in seconds since the Unix epoch. `None` when the DER
/// is not what we expect.
pub fn certificate_not_after(cert_der: &[u8]) -> Option<i64> {
    let (validity, _, _) = tbs_fields(cert_der)?;
    let (_, _, rest) = der::any_tlv(validity)?;
    let (tag, time, _) = der::any_tlv(rest)?;
    der::time(tag, time)
}

const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const OID_SERIAL_NUMBER: &[u8] = &[0x55, 0x04, 0x05];
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

fn common_name(name: &[u8]) -> Option<&[u8]> {
    attribute(name, OID_COMMON_NAME)
}

/// The value of the first attribute `oid` of a distinguished name.
fn attribute<'a>(name: &'a [u8], oid: &[u8]) -> Option<&'a [u8]> {
    let mut rdns = name;
    while let Some((_, rdn, after)) = der::tlv(rdns, der::SET) {
        let mut attrs = rdn;
        while let Some((_, attr, next)) = der::tlv(attrs, der::SEQUENCE) {
            let (_, found, value) = der::tlv(attr, der::OID)?;
            if found == oid {
                return der::any_tlv(value).map(|(_, s, _)| s);
            }
            attrs = next;
        }
        rdns = after;
    }
    None
}

fn first_dns_san(extensions_explicit: &[u8]) -> Option<&[u8]> {
    let (_, mut extensions, _) = der::tlv(extensions_explicit, der::SEQUENCE)?;
    while let Some((_, ext, next)) = der::tlv(extensions, der::SEQUENCE) {
        let (_, oid, mut rest) = der::tlv(ext, der::OID)?;
        if oid == OID_SUBJECT_ALT_NAME {
            if let Some((_, _, after)) = der::tlv(rest, der::BOOLEAN) {
                rest = after;
            }
            let (_, octets, _) = der::tlv(rest, der::OCTET_STRING)?;
            let (_, mut names, _) = der::tlv(octets, der::SEQUENCE)?;
            while let Some((tag, value, after)) = der::any_tlv(names) {
                // [2] IMPLICIT IA5String: dNSName.
                if tag == 0x82 {
                    return Some(value);
                }
                names = after;
            }
            return None;
        }
        extensions = next;
    }
    None
}

/// Names from certificates go into logs: keep them short and free of control characters.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(64).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Just enough DER to find two fields: single-byte tags, definite lengths up to 4 bytes.
mod der {
    pub const BOOLEAN: u8 = 0x01;
    pub const INTEGER: u8 = 0x02;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;

    /// The first element of `input` if its tag is `tag`: (tag, content, rest).
    pub fn tlv(input: &[u8], tag: u8) -> Option<(u8, &[u8], &[u8])> {
        any_tlv(input).filter(|(t, _, _)| *t == tag)
    }

    pub const UTC_TIME: u8 = 0x17;
    pub const GENERALIZED_TIME: u8 = 0x18;

    /// A UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as
    /// seconds since the Unix epoch; other forms (fractions, offsets) are not used by X.509.
    pub fn time(tag: u8, text: &[u8]) -> Option<i64> {
        let digits = |s: &[u8]| -> Option<i64> {
            s.iter().try_fold(0i64, |acc, &b| b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0')))
        };
        let (year, rest) = match (tag, text.len()) {
            (UTC_TIME, 13) => {
                let yy = digits(text.get(..2)?)?;
                (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
            }
            (GENERALIZED_TIME, 15) => (digits(text.get(..4)?)?, text.get(4..)?),
            _ => return None,
        };
        if rest.last() != Some(&b'Z') {
            return None;
        }
        let field = |i: usize| digits(rest.get(i..i + 2)?);
        let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
    }

    /// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
    fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The first element of `input`, whatever its tag: (tag, content, rest).
    pub fn any_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return None; // multi-byte tag: not used by the fields we read
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let bytes = rest.get(..n)?;
            let len = bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, rest.get(n..)?)
        };
        let content = rest.get(..len)?;
        Some((tag, content, rest.get(len..)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, Issuer, KeyPair};

    fn ca() -> (String, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "test ring ca");
        let cert = params.self_signed(&key).expect("ca cert");
        (cert.pem(), Issuer::new(params, key))
    }

    fn leaf(issuer: &Issuer<'_, KeyPair>, cn: Option<&str>, sans: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let cert = params.signed_by(&key, issuer).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    }

    fn der_of(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem").to_vec()
    }

    #[test]
    fn configs_build_from_ring_material() {
        let (ca_pem, issuer) = ca();
        let (cert_pem, key_pem) = leaf(&issuer, Some("node-1"), &["localhost"]);
        let material = TlsMaterial { ca_pem, cert_pem, key_pem };
        let server = server_config(&material).expect("server config");
        assert_eq!(server.alpn_protocols, vec![ALPN_PROTOCOL.to_vec()]);
        client_config(&material).expect("client config");
        assert!(!format!("{material:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn missing_pieces_are_named() {
        let (ca_pem, issuer) = ca();
        let (cert_pem, key_pem) = leaf(&issuer, Some("node-1"), &["localhost"]);
        let no_ca =
            TlsMaterial { ca_pem: String::new(), cert_pem: cert_pem.clone(), key_pem: key_pem.clone() };
        assert!(matches!(server_config(&no_ca), Err(TlsError::NoCaCertificate)));
        let no_cert =
            TlsMaterial { ca_pem: ca_pem.clone(), cert_pem: String::new(), key_pem: key_pem.clone() };
        assert!(matches!(client_config(&no_cert), Err(TlsError::NoCertificate)));
        let no_key = TlsMaterial { ca_pem, cert_pem, key_pem: String::new() };
        let err = client_config(&no_key).expect_err("no key");
        assert!(matches!(err, TlsError::KeyPem(_)));
        assert!(err.to_string().starts_with("failed to parse the node private key"));
    }

    #[test]
    fn peer_name_prefers_common_name_then_dns_san() {
        let (_, issuer) = ca();
        let (with_cn, _) = leaf(&issuer, Some("node-7"), &["n7.ring"]);
        assert_eq!(peer_name(&der_of(&with_cn)).as_deref(), Some("node-7"));
        let (san_only, _) = leaf(&issuer, None, &["127.0.0.1", "n8.ring"]);
        assert_eq!(peer_name(&der_of(&san_only)).as_deref(), Some("n8.ring"));
        let (nothing, _) = leaf(&issuer, None, &[]);
        assert_eq!(peer_name(&der_of(&nothing)), None);
        assert_eq!(certificate_common_name(&der_of(&with_cn)).as_deref(), Some("node-7"));
        assert_eq!(certificate_common_name(&der_of(&san_only)), None, "a SAN is never a common name");
        assert_eq!(certificate_common_name(&der_of(&nothing)), None);
    }

    #[test]
    fn bound_key_and_expiry_are_read_from_the_certificate() {
        let ca = enjin_pki::RingCa::generate(1).expect("ca");
        let key = crate::identity::Identity::generate().expect("key").key_id();
        let validity = std::time::Duration::from_secs(3_600);
        let issued = ca.issue_bound("host:x", &key.to_string(), validity).expect("issue");
        let der = der_of(&issued.cert_pem);
        assert_eq!(certificate_bound_key(&der), Some(key));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
            as i64;
        let not_after = certificate_not_after(&der).expect("not after");
        assert!((not_after - (now + 3_600)).abs() <= 2, "{not_after} vs {now} + 3600");
        let unbound = ca.issue("host:y", &[], validity).expect("issue");
        assert_eq!(certificate_bound_key(&der_of(&unbound.cert_pem)), None);
    }

    #[test]
    fn times_are_read_as_x509_writes_them() {
        assert_eq!(der::time(der::UTC_TIME, b"700101000000Z"), Some(0));
        assert_eq!(der::time(der::UTC_TIME, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(der::time(der::GENERALIZED_TIME, b"20261205120000Z"), Some(1_796_472_000));
        assert_eq!(der::time(der::GENERALIZED_TIME, b"2026120512000Z"), None);
        assert_eq!(der::time(der::UTC_TIME, b"261305120000Z"), None, "month 13");
        assert_eq!(der::time(der::UTC_TIME, b"26120512000+0"), None);
    }

    proptest! {
        #[test]
        fn peer_name_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = peer_name(&bytes);
            let _ = certificate_common_name(&bytes);
            let _ = certificate_bound_key(&bytes);
            let _ = certificate_not_after(&bytes);
        }

        #[test]
        fn times_never_panic(tag in any::<u8>(), text in prop::collection::vec(any::<u8>(), 0..20)) {
            let _ = der::time(tag, &text);
        }

        #[test]
        fn peer_name_survives_corrupted_certificates(i in any::<prop::sample::Index>(), b in any::<u8>()) {
            let (_, issuer) = ca();
            let (pem, _) = leaf(&issuer, Some("node-x"), &["x.ring"]);
            let mut der = der_of(&pem);
            let k = i.index(der.len());
            der[k] = b;
            let _ = peer_name(&der);
            let _ = peer_name(&der[..k]);
        }
    }
}
