//! Signed fan-out over NATS against the embedded hub: one publisher sealing Ed25519 envelopes as
//! the control plane does, N subscribers (1, 10, 100) each on its own connection with its own
//! ring certificate, each verifying every message with its own `Verifier`. Both transports run
//! with mutual TLS 1.3 from the same ring CA: the hub in this process, and a `nats-server` this
//! section starts on loopback (its certificate and users written to a temporary directory,
//! removed with it). Both are driven through the same `Transport` trait, and a message's
//! latency runs from its send time, carried in the payload, to its verification, on one clock.
//!
//! Two kinds of row: saturating (the publisher keeps at most `WINDOW` messages ahead of the
//! slowest subscriber, so it runs as fast as they verify) and paced (an open-loop schedule; the
//! send time is the scheduled time, so a publisher falling behind shows as latency).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use enjin_bus::acl::Member;
use enjin_bus::client::{BusClient, ClientConfig};
use enjin_bus::counters::Counters;
use enjin_bus::hub::{Hub, HubConfig};
use enjin_bus::nats::{NatsAuth, NatsConfig, NatsTransport, authorization};
use enjin_bus::tls::TlsMaterial;
use enjin_bus::transport::{Subscription, Transport, TransportError};
use enjin_bus::trust::{Publisher, Verifier, VerifierConfig};
use enjin_pki::RingCa;
use enjin_testkit::NatsServer;
use tokio::sync::{oneshot, watch};

use crate::bus::{self, Keys, Progress};
use crate::run::{Limits, Sample, TaskReport};

/// Subscriber counts, messages in flight to the slowest subscriber, and most messages and
/// deliveries of a saturating row: the bus section's, so that the two tables compare.
pub use crate::bus::{DELIVERIES, MESSAGES, SUBSCRIBERS, WINDOW};
/// Paced rows: the publishing rate unless `--fanout-rate` says otherwise, lowered for a row
/// where rate × subscribers would exceed `PACED_DELIVERIES_PER_SEC`: about half of what the
/// saturating rows deliver on two cores (10,000 to 14,000 verified envelopes a second), so
/// that a paced row measures latency below saturation, not a queue growing for 5 s.
pub const PACED_RATE: u64 = 1_000;
pub const PACED_DELIVERIES_PER_SEC: u64 = 5_000;
/// Paced rows publish for this long.
pub const PACED_TIME: Duration = Duration::from_secs(5);
/// A saturating row stops publishing after this long, whatever its count.
pub const ROW_TIME: Duration = Duration::from_secs(10);
const QUICK_SUBSCRIBERS: [usize; 2] = [1, 10];
const QUICK_MESSAGES: u64 = 200;
const QUICK_PACED_TIME: Duration = Duration::from_millis(200);

const TOPIC: &str = "bench.fanout";
/// Time allowed to connect, and for every subscriber to see the first probe.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
/// How often the publisher sends a probe while waiting for subscribers to be ready.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// The index a probe carries: subscribers count it as readiness, not as a delivery.
const PROBE: u64 = u64::MAX;
const CERT_VALIDITY: Duration = Duration::from_secs(3600);

/// Which transport a row runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Hub,
    Nats,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Hub => "embedded hub",
            Via::Nats => "nats-server",
        }
    }
}

/// How the publisher paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// At most this many messages ahead of the slowest subscriber.
    Window(u64),
    /// This many messages a second, on a fixed schedule.
    Rate(u64),
}

/// One row to run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub via: Via,
    pub subscribers: usize,
    pub pace: Pace,
    pub messages: u64,
}

/// Every row, hub then NATS for each subscriber count and pace, so that each pair is measured
/// close together in time.
pub fn plans(quick: bool, rate: u64) -> Vec<Plan> {
    let mut plans = Vec::new();
    let counts: &[usize] = if quick { &QUICK_SUBSCRIBERS } else { &SUBSCRIBERS };
    for &n in counts {
        let saturating = if quick { QUICK_MESSAGES } else { (DELIVERIES / n as u64).clamp(1, MESSAGES) };
        let rate = rate.min(PACED_DELIVERIES_PER_SEC / n as u64).max(1);
        let time = if quick { QUICK_PACED_TIME } else { PACED_TIME };
        let paced = ((rate as f64 * time.as_secs_f64()) as u64).max(1);
        for (pace, messages) in [(Pace::Window(WINDOW), saturating), (Pace::Rate(rate), paced)] {
            for via in [Via::Hub, Via::Nats] {
                plans.push(Plan { via, subscribers: n, pace, messages });
            }
        }
    }
    plans
}

