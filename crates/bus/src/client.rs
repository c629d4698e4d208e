//! A client of the embedded hub that implements [`Transport`]. One owner task holds the
//! connection and every subscription; the [`BusClient`] handle talks to it over one bounded
//! command queue, so publishes, subscriptions and flushes reach the hub in the order they were
//! made. It must never block a caller, never drop a message silently, and never give up on the
//! hub: it reconnects forever, with backoff.
//!
//! # Connection lifecycle
//! The owner task connects (TCP + mTLS, then one ping answered by the hub, all under
//! `connect_timeout`: with TLS 1.3 the client finishes its handshake before the hub has judged the
//! client certificate, so only an answer proves we were accepted). It then re-sends every live
//! subscription — the hub redelivers retained `state.*` messages to each — and drains queued
//! commands. It pings every `ping_interval`; a ping unanswered after `ping_timeout` means the hub is
//! gone. After any failure or disconnect it waits with exponential backoff and jitter
//! (`backoff_min` doubling up to `backoff_max`) and starts over.
//!
//! # Queues and overflow
//! - Outbound: commands wait in the bounded queue (`outbound_queue`) while disconnected and are
//!   sent after reconnecting. When it is full, `publish` and `subscribe` return
//!   [`TransportError::Full`] and the caller decides.
//! - Inbound: each subscription has a bounded queue (`subscription_queue`). A subscriber that lets
//!   it fill is cut off: its subscription ends (`next()` returns `None` after the queued
//!   messages) and `lagged_subscriptions` is counted. Skipping messages silently would leave it
//!   believing it had seen everything; ending the stream tells it to resubscribe and resynchronise,
//!   the same contract the hub applies to slow connections.
//!
//! # Refusals
//! The hub answers a subscribe or publish its access rules forbid with a REFUSED frame. A refused
//! subscription ends (`next()` returns `None`) and is not renewed on reconnection; both kinds are
//! counted in `refused` and logged. Inboxes are made under the member's own id, read from its
//! certificate (`_inbox.<id>.<random>`), the only inboxes the hub lets it subscribe to.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::acl::{self, Member};
use crate::frame::{self, Frame, FrameError, Refusal};
use crate::tls::{self, TlsError, TlsMaterial};
use crate::topic;
use crate::transport::{Message, Subscription, Transport, TransportError, random_inbox};

/// Frames the reader task may hand the owner before it waits.
const INBOUND_QUEUE: usize = 256;
/// The owner stops batching commands into one write once this much is ready.
const WRITE_BATCH: usize = 64 * 1024;

