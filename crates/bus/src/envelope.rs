//! The signed envelope every bus message travels in, and its versioned binary encoding. The
//! decoder reads bytes straight from the network, so it must never panic and never allocate
//! more than the input it was given; and the signature must cover every field, so that nothing a
//! receiver acts on can be changed without the change being detected.
//!
//! # Wire format, version 1
//!
//! All integers are big-endian.
//!
//! | field        | encoding                                                      |
//! |--------------|---------------------------------------------------------------|
//! | magic        | `b"EJB1"` (the `1` is the format version)                     |
//! | ring         | u8                                                            |
//! | topic        | u16 length, then that many bytes of UTF-8; see [`validate_envelope_topic`] |
//! | sender       | 32 bytes: the sender's Ed25519 public key ([`KeyId`])         |
//! | seq          | u64                                                           |
//! | timestamp_ms | i64, milliseconds since the Unix epoch, sender's clock        |
//! | reply_to     | u16 length (0 = no reply topic), then a topic                 |
//! | payload      | u32 length (at most [`MAX_PAYLOAD_LEN`]), then opaque bytes   |
//! | sig flag     | u8: 0 = unsigned, 1 = Ed25519                                 |
//! | signature    | 64 bytes, present only when the flag is 1                     |
//!
//! The signature is Ed25519 over [`SIGNATURE_DOMAIN`] followed by the encoding from the magic up
//! to, not including, the flag. The domain prefix keeps an envelope signature from ever being
//! valid for anything else the same key signs (and vice versa).
//!
//! The encoding is canonical: every envelope has exactly one encoding, and decoding rejects
//! anything else (bad magic, unknown flag, over-long or invalid fields, trailing bytes), so
//! `decode(b)` succeeds only when `decode(b)?.encode() == b`.

use std::fmt;

use ed25519_dalek::Signature;

use crate::identity::{Identity, KeyId};

/// The first four bytes of every encoded envelope; the last byte is the format version, so a
/// future format is refused as [`DecodeError::BadMagic`] rather than misread.
pub const MAGIC: &[u8; 4] = b"EJB1";
/// Prefixed to the encoded body before signing and verifying (never sent), so an envelope
/// signature cannot be valid for anything else the same key signs.
pub const SIGNATURE_DOMAIN: &[u8] = b"enjin-bus-envelope-v1\0";
/// Longest topic or reply topic, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;
/// Largest payload, in bytes (1 MiB); larger ones cannot be sealed and are refused on decode.
pub const MAX_PAYLOAD_LEN: usize = 1024 * 1024;
/// The largest valid encoding, for sizing transport frames.
pub const MAX_ENCODED_LEN: usize =
    4 + 1 + 2 + MAX_TOPIC_LEN + 32 + 8 + 8 + 2 + MAX_TOPIC_LEN + 4 + MAX_PAYLOAD_LEN + 1 + 64;

const FLAG_UNSIGNED: u8 = 0;
const FLAG_ED25519: u8 = 1;

/// Why a string is not a valid topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeTopicError {
    /// The topic has no bytes at all.
    #[error("topic is empty")]
    Empty,
    /// The topic's length in bytes, which exceeds [`MAX_TOPIC_LEN`].
    #[error("topic is {0} bytes long, the limit is {MAX_TOPIC_LEN}")]
    TooLong(usize),
    /// The topic starts or ends with a dot, or has two in a row.
    #[error("topic {0:?} has an empty token (tokens are separated by single dots)")]
    EmptyToken(String),
    /// The topic and the first character outside `A-Z a-z 0-9 _ -` in it (wildcards included).
    #[error("topic {0:?} contains {1:?}; topics use only A-Z a-z 0-9 _ - and dots")]
    Character(String, char),
}

/// Checks that `topic` can be published to: 1 to 256 bytes of dot-separated tokens, each a
/// non-empty run of ASCII letters, digits, `_` and `-` (`trust.update`, `node.7.status`).
///
/// Wildcards (`*` for one token, `>` for the rest) belong to subscriptions, never to an
/// envelope: a message is published to one concrete topic. The character set is deliberately
/// a strict subset of what the transport accepts (`crate::topic`, NATS's subject rules: anything
/// but whitespace, control characters and wildcards), so every signed topic is also a valid
/// transport topic and NATS subject, and a topic is always safe to print in a log.
pub fn validate_envelope_topic(topic: &str) -> Result<(), EnvelopeTopicError> {
    if topic.is_empty() {
        return Err(EnvelopeTopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(EnvelopeTopicError::TooLong(topic.len()));
    }
    for token in topic.split('.') {
        if token.is_empty() {
            return Err(EnvelopeTopicError::EmptyToken(topic.to_string()));
        }
        if let Some(c) = token.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
            return Err(EnvelopeTopicError::Character(topic.to_string(), c));
        }
    }
    Ok(())
}

