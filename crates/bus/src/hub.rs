//! The ring's embedded hub: a small NATS-like broker over mutual TLS. Clients subscribe to topic
//! patterns and publish opaque messages; the hub routes each message to every matching
//! subscription. It never looks inside payloads (the envelope layer signs them end to end) and
//! must never let one client's slowness or garbage stall or crash the others.
//!
//! # Tasks and state
//! - `run` accepts TCP connections; a semaphore caps how many are open at once (at the cap the hub
//!   stops accepting and the kernel backlog holds the rest).
//! - Per connection: the connection task does the TLS handshake (under `handshake_timeout`), then
//!   reads frames and forwards them to the router; a writer task drains the connection's bounded
//!   outbound queue into the socket, batching what is queued into one write.
//! - One router task owns all routing state (connections, subscriptions, retained messages).
//!   Readers send it commands over a bounded channel, so a flood of publishes pushes back through
//!   TCP onto the publisher. The router itself never awaits a socket: it only `try_send`s.
//!
//! # Overflow policy: slow consumers are disconnected
//! Each connection has a bounded outbound queue (`outbound_queue` messages). When the router finds
//! it full, that connection is a slow consumer: the router forgets it, the connection is closed,
//! and `slow_consumer_disconnects` is incremented — NATS's policy. The hub never drops single
//! messages while keeping the subscriber connected, because a subscriber could not tell that it
//! missed something. A disconnected client reconnects, resubscribes and resynchronises: retained
//! `state.*` messages are redelivered on every new subscription (level-triggered state), and
//! anything else it needs it must re-request. Other subscribers are unaffected.
//!
//! # Retained messages
//! The last message published on each topic starting with `retained_prefix` is kept (at most
//! `max_retained` topics) and delivered at once to every new matching subscription. Publishing an
//! empty payload on such a topic clears it. An empty `retained_prefix` disables retention.
//!
//! # Protocol errors
//! The protocol has no error frame: a frame that does not decode, a frame only the hub may send, or
//! more than `max_subscriptions` subscriptions on one connection closes that connection, and is
//! counted.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, info_span, trace, warn};

use crate::frame::{self, Frame};
use crate::tls::{self, TlsError, TlsMaterial};
use crate::topic;
use crate::transport::Message;

/// Commands from connections to the router. Deep enough to absorb bursts from many connections;
/// beyond that, readers wait and TCP pushes back on publishers.
const ROUTER_QUEUE: usize = 4096;
/// Connections get this long to finish after shutdown is signalled before they are aborted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The writer stops batching once this much is ready to write.
const WRITE_BATCH: usize = 64 * 1024;

/// A hook that sees every published message at the edge; returning `false` drops it (counted in
/// `filtered`). Example: drop payloads that are not signed envelopes before they are fanned out.
pub type Filter = Arc<dyn Fn(&Message) -> bool + Send + Sync>;

