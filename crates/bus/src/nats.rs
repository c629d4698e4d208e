//! A [`Transport`] over NATS: the same topics, payloads and guarantees as the embedded hub's
//! client, on a `nats-server` instead. NATS authenticates the connection; envelopes stay signed
//! and every subscriber still verifies each one, as on the hub.
//!
//! What the hub gives and how it is kept here:
//! - `publish` never blocks: it queues on a bounded channel ([`TransportError::Full`] when
//!   full) that one owner task drains into the NATS connection, in order.
//! - Subscribing goes through the same queue, so a subscription made before a publish is
//!   registered with the server before that publish is sent (request/reply relies on it).
//! - A subscriber that falls a whole queue behind is cut off (its subscription ends) rather
//!   than silently skipping messages.
//! - Retained `state.*`: a JetStream stream over `state.>` keeps one message per subject; a
//!   subscription whose pattern can match `state.*` topics reads them through an ordered
//!   consumer that delivers the last message of each matching subject, then new ones. Its
//!   non-`state` topics come from a plain NATS subscription. An empty payload clears a topic:
//!   live subscribers get it, later ones do not.
//! - `new_inbox` is `_inbox.<member id>.<random hex>` when the member id is configured.
//! - With [`NatsConfig::tls`], mutual TLS from the ring's certificates, as on the hub: the
//!   server's `tls` block names the ring CA as `ca_file` with `verify: true`.

pub mod auth;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::frame::MAX_PAYLOAD;
use crate::tls::{self, TlsError, TlsMaterial};
use crate::transport::{Message, Subscription, Transport, TransportError, random_inbox};
use crate::{acl, topic};

/// The JetStream stream that retains `state.*`.
pub const STATE_STREAM: &str = "ENJIN_STATE";
/// The subjects it captures.
const STATE_SUBJECTS: &str = "state.>";
/// A retained message's reply topic travels in this header: a reply subject on a publish into
/// a stream would be taken by JetStream as the address for its acknowledgement.
const REPLY_HEADER: &str = "Enjin-Reply-To";

/// How a [`NatsTransport`] connects and queues.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// The server URL, `nats://host:port` (or `tls://`).
    pub url: String,
    /// The member's id, as in [`crate::acl`]: inboxes are made under `_inbox.<id>.`.
    pub member_id: Option<String>,
    /// Credentials for the connection, when the server asks for them.
    pub auth: Option<NatsAuth>,
    /// Commands (publishes, subscribes) queued towards the server.
    pub outbound_queue: usize,
    /// Messages queued per subscription before its subscriber counts as lagging.
    pub subscription_queue: usize,
    /// Time allowed to connect and to create the state stream or a consumer.
    pub connect_timeout: Duration,
    /// Mutual TLS with the ring's certificates, as on the hub: TLS 1.3, only the ring CA
    /// trusted, this member's certificate presented. `None` connects as the URL says.
    pub tls: Option<TlsMaterial>,
}

impl NatsConfig {
    /// Defaults for `url`: the same queue sizes as the hub client.
    pub fn new(url: impl Into<String>) -> Self {
        let client = crate::client::ClientConfig::default();
        Self {
            url: url.into(),
            member_id: None,
            auth: None,
            outbound_queue: client.outbound_queue,
            subscription_queue: client.subscription_queue,
            connect_timeout: client.connect_timeout,
            tls: None,
        }
    }
}

/// How the connection proves who it is to the server.
#[derive(Clone)]
pub enum NatsAuth {
    /// A user name and password from the server's authorization block.
    UserPassword {
        /// The user.
        user: String,
        /// Its password.
        password: String,
    },
    /// An nkey seed (`SU…`); the server knows the public key.
    Nkey(String),
    /// A user JWT and its seed, minted by the ring's account ([`auth`]): the server trusts
    /// the operator that signed the account, and knows nothing of the user beforehand.
    Credentials(auth::NatsCredentials),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UserPassword { user, .. } => f.debug_struct("UserPassword").field("user", user).finish(),
            Self::Nkey(_) => f.write_str("Nkey"),
            Self::Credentials(credentials) => f.debug_tuple("Credentials").field(credentials).finish(),
        }
    }
}

