//! "We trust the ring that runs us": a node's trust set is a bundle its parent ring gave it at
//! birth, changed only by updates that a parent key signed. The [`Verifier`] decides, for every
//! envelope received, whether it came from a key in that set and is neither tampered with,
//! replayed nor stale; the [`Publisher`] signs what this node sends.
//!
//! Invariants: a member of the ring can never change the trust set (not its own entry, not its
//! peers', not its parent's); an update is applied whole or not at all; and only envelopes whose
//! signature verified ever move the replay state, so forged traffic cannot make genuine traffic
//! look replayed.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::counters::{Counters, RejectReason};
use crate::envelope::{self, Envelope, SIGNATURE_DOMAIN, SealError, SignatureError};
use crate::identity::{Identity, KeyId};

/// The topic trust updates are published on; their payload is a JSON [`TrustUpdate`]. It is
/// under the hub's retained prefix (`state.`): a node that (re)subscribes gets the last update
/// at once, so parents publish whole bundles (`Replace`) there and a reconnecting node is
/// brought level, never left half-applied.
pub const TRUST_UPDATE_TOPIC: &str = "state.trust";
/// Longest key label, in bytes; labels end up in logs, so they are short and printable.
pub const MAX_LABEL_LEN: usize = 128;

/// What a key may do in this ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// A key of the supervising (parent) ring: may publish, and alone may change trust.
    Parent,
    /// A peer in this ring: may publish, never change trust.
    Member,
}

/// One whitelisted key.
///
/// The serde types here refuse unknown fields: trust data fails closed, so an older node never
/// silently ignores a restriction a newer parent added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKey {
    /// The key itself: its Ed25519 public key, which is also how envelopes name their sender.
    pub id: KeyId,
    /// Whether it may change trust ([`KeyRole::Parent`]) or only publish.
    pub role: KeyRole,
    /// Who holds the key, for logs and operators (at most [`MAX_LABEL_LEN`] bytes, no control
    /// characters); never used to decide anything.
    pub label: String,
    /// Set on rotation to the end of the overlap window (receiver's clock, ms since the epoch):
    /// the key is accepted while `now < not_after_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after_ms: Option<i64>,
    /// Set by a [`TrustChange::Revoke`]: the key is refused from then on. A revoked key stays
    /// listed so that it cannot come back through [`TrustChange::AddKey`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

impl TrustedKey {
    /// A key that is neither revoked nor on its way out (no `not_after_ms`).
    pub fn new(id: KeyId, role: KeyRole, label: impl Into<String>) -> Self {
        Self { id, role, label: label.into(), not_after_ms: None, revoked: false }
    }

    /// Whether envelopes signed by this key are accepted at `now_ms`.
    pub fn usable_at(&self, now_ms: i64) -> bool {
        !self.revoked && self.not_after_ms.is_none_or(|end| now_ms < end)
    }
}

/// A ring's trust set, as a node receives it from its parent at birth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustBundle {
    /// The ring whose nodes hold this bundle; envelopes for any other ring are refused.
    pub ring: u8,
    /// Grows with every applied update; updates at or below it are ignored.
    pub version: u64,
    /// Every key the ring knows, revoked ones included; ids are unique and at least one
    /// parent key is not revoked (see [`TrustBundle::validate`]).
    pub keys: Vec<TrustedKey>,
}

/// Why a trust bundle is not usable.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("trust bundle is not valid JSON: {0}")]
    /// Not JSON, not the bundle's shape, or a field this node does not know (unknown fields
    /// are refused).
    Json(#[from] serde_json::Error),
    #[error("trust bundle lists key {0} twice")]
    /// The same key appears in two entries, so which role or revocation applies is ambiguous.
    DuplicateKey(KeyId),
    #[error("trust bundle key {0} is not a usable ed25519 public key")]
    /// The id does not decode to an Ed25519 point, or decodes to a small-order (weak) one under
    /// which a signature proves nothing.
    InvalidKey(KeyId),
    #[error("trust bundle key {0} has a label longer than {MAX_LABEL_LEN} bytes or with control characters")]
    /// The key's label is too long or contains a control character (it would garble logs).
    Label(KeyId),
    #[error("trust bundle for ring {0} has no usable parent key, so it could never be updated again")]
    /// Every parent key of the ring (named by number) is revoked or missing, or, after an
    /// update, none is usable now.
    NoParentKey(u8),
}

