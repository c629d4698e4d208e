//! The hub protocol's wire format: length-prefixed frames. It carries opaque payloads (signing is
//! the envelope layer's business) and must never panic or allocate more than
//! [`MAX_FRAME_LEN`] because of bytes a peer sent.
//!
//! ```text
//! frame       = length:u32be  body            length = body size, 1 ..= MAX_FRAME_LEN
//! body        = type:u8 fields
//! 1 SUBSCRIBE   sid:u32be  pattern:str16
//! 2 UNSUBSCRIBE sid:u32be
//! 3 PUBLISH     topic:str16  reply_to:str16  payload:rest     (reply_to length 0 = none)
//! 4 DELIVER     sid:u32be  topic:str16  reply_to:str16  payload:rest
//! 5 PING
//! 6 PONG
//! 7 REFUSED     what:u8  sid:u32be  topic:str16                (what 1 = subscribe, 2 = publish)
//! str16       = length:u16be  UTF-8 bytes
//! ```
//!
//! REFUSED is the hub's answer to a subscribe or publish the member's access rules forbid
//! ([`crate::acl`]), NATS's `-ERR 'Permissions Violation'`: the connection stays open. For a
//! subscribe it names the subscription's sid and pattern; for a publish, sid 0 and the topic.
//!
//! The protocol version is negotiated by TLS ALPN ([`crate::tls::ALPN_PROTOCOL`]), so frames carry
//! no version byte; an incompatible change gets a new ALPN name.

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::topic::{self, TopicError};

/// Largest payload a message may carry.
pub const MAX_PAYLOAD: usize = 2 * 1024 * 1024;
/// Largest frame body: a maximal payload plus room for the type byte, a sid and two topics.
pub const MAX_FRAME_LEN: usize = MAX_PAYLOAD + 1024;
/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

const SUBSCRIBE: u8 = 1;
const UNSUBSCRIBE: u8 = 2;
const PUBLISH: u8 = 3;
const DELIVER: u8 = 4;
const PING: u8 = 5;
const PONG: u8 = 6;
const REFUSED: u8 = 7;

/// What a REFUSED frame refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A subscription whose pattern the member may not subscribe to (wire byte 1).
    Subscribe,
    /// A publish to a topic the member may not publish to (wire byte 2).
    Publish,
}

impl Refusal {
    fn byte(self) -> u8 {
        match self {
            Refusal::Subscribe => 1,
            Refusal::Publish => 2,
        }
    }
}

/// One protocol frame. Clients send Subscribe, Unsubscribe, Publish and Ping; the hub sends
/// Deliver, Pong and Refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client to hub: deliver messages whose topic matches `pattern`, tagged `sid`.
    Subscribe {
        /// Chosen by the client, unique among its own subscriptions on this connection;
        /// subscribing again under a live sid replaces that subscription's pattern.
        sid: u32,
        /// A topic pattern, wildcards allowed (see [`crate::topic::validate_pattern`]).
        pattern: String,
    },
    /// Client to hub: end the subscription `sid`; an unknown sid is ignored.
    Unsubscribe {
        /// The sid the subscription was made under.
        sid: u32,
    },
    /// Client to hub: a message for every subscription matching `topic`.
    Publish {
        /// A concrete topic, no wildcards.
        topic: String,
        /// Where answers should go, if the publisher expects any; sent as length 0 when absent.
        reply_to: Option<String>,
        /// Opaque bytes (a signed envelope, on this bus), at most [`MAX_PAYLOAD`].
        payload: Vec<u8>,
    },
    /// Hub to client: a published message, once per matching subscription of the client.
    Deliver {
        /// The client's subscription that matched.
        sid: u32,
        /// The concrete topic it was published to.
        topic: String,
        /// The publisher's reply topic, if it gave one.
        reply_to: Option<String>,
        /// The publisher's bytes, unchanged.
        payload: Vec<u8>,
    },
    /// Client to hub: a liveness probe; the hub answers [`Frame::Pong`].
    Ping,
    /// Hub to client: the answer to a [`Frame::Ping`].
    Pong,
    /// Hub to client: a subscribe or publish the member's access rules forbid. The connection
    /// stays open; a refused subscribe also ends any earlier subscription under its sid.
    Refused {
        /// Which kind of request was refused.
        what: Refusal,
        /// The refused subscription's sid; 0 for a publish.
        sid: u32,
        /// The refused subscription's pattern, or the refused publish's topic.
        topic: String,
    },
}