/// The outcome of one row.
#[derive(Debug)]
pub struct FanoutRow {
    pub plan: Plan,
    pub published: u64,
    /// The time limit, not the count, ended publishing.
    pub time_limited: bool,
    /// One latency per delivery; `elapsed` runs from the first publish to the last delivery.
    pub deliveries: Sample,
    /// Published × subscribers, minus what was verified.
    pub missing: u64,
    /// Subscribers whose subscription ended, or that got fewer messages than were published.
    pub cut_off: usize,
    /// Envelopes a subscriber's verifier refused.
    pub rejected: u64,
    /// Publishes refused because the publisher's outbound queue was full, then retried.
    pub full_retries: u64,
}

impl FanoutRow {
    pub fn failure(&self) -> Option<String> {
        let s = &self.deliveries;
        if s.errors > 0 {
            let first = s.first_error.as_deref().unwrap_or("unknown");
            return Some(format!("errors: {}, the first: {first}", s.errors));
        }
        // A paced row may lose subscribers when the rate is more than they can take: that is
        // its result. A saturating row keeps within every queue, so it must lose nothing.
        let lost = self.missing > 0 || self.cut_off > 0;
        (lost && matches!(self.plan.pace, Pace::Window(_)))
            .then(|| format!("missing deliveries: {}, subscribers cut off: {}", self.missing, self.cut_off))
    }
}

/// The ring: a CA, the server's material (the hub's and nats-server's), the publisher's and one
/// per subscriber, every one a component of the ring's parent (all topics open to it).
struct Ring {
    server: TlsMaterial,
    members: Vec<(Member, TlsMaterial)>,
}

fn ring(subscribers: usize) -> anyhow::Result<Ring> {
    let ca = RingCa::generate(bus::RING).context("failed to generate the benchmark ring CA")?;
    let issue = |name: &str, sans: &[String]| -> anyhow::Result<(Member, TlsMaterial)> {
        let member = Member::parent(name)?;
        let issued = ca
            .issue(&member.common_name(), sans, CERT_VALIDITY)
            .with_context(|| format!("failed to issue a certificate for {name}"))?;
        let tls = TlsMaterial {
            ca_pem: ca.cert_pem().to_owned(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        };
        Ok((member, tls))
    };
    let (_, server) = issue("server", &["localhost".into(), "127.0.0.1".into()])?;
    let members = std::iter::once("publisher".to_owned())
        .chain((0..subscribers).map(|k| format!("subscriber-{k}")))
        .map(|name| issue(&name, &[]))
        .collect::<anyhow::Result<_>>()?;
    Ok(Ring { server, members })
}

/// A member's NATS password: the server is on loopback and lives only for this section.
fn password(k: usize) -> String {
    format!("fanout-{k}")
}

/// nats-server's `tls` block (mutual: `verify`) and one user per member, its files in `dir`.
fn nats_config(dir: &Path, ring: &Ring) -> anyhow::Result<String> {
    let files = [
        ("ca.pem", &ring.server.ca_pem),
        ("cert.pem", &ring.server.cert_pem),
        ("key.pem", &ring.server.key_pem),
    ];
    for (name, pem) in files {
        let path = dir.join(name);
        std::fs::write(&path, pem).with_context(|| format!("failed to write {}", path.display()))?;
    }
    let path = |name: &str| dir.join(name).display().to_string();
    let passwords: Vec<String> = (0..ring.members.len()).map(password).collect();
    let users: Vec<(&Member, &str)> =
        ring.members.iter().zip(&passwords).map(|((m, _), p)| (m, p.as_str())).collect();
    Ok(format!(
        "tls {{\n  ca_file: \"{}\"\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  verify: true\n  timeout: 5\n}}\n{}",
        path("ca.pem"),
        path("cert.pem"),
        path("key.pem"),
        authorization(&users),
    ))
}

/// Both servers, for the whole section.
struct Servers {
    hub: SocketAddr,
    nats: NatsServer,
}

/// Every row of `plans`, then the servers stopped and their files removed.
pub async fn rows(plans: &[Plan]) -> anyhow::Result<Vec<FanoutRow>> {
    let most = plans.iter().map(|p| p.subscribers).max().unwrap_or(0);
    let ring = tokio::task::spawn_blocking(move || ring(most))
        .await
        .context("certificate generation panicked")??;
    let dir = tempfile::Builder::new()
        .prefix("enjin-bench-fanout-")
        .tempdir()
        .context("failed to create the fan-out section's directory")?;
    let config = nats_config(dir.path(), &ring)?;
    let nats = tokio::task::spawn_blocking(move || NatsServer::start_with(&config))
        .await
        .context("nats-server did not start (scripts/install-deps installs it)")?;

    let hub = Hub::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &ring.server, HubConfig::default())
        .await
        .context("failed to start a bus hub on 127.0.0.1:0")?;
    let servers = Servers { hub: hub.local_addr(), nats };
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(hub.run(async move {
        drop(stopped.await);
    }));

    let mut rows = Vec::with_capacity(plans.len());
    let mut outcome = Ok(());
    for &plan in plans {
        match measure(&servers, &ring, plan).await {
            Ok(row) => rows.push(row),
            Err(e) => {
                outcome = Err(e)
                    .with_context(|| format!("{} with {} subscribers", plan.via.name(), plan.subscribers));
                break;
            }
        }
    }

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), serving).await;
    drop(servers);
    dir.close().context("failed to remove the fan-out section's directory")?;
    outcome.map(|()| rows)
}

