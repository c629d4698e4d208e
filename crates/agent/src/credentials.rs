//! A member's credentials kept fresh without its parent's help: its certificate is renewed
//! over the bus when two thirds of its life have passed, and its bus key is rotated when it
//! is older than the configured age — both by signed requests to the ring's key service
//! ([`enjin_bus::renewal`]). New files replace the old ones atomically, private ones 0600,
//! and the bus client reconnects with the new certificate at once.
//!
//! A rotation writes the new key to `bus.key.next` before asking; if the agent dies between
//! the key service's answer and the rename, its parent finishes the rotation when it prepares
//! the agent again (`BusAuthority::enroll_local` adopts a `bus.key.next` the ring already
//! knows).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use enjin_bus::client::BusClient;
use enjin_bus::identity::Identity;
use enjin_bus::node::BusNode;
use enjin_bus::renewal::{self, CERTIFICATE_TOPIC, CertificateRequest, KeyReply, ROTATE_TOPIC};
use enjin_bus::tls::{self, TlsMaterial};

/// How long a request to the key service may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed renewal, the next try comes this long after …
const RETRY_MIN: Duration = Duration::from_secs(5);
/// … doubling up to this.
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Sleep at most this long at a time, so a clock that jumps is noticed.
const WAKE_AT_LEAST_EVERY: Duration = Duration::from_secs(600);

/// Why credentials could not be renewed or rotated.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The request could not be sent, or no answer came within 10 s. The current credentials
    /// stay in use; [`Credentials::keep_fresh`] tries again with backoff.
    #[error("the key service did not answer: {0}")]
    Request(#[from] enjin_bus::node::NodeError),
    /// An answer came from a key that is not a parent of the ring; it is ignored.
    #[error("the answer is not signed by a parent key of the ring")]
    NotFromParent,
    /// The key service answered with an error (its text).
    #[error("the key service refused: {0}")]
    Refused(String),
    /// The request could not be encoded, the answer does not decode or carries no certificate,
    /// or the new TLS material would not make a working client; nothing was replaced.
    #[error("the key service's answer is unreadable: {0}")]
    Unreadable(String),
    /// The certificate received is not bound to the key it was asked for (its short id).
    #[error("the new certificate is not bound to key {0}")]
    WrongKey(String),
    /// A credential file could not be read, written or renamed.
    #[error("{path}: {error}")]
    File {
        /// The file.
        path: PathBuf,
        /// The error from the filesystem, as text.
        error: String,
    },
    /// A new bus key or TLS key and signing request could not be generated.
    #[error("cannot make a key: {0}")]
    Key(String),
    /// The bus client refused the new TLS material after the files were written.
    #[error(transparent)]
    Client(#[from] enjin_bus::client::ClientError),
}

/// Where a member's credentials live, and how old its key may get.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The directory holding `bus.key`, `tls.key`, `tls.crt` and `ca.crt`.
    pub dir: PathBuf,
    /// Rotate the bus key once it is this old (by its file's age); `None`: never on its own.
    pub rotate_key_after: Option<Duration>,
}

impl Credentials {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Keep the credentials fresh for as long as the agent runs.
    pub async fn keep_fresh(self, node: Arc<BusNode>, client: Arc<BusClient>) {
        let mut retry = RETRY_MIN;
        loop {
            let wait = self.next_due().min(WAKE_AT_LEAST_EVERY);
            tokio::time::sleep(wait).await;
            if !self.next_due().is_zero() {
                continue;
            }
            let result = if self.key_due() {
                self.rotate(&node, &client).await
            } else {
                self.renew(&node, &client).await
            };
            match result {
                Ok(()) => retry = RETRY_MIN,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?retry, "credentials not renewed");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// How long until something is due: the certificate's renewal (two thirds into its life,
    /// counted from when the file was written) or the key's rotation.
    fn next_due(&self) -> Duration {
        let now = SystemTime::now();
        let renew_at = self.certificate_renewal_time();
        let rotate_at = self
            .rotate_key_after
            .and_then(|age| modified(&self.path("bus.key")).map(|written| written + age));
        [renew_at, rotate_at]
            .into_iter()
            .flatten()
            .min()
            .map_or(Duration::ZERO, |at| at.duration_since(now).unwrap_or(Duration::ZERO))
    }

    fn certificate_renewal_time(&self) -> Option<SystemTime> {
        let path = self.path("tls.crt");
        let written = modified(&path)?;
        let pem = std::fs::read_to_string(&path).ok()?;
        let not_after = tls::first_certificate_der(&pem).and_then(|der| tls::certificate_not_after(&der))?;
        let end = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after).ok()?);
        let life = end.duration_since(written).unwrap_or(Duration::ZERO);
        Some(written + life * 2 / 3)
    }

    fn key_due(&self) -> bool {
        let Some(age) = self.rotate_key_after else { return false };
        modified(&self.path("bus.key"))
            .and_then(|written| SystemTime::now().duration_since(written).ok())
            .is_some_and(|elapsed| elapsed >= age)
    }