/// Hub settings. Validated by [`Hub::bind`].
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Messages queued per connection before it counts as a slow consumer.
    pub outbound_queue: usize,
    /// Topics with this prefix keep their last message; empty disables retention.
    pub retained_prefix: String,
    /// Most retained topics; publishes to new retained topics beyond it are delivered but not kept.
    pub max_retained: usize,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// A connection that sends nothing (not even a ping) for this long is closed. Must exceed the
    /// clients' ping interval.
    pub idle_timeout: Duration,
    /// Time allowed for one write to a connection.
    pub write_timeout: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            outbound_queue: 1024,
            retained_prefix: "state.".to_owned(),
            max_retained: 100_000,
            max_subscriptions: 10_000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("invalid hub configuration: {0}")]
    Config(&'static str),
    #[error("invalid hub TLS material: {0}")]
    Tls(#[from] TlsError),
    #[error("failed to bind the hub to {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Counters for `/metrics`. All monotonic except `connections`, the number open now.
#[derive(Debug, Default)]
pub struct HubStats {
    connections: AtomicU64,
    connections_accepted: AtomicU64,
    handshake_failures: AtomicU64,
    published: AtomicU64,
    delivered: AtomicU64,
    filtered: AtomicU64,
    slow_consumer_disconnects: AtomicU64,
    malformed_frames: AtomicU64,
    subscriptions_refused: AtomicU64,
    retained_refused: AtomicU64,
}

/// A point-in-time copy of [`HubStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStatsSnapshot {
    /// Connections open now (past the handshake).
    pub connections: u64,
    /// Connections that completed the mTLS handshake, ever.
    pub connections_accepted: u64,
    /// Handshakes that failed or timed out (unknown CA, no client certificate, …).
    pub handshake_failures: u64,
    /// Messages accepted for routing.
    pub published: u64,
    /// Messages queued to a subscriber (one per matching subscription).
    pub delivered: u64,
    /// Messages dropped by the filter hook.
    pub filtered: u64,
    /// Connections closed because their outbound queue was full.
    pub slow_consumer_disconnects: u64,
    /// Connections closed because they sent a malformed or forbidden frame.
    pub malformed_frames: u64,
    /// Connections closed for exceeding `max_subscriptions`.
    pub subscriptions_refused: u64,
    /// Retained messages not kept because `max_retained` was reached.
    pub retained_refused: u64,
}

impl HubStats {
    pub fn snapshot(&self) -> HubStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HubStatsSnapshot {
            connections: get(&self.connections),
            connections_accepted: get(&self.connections_accepted),
            handshake_failures: get(&self.handshake_failures),
            published: get(&self.published),
            delivered: get(&self.delivered),
            filtered: get(&self.filtered),
            slow_consumer_disconnects: get(&self.slow_consumer_disconnects),
            malformed_frames: get(&self.malformed_frames),
            subscriptions_refused: get(&self.subscriptions_refused),
            retained_refused: get(&self.retained_refused),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Counts an open connection for as long as it lives, however the connection task ends.
struct OpenConnection(Arc<HubStats>);

impl OpenConnection {
    fn new(stats: Arc<HubStats>) -> Self {
        bump(&stats.connections);
        bump(&stats.connections_accepted);
        Self(stats)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Aborts a task when dropped, so a cancelled connection never leaves its writer behind.
#[derive(Debug)]
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A bound, not yet running hub.
pub struct Hub {
    listener: TcpListener,
    local_addr: SocketAddr,
    acceptor: TlsAcceptor,
    config: Arc<HubConfig>,
    stats: Arc<HubStats>,
    filter: Option<Filter>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("local_addr", &self.local_addr)
            .field("config", &self.config)
            .field("filter", &self.filter.is_some())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Validate the configuration, build the mTLS server configuration and bind `addr` (port 0
    /// picks a free port; see [`Hub::local_addr`]).
    pub async fn bind(addr: SocketAddr, tls: &TlsMaterial, config: HubConfig) -> Result<Hub, HubError> {
        if config.max_connections == 0 {
            return Err(HubError::Config("max_connections must be at least 1"));
        }
        if config.outbound_queue == 0 {
            return Err(HubError::Config("outbound_queue must be at least 1"));
        }
        if config.max_subscriptions == 0 {
            return Err(HubError::Config("max_subscriptions must be at least 1"));
        }
        let acceptor = TlsAcceptor::from(tls::server_config(tls)?);
        let listener = TcpListener::bind(addr).await.map_err(|source| HubError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| HubError::Bind { addr, source })?;
        Ok(Hub {
            listener,
            local_addr,
            acceptor,
            config: Arc::new(config),
            stats: Arc::default(),
            filter: None,
        })
    }

    /// Drop published messages for which `filter` returns `false`, before routing.
    pub fn with_filter(mut self, filter: Filter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The hub's counters; the handle stays valid after `run` returns.
    pub fn stats(&self) -> Arc<HubStats> {
        self.stats.clone()
    }

    /// Serve until `shutdown` completes; then stop accepting, close every connection (aborting any
    /// that take longer than a short grace period), release the port and return.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Hub { listener, local_addr, acceptor, config, stats, filter } = self;
        let span = info_span!("bus_hub", addr = %local_addr);
        async move {
            let (router_tx, router_rx) = mpsc::channel(ROUTER_QUEUE);
            let router = Router {
                config: config.clone(),
                stats: stats.clone(),
                conns: HashMap::new(),
                retained: HashMap::new(),
            };
            let mut router = AbortOnDrop(tokio::spawn(router.run(router_rx).in_current_span()));
            let (stop_tx, stop_rx) = watch::channel(());
            let permits = Arc::new(Semaphore::new(config.max_connections));
            let mut conns = JoinSet::new();
            let mut next_id: u64 = 0;
            tokio::pin!(shutdown);
            info!("hub listening");
            loop {
                // Reap finished connection tasks so the set does not grow with churn.
                while conns.try_join_next().is_some() {}
                let permit = tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break, // the semaphore is never closed; stop if it is
                    },
                };
                let (tcp, remote) = tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            // Usually fd exhaustion: back off instead of spinning, keep serving.
                            warn!(%error, "failed to accept a connection");
                            tokio::select! {
                                () = &mut shutdown => break,
                                () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                            }
                        }
                    },
                };
                next_id += 1;
                let conn = Connection {
                    id: next_id,
                    acceptor: acceptor.clone(),
                    config: config.clone(),
                    stats: stats.clone(),
                    router: router_tx.clone(),
                    filter: filter.clone(),
                };
                let mut stop = stop_rx.clone();
                let span = info_span!(
                    "bus_connection",
                    conn = next_id,
                    remote = %remote,
                    peer = tracing::field::Empty
                );
                conns.spawn(
                    async move {
                        tokio::select! {
                            () = conn.serve(tcp) => {}
                            _ = stop.changed() => debug!("closing: hub shutting down"),
                        }
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            drop(listener);
            drop(stop_tx);
            let drain = async { while conns.join_next().await.is_some() {} };
            if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
                warn!("connections did not close in time; aborting them");
                conns.shutdown().await;
            }
            // Every connection has dropped its sender, so the router's queue ends.
            drop(router_tx);
            let _ = (&mut router.0).await;
            info!("hub stopped");
        }
        .instrument(span)
        .await
    }
}

/// What a connection's reader sends the router.
enum RouterCmd {
    Attach {
        conn: u64,
        peer: Arc<str>,
        out: mpsc::Sender<Outbound>,
        kill: oneshot::Sender<()>,
    },
    Detach {
        conn: u64,
    },
    Subscribe {
        conn: u64,
        sid: u32,
        pattern: String,
    },
    Unsubscribe {
        conn: u64,
        sid: u32,
    },
    Publish {
        msg: Arc<Message>,
    },
    /// Answered by the router, not the reader, so that a pong also confirms every frame the client
    /// sent before the ping has been routed (what `BusClient::flush` relies on).
    Ping {
        conn: u64,
    },
}

/// What the router queues for a connection's writer. Messages are shared, not copied, between
/// the subscribers they go to.
enum Outbound {
    Deliver { sid: u32, msg: Arc<Message> },
    Pong,
}

struct RoutedConn {
    peer: Arc<str>,
    out: mpsc::Sender<Outbound>,
    /// Fired to make the connection close itself; dropping it has the same effect.
    kill: oneshot::Sender<()>,
    subs: HashMap<u32, String>,
}

/// Owner of all routing state.
struct Router {
    config: Arc<HubConfig>,
    stats: Arc<HubStats>,
    conns: HashMap<u64, RoutedConn>,
    retained: HashMap<String, Arc<Message>>,
}

/// Why the router stops routing to a connection.
enum Eviction {
    SlowConsumer,
    TooManySubscriptions,
    Gone,
}

impl Router {
    async fn run(mut self, mut rx: mpsc::Receiver<RouterCmd>) {
        while let Some(cmd) = rx.recv().await {
            self.handle(cmd);
        }
    }

    fn handle(&mut self, cmd: RouterCmd) {
        match cmd {
            RouterCmd::Attach { conn, peer, out, kill } => {
                self.conns.insert(conn, RoutedConn { peer, out, kill, subs: HashMap::new() });
            }
            RouterCmd::Detach { conn } => {
                self.conns.remove(&conn);
            }
            RouterCmd::Subscribe { conn, sid, pattern } => self.subscribe(conn, sid, pattern),
            RouterCmd::Unsubscribe { conn, sid } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.subs.remove(&sid);
                }
            }
            RouterCmd::Publish { msg } => self.publish(msg),
            RouterCmd::Ping { conn } => {
                let result = match self.conns.get(&conn) {
                    Some(c) => c.out.try_send(Outbound::Pong),
                    None => return,
                };
                if let Err(e) = result {
                    self.evict(conn, eviction_for(&e));
                }
            }
        }
    }

    fn subscribe(&mut self, conn: u64, sid: u32, pattern: String) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.subs.len() >= self.config.max_subscriptions && !c.subs.contains_key(&sid) {
            self.evict(conn, Eviction::TooManySubscriptions);
            return;
        }
        // Level-triggered state: a new subscription first sees the current retained value of
        // every matching topic.
        let retained: Vec<Arc<Message>> = if !pattern.contains(['*', '>']) {
            self.retained.get(&pattern).cloned().into_iter().collect()
        } else {
            self.retained
                .iter()
                .filter(|(t, _)| topic::matches(&pattern, t))
                .map(|(_, m)| m.clone())
                .collect()
        };
        trace!(conn, sid, %pattern, retained = retained.len(), "subscribe");
        c.subs.insert(sid, pattern);
        for msg in retained {
            match c.out.try_send(Outbound::Deliver { sid, msg }) {
                Ok(()) => bump(&self.stats.delivered),
                Err(e) => {
                    self.evict(conn, eviction_for(&e));
                    return;
                }
            }
        }
    }

    fn publish(&mut self, msg: Arc<Message>) {
        bump(&self.stats.published);
        self.retain(&msg);
        let mut evicted = Vec::new();
        for (&id, c) in &self.conns {
            for (&sid, pattern) in &c.subs {
                if !topic::matches(pattern, &msg.topic) {
                    continue;
                }
                match c.out.try_send(Outbound::Deliver { sid, msg: msg.clone() }) {
                    Ok(()) => bump(&self.stats.delivered),
                    Err(e) => {
                        evicted.push((id, eviction_for(&e)));
                        break;
                    }
                }
            }
        }
        for (id, why) in evicted {
            self.evict(id, why);
        }
    }

    fn retain(&mut self, msg: &Arc<Message>) {
        let prefix = &self.config.retained_prefix;
        if prefix.is_empty() || !msg.topic.starts_with(prefix.as_str()) {
            return;
        }
        if msg.payload.is_empty() {
            self.retained.remove(&msg.topic);
        } else if self.retained.len() < self.config.max_retained || self.retained.contains_key(&msg.topic) {
            self.retained.insert(msg.topic.clone(), msg.clone());
        } else {
            bump(&self.stats.retained_refused);
            warn!(topic = %msg.topic, max = self.config.max_retained, "retained topic limit reached; message delivered but not kept");
        }
    }

    fn evict(&mut self, conn: u64, why: Eviction) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        match why {
            Eviction::SlowConsumer => {
                bump(&self.stats.slow_consumer_disconnects);
                warn!(conn, peer = %c.peer, queue = self.config.outbound_queue, "slow consumer: outbound queue full, disconnecting");
            }
            Eviction::TooManySubscriptions => {
                bump(&self.stats.subscriptions_refused);
                warn!(conn, peer = %c.peer, max = self.config.max_subscriptions, "too many subscriptions, disconnecting");
            }
            Eviction::Gone => {}
        }
        // Dropping `out` lets the writer finish; the kill makes the reader stop.
        let _ = c.kill.send(());
    }
}