/// Member `k` of the ring (0 is the publisher) connected through `via`.
async fn connect(servers: &Servers, ring: &Ring, via: Via, k: usize) -> anyhow::Result<Arc<dyn Transport>> {
    let (member, tls) = ring.members.get(k).context("too few member certificates")?;
    Ok(match via {
        Via::Hub => {
            let client = BusClient::connect(servers.hub, "localhost", tls, ClientConfig::default())
                .context("failed to create a bus client")?;
            client.wait_connected(CONNECT_PATIENCE).await.context("failed to connect to the hub")?;
            Arc::new(client)
        }
        Via::Nats => {
            let config = NatsConfig {
                member_id: Some(member.id().to_owned()),
                auth: Some(NatsAuth::UserPassword { user: member.common_name(), password: password(k) }),
                tls: Some(tls.clone()),
                connect_timeout: CONNECT_PATIENCE,
                ..NatsConfig::new(servers.nats.url())
            };
            Arc::new(NatsTransport::connect(config).await.context("failed to connect to nats-server")?)
        }
    })
}

async fn measure(servers: &Servers, ring: &Ring, plan: Plan) -> anyhow::Result<FanoutRow> {
    let Keys { publisher, bundle } = bus::keys()?;
    let publisher = Publisher::new(publisher, bus::RING, 1, Arc::new(Counters::new()));
    let publisher_link = connect(servers, ring, plan.via, 0).await?;
    // Transports live until the row is over: dropping one takes a subscriber away.
    let mut links = Vec::with_capacity(plan.subscribers);
    let mut subscriptions = Vec::with_capacity(plan.subscribers);
    for k in 1..=plan.subscribers {
        let link = connect(servers, ring, plan.via, k).await?;
        subscriptions.push(link.subscribe(TOPIC).context("failed to subscribe")?);
        links.push(link);
    }

    let progress = Arc::new(Progress::new(plan.subscribers));
    let ready = Arc::new(Progress::new(plan.subscribers));
    let (stop, stopped) = watch::channel(false);
    // The origin of every send timestamp.
    let start = Instant::now();
    let receivers: Vec<_> = subscriptions
        .into_iter()
        .enumerate()
        .map(|(k, sub)| {
            let verifier =
                Verifier::new(bundle.clone(), VerifierConfig::default(), Arc::new(Counters::new()));
            let task = Subscriber {
                k,
                progress: Arc::clone(&progress),
                ready: Arc::clone(&ready),
                start,
                capacity: usize::try_from(plan.messages).unwrap_or(0),
            };
            verifier.map(|v| tokio::spawn(task.run(sub, v, stopped.clone())))
        })
        .collect::<Result<_, _>>()
        .context("the benchmark trust bundle is valid")?;

    // Probes until every subscriber has seen one: then every subscription is in place on the
    // server, on either transport, before the first measured message.
    let deadline = Instant::now() + CONNECT_PATIENCE;
    let mut all_ready = false;
    while !all_ready && Instant::now() < deadline {
        let probe = bus::message(PROBE, Duration::ZERO);
        if let Ok(sealed) = publisher.seal(TOPIC, None, probe, bus::now_ms()) {
            let _ = publisher_link.publish(TOPIC, None, sealed);
        }
        all_ready = ready.wait_until(1, Instant::now() + PROBE_EVERY).await;
    }
    anyhow::ensure!(all_ready, "not every subscriber received a probe within {CONNECT_PATIENCE:?}");

    let first = start.elapsed();
    let sent = publish(&*publisher_link, &publisher, &progress, plan, start).await;
    progress.drain(sent.published).await;
    let _ = stop.send(true);

    let (mut reports, mut received, mut last, mut cut_off, mut rejected) = (Vec::new(), 0, None, 0, 0);
    for receiver in receivers {
        let r = receiver.await.context("a subscriber task panicked")?;
        received += r.count;
        last = last.max(r.last);
        cut_off += usize::from(r.ended || r.count < sent.published);
        rejected += r.rejected;
        reports.push(r.report);
    }
    let expected = sent.published * plan.subscribers as u64;
    let elapsed = last.unwrap_or(first).saturating_sub(first);
    let deliveries =
        Sample::new(plan.subscribers, Limits { ops: expected, time: ROW_TIME }, elapsed, reports);
    drop((links, publisher_link));
    Ok(FanoutRow {
        plan,
        published: sent.published,
        time_limited: sent.time_limited,
        deliveries,
        missing: expected.saturating_sub(received),
        cut_off,
        rejected,
        full_retries: sent.full_retries,
    })
}