impl TrustBundle {
    /// Parses and validates a bundle from JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, BundleError> {
        let bundle: Self = serde_json::from_slice(bytes)?;
        bundle.validate()?;
        Ok(bundle)
    }

    /// The entry for `id`, whether or not it is still usable; `None` if the bundle never
    /// listed it.
    pub fn key(&self, id: &KeyId) -> Option<&TrustedKey> {
        self.keys.iter().find(|k| k.id == *id)
    }

    /// Whether `id` is a parent key of this ring that is not revoked: the one check, wherever
    /// a member must know that what it got comes from its parent (only the parent says what
    /// runs, routes and resolves, and serves packages).
    pub fn is_parent(&self, id: &KeyId) -> bool {
        self.key(id).is_some_and(|k| k.role == KeyRole::Parent && !k.revoked)
    }

    /// Checks what can be checked without a clock: keys are unique real Ed25519 public keys,
    /// labels are short and printable, and at least one parent key is not revoked.
    pub fn validate(&self) -> Result<(), BundleError> {
        self.index().map(|_| ())
    }

    /// The bundle's keys by id, with their parsed public keys; fails as `validate` does.
    fn index(&self) -> Result<HashMap<KeyId, (usize, VerifyingKey)>, BundleError> {
        let mut index = HashMap::with_capacity(self.keys.len());
        for (i, key) in self.keys.iter().enumerate() {
            // Small-order keys are refused: signatures under them prove nothing.
            let vk = key.id.verifying_key().filter(|vk| !vk.is_weak());
            let vk = vk.ok_or(BundleError::InvalidKey(key.id))?;
            if key.label.len() > MAX_LABEL_LEN || key.label.chars().any(char::is_control) {
                return Err(BundleError::Label(key.id));
            }
            match index.entry(key.id) {
                Entry::Occupied(_) => return Err(BundleError::DuplicateKey(key.id)),
                Entry::Vacant(v) => v.insert((i, vk)),
            };
        }
        if !self.keys.iter().any(|k| k.role == KeyRole::Parent && !k.revoked) {
            return Err(BundleError::NoParentKey(self.ring));
        }
        Ok(index)
    }

    /// The bundle after `update`, validated, or why the update cannot apply. Pure, so that a
    /// parent can compute exactly the bundle its children will hold, and so that the verifier
    /// can swap bundles only after the whole result is known to be good.
    pub fn apply(&self, update: &TrustUpdate, now_ms: i64) -> Result<TrustBundle, TrustError> {
        if update.version <= self.version {
            return Err(TrustError::VersionNotNewer { update: update.version, current: self.version });
        }
        let mut next = self.clone();
        next.version = update.version;
        match &update.change {
            TrustChange::AddKey(key) => {
                if self.key(&key.id).is_some() {
                    return Err(TrustError::KeyExists(key.id));
                }
                next.keys.push(key.clone());
            }
            TrustChange::Rotate { old, new, overlap_ms } => {
                if *overlap_ms < 0 {
                    return Err(TrustError::NegativeOverlap(*overlap_ms));
                }
                if self.key(&new.id).is_some() {
                    return Err(TrustError::KeyExists(new.id));
                }
                let entry =
                    next.keys.iter_mut().find(|k| k.id == *old).ok_or(TrustError::UnknownKey(*old))?;
                if entry.revoked {
                    return Err(TrustError::RotateRevoked(*old));
                }
                // A rotation replaces a principal's key; changing its role is a different act
                // (add the key, revoke the old) and should be spelled as such.
                if entry.role != new.role {
                    return Err(TrustError::RoleChange { old: *old, new: new.id });
                }
                // Never extends an overlap an earlier rotation already set.
                let end = now_ms.saturating_add(*overlap_ms);
                entry.not_after_ms = Some(entry.not_after_ms.map_or(end, |t| t.min(end)));
                next.keys.push(new.clone());
            }
            TrustChange::Revoke(id) => {
                let entry = next.keys.iter_mut().find(|k| k.id == *id).ok_or(TrustError::UnknownKey(*id))?;
                entry.revoked = true;
            }
            TrustChange::Replace(bundle) => {
                if bundle.ring != self.ring {
                    return Err(TrustError::ReplaceRing { bundle: bundle.ring, ring: self.ring });
                }
                if bundle.version != update.version {
                    return Err(TrustError::ReplaceVersion {
                        bundle: bundle.version,
                        update: update.version,
                    });
                }
                next = bundle.clone();
            }
        }
        next.validate().map_err(TrustError::Invalid)?;
        if !next.keys.iter().any(|k| k.role == KeyRole::Parent && k.usable_at(now_ms)) {
            return Err(TrustError::Invalid(BundleError::NoParentKey(self.ring)));
        }
        Ok(next)
    }
}

/// A change to a ring's trust set, signed by a parent key; the JSON payload of an envelope on
/// [`TRUST_UPDATE_TOPIC`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustUpdate {
    /// The bundle version after this update. Versions need not be consecutive: a node that
    /// missed some updates applies the next one it sees, and a `Replace` brings it level.
    pub version: u64,
    /// What the update does to the bundle.
    pub change: TrustChange,
}

/// The one change a [`TrustUpdate`] makes. Every variant is checked by [`TrustBundle::apply`],
/// which refuses a result with no usable parent key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TrustChange {
    /// Trusts a new key; refused if the key is already listed (even revoked: un-revoking takes
    /// a `Replace`, so it cannot happen by accident).
    AddKey(TrustedKey),
    /// Adds `new` and lets `old` (same role) keep working for `overlap_ms` more, so messages in
    /// flight and nodes that switch late are not cut off.
    Rotate {
        /// The key being retired; must be listed and not revoked.
        old: KeyId,
        /// Its successor, with the same role; must not be listed yet.
        new: TrustedKey,
        /// How long `old` stays usable, in milliseconds from when the receiver applies the
        /// update (its own clock); never negative, and never extends an earlier rotation's end.
        overlap_ms: i64,
    },
    /// Stops trusting a key at once.
    Revoke(KeyId),
    /// Replaces the whole set (same ring, `version` equal to the update's): the level-triggered
    /// way to bring a node that missed updates back in line.
    Replace(TrustBundle),
}

