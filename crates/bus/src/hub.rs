//! The ring's embedded hub: a small NATS-like broker over mutual TLS. Clients subscribe to topic
//! patterns and publish opaque messages; the hub routes each message to every matching
//! subscription. It never looks inside payloads (the envelope layer signs them end to end) and
//! must never let one client's slowness or garbage stall or crash the others.
//!
//! # Tasks and state
//! - `run` accepts TCP connections and admits each under two budgets (see *Admission*).
//! - Per connection: the connection task does the TLS handshake (under `handshake_timeout`), then
//!   reads frames and forwards them to the router; a writer task drains the connection's bounded
//!   outbound queue into the socket, batching what is queued into one write.
//!
//! # Admission
//! A TCP connection that has not finished its handshake is nobody yet, so it must never take a
//! member's place. Handshakes in progress have their own budget, `max_handshakes` in all and
//! `max_handshakes_per_source` per source address, and `handshake_timeout` to finish; a
//! connection accepted beyond either limit is closed at once (`admission_refused`). Only a
//! connection that completed the mTLS handshake asks for one of the `max_connections` member
//! slots; with none free it is closed (`connections_refused`) and the client retries with
//! backoff. So one address holding thousands of half-open connections costs members nothing
//! but a share of the handshake budget it cannot exceed.
//!
//! # Access rules
//! A member's role and id come from its certificate's common name ([`crate::acl`]). Every
//! subscribe and publish is checked against the role's table before it reaches the router; a
//! refused one is answered with a REFUSED frame (the connection stays, as with NATS's
//! permissions violation) and counted in `subscribe_refused` / `publish_refused`. A certificate
//! whose name carries no role may do nothing but ping.
//!
//! # Certificates that stop counting
//! With an admission check ([`Hub::with_admission`]), a member's certificate is only as good as
//! the bus key it is bound to ([`tls::certificate_bound_key`]): the check runs after the
//! handshake (a refused member is closed before it takes a slot, `certificates_refused`) and
//! again every [`RECHECK_EVERY`] for as long as the connection lives, so a revoked or retired
//! key's connections end within that period (`certificates_revoked`). A connection also ends
//! when its certificate expires (`certificates_expired`): the member reconnects with the
//! certificate it renewed meanwhile.
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
//! With `retained_dir`, retained messages are also kept on disk ([`crate::retained`]) and loaded
//! again (through the filter) when the hub starts, so a restarted hub hands members their state
//! the moment they resubscribe, before any publisher has reconnected.
//!
//! # Protocol errors
//! A frame that does not decode, a frame only the hub may send, or more than
//! `max_subscriptions` subscriptions on one connection closes that connection, and is counted.
//! (REFUSED answers only what the access rules forbid.)

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, info_span, trace, warn};

use crate::acl::Member;
use crate::frame::{self, Frame, Refusal};
use crate::identity::KeyId;
use crate::retained;
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

/// A hook that sees every published message at the edge, before the access rules; returning
/// `false` drops it (counted in `filtered`, not answered). Example: drop payloads that are not signed envelopes before they are fanned out.
pub type Filter = Arc<dyn Fn(&Message) -> bool + Send + Sync>;

/// A hook that decides whether a verified member may stay connected: given its role and id
/// (from the certificate's common name) and the bus key its certificate is bound to, `Err`
/// with the reason closes the connection. Called after each handshake and every
/// [`RECHECK_EVERY`] for each connection, so it must be cheap (read an in-memory table).
pub type Admission = Arc<dyn Fn(&Member, Option<&KeyId>) -> Result<(), String> + Send + Sync>;

/// How often each connection's member is checked again against the admission hook.
pub const RECHECK_EVERY: Duration = Duration::from_millis(250);