/// What the publisher did.
#[derive(Debug, Default)]
struct Sent {
    published: u64,
    time_limited: bool,
    full_retries: u64,
}

/// Seals and publishes `plan.messages` messages, paced as the plan says, for at most
/// [`ROW_TIME`].
async fn publish(
    link: &dyn Transport,
    publisher: &Publisher,
    progress: &Progress,
    plan: Plan,
    start: Instant,
) -> Sent {
    let origin = start.elapsed();
    let deadline = Instant::now() + ROW_TIME;
    let mut sent = Sent::default();
    while sent.published < plan.messages {
        if Instant::now() >= deadline {
            sent.time_limited = true;
            break;
        }
        let stamp = match plan.pace {
            Pace::Window(window) => {
                if progress.slowest().saturating_add(window) <= sent.published {
                    let target = (sent.published + (window / 8).max(1)).saturating_sub(window);
                    if !progress.wait_until(target, deadline).await {
                        sent.time_limited = true;
                        break;
                    }
                }
                start.elapsed()
            }
            Pace::Rate(rate) => {
                let due = origin + Duration::from_secs_f64(sent.published as f64 / rate as f64);
                tokio::time::sleep_until((start + due).into()).await;
                due
            }
        };
        let sealed = match publisher.seal(TOPIC, None, bus::message(sent.published, stamp), bus::now_ms()) {
            Ok(sealed) => sealed,
            Err(_) => break,
        };
        loop {
            match link.publish(TOPIC, None, sealed.clone()) {
                Ok(()) => break,
                Err(TransportError::Full) if Instant::now() < deadline => {
                    sent.full_retries += 1;
                    tokio::task::yield_now().await;
                }
                Err(_) => return sent,
            }
        }
        sent.published += 1;
    }
    sent
}

/// One subscriber's task.
struct Subscriber {
    k: usize,
    progress: Arc<Progress>,
    ready: Arc<Progress>,
    start: Instant,
    capacity: usize,
}

/// What one subscriber got.
#[derive(Debug, Default)]
struct Received {
    report: TaskReport,
    count: u64,
    /// When the last message was verified, since the row's start.
    last: Option<Duration>,
    /// The subscription ended (the transport cut the subscriber off).
    ended: bool,
    rejected: u64,
}