impl TrustUpdate {
    /// The payload to sign and publish on [`TRUST_UPDATE_TOPIC`].
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// Why a trust update was not applied.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("trust update arrived on topic {0:?}, expected {TRUST_UPDATE_TOPIC:?}")]
    /// The envelope was on another topic (named here); it is not a trust update at all.
    WrongTopic(String),
    /// The update was signed for another ring than this node's.
    #[error("trust update is for ring {envelope}, this node is in ring {bundle}")]
    WrongRing {
        /// The ring the envelope was addressed to.
        envelope: u8,
        /// The ring of this node's bundle.
        bundle: u8,
    },
    #[error("trust update from key {0} refused: only a current parent key may change trust")]
    /// The signer (named here) is not a parent key usable now: a member, a stranger, a revoked
    /// or expired parent key. Counted as an `untrusted_update` rejection.
    NotParent(KeyId),
    #[error("trust update signature is not valid: {0}")]
    /// The envelope's signature does not verify under the parent key it names: tampered with,
    /// or never checked by [`Verifier::accept`]. Counted as `tampered`.
    Signature(SignatureError),
    #[error("trust update payload is not a valid trust update: {0}")]
    /// The signed payload is not a JSON [`TrustUpdate`] this node understands.
    Payload(serde_json::Error),
    /// The update is not newer than the bundle. [`Verifier::apply_update`] treats this as an
    /// already-applied update (`Ok(false)`); only [`TrustBundle::apply`] returns it.
    #[error("trust update version {update} is not above the bundle's version {current}")]
    VersionNotNewer {
        /// The update's version.
        update: u64,
        /// The version of the bundle it was applied to.
        current: u64,
    },
    #[error("trust update adds key {0}, which the bundle already lists")]
    /// An added key, or a rotation's new key, is already listed (possibly revoked).
    KeyExists(KeyId),
    #[error("trust update names key {0}, which the bundle does not list")]
    /// A rotation or revocation names a key the bundle does not list.
    UnknownKey(KeyId),
    #[error("trust update rotates key {0}, which is revoked")]
    /// A rotation starts from a revoked key: a revoked principal cannot hand on its trust.
    RotateRevoked(KeyId),
    /// A rotation would change the principal's role; that is an add and a revoke instead.
    #[error("trust update rotates key {old} to {new} with a different role")]
    RoleChange {
        /// The key being retired.
        old: KeyId,
        /// The successor whose role differs from `old`'s.
        new: KeyId,
    },
    #[error("trust update rotation overlap is {0} ms, must not be negative")]
    /// A rotation's `overlap_ms`, which is below zero.
    NegativeOverlap(i64),
    /// A `Replace` carries another ring's bundle.
    #[error("trust update replaces the bundle with one for ring {bundle}, this node is in ring {ring}")]
    ReplaceRing {
        /// The ring of the replacement bundle.
        bundle: u8,
        /// The ring of the bundle being replaced.
        ring: u8,
    },
    /// A `Replace` carries a bundle whose version differs from the update's.
    #[error("trust update version {update} replaces the bundle with one of version {bundle}")]
    ReplaceVersion {
        /// The replacement bundle's own version.
        bundle: u64,
        /// The update's version, which the bundle's must equal.
        update: u64,
    },
    #[error("trust update would leave an invalid bundle: {0}")]
    /// The bundle the update would produce fails validation (for instance, it would leave no
    /// usable parent key); nothing was changed.
    Invalid(BundleError),
}

/// Tuning of a [`Verifier`]; the default accepts envelopes up to 30 s off the receiver's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifierConfig {
    /// How far an envelope's timestamp may be from the receiver's clock, either way. It bounds
    /// how long a captured envelope can be replayed to a receiver that lost its replay state
    /// (after a restart), and how much clock skew the ring tolerates.
    pub time_window_ms: u64,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self { time_window_ms: 30_000 }
    }
}

/// Decides which received envelopes to deliver, and keeps the trust set up to date.
///
/// Owned by one task (`&mut self`); the counters are shared for `/metrics`. Replay state is in
/// memory only: after a restart, replays are bounded by the time window alone.
#[derive(Debug)]
pub struct Verifier {
    bundle: TrustBundle,
    /// Index into `bundle.keys` and the parsed public key, by key id.
    keys: HashMap<KeyId, (usize, VerifyingKey)>,
    /// Highest sequence number accepted from each sender. Kept for keys that leave the bundle,
    /// so that re-adding one cannot reopen its old messages to replay.
    last_seq: HashMap<KeyId, u64>,
    config: VerifierConfig,
    counters: Arc<Counters>,
}

impl Verifier {
    /// A verifier trusting `bundle`, with no replay state yet; fails if the bundle does not
    /// validate. Deliveries and rejections are recorded in `counters`.
    pub fn new(
        bundle: TrustBundle,
        config: VerifierConfig,
        counters: Arc<Counters>,
    ) -> Result<Self, BundleError> {
        let keys = bundle.index()?;
        Ok(Self { bundle, keys, last_seq: HashMap::new(), config, counters })
    }

    /// The trust set in force: the birth bundle with every applied update.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// Adopt a newer bundle that another verifier of the same node already applied (from its
    /// parent, through [`Verifier::apply_update`]), keeping this verifier's replay state.
    /// Returns whether it changed anything; an older or equal version is ignored.
    pub fn adopt(&mut self, bundle: &TrustBundle) -> Result<bool, BundleError> {
        if bundle.ring != self.bundle.ring || bundle.version <= self.bundle.version {
            return Ok(false);
        }
        let keys = bundle.index()?;
        self.bundle = bundle.clone();
        self.keys = keys;
        Ok(true)
    }

    /// The counters this verifier records into, shared with whoever renders `/metrics`.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Decodes and checks one received envelope, counting it as delivered or rejected.
    pub fn accept(&mut self, bytes: &[u8], now_ms: i64) -> Result<Envelope, RejectReason> {
        let result = self.check(bytes, now_ms);
        match &result {
            Ok(_) => self.counters.record_delivered(),
            Err(reason) => self.counters.record_rejected(*reason),
        }
        result
    }