/// Why connecting to NATS failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    /// The server could not be reached or refused the connection.
    #[error("failed to connect to {url}: {source}")]
    Connect {
        /// The server URL.
        url: String,
        /// The client's error.
        source: async_nats::ConnectError,
    },
    /// The stream that retains `state.*` could not be found or created.
    #[error("failed to get or create the {STATE_STREAM} stream: {0}")]
    Stream(String),
    /// The credentials' seed is not a user nkey seed.
    #[error("the nats credentials' seed is not an nkey seed: {0}")]
    Seed(nkeys::error::Error),
    /// Connecting or creating the stream took longer than the configured timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The TLS material could not be made into a client configuration.
    #[error("invalid TLS material: {0}")]
    Tls(#[from] TlsError),
}

enum Command {
    Publish { topic: String, reply_to: Option<String>, payload: Vec<u8> },
    Subscribe { pattern: String, tx: mpsc::Sender<Message>, stop: watch::Receiver<bool> },
}

/// A [`Transport`] over a NATS connection. Dropping it stops its tasks and closes the connection.
pub struct NatsTransport {
    commands: mpsc::Sender<Command>,
    connected: watch::Receiver<bool>,
    member_id: Option<String>,
    subscription_queue: usize,
    owner: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("member_id", &self.member_id)
            .field("connected", &*self.connected.borrow())
            .finish_non_exhaustive()
    }
}

impl NatsTransport {
    /// Connects, makes sure the `state.*` stream exists (one message per subject) and starts
    /// the task that owns the connection. Later disconnections are retried by the client.
    pub async fn connect(config: NatsConfig) -> Result<Self, NatsConnectError> {
        let (connected_tx, connected) = watch::channel(false);
        let connected_tx = Arc::new(connected_tx);
        let events = Arc::clone(&connected_tx);
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(config.connect_timeout)
            .max_reconnects(None)
            .event_callback(move |event| {
                let events = Arc::clone(&events);
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            events.send_replace(true);
                        }
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            events.send_replace(false);
                        }
                        other => debug!(event = %other, "nats event"),
                    }
                }
            });
        if let Some(id) = &config.member_id {
            // The ordered consumers' delivery subjects are the client's own inboxes; under
            // the member's `_inbox.<id>` they fall within what its role may subscribe to.
            options = options.custom_inbox_prefix(format!("{}.{id}", acl::INBOX));
        }
        options = match &config.auth {
            Some(NatsAuth::UserPassword { user, password }) => {
                options.user_and_password(user.clone(), password.clone())
            }
            Some(NatsAuth::Nkey(seed)) => options.nkey(seed.clone()),
            Some(NatsAuth::Credentials(credentials)) => {
                let key =
                    Arc::new(nkeys::KeyPair::from_seed(&credentials.seed).map_err(NatsConnectError::Seed)?);
                options.jwt(credentials.jwt.clone(), move |nonce| {
                    let key = Arc::clone(&key);
                    async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
                })
            }
            None => options,
        };
        if let Some(material) = &config.tls {
            let mut tls = rustls::ClientConfig::clone(&*tls::client_config(material)?);
            // The hub's ALPN name versions the hub's wire format, not NATS's.
            tls.alpn_protocols.clear();
            options = options.require_tls(true).tls_client_config(tls);
        }
        let timeout = config.connect_timeout;
        let client = tokio::time::timeout(timeout, options.connect(config.url.as_str()))
            .await
            .map_err(|_| NatsConnectError::Timeout(timeout))?
            .map_err(|source| NatsConnectError::Connect { url: config.url.clone(), source })?;
        connected_tx.send_replace(true);
        let js = jetstream::new(client.clone());
        let stream_config = jetstream::stream::Config {
            name: STATE_STREAM.to_owned(),
            subjects: vec![STATE_SUBJECTS.to_owned()],
            max_messages_per_subject: 1,
            max_message_size: i32::try_from(MAX_PAYLOAD + 4096).unwrap_or(i32::MAX),
            ..Default::default()
        };
        let stream = tokio::time::timeout(timeout, js.get_or_create_stream(stream_config))
            .await
            .map_err(|_| NatsConnectError::Timeout(timeout))?
            .map_err(|e| NatsConnectError::Stream(e.to_string()))?;
        let (commands, rx) = mpsc::channel(config.outbound_queue.max(1));
        let owner = tokio::spawn(own(client, stream, rx));
        Ok(Self {
            commands,
            connected,
            member_id: config.member_id,
            subscription_queue: config.subscription_queue.max(1),
            owner,
        })
    }
}