/// Client settings. Validated by [`BusClient::connect`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Commands (publishes, subscribes) queued towards the hub, connected or not.
    pub outbound_queue: usize,
    /// Messages queued per subscription before its subscriber counts as lagging.
    pub subscription_queue: usize,
    /// First delay before reconnecting; doubles per failure.
    pub backoff_min: Duration,
    /// Longest delay between reconnection attempts.
    pub backoff_max: Duration,
    /// Time allowed to connect, handshake and get the hub's first answer.
    pub connect_timeout: Duration,
    /// How often to ping the hub. Must be below the hub's idle timeout.
    pub ping_interval: Duration,
    /// How long a ping may go unanswered (also the limit for one write).
    pub ping_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            outbound_queue: 1024,
            subscription_queue: 1024,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(15),
            ping_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a client could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A [`ClientConfig`] value is out of range (zero queue, zero or inverted backoff, zero
    /// ping); the text names the setting.
    #[error("invalid bus client configuration: {0}")]
    Config(&'static str),
    /// The certificate, key, CA or server name cannot be used to build the TLS client.
    #[error("invalid bus client TLS material: {0}")]
    Tls(#[from] TlsError),
    /// [`BusClient::connect`] was called outside a tokio runtime, which it needs to spawn its
    /// owner task.
    #[error("the bus client must be created inside a tokio runtime")]
    NoRuntime,
    /// No randomness for the client's inbox name; the host's entropy source is broken.
    #[error("failed to read the OS random source: {0}")]
    Random(getrandom::Error),
}

/// Client counters.
#[derive(Debug, Default)]
pub struct ClientStats {
    connects: AtomicU64,
    connect_failures: AtomicU64,
    disconnects: AtomicU64,
    lagged_subscriptions: AtomicU64,
    refused: AtomicU64,
}

/// A point-in-time copy of [`ClientStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStatsSnapshot {
    /// Successful connections, the first included.
    pub connects: u64,
    /// Attempts that failed (refused, timed out, handshake rejected).
    pub connect_failures: u64,
    /// Established connections that were lost.
    pub disconnects: u64,
    /// Subscriptions ended because their subscriber fell a whole queue behind.
    pub lagged_subscriptions: u64,
    /// Subscribes and publishes the hub refused under its access rules.
    pub refused: u64,
}

impl ClientStats {
    /// Reads every counter. Each is read on its own (relaxed), so the copy is not one atomic
    /// instant; good enough for metrics and tests.
    pub fn snapshot(&self) -> ClientStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClientStatsSnapshot {
            connects: get(&self.connects),
            connect_failures: get(&self.connect_failures),
            disconnects: get(&self.disconnects),
            lagged_subscriptions: get(&self.lagged_subscriptions),
            refused: get(&self.refused),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What the handle asks of the owner task.
enum Command {
    /// An encoded Publish frame (encoded by the caller, so errors are reported synchronously).
    Publish(Vec<u8>),
    Subscribe {
        sid: u32,
        pattern: String,
        tx: mpsc::Sender<Message>,
    },
    Unsubscribe {
        sid: u32,
    },
    /// Ping the hub and report when it answers.
    Flush(oneshot::Sender<()>),
    /// The TLS configuration changed: reconnect with it unless this session already uses it.
    Reconnect,
}

/// Aborts the owner task when the client is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection to a hub that survives the hub: see the module documentation.
#[derive(Debug)]
pub struct BusClient {
    commands: mpsc::Sender<Command>,
    connected: watch::Receiver<bool>,
    next_sid: AtomicU32,
    subscription_queue: usize,
    stats: Arc<ClientStats>,
    /// Who this client is on the bus, from its certificate; `None` for a name without a role.
    /// Replaced when the certificate is ([`BusClient::set_tls`]).
    member: std::sync::RwLock<Option<Member>>,
    /// Used for inboxes only if the OS random source fails later: still unique, and unguessable
    /// to anyone who has not seen an earlier inbox of this client.
    inbox_prefix: String,
    inbox_seq: AtomicU64,
    /// The TLS configuration connections are made with.
    connector: SharedConnector,
    _owner: AbortOnDrop,
}

impl BusClient {
    /// Start a client for the hub at `addr`, whose certificate must name `server_name` and chain
    /// to the ring CA. Returns at once; the connection is made (and remade) in the background —
    /// see [`BusClient::wait_connected`]. Must be called inside a tokio runtime.
    pub fn connect(
        addr: SocketAddr,
        server_name: &str,
        tls: &TlsMaterial,
        config: ClientConfig,
    ) -> Result<BusClient, ClientError> {
        if config.outbound_queue == 0 || config.subscription_queue == 0 {
            return Err(ClientError::Config("outbound_queue and subscription_queue must be at least 1"));
        }
        if config.backoff_min.is_zero() || config.backoff_max < config.backoff_min {
            return Err(ClientError::Config("backoff_min must be positive and at most backoff_max"));
        }
        if config.ping_interval.is_zero() || config.ping_timeout.is_zero() {
            return Err(ClientError::Config("ping_interval and ping_timeout must be positive"));
        }
        let connector = SharedConnector::new(TlsConnector::from(tls::client_config(tls)?));
        let server_name = tls::server_name(server_name)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::NoRuntime)?;
        let member = member_of(tls);
        let inbox_prefix = match &member {
            Some(m) => acl::inbox_for(m.id()),
            None => random_inbox(),
        }
        .map_err(ClientError::Random)?;

        let subscription_queue = config.subscription_queue;
        let (commands_tx, commands_rx) = mpsc::channel(config.outbound_queue);
        let (connected_tx, connected_rx) = watch::channel(false);
        let stats = Arc::new(ClientStats::default());
        let owner = Owner {
            addr,
            server_name,
            connector: connector.clone(),
            subscription_queue,
            config,
            commands: commands_rx,
            subs: HashMap::new(),
            session_tls: 0,
            connected: connected_tx,
            stats: stats.clone(),
        };
        let span = info_span!("bus_client", hub = %addr);
        let task = runtime.spawn(owner.run().instrument(span));
        Ok(BusClient {
            commands: commands_tx,
            connected: connected_rx,
            next_sid: AtomicU32::new(1),
            subscription_queue,
            stats,
            member: std::sync::RwLock::new(member),
            inbox_prefix,
            inbox_seq: AtomicU64::new(0),
            connector,
            _owner: AbortOnDrop(task),
        })
    }

    /// Whether the client is connected to the hub right now.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Wait until the client is connected, or `timeout` passes.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), TransportError> {
        let mut connected = self.connected.clone();
        match tokio::time::timeout(timeout, connected.wait_for(|c| *c)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(TransportError::Closed),
            Err(_) => Err(TransportError::Timeout(timeout)),
        }
    }

    /// Wait until the hub has routed everything this client queued before the call (the hub
    /// answers pings in order with routing). Waits through a reconnection if the command was
    /// queued while disconnected; [`TransportError::Disconnected`] if the connection drops with
    /// the answer outstanding.
    pub async fn flush(&self, timeout: Duration) -> Result<(), TransportError> {
        let deadline = Instant::now() + timeout;
        let (done_tx, done_rx) = oneshot::channel();
        match tokio::time::timeout_at(deadline, self.commands.send(Command::Flush(done_tx))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(TransportError::Closed),
            Err(_) => return Err(TransportError::Timeout(timeout)),
        }
        match tokio::time::timeout_at(deadline, done_rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(TransportError::Disconnected),
            Err(_) => Err(TransportError::Timeout(timeout)),
        }
    }

    /// The client's counters.
    pub fn stats(&self) -> ClientStatsSnapshot {
        self.stats.snapshot()
    }

    /// Who this client is on the bus, as its certificate names it.
    pub fn member(&self) -> Option<Member> {
        self.member.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Use new TLS material (a renewed certificate, or one for a rotated key) from now on: the
    /// client drops its connection once everything queued before the call is written, and
    /// connects again at once with the new certificate. Subscriptions are renewed as after any
    /// reconnection, and retained state is delivered again.
    pub fn set_tls(&self, tls: &TlsMaterial) -> Result<(), ClientError> {
        let connector = TlsConnector::from(tls::client_config(tls)?);
        *self.member.write().unwrap_or_else(std::sync::PoisonError::into_inner) = member_of(tls);
        self.connector.set(connector);
        // Disconnected, the owner is not reading commands, and its next attempt uses the new
        // configuration anyway: then this waits for the next session, which ignores it.
        let _ = self.commands.try_send(Command::Reconnect);
        Ok(())
    }
}

/// Who a client is on the bus, from the common name of its certificate.
fn member_of(tls: &TlsMaterial) -> Option<Member> {
    tls::first_certificate_der(&tls.cert_pem)
        .and_then(|der| tls::certificate_common_name(&der))
        .and_then(|cn| Member::from_common_name(&cn).ok())
}

impl Transport for BusClient {
    fn publish(&self, topic: &str, reply_to: Option<&str>, payload: Vec<u8>) -> Result<(), TransportError> {
        let mut encoded = Vec::with_capacity(payload.len() + 64);
        frame::encode_publish(&mut encoded, topic, reply_to, &payload).map_err(|e| match e {
            FrameError::Topic(e) => TransportError::Topic(e),
            _ => TransportError::PayloadTooLarge { len: payload.len() },
        })?;
        self.commands.try_send(Command::Publish(encoded)).map_err(queue_error)
    }

    fn subscribe(&self, pattern: &str) -> Result<Subscription, TransportError> {
        topic::validate_pattern(pattern)?;
        let sid = self.next_sid.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.subscription_queue);
        self.commands
            .try_send(Command::Subscribe { sid, pattern: pattern.to_owned(), tx })
            .map_err(queue_error)?;
        let commands = self.commands.clone();
        Ok(Subscription::new(pattern, rx, move || {
            // Best effort: if the queue is full the owner notices the dropped receiver itself and
            // unsubscribes then (at the next message for it, ping tick or reconnect).
            let _ = commands.try_send(Command::Unsubscribe { sid });
        }))
    }

    fn connection_state(&self) -> Option<watch::Receiver<bool>> {
        Some(self.connected.clone())
    }

    fn new_inbox(&self) -> String {
        let fresh = match &self.member() {
            Some(m) => acl::inbox_for(m.id()),
            None => random_inbox(),
        };
        fresh.unwrap_or_else(|error| {
            warn!(%error, "OS random source failed; deriving the inbox from the client's prefix");
            let seq = self.inbox_seq.fetch_add(1, Ordering::Relaxed);
            format!("{}.{seq:x}", self.inbox_prefix)
        })
    }
}

fn queue_error<T>(e: mpsc::error::TrySendError<T>) -> TransportError {
    match e {
        mpsc::error::TrySendError::Full(_) => TransportError::Full,
        mpsc::error::TrySendError::Closed(_) => TransportError::Closed,
    }
}

/// The TLS configuration the next connection uses, shared by the handle (which replaces it)
/// and the owner task (which connects with it), with a generation that grows with each change.
#[derive(Clone)]
struct SharedConnector(Arc<std::sync::Mutex<(u64, TlsConnector)>>);

impl SharedConnector {
    fn new(connector: TlsConnector) -> Self {
        Self(Arc::new(std::sync::Mutex::new((0, connector))))
    }

    fn get(&self) -> (u64, TlsConnector) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set(&self, connector: TlsConnector) {
        let mut current = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = (current.0 + 1, connector);
    }
}

impl std::fmt::Debug for SharedConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedConnector").field(&self.get().0).finish()
    }
}