    fn check(&mut self, bytes: &[u8], now_ms: i64) -> Result<Envelope, RejectReason> {
        let ring = self.bundle.ring;
        let reject = |reason: RejectReason, detail: &dyn std::fmt::Display| {
            // Debug, not warn: whoever can reach the socket controls how often this fires.
            tracing::debug!(ring, reason = reason.label(), %detail, "bus envelope rejected");
            reason
        };
        let (env, body_len) =
            envelope::decode_with_body_len(bytes).map_err(|e| reject(RejectReason::Malformed, &e))?;
        let sender = env.sender();
        if env.signature().is_none() {
            return Err(reject(RejectReason::Unsigned, &sender.short()));
        }
        if env.ring() != self.bundle.ring {
            return Err(reject(RejectReason::WrongRing, &env.ring()));
        }
        let Some((index, key)) = self.keys.get(&sender) else {
            return Err(reject(RejectReason::UnknownKey, &sender.short()));
        };
        if !self.bundle.keys.get(*index).is_some_and(|k| k.usable_at(now_ms)) {
            return Err(reject(RejectReason::RevokedKey, &sender.short()));
        }
        // Verify the bytes as received rather than a re-encoding, so what is checked is exactly
        // what arrived and does not depend on the encoder agreeing with the decoder.
        let body = bytes.get(..body_len).ok_or(RejectReason::Malformed)?;
        let mut signed = Vec::with_capacity(SIGNATURE_DOMAIN.len() + body.len());
        signed.extend_from_slice(SIGNATURE_DOMAIN);
        signed.extend_from_slice(body);
        env.verify_with(key, &signed).map_err(|e| reject(RejectReason::Tampered, &e))?;
        // Only now, with the signature verified, may this envelope touch replay state.
        if self.last_seq.get(&sender).is_some_and(|last| env.seq() <= *last) {
            return Err(reject(RejectReason::Replayed, &env.seq()));
        }
        if now_ms.abs_diff(env.timestamp_ms()) > self.config.time_window_ms {
            return Err(reject(RejectReason::Stale, &env.timestamp_ms()));
        }
        self.last_seq.insert(sender, env.seq());
        Ok(env)
    }

    /// Applies a trust update carried by `env`, which must have come through [`Verifier::accept`]
    /// (that is what rules out replays and stale updates). Returns whether the bundle changed:
    /// an update at or below the current version is ignored, so re-sending updates is harmless.
    ///
    /// The sender must be a parent key usable now; anything else is counted as
    /// `untrusted_update` and refused, so no member can whitelist a key, rotate its own or add
    /// keys for its peers or parent. The signature is checked again here, cheaply, so that an
    /// envelope that skipped `accept` by mistake still cannot change trust.
    pub fn apply_update(&mut self, env: &Envelope, now_ms: i64) -> Result<bool, TrustError> {
        if env.topic() != TRUST_UPDATE_TOPIC {
            return Err(TrustError::WrongTopic(env.topic().to_string()));
        }
        if env.ring() != self.bundle.ring {
            return Err(TrustError::WrongRing { envelope: env.ring(), bundle: self.bundle.ring });
        }
        let sender = env.sender();
        let parent = self.keys.get(&sender).filter(|(index, _)| {
            self.bundle.keys.get(*index).is_some_and(|k| k.role == KeyRole::Parent && k.usable_at(now_ms))
        });
        let Some((_, key)) = parent else {
            self.counters.record_rejected(RejectReason::UntrustedUpdate);
            tracing::warn!(
                ring = self.bundle.ring,
                sender = %sender.short(),
                "trust update from a non-parent key refused"
            );
            return Err(TrustError::NotParent(sender));
        };
        if let Err(e) = env.verify_with(key, &env.signed_message()) {
            self.counters.record_rejected(RejectReason::Tampered);
            return Err(TrustError::Signature(e));
        }
        let update: TrustUpdate = serde_json::from_slice(env.payload()).map_err(TrustError::Payload)?;
        if update.version <= self.bundle.version {
            tracing::debug!(
                ring = self.bundle.ring,
                version = update.version,
                current = self.bundle.version,
                "trust update already applied"
            );
            return Ok(false);
        }
        let next = self.bundle.apply(&update, now_ms)?;
        let keys = next.index().map_err(TrustError::Invalid)?;
        // Both halves are computed; swapping them is the only mutation.
        self.bundle = next;
        self.keys = keys;
        self.counters.record_trust_update_applied();
        tracing::info!(
            ring = self.bundle.ring,
            version = self.bundle.version,
            change = change_name(&update.change),
            sender = %sender.short(),
            "trust update applied"
        );
        Ok(true)
    }
}

fn change_name(change: &TrustChange) -> &'static str {
    match change {
        TrustChange::AddKey(_) => "add_key",
        TrustChange::Rotate { .. } => "rotate",
        TrustChange::Revoke(_) => "revoke",
        TrustChange::Replace(_) => "replace",
    }
}

/// Signs envelopes as this node, numbering them.
///
/// Sequence numbers must keep rising across restarts, or receivers that remember the old
/// process's numbers would reject the new one's as replays. Rather than persist a counter, a
/// publisher started with [`Publisher::starting_now`] numbers from the current Unix time in
/// microseconds: a restarted sender starts above everything it sent before, as long as it sent
/// on average less than one envelope per microsecond and the clock did not step back by more
/// than the gap. Both are weak assumptions, hence "survives restarts poorly": a sender whose
/// clock jumps backwards is rejected as replayed until it catches up (or receivers restart).
#[derive(Debug)]
pub struct Publisher {
    identity: Identity,
    ring: u8,
    next_seq: AtomicU64,
    counters: Arc<Counters>,
}

impl Publisher {
    /// A publisher signing as `identity` for `ring`, whose first envelope gets `first_seq`.
    /// Only tests and callers that persist their own counter want this; a node uses
    /// [`Publisher::starting_now`].
    pub fn new(identity: Identity, ring: u8, first_seq: u64, counters: Arc<Counters>) -> Self {
        Self { identity, ring, next_seq: AtomicU64::new(first_seq), counters }
    }