impl Drop for NatsTransport {
    fn drop(&mut self) {
        self.owner.abort();
    }
}

impl Transport for NatsTransport {
    fn publish(&self, topic: &str, reply_to: Option<&str>, payload: Vec<u8>) -> Result<(), TransportError> {
        topic::validate_topic(topic)?;
        if let Some(reply_to) = reply_to {
            topic::validate_topic(reply_to)?;
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(TransportError::PayloadTooLarge { len: payload.len() });
        }
        let command =
            Command::Publish { topic: topic.to_owned(), reply_to: reply_to.map(str::to_owned), payload };
        self.commands.try_send(command).map_err(queue_error)
    }

    fn subscribe(&self, pattern: &str) -> Result<Subscription, TransportError> {
        topic::validate_pattern(pattern)?;
        let (tx, rx) = mpsc::channel(self.subscription_queue);
        let (stop_tx, stop) = watch::channel(false);
        self.commands
            .try_send(Command::Subscribe { pattern: pattern.to_owned(), tx, stop })
            .map_err(queue_error)?;
        Ok(Subscription::new(pattern, rx, move || {
            stop_tx.send_replace(true);
        }))
    }

    fn new_inbox(&self) -> String {
        let fresh = match &self.member_id {
            Some(id) => acl::inbox_for(id),
            None => random_inbox(),
        };
        fresh.unwrap_or_else(|error| {
            // Without randomness an inbox could be guessed; a NATS one is still unique.
            warn!(%error, "OS random source failed; deriving the inbox from a counter");
            let prefix = self
                .member_id
                .as_deref()
                .map_or_else(|| acl::INBOX.to_owned(), |id| format!("{}.{id}", acl::INBOX));
            format!("{prefix}.{}", fallback_suffix())
        })
    }

    fn connection_state(&self) -> Option<watch::Receiver<bool>> {
        Some(self.connected.clone())
    }
}

/// A counter-based fallback suffix, only for when the OS random source fails.
fn fallback_suffix() -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}x{seq:x}", std::process::id())
}

fn queue_error<T>(e: mpsc::error::TrySendError<T>) -> TransportError {
    match e {
        mpsc::error::TrySendError::Full(_) => TransportError::Full,
        mpsc::error::TrySendError::Closed(_) => TransportError::Closed,
    }
}

/// The owner of the connection: sends commands in the order they were queued.
async fn own(client: async_nats::Client, stream: jetstream::stream::Stream, mut rx: mpsc::Receiver<Command>) {
    let mut forwarders = tokio::task::JoinSet::new();
    while let Some(command) = rx.recv().await {
        match command {
            Command::Publish { topic, reply_to, payload } => {
                let sent = match reply_to {
                    Some(reply) if is_state(&topic) => {
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert(REPLY_HEADER, reply.as_str());
                        client.publish_with_headers(topic, headers, payload.into()).await
                    }
                    Some(reply) => client.publish_with_reply(topic, reply, payload.into()).await,
                    None => client.publish(topic, payload.into()).await,
                };
                if let Err(error) = sent {
                    warn!(%error, "nats publish failed");
                }
            }
            Command::Subscribe { pattern, tx, stop } => {
                // The plain subscription is registered here, in order with the publishes; the
                // retained part (a JetStream consumer) is created by the forwarder.
                let plain = if matches_beyond_state(&pattern) {
                    match client.subscribe(pattern.clone()).await {
                        Ok(sub) => Some(sub),
                        Err(error) => {
                            warn!(%error, %pattern, "nats subscribe failed");
                            continue;
                        }
                    }
                } else {
                    None
                };
                let retained =
                    state_filter(&pattern).map(|filter| (stream.clone(), filter, client.new_inbox()));
                forwarders.spawn(forward(pattern, plain, retained, tx, stop));
            }
        }
        // Reap finished forwarders so the set does not grow with every subscription made.
        while forwarders.try_join_next().is_some() {}
    }
}