/// Why an envelope could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The topic to publish to is not a valid envelope topic.
    #[error("invalid envelope topic: {0}")]
    Topic(EnvelopeTopicError),
    /// The reply topic is given but not a valid envelope topic.
    #[error("invalid envelope reply topic: {0}")]
    ReplyTo(EnvelopeTopicError),
    /// The payload's length in bytes, which exceeds [`MAX_PAYLOAD_LEN`].
    #[error("envelope payload is {0} bytes, the limit is {MAX_PAYLOAD_LEN}")]
    PayloadTooLarge(usize),
}

/// Why bytes are not an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not an envelope, or one of another format version.
    #[error("envelope does not start with {MAGIC:?}")]
    BadMagic,
    /// The input ends before the named field is complete.
    #[error("envelope ends inside its {0} field")]
    Truncated(&'static str),
    /// A length prefix announces more than the format allows; nothing was allocated for it.
    #[error("envelope {field} is {len} bytes, the limit is {max}")]
    TooLong {
        /// The field whose length prefix is too large (`topic`, `reply_to`, `payload`).
        field: &'static str,
        /// The length the prefix announced, in bytes.
        len: usize,
        /// The largest length allowed for that field.
        max: usize,
    },
    /// The named string field is not valid UTF-8.
    #[error("envelope {0} is not UTF-8")]
    Utf8(&'static str),
    /// The topic is missing (length 0) or not a valid envelope topic.
    #[error("invalid envelope topic: {0}")]
    Topic(EnvelopeTopicError),
    /// The reply topic is present but not a valid envelope topic.
    #[error("invalid envelope reply topic: {0}")]
    ReplyTo(EnvelopeTopicError),
    /// The signature flag byte, which is neither 0 nor 1.
    #[error("envelope signature flag is {0}, expected 0 (unsigned) or 1 (ed25519)")]
    SignatureFlag(u8),
    /// How many bytes follow the envelope; refused so that every envelope has one encoding.
    #[error("envelope has {0} trailing bytes")]
    TrailingBytes(usize),
}

/// Why an envelope's signature is not good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The envelope carries no signature (flag 0).
    #[error("envelope is unsigned")]
    Unsigned,
    /// The sender id does not decode to an Ed25519 public key.
    #[error("envelope sender {0} is not a valid ed25519 public key")]
    InvalidSender(KeyId),
    /// The signature does not verify under the sender's key (strictly: small-order keys and
    /// non-canonical signatures fail too): some byte changed after signing, or another key
    /// signed it.
    #[error("envelope signature does not verify under sender {0}")]
    Mismatch(KeyId),
}

/// A bus message with its sender and signature.
///
/// The fields are private so that every `Envelope` in existence is valid (came from
/// [`Envelope::sign`] or [`Envelope::decode`]): `encode` then cannot fail, and always produces
/// bytes that `decode` accepts.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    ring: u8,
    topic: String,
    sender: KeyId,
    seq: u64,
    timestamp_ms: i64,
    reply_to: Option<String>,
    payload: Vec<u8>,
    signature: Option<[u8; 64]>,
}

impl fmt::Debug for Envelope {
    // The payload can be a megabyte; its length is what helps when reading a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("ring", &self.ring)
            .field("topic", &self.topic)
            .field("sender", &self.sender.short())
            .field("seq", &self.seq)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("reply_to", &self.reply_to)
            .field("payload_len", &self.payload.len())
            .field("signed", &self.signature.is_some())
            .finish()
    }
}