    /// A publisher whose sequence starts at the current Unix time in microseconds.
    pub fn starting_now(identity: Identity, ring: u8, counters: Arc<Counters>) -> Self {
        let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
        Self::new(identity, ring, u64::try_from(micros).unwrap_or(u64::MAX), counters)
    }

    /// The key this publisher signs with.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The ring every envelope it seals is addressed to.
    pub fn ring(&self) -> u8 {
        self.ring
    }

    /// Signs `payload` for `topic` with the next sequence number and returns the encoded
    /// envelope, counting it as published. A failed seal still uses up a number; receivers only
    /// need numbers to rise, not to be consecutive.
    pub fn seal(
        &self,
        topic: &str,
        reply_to: Option<&str>,
        payload: Vec<u8>,
        now_ms: i64,
    ) -> Result<Vec<u8>, SealError> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let env = Envelope::sign(&self.identity, self.ring, topic, seq, now_ms, reply_to, payload)?;
        self.counters.record_published();
        Ok(env.encode())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    const NOW: i64 = 1_700_000_000_000;
    const RING: u8 = 1;

    fn id(n: u8) -> Identity {
        Identity::from_secret_bytes(&[n; 32])
    }

    fn key(n: u8, role: KeyRole) -> TrustedKey {
        TrustedKey::new(id(n).key_id(), role, format!("key {n}"))
    }

    /// Parent key 1; members 2 and 3.
    fn bundle() -> TrustBundle {
        TrustBundle {
            ring: RING,
            version: 1,
            keys: vec![key(1, KeyRole::Parent), key(2, KeyRole::Member), key(3, KeyRole::Member)],
        }
    }

    fn verifier() -> Verifier {
        Verifier::new(bundle(), VerifierConfig::default(), Arc::new(Counters::new())).unwrap()
    }

    fn seal(n: u8, seq: u64, ts: i64) -> Vec<u8> {
        Envelope::sign(&id(n), RING, "node.status", seq, ts, None, b"up".to_vec()).unwrap().encode()
    }

    fn update_env(n: u8, seq: u64, update: &TrustUpdate) -> Envelope {
        let payload = update.to_json().unwrap();
        Envelope::sign(&id(n), RING, TRUST_UPDATE_TOPIC, seq, NOW, None, payload).unwrap()
    }

    /// Sends `update` signed by key `n` through accept and apply, as a node would.
    fn send_update(v: &mut Verifier, n: u8, seq: u64, update: &TrustUpdate) -> Result<bool, TrustError> {
        let env = v.accept(&update_env(n, seq, update).encode(), NOW).unwrap();
        v.apply_update(&env, NOW)
    }

    fn rejected(v: &Verifier, r: RejectReason) -> u64 {
        v.counters().rejected(r)
    }

    #[test]
    fn accepts_and_counts_a_good_envelope() {
        let mut v = verifier();
        let env = v.accept(&seal(2, 1, NOW), NOW).unwrap();
        assert_eq!((env.topic(), env.payload()), ("node.status", &b"up"[..]));
        assert_eq!(v.counters().delivered(), 1);
        assert_eq!(v.counters().rejected_total(), 0);
    }

    #[test]
    fn each_reject_reason_is_detected_and_counted() {
        let mut v = verifier();
        let good = seal(2, 10, NOW);

        assert_eq!(v.accept(b"garbage", NOW), Err(RejectReason::Malformed));

        let mut unsigned = good.clone();
        let flag = unsigned.len() - 65;
        unsigned[flag] = 0;
        unsigned.truncate(flag + 1);
        assert_eq!(v.accept(&unsigned, NOW), Err(RejectReason::Unsigned));

        let other_ring = Envelope::sign(&id(2), 2, "a", 1, NOW, None, vec![]).unwrap().encode();
        assert_eq!(v.accept(&other_ring, NOW), Err(RejectReason::WrongRing));

        assert_eq!(v.accept(&seal(9, 1, NOW), NOW), Err(RejectReason::UnknownKey));

        let mut tampered = good.clone();
        let payload_at = flag - 2;
        tampered[payload_at] ^= 0x20;
        assert_eq!(v.accept(&tampered, NOW), Err(RejectReason::Tampered));

        assert!(v.accept(&good, NOW).is_ok());
        assert_eq!(v.accept(&good, NOW), Err(RejectReason::Replayed));
        assert_eq!(v.accept(&seal(2, 9, NOW), NOW), Err(RejectReason::Replayed));

        assert_eq!(v.accept(&seal(2, 11, NOW - 30_001), NOW), Err(RejectReason::Stale));
        assert_eq!(v.accept(&seal(2, 12, NOW + 30_001), NOW), Err(RejectReason::Stale));
        assert!(v.accept(&seal(2, 13, NOW + 30_000), NOW).is_ok());

        let mut revoked = bundle();
        revoked.keys[2].revoked = true;
        let mut v2 = Verifier::new(revoked, VerifierConfig::default(), v.counters().clone()).unwrap();
        assert_eq!(v2.accept(&seal(3, 1, NOW), NOW), Err(RejectReason::RevokedKey));

        for (reason, n) in [
            (RejectReason::Malformed, 1),
            (RejectReason::Unsigned, 1),
            (RejectReason::WrongRing, 1),
            (RejectReason::UnknownKey, 1),
            (RejectReason::Tampered, 1),
            (RejectReason::Replayed, 2),
            (RejectReason::Stale, 2),
            (RejectReason::RevokedKey, 1),
            (RejectReason::UntrustedUpdate, 0),
        ] {
            assert_eq!(rejected(&v, reason), n, "{}", reason.label());
        }
        assert_eq!(v.counters().delivered(), 2);
    }

