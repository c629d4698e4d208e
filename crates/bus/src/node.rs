//! A node on its ring's bus: it signs what it publishes, delivers only what its trust set
//! accepts, and follows its parent's trust updates on the retained trust topic — so a node
//! that reconnects is brought level by the next (retained) bundle, and its trust changes only
//! when its parent says so. Requests and replies are signed envelopes too: a request names a
//! fresh inbox as its reply-to, and only a verified envelope sealed for that inbox answers it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::acl::{self, PARENT_ID};
use crate::counters::Counters;
use crate::envelope::{Envelope, SealError};
use crate::identity::{Identity, KeyId};
use crate::transport::{Subscription, Transport, TransportError};
use crate::trust::{
    BundleError, Publisher, TRUST_UPDATE_TOPIC, TrustBundle, TrustChange, TrustUpdate, Verifier,
    VerifierConfig,
};

/// Why a [`BusNode`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The transport refused the subscribe or publish (queue full, closed, invalid topic).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The envelope could not be sealed: invalid topic or reply topic, payload too large.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The trust bundle given to start the node, or the one in force when subscribing, does
    /// not validate.
    #[error("invalid trust bundle: {0}")]
    Bundle(#[from] BundleError),
    /// The sealed bundle from the join does not decode, is not a `Replace`, or is not signed
    /// by a parent key of the ring it lists; the text says which.
    #[error("the bundle at birth is not usable: {0}")]
    Birth(String),
    /// The trust set did not reach this version in time (also returned at once if the node's
    /// trust follower has stopped).
    #[error("timed out waiting for trust version {0}")]
    Timeout(u64),
    /// No reply the node trusts arrived on the request's inbox within the timeout; the
    /// request may still have been acted on.
    #[error("no verified reply to the request on {topic} within {after:?}")]
    RequestTimeout {
        /// The topic the request was published on.
        topic: String,
        /// How long the node waited.
        after: Duration,
    },
    /// [`BusNode::reply`] was asked to answer an envelope that named no reply topic.
    #[error("the envelope on {topic} asks for no reply")]
    NoReplyTo {
        /// The topic the envelope came on.
        topic: String,
    },
    /// The request's reply topic is not an inbox of the parent's, or the request was not from
    /// the parent; no answer was sent, and `replies_refused` was counted.
    #[error("the request on {topic} names {reply_to:?} for its reply, which is not an inbox of its sender")]
    ForeignReplyTo {
        /// The topic the request came on.
        topic: String,
        /// The reply topic it named.
        reply_to: String,
    },
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The trust bundle a child got from its parent when it joined: a signed envelope whose payload
/// is a `Replace` update. It is trusted because it came over the authenticated join, and it
/// must be self-consistent: signed by a parent key that it lists itself.
pub fn bundle_from_birth(sealed: &[u8]) -> Result<TrustBundle, NodeError> {
    let env = Envelope::decode(sealed).map_err(|e| NodeError::Birth(e.to_string()))?;
    let update: TrustUpdate =
        serde_json::from_slice(env.payload()).map_err(|e| NodeError::Birth(e.to_string()))?;
    let TrustChange::Replace(bundle) = update.change else {
        return Err(NodeError::Birth("it is not a whole bundle".into()));
    };
    bundle.validate()?;
    if !bundle.is_parent(&env.sender()) || bundle.ring != env.ring() {
        return Err(NodeError::Birth("it is not signed by a parent key it lists".into()));
    }
    env.verify_signature().map_err(|e| NodeError::Birth(e.to_string()))?;
    Ok(bundle)
}

/// One node's presence on the bus.
pub struct BusNode {
    transport: Arc<dyn Transport>,
    /// Signs as this node; replaced when the node rotates its key.
    publisher: std::sync::RwLock<Arc<Publisher>>,
    ring: u8,
    trust: watch::Receiver<TrustBundle>,
    config: VerifierConfig,
    counters: Arc<Counters>,
    follower: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for BusNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusNode").field("key", &self.key_id()).finish_non_exhaustive()
    }
}