impl Envelope {
    /// Builds and signs an envelope from `identity`.
    pub fn sign(
        identity: &Identity,
        ring: u8,
        topic: &str,
        seq: u64,
        timestamp_ms: i64,
        reply_to: Option<&str>,
        payload: Vec<u8>,
    ) -> Result<Self, SealError> {
        validate_envelope_topic(topic).map_err(SealError::Topic)?;
        if let Some(r) = reply_to {
            validate_envelope_topic(r).map_err(SealError::ReplyTo)?;
        }
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(SealError::PayloadTooLarge(payload.len()));
        }
        let mut env = Self {
            ring,
            topic: topic.to_string(),
            sender: identity.key_id(),
            seq,
            timestamp_ms,
            reply_to: reply_to.map(str::to_string),
            payload,
            signature: None,
        };
        env.signature = Some(identity.sign(&env.signed_message()));
        Ok(env)
    }

    /// The ring the sender addressed it to; a verifier refuses envelopes for other rings.
    pub fn ring(&self) -> u8 {
        self.ring
    }
    /// The concrete topic it was published to (never a wildcard).
    pub fn topic(&self) -> &str {
        &self.topic
    }
    /// The key that claims to have signed it; only a verified signature makes that true.
    pub fn sender(&self) -> KeyId {
        self.sender
    }
    /// The sender's sequence number: rises with every envelope a sender seals, not
    /// necessarily by one; a verifier refuses one at or below the last it accepted.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// When it was sealed, in milliseconds since the Unix epoch by the sender's clock.
    pub fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }
    /// The topic the sender wants an answer on, if it expects one.
    pub fn reply_to(&self) -> Option<&str> {
        self.reply_to.as_deref()
    }
    /// The opaque message, at most [`MAX_PAYLOAD_LEN`] bytes; its format is the topic's business.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
    /// The payload, without copying it.
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }
    /// The Ed25519 signature, or `None` for an unsigned envelope (which no verifier delivers).
    pub fn signature(&self) -> Option<&[u8; 64]> {
        self.signature.as_ref()
    }

    /// The canonical wire encoding (see the module's table). Cannot fail: every `Envelope`
    /// was validated when it was built, and [`Envelope::decode`] accepts the result.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_body(&mut out);
        match &self.signature {
            None => out.push(FLAG_UNSIGNED),
            Some(sig) => {
                out.push(FLAG_ED25519);
                out.extend_from_slice(sig);
            }
        }
        out
    }

    fn encoded_len(&self) -> usize {
        let body = 4 + 1 + 2 + self.topic.len() + 32 + 8 + 8 + 2;
        let reply = self.reply_to.as_ref().map_or(0, String::len);
        body + reply + 4 + self.payload.len() + 1 + self.signature.map_or(0, |_| 64)
    }

    /// Everything the signature covers except the domain prefix.
    fn encode_body(&self, out: &mut Vec<u8>) {
        // The length casts cannot truncate: construction checked every length against limits
        // far below u16::MAX and u32::MAX.
        out.extend_from_slice(MAGIC);
        out.push(self.ring);
        out.extend_from_slice(&(self.topic.len() as u16).to_be_bytes());
        out.extend_from_slice(self.topic.as_bytes());
        out.extend_from_slice(self.sender.as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        let reply = self.reply_to.as_deref().unwrap_or("");
        out.extend_from_slice(&(reply.len() as u16).to_be_bytes());
        out.extend_from_slice(reply.as_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
    }

    pub(crate) fn signed_message(&self) -> Vec<u8> {
        let mut msg = Vec::with_capacity(SIGNATURE_DOMAIN.len() + self.encoded_len());
        msg.extend_from_slice(SIGNATURE_DOMAIN);
        self.encode_body(&mut msg);
        msg
    }

    /// Parses exactly one canonical encoding, refusing anything else (trailing bytes
    /// included). Never panics and allocates no more than `bytes` holds. The signature is not
    /// checked: that is [`Envelope::verify_signature`] or, with trust, the verifier.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_with_body_len(bytes).map(|(env, _)| env)
    }

    /// Checks the signature against the sender's key. Says nothing about whether the sender is
    /// trusted; that is [`crate::trust::Verifier`]'s job.
    pub fn verify_signature(&self) -> Result<(), SignatureError> {
        let key = self.sender.verifying_key().ok_or(SignatureError::InvalidSender(self.sender))?;
        self.verify_with(&key, &self.signed_message())
    }

    /// Verifies with an already parsed key over an already built signed message (domain prefix
    /// included); the verifier uses this to avoid re-encoding what it just decoded.
    pub(crate) fn verify_with(
        &self,
        key: &ed25519_dalek::VerifyingKey,
        signed_message: &[u8],
    ) -> Result<(), SignatureError> {
        let sig = self.signature.as_ref().ok_or(SignatureError::Unsigned)?;
        // Strict verification also refuses small-order keys and non-canonical signatures, so no
        // second valid signature can be made from a first (which could dodge replay checks that
        // compared signatures).
        key.verify_strict(signed_message, &Signature::from_bytes(sig))
            .map_err(|_| SignatureError::Mismatch(self.sender))
    }
}