    #[test]
    fn rejected_envelopes_never_advance_replay_state() {
        let mut v = verifier();
        // A forgery claiming the highest possible seq: if it moved replay state, every genuine
        // envelope from key 2 would be refused from now on.
        let mut forged = seal(2, u64::MAX, NOW);
        let flag = forged.len() - 65;
        forged[flag + 1] ^= 1;
        assert_eq!(v.accept(&forged, NOW), Err(RejectReason::Tampered));
        // A stale envelope with a high seq must not block later, fresh ones either.
        assert_eq!(v.accept(&seal(2, 100, NOW - 60_000), NOW), Err(RejectReason::Stale));
        assert!(v.accept(&seal(2, 5, NOW), NOW).is_ok());
        // Replay state is per sender.
        assert!(v.accept(&seal(3, 1, NOW), NOW).is_ok());
    }

    #[test]
    fn member_cannot_change_trust() {
        let mut v = verifier();
        let newcomer = key(9, KeyRole::Member);
        let changes = [
            TrustChange::AddKey(newcomer.clone()),
            TrustChange::AddKey(key(9, KeyRole::Parent)),
            TrustChange::Rotate { old: id(2).key_id(), new: newcomer.clone(), overlap_ms: 0 },
            TrustChange::Revoke(id(3).key_id()),
            TrustChange::Revoke(id(1).key_id()),
            TrustChange::Replace(TrustBundle { version: 5, ..bundle() }),
        ];
        for (i, change) in changes.into_iter().enumerate() {
            let update = TrustUpdate { version: 5, change };
            let err = send_update(&mut v, 2, i as u64 + 1, &update).unwrap_err();
            assert!(matches!(err, TrustError::NotParent(k) if k == id(2).key_id()), "{err}");
        }
        assert_eq!(rejected(&v, RejectReason::UntrustedUpdate), 6);
        assert_eq!(v.bundle(), &bundle());
        assert_eq!(v.counters().trust_updates_applied(), 0);
        assert_eq!(v.accept(&seal(9, 1, NOW), NOW), Err(RejectReason::UnknownKey));
    }

    #[test]
    fn only_a_parent_key_that_is_not_revoked_is_the_parent() {
        let mut b = bundle();
        assert!(b.is_parent(&id(1).key_id()));
        assert!(!b.is_parent(&id(2).key_id()), "a member");
        assert!(!b.is_parent(&id(9).key_id()), "a stranger");
        let mut revoked = key(4, KeyRole::Parent);
        revoked.revoked = true;
        b.keys.push(revoked);
        assert!(!b.is_parent(&id(4).key_id()), "a revoked parent key");
    }

    #[test]
    fn parent_adds_a_key() {
        let mut v = verifier();
        assert_eq!(v.accept(&seal(9, 1, NOW), NOW), Err(RejectReason::UnknownKey));
        let update = TrustUpdate { version: 2, change: TrustChange::AddKey(key(9, KeyRole::Member)) };
        assert!(send_update(&mut v, 1, 1, &update).unwrap());
        assert!(v.accept(&seal(9, 1, NOW), NOW).is_ok());
        assert_eq!(v.bundle().version, 2);
        assert_eq!(v.counters().trust_updates_applied(), 1);
        // Adding it again is refused, and refusal leaves the bundle alone.
        let again = TrustUpdate { version: 3, change: TrustChange::AddKey(key(9, KeyRole::Parent)) };
        assert!(matches!(send_update(&mut v, 1, 2, &again), Err(TrustError::KeyExists(_))));
        assert_eq!(v.bundle().version, 2);
        assert_eq!(v.bundle().key(&id(9).key_id()).unwrap().role, KeyRole::Member);
    }

    #[test]
    fn versions_at_or_below_current_are_ignored() {
        let mut v = verifier();
        let add = |version, n| TrustUpdate { version, change: TrustChange::AddKey(key(n, KeyRole::Member)) };
        assert!(send_update(&mut v, 1, 1, &add(5, 9)).unwrap());
        // The same update again (re-sent as a new envelope) is a no-op.
        assert!(!send_update(&mut v, 1, 2, &add(5, 9)).unwrap());
        assert!(!send_update(&mut v, 1, 3, &add(4, 8)).unwrap());
        assert!(v.bundle().key(&id(8).key_id()).is_none());
        assert_eq!(v.counters().trust_updates_applied(), 1);
        // Gaps are fine.
        assert!(send_update(&mut v, 1, 4, &add(9, 8)).unwrap());
        assert_eq!(v.bundle().version, 9);
    }

    #[test]
    fn rotation_overlaps_then_expires() {
        let mut v = verifier();
        let rotate = TrustUpdate {
            version: 2,
            change: TrustChange::Rotate {
                old: id(2).key_id(),
                new: key(4, KeyRole::Member),
                overlap_ms: 60_000,
            },
        };
        assert!(send_update(&mut v, 1, 1, &rotate).unwrap());
        assert_eq!(v.bundle().key(&id(2).key_id()).unwrap().not_after_ms, Some(NOW + 60_000));
        // During the overlap both keys work.
        assert!(v.accept(&seal(2, 1, NOW + 59_999), NOW + 59_999).is_ok());
        assert!(v.accept(&seal(4, 1, NOW + 59_999), NOW + 59_999).is_ok());
        // After it only the new one does.
        assert_eq!(v.accept(&seal(2, 2, NOW + 60_000), NOW + 60_000), Err(RejectReason::RevokedKey));
        assert!(v.accept(&seal(4, 2, NOW + 60_000), NOW + 60_000).is_ok());
    }

