//! Shared helpers for the transport tests: a throwaway ring CA made with rcgen, hubs on loopback
//! port 0, fast client settings, and waits on conditions instead of fixed sleeps.

#![allow(dead_code, reason = "each test binary uses a different subset of the helpers")]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use enjin_bus::client::{BusClient, ClientConfig};
use enjin_bus::hub::{Hub, HubConfig, HubStats, HubStatsSnapshot};
use enjin_bus::tls::TlsMaterial;
use enjin_bus::transport::{Message, Subscription};
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair};
use tokio::sync::oneshot;

/// How long any single expected event may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long to watch for something that must not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// A ring certificate authority.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("generate the CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// Material for a component of the ring's parent named `name` (common name
    /// `parent:<name>`: every topic is open to it), valid as a server for `localhost` and
    /// 127.0.0.1 too. A name with a `:` is taken as the whole common name (`host:<uuid>`, …).
    pub fn node(&self, name: &str) -> TlsMaterial {
        let cn = if name.contains(':') { name.to_owned() } else { format!("parent:{name}") };
        self.node_named(&cn)
    }

    /// Material whose certificate's common name is exactly `cn`.
    pub fn node_named(&self, cn: &str) -> TlsMaterial {
        let key = KeyPair::generate().expect("generate a node key");
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("node params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).expect("sign a node cert");
        TlsMaterial { ca_pem: self.pem.clone(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

/// A hub running in the background; stop it with [`RunningHub::stop`].
pub struct RunningHub {
    pub addr: SocketAddr,
    pub stats: Arc<HubStats>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningHub {
    pub async fn start(addr: SocketAddr, tls: &TlsMaterial, config: HubConfig) -> RunningHub {
        let hub = Hub::bind(addr, tls, config).await.expect("bind the hub");
        Self::run(hub)
    }

    pub fn run(hub: Hub) -> RunningHub {
        let addr = hub.local_addr();
        let stats = hub.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(hub.run(async {
            let _ = stopped.await;
        }));
        RunningHub { addr, stats, stop: Some(stop), task }
    }

    pub fn stats(&self) -> HubStatsSnapshot {
        self.stats.snapshot()
    }

    /// Signal shutdown and wait until the hub has closed its connections and released the port.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("the hub stops in time")
            .expect("the hub task does not panic");
    }
}

impl Drop for RunningHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Client settings that reconnect quickly, for tests.
pub fn fast_client() -> ClientConfig {
    ClientConfig {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    }
}

/// A client of `hub` that is connected when this returns.
pub async fn connected_client(addr: SocketAddr, tls: &TlsMaterial) -> BusClient {
    let client = BusClient::connect(addr, "localhost", tls, fast_client()).expect("client");
    client.wait_connected(WAIT).await.expect("client connects");
    client
}

/// The next message on `sub`, or a test failure.
pub async fn recv(sub: &mut Subscription) -> Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no message on {} within {WAIT:?}", sub.pattern()))
        .unwrap_or_else(|| panic!("subscription {} ended", sub.pattern()))
}

/// Assert nothing arrives on `sub` for a little while.
pub async fn assert_quiet(sub: &mut Subscription) {
    if let Ok(msg) = tokio::time::timeout(QUIET, sub.next()).await {
        panic!("unexpected {msg:?} on {}", sub.pattern());
    }
}

/// Wait until `condition` holds, checking again after every short pause. For counters and states
/// that have no event to await.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Retry `attempt` until it succeeds, for operations that fail while a connection is being
/// re-established (a flush issued just before the client noticed the hub went away).
pub async fn eventually<T, E: std::fmt::Debug, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}: {e:?}")
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP relay between clients and a hub, to break connections without stopping either end.
/// TLS runs end to end through it.
pub struct Proxy {
    pub addr: SocketAddr,
    control: tokio::sync::watch::Sender<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, Default)]
struct ProxyState {
    /// Bumped to close every relayed connection.
    generation: u64,
    /// Stop forwarding but keep sockets open: a peer that went silent without closing.
    blackhole: bool,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind(loopback()).await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (control, state) = tokio::sync::watch::channel(ProxyState::default());
        let task = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                pipes.spawn(pipe(client, server, state.clone()));
            }
        });
        Proxy { addr, control, task }
    }

    /// Close every connection now relayed; new ones are accepted as usual.
    pub fn cut(&self) {
        self.control.send_modify(|s| s.generation += 1);
    }

    /// Silently stop forwarding (or resume: this also cuts the held connections).
    pub fn blackhole(&self, on: bool) {
        self.control.send_modify(|s| {
            s.blackhole = on;
            if !on {
                s.generation += 1;
            }
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut client: tokio::net::TcpStream,
    mut server: tokio::net::TcpStream,
    mut state: tokio::sync::watch::Receiver<ProxyState>,
) {
    let born = state.borrow().generation;
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
        _ = state.wait_for(|s| s.generation != born || s.blackhole) => {}
    }
    // Black-holed: hold both sockets, forward nothing, until cut.
    let _ = state.wait_for(|s| s.generation != born).await;
}

/// A hand-driven client speaking raw frames over mTLS, for what `BusClient` would never do.
pub struct RawClient {
    pub tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: Vec<u8>,
}

impl RawClient {
    /// Connect and handshake; `recv_buffer` shrinks the socket's receive buffer.
    pub async fn connect(addr: SocketAddr, material: &TlsMaterial, recv_buffer: Option<u32>) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("receive buffer");
        }
        let tcp = socket.connect(addr).await.expect("connect");
        let config = enjin_bus::tls::client_config(material).expect("client config");
        let server = enjin_bus::tls::server_name("localhost").expect("server name");
        let tls = tokio::time::timeout(WAIT, tokio_rustls::TlsConnector::from(config).connect(server, tcp))
            .await
            .expect("handshake in time")
            .expect("handshake");
        RawClient { tls, buf: Vec::new() }
    }

    pub async fn send(&mut self, frames: &[enjin_bus::frame::Frame]) {
        let mut out = Vec::new();
        for frame in frames {
            frame.encode(&mut out).expect("encode");
        }
        self.send_bytes(&out).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.tls.write_all(bytes).await.expect("write");
        self.tls.flush().await.expect("flush");
    }

    /// The next frame; `None` once the hub has closed the connection (cleanly or not).
    pub async fn next(&mut self) -> Option<enjin_bus::frame::Frame> {
        tokio::time::timeout(WAIT, enjin_bus::frame::read_frame(&mut self.tls, &mut self.buf))
            .await
            .expect("a frame or the end of the connection in time")
            .ok()
            .flatten()
    }
}
