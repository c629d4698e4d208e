//! The ring bus: what one envelope costs to seal and to accept on one thread, next to raw Ed25519
//! measured in the same run; and broadcast through a real hub over mutual TLS on loopback, from
//! one signing publisher to N verifying subscribers, each on its own connection with its own
//! certificate.

use std::collections::HashMap;
use std::hint::black_box;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use enjin_bus::client::{BusClient, ClientConfig};
use enjin_bus::counters::Counters;
use enjin_bus::envelope::{Envelope, SIGNATURE_DOMAIN};
use enjin_bus::hub::{Hub, HubConfig, HubStats};
use enjin_bus::identity::Identity;
use enjin_bus::node::{BusNode, NodeError, NodeSubscription};
use enjin_bus::tls::TlsMaterial;
use enjin_bus::transport::TransportError;
use enjin_bus::trust::{KeyRole, Publisher, TrustBundle, TrustedKey, Verifier, VerifierConfig};
use enjin_pki::RingCa;
use tokio::sync::{Notify, oneshot, watch};

use crate::run::{self, Limits, Sample, TaskReport};

/// Every broadcast message: its index and send time, then zeros.
pub const BROADCAST_PAYLOAD: usize = 256;
/// Payload sizes of the crypto rows; the middle one is the broadcast payload, so that the
/// broadcast table can say how much of its time signing and verifying take.
pub const CRYPTO_PAYLOADS: [usize; 3] = [64, BROADCAST_PAYLOAD, 1024];
/// Subscriber counts of the broadcast rows.
pub const SUBSCRIBERS: [usize; 3] = [1, 10, 100];
/// How far the publisher may run ahead of the slowest subscriber in the throughput rows, unless
/// `--bus-window` says otherwise. A message in flight to a subscriber waits in one of its
/// bounded queues (the hub's outbound queue for the connection and the client's subscription
/// queue, 1024 each by default); with far fewer than that in flight neither can fill, so
/// neither the hub's slow-consumer policy nor the client's lagging-subscriber policy fires.
/// Larger windows (up to 512 was tried) deliver no more, and only add queueing latency.
pub const WINDOW: u64 = 128;
/// Most messages, and most deliveries (messages × subscribers), in one throughput row.
pub const MESSAGES: u64 = 20_000;
pub const DELIVERIES: u64 = 200_000;
/// The same for the latency rows, which send one message at a time.
pub const LATENCY_MESSAGES: u64 = 2_000;
pub const LATENCY_DELIVERIES: u64 = 20_000;
const QUICK_MESSAGES: u64 = 200;
const QUICK_LATENCY_MESSAGES: u64 = 50;

pub const RING: u8 = 1;
const TOPIC: &str = "bench.broadcast";
/// Time allowed to connect, subscribe and have the hub confirm it.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
/// Once publishing stops, subscribers take what is still in flight for as long as they make
/// progress; a row gives up on them after this long without a single delivery. Progress, not
/// a deadline, so that a slow machine (or a debug build) reports late messages as late rather
/// than missing, while a lost message still ends the row soon.
pub const STALL_PATIENCE: Duration = Duration::from_secs(5);
/// How long the hub gets to close its connections when a row is done.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(10);
/// How often waiting for subscribers looks again without being woken.
const POLL: Duration = Duration::from_millis(50);
const CERT_VALIDITY: Duration = Duration::from_secs(3600);

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// What a crypto row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptoOp {
    RawSign,
    Seal,
    RawVerify,
    VerifySignature,
    Accept,
}

impl CryptoOp {
    pub fn name(self) -> &'static str {
        match self {
            CryptoOp::RawSign => "Ed25519 sign (Identity::sign): anchor",
            CryptoOp::Seal => "Publisher::seal (encode + sign)",
            CryptoOp::RawVerify => "Ed25519 verify_strict, key parsed once: anchor",
            CryptoOp::VerifySignature => "Envelope::verify_signature (parse key + re-encode + verify)",
            CryptoOp::Accept => "Verifier::accept (decode + checks + verify)",
        }
    }

    /// The raw Ed25519 operation this one is compared with.
    pub fn anchor(self) -> CryptoOp {
        match self {
            CryptoOp::RawSign | CryptoOp::Seal => CryptoOp::RawSign,
            CryptoOp::RawVerify | CryptoOp::VerifySignature | CryptoOp::Accept => CryptoOp::RawVerify,
        }
    }
}