    #[test]
    fn rotation_rules() {
        let v = verifier();
        let b = v.bundle();
        let rotate = |old: u8, new: TrustedKey, overlap_ms| TrustUpdate {
            version: 2,
            change: TrustChange::Rotate { old: id(old).key_id(), new, overlap_ms },
        };
        let err = |u: TrustUpdate| b.apply(&u, NOW).unwrap_err();
        assert!(matches!(err(rotate(2, key(4, KeyRole::Parent), 0)), TrustError::RoleChange { .. }));
        assert!(matches!(err(rotate(2, key(4, KeyRole::Member), -1)), TrustError::NegativeOverlap(-1)));
        assert!(matches!(err(rotate(9, key(4, KeyRole::Member), 0)), TrustError::UnknownKey(_)));
        assert!(matches!(err(rotate(2, key(3, KeyRole::Member), 0)), TrustError::KeyExists(_)));
        // A second rotation never extends the first one's window.
        let once = b.apply(&rotate(2, key(4, KeyRole::Member), 1_000), NOW).unwrap();
        let twice = TrustUpdate { version: 3, ..rotate(2, key(5, KeyRole::Member), 50_000) };
        let twice = once.apply(&twice, NOW).unwrap();
        assert_eq!(twice.key(&id(2).key_id()).unwrap().not_after_ms, Some(NOW + 1_000));
    }

    #[test]
    fn parent_key_rotation_hands_over_authority() {
        let mut v = verifier();
        let rotate = TrustUpdate {
            version: 2,
            change: TrustChange::Rotate {
                old: id(1).key_id(),
                new: key(5, KeyRole::Parent),
                overlap_ms: 1_000,
            },
        };
        assert!(send_update(&mut v, 1, 1, &rotate).unwrap());
        let later = NOW + 1_000;
        let add = TrustUpdate { version: 3, change: TrustChange::AddKey(key(9, KeyRole::Member)) };
        // The retired parent key can no longer sign anything, updates included.
        assert_eq!(v.accept(&update_env(1, 2, &add).encode(), later), Err(RejectReason::RevokedKey));
        let old_signed = update_env(1, 2, &add);
        assert!(matches!(v.apply_update(&old_signed, later), Err(TrustError::NotParent(_))));
        let new_signed = update_env(5, 1, &add);
        assert!(v.apply_update(&new_signed, later).unwrap());
    }

    #[test]
    fn revocation_takes_effect_at_once() {
        let mut v = verifier();
        assert!(v.accept(&seal(3, 1, NOW), NOW).is_ok());
        let revoke = TrustUpdate { version: 2, change: TrustChange::Revoke(id(3).key_id()) };
        assert!(send_update(&mut v, 1, 1, &revoke).unwrap());
        assert_eq!(v.accept(&seal(3, 2, NOW), NOW), Err(RejectReason::RevokedKey));
        // A revoked key cannot come back through AddKey.
        let re_add = TrustUpdate { version: 3, change: TrustChange::AddKey(key(3, KeyRole::Member)) };
        assert!(matches!(send_update(&mut v, 1, 2, &re_add), Err(TrustError::KeyExists(_))));
        // Revoking the only parent key would lock the parent out for good.
        let lockout = TrustUpdate { version: 4, change: TrustChange::Revoke(id(1).key_id()) };
        let err = send_update(&mut v, 1, 3, &lockout).unwrap_err();
        assert!(matches!(err, TrustError::Invalid(BundleError::NoParentKey(RING))), "{err}");
        assert!(v.bundle().key(&id(1).key_id()).unwrap().usable_at(NOW));
        let unknown = TrustUpdate { version: 4, change: TrustChange::Revoke(id(9).key_id()) };
        assert!(matches!(send_update(&mut v, 1, 4, &unknown), Err(TrustError::UnknownKey(_))));
        assert_eq!(v.bundle().version, 2);
    }

    #[test]
    fn replace_swaps_the_whole_bundle() {
        let mut v = verifier();
        assert!(v.accept(&seal(2, 7, NOW), NOW).is_ok());
        let replacement = TrustBundle {
            ring: RING,
            version: 10,
            keys: vec![key(1, KeyRole::Parent), key(8, KeyRole::Member)],
        };
        let update = TrustUpdate { version: 10, change: TrustChange::Replace(replacement.clone()) };
        assert!(send_update(&mut v, 1, 1, &update).unwrap());
        assert_eq!(v.bundle(), &replacement);
        assert_eq!(v.accept(&seal(2, 8, NOW), NOW), Err(RejectReason::UnknownKey));
        assert!(v.accept(&seal(8, 1, NOW), NOW).is_ok());

        // Re-adding key 2 later does not let its old envelopes be replayed.
        let back = TrustUpdate { version: 11, change: TrustChange::AddKey(key(2, KeyRole::Member)) };
        assert!(send_update(&mut v, 1, 2, &back).unwrap());
        assert_eq!(v.accept(&seal(2, 7, NOW), NOW), Err(RejectReason::Replayed));

        let other_ring = TrustBundle { ring: 2, version: 12, keys: replacement.keys.clone() };
        let update = TrustUpdate { version: 12, change: TrustChange::Replace(other_ring) };
        assert!(matches!(
            send_update(&mut v, 1, 3, &update),
            Err(TrustError::ReplaceRing { bundle: 2, ring: 1 })
        ));
        let mismatched = TrustBundle { version: 13, ..replacement.clone() };
        let update = TrustUpdate { version: 12, change: TrustChange::Replace(mismatched) };
        assert!(matches!(send_update(&mut v, 1, 4, &update), Err(TrustError::ReplaceVersion { .. })));
        let no_parent = TrustBundle { ring: RING, version: 12, keys: vec![key(8, KeyRole::Member)] };
        let update = TrustUpdate { version: 12, change: TrustChange::Replace(no_parent) };
        assert!(matches!(send_update(&mut v, 1, 5, &update), Err(TrustError::Invalid(_))));
        assert_eq!(v.bundle().version, 11);
    }