/// A live subscription, as the owner task keeps it.
struct Sub {
    pattern: String,
    tx: mpsc::Sender<Message>,
}

/// Why a connection ended.
enum End {
    /// Every handle is gone: stop for good.
    Stopped,
    /// The TLS configuration changed: connect again at once.
    Renewed,
    Lost(String),
}

/// The task that owns the connection and all subscriptions.
struct Owner {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    connector: SharedConnector,
    /// The generation of the TLS configuration the current session connected with.
    session_tls: u64,
    config: ClientConfig,
    subscription_queue: usize,
    commands: mpsc::Receiver<Command>,
    subs: HashMap<u32, Sub>,
    connected: watch::Sender<bool>,
    stats: Arc<ClientStats>,
}

impl Owner {
    async fn run(mut self) {
        let mut backoff = self.config.backoff_min;
        let mut failures: u32 = 0;
        loop {
            match self.connect().await {
                Ok((stream, generation)) => {
                    self.session_tls = generation;
                    bump(&self.stats.connects);
                    info!(after_failures = failures, "connected to the hub");
                    failures = 0;
                    backoff = self.config.backoff_min;
                    let end = self.session(stream).await;
                    self.connected.send_replace(false);
                    match end {
                        End::Stopped => return,
                        End::Renewed => {
                            info!("reconnecting with a new certificate");
                            continue;
                        }
                        End::Lost(reason) => {
                            bump(&self.stats.disconnects);
                            warn!(%reason, "lost the hub connection; reconnecting");
                        }
                    }
                }
                Err(error) => {
                    bump(&self.stats.connect_failures);
                    failures = failures.saturating_add(1);
                    // The first failure is news; the rest of an outage is noise.
                    if failures == 1 {
                        warn!(%error, "failed to connect to the hub; retrying with backoff");
                    } else {
                        debug!(%error, failures, "failed to connect to the hub");
                    }
                }
            }
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
    }

    /// TCP, mTLS, and one ping answered: only then is the hub known to have accepted us.
    async fn connect(&self) -> Result<(TlsStream<TcpStream>, u64), ConnectError> {
        let attempt = async {
            let tcp = TcpStream::connect(self.addr).await?;
            // Frames are small and latency matters more than packet count.
            tcp.set_nodelay(true)?;
            let (generation, connector) = self.connector.get();
            let mut tls = connector.connect(self.server_name.clone(), tcp).await?;
            let mut ping = Vec::new();
            Frame::Ping.encode(&mut ping)?;
            tls.write_all(&ping).await?;
            tls.flush().await?;
            match frame::read_frame(&mut tls, &mut Vec::new()).await? {
                Some(Frame::Pong) => Ok((tls, generation)),
                Some(_) => Err(ConnectError::Protocol),
                None => Err(ConnectError::Refused),
            }
        };
        match tokio::time::timeout(self.config.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout(self.config.connect_timeout)),
        }
    }

