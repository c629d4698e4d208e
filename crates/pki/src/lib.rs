//! Key generation, a ring 0 service: a certificate authority per ring, TLS certificates for the
//! nodes of a ring issued by it, and private key files that are private from the moment they
//! exist. It must never write a private key anywhere but a 0600 file, and never hand one to
//! the store or an API response; it does no cryptography of its own (rcgen and ring do).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The subject attribute that binds a member's certificate to its bus key: X.520
/// serialNumber (2.5.4.5), holding the key's 64 hex digits. The ring's hub refuses a
/// certificate whose bound key the ring's trust no longer accepts.
pub const BOUND_KEY_OID: &[u64] = &[2, 5, 4, 5];

/// Why making, loading or storing a key or certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen could not make a key, certificate parameters (a subject alternative name that is
    /// neither an IP address nor a valid DNS name), a certificate or a CSR.
    #[error("failed to generate {what}: {source}")]
    Generate {
        /// What was being made, naming its ring or subject: `ring 1 CA key`, `certificate for host-1`.
        what: String,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// A key or certificate file exists but could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The key or certificate file.
        path: PathBuf,
        /// The I/O error from reading it (or from `stat` on it).
        source: std::io::Error,
    },
    /// A key or certificate file, or the directory for them, could not be written. The file is
    /// replaced atomically, so it holds its old contents or the new, never part of either.
    #[error("failed to write {path}: {source}")]
    Write {
        /// The key or certificate file, or the directory being created for them.
        path: PathBuf,
        /// The I/O error from creating, writing, syncing or renaming.
        source: std::io::Error,
    },
    /// A private key file grants its group or others some access, so it is refused rather than
    /// used: the operator must treat the key as leaked, or at least `chmod 600` it.
    #[error("{path} is readable by other users (mode {mode:o}); private keys must be 0600")]
    Exposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits (the low nine only), shown in octal.
        mode: u32,
    },
    /// A CA key file was read but is not a PEM private key rcgen can use: damaged or replaced.
    #[error("{path} holds no usable private key: {source}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// The common name asked for is empty, longer than 64 bytes or holds a control character;
    /// holds the name as given.
    #[error("invalid certificate name {0:?}")]
    BadName(String),
    /// The bound key is not 64 lowercase hex digits; holds (at most the first 80 characters of)
    /// what was given.
    #[error("invalid bound key {0:?}: expected 64 lowercase hex digits")]
    BadKeyName(String),
    /// The requester's CSR is not a PEM certificate signing request rcgen can parse.
    #[error("invalid certificate signing request: {0}")]
    BadCsr(rcgen::Error),
    /// Half of a CA is on disk: its certificate without its key, or the reverse. Making a new CA
    /// would overwrite the half that is left and invalidate every certificate the old one
    /// issued, so nothing is made: the operator restores the missing file or removes both.
    #[error("{present} exists but {missing} does not; restore it, or remove both to make a new CA")]
    HalfCa {
        /// The file that is there.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
}

/// A ring's certificate authority: it issues the TLS certificates of the ring's nodes, and its
/// certificate is what every node of the ring trusts.
pub struct RingCa {
    ring: u8,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for RingCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingCa").field("ring", &self.ring).finish_non_exhaustive()
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate, signed by the ring's CA.
    pub cert_pem: String,
    /// Its private key (PKCS#8): a secret, to be written only with [`write_private`]. `Debug`
    /// hides it.
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).field("key_pem", &"<secret>").finish()
    }
}

/// A certificate signing request and the private key it was made for, both PEM.
pub struct SigningRequest {
    /// The PKCS#10 request to send to the CA; it carries the public key only.
    pub csr_pem: String,
    /// The private key (PKCS#8) the request is for: it never leaves the node, and is written
    /// only with [`write_private`]. `Debug` hides it.
    pub key_pem: String,
}

impl std::fmt::Debug for SigningRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningRequest")
            .field("csr_pem", &self.csr_pem)
            .field("key_pem", &"<secret>")
            .finish()
    }
}