/// Why a frame could not be encoded, read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A frame body over [`MAX_FRAME_LEN`], announced by a peer or built by the caller; when
    /// encoding, the output buffer is left as it was.
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLarge {
        /// The body length in bytes.
        len: usize,
    },
    /// A payload to encode is over [`MAX_PAYLOAD`].
    #[error("payload of {len} bytes exceeds the limit of {MAX_PAYLOAD}")]
    PayloadTooLarge {
        /// The payload length in bytes.
        len: usize,
    },
    /// The peer's bytes are not a frame: unknown type, truncated field, empty frame, trailing
    /// bytes, bad UTF-8. The text says which.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// A topic, reply topic or pattern the transport's rules refuse.
    #[error("frame names an invalid topic: {0}")]
    Topic(#[from] TopicError),
    /// The socket failed, or closed in the middle of a frame; the only variant that is not
    /// the peer's malformed input.
    #[error("failed to read a frame: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// Whether the peer sent bytes that are not a valid frame (as opposed to the socket failing).
    pub fn is_malformed(&self) -> bool {
        !matches!(self, FrameError::Io(_))
    }
}

impl Frame {
    /// Append this frame, length prefix included, to `out`. Refuses what the decoder would refuse,
    /// so that anything encoded here decodes.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        match self {
            Frame::Subscribe { sid, pattern } => {
                topic::validate_pattern(pattern)?;
                let start = begin(out, SUBSCRIBE);
                out.extend_from_slice(&sid.to_be_bytes());
                put_str16(out, pattern);
                finish(out, start)
            }
            Frame::Unsubscribe { sid } => {
                let start = begin(out, UNSUBSCRIBE);
                out.extend_from_slice(&sid.to_be_bytes());
                finish(out, start)
            }
            Frame::Publish { topic, reply_to, payload } => {
                encode_publish(out, topic, reply_to.as_deref(), payload)
            }
            Frame::Deliver { sid, topic, reply_to, payload } => {
                encode_deliver(out, *sid, topic, reply_to.as_deref(), payload)
            }
            Frame::Ping => {
                let start = begin(out, PING);
                finish(out, start)
            }
            Frame::Pong => {
                let start = begin(out, PONG);
                finish(out, start)
            }
            Frame::Refused { what, sid, topic } => {
                topic::validate_pattern(topic)?;
                let start = begin(out, REFUSED);
                out.push(what.byte());
                out.extend_from_slice(&sid.to_be_bytes());
                put_str16(out, topic);
                finish(out, start)
            }
        }
    }
}

/// Append a Publish frame without first building a [`Frame`] (saves copying the payload).
pub fn encode_publish(
    out: &mut Vec<u8>,
    topic: &str,
    reply_to: Option<&str>,
    payload: &[u8],
) -> Result<(), FrameError> {
    check_message(topic, reply_to, payload)?;
    let start = begin(out, PUBLISH);
    put_str16(out, topic);
    put_str16(out, reply_to.unwrap_or(""));
    out.extend_from_slice(payload);
    finish(out, start)
}

/// Append a Deliver frame without first building a [`Frame`]; the hub encodes one per
/// subscription from a shared message.
pub fn encode_deliver(
    out: &mut Vec<u8>,
    sid: u32,
    topic: &str,
    reply_to: Option<&str>,
    payload: &[u8],
) -> Result<(), FrameError> {
    check_message(topic, reply_to, payload)?;
    let start = begin(out, DELIVER);
    out.extend_from_slice(&sid.to_be_bytes());
    put_str16(out, topic);
    put_str16(out, reply_to.unwrap_or(""));
    out.extend_from_slice(payload);
    finish(out, start)
}

fn check_message(topic: &str, reply_to: Option<&str>, payload: &[u8]) -> Result<(), FrameError> {
    topic::validate_topic(topic)?;
    if let Some(reply_to) = reply_to {
        topic::validate_topic(reply_to)?;
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::PayloadTooLarge { len: payload.len() });
    }
    Ok(())
}

/// Reserve the length prefix and write the type byte; returns where the frame starts.
fn begin(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.push(kind);
    start
}

/// Fill in the length prefix reserved by [`begin`].
fn finish(out: &mut Vec<u8>, start: usize) -> Result<(), FrameError> {
    let len = out.len() - start - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        // Leave `out` as it was: callers batch frames into one buffer.
        out.truncate(start);
        return Err(FrameError::TooLarge { len });
    }
    // MAX_FRAME_LEN fits in a u32, checked just above.
    let prefix = (len as u32).to_be_bytes();
    out[start..start + HEADER_LEN].copy_from_slice(&prefix);
    Ok(())
}