    /// Serve one established connection until it fails or the handles are gone.
    async fn session(&mut self, stream: TlsStream<TcpStream>) -> End {
        let (reader, mut writer) = tokio::io::split(stream);
        let (inbound_tx, mut inbound) = mpsc::channel(INBOUND_QUEUE);
        let _reader = AbortOnDrop(tokio::spawn(read_loop(reader, inbound_tx).in_current_span()));
        let write_timeout = self.config.ping_timeout;
        let mut buf = Vec::with_capacity(16 * 1024);

        // Resubscribe: the hub forgot us. Subscriptions dropped meanwhile are let go.
        self.subs.retain(|_, sub| !sub.tx.is_closed());
        for (&sid, sub) in &self.subs {
            encode(&Frame::Subscribe { sid, pattern: sub.pattern.clone() }, &mut buf);
        }
        if let Err(e) = write(&mut writer, &mut buf, write_timeout).await {
            return End::Lost(e);
        }
        // Connected means: accepted by the hub, and our subscriptions are on their way.
        self.connected.send_replace(true);

        // Sent pings, oldest first; the hub answers in order. `Some` waiters are flushes.
        let mut pings: VecDeque<(Instant, Option<oneshot::Sender<()>>)> = VecDeque::new();
        let mut ticker =
            tokio::time::interval_at(Instant::now() + self.config.ping_interval, self.config.ping_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = self.commands.recv() => {
                    let Some(command) = command else { return End::Stopped };
                    let mut renewed = self.apply(command, &mut buf, &mut pings);
                    // Batch whatever else is queued into the same write.
                    while buf.len() < WRITE_BATCH && !renewed {
                        match self.commands.try_recv() {
                            Ok(command) => renewed = self.apply(command, &mut buf, &mut pings),
                            Err(_) => break,
                        }
                    }
                    if renewed {
                        return match write(&mut writer, &mut buf, write_timeout).await {
                            Ok(()) => {
                                let _ = tokio::time::timeout(write_timeout, writer.shutdown()).await;
                                End::Renewed
                            }
                            Err(e) => End::Lost(e),
                        };
                    }
                }
                frame = inbound.recv() => match frame {
                    None => return End::Lost("the hub closed the connection".into()),
                    Some(Err(e)) => return End::Lost(format!("failed to read from the hub: {e}")),
                    Some(Ok(Frame::Deliver { sid, topic, reply_to, payload })) => {
                        self.deliver(sid, Message { topic, reply_to, payload }, &mut buf);
                    }
                    Some(Ok(Frame::Pong)) => {
                        if let Some((_, Some(done))) = pings.pop_front() {
                            let _ = done.send(());
                        }
                    }
                    Some(Ok(Frame::Ping)) => encode(&Frame::Pong, &mut buf),
                    Some(Ok(Frame::Refused { what, sid, topic })) => self.refused(what, sid, &topic),
                    Some(Ok(_)) => return End::Lost("protocol violation: the hub sent a client-only frame".into()),
                },
                _ = ticker.tick() => {
                    if let Some((sent, _)) = pings.front()
                        && sent.elapsed() > self.config.ping_timeout
                    {
                        return End::Lost(format!("no pong within {:?}", self.config.ping_timeout));
                    }
                    if pings.is_empty() {
                        pings.push_back((Instant::now(), None));
                        encode(&Frame::Ping, &mut buf);
                    }
                    self.sweep_dropped(&mut buf);
                }
            }
            if let Err(e) = write(&mut writer, &mut buf, write_timeout).await {
                return End::Lost(e);
            }
        }
    }

    /// Apply one command; `true` when the session must end to reconnect with new TLS.
    fn apply(
        &mut self,
        command: Command,
        buf: &mut Vec<u8>,
        pings: &mut VecDeque<(Instant, Option<oneshot::Sender<()>>)>,
    ) -> bool {
        match command {
            Command::Publish(encoded) => buf.extend_from_slice(&encoded),
            Command::Subscribe { sid, pattern, tx } => {
                encode(&Frame::Subscribe { sid, pattern: pattern.clone() }, buf);
                self.subs.insert(sid, Sub { pattern, tx });
            }
            Command::Unsubscribe { sid } => {
                if self.subs.remove(&sid).is_some() {
                    encode(&Frame::Unsubscribe { sid }, buf);
                }
            }
            Command::Flush(done) => {
                pings.push_back((Instant::now(), Some(done)));
                encode(&Frame::Ping, buf);
            }
            Command::Reconnect => return self.connector.get().0 > self.session_tls,
        }
        false
    }

    fn deliver(&mut self, sid: u32, msg: Message, buf: &mut Vec<u8>) {
        let Some(sub) = self.subs.get(&sid) else {
            return; // unsubscribed while the message was in flight
        };
        match sub.tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                bump(&self.stats.lagged_subscriptions);
                warn!(
                    pattern = %sub.pattern,
                    queue = self.subscription_queue,
                    "subscriber fell a whole queue behind; ending its subscription"
                );
                self.subs.remove(&sid);
                encode(&Frame::Unsubscribe { sid }, buf);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.subs.remove(&sid);
                encode(&Frame::Unsubscribe { sid }, buf);
            }
        }
    }

    /// The hub refused a subscribe or publish: end a refused subscription (its subscriber sees
    /// the stream end) so it is not renewed on reconnection, and count it.
    fn refused(&mut self, what: Refusal, sid: u32, topic: &str) {
        bump(&self.stats.refused);
        match what {
            Refusal::Subscribe => {
                // Only if the sid still subscribes to what was refused: a sid reused meanwhile
                // is another subscription.
                if self.subs.get(&sid).is_some_and(|s| s.pattern == topic) {
                    self.subs.remove(&sid);
                }
                warn!(pattern = %topic, "the hub refused the subscription (access rules)");
            }
            Refusal::Publish => warn!(%topic, "the hub refused a publish (access rules)"),
        }
    }

    /// Unsubscribe subscriptions whose receiver was dropped when the queue had no room for the
    /// unsubscribe command.
    fn sweep_dropped(&mut self, buf: &mut Vec<u8>) {
        let dropped: Vec<u32> =
            self.subs.iter().filter(|(_, sub)| sub.tx.is_closed()).map(|(&sid, _)| sid).collect();
        for sid in dropped {
            self.subs.remove(&sid);
            encode(&Frame::Unsubscribe { sid }, buf);
        }
    }
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("the hub closed the connection before answering (certificate refused?)")]
    Refused,
    #[error("the hub answered the first ping with something else")]
    Protocol,
}