/// Hub settings. Validated by [`Hub::bind`].
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Most members (connections past the handshake) connected at once.
    pub max_connections: usize,
    /// Most TLS handshakes in progress at once, from everyone; kept apart from (and below)
    /// `max_connections`, so connections that never finish a handshake cannot take members'
    /// slots.
    pub max_handshakes: usize,
    /// Most TLS handshakes in progress at once from one source address.
    pub max_handshakes_per_source: usize,
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
    /// Where retained messages are kept across restarts (0700, created if missing); `None`
    /// keeps them in memory only.
    pub retained_dir: Option<std::path::PathBuf>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_handshakes: 128,
            max_handshakes_per_source: 16,
            outbound_queue: 1024,
            retained_prefix: "state.".to_owned(),
            max_retained: 100_000,
            max_subscriptions: 10_000,
            handshake_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            retained_dir: None,
        }
    }
}

/// Why a hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A [`HubConfig`] value is out of range; the text names the setting.
    #[error("invalid hub configuration: {0}")]
    Config(&'static str),
    /// The hub's certificate, key or CA cannot be used to build the TLS server.
    #[error("invalid hub TLS material: {0}")]
    Tls(#[from] TlsError),
    /// The listening socket could not be bound or its address read (address in use, no
    /// permission for the port).
    #[error("failed to bind the hub to {addr}: {source}")]
    Bind {
        /// The address the hub was asked to listen on.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The retained-message directory could not be created or read.
    #[error(transparent)]
    Retained(#[from] retained::RetainedError),
}

/// Counters for `/metrics`. All monotonic except `connections`, the number open now.
#[derive(Debug, Default)]
pub struct HubStats {
    connections: AtomicU64,
    connections_accepted: AtomicU64,
    handshakes: AtomicU64,
    handshake_failures: AtomicU64,
    admission_refused: AtomicU64,
    connections_refused: AtomicU64,
    subscribe_refused: AtomicU64,
    publish_refused: AtomicU64,
    published: AtomicU64,
    delivered: AtomicU64,
    filtered: AtomicU64,
    slow_consumer_disconnects: AtomicU64,
    malformed_frames: AtomicU64,
    subscriptions_refused: AtomicU64,
    retained_refused: AtomicU64,
    certificates_refused: AtomicU64,
    certificates_revoked: AtomicU64,
    certificates_expired: AtomicU64,
}

/// A point-in-time copy of [`HubStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStatsSnapshot {
    /// Connections open now (past the handshake).
    pub connections: u64,
    /// Connections that completed the mTLS handshake, ever.
    pub connections_accepted: u64,
    /// TLS handshakes in progress now.
    pub handshakes: u64,
    /// Handshakes that failed or timed out (unknown CA, no client certificate, …).
    pub handshake_failures: u64,
    /// TCP connections closed on accept: the handshake budget, in all or for their source
    /// address, was spent.
    pub admission_refused: u64,
    /// Authenticated connections closed because every member slot was taken.
    pub connections_refused: u64,
    /// Subscriptions refused by the member's access rules.
    pub subscribe_refused: u64,
    /// Publishes refused by the member's access rules (topic or reply-to).
    pub publish_refused: u64,
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
    /// Members closed right after their handshake by the admission check (revoked, retired or
    /// unknown key).
    pub certificates_refused: u64,
    /// Members disconnected later because the admission check stopped admitting them.
    pub certificates_revoked: u64,
    /// Members disconnected because their certificate expired.
    pub certificates_expired: u64,
}

impl HubStats {
    /// Reads every counter, each on its own (relaxed): not one atomic instant.
    pub fn snapshot(&self) -> HubStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HubStatsSnapshot {
            connections: get(&self.connections),
            connections_accepted: get(&self.connections_accepted),
            handshakes: get(&self.handshakes),
            handshake_failures: get(&self.handshake_failures),
            admission_refused: get(&self.admission_refused),
            connections_refused: get(&self.connections_refused),
            subscribe_refused: get(&self.subscribe_refused),
            publish_refused: get(&self.publish_refused),
            published: get(&self.published),
            delivered: get(&self.delivered),
            filtered: get(&self.filtered),
            slow_consumer_disconnects: get(&self.slow_consumer_disconnects),
            malformed_frames: get(&self.malformed_frames),
            subscriptions_refused: get(&self.subscriptions_refused),
            retained_refused: get(&self.retained_refused),
            certificates_refused: get(&self.certificates_refused),
            certificates_revoked: get(&self.certificates_revoked),
            certificates_expired: get(&self.certificates_expired),
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

/// A handshake in progress: holds a place in the global handshake budget and in its source
/// address's, and gives both back however the connection task ends.
struct Handshaking {
    _permit: OwnedSemaphorePermit,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
    stats: Arc<HubStats>,
}

impl Handshaking {
    /// A place for a handshake from `source`, or `None` when its budget is spent.
    fn admit(
        budget: &Arc<Semaphore>,
        sources: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        source: IpAddr,
        per_source: usize,
        stats: &Arc<HubStats>,
    ) -> Option<Handshaking> {
        let permit = budget.clone().try_acquire_owned().ok()?;
        {
            let mut map = sources.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = map.entry(source).or_insert(0);
            if *n >= per_source {
                return None;
            }
            *n += 1;
        }
        bump(&stats.handshakes);
        Some(Handshaking { _permit: permit, sources: sources.clone(), source, stats: stats.clone() })
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.stats.handshakes.fetch_sub(1, Ordering::Relaxed);
        let mut map = self.sources.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.source);
            }
        }
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
    admission: Option<Admission>,
    /// Retained messages loaded from `retained_dir` at bind.
    retained: Vec<Message>,
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
        if config.max_handshakes == 0 || config.max_handshakes_per_source == 0 {
            return Err(HubError::Config("max_handshakes and max_handshakes_per_source must be at least 1"));
        }
        if config.handshake_timeout.is_zero() {
            return Err(HubError::Config("handshake_timeout must be positive"));
        }
        let acceptor = TlsAcceptor::from(tls::server_config(tls)?);
        let listener = TcpListener::bind(addr).await.map_err(|source| HubError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| HubError::Bind { addr, source })?;
        let retained = match &config.retained_dir {
            Some(dir) => retained::load(dir, &config.retained_prefix, config.max_retained)?,
            None => Vec::new(),
        };
        Ok(Hub {
            listener,
            local_addr,
            acceptor,
            config: Arc::new(config),
            stats: Arc::default(),
            filter: None,
            admission: None,
            retained,
        })
    }

    /// Drop published messages for which `filter` returns `false`, before routing. Retained
    /// messages loaded from disk pass through it too, when the hub starts.
    pub fn with_filter(mut self, filter: Filter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Admit members only while `admission` says so: see the module documentation.
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = Some(admission);
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
        let Hub { listener, local_addr, acceptor, config, stats, filter, admission, retained } = self;
        let span = info_span!("bus_hub", addr = %local_addr);
        async move {
            let (router_tx, router_rx) = mpsc::channel(ROUTER_QUEUE);
            let persist = config.retained_dir.clone().map(retained::spawn_writer);
            let mut router = Router {
                config: config.clone(),
                stats: stats.clone(),
                conns: HashMap::new(),
                retained: HashMap::new(),
                persist,
            };
            // What was kept on disk is state again, if it still passes the filter (a message
            // signed by a key revoked meanwhile does not).
            let loaded = retained.len();
            for msg in retained {
                if filter.as_ref().is_none_or(|f| f(&msg)) {
                    router.retained.insert(msg.topic.clone(), Arc::new(msg));
                }
            }
            if loaded > 0 {
                info!(loaded, kept = router.retained.len(), "retained messages loaded from disk");
            }
            let mut router = AbortOnDrop(tokio::spawn(router.run(router_rx).in_current_span()));
            let (stop_tx, stop_rx) = watch::channel(());
            let members = Arc::new(Semaphore::new(config.max_connections));
            let handshakes = Arc::new(Semaphore::new(config.max_handshakes));
            let sources = Arc::new(Mutex::new(HashMap::new()));
            let mut conns = JoinSet::new();
            let mut next_id: u64 = 0;
            tokio::pin!(shutdown);
            info!("hub listening");
            loop {
                // Reap finished connection tasks so the set does not grow with churn.
                while conns.try_join_next().is_some() {}
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
                let Some(handshaking) = Handshaking::admit(
                    &handshakes,
                    &sources,
                    remote.ip(),
                    config.max_handshakes_per_source,
                    &stats,
                ) else {
                    bump(&stats.admission_refused);
                    debug!(%remote, "handshake budget spent; connection closed");
                    drop(tcp);
                    continue;
                };
                next_id += 1;
                let conn = Connection {
                    id: next_id,
                    acceptor: acceptor.clone(),
                    config: config.clone(),
                    stats: stats.clone(),
                    router: router_tx.clone(),
                    filter: filter.clone(),
                    admission: admission.clone(),
                    member: None,
                };
                let members = members.clone();
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
                            () = conn.serve(tcp, handshaking, members) => {}
                            _ = stop.changed() => debug!("closing: hub shutting down"),
                        }
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
    /// Tell the connection what its access rules refused.
    Refuse {
        conn: u64,
        what: Refusal,
        sid: u32,
        topic: String,
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
    Refused { what: Refusal, sid: u32, topic: String },
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
    /// Where changes to retained messages go to be written to disk.
    persist: Option<mpsc::UnboundedSender<retained::Change>>,
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
            RouterCmd::Ping { conn } => self.send(conn, Outbound::Pong),
            RouterCmd::Refuse { conn, what, sid, topic } => {
                // A refused subscription replaces nothing, but an earlier one under its sid
                // ends: the client forgets the sid on a refusal.
                if what == Refusal::Subscribe
                    && let Some(c) = self.conns.get_mut(&conn)
                {
                    c.subs.remove(&sid);
                }
                self.send(conn, Outbound::Refused { what, sid, topic });
            }
        }
    }

    /// Queue `item` for `conn`, evicting it if its queue is full.
    fn send(&mut self, conn: u64, item: Outbound) {
        let result = match self.conns.get(&conn) {
            Some(c) => c.out.try_send(item),
            None => return,
        };
        if let Err(e) = result {
            self.evict(conn, eviction_for(&e));
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
            self.persist(msg);
        } else if self.retained.len() < self.config.max_retained || self.retained.contains_key(&msg.topic) {
            self.retained.insert(msg.topic.clone(), msg.clone());
            self.persist(msg);
        } else {
            bump(&self.stats.retained_refused);
            warn!(topic = %msg.topic, max = self.config.max_retained, "retained topic limit reached; message delivered but not kept");
        }
    }

    fn persist(&self, msg: &Arc<Message>) {
        if let Some(tx) = &self.persist {
            // The writer only stops with the hub.
            let _ = tx.send(msg.clone());
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
    admission: Option<Admission>,
    /// Who the peer is, from its certificate; `None` until the handshake, or when its name
    /// carries no role (then it may do nothing but ping).
    member: Option<Member>,
}

impl Connection {
    async fn serve(mut self, tcp: TcpStream, handshaking: Handshaking, members: Arc<Semaphore>) {
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
        // The handshake is over: its budget is free for the next one.
        drop(handshaking);
        let cert = tls.get_ref().1.peer_certificates().and_then(|chain| chain.first());
        let peer: Arc<str> =
            cert.and_then(|cert| tls::peer_name(cert)).unwrap_or_else(|| "unnamed".to_owned()).into();
        tracing::Span::current().record("peer", &*peer);
        self.member = match cert.and_then(|cert| tls::certificate_common_name(cert)) {
            Some(cn) => match Member::from_common_name(&cn) {
                Ok(member) => Some(member),
                Err(error) => {
                    warn!(%error, "the peer's certificate names no bus role; it may only ping");
                    None
                }
            },
            None => {
                warn!("the peer's certificate has no common name; it may only ping");
                None
            }
        };
        let bound_key = cert.and_then(|cert| tls::certificate_bound_key(cert));
        // Valid through its last second, as the handshake's own check counts it.
        let expires =
            cert.and_then(|cert| tls::certificate_not_after(cert)).map(|t| instant_of(t.saturating_add(1)));
        if let Some(admission) = &self.admission {
            let verdict = match &self.member {
                Some(member) => admission(member, bound_key.as_ref()),
                None => Err("the certificate names no bus role".to_owned()),
            };
            if let Err(reason) = verdict {
                bump(&self.stats.certificates_refused);
                warn!(%reason, "certificate refused after the handshake");
                return;
            }
        }
        let Ok(_slot) = members.try_acquire_owned() else {
            bump(&self.stats.connections_refused);
            warn!(max = self.config.max_connections, "every member slot is taken; connection closed");
            return;
        };
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
            reason = self.standing(bound_key.as_ref(), expires) => reason,
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

    /// Returns when the member's certificate stops counting: it expired, or the admission
    /// check no longer admits its member (checked every [`RECHECK_EVERY`]).
    async fn standing(
        &self,
        bound_key: Option<&KeyId>,
        expires: Option<tokio::time::Instant>,
    ) -> &'static str {
        let expiry = async {
            match expires {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let revoked = async {
            let (Some(admission), Some(member)) = (&self.admission, &self.member) else {
                return std::future::pending().await;
            };
            let mut tick = tokio::time::interval(RECHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(reason) = admission(member, bound_key) {
                    warn!(%reason, "member no longer admitted; disconnecting");
                    return;
                }
            }
        };
        tokio::select! {
            () = expiry => {
                bump(&self.stats.certificates_expired);
                "certificate expired"
            }
            () = revoked => {
                bump(&self.stats.certificates_revoked);
                "certificate revoked"
            }
        }
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
                Frame::Subscribe { sid, pattern } => {
                    if self.member.as_ref().is_some_and(|m| m.may_subscribe(&pattern)) {
                        RouterCmd::Subscribe { conn, sid, pattern }
                    } else {
                        bump(&self.stats.subscribe_refused);
                        warn!(%pattern, "subscription refused by the access rules");
                        RouterCmd::Refuse { conn, what: Refusal::Subscribe, sid, topic: pattern }
                    }
                }
                Frame::Unsubscribe { sid } => RouterCmd::Unsubscribe { conn, sid },
                Frame::Publish { topic, reply_to, payload } => {
                    let msg = Message { topic, reply_to, payload };
                    // The filter first: it sees every published message, as its contract says;
                    // what it drops is counted there and not answered.
                    if let Some(filter) = &self.filter
                        && !filter(&msg)
                    {
                        bump(&self.stats.filtered);
                        debug!(topic = %msg.topic, "message dropped by the filter");
                        continue;
                    }
                    if self
                        .member
                        .as_ref()
                        .is_some_and(|m| m.may_publish(&msg.topic, msg.reply_to.as_deref()))
                    {
                        trace!(topic = %msg.topic, len = msg.payload.len(), "publish");
                        RouterCmd::Publish { msg: Arc::new(msg) }
                    } else {
                        bump(&self.stats.publish_refused);
                        warn!(topic = %msg.topic, reply_to = msg.reply_to.as_deref().unwrap_or(""), "publish refused by the access rules");
                        RouterCmd::Refuse { conn, what: Refusal::Publish, sid: 0, topic: msg.topic }
                    }
                }
                Frame::Ping => RouterCmd::Ping { conn },
                Frame::Pong => continue,
                Frame::Deliver { .. } | Frame::Refused { .. } => {
                    bump(&self.stats.malformed_frames);
                    warn!("client sent a frame only the hub may send");
                    return "protocol violation";
                }
            };
            if self.router.send(cmd).await.is_err() {
                return "hub stopping";
            }
        }
    }
}

/// The monotonic instant at which a wall-clock time (seconds since the Unix epoch) is reached;
/// now, if it has passed.
fn instant_of(unix_seconds: i64) -> tokio::time::Instant {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let at = Duration::from_secs(u64::try_from(unix_seconds).unwrap_or(0));
    tokio::time::Instant::now() + at.saturating_sub(now)
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
        Outbound::Refused { what, sid, topic } => {
            Frame::Refused { what: *what, sid: *sid, topic: topic.clone() }.encode(buf)
        }
    };
    // Cannot happen: every message was decoded from a valid frame. Skip it rather than kill the
    // connection if it ever does.
    if let Err(error) = result {
        warn!(%error, "failed to encode an outbound frame; skipped");
    }
}