#[derive(Debug)]
pub struct CryptoRow {
    pub op: CryptoOp,
    pub payload: usize,
    pub sample: Sample,
}

impl CryptoRow {
    /// Wall time per operation, loop overhead included (a few tens of ns).
    pub fn ns_per_op(&self) -> f64 {
        let ops = self.sample.ops();
        if ops == 0 { 0.0 } else { self.sample.elapsed.as_secs_f64() * 1e9 / ops as f64 }
    }
}

/// The cost of `op` on `payload`-byte envelopes, from `rows`.
pub fn ns_per_op(rows: &[CryptoRow], op: CryptoOp, payload: usize) -> Option<f64> {
    rows.iter().find(|r| r.op == op && r.payload == payload).map(CryptoRow::ns_per_op)
}

/// A trust set as a parent would hand it out: a parent key (a bundle needs one; it never signs
/// here) and the publisher as a member.
pub struct Keys {
    pub publisher: Identity,
    pub bundle: TrustBundle,
}

pub fn keys() -> anyhow::Result<Keys> {
    let parent = Identity::generate().context("failed to generate the parent's bus identity")?;
    let publisher = Identity::generate().context("failed to generate the publisher's bus identity")?;
    let bundle = TrustBundle {
        ring: RING,
        version: 1,
        keys: vec![
            TrustedKey::new(parent.key_id(), KeyRole::Parent, "bench parent"),
            TrustedKey::new(publisher.key_id(), KeyRole::Member, "bench publisher"),
        ],
    };
    Ok(Keys { publisher, bundle })
}

/// For each payload size: raw sign, seal, raw verify, `verify_signature` and `accept`, each on
/// one blocking thread.
pub async fn crypto_rows(limits: Limits) -> anyhow::Result<Vec<CryptoRow>> {
    let mut rows = Vec::new();
    for payload in CRYPTO_PAYLOADS {
        let Keys { publisher, bundle } = keys()?;
        let publisher = Arc::new(Publisher::new(publisher, RING, 1, Arc::new(Counters::new())));
        let sealed = publisher
            .seal(TOPIC, None, vec![0; payload], now_ms())
            .context("failed to seal a benchmark envelope")?;
        // What the signature covers: the domain, then the envelope up to its signature flag, so
        // the raw rows sign and verify exactly the bytes the envelope rows do.
        let (body, flag_and_signature) = sealed.split_at(sealed.len() - 65);
        let signature: [u8; 64] =
            flag_and_signature[1..].try_into().context("a sealed envelope ends in a 64-byte signature")?;
        let signed: Arc<[u8]> = [SIGNATURE_DOMAIN, body].concat().into();
        let mut push = |op, sample| rows.push(CryptoRow { op, payload, sample });

        let (signer, message) = (Arc::clone(&publisher), Arc::clone(&signed));
        push(
            CryptoOp::RawSign,
            run::run_blocking(limits, move || {
                black_box(signer.identity().sign(black_box(&message)));
                Ok(())
            })
            .await?,
        );

        let sealer = Arc::clone(&publisher);
        push(
            CryptoOp::Seal,
            run::run_blocking(limits, move || {
                let sealed =
                    sealer.seal(TOPIC, None, vec![0; payload], now_ms()).map_err(io::Error::other)?;
                black_box(sealed);
                Ok(())
            })
            .await?,
        );

        let key =
            publisher.identity().key_id().verifying_key().context("the publisher's key is on the curve")?;
        let message = Arc::clone(&signed);
        push(
            CryptoOp::RawVerify,
            run::run_blocking(limits, move || {
                // `into` reaches ed25519-dalek's signature type through the key's method, without
                // a dependency of our own: this measures exactly the version enjin-bus links.
                key.verify_strict(black_box(&message), &signature.into()).map_err(io::Error::other)
            })
            .await?,
        );

        let envelope = Envelope::decode(&sealed).context("failed to decode a sealed envelope")?;
        push(
            CryptoOp::VerifySignature,
            run::run_blocking(limits, move || {
                black_box(&envelope).verify_signature().map_err(io::Error::other)
            })
            .await?,
        );

        // `accept` refuses replays, so every operation needs an envelope of its own: sealed
        // beforehand, untimed, with rising sequence numbers.
        let mut verifier = Verifier::new(bundle, VerifierConfig::default(), Arc::new(Counters::new()))
            .context("the benchmark trust bundle is valid")?;
        let mut envelopes = (0..limits.ops)
            .map(|_| publisher.seal(TOPIC, None, vec![0; payload], now_ms()))
            .collect::<Result<Vec<_>, _>>()
            .context("failed to seal benchmark envelopes")?
            .into_iter();
        push(
            CryptoOp::Accept,
            run::run_blocking(limits, move || {
                let bytes =
                    envelopes.next().ok_or_else(|| io::Error::other("ran out of sealed envelopes"))?;
                verifier.accept(black_box(&bytes), now_ms()).map(drop).map_err(io::Error::other)
            })
            .await?,
        );
    }
    Ok(rows)
}