/// Decodes an envelope and also returns the length of the signed part of `bytes` (everything
/// before the signature flag), so a verifier can check the signature over the bytes it received.
pub(crate) fn decode_with_body_len(bytes: &[u8]) -> Result<(Envelope, usize), DecodeError> {
    let mut r = Reader { bytes, pos: 0 };
    if r.take(4, "magic")? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let ring = r.u8("ring")?;
    let topic = r.string16("topic")?.ok_or(DecodeError::Topic(EnvelopeTopicError::Empty))?;
    validate_envelope_topic(&topic).map_err(DecodeError::Topic)?;
    let sender = KeyId::from_bytes(r.array("sender")?);
    let seq = u64::from_be_bytes(r.array("seq")?);
    let timestamp_ms = i64::from_be_bytes(r.array("timestamp")?);
    let reply_to = r.string16("reply_to")?;
    if let Some(reply) = &reply_to {
        validate_envelope_topic(reply).map_err(DecodeError::ReplyTo)?;
    }
    let payload_len = u32::from_be_bytes(r.array("payload length")?) as usize;
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(DecodeError::TooLong { field: "payload", len: payload_len, max: MAX_PAYLOAD_LEN });
    }
    let payload = r.take(payload_len, "payload")?.to_vec();
    let body_len = r.pos;
    let signature = match r.u8("signature flag")? {
        FLAG_UNSIGNED => None,
        FLAG_ED25519 => Some(r.array("signature")?),
        other => return Err(DecodeError::SignatureFlag(other)),
    };
    let rest = bytes.len() - r.pos;
    if rest != 0 {
        return Err(DecodeError::TrailingBytes(rest));
    }
    let env = Envelope { ring, topic, sender, seq, timestamp_ms, reply_to, payload, signature };
    Ok((env, body_len))
}