impl Drop for BusNode {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl BusNode {
    /// Join the bus through `transport` as `identity`, trusting `bundle` until the parent says
    /// otherwise. Must be called inside a tokio runtime.
    pub fn start(
        transport: Arc<dyn Transport>,
        identity: Identity,
        bundle: TrustBundle,
        config: VerifierConfig,
    ) -> Result<BusNode, NodeError> {
        let counters = Arc::new(Counters::new());
        let mut verifier = Verifier::new(bundle.clone(), config, counters.clone())?;
        let ring = bundle.ring;
        let (tx, rx) = watch::channel(bundle);
        let mut sub = transport.subscribe(TRUST_UPDATE_TOPIC)?;
        let follower = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let now = now_ms();
                let Ok(env) = verifier.accept(&m.payload, now) else { continue };
                match verifier.apply_update(&env, now) {
                    Ok(true) => {
                        tx.send_replace(verifier.bundle().clone());
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(ring, error = %e, "trust update refused"),
                }
            }
        });
        let publisher = Publisher::starting_now(identity, ring, counters.clone());
        Ok(BusNode {
            transport,
            publisher: std::sync::RwLock::new(Arc::new(publisher)),
            ring,
            trust: rx,
            config,
            counters,
            follower,
        })
    }

    fn publisher(&self) -> Arc<Publisher> {
        self.publisher.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The key this node signs with now; changes after [`BusNode::adopt_identity`].
    pub fn key_id(&self) -> KeyId {
        self.publisher().identity().key_id()
    }

    /// Sign as `identity` from now on: the node rotated its key and its parent accepted the
    /// new one.
    pub fn adopt_identity(&self, identity: Identity) {
        let publisher = Arc::new(Publisher::starting_now(identity, self.ring, self.counters.clone()));
        *self.publisher.write().unwrap_or_else(std::sync::PoisonError::into_inner) = publisher;
    }

    /// This node's envelope counters (published, delivered, rejected by reason), shared by its
    /// publisher, its trust follower and every [`NodeSubscription`].
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The trust set in force now.
    pub fn bundle(&self) -> TrustBundle {
        self.trust.borrow().clone()
    }

    /// Whether `env` (an envelope this node accepted) was signed by a parent key of its ring
    /// that is not revoked ([`TrustBundle::is_parent`]).
    pub fn is_from_parent(&self, env: &Envelope) -> bool {
        self.trust.borrow().is_parent(&env.sender())
    }

    /// Wait until the trust set reaches `version` (or later).
    pub async fn wait_for_trust(&self, version: u64, timeout: Duration) -> Result<TrustBundle, NodeError> {
        let mut rx = self.trust.clone();
        let wait = rx.wait_for(|b| b.version >= version);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(b)) => Ok(b.clone()),
            _ => Err(NodeError::Timeout(version)),
        }
    }

    /// Sign and publish.
    pub fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), NodeError> {
        let sealed = self.publisher().seal(topic, None, payload, now_ms())?;
        Ok(self.transport.publish(topic, None, sealed)?)
    }

    /// Ask on `topic` and wait for the answer: the first reply on a fresh inbox of this member's
    /// own (`_inbox.<member id>.<random>`, from the transport) that the node's trust set
    /// accepts, or [`NodeError::RequestTimeout`]. The request is signed with the
    /// inbox as its reply-to, so an answer is bound to this request: a reply sealed for any
    /// other inbox (a replay of an old answer) is refused, as is anything unsigned or from a key
    /// the node does not trust. Who may answer *what* is the caller's to check on the
    /// envelope's sender.
    pub async fn request(
        &self,
        topic: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Envelope, NodeError> {
        let publisher = self.publisher();
        request(self.transport.as_ref(), &publisher, topic, payload, timeout, |inbox| self.subscribe(inbox))
            .await
    }

    /// Answer `request` (an envelope this node accepted) on its reply-to inbox, signed — only
    /// if that is an inbox of the requester's own: for a request signed by a parent key, a
    /// parent inbox (`_inbox.parent.…`). A node knows no other member's id, so it answers only
    /// its parent; anything else is refused with [`NodeError::ForeignReplyTo`] and counted in
    /// `replies_refused`, so a request cannot aim a signed answer at a topic of its choosing.
    pub fn reply(&self, request: &Envelope, payload: Vec<u8>) -> Result<(), NodeError> {
        let Some(inbox) = request.reply_to() else {
            return Err(NodeError::NoReplyTo { topic: request.topic().to_string() });
        };
        let from_parent = self.is_from_parent(request);
        if !from_parent || !acl::reply_allowed(PARENT_ID, inbox) {
            self.counters.reply_refused();
            return Err(NodeError::ForeignReplyTo {
                topic: request.topic().to_string(),
                reply_to: inbox.to_string(),
            });
        }
        let sealed = self.publisher().seal(inbox, None, payload, now_ms())?;
        Ok(self.transport.publish(inbox, None, sealed)?)
    }

    /// Verified envelopes on topics matching `pattern`.
    pub fn subscribe(&self, pattern: &str) -> Result<NodeSubscription, NodeError> {
        let sub = self.transport.subscribe(pattern)?;
        let verifier = Verifier::new(self.bundle(), self.config, self.counters.clone())?;
        Ok(NodeSubscription { sub, verifier, trust: self.trust.clone() })
    }
}