/// One broadcast row to run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub name: &'static str,
    pub subscribers: usize,
    /// Most messages the publisher may have sent that the slowest subscriber has not received.
    pub window: u64,
    pub messages: u64,
}

impl Plan {
    fn throughput(subscribers: usize, window: u64, messages: u64) -> Plan {
        Plan { name: "throughput", subscribers, window, messages }
    }

    fn latency(subscribers: usize, messages: u64) -> Plan {
        Plan { name: "latency, one at a time", subscribers, window: 1, messages }
    }
}

/// The broadcast rows: throughput (`window` messages in flight) and unloaded latency (one
/// message at a time) for each subscriber count; `quick` keeps two small rows of each.
pub fn plans(quick: bool, window: u64) -> Vec<Plan> {
    if quick {
        return vec![
            Plan::throughput(1, window, QUICK_MESSAGES),
            Plan::throughput(10, window, QUICK_MESSAGES),
            Plan::latency(1, QUICK_LATENCY_MESSAGES),
            Plan::latency(10, QUICK_LATENCY_MESSAGES),
        ];
    }
    let per = |budget: u64, n: usize, most: u64| (budget / n as u64).clamp(1, most);
    let throughput = SUBSCRIBERS.map(|n| Plan::throughput(n, window, per(DELIVERIES, n, MESSAGES)));
    let latency = SUBSCRIBERS.map(|n| Plan::latency(n, per(LATENCY_DELIVERIES, n, LATENCY_MESSAGES)));
    throughput.into_iter().chain(latency).collect()
}

/// The outcome of one broadcast row.
#[derive(Debug)]
pub struct BroadcastRow {
    pub plan: Plan,
    pub published: u64,
    /// The time limit, not the count, ended publishing.
    pub time_limited: bool,
    /// First publish to the last `publish` returning.
    pub publish_time: Duration,
    /// One latency per delivery (receive time minus send time); its `elapsed` runs from the
    /// first publish to the last delivery.
    pub deliveries: Sample,
    /// Publishes refused because the publisher's client queue was full, then retried.
    pub full_retries: u64,
    pub slow_consumer_disconnects: u64,
    /// Subscriptions the subscribers' clients ended because they fell a queue behind.
    pub lagged_subscriptions: u64,
    /// Connections the clients (publisher's included) lost, and made again.
    pub disconnects: u64,
    /// Published × subscribers, minus what arrived.
    pub missing: u64,
    /// CPU time of every thread of this process over the row, per second of wall time.
    pub cpu_cores: Option<f64>,
}

impl BroadcastRow {
    pub fn messages_per_sec(&self) -> f64 {
        let secs = self.publish_time.as_secs_f64();
        if secs > 0.0 { self.published as f64 / secs } else { 0.0 }
    }