/// A cursor that hands out slices of the input only after checking they are there, so no
/// length read from the wire is ever trusted before the bytes behind it are.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let rest = &self.bytes[self.pos..];
        if rest.len() < n {
            return Err(DecodeError::Truncated(field));
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// A u16-length-prefixed string; length 0 is `None`.
    fn string16(&mut self, field: &'static str) -> Result<Option<String>, DecodeError> {
        let len = usize::from(u16::from_be_bytes(self.array(field)?));
        if len > MAX_TOPIC_LEN {
            return Err(DecodeError::TooLong { field, len, max: MAX_TOPIC_LEN });
        }
        if len == 0 {
            return Ok(None);
        }
        let raw = self.take(len, field)?;
        let s = std::str::from_utf8(raw).map_err(|_| DecodeError::Utf8(field))?;
        Ok(Some(s.to_string()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use proptest::prelude::*;

    use super::*;

    pub(crate) fn identity(n: u8) -> Identity {
        Identity::from_secret_bytes(&[n; 32])
    }

    fn sample() -> Envelope {
        Envelope::sign(&identity(1), 1, "node.status", 42, 1_700_000_000_000, Some("reply.x"), b"hi".to_vec())
            .unwrap()
    }

    /// Offsets of each field in `sample().encode()`.
    fn field_offsets() -> Vec<(&'static str, usize)> {
        let topic = "node.status".len();
        let reply = "reply.x".len();
        let mut at = 0;
        let mut out = Vec::new();
        for (name, len) in [
            ("magic", 4),
            ("ring", 1),
            ("topic_len", 2),
            ("topic", topic),
            ("sender", 32),
            ("seq", 8),
            ("timestamp", 8),
            ("reply_len", 2),
            ("reply", reply),
            ("payload_len", 4),
            ("payload", 2),
            ("flag", 1),
            ("signature", 64),
        ] {
            out.push((name, at));
            at += len;
        }
        out
    }

    #[test]
    fn round_trip_and_layout() {
        let env = sample();
        let bytes = env.encode();
        assert_eq!(bytes.len(), env.encoded_len());
        assert_eq!(&bytes[..4], b"EJB1");
        assert_eq!(bytes[4], 1);
        assert_eq!(&bytes[5..7], &[0, 11]);
        assert_eq!(&bytes[7..18], b"node.status");
        let offsets: std::collections::HashMap<_, _> = field_offsets().into_iter().collect();
        assert_eq!(&bytes[offsets["seq"]..offsets["seq"] + 8], &42u64.to_be_bytes());
        assert_eq!(bytes[offsets["flag"]], 1);
        assert_eq!(bytes.len(), offsets["signature"] + 64);
        let back = Envelope::decode(&bytes).unwrap();
        assert_eq!(back, env);
        assert!(back.verify_signature().is_ok());
        let (_, body_len) = decode_with_body_len(&bytes).unwrap();
        assert_eq!(body_len, offsets["flag"]);
    }

    #[test]
    fn no_reply_to_is_length_zero() {
        let env = Envelope::sign(&identity(1), 0, "a", 0, 0, None, Vec::new()).unwrap();
        let bytes = env.encode();
        assert_eq!(Envelope::decode(&bytes).unwrap().reply_to(), None);
        // magic, ring, topic len, "a", sender, seq, timestamp -> reply length
        let at = 4 + 1 + 2 + 1 + 32 + 8 + 8;
        assert_eq!(&bytes[at..at + 2], &[0, 0]);
    }

    #[test]
    fn sign_validates_fields() {
        let id = identity(1);
        let sign = |topic: &str, reply: Option<&str>, len: usize| {
            Envelope::sign(&id, 1, topic, 1, 1, reply, vec![0; len]).map(|_| ())
        };
        assert_eq!(sign("", None, 0), Err(SealError::Topic(EnvelopeTopicError::Empty)));
        assert!(matches!(sign("a..b", None, 0), Err(SealError::Topic(EnvelopeTopicError::EmptyToken(_)))));
        assert!(matches!(sign("a.*", None, 0), Err(SealError::Topic(EnvelopeTopicError::Character(_, '*')))));
        assert!(matches!(sign("a.>", None, 0), Err(SealError::Topic(EnvelopeTopicError::Character(_, '>')))));
        assert!(matches!(sign("a b", None, 0), Err(SealError::Topic(EnvelopeTopicError::Character(_, ' ')))));
        assert!(matches!(sign("é", None, 0), Err(SealError::Topic(EnvelopeTopicError::Character(_, 'é')))));
        assert_eq!(sign(&"a".repeat(257), None, 0), Err(SealError::Topic(EnvelopeTopicError::TooLong(257))));
        assert!(sign(&"a".repeat(256), Some(&"b".repeat(256)), MAX_PAYLOAD_LEN).is_ok());
        assert_eq!(sign("a", Some(""), 0), Err(SealError::ReplyTo(EnvelopeTopicError::Empty)));
        assert_eq!(
            sign("a", None, MAX_PAYLOAD_LEN + 1),
            Err(SealError::PayloadTooLarge(MAX_PAYLOAD_LEN + 1))
        );
        assert!(sign("trust.update", Some("_INBOX.x-1"), 0).is_ok());
    }

    #[test]
    fn largest_envelope_is_max_encoded_len() {
        let env = Envelope::sign(
            &identity(1),
            1,
            &"a".repeat(256),
            1,
            1,
            Some(&"b".repeat(256)),
            vec![7; MAX_PAYLOAD_LEN],
        )
        .unwrap();
        let bytes = env.encode();
        assert_eq!(bytes.len(), MAX_ENCODED_LEN);
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);
    }

    #[test]
    fn decode_rejects_malformed_input() {
        let bytes = sample().encode();
        let offsets: std::collections::HashMap<_, _> = field_offsets().into_iter().collect();
        let with = |at: usize, new: &[u8]| {
            let mut b = bytes.clone();
            b[at..at + new.len()].copy_from_slice(new);
            Envelope::decode(&b)
        };
        assert_eq!(Envelope::decode(b""), Err(DecodeError::Truncated("magic")));
        assert_eq!(with(0, b"EJB2"), Err(DecodeError::BadMagic));
        for cut in 0..bytes.len() {
            assert!(Envelope::decode(&bytes[..cut]).is_err(), "prefix of {cut} bytes decoded");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Envelope::decode(&long), Err(DecodeError::TrailingBytes(1)));
        assert_eq!(with(offsets["flag"], &[2]), Err(DecodeError::SignatureFlag(2)));
        assert_eq!(with(offsets["flag"], &[0]), Err(DecodeError::TrailingBytes(64)));
        assert_eq!(
            with(offsets["topic_len"], &[1, 1]),
            Err(DecodeError::TooLong { field: "topic", len: 257, max: 256 })
        );
        assert_eq!(with(offsets["topic_len"], &[0, 0]), Err(DecodeError::Topic(EnvelopeTopicError::Empty)));
        assert_eq!(with(offsets["topic"], &[0xff]), Err(DecodeError::Utf8("topic")));
        assert!(matches!(
            with(offsets["topic"], b"*"),
            Err(DecodeError::Topic(EnvelopeTopicError::Character(..)))
        ));
        assert!(matches!(
            with(offsets["reply"], b"."),
            Err(DecodeError::ReplyTo(EnvelopeTopicError::EmptyToken(_)))
        ));
        assert_eq!(
            with(offsets["payload_len"], &[0, 0x10, 0, 1]),
            Err(DecodeError::TooLong { field: "payload", len: MAX_PAYLOAD_LEN + 1, max: MAX_PAYLOAD_LEN })
        );
        // A claimed length beyond the input is refused before anything is allocated for it.
        assert_eq!(with(offsets["payload_len"], &[0, 0x10, 0, 0]), Err(DecodeError::Truncated("payload")));
    }

    #[test]
    fn unsigned_envelopes_decode_but_do_not_verify() {
        let mut env = sample();
        env.signature = None;
        let bytes = env.encode();
        assert_eq!(*bytes.last().unwrap(), 0);
        let back = Envelope::decode(&bytes).unwrap();
        assert_eq!(back.verify_signature(), Err(SignatureError::Unsigned));
    }

    #[test]
    fn signature_covers_every_field() {
        let env = sample();
        let sender = env.sender;
        let tampered: Vec<(&str, Envelope)> = vec![
            ("ring", Envelope { ring: 2, ..env.clone() }),
            ("topic", Envelope { topic: "node.statuz".into(), ..env.clone() }),
            ("seq", Envelope { seq: 43, ..env.clone() }),
            ("timestamp", Envelope { timestamp_ms: env.timestamp_ms + 1, ..env.clone() }),
            ("reply_to", Envelope { reply_to: Some("reply.y".into()), ..env.clone() }),
            ("reply_to none", Envelope { reply_to: None, ..env.clone() }),
            ("payload", Envelope { payload: b"ho".to_vec(), ..env.clone() }),
            ("sender", Envelope { sender: identity(2).key_id(), ..env.clone() }),
        ];
        for (field, t) in tampered {
            let decoded = Envelope::decode(&t.encode()).unwrap();
            let err = decoded.verify_signature().unwrap_err();
            assert!(matches!(err, SignatureError::Mismatch(_)), "{field}: {err}");
        }
        // A signature made over the same body without the domain prefix is not valid.
        let mut raw = Vec::new();
        env.encode_body(&mut raw);
        let undomained = Envelope { signature: Some(identity(1).sign(&raw)), ..env.clone() };
        assert_eq!(undomained.verify_signature(), Err(SignatureError::Mismatch(sender)));
    }

    #[test]
    fn a_sender_that_is_not_a_curve_point_is_reported() {
        // y = 2 has no x on the Ed25519 curve, so these bytes are not a public key.
        let mut bad = [0u8; 32];
        bad[0] = 2;
        assert!(KeyId::from_bytes(bad).verifying_key().is_none());
        let env = Envelope { sender: KeyId::from_bytes(bad), ..sample() };
        assert!(matches!(env.verify_signature(), Err(SignatureError::InvalidSender(_))));
    }

    #[test]
    fn debug_shows_payload_length_not_payload() {
        let s = format!("{:?}", sample());
        assert!(s.contains("payload_len: 2") && s.contains("node.status"), "{s}");
    }

    pub(crate) fn topic_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec("[A-Za-z0-9_-]{1,12}", 1..6).prop_map(|t| t.join("."))
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(
            secret in any::<[u8; 32]>(),
            ring in any::<u8>(),
            topic in topic_strategy(),
            seq in any::<u64>(),
            ts in any::<i64>(),
            reply in proptest::option::of(topic_strategy()),
            payload in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let id = Identity::from_secret_bytes(&secret);
            let env = Envelope::sign(&id, ring, &topic, seq, ts, reply.as_deref(), payload).unwrap();
            let bytes = env.encode();
            let back = Envelope::decode(&bytes).unwrap();
            prop_assert_eq!(&back, &env);
            prop_assert_eq!(back.encode(), bytes);
            prop_assert!(back.verify_signature().is_ok());
        }

        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(env) = Envelope::decode(&bytes) {
                prop_assert_eq!(env.encode(), bytes);
            }
        }

        #[test]
        fn decode_never_panics_on_mutated_envelopes(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut bytes = sample().encode();
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            if let Ok(env) = Envelope::decode(&bytes) {
                prop_assert_eq!(env.encode(), bytes);
            }
        }
    }
}