fn eviction_for<T>(e: &mpsc::error::TrySendError<T>) -> Eviction {
    match e {
        mpsc::error::TrySendError::Full(_) => Eviction::SlowConsumer,
        mpsc::error::TrySendError::Closed(_) => Eviction::Gone,
    }
}

/// Everything one connection task needs.
struct Connection {
    id: u64,
    acceptor: TlsAcceptor,
    config: Arc<HubConfig>,
    stats: Arc<HubStats>,
    router: mpsc::Sender<RouterCmd>,
    filter: Option<Filter>,
}

impl Connection {
    async fn serve(self, tcp: TcpStream) {
        // Frames are small and latency matters more than packet count.
        let _ = tcp.set_nodelay(true);
        let tls = match tokio::time::timeout(self.config.handshake_timeout, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                bump(&self.stats.handshake_failures);
                warn!(%error, "tls handshake failed");
                return;
            }
            Err(_) => {
                bump(&self.stats.handshake_failures);
                warn!(timeout = ?self.config.handshake_timeout, "tls handshake timed out");
                return;
            }
        };
        let peer: Arc<str> = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| tls::peer_name(cert))
            .unwrap_or_else(|| "unnamed".to_owned())
            .into();
        tracing::Span::current().record("peer", &*peer);
        let _open = OpenConnection::new(self.stats.clone());
        info!("connected");

        let (mut reader, writer) = tokio::io::split(tls);
        let (out_tx, out_rx) = mpsc::channel(self.config.outbound_queue);
        let (kill_tx, mut kill_rx) = oneshot::channel();
        let attach = RouterCmd::Attach { conn: self.id, peer, out: out_tx, kill: kill_tx };
        if self.router.send(attach).await.is_err() {
            return;
        }
        let mut writer = AbortOnDrop(tokio::spawn(
            write_loop(writer, out_rx, self.config.write_timeout).in_current_span(),
        ));
        let reason = tokio::select! {
            reason = self.read_loop(&mut reader) => reason,
            evicted = &mut kill_rx => match evicted {
                Ok(()) => "evicted by the router",
                Err(_) => "hub stopping",
            },
            result = &mut writer.0 => match result {
                Ok(Ok(())) => "writer finished",
                Ok(Err(_)) | Err(_) => "write failed",
            },
        };
        drop(writer);
        let _ = self.router.send(RouterCmd::Detach { conn: self.id }).await;
        info!(reason, "disconnected");
    }

    /// Read frames until the connection should close; returns why.
    async fn read_loop<R: AsyncRead + Unpin>(&self, reader: &mut R) -> &'static str {
        let mut buf = Vec::new();
        loop {
            let frame =
                match tokio::time::timeout(self.config.idle_timeout, frame::read_frame(reader, &mut buf))
                    .await
                {
                    Err(_) => return "idle timeout",
                    Ok(Ok(None)) => return "closed by the peer",
                    Ok(Ok(Some(frame))) => frame,
                    Ok(Err(error)) if error.is_malformed() => {
                        bump(&self.stats.malformed_frames);
                        warn!(%error, "malformed frame");
                        return "malformed frame";
                    }
                    Ok(Err(error)) => {
                        debug!(%error, "read failed");
                        return "read failed";
                    }
                };
            let conn = self.id;
            let cmd = match frame {
                Frame::Subscribe { sid, pattern } => RouterCmd::Subscribe { conn, sid, pattern },
                Frame::Unsubscribe { sid } => RouterCmd::Unsubscribe { conn, sid },
                Frame::Publish { topic, reply_to, payload } => {
                    let msg = Message { topic, reply_to, payload };
                    if let Some(filter) = &self.filter
                        && !filter(&msg)
                    {
                        bump(&self.stats.filtered);
                        debug!(topic = %msg.topic, "message dropped by the filter");
                        continue;
                    }
                    trace!(topic = %msg.topic, len = msg.payload.len(), "publish");
                    RouterCmd::Publish { msg: Arc::new(msg) }
                }
                Frame::Ping => RouterCmd::Ping { conn },
                Frame::Pong => continue,
                Frame::Deliver { .. } => {
                    bump(&self.stats.malformed_frames);
                    warn!("client sent a deliver frame, which only the hub may send");
                    return "protocol violation";
                }
            };
            if self.router.send(cmd).await.is_err() {
                return "hub stopping";
            }
        }
    }
}