    /// Why this row counts as failed, if it does.
    pub fn failure(&self) -> Option<String> {
        let s = &self.deliveries;
        if s.errors > 0 {
            let first = s.first_error.as_deref().unwrap_or("unknown");
            return Some(format!("errors: {}, the first: {first}", s.errors));
        }
        let counts = [
            (self.slow_consumer_disconnects, "slow-consumer disconnects"),
            (self.lagged_subscriptions, "lagged subscriptions"),
            (self.disconnects, "lost connections"),
            (self.missing, "missing deliveries"),
        ];
        let what: Vec<String> =
            counts.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{what}: {n}")).collect();
        (!what.is_empty()).then(|| what.join(", "))
    }
}

/// Certificates from one ring CA: the hub's for `localhost` and `127.0.0.1`, the publisher's,
/// and one per subscriber.
struct Certificates {
    hub: TlsMaterial,
    publisher: TlsMaterial,
    subscribers: Vec<TlsMaterial>,
}

fn certificates(subscribers: usize) -> anyhow::Result<Certificates> {
    let ca = RingCa::generate(RING).context("failed to generate the benchmark ring CA")?;
    // Components of the ring's parent: every topic is open to them.
    let issue = |name: &str, sans: &[String]| -> anyhow::Result<TlsMaterial> {
        let cn = enjin_bus::acl::Member::parent(name)?.common_name();
        let issued = ca
            .issue(&cn, sans, CERT_VALIDITY)
            .with_context(|| format!("failed to issue a certificate for {name}"))?;
        Ok(TlsMaterial {
            ca_pem: ca.cert_pem().to_owned(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        })
    };
    Ok(Certificates {
        hub: issue("hub", &["localhost".into(), "127.0.0.1".into()])?,
        publisher: issue("publisher", &[])?,
        subscribers: (0..subscribers)
            .map(|k| issue(&format!("subscriber-{k}"), &[]))
            .collect::<Result<_, _>>()?,
    })
}

/// Every broadcast row of `plans`, each on a hub of its own.
pub async fn broadcast_rows(plans: &[Plan], limits: Limits) -> anyhow::Result<Vec<BroadcastRow>> {
    let most = plans.iter().map(|p| p.subscribers).max().unwrap_or(0);
    let certs = tokio::task::spawn_blocking(move || certificates(most))
        .await
        .context("certificate generation panicked")??;
    let mut rows = Vec::with_capacity(plans.len());
    for &plan in plans {
        rows.push(broadcast(&certs, plan, limits).await?);
    }
    Ok(rows)
}

/// One row: a fresh hub on 127.0.0.1, measured, then stopped.
async fn broadcast(certs: &Certificates, plan: Plan, limits: Limits) -> anyhow::Result<BroadcastRow> {
    let hub = Hub::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &certs.hub, HubConfig::default())
        .await
        .context("failed to start a bus hub on 127.0.0.1:0")?;
    let (addr, stats) = (hub.local_addr(), hub.stats());
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(hub.run(async move {
        // A dropped sender stops the hub too.
        drop(stopped.await);
    }));

    let measured = measure(addr, &stats, certs, plan, limits).await;

    let _ = stop.send(());
    match tokio::time::timeout(SHUTDOWN_PATIENCE, serving).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e).context("the bus hub task panicked"),
        Err(_) => anyhow::bail!("the bus hub on {addr} did not stop within {SHUTDOWN_PATIENCE:?}"),
    }
    measured
}

/// A node on the hub at `addr`: connected (the hub accepted its certificate) and trusting `bundle`.
async fn join(
    addr: SocketAddr,
    tls: &TlsMaterial,
    identity: Identity,
    bundle: &TrustBundle,
) -> anyhow::Result<(Arc<BusClient>, BusNode)> {
    let client = BusClient::connect(addr, "localhost", tls, ClientConfig::default())
        .context("failed to create a bus client")?;
    let client = Arc::new(client);
    client
        .wait_connected(CONNECT_PATIENCE)
        .await
        .with_context(|| format!("failed to connect to the hub on {addr}"))?;
    let node = BusNode::start(client.clone(), identity, bundle.clone(), VerifierConfig::default())
        .context("failed to start a bus node")?;
    Ok((client, node))
}