/// The CA's distinguished name. Deterministic, so that a CA reloaded from its key file issues
/// certificates whose issuer name matches its certificate.
fn ca_params(ring: u8) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| PkiError::Generate { what: format!("ring {ring} CA parameters"), source: e })?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "enjin");
    dn.push(DnType::CommonName, format!("enjin ring {ring} CA"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

fn cert_file(dir: &Path, ring: u8) -> PathBuf {
    dir.join(format!("ring-{ring}-ca.crt"))
}

fn key_file(dir: &Path, ring: u8) -> PathBuf {
    dir.join(format!("ring-{ring}-ca.key"))
}

impl RingCa {
    /// A new CA for `ring`, valid for ten years.
    pub fn generate(ring: u8) -> Result<RingCa, PkiError> {
        let key = KeyPair::generate()
            .map_err(|e| PkiError::Generate { what: format!("ring {ring} CA key"), source: e })?;
        let mut params = ca_params(ring)?;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params
            .self_signed(&key)
            .map_err(|e| PkiError::Generate { what: format!("ring {ring} CA certificate"), source: e })?;
        Ok(RingCa { ring, cert_pem: cert.pem(), issuer: Issuer::new(ca_params(ring)?, key) })
    }

    /// The ring's CA from `dir` (`ring-<n>-ca.crt`, `ring-<n>-ca.key`), created there on first
    /// use with the key file at 0600.
    pub fn load_or_create(dir: &Path, ring: u8) -> Result<RingCa, PkiError> {
        let (cert_path, key_path) = (cert_file(dir, ring), key_file(dir, ring));
        match (key_path.exists(), cert_path.exists()) {
            (true, false) => return Err(PkiError::HalfCa { present: key_path, missing: cert_path }),
            (false, true) => return Err(PkiError::HalfCa { present: cert_path, missing: key_path }),
            _ => {}
        }
        if key_path.exists() && cert_path.exists() {
            let key_pem = read_private(&key_path)?;
            let key = KeyPair::from_pem(&key_pem)
                .map_err(|e| PkiError::BadKey { path: key_path.clone(), source: e })?;
            let cert_pem =
                fs::read_to_string(&cert_path).map_err(|e| PkiError::Read { path: cert_path, source: e })?;
            return Ok(RingCa { ring, cert_pem, issuer: Issuer::new(ca_params(ring)?, key) });
        }
        fs::create_dir_all(dir).map_err(|e| PkiError::Write { path: dir.to_path_buf(), source: e })?;
        let ca = RingCa::generate(ring)?;
        write_private(&key_path, &ca.issuer.key().serialize_pem())?;
        // Public, but in a data directory nothing of which is open to others.
        write_private(&cert_path, &ca.cert_pem)?;
        tracing::info!(ring, path = %cert_path.display(), "created ring certificate authority");
        Ok(ca)
    }

    /// The ring whose nodes this CA certifies; it is in the CA's common name and in the
    /// organizational unit of every certificate it issues.
    pub fn ring(&self) -> u8 {
        self.ring
    }

    /// The CA certificate every node of the ring trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Sign a child's certificate signing request: the child keeps its TLS key. Only the CSR's
    /// public key is used; name, bound key, usages and validity are the CA's choice, never the
    /// requester's. `bound_key` (64 hex digits) is written into the subject's serialNumber
    /// attribute ([`BOUND_KEY_OID`]): the bus key whose revocation revokes the certificate.
    pub fn sign_csr(
        &self,
        name: &str,
        bound_key: Option<&str>,
        csr_pem: &str,
        validity: Duration,
    ) -> Result<String, PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
        let params = self.leaf_params(name, bound_key, &[], validity)?;
        let cert = rcgen::CertificateSigningRequestParams { params, public_key: csr.public_key }
            .signed_by(&self.issuer)
            .map_err(|e| PkiError::Generate { what: format!("certificate for {name}"), source: e })?;
        Ok(cert.pem())
    }

    fn leaf_params(
        &self,
        name: &str,
        bound_key: Option<&str>,
        sans: &[String],
        validity: Duration,
    ) -> Result<CertificateParams, PkiError> {
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(PkiError::BadName(name.to_string()));
        }
        if let Some(key) = bound_key
            && !(key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        {
            return Err(PkiError::BadKeyName(key.chars().take(80).collect()));
        }
        let mut params = CertificateParams::new(sans.to_vec()).map_err(|e| PkiError::Generate {
            what: format!("certificate parameters for {name}"),
            source: e,
        })?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "enjin");
        dn.push(DnType::OrganizationalUnitName, format!("ring {}", self.ring));
        dn.push(DnType::CommonName, name);
        if let Some(key) = bound_key {
            dn.push(DnType::CustomDnType(BOUND_KEY_OID.to_vec()), DnValue::PrintableString(printable(key)?));
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after =
            now + time::Duration::seconds(i64::try_from(validity.as_secs()).unwrap_or(i64::MAX / 2));
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    /// A TLS certificate for `name` (its common name) with the given subject alternative names
    /// (DNS names or IP addresses), for both server and client authentication, with a new key.
    pub fn issue(&self, name: &str, sans: &[String], validity: Duration) -> Result<Issued, PkiError> {
        self.issue_with(name, None, sans, validity)
    }

    /// Like [`RingCa::issue`], for a member whose bus key is `bound_key` (64 hex digits): see
    /// [`RingCa::sign_csr`].
    pub fn issue_bound(&self, name: &str, bound_key: &str, validity: Duration) -> Result<Issued, PkiError> {
        self.issue_with(name, Some(bound_key), &[], validity)
    }

    fn issue_with(
        &self,
        name: &str,
        bound_key: Option<&str>,
        sans: &[String],
        validity: Duration,
    ) -> Result<Issued, PkiError> {
        let params = self.leaf_params(name, bound_key, sans, validity)?;
        let key = KeyPair::generate()
            .map_err(|e| PkiError::Generate { what: format!("key for {name}"), source: e })?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| PkiError::Generate { what: format!("certificate for {name}"), source: e })?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// A new TLS key and a certificate signing request for it, both PEM, for a node asking its
/// ring's CA for a certificate (the CA chooses every field but the public key).
pub fn new_csr() -> Result<SigningRequest, PkiError> {
    let what = || "certificate signing request".to_string();
    let key = KeyPair::generate().map_err(|e| PkiError::Generate { what: what(), source: e })?;
    let params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| PkiError::Generate { what: what(), source: e })?;
    let csr = params.serialize_request(&key).map_err(|e| PkiError::Generate { what: what(), source: e })?;
    let csr_pem = csr.pem().map_err(|e| PkiError::Generate { what: what(), source: e })?;
    Ok(SigningRequest { csr_pem, key_pem: key.serialize_pem() })
}

fn printable(key: &str) -> Result<rcgen::string::PrintableString, PkiError> {
    rcgen::string::PrintableString::try_from(key).map_err(|_| PkiError::BadKeyName(key.to_string()))
}

/// Write a private file atomically ([`enjin_sys::fs::write_private`]): created 0600 under a
/// temporary name of its own, synced, renamed into place and the directory synced, so it is
/// never readable by others, not even for a moment, and a crash leaves the old file or the new.
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    enjin_sys::fs::write_private(path, contents.as_bytes())
        .map_err(|e| PkiError::Write { path: path.to_path_buf(), source: e })
}

/// Read a private file, refusing one that others can read.
pub fn read_private(path: &Path) -> Result<String, PkiError> {
    let meta = fs::metadata(path).map_err(|e| PkiError::Read { path: path.to_path_buf(), source: e })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::Exposed { path: path.to_path_buf(), mode });
    }
    fs::read_to_string(path).map_err(|e| PkiError::Read { path: path.to_path_buf(), source: e })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reloaded_ca_issues_under_the_same_name_and_keys_stay_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = RingCa::load_or_create(dir.path(), 1).expect("create");
        let mode = fs::metadata(key_file(dir.path(), 1)).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = RingCa::load_or_create(dir.path(), 1).expect("reload");
        assert_eq!(ca.cert_pem(), again.cert_pem());
        let issued =
            again.issue("host-1", &["localhost".into(), "127.0.0.1".into()], Duration::from_secs(3600));
        let issued = issued.expect("issue");
        assert!(issued.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(issued.key_pem.contains("PRIVATE KEY"));
        assert!(!format!("{issued:?}").contains("PRIVATE KEY"), "Debug never shows the key");
    }

    #[test]
    fn half_a_ca_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = RingCa::load_or_create(dir.path(), 1).expect("create");
        let key = fs::read(key_file(dir.path(), 1)).expect("key");
        fs::remove_file(cert_file(dir.path(), 1)).expect("lose the certificate");
        let err = RingCa::load_or_create(dir.path(), 1).map(|_| ()).expect_err("refused");
        assert!(matches!(err, PkiError::HalfCa { .. }), "{err}");
        assert_eq!(fs::read(key_file(dir.path(), 1)).expect("key"), key, "the key is not overwritten");
        fs::write(cert_file(dir.path(), 1), ca.cert_pem()).expect("restore");
        fs::remove_file(key_file(dir.path(), 1)).expect("lose the key");
        let err = RingCa::load_or_create(dir.path(), 1).map(|_| ()).expect_err("refused");
        assert!(err.to_string().contains("does not"), "{err}");
        assert_eq!(fs::read_to_string(cert_file(dir.path(), 1)).expect("cert"), ca.cert_pem());
    }

    #[test]
    fn exposed_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k");
        fs::write(&p, "secret").expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(read_private(&p), Err(PkiError::Exposed { .. })));
        write_private(&p, "secret").expect("rewrite");
        assert_eq!(read_private(&p).expect("read"), "secret");
    }

    #[test]
    fn csrs_are_signed_with_the_cas_choice_of_name() {
        let ca = RingCa::generate(1).expect("ca");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["evil.example".to_string()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, "i-am-the-ca");
        let csr = params.serialize_request(&key).expect("csr").pem().expect("pem");
        let cert = ca.sign_csr("host-7", None, &csr, Duration::from_secs(60)).expect("signed");
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(matches!(
            ca.sign_csr("x", None, "garbage", Duration::from_secs(60)),
            Err(PkiError::BadCsr(_))
        ));
        let fresh = new_csr().expect("csr");
        let key = "ab".repeat(32);
        ca.sign_csr("host-7", Some(&key), &fresh.csr_pem, Duration::from_secs(60)).expect("bound");
        assert!(matches!(
            ca.sign_csr("host-7", Some("AB"), &fresh.csr_pem, Duration::from_secs(60)),
            Err(PkiError::BadKeyName(_))
        ));
    }

    #[test]
    fn names_are_checked() {
        let ca = RingCa::generate(2).expect("ca");
        assert!(matches!(ca.issue("", &[], Duration::from_secs(60)), Err(PkiError::BadName(_))));
    }
}