/// Whether `topic` is retained.
fn is_state(topic: &str) -> bool {
    topic.starts_with("state.")
}

/// The `state.*` subjects `pattern` can match, as a JetStream filter, if any.
fn state_filter(pattern: &str) -> Option<String> {
    let (first, rest) = match pattern.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (pattern, None),
    };
    match (first, rest) {
        (">", _) => Some(STATE_SUBJECTS.to_owned()),
        ("state" | "*", Some(rest)) => Some(format!("state.{rest}")),
        _ => None,
    }
}

/// Whether `pattern` can match topics outside `state.*`.
fn matches_beyond_state(pattern: &str) -> bool {
    !is_state(pattern)
}

/// Moves one subscription's messages to its subscriber until it drops the subscription, falls
/// a whole queue behind, or the connection ends.
async fn forward(
    pattern: String,
    mut plain: Option<async_nats::Subscriber>,
    retained: Option<(jetstream::stream::Stream, String, String)>,
    tx: mpsc::Sender<Message>,
    mut stop: watch::Receiver<bool>,
) {
    // How many of the consumer's first messages are the retained ones: among those, an empty
    // payload is a cleared topic, as on the hub, and not delivered.
    let mut retained_left: u64 = 0;
    let mut state = match retained {
        Some((stream, filter, deliver_subject)) => {
            let config = OrderedConfig {
                // Named, so that the create request's subject carries the name and the filter
                // (`$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`): the server's
                // permissions then decide which `state.*` a member may read.
                name: Some(random_inbox().map_or_else(|_| fallback_suffix(), |i| i.replace("_inbox.", "c"))),
                deliver_subject,
                filter_subject: filter,
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            };
            let consumer = tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                consumer = stream.create_consumer(config) => consumer,
            };
            let consumer = match consumer {
                Ok(consumer) => consumer,
                Err(error) => {
                    warn!(%error, %pattern, "nats: creating the retained-state consumer failed");
                    return;
                }
            };
            retained_left = consumer.cached_info().num_pending;
            match consumer.messages().await {
                Ok(messages) => Some(messages),
                Err(error) => {
                    warn!(%error, %pattern, "nats: reading retained state failed");
                    return;
                }
            }
        }
        None => None,
    };
    loop {
        let message = tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                Some(m) = next_plain(&mut plain) => Message {
        topic: m.subject.to_string(),
                    reply_to: m.reply.map(|r| r.to_string()),
                    payload: m.payload.to_vec(),
                },
                Some(m) = next_state(&mut state) => {
                    let m = match m {
                        Ok(m) => m.message,
                        Err(error) => {
                            warn!(%error, %pattern, "nats: retained-state consumer failed");
                            return;
                        }
                    };
                    if retained_left > 0 {
                    retained_left -= 1;
                    if m.payload.is_empty() {
                        continue;
                    }
                }
                let reply_to = m.headers.as_ref()
                        .and_then(|h| h.get(REPLY_HEADER))
                        .map(|v| v.as_str().to_owned());
                    Message { topic: m.subject.to_string(), reply_to, payload: m.payload.to_vec() }
                },
                else => return,
            };
        match tx.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                debug!(%pattern, "nats subscriber fell a whole queue behind; ending its subscription");
                return;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

async fn next_plain(plain: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    loop {
        let m = plain.as_mut()?.next().await?;
        // A pattern like `>` also sees `state.*` (which arrives through the consumer instead,
        // once) and the client's own JetStream traffic (`$JS.…`, `_INBOX.…`): not bus topics.
        let subject = m.subject.as_str();
        if !is_state(subject) && !subject.starts_with('$') && !subject.starts_with("_INBOX.") {
            return Some(m);
        }
    }
}

async fn next_state(
    state: &mut Option<jetstream::consumer::push::Ordered>,
) -> Option<Result<jetstream::Message, jetstream::consumer::push::OrderedError>> {
    state.as_mut()?.next().await
}

