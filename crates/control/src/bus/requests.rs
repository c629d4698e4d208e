//! What the ring's parent says and asks on its bus: retained state (desired sets, routes), the
//! services it answers (packages), and requests to hosts (logs) whose replies must verify and,
//! for a host's logs, be signed by that host's key.

use super::{BusAuthority, BusError, now_ms, to_json};
use std::sync::Arc;
use std::time::Duration;

use enjin_bus::acl;
use enjin_bus::envelope::Envelope;
use enjin_bus::node::{NodeError, NodeSubscription};
use enjin_bus::transport::TransportError;
use enjin_bus::trust::{Verifier, VerifierConfig};
use uuid::Uuid;

/// Answers one request's payload with a reply's payload.
pub type RequestHandler = Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// Retained state and request serving for the platform's ring 1 services.
impl BusAuthority {
    /// Publish `payload` on a retained `state.*` topic, signed by the parent key.
    pub fn publish_state(&self, topic: &str, payload: Vec<u8>) -> Result<(), BusError> {
        let Some(t) = self.transport.lock().ok().and_then(|t| t.clone()) else { return Err(BusError::NoHub) };
        let sealed = self.publisher().seal(topic, None, payload, now_ms()).map_err(BusError::from)?;
        match t.publish(topic, None, sealed) {
            Ok(()) | Err(TransportError::Full) => Ok(()),
            Err(e) => Err(BusError::from(e)),
        }
    }

    /// Answer requests on `topic` from the ring's keys with `handler`, signed by the parent key,
    /// on each request's reply inbox; runs until the bus goes away. Handlers run on a blocking
    /// thread (they may read files).
    ///
    /// A reply goes only to an inbox of the request's verified sender (`_inbox.<its id>.…`, the
    /// id from its key's record: see [`BusAuthority::inbox_id_of_key`]); a request naming any
    /// other reply-to is not answered, and is counted in `replies_refused`. Otherwise anyone
    /// who can have bytes served (by uploading a package) could have the parent sign them onto
    /// a topic of their choosing, such as another host's desired set.
    pub async fn serve_requests(&self, topic: &str, handler: RequestHandler) -> Result<(), BusError> {
        let Some(t) = self.transport.lock().ok().and_then(|t| t.clone()) else { return Err(BusError::NoHub) };
        let mut sub = t.subscribe(topic).map_err(BusError::from)?;
        let bundle = self.bundle().await?;
        let mut verifier = Verifier::new(bundle, VerifierConfig::default(), self.counters.clone())
            .map_err(BusError::from)?;
        let mut refreshed = std::time::Instant::now();
        while let Some(m) = sub.next().await {
            // Follow trust changes (joins, revocations) now and then.
            if refreshed.elapsed() > Duration::from_secs(5) {
                if let Ok(b) = self.bundle().await
                    && let Err(e) = verifier.adopt(&b)
                {
                    tracing::warn!(error = %e, "request server cannot adopt the trust bundle");
                }
                refreshed = std::time::Instant::now();
            }
            let Ok(env) = verifier.accept(&m.payload, now_ms()) else { continue };
            let Some(inbox) = env.reply_to().map(str::to_string) else { continue };
            let requester = match self.inbox_id_of_key(&env.sender()).await {
                Ok(id) => id,
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "cannot look up the requester's key; request dropped");
                    continue;
                }
            };
            if !requester.as_deref().is_some_and(|id| acl::reply_allowed(id, &inbox)) {
                self.counters.reply_refused();
                tracing::warn!(
                    %topic,
                    sender = %env.sender().short(),
                    reply_to = %inbox,
                    "request refused: its reply-to is not an inbox of its sender"
                );
                continue;
            }
            let handler = handler.clone();
            let payload = env.into_payload();
            let reply = match tokio::task::spawn_blocking(move || handler(&payload)).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "request handler panicked");
                    continue;
                }
            };
            let sealed = match self.publisher().seal(&inbox, None, reply, now_ms()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "reply not sealed");
                    continue;
                }
            };
            if let Err(e) = t.publish(&inbox, None, sealed) {
                tracing::debug!(%topic, error = %e, "reply not sent");
            }
        }
        Ok(())
    }
}

/// How long a log request waits for its host.
pub const LOGS_TIMEOUT: Duration = Duration::from_secs(10);
/// Use reports older than this are left out of `/metrics`: the host stopped reporting.
pub const STATS_STALE_AFTER: Duration = Duration::from_secs(60);

/// Requests to hosts, and what hosts report of their instances' use.
impl BusAuthority {
    /// Ask on `topic`, signed by the parent key, and return the payload of the first reply
    /// that the ring's trust set accepts (see [`BusAuthority::logs`] for a reply that must come
    /// from one host in particular).
    pub async fn request(
        &self,
        topic: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, BusError> {
        Ok(self.request_envelope(topic, payload, timeout).await?.into_payload())
    }

    async fn request_envelope(
        &self,
        topic: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Envelope, BusError> {
        let Some(t) = self.transport.lock().ok().and_then(|t| t.clone()) else { return Err(BusError::NoHub) };
        let bundle = self.bundle().await?;
        let publisher = self.publisher();
        // Replies are counted apart: the monitor already counts every envelope on the bus.
        let replies = |inbox: &str| {
            NodeSubscription::with_bundle(
                t.as_ref(),
                inbox,
                bundle,
                VerifierConfig::default(),
                Arc::default(),
            )
        };
        match enjin_bus::node::request(t.as_ref(), &publisher, topic, payload, timeout, replies).await {
            Ok(env) => Ok(env),
            Err(NodeError::RequestTimeout { .. }) => Err(BusError::Timeout(format!(
                "no verified reply to the request on {topic} within {timeout:?}"
            ))),
            Err(NodeError::Transport(TransportError::Closed)) => Err(BusError::NoHub),
            Err(NodeError::Transport(e)) => Err(e.into()),
            Err(NodeError::Seal(e)) => Err(e.into()),
            Err(NodeError::Bundle(e)) => Err(e.into()),
            Err(e) => Err(BusError::Request(e)),
        }
    }

    /// The logs of instances `host` runs, asked of the host's agent; the reply must be signed
    /// by the key bound to `host`.
    pub async fn logs(
        &self,
        host: Uuid,
        req: &enjin_model::api::LogsRequest,
    ) -> Result<enjin_model::api::LogsReply, BusError> {
        let topic = enjin_model::api::logs_topic(host);
        let env = self.request_envelope(&topic, to_json(req)?, LOGS_TIMEOUT).await?;
        if self.node_of_key(&env.sender()).await? != Some(host) {
            return Err(BusError::Refused(format!(
                "the reply to the log request of host {host} is not signed by that host's key"
            )));
        }
        if let Ok(reply) = serde_json::from_slice::<enjin_model::api::LogsReply>(env.payload()) {
            return Ok(reply);
        }
        match serde_json::from_slice::<enjin_model::api::LogsRefused>(env.payload()) {
            Ok(refused) => Err(BusError::Refused(format!("host {host}: {}", refused.error))),
            Err(e) => Err(BusError::Invalid {
                field: "reply",
                message: format!("host {host} sent an unreadable log reply: {e}"),
            }),
        }
    }
}
