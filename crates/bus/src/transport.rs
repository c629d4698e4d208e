//! What bus users program against: a [`Transport`] moves opaque byte messages between topics.
//! The embedded hub client ([`crate::client::BusClient`]) implements it today; a NATS transport
//! can implement it later without touching callers. A transport never interprets payloads —
//! signing and verifying them is the envelope layer's job, above this one.

use std::fmt;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::frame::MAX_PAYLOAD;
use crate::topic::TopicError;

/// A message as delivered to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The concrete topic it was published to (not the subscription's pattern).
    pub topic: String,
    /// Where the sender wants replies, if anywhere.
    pub reply_to: Option<String>,
    /// The publisher's bytes, unchanged and unverified: on this bus, an encoded envelope to
    /// run through a verifier before trusting anything in it.
    pub payload: Vec<u8>,
}

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The bounded outbound queue is full; the caller decides whether to retry, wait or drop.
    #[error("the outbound queue is full")]
    Full,
    /// The topic, reply topic or pattern breaks the topic rules; retrying will not help.
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    /// The payload is over [`MAX_PAYLOAD`]; retrying will not help.
    #[error("payload of {len} bytes exceeds the limit of {MAX_PAYLOAD}")]
    PayloadTooLarge {
        /// The payload's length in bytes.
        len: usize,
    },
    /// A wait (for the connection, or for a flush to be answered) ran out after this long;
    /// the command may still reach the hub later.
    #[error("timed out after {0:?}")]
    Timeout(Duration),

    /// The connection dropped while the operation waited for the peer; it may be retried.
    #[error("the connection to the hub was lost")]
    Disconnected,
    /// The transport has stopped, or the subscription ended (see [`Subscription::next`]).
    #[error("the transport is closed")]
    Closed,
}

/// The interface callers use to reach the bus.
pub trait Transport: Send + Sync + fmt::Debug {
    /// Queue a message; never blocks. Err(TransportError::Full) when the bounded outbound queue is full.
    fn publish(&self, topic: &str, reply_to: Option<&str>, payload: Vec<u8>) -> Result<(), TransportError>;

    /// Messages on topics matching `pattern`, until the Subscription is dropped (which unsubscribes).
    fn subscribe(&self, pattern: &str) -> Result<Subscription, TransportError>;

    /// A fresh, unguessable reply topic: `_inbox.<member id>.<random hex>`, under the member's
    /// own id (see [`crate::acl`]) where the transport knows it, else `_inbox.<random hex>`.
    fn new_inbox(&self) -> String;

    /// Whether the transport is connected now, following changes, where the transport can
    /// tell (`None` otherwise). A publisher of state uses it to publish again the moment it
    /// reconnects, in case the other side lost what it kept.
    fn connection_state(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }
}

/// A stream of messages matching one pattern. Dropping it unsubscribes.
pub struct Subscription {
    pattern: String,
    rx: mpsc::Receiver<Message>,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Subscription {
    /// For transport implementations: wrap the receiving end of a bounded channel the transport
    /// feeds, and what to run when the subscriber drops it (typically: tell the transport to
    /// unsubscribe).
    pub fn new(
        pattern: impl Into<String>,
        rx: mpsc::Receiver<Message>,
        on_drop: impl FnOnce() + Send + Sync + 'static,
    ) -> Self {
        Self { pattern: pattern.into(), rx, on_drop: Some(Box::new(on_drop)) }
    }

    /// The next message. `None` means the subscription ended: the transport was dropped, or this
    /// subscriber fell a whole queue behind and was cut off rather than silently skip messages.
    /// Either way, subscribe again to resynchronise (retained `state.*` topics are redelivered).
    pub async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// The pattern this subscription was made with.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.pattern)
            .field("queued", &self.rx.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(on_drop) = self.on_drop.take() {
            on_drop();
        }
    }
}

/// request/reply on top of any Transport: subscribe to `inbox` (the caller made it with new_inbox() and may have embedded it in a signed payload), publish, wait for the first reply or time out.
pub async fn request(
    t: &dyn Transport,
    topic: &str,
    inbox: &str,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Message, TransportError> {
    // Subscribing first matters: a transport that keeps per-connection order (ours does) then
    // registers the inbox before the request can reach a responder.
    let mut replies = t.subscribe(inbox)?;
    t.publish(topic, Some(inbox), payload)?;
    match tokio::time::timeout(timeout, replies.next()).await {
        Ok(Some(reply)) => Ok(reply),
        Ok(None) => Err(TransportError::Closed),
        Err(_) => Err(TransportError::Timeout(timeout)),
    }
}

/// `_inbox.` followed by 128 random bits in hex, or the OS random source's error.
pub fn random_inbox() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    let mut inbox = String::with_capacity(7 + 32);
    inbox.push_str("_inbox.");
    for b in bytes {
        inbox.push(char::from(HEX[usize::from(b >> 4)]));
        inbox.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    Ok(inbox)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::validate_topic;

    #[test]
    fn inboxes_are_valid_topics_and_distinct() {
        let a = random_inbox().expect("random");
        let b = random_inbox().expect("random");
        assert_ne!(a, b);
        assert_eq!(a.len(), 7 + 32);
        validate_topic(&a).expect("inbox is a valid topic");
    }

    #[tokio::test]
    async fn dropping_a_subscription_runs_its_hook() {
        let (_tx, rx) = mpsc::channel(1);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let sub = Subscription::new("a.>", rx, move || {
            let _ = done_tx.send(());
        });
        assert_eq!(sub.pattern(), "a.>");
        drop(sub);
        done_rx.await.expect("hook ran");
    }
}