impl Subscriber {
    /// Verifies messages until `stop`, timing each against the send time it carries.
    async fn run(
        self,
        mut sub: Subscription,
        mut verifier: Verifier,
        mut stop: watch::Receiver<bool>,
    ) -> Received {
        let Subscriber { k, progress, ready, start, capacity } = self;
        let mut r = Received {
            report: TaskReport { latencies: Vec::with_capacity(capacity), ..TaskReport::default() },
            ..Received::default()
        };
        let mut probed = false;
        let mut next = 0;
        loop {
            let message = tokio::select! {
                biased;
                message = sub.next() => message,
                _ = stop.changed() => break,
            };
            let Some(message) = message else {
                r.ended = true;
                progress.finish(k);
                break;
            };
            let envelope = match verifier.accept(&message.payload, bus::now_ms()) {
                Ok(envelope) => envelope,
                Err(reason) => {
                    r.rejected += 1;
                    r.report.error(format_args!("subscriber {k}: an envelope was refused: {reason:?}"));
                    continue;
                }
            };
            let now = start.elapsed();
            match bus::parse_message(envelope.payload()) {
                Some((PROBE, _)) => {
                    if !probed {
                        probed = true;
                        ready.advance(k, 1);
                    }
                    continue;
                }
                Some((index, sent)) => {
                    // A later index is a gap (messages lost: counted as missing); an earlier one
                    // is a duplicate or a reordering, which neither transport may do.
                    if index < next {
                        r.report.error(format_args!("subscriber {k}: message {index} after {}", next - 1));
                    }
                    next = index.saturating_add(1);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_plans_stay_within_their_budgets() {
        let plans = plans(false, PACED_RATE);
        assert_eq!(plans.len(), SUBSCRIBERS.len() * 2 * 2);
        for plan in plans {
            let deliveries = plan.messages * plan.subscribers as u64;
            match plan.pace {
                Pace::Window(window) => {
                    assert!(plan.messages <= MESSAGES && deliveries <= DELIVERIES, "{plan:?}");
                    assert!(window < HubConfig::default().outbound_queue as u64, "{plan:?}");
                }
                Pace::Rate(rate) => {
                    assert!(rate * plan.subscribers as u64 <= PACED_DELIVERIES_PER_SEC, "{plan:?}");
                    assert_eq!(plan.messages, rate * PACED_TIME.as_secs(), "{plan:?}");
                }
            }
        }
    }

    /// A subscriber counts what its verifier accepts and nothing else: a forged envelope is
    /// refused, a probe is readiness, a gap is left to the missing count, a replay is refused.
    #[tokio::test]
    async fn a_subscriber_verifies_every_message_and_refuses_forgeries() {
        let Keys { publisher, bundle } = bus::keys().expect("keys");
        let publisher = Publisher::new(publisher, bus::RING, 1, Arc::new(Counters::new()));
        let Keys { publisher: forger, .. } = bus::keys().expect("keys");
        let forger = Publisher::new(forger, bus::RING, 1, Arc::new(Counters::new()));
        let seal = |p: &Publisher, index| {
            p.seal(TOPIC, None, bus::message(index, Duration::ZERO), bus::now_ms()).expect("seal")
        };
        // Sealed in the order sent: the verifier wants rising sequence numbers.
        let probe = seal(&publisher, PROBE);
        let first = seal(&publisher, 0);
        let sent = [probe, first.clone(), seal(&forger, 1), seal(&publisher, 2), first];

        let (tx, rx) = tokio::sync::mpsc::channel(16);
        for payload in sent {
            tx.send(enjin_bus::transport::Message { topic: TOPIC.into(), reply_to: None, payload })
                .await
                .expect("queued");
        }
        drop(tx);
        let (progress, ready) = (Arc::new(Progress::new(1)), Arc::new(Progress::new(1)));
        let task = Subscriber {
            k: 0,
            progress: Arc::clone(&progress),
            ready: Arc::clone(&ready),
            start: Instant::now(),
            capacity: 4,
        };
        let verifier =
            Verifier::new(bundle, VerifierConfig::default(), Arc::new(Counters::new())).expect("bundle");
        let (_stop, stopped) = watch::channel(false);
        let r = task.run(Subscription::new(TOPIC, rx, || {}), verifier, stopped).await;
        assert_eq!(ready.slowest(), 1, "the probe made it ready");
        assert_eq!(
            (r.count, r.rejected),
            (2, 2),
            "messages 0 and 2 counted; the forgery and the replay refused"
        );
        assert_eq!(r.report.latencies.len(), 2);
        assert!(r.ended, "the subscription ended when the sender went away");
    }

    #[test]
    fn a_saturating_row_that_lost_anything_failed_and_a_paced_one_reports_it() {
        let row = |pace, missing, cut_off| FanoutRow {
            plan: Plan { via: Via::Nats, subscribers: 10, pace, messages: 100 },
            published: 100,
            time_limited: false,
            deliveries: Sample::new(
                10,
                Limits { ops: 1000, time: ROW_TIME },
                Duration::from_secs(1),
                Vec::new(),
            ),
            missing,
            cut_off,
            rejected: 0,
            full_retries: 0,
        };
        assert!(row(Pace::Window(WINDOW), 0, 0).failure().is_none());
        assert!(row(Pace::Window(WINDOW), 5, 1).failure().is_some());
        assert!(row(Pace::Window(WINDOW), 0, 1).failure().is_some());
        assert!(row(Pace::Rate(1000), 5, 1).failure().is_none());
    }
}