async fn measure(
    addr: SocketAddr,
    hub: &HubStats,
    certs: &Certificates,
    plan: Plan,
    limits: Limits,
) -> anyhow::Result<BroadcastRow> {
    let Keys { publisher, bundle } = keys()?;
    let (publisher_client, publisher) = join(addr, &certs.publisher, publisher, &bundle).await?;
    let tls = certs.subscribers.get(..plan.subscribers).context("too few subscriber certificates")?;
    // Clients and nodes live until the row is over: dropping either takes a subscriber away.
    let (mut clients, mut nodes, mut subscriptions) = (vec![publisher_client], Vec::new(), Vec::new());
    for tls in tls {
        let identity = Identity::generate().context("failed to generate a subscriber's bus identity")?;
        let (client, node) = join(addr, tls, identity, &bundle).await?;
        subscriptions.push(node.subscribe(TOPIC).context("failed to subscribe")?);
        // The hub has the subscription before the first message is published.
        client.flush(CONNECT_PATIENCE).await.context("failed to confirm a subscription with the hub")?;
        clients.push(client);
        nodes.push(node);
    }

    let progress = Arc::new(Progress::new(plan.subscribers));
    let (stop, stopped) = watch::channel(false);
    let cpu_before = thread_cpu();
    // The origin of every send timestamp, and of the row's time.
    let start = Instant::now();
    let receivers: Vec<_> = subscriptions
        .into_iter()
        .enumerate()
        .map(|(k, sub)| {
            let capacity = usize::try_from(plan.messages).unwrap_or(0);
            tokio::spawn(receive(k, sub, Arc::clone(&progress), start, stopped.clone(), capacity))
        })
        .collect();

    let sent = publish(&publisher, &progress, plan, start, limits.time).await;
    let publish_time = start.elapsed();
    progress.drain(sent.published).await;
    let cpu_cores = cpu_before.zip(thread_cpu()).map(|(before, after)| {
        cpu_between(&before, &after).as_secs_f64() / start.elapsed().as_secs_f64().max(f64::MIN_POSITIVE)
    });
    let _ = stop.send(true);

    let mut reports = Vec::with_capacity(receivers.len() + 1);
    let (mut received, mut last) = (0, None);
    for receiver in receivers {
        let r = receiver.await.context("a subscriber task panicked")?;
        received += r.count;
        last = last.max(r.last);
        reports.push(r.report);
    }
    reports.push(sent.report);
    let expected = sent.published * plan.subscribers as u64;
    let elapsed = last.unwrap_or(publish_time);
    let deliveries =
        Sample::new(plan.subscribers, Limits { ops: expected, time: limits.time }, elapsed, reports);
    let stats: Vec<_> = clients.iter().map(|c| c.stats()).collect();
    Ok(BroadcastRow {
        plan,
        published: sent.published,
        time_limited: sent.time_limited,
        publish_time,
        deliveries,
        full_retries: sent.full_retries,
        slow_consumer_disconnects: hub.snapshot().slow_consumer_disconnects,
        lagged_subscriptions: stats.iter().map(|s| s.lagged_subscriptions).sum(),
        disconnects: stats.iter().map(|s| s.disconnects).sum(),
        missing: expected.saturating_sub(received),
        cpu_cores,
    })
}

/// How many messages each subscriber has received, shared with the publisher so that it can
/// stay within its window of the slowest one.
#[derive(Debug)]
pub struct Progress {
    received: Vec<AtomicU64>,
    /// The count the publisher is waiting for every subscriber to reach; a subscriber that
    /// reaches it wakes the publisher, which then looks at all of them.
    target: AtomicU64,
    changed: Notify,
}

impl Progress {
    pub fn new(subscribers: usize) -> Self {
        Progress {
            received: (0..subscribers).map(|_| AtomicU64::new(0)).collect(),
            target: AtomicU64::new(u64::MAX),
            changed: Notify::new(),
        }
    }

    pub fn slowest(&self) -> u64 {
        self.received.iter().map(|r| r.load(Ordering::SeqCst)).min().unwrap_or(u64::MAX)
    }