/// Callers validated the string as a topic or pattern, so it is at most MAX_TOPIC_LEN bytes.
fn put_str16(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Decode one frame body (the bytes after the length prefix).
pub fn decode(body: &[u8]) -> Result<Frame, FrameError> {
    if body.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len: body.len() });
    }
    let mut r = Cursor { rest: body };
    let frame = match r.u8()? {
        SUBSCRIBE => {
            let sid = r.u32()?;
            let pattern = r.str16()?;
            topic::validate_pattern(pattern)?;
            Frame::Subscribe { sid, pattern: pattern.to_owned() }
        }
        UNSUBSCRIBE => Frame::Unsubscribe { sid: r.u32()? },
        PUBLISH => {
            let (topic, reply_to) = r.topics()?;
            let payload = r.payload()?;
            return Ok(Frame::Publish { topic, reply_to, payload });
        }
        DELIVER => {
            let sid = r.u32()?;
            let (topic, reply_to) = r.topics()?;
            let payload = r.payload()?;
            return Ok(Frame::Deliver { sid, topic, reply_to, payload });
        }
        PING => Frame::Ping,
        PONG => Frame::Pong,
        REFUSED => {
            let what = match r.u8()? {
                1 => Refusal::Subscribe,
                2 => Refusal::Publish,
                _ => return Err(FrameError::Malformed("unknown refusal")),
            };
            let sid = r.u32()?;
            let topic = r.str16()?;
            topic::validate_pattern(topic)?;
            Frame::Refused { what, sid, topic: topic.to_owned() }
        }
        _ => return Err(FrameError::Malformed("unknown frame type")),
    };
    if !r.rest.is_empty() {
        return Err(FrameError::Malformed("trailing bytes after the frame"));
    }
    Ok(frame)
}

/// Decode the first frame in `buf` (length prefix included). `Ok(None)` means more bytes are
/// needed; `Ok(Some((frame, used)))` says how many bytes the frame took.
pub fn decode_from(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(len) = body_len(buf)? else {
        return Ok(None);
    };
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode(body)?, HEADER_LEN + len)))
}

/// The body length announced by the prefix at the start of `buf`, checked against the limit
/// before anyone allocates for it.
fn body_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut bytes = [0; HEADER_LEN];
    bytes.copy_from_slice(prefix);
    checked_len(u32::from_be_bytes(bytes)).map(Some)
}

fn checked_len(len: u32) -> Result<usize, FrameError> {
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    if len == 0 {
        return Err(FrameError::Malformed("empty frame"));
    }
    Ok(len)
}

/// Read one frame from `r`, using `buf` as scratch space. `Ok(None)` on a clean end of stream
/// between frames. Memory grows with the bytes that actually arrive, never with the announced
/// length alone. Not cancel-safe: a frame half read when the future is dropped is lost, so callers
/// drop it only when they are closing the connection anyway.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<Frame>, FrameError> {
    let mut prefix = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        got += n;
    }
    let len = checked_len(u32::from_be_bytes(prefix))?;
    buf.clear();
    let n = (&mut *r).take(len as u64).read_to_end(buf).await?;
    if n < len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    let frame = decode(buf);
    // A peer that once sent a 2 MiB frame should not pin 2 MiB per idle connection.
    if buf.capacity() > 64 * 1024 {
        buf.clear();
        buf.shrink_to(64 * 1024);
    }
    frame.map(Some)
}

struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.rest.len() < n {
            return Err(FrameError::Malformed("frame ends early"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn str16(&mut self) -> Result<&'a str, FrameError> {
        let len = usize::from(self.u16()?);
        if len > topic::MAX_TOPIC_LEN {
            return Err(FrameError::Malformed("topic longer than the limit"));
        }
        std::str::from_utf8(self.take(len)?).map_err(|_| FrameError::Malformed("topic is not UTF-8"))
    }

    /// A topic and an optional reply topic, both concrete.
    fn topics(&mut self) -> Result<(String, Option<String>), FrameError> {
        let topic = self.str16()?;
        topic::validate_topic(topic)?;
        let reply_to = match self.str16()? {
            "" => None,
            reply_to => {
                topic::validate_topic(reply_to)?;
                Some(reply_to.to_owned())
            }
        };
        Ok((topic.to_owned(), reply_to))
    }

    fn payload(&mut self) -> Result<Vec<u8>, FrameError> {
        let payload = std::mem::take(&mut self.rest);
        if payload.len() > MAX_PAYLOAD {
            return Err(FrameError::PayloadTooLarge { len: payload.len() });
        }
        Ok(payload.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-z0-9_-]{1,10}", 1..5).prop_map(|t| t.join("."))
    }

    fn pattern() -> impl Strategy<Value = String> {
        (prop::collection::vec(prop_oneof!["[a-z0-9]{1,6}", Just("*".to_owned())], 1..5), any::<bool>())
            .prop_map(|(mut t, tail)| {
                if tail {
                    t.push(">".into());
                }
                t.join(".")
            })
    }

    fn frame() -> impl Strategy<Value = Frame> {
        let payload = prop::collection::vec(any::<u8>(), 0..512);
        prop_oneof![
            (any::<u32>(), pattern()).prop_map(|(sid, pattern)| Frame::Subscribe { sid, pattern }),
            any::<u32>().prop_map(|sid| Frame::Unsubscribe { sid }),
            (topic(), prop::option::of(topic()), payload.clone())
                .prop_map(|(topic, reply_to, payload)| Frame::Publish { topic, reply_to, payload }),
            (any::<u32>(), topic(), prop::option::of(topic()), payload)
                .prop_map(|(sid, topic, reply_to, payload)| Frame::Deliver { sid, topic, reply_to, payload }),
            Just(Frame::Ping),
            Just(Frame::Pong),
            (any::<bool>(), any::<u32>(), pattern()).prop_map(|(sub, sid, topic)| Frame::Refused {
                what: if sub { Refusal::Subscribe } else { Refusal::Publish },
                sid,
                topic
            }),
        ]
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&bytes);
            let _ = decode_from(&bytes);
        }

        #[test]
        fn decoder_never_panics_on_plausible_frames(kind in 0u8..9, body in prop::collection::vec(any::<u8>(), 0..64)) {
            // Random bytes rarely get past the type byte; start from a valid type and prefix.
            let mut buf = ((body.len() + 1) as u32).to_be_bytes().to_vec();
            buf.push(kind);
            buf.extend_from_slice(&body);
            let _ = decode_from(&buf);
        }

        #[test]
        fn round_trip(frames in prop::collection::vec(frame(), 1..8)) {
            let mut buf = Vec::new();
            for f in &frames {
                f.encode(&mut buf).expect("encode a valid frame");
            }
            let mut at = 0;
            for f in &frames {
                let (decoded, used) = decode_from(&buf[at..]).expect("decode").expect("complete frame");
                prop_assert_eq!(&decoded, f);
                at += used;
            }
            prop_assert_eq!(at, buf.len());
        }

        #[test]
        fn every_proper_prefix_is_incomplete(f in frame()) {
            let mut buf = Vec::new();
            f.encode(&mut buf).expect("encode a valid frame");
            for cut in 0..buf.len() {
                prop_assert!(decode_from(&buf[..cut]).expect("a prefix is not an error").is_none());
            }
        }

        #[test]
        fn async_reader_round_trip(frames in prop::collection::vec(frame(), 1..8)) {
            let mut bytes = Vec::new();
            for f in &frames {
                f.encode(&mut bytes).expect("encode a valid frame");
            }
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let decoded = rt.block_on(async {
                let mut r = &bytes[..];
                let mut scratch = Vec::new();
                let mut out = Vec::new();
                while let Some(f) = read_frame(&mut r, &mut scratch).await.expect("read") {
                    out.push(f);
                }
                out
            });
            prop_assert_eq!(decoded, frames);
        }
    }

    #[test]
    fn oversized_length_is_refused_before_reading_the_body() {
        let mut buf = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
        buf.push(PING);
        assert!(matches!(decode_from(&buf), Err(FrameError::TooLarge { .. })));
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let err = rt
            .block_on(read_frame(&mut &u32::MAX.to_be_bytes()[..], &mut Vec::new()))
            .expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { .. }));
    }

    #[test]
    fn oversized_payload_is_refused() {
        let big = vec![0; MAX_PAYLOAD + 1];
        let err = encode_publish(&mut Vec::new(), "a", None, &big).expect_err("too large");
        assert!(matches!(err, FrameError::PayloadTooLarge { .. }));
        let mut ok = Vec::new();
        encode_publish(&mut ok, "a", None, &big[1..]).expect("max payload fits");
        assert!(matches!(decode_from(&ok), Ok(Some((Frame::Publish { .. }, _)))));
    }

    #[test]
    fn truncated_stream_is_an_error_and_clean_end_is_none() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let mut buf = Vec::new();
        Frame::Ping.encode(&mut buf).expect("encode");
        let none = rt.block_on(read_frame(&mut &[][..], &mut Vec::new())).expect("clean end");
        assert!(none.is_none());
        let err = rt.block_on(read_frame(&mut &buf[..2], &mut Vec::new())).expect_err("truncated");
        assert!(!err.is_malformed());
    }

    #[test]
    fn wildcards_in_published_topics_are_malformed() {
        let mut buf = Vec::new();
        // Hand-build a publish to `a.*`, which the encoder would refuse.
        let start = begin(&mut buf, PUBLISH);
        put_str16(&mut buf, "a.*");
        put_str16(&mut buf, "");
        finish(&mut buf, start).expect("finish");
        assert!(matches!(decode_from(&buf), Err(FrameError::Topic(_))));
    }
}