/// Ask on `topic` over `transport`, signed by `publisher`, with a fresh inbox as reply-to, and
/// return the first verified reply sealed for that inbox (a verified answer sealed for another
/// inbox is a replayed one, and is skipped). `replies` subscribes to the inbox with the caller's
/// verification. The one request procedure: [`BusNode::request`] and the ring parent's, which
/// holds its trust set itself rather than following it ([`NodeSubscription::with_bundle`]).
pub async fn request(
    transport: &dyn Transport,
    publisher: &Publisher,
    topic: &str,
    payload: Vec<u8>,
    timeout: Duration,
    replies: impl FnOnce(&str) -> Result<NodeSubscription, NodeError>,
) -> Result<Envelope, NodeError> {
    let inbox = transport.new_inbox();
    // Subscribing first: the transport keeps per-connection order, so the inbox is registered
    // at the hub before the request can reach anyone who answers it.
    let mut replies = replies(&inbox)?;
    let sealed = publisher.seal(topic, Some(&inbox), payload, now_ms())?;
    transport.publish(topic, Some(&inbox), sealed)?;
    let first = async {
        while let Some(env) = replies.next().await {
            if env.topic() == inbox {
                return Some(env);
            }
            tracing::debug!(topic = %env.topic(), sender = %env.sender().short(), "reply sealed for another inbox ignored");
        }
        None
    };
    match tokio::time::timeout(timeout, first).await {
        Ok(Some(env)) => Ok(env),
        Ok(None) => Err(TransportError::Closed.into()),
        Err(_) => Err(NodeError::RequestTimeout { topic: topic.to_string(), after: timeout }),
    }
}

/// A subscription that yields only envelopes the node's trust set accepts; the rest are
/// counted by reason and dropped.
#[derive(Debug)]
pub struct NodeSubscription {
    sub: Subscription,
    verifier: Verifier,
    trust: watch::Receiver<TrustBundle>,
}

impl NodeSubscription {
    /// Verified envelopes on `pattern`, under `bundle` for as long as the subscription lasts:
    /// for the ring's parent, which holds the ring's trust set itself rather than following
    /// it on the bus.
    pub fn with_bundle(
        transport: &dyn Transport,
        pattern: &str,
        bundle: TrustBundle,
        config: VerifierConfig,
        counters: Arc<Counters>,
    ) -> Result<NodeSubscription, NodeError> {
        let sub = transport.subscribe(pattern)?;
        let verifier = Verifier::new(bundle.clone(), config, counters)?;
        // Nothing sends on it: the bundle never changes.
        let (_, trust) = watch::channel(bundle);
        Ok(NodeSubscription { sub, verifier, trust })
    }

    /// The next envelope that verifies, under the node's current trust set (adopted before
    /// checking each message). `None` once the underlying subscription has ended: the
    /// transport closed it, refused it, or its queue overflowed; resubscribe to continue.
    pub async fn next(&mut self) -> Option<Envelope> {
        loop {
            let m = self.sub.next().await?;
            if self.trust.has_changed().unwrap_or(false) {
                let bundle = self.trust.borrow_and_update().clone();
                if let Err(e) = self.verifier.adopt(&bundle) {
                    tracing::warn!(error = %e, "cannot adopt the new trust bundle");
                }
            }
            if let Ok(env) = self.verifier.accept(&m.payload, now_ms()) {
                return Some(env);
            }
        }
    }
}