    pub fn advance(&self, subscriber: usize, received: u64) {
        if let Some(r) = self.received.get(subscriber) {
            r.store(received, Ordering::SeqCst);
        }
        // SeqCst on both sides: either this load sees the publisher's new target, or the
        // publisher's next look at the counts sees this store. No wake-up is lost.
        if received == self.target.load(Ordering::SeqCst) {
            self.changed.notify_one();
        }
    }

    /// A subscriber whose subscription ended holds no one back; its shortfall shows as missing.
    pub fn finish(&self, subscriber: usize) {
        if let Some(r) = self.received.get(subscriber) {
            r.store(u64::MAX, Ordering::SeqCst);
        }
        self.changed.notify_one();
    }

    /// Messages received so far by the subscribers still subscribed.
    pub fn delivered(&self) -> u64 {
        let counts = self.received.iter().map(|r| r.load(Ordering::SeqCst));
        counts.filter(|&n| n != u64::MAX).fold(0, u64::saturating_add)
    }

    /// Waits until every subscriber has received `target` messages, for as long as messages keep
    /// arriving; false once none has for [`STALL_PATIENCE`].
    pub async fn drain(&self, target: u64) -> bool {
        let mut before = self.delivered();
        loop {
            if self.wait_until(target, Instant::now() + STALL_PATIENCE).await {
                return true;
            }
            let now = self.delivered();
            if now == before {
                return false;
            }
            before = now;
        }
    }

    /// Waits until every subscriber has received `target` messages; false if `deadline` came first.
    pub async fn wait_until(&self, target: u64, deadline: Instant) -> bool {
        self.target.store(target, Ordering::SeqCst);
        loop {
            if self.slowest() >= target {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // A permit left by an earlier wake-up only costs one more look; the poll is a
            // safety net, not the mechanism.
            let _ = tokio::time::timeout((deadline - now).min(POLL), self.changed.notified()).await;
        }
    }
}

/// What the publisher did.
#[derive(Debug, Default)]
struct Sent {
    published: u64,
    time_limited: bool,
    full_retries: u64,
    /// Errors only; latencies are the subscribers'.
    report: TaskReport,
}

/// Publishes `plan.messages` messages, or as many as fit in `time`, each at most `plan.window`
/// ahead of the slowest subscriber.
async fn publish(node: &BusNode, progress: &Progress, plan: Plan, start: Instant, time: Duration) -> Sent {
    let deadline = start + time;
    let mut sent = Sent::default();
    // When the window is full, wait for room for this many messages, not one: fewer wake-ups.
    let batch = (plan.window / 8).max(1);
    while sent.published < plan.messages {
        if progress.slowest().saturating_add(plan.window) <= sent.published {
            let target = (sent.published + batch).saturating_sub(plan.window);
            if !progress.wait_until(target, deadline).await {
                sent.time_limited = true;
                return sent;
            }
        }
        // Stamped once: time spent retrying a full queue belongs to the message's latency.
        let payload = message(sent.published, start.elapsed());
        loop {
            match node.publish(TOPIC, payload.clone()) {
                Ok(()) => break,
                Err(NodeError::Transport(TransportError::Full)) => {
                    sent.full_retries += 1;
                    if Instant::now() >= deadline {
                        sent.time_limited = true;
                        return sent;
                    }
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    sent.report.error(format_args!("failed to publish message {}: {e}", sent.published));
                    return sent;
                }
            }
        }
        sent.published += 1;
        if Instant::now() >= deadline && sent.published < plan.messages {
            sent.time_limited = true;
            break;
        }
    }
    sent
}

pub fn message(index: u64, sent: Duration) -> Vec<u8> {
    let mut payload = vec![0; BROADCAST_PAYLOAD];
    payload[..8].copy_from_slice(&index.to_be_bytes());
    payload[8..16].copy_from_slice(&u64::try_from(sent.as_nanos()).unwrap_or(u64::MAX).to_be_bytes());
    payload
}

/// A message's index and send time.
pub fn parse_message(payload: &[u8]) -> Option<(u64, Duration)> {
    let index = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let sent = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((index, Duration::from_nanos(sent)))
}

/// What one subscriber got.
#[derive(Debug, Default)]
struct Received {
    report: TaskReport,
    count: u64,
    /// When the last message arrived, since the row's start.
    last: Option<Duration>,
}

/// Takes verified messages until `stop`, timing each against the send time it carries.
async fn receive(
    k: usize,
    mut sub: NodeSubscription,
    progress: Arc<Progress>,
    start: Instant,
    mut stop: watch::Receiver<bool>,
    capacity: usize,
) -> Received {
    let mut r = Received {
        report: TaskReport { latencies: Vec::with_capacity(capacity), ..TaskReport::default() },
        ..Received::default()
    };
    loop {
        let envelope = tokio::select! {
            biased;
            envelope = sub.next() => envelope,
            _ = stop.changed() => break,
        };
        let Some(envelope) = envelope else {
            r.report.error(format_args!("subscriber {k}: the subscription ended after {} messages", r.count));
            progress.finish(k);
            break;
        };
        let now = start.elapsed();
        match parse_message(envelope.payload()) {
            Some((index, sent)) => {
                if index != r.count {
                    r.report.error(format_args!("subscriber {k}: expected message {}, got {index}", r.count));
                }
                r.report.latencies.push(now.saturating_sub(sent));
            }
            None => r
                .report
                .error(format_args!("subscriber {k}: a payload of {} bytes", envelope.payload().len())),
        }
        r.count += 1;
        r.last = Some(now);
        progress.advance(k, r.count);
    }
    r
}

/// CPU time each thread of this process has used, in nanoseconds by thread id, from
/// `/proc/self/task/*/schedstat`; `None` where that is not available.
fn thread_cpu() -> Option<HashMap<u64, u64>> {
    let mut times = HashMap::new();
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let entry = entry.ok()?;
        let Ok(tid) = entry.file_name().to_string_lossy().parse() else { continue };
        // A thread may exit between the listing and the read.
        let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else { continue };
        times.insert(tid, text.split_whitespace().next()?.parse().ok()?);
    }
    Some(times)
}

