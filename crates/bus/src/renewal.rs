//! How a member keeps its place on the bus without its parent's help: it renews its
//! certificate before it expires, and rotates its own key. Both are requests to the ring's key
//! service, signed by the member's current key like everything else it publishes:
//!
//! - [`CERTIFICATE_TOPIC`]: a [`CertificateRequest`] (a CSR for a fresh TLS key) answered with
//!   a certificate bound to the requesting key, under the common name the key service gives
//!   the key's node; the member's role never comes from the request.
//! - [`ROTATE_TOPIC`]: a [`RotateRequest`] naming the new key, with the new key's signature
//!   over the old and new key ids ([`rotation_proof_message`]) — proof that the requester holds
//!   the new private key, so nobody can rotate their key onto a key they do not own — and a CSR.
//!   The key service records the new key, gives the old one an overlap (it stays accepted for
//!   that long, so messages in flight still verify), publishes the trust bundle and answers
//!   with a certificate bound to the new key.
//!
//! Either reply is a [`KeyReply`], signed by a parent key and sealed for the requester's own
//! inbox. Nothing here touches files or the network.

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, KeyId};

/// Where members ask for a new certificate for their current key.
pub const CERTIFICATE_TOPIC: &str = "keys.certificate";
/// Where members ask to replace their key with a new one.
pub const ROTATE_TOPIC: &str = "keys.rotate";

/// A certificate for the requesting key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    /// PEM certificate signing request for the member's new TLS key. Only its public key is
    /// used.
    pub csr_pem: String,
}

/// Replace the requesting key with `new_key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// The new public key, hex.
    pub new_key: String,
    /// The new key's Ed25519 signature over [`rotation_proof_message`], hex.
    pub proof: String,
    /// PEM certificate signing request for the TLS key to use with the new key.
    pub csr_pem: String,
}

/// The key service's answer to either request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyReply {
    /// The new certificate, PEM; absent when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<String>,
    /// When the certificate expires, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
    /// The trust bundle version that accepts the new key (rotation only): wait for it before
    /// signing with the new key, so receivers know the key when its first message arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_version: Option<u64>,
    /// Why the request was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl KeyReply {
    /// A refusal carrying `error` and nothing else (no certificate, no bundle version).
    pub fn refused(error: impl Into<String>) -> Self {
        KeyReply { cert_pem: None, not_after: None, bundle_version: None, error: Some(error.into()) }
    }
}

/// What the new key signs to prove it is held by whoever rotates onto it: bound to the ring,
/// the old key and the new key, so a proof is good for exactly one rotation.
pub fn rotation_proof_message(ring: u8, old: &KeyId, new: &KeyId) -> Vec<u8> {
    format!("enjin rotate key v1 ring {ring} from {old} to {new}").into_bytes()
}

/// A rotation request from the holder of `old` onto `new` (its signature is made here).
pub fn rotate_request(ring: u8, old: &KeyId, new: &Identity, csr_pem: String) -> RotateRequest {
    let new_key = new.key_id();
    let proof = new.sign(&rotation_proof_message(ring, old, &new_key));
    RotateRequest { new_key: new_key.to_string(), proof: crate::hex::encode(&proof), csr_pem }
}

/// Why a rotation request is not acceptable on its face.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotateError {
    /// `new_key` is not 64 lowercase hex digits, or not a point on the curve.
    #[error("new_key: not a hex Ed25519 public key")]
    BadKey,
    /// `new_key` is the requester's current key: nothing would rotate.
    #[error("new_key: the new key is the old key")]
    SameKey,
    /// `proof` is not hex, or not 64 bytes.
    #[error("proof: not a hex Ed25519 signature")]
    BadProofEncoding,
    /// The proof does not verify (strictly) under `new_key` over this ring's, this old key's
    /// and this new key's [`rotation_proof_message`]: the requester has not shown it holds the
    /// new secret, or the proof was made for another rotation.
    #[error("proof: the new key's signature does not verify")]
    BadProof,
}

/// The new key of a rotation request from `old`, once its proof verifies.
pub fn verify_rotation(ring: u8, old: &KeyId, req: &RotateRequest) -> Result<KeyId, RotateError> {
    let new: KeyId = req.new_key.parse().map_err(|_| RotateError::BadKey)?;
    let verifying = new.verifying_key().ok_or(RotateError::BadKey)?;
    if new == *old {
        return Err(RotateError::SameKey);
    }
    let bytes: [u8; 64] = crate::hex::decode(&req.proof)
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or(RotateError::BadProofEncoding)?;
    let signature = ed25519_dalek::Signature::from_bytes(&bytes);
    verifying
        .verify_strict(&rotation_proof_message(ring, old, &new), &signature)
        .map_err(|_| RotateError::BadProof)?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_proof_is_good_for_one_rotation_only() {
        let old = Identity::generate().expect("old").key_id();
        let new = Identity::generate().expect("new");
        let req = rotate_request(1, &old, &new, "csr".into());
        assert_eq!(verify_rotation(1, &old, &req), Ok(new.key_id()));
        // Another ring, another old key: the same proof does not verify.
        assert_eq!(verify_rotation(2, &old, &req), Err(RotateError::BadProof));
        let other = Identity::generate().expect("other").key_id();
        assert_eq!(verify_rotation(1, &other, &req), Err(RotateError::BadProof));
        // Someone else's key, with a proof made by a key they hold: refused.
        let victim = Identity::generate().expect("victim").key_id();
        let forged = RotateRequest { new_key: victim.to_string(), ..req.clone() };
        assert_eq!(verify_rotation(1, &old, &forged), Err(RotateError::BadProof));
        let same = rotate_request(1, &new.key_id(), &new, "csr".into());
        assert_eq!(verify_rotation(1, &new.key_id(), &same), Err(RotateError::SameKey));
        let garbled = RotateRequest { proof: "zz".into(), ..req };
        assert_eq!(verify_rotation(1, &old, &garbled), Err(RotateError::BadProofEncoding));
    }

    proptest! {
        #[test]
        fn arbitrary_requests_never_panic(new_key in ".{0,80}", proof in ".{0,160}") {
            let old = KeyId::from_bytes([7u8; 32]);
            let req = RotateRequest { new_key, proof, csr_pem: String::new() };
            prop_assert!(verify_rotation(1, &old, &req).is_err());
        }
    }
}
