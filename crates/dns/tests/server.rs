//! The DNS server on real loopback sockets, queried with `dig` and with hickory messages.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use enjin_dns::{DnsConfig, DnsServer};
use enjin_model::api::{DnsRecord, DnsZone};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// bind9-dnsutils puts it here on Debian.
const DIG: &str = "/usr/bin/dig";
const WAIT: Duration = Duration::from_secs(5);

fn a(name: &str, addr: [u8; 4]) -> DnsRecord {
    DnsRecord::A { name: name.into(), addr: Ipv4Addr::from(addr) }
}

fn srv(name: &str, port: u16, target: &str) -> DnsRecord {
    DnsRecord::Srv { name: name.into(), priority: 10, weight: 5, port, target: target.into() }
}

fn zone(version: i64, records: Vec<DnsRecord>) -> DnsZone {
    DnsZone { version, origin: "enjin.internal".into(), records }
}

fn sample(version: i64) -> DnsZone {
    zone(
        version,
        vec![
            a("web.app.enjin.internal", [10, 0, 0, 1]),
            a("web.app.enjin.internal", [10, 0, 0, 2]),
            a("host-1.enjin.internal", [10, 1, 0, 1]),
            a("host-2.enjin.internal", [10, 1, 0, 2]),
            srv("_http._tcp.web.app.enjin.internal", 8080, "host-1.enjin.internal"),
            srv("_http._tcp.web.app.enjin.internal", 8081, "host-2.enjin.internal"),
            srv("_http._tcp.web.app.enjin.internal", 8082, "host-2.enjin.internal"),
        ],
    )
}

/// A running server on 127.0.0.1, UDP and TCP on the same port (as `dig +tcp` expects).
struct TestServer {
    server: DnsServer,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), enjin_dns::DnsError>>>,
}

impl TestServer {
    async fn start(server: DnsServer) -> Result<Self> {
        let (udp, tcp) = bind_pair().await?;
        let addr = udp.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let server = server.clone();
            async move {
                server
                    .serve(udp, tcp, async {
                        let _ = stopped.await;
                    })
                    .await
            }
        });
        Ok(Self { server, addr, stop: Some(stop), task: Some(task) })
    }

    async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().context("server task already taken")?;
        tokio::time::timeout(WAIT, task)
            .await
            .context("dns server did not stop")??
            .context("dns server failed")?;
        Ok(())
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds UDP on port 0, then TCP on the same port; another test may hold that TCP port, so
/// a few tries.
async fn bind_pair() -> Result<(UdpSocket, TcpListener)> {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await?;
        if let Ok(tcp) = TcpListener::bind(udp.local_addr()?).await {
            return Ok((udp, tcp));
        }
    }
    bail!("no port free for both udp and tcp on 127.0.0.1")
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::new();
    m.set_id(rand_id())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).expect("test name"), qtype));
    m
}

/// Each query its own id, so that an answer is matched to its query.
fn rand_id() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

async fn udp_query(addr: SocketAddr, msg: &Message) -> Result<Message> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    sock.send_to(&msg.to_vec()?, addr).await?;
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf)).await.context("no udp answer")??;
    let response = Message::from_vec(&buf[..n])?;
    assert_eq!(response.id(), msg.id());
    Ok(response)
}

async fn tcp_query(addr: SocketAddr, msg: &Message) -> Result<Message> {
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await??;
    let bytes = msg.to_vec()?;
    let len = u16::try_from(bytes.len())?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(&bytes).await?;
    let mut len = [0u8; 2];
    tokio::time::timeout(WAIT, stream.read_exact(&mut len)).await.context("no tcp answer")??;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    tokio::time::timeout(WAIT, stream.read_exact(&mut buf)).await??;
    Ok(Message::from_vec(&buf)?)
}