/// CPU time used between two readings; a thread that exited in between is missed (only the
/// runtime's worker threads do this row's work, and they live as long as the process).
fn cpu_between(before: &HashMap<u64, u64>, after: &HashMap<u64, u64>) -> Duration {
    let ns = after.iter().map(|(tid, &ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0))).sum();
    Duration::from_nanos(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_their_index_and_send_time() {
        let payload = message(42, Duration::from_nanos(1_234_567));
        assert_eq!(payload.len(), BROADCAST_PAYLOAD);
        assert_eq!(parse_message(&payload), Some((42, Duration::from_nanos(1_234_567))));
        assert_eq!(parse_message(&payload[..10]), None);
    }

    #[test]
    fn full_plans_stay_within_their_budgets() {
        for plan in plans(false, WINDOW) {
            let (most, budget) = if plan.window == 1 {
                (LATENCY_MESSAGES, LATENCY_DELIVERIES)
            } else {
                (MESSAGES, DELIVERIES)
            };
            assert!(plan.messages <= most && plan.messages * plan.subscribers as u64 <= budget, "{plan:?}");
            assert!(plan.window < HubConfig::default().outbound_queue as u64, "{plan:?}");
        }
    }

    #[tokio::test]
    async fn the_publisher_waits_for_the_slowest_subscriber() {
        let progress = Arc::new(Progress::new(2));
        progress.advance(0, 10);
        progress.advance(1, 3);
        assert_eq!(progress.slowest(), 3);
        assert!(!progress.wait_until(4, Instant::now() + Duration::from_millis(20)).await);
        let waiter = Arc::clone(&progress);
        let waited =
            tokio::spawn(async move { waiter.wait_until(5, Instant::now() + Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        progress.advance(1, 4);
        progress.advance(1, 5);
        assert!(waited.await.expect("the waiter does not panic"));
        progress.finish(1);
        assert_eq!(progress.slowest(), 10);
    }
}