    /// Ask for a certificate for the current key, and use it.
    pub async fn renew(&self, node: &BusNode, client: &BusClient) -> Result<(), CredentialError> {
        let csr = enjin_pki::new_csr().map_err(|e| CredentialError::Key(e.to_string()))?;
        let payload = serde_json::to_vec(&CertificateRequest { csr_pem: csr.csr_pem.clone() })
            .map_err(|e| CredentialError::Unreadable(e.to_string()))?;
        let reply = ask(node, CERTIFICATE_TOPIC, payload).await?;
        let cert_pem = certificate_for(&reply, &node.key_id())?;
        self.install(&csr.key_pem, &cert_pem, client)?;
        tracing::info!(not_after = ?reply.not_after, "certificate renewed");
        Ok(())
    }

    /// Replace the bus key with a new one, and take the certificate that goes with it.
    pub async fn rotate(&self, node: &BusNode, client: &BusClient) -> Result<(), CredentialError> {
        let old = node.key_id();
        let fresh = Identity::generate().map_err(|e| CredentialError::Key(e.to_string()))?;
        let next = self.path("bus.key.next");
        let _ = std::fs::remove_file(&next);
        fresh.save(&next).map_err(|e| CredentialError::File { path: next.clone(), error: e.to_string() })?;
        let csr = enjin_pki::new_csr().map_err(|e| CredentialError::Key(e.to_string()))?;
        let request = renewal::rotate_request(node.bundle().ring, &old, &fresh, csr.csr_pem.clone());
        let payload = serde_json::to_vec(&request).map_err(|e| CredentialError::Unreadable(e.to_string()))?;
        let reply = match ask(node, ROTATE_TOPIC, payload).await {
            Ok(reply) => reply,
            Err(e) => {
                let _ = std::fs::remove_file(&next);
                return Err(e);
            }
        };
        let cert_pem = certificate_for(&reply, &fresh.key_id())?;
        // Sign with the new key only once this node's trust knows it: receivers get the same
        // bundle on the same topic, so by then theirs is on its way too.
        if let Some(version) = reply.bundle_version
            && let Err(e) = node.wait_for_trust(version, REQUEST_TIMEOUT).await
        {
            tracing::warn!(error = %e, "the bundle with the new key has not arrived; using the key anyway");
        }
        let key_path = self.path("bus.key");
        enjin_sys::fs::rename_durable(&next, &key_path)
            .map_err(|e| CredentialError::File { path: key_path.clone(), error: e.to_string() })?;
        node.adopt_identity(fresh);
        self.install(&csr.key_pem, &cert_pem, client)?;
        tracing::info!(old = %old.short(), new = %node.key_id().short(), "bus key rotated");
        Ok(())
    }

    /// Write the new TLS key and certificate, and reconnect with them.
    fn install(&self, key_pem: &str, cert_pem: &str, client: &BusClient) -> Result<(), CredentialError> {
        let file_err = |path: &Path, e: &dyn std::fmt::Display| CredentialError::File {
            path: path.to_path_buf(),
            error: e.to_string(),
        };
        let ca_path = self.path("ca.crt");
        let ca_pem = std::fs::read_to_string(&ca_path).map_err(|e| file_err(&ca_path, &e))?;
        let material = TlsMaterial { ca_pem, cert_pem: cert_pem.to_string(), key_pem: key_pem.to_string() };
        // Refuse material that would not make a client, before replacing working files.
        tls::client_config(&material).map_err(|e| CredentialError::Unreadable(e.to_string()))?;
        let key_path = self.path("tls.key");
        enjin_pki::write_private(&key_path, key_pem).map_err(|e| file_err(&key_path, &e))?;
        let cert_path = self.path("tls.crt");
        enjin_pki::write_private(&cert_path, cert_pem).map_err(|e| file_err(&cert_path, &e))?;
        client.set_tls(&material)?;
        Ok(())
    }
}

/// Ask the key service, and read its answer if a parent key signed it.
async fn ask(node: &BusNode, topic: &str, payload: Vec<u8>) -> Result<KeyReply, CredentialError> {
    let env = node.request(topic, payload, REQUEST_TIMEOUT).await?;
    if !node.is_from_parent(&env) {
        return Err(CredentialError::NotFromParent);
    }
    let reply: KeyReply =
        serde_json::from_slice(env.payload()).map_err(|e| CredentialError::Unreadable(e.to_string()))?;
    if let Some(error) = reply.error {
        return Err(CredentialError::Refused(error));
    }
    Ok(reply)
}

/// The reply's certificate, if it is bound to `key`.
fn certificate_for(reply: &KeyReply, key: &enjin_bus::identity::KeyId) -> Result<String, CredentialError> {
    let pem = reply.cert_pem.clone().ok_or_else(|| CredentialError::Unreadable("no certificate".into()))?;
    let bound = tls::first_certificate_der(&pem).and_then(|der| tls::certificate_bound_key(&der));
    if bound.as_ref() != Some(key) {
        return Err(CredentialError::WrongKey(key.short()));
    }
    Ok(pem)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