/// Forward frames to the owner until the stream ends; an error is forwarded, then reading stops.
async fn read_loop<R: AsyncRead + Unpin>(mut reader: R, tx: mpsc::Sender<Result<Frame, FrameError>>) {
    let mut buf = Vec::new();
    loop {
        let item = match frame::read_frame(&mut reader, &mut buf).await {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            return;
        }
    }
}

/// Encode a frame the owner built itself; they are valid by construction, so a failure is only
/// logged.
fn encode(frame: &Frame, buf: &mut Vec<u8>) {
    if let Err(error) = frame.encode(buf) {
        warn!(%error, "failed to encode a frame; skipped");
    }
}

/// Write and clear `buf`, if it holds anything.
async fn write<W: AsyncWrite + Unpin>(
    writer: &mut W,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), String> {
    if buf.is_empty() {
        return Ok(());
    }
    let result = tokio::time::timeout(timeout, async {
        writer.write_all(buf).await?;
        writer.flush().await
    })
    .await;
    buf.clear();
    if buf.capacity() > 4 * WRITE_BATCH {
        *buf = Vec::with_capacity(16 * 1024);
    }
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("failed to write to the hub: {e}")),
        Err(_) => Err(format!("write to the hub timed out after {timeout:?}")),
    }
}

/// `d` with "equal jitter": half fixed, half random, so clients that lost the hub together do not
/// return in lockstep.
fn jittered(d: Duration) -> Duration {
    let half = d / 2;
    let span = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    let random = getrandom::u64().unwrap_or(0);
    half + Duration::from_nanos(random % span)
}