/// The subjects a member may publish and subscribe to on NATS, from its row of the ACL table:
/// its topics, and for each `state.*` pattern it may read, the JetStream requests that read it
/// (creating a consumer filtered to that pattern, its flow control, looking up the stream and
/// consumers; not deleting them: ephemeral consumers expire once their reader is gone).
/// The parent gets everything, including creating the stream.
pub fn nats_permissions(member: &acl::Member) -> acl::Permissions {
    let mut permissions = member.permissions();
    if permissions.reply_to.is_none() {
        return permissions;
    }
    let state: Vec<String> = permissions.subscribe.iter().filter(|p| is_state(p)).cloned().collect();
    for pattern in state {
        permissions.publish.push(format!("$JS.API.CONSUMER.CREATE.{STATE_STREAM}.*.{pattern}"));
    }
    permissions.publish.extend([
        format!("$JS.API.STREAM.INFO.{STATE_STREAM}"),
        format!("$JS.API.CONSUMER.INFO.{STATE_STREAM}.*"),
        format!("$JS.FC.{STATE_STREAM}.>"),
    ]);
    permissions
}

/// A nats-server `authorization` block: one user per member, named by its certificate's common
/// name, with its password and [`nats_permissions`]. What NATS cannot express is left out: a
/// member role's topics outside the platform's namespaces, and the rule that a reply-to must be
/// the publisher's own inbox (subscribers' verifiers still check every envelope).
pub fn authorization(members: &[(&acl::Member, &str)]) -> String {
    let users: Vec<serde_json::Value> = members
        .iter()
        .map(|(member, password)| {
            let permissions = nats_permissions(member);
            serde_json::json!({
                "user": member.common_name(),
                "password": password,
                "permissions": {
                    "publish": { "allow": permissions.publish },
                    "subscribe": { "allow": permissions.subscribe },
                },
            })
        })
        .collect();
    format!("authorization: {}\n", serde_json::json!({ "users": users }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_filters_cover_exactly_the_state_topics_a_pattern_matches() {
        assert_eq!(state_filter("state.desired.a").as_deref(), Some("state.desired.a"));
        assert_eq!(state_filter("state.>").as_deref(), Some("state.>"));
        assert_eq!(state_filter("*.trust").as_deref(), Some("state.trust"));
        assert_eq!(state_filter(">").as_deref(), Some("state.>"));
        assert_eq!(state_filter("*").as_deref(), None);
        assert_eq!(state_filter("state").as_deref(), None);
        assert_eq!(state_filter("logs.>").as_deref(), None);
        assert!(matches_beyond_state(">"));
        assert!(matches_beyond_state("*.trust"));
        assert!(!matches_beyond_state("state.>"));
        assert!(matches_beyond_state("state"));
    }

    #[test]
    fn a_host_may_read_only_its_rows_state_through_jetstream() {
        let id = "0f6c1a52-3f0e-4d37-9a51-6b2d8c1e7a01";
        let host = acl::Member::node(acl::Role::Host, id).expect("host");
        let p = nats_permissions(&host);
        assert!(p.subscribe.contains(&format!("state.desired.{id}")));
        let creates: Vec<&String> = p.publish.iter().filter(|s| s.contains("CONSUMER.CREATE")).collect();
        assert_eq!(
            creates,
            [
                &format!("$JS.API.CONSUMER.CREATE.{STATE_STREAM}.*.state.trust"),
                &format!("$JS.API.CONSUMER.CREATE.{STATE_STREAM}.*.state.desired.{id}"),
            ]
        );
        assert!(!p.publish.iter().any(|s| s.contains("STREAM.CREATE") || s.contains("DELETE") || s == ">"));
        let parent = acl::Member::parent("control").expect("parent");
        assert_eq!(nats_permissions(&parent).publish, [">"]);

        let block = authorization(&[(&host, "secret")]);
        let json = block.strip_prefix("authorization: ").expect("prefix");
        let parsed: serde_json::Value = serde_json::from_str(json.trim()).expect("JSON");
        assert_eq!(parsed["users"][0]["user"], format!("host:{id}"));
        assert_eq!(parsed["users"][0]["permissions"]["subscribe"]["allow"][0], "state.trust");
    }
}
