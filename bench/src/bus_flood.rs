//! The hub under a flood of half-open connections: how long a member takes to connect (TCP,
//! mutual TLS and the hub's first answer) and a message's round trip through the hub, on a quiet
//! hub and then while 2,000 TCP connections from one other address never start their TLS
//! handshake (each one the hub closes is opened again at once). The hub runs with its default
//! settings; the quiet row is the anchor.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use enjin_bus::acl::Member;
use enjin_bus::client::{BusClient, ClientConfig};
use enjin_bus::hub::{Hub, HubConfig, HubStats, HubStatsSnapshot};
use enjin_bus::tls::TlsMaterial;
use enjin_bus::transport::Transport;
use enjin_pki::RingCa;
use tokio::net::TcpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::run::{Limits, Sample, TaskReport};

/// Half-open connections held during the flood.
pub const HALF_OPEN: usize = 2000;
/// The flood's source address: loopback, but not the members' 127.0.0.1.
const FLOODER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Connects measured per row, and round trips.
pub const CONNECTS: u64 = 100;
pub const ROUND_TRIPS: u64 = 1000;
const QUICK_CONNECTS: u64 = 10;
const QUICK_ROUND_TRIPS: u64 = 50;
const TOPIC: &str = "bench.flood.rt";
/// Time one connect or round trip may take before the row counts it as an error.
const PATIENCE: Duration = Duration::from_secs(5);
const CERT_VALIDITY: Duration = Duration::from_secs(3600);

/// One row: connect and round-trip latencies on a hub, with or without the flood.
pub struct FloodRow {
    pub name: &'static str,
    pub connects: Sample,
    pub round_trips: Sample,
    /// Hub counters when the row ended.
    pub hub: HubStatsSnapshot,
    /// Member connections lost during the row.
    pub disconnects: u64,
    /// Flood connections open at the end of the row (connected, not yet closed by the hub),
    /// and opened during it.
    pub flood_open: u64,
    pub flood_opened: u64,
}

impl FloodRow {
    pub fn failure(&self) -> Option<String> {
        let errors = self.connects.errors + self.round_trips.errors;
        if errors > 0 {
            let first = self.connects.first_error.clone().or_else(|| self.round_trips.first_error.clone());
            return Some(format!("{errors} errors, first: {}", first.unwrap_or_default()));
        }
        (self.disconnects > 0).then(|| format!("{} member connections lost", self.disconnects))
    }
}

/// Both rows, on one hub.
pub async fn rows(quick: bool) -> anyhow::Result<Vec<FloodRow>> {
    let (connects, round_trips) =
        if quick { (QUICK_CONNECTS, QUICK_ROUND_TRIPS) } else { (CONNECTS, ROUND_TRIPS) };
    let (hub_tls, member_tls) =
        tokio::task::spawn_blocking(certificates).await.context("certificate generation panicked")??;
    let hub = Hub::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &hub_tls, HubConfig::default())
        .await
        .context("failed to start a bus hub on 127.0.0.1:0")?;
    let (addr, stats) = (hub.local_addr(), hub.stats());
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(hub.run(async move {
        drop(stopped.await);
    }));

    let member = connect(addr, &member_tls).await.context("the measuring member could not connect")?;
    let counts = Arc::new(FloodCounts::default());
    let setup = Setup {
        addr,
        tls: &member_tls,
        member: &member,
        stats: &stats,
        flood: &counts,
        connects,
        round_trips,
    };
    let quiet = setup.measure("quiet hub (anchor)").await;
    let flood = tokio::spawn(flood(addr, counts.clone()));
    let established = async {
        while stats.snapshot().handshakes < 16 || stats.snapshot().admission_refused < HALF_OPEN as u64 / 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let flooding = tokio::time::timeout(Duration::from_secs(30), established).await;
    let flooded = match flooding {
        Ok(()) => Some(setup.measure("under 2,000 half-open connections").await),
        Err(_) => None,
    };
    flood.abort();
    drop(member);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), serving).await;
    let flooded = flooded.context("the flood did not reach 2,000 half-open connections within 30 s")?;
    Ok(vec![quiet, flooded])
}