    #[test]
    fn apply_update_checks_topic_ring_payload_and_signature() {
        let mut v = verifier();
        let add = TrustUpdate { version: 2, change: TrustChange::AddKey(key(9, KeyRole::Member)) };
        let wrong_topic =
            Envelope::sign(&id(1), RING, "not.trust", 1, NOW, None, add.to_json().unwrap()).unwrap();
        assert!(matches!(v.apply_update(&wrong_topic, NOW), Err(TrustError::WrongTopic(_))));
        let garbage = Envelope::sign(&id(1), RING, TRUST_UPDATE_TOPIC, 2, NOW, None, b"{}".to_vec()).unwrap();
        assert!(matches!(v.apply_update(&garbage, NOW), Err(TrustError::Payload(_))));
        // An envelope that never went through accept and does not verify.
        let mut bytes = update_env(1, 3, &add).encode();
        let flag = bytes.len() - 65;
        bytes[flag + 10] ^= 1;
        let forged = Envelope::decode(&bytes).unwrap();
        assert!(matches!(v.apply_update(&forged, NOW), Err(TrustError::Signature(_))));
        assert_eq!(rejected(&v, RejectReason::Tampered), 1);
        assert_eq!(v.bundle().version, 1);
    }

    #[test]
    fn bundle_validation() {
        let mut dup = bundle();
        dup.keys.push(key(2, KeyRole::Member));
        assert!(matches!(dup.validate(), Err(BundleError::DuplicateKey(_))));
        let mut not_a_point = bundle();
        let mut bad = [0u8; 32];
        bad[0] = 2;
        not_a_point.keys.push(TrustedKey::new(KeyId::from_bytes(bad), KeyRole::Member, "bad"));
        assert!(matches!(not_a_point.validate(), Err(BundleError::InvalidKey(_))));
        let mut weak = bundle();
        // The identity point (y = 1) is a valid encoding of a small-order key.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        weak.keys.push(TrustedKey::new(KeyId::from_bytes(identity_point), KeyRole::Member, "weak"));
        assert!(matches!(weak.validate(), Err(BundleError::InvalidKey(_))));
        let mut label = bundle();
        label.keys[1].label = "evil\nlog line".into();
        assert!(matches!(label.validate(), Err(BundleError::Label(_))));
        label.keys[1].label = "x".repeat(MAX_LABEL_LEN + 1);
        assert!(matches!(label.validate(), Err(BundleError::Label(_))));
        let mut orphan = bundle();
        orphan.keys[0].revoked = true;
        assert!(matches!(orphan.validate(), Err(BundleError::NoParentKey(1))));
        assert!(Verifier::new(orphan, VerifierConfig::default(), Arc::new(Counters::new())).is_err());
    }

    #[test]
    fn json_shapes() {
        let parent = id(1).key_id();
        let b = TrustBundle {
            ring: 1,
            version: 3,
            keys: vec![TrustedKey::new(parent, KeyRole::Parent, "ring 0")],
        };
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"ring":1,"version":3,"keys":[{{"id":"{parent}","role":"parent","label":"ring 0"}}]}}"#
            )
        );
        assert_eq!(TrustBundle::from_json(json.as_bytes()).unwrap(), b);
        let update = TrustUpdate {
            version: 4,
            change: TrustChange::Rotate { old: parent, new: key(2, KeyRole::Parent), overlap_ms: 5 },
        };
        let text = String::from_utf8(update.to_json().unwrap()).unwrap();
        assert!(text.starts_with(r#"{"version":4,"change":{"rotate":{"old":""#), "{text}");
        assert_eq!(serde_json::from_str::<TrustUpdate>(&text).unwrap(), update);
        let revoke: TrustUpdate =
            serde_json::from_str(&format!(r#"{{"version":5,"change":{{"revoke":"{parent}"}}}}"#)).unwrap();
        assert_eq!(revoke.change, TrustChange::Revoke(parent));
        // Unknown fields fail closed.
        let extra = json.replace(r#""ring":1"#, r#""ring":1,"not_before":0"#);
        assert!(matches!(TrustBundle::from_json(extra.as_bytes()), Err(BundleError::Json(_))));
    }

    #[test]
    fn publisher_numbers_and_counts() {
        let counters = Arc::new(Counters::new());
        let publisher = Publisher::new(id(2), RING, 100, counters.clone());
        let mut v = verifier();
        for expected in 100..103 {
            let bytes = publisher.seal("node.status", Some("reply.me"), b"x".to_vec(), NOW).unwrap();
            let env = v.accept(&bytes, NOW).unwrap();
            assert_eq!((env.seq(), env.reply_to()), (expected, Some("reply.me")));
        }
        assert!(publisher.seal("bad topic", None, vec![], NOW).is_err());
        assert_eq!(counters.published(), 3);

        // A restarted publisher numbers above the old one.
        let first = Publisher::starting_now(id(2), RING, counters.clone());
        let a = Envelope::decode(&first.seal("a", None, vec![], NOW).unwrap()).unwrap().seq();
        let second = Publisher::starting_now(id(2), RING, counters);
        let b = Envelope::decode(&second.seal("a", None, vec![], NOW).unwrap()).unwrap().seq();
        assert!(b >= a && a > 1_600_000_000_000_000, "{a} {b}");
    }
}