/// `dig +short` lines, sorted.
async fn dig(port: u16, name: &str, qtype: &str, tcp: bool) -> Result<BTreeSet<String>> {
    let mut cmd = Command::new(DIG);
    cmd.args(["@127.0.0.1", "-p", &port.to_string(), name, qtype, "+short", "+time=2", "+tries=1"]);
    if tcp {
        cmd.arg("+tcp");
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .with_context(|| format!("failed to run {DIG} (install bind9-dnsutils)"))?;
    if !out.status.success() {
        bail!("dig {name} {qtype} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.lines().map(str::to_owned).collect())
}

/// The full `dig` answer, for the status line and flags.
async fn dig_full(port: u16, name: &str, qtype: &str) -> Result<String> {
    let mut cmd = Command::new(DIG);
    cmd.args(["@127.0.0.1", "-p", &port.to_string(), name, qtype, "+time=2", "+tries=1", "+norecurse"]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .with_context(|| format!("failed to run {DIG} (install bind9-dnsutils)"))?;
    Ok(String::from_utf8(out.stdout)?)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

async fn started(zone: DnsZone) -> Result<TestServer> {
    let server = DnsServer::new(DnsConfig::default());
    assert!(server.apply(zone));
    TestServer::start(server).await
}

fn soa_serial(m: &Message) -> Option<u32> {
    m.name_servers().iter().find_map(|r| match r.data() {
        RData::SOA(soa) => Some(soa.serial()),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_gets_a_records_over_udp_and_tcp() -> Result<()> {
    let t = started(sample(3)).await?;
    let want = set(&["10.0.0.1", "10.0.0.2"]);
    assert_eq!(dig(t.port(), "web.app.enjin.internal", "A", false).await?, want);
    assert_eq!(dig(t.port(), "web.app.enjin.internal", "A", true).await?, want);
    let full = dig_full(t.port(), "web.app.enjin.internal", "A").await?;
    assert!(full.contains("status: NOERROR"), "{full}");
    assert!(full.contains(" aa"), "authoritative answer expected: {full}");
    assert!(full.contains("\t5\tIN\tA\t10.0.0.1"), "ttl 5 expected: {full}");
    t.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_answers_carry_the_targets_addresses() -> Result<()> {
    let t = started(sample(3)).await?;
    let r = udp_query(t.addr, &query("_http._tcp.web.app.enjin.internal.", RecordType::SRV)).await?;
    assert_eq!(r.response_code(), ResponseCode::NoError);
    assert!(r.authoritative());
    let mut ports: Vec<u16> = r
        .answers()
        .iter()
        .filter_map(|rec| match rec.data() {
            RData::SRV(s) => Some(s.port()),
            _ => None,
        })
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, [8080, 8081, 8082]);
    let mut extra: Vec<(String, Ipv4Addr)> = r
        .additionals()
        .iter()
        .filter_map(|rec| match rec.data() {
            RData::A(addr) => Some((rec.name().to_string(), addr.0)),
            _ => None,
        })
        .collect();
    extra.sort();
    assert_eq!(
        extra,
        [
            ("host-1.enjin.internal.".to_owned(), Ipv4Addr::new(10, 1, 0, 1)),
            ("host-2.enjin.internal.".to_owned(), Ipv4Addr::new(10, 1, 0, 2)),
        ],
        "each target once"
    );
    let lines = dig(t.port(), "_http._tcp.web.app.enjin.internal", "SRV", false).await?;
    assert!(lines.contains("10 5 8080 host-1.enjin.internal."), "{lines:?}");
    t.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_are_nxdomain_with_the_soa() -> Result<()> {
    let t = started(sample(41)).await?;
    let r = udp_query(t.addr, &query("nope.enjin.internal.", RecordType::A)).await?;
    assert_eq!(r.response_code(), ResponseCode::NXDomain);
    assert!(r.authoritative());
    assert!(r.answers().is_empty());
    assert_eq!(soa_serial(&r), Some(41));
    let full = dig_full(t.port(), "nope.enjin.internal", "A").await?;
    assert!(full.contains("status: NXDOMAIN"), "{full}");
    assert!(full.contains("SOA"), "{full}");

    // NODATA: the name exists, the type does not; an empty non-terminal exists too.
    for (name, qtype) in [
        ("web.app.enjin.internal.", RecordType::AAAA),
        ("web.app.enjin.internal.", RecordType::ANY),
        ("_tcp.web.app.enjin.internal.", RecordType::A),
        ("app.enjin.internal.", RecordType::A),
    ] {
        let r = udp_query(t.addr, &query(name, qtype)).await?;
        assert_eq!(r.response_code(), ResponseCode::NoError, "{name} {qtype}");
        assert!(r.answers().is_empty(), "{name} {qtype}");
        assert_eq!(soa_serial(&r), Some(41), "{name} {qtype}");
    }
    let r = udp_query(t.addr, &query("enjin.internal.", RecordType::SOA)).await?;
    assert_eq!(r.answers().len(), 1);
    t.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_outside_the_zone_are_refused() -> Result<()> {
    let t = started(sample(3)).await?;
    for name in ["example.com.", "internal.", "enjin.internal.evil.", "."] {
        let r = udp_query(t.addr, &query(name, RecordType::A)).await?;
        assert_eq!(r.response_code(), ResponseCode::Refused, "{name}");
        assert!(!r.authoritative(), "{name}");
    }
    let full = dig_full(t.port(), "example.com", "A").await?;
    assert!(full.contains("status: REFUSED"), "{full}");
    t.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_case_insensitive() -> Result<()> {
    let t = started(sample(3)).await?;
    let want = set(&["10.0.0.1", "10.0.0.2"]);
    assert_eq!(dig(t.port(), "WEB.App.ENJIN.internal", "A", false).await?, want);
    let r = udp_query(t.addr, &query("wEb.aPp.EnJiN.InTeRnAl.", RecordType::A)).await?;
    assert_eq!(r.answers().len(), 2);
    // The question comes back as asked, which resolvers using 0x20 randomisation check.
    assert_eq!(r.queries()[0].name().to_string(), "wEb.aPp.EnJiN.InTeRnAl.");
    t.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_snapshot_changes_answers_and_an_older_one_is_ignored() -> Result<()> {
    let t = started(sample(10)).await?;
    assert_eq!(t.server.version(), Some(10));
    assert_eq!(dig(t.port(), "web.app.enjin.internal", "A", false).await?, set(&["10.0.0.1", "10.0.0.2"]));

    assert!(t.server.apply(zone(
        11,
        vec![a("web.app.enjin.internal", [10, 9, 9, 9]), a("new.enjin.internal", [10, 8, 8, 8])]
    )));
    assert_eq!(t.server.version(), Some(11));
    assert_eq!(dig(t.port(), "web.app.enjin.internal", "A", false).await?, set(&["10.9.9.9"]));
    assert_eq!(dig(t.port(), "new.enjin.internal", "A", false).await?, set(&["10.8.8.8"]));
    let r = udp_query(t.addr, &query("host-1.enjin.internal.", RecordType::A)).await?;
    assert_eq!(r.response_code(), ResponseCode::NXDomain, "removed names are gone");

    assert!(!t.server.apply(sample(10)), "older");
    assert!(!t.server.apply(sample(11)), "same version");
    assert_eq!(t.server.version(), Some(11));
    assert_eq!(dig(t.port(), "web.app.enjin.internal", "A", false).await?, set(&["10.9.9.9"]));

    let metrics = t.server.metrics_text();
    assert!(metrics.contains("enjin_dns_zone_version 11\n"), "{metrics}");
    assert!(metrics.contains("enjin_dns_zone_updates_total{outcome=\"stale\"} 2\n"), "{metrics}");
    assert!(metrics.contains("enjin_dns_zone_updates_total{outcome=\"applied\"} 2\n"), "{metrics}");
    t.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_answers_several_queries_on_one_connection() -> Result<()> {
    let t = started(sample(3)).await?;
    let r = tcp_query(t.addr, &query("_http._tcp.web.app.enjin.internal.", RecordType::SRV)).await?;
    assert_eq!(r.answers().len(), 3);
    assert_eq!(r.additionals().len(), 2);

    let mut stream = TcpStream::connect(t.addr).await?;
    for name in ["web.app.enjin.internal.", "host-1.enjin.internal.", "nope.enjin.internal."] {
        let bytes = query(name, RecordType::A).to_vec()?;
        stream.write_all(&u16::try_from(bytes.len())?.to_be_bytes()).await?;
        stream.write_all(&bytes).await?;
        let mut len = [0u8; 2];
        tokio::time::timeout(WAIT, stream.read_exact(&mut len)).await??;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tokio::time::timeout(WAIT, stream.read_exact(&mut buf)).await??;
        let r = Message::from_vec(&buf)?;
        let want = if name.starts_with("nope") { ResponseCode::NXDomain } else { ResponseCode::NoError };
        assert_eq!(r.response_code(), want, "{name}");
    }
    t.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_does_not_kill_the_server() -> Result<()> {
    let t = started(sample(3)).await?;
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let valid = query("web.app.enjin.internal.", RecordType::A).to_vec()?;
    // A cheap deterministic generator: the point is many shapes of bad input, not randomness.
    let mut x: u32 = 0x9e37_79b9;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for i in 0..300usize {
        let mut bytes: Vec<u8> = match i % 3 {
            0 => (0..(next() % 600)).map(|_| next() as u8).collect(),
            1 => valid[..(next() as usize % valid.len())].to_vec(),
            _ => {
                let mut v = valid.clone();
                let at = next() as usize % v.len();
                v[at] = next() as u8;
                v
            }
        };
        if bytes.is_empty() {
            bytes.push(0);
        }
        sock.send_to(&bytes, t.addr).await?;
    }
    // Garbage on TCP: a length prefix promising more than is sent, then a hang-up.
    {
        let mut stream = TcpStream::connect(t.addr).await?;
        stream.write_all(&[0xff, 0xff, 1, 2, 3]).await?;
    }
    {
        let mut stream = TcpStream::connect(t.addr).await?;
        stream.write_all(&[0x00, 0x03, 1, 2, 3]).await?;
    }

    // Answers may be queued behind replies to the garbage; wait for ours by id.
    let q = query("web.app.enjin.internal.", RecordType::A);
    let fresh = UdpSocket::bind("127.0.0.1:0").await?;
    fresh.send_to(&q.to_vec()?, t.addr).await?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (n, _) = tokio::time::timeout_at(deadline, fresh.recv_from(&mut buf))
            .await
            .context("no answer after garbage")??;
        let r = Message::from_vec(&buf[..n])?;
        if r.id() == q.id() {
            assert_eq!(r.answers().len(), 2);
            break;
        }
    }
    assert_eq!(dig(t.port(), "web.app.enjin.internal", "A", true).await?, set(&["10.0.0.1", "10.0.0.2"]));
    t.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_first_zone_queries_get_servfail() -> Result<()> {
    let t = TestServer::start(DnsServer::new(DnsConfig::default())).await?;
    assert_eq!(t.server.version(), None);
    let r = udp_query(t.addr, &query("web.app.enjin.internal.", RecordType::A)).await?;
    assert_eq!(r.response_code(), ResponseCode::ServFail);
    assert!(t.server.metrics_text().contains("enjin_dns_zone_version -1\n"));
    assert!(t.server.apply(sample(1)));
    let r = udp_query(t.addr, &query("web.app.enjin.internal.", RecordType::A)).await?;
    assert_eq!(r.answers().len(), 2);
    t.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_queries_by_type_and_code() -> Result<()> {
    let t = started(sample(5)).await?;
    udp_query(t.addr, &query("web.app.enjin.internal.", RecordType::A)).await?;
    udp_query(t.addr, &query("web.app.enjin.internal.", RecordType::A)).await?;
    udp_query(t.addr, &query("nope.enjin.internal.", RecordType::SRV)).await?;
    tcp_query(t.addr, &query("example.com.", RecordType::A)).await?;
    // Counted after the response is sent, so the count may trail the answer by a moment.
    let want = [
        "enjin_dns_queries_total{protocol=\"udp\",qtype=\"A\",rcode=\"NOERROR\"} 2\n",
        "enjin_dns_queries_total{protocol=\"udp\",qtype=\"SRV\",rcode=\"NXDOMAIN\"} 1\n",
        "enjin_dns_queries_total{protocol=\"tcp\",qtype=\"A\",rcode=\"REFUSED\"} 1\n",
        "enjin_dns_zone_version 5\n",
        "enjin_dns_zone_records 7\n",
    ];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = t.server.metrics_text();
        if want.iter().all(|w| text.contains(w)) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("metrics never showed {want:?}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(t.server.metrics_text().contains("# TYPE enjin_dns_queries_total counter\n"));
    t.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_serving() -> Result<()> {
    let t = started(sample(3)).await?;
    let addr = t.addr;
    udp_query(addr, &query("web.app.enjin.internal.", RecordType::A)).await?;
    t.shutdown().await?;
    // The listener is closed with the server: connecting is refused once the task is done.
    assert!(TcpStream::connect(addr).await.is_err());
    Ok(())
}