fn certificates() -> anyhow::Result<(TlsMaterial, TlsMaterial)> {
    let ca = RingCa::generate(1).context("failed to generate the benchmark ring CA")?;
    let issue = |name: &str, sans: &[String]| -> anyhow::Result<TlsMaterial> {
        let cn = Member::parent(name)?.common_name();
        let issued = ca.issue(&cn, sans, CERT_VALIDITY).with_context(|| format!("certificate for {name}"))?;
        Ok(TlsMaterial {
            ca_pem: ca.cert_pem().to_owned(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        })
    };
    Ok((issue("hub", &["localhost".into(), "127.0.0.1".into()])?, issue("member", &[])?))
}

async fn connect(addr: SocketAddr, tls: &TlsMaterial) -> anyhow::Result<BusClient> {
    let client = BusClient::connect(addr, "localhost", tls, ClientConfig::default())?;
    client.wait_connected(PATIENCE).await?;
    Ok(client)
}

/// What one row measures with: the hub, a connected member and its certificate, the flood's
/// counts, and how many connects and round trips to make.
struct Setup<'a> {
    addr: SocketAddr,
    tls: &'a TlsMaterial,
    member: &'a BusClient,
    stats: &'a Arc<HubStats>,
    flood: &'a FloodCounts,
    connects: u64,
    round_trips: u64,
}

impl Setup<'_> {
    async fn measure(&self, name: &'static str) -> FloodRow {
        let Setup { addr, tls, member, stats, flood, connects, round_trips } = *self;
        let lost_before = member.stats().disconnects;
        let opened_before = flood.opened.load(Ordering::Relaxed);
        let mut report = TaskReport::default();
        let started = Instant::now();
        for _ in 0..connects {
            let t = Instant::now();
            match connect(addr, tls).await {
                Ok(client) => {
                    report.latencies.push(t.elapsed());
                    drop(client);
                }
                Err(e) => report.error(e),
            }
        }
        let limits = Limits { ops: connects, time: PATIENCE * connects as u32 };
        let connect_sample = Sample::new(1, limits, started.elapsed(), vec![report]);

        let mut report = TaskReport::default();
        let started = Instant::now();
        match member.subscribe(TOPIC) {
            Ok(mut sub) => {
                if let Err(e) = member.flush(PATIENCE).await {
                    report.error(e);
                }
                for i in 0..round_trips {
                    let t = Instant::now();
                    let sent = member.publish(TOPIC, None, i.to_be_bytes().to_vec());
                    let got = async { tokio::time::timeout(PATIENCE, sub.next()).await };
                    match (sent, got.await) {
                        (Ok(()), Ok(Some(m))) if m.payload == i.to_be_bytes() => {
                            report.latencies.push(t.elapsed())
                        }
                        (Err(e), _) => report.error(e),
                        (_, other) => {
                            report.error(std::io::Error::other(format!("round trip {i}: {other:?}")))
                        }
                    }
                }
            }
            Err(e) => report.error(e),
        }
        let limits = Limits { ops: round_trips, time: PATIENCE * round_trips as u32 };
        let rt_sample = Sample::new(1, limits, started.elapsed(), vec![report]);
        FloodRow {
            name,
            connects: connect_sample,
            round_trips: rt_sample,
            hub: stats.snapshot(),
            disconnects: member.stats().disconnects - lost_before,
            flood_open: flood.open.load(Ordering::Relaxed),
            flood_opened: flood.opened.load(Ordering::Relaxed) - opened_before,
        }
    }
}

/// What the flood has done.
#[derive(Debug, Default)]
struct FloodCounts {
    open: AtomicU64,
    opened: AtomicU64,
}

/// Open `HALF_OPEN` connections from `FLOODER` that never send a byte; reopen each one the hub
/// closes (at most about 1,000 a second: the sleep below is at least a timer tick, so the
/// flood's own CPU, in this process, stays small next to the hub's), until aborted.
async fn flood(hub: SocketAddr, counts: Arc<FloodCounts>) {
    let open = move || {
        let counts = counts.clone();
        async move {
            let socket = TcpSocket::new_v4().ok()?;
            socket.bind(SocketAddr::new(FLOODER, 0)).ok()?;
            let stream =
                tokio::time::timeout(Duration::from_secs(2), socket.connect(hub)).await.ok()?.ok()?;
            counts.opened.fetch_add(1, Ordering::Relaxed);
            counts.open.fetch_add(1, Ordering::Relaxed);
            let _ = stream.readable().await;
            counts.open.fetch_sub(1, Ordering::Relaxed);
            Some(())
        }
    };
    let mut held = JoinSet::new();
    for _ in 0..HALF_OPEN {
        held.spawn(open());
    }
    while held.join_next().await.is_some() {
        held.spawn(open());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