/// Drain the outbound queue into the socket until the router drops the queue or a write fails.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::Receiver<Outbound>,
    write_timeout: Duration,
) -> Result<(), std::io::Error> {
    let mut buf = Vec::with_capacity(16 * 1024);
    while let Some(item) = rx.recv().await {
        buf.clear();
        encode_outbound(&item, &mut buf);
        while buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(item) => encode_outbound(&item, &mut buf),
                Err(_) => break,
            }
        }
        let write = async {
            writer.write_all(&buf).await?;
            writer.flush().await
        };
        match tokio::time::timeout(write_timeout, write).await {
            Ok(result) => result?,
            Err(_) => {
                debug!(timeout = ?write_timeout, "write timed out");
                return Err(std::io::ErrorKind::TimedOut.into());
            }
        }
        if buf.capacity() > 4 * WRITE_BATCH {
            buf = Vec::with_capacity(16 * 1024);
        }
    }
    let _ = tokio::time::timeout(write_timeout, writer.shutdown()).await;
    Ok(())
}

fn encode_outbound(item: &Outbound, buf: &mut Vec<u8>) {
    let result = match item {
        Outbound::Deliver { sid, msg } => {
            frame::encode_deliver(buf, *sid, &msg.topic, msg.reply_to.as_deref(), &msg.payload)
        }
        Outbound::Pong => Frame::Pong.encode(buf),
    };
    // Cannot happen: every message was decoded from a valid frame. Skip it rather than kill the
    // connection if it ever does.
    if let Err(error) = result {
        warn!(%error, "failed to encode an outbound frame; skipped");
    }
}
