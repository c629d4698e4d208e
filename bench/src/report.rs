//! The printed output: machine facts, settings and one Markdown table per subject.

use std::path::Path;
use std::time::Duration;

use crate::bus::{self, BroadcastRow, CryptoOp, CryptoRow};
use crate::run::Sample;

/// One measured line of a table.
#[derive(Debug)]
pub struct Row {
    pub name: String,
    pub sample: Sample,
    /// Whether its operations wait for the disk (and so compare with the fsync anchor).
    pub writes: bool,
}

impl Row {
    pub fn write(name: impl Into<String>, sample: Sample) -> Self {
        Row { name: name.into(), sample, writes: true }
    }

    pub fn read(name: impl Into<String>, sample: Sample) -> Self {
        Row { name: name.into(), sample, writes: false }
    }

    /// `rate` per anchor fsync, or "-" for reads, which never wait for the disk.
    fn per_fsync(&self, rate: f64, fsyncs_per_sec: f64) -> String {
        if self.writes && fsyncs_per_sec > 0.0 { format!("{:.2}", rate / fsyncs_per_sec) } else { "-".into() }
    }
}

/// Facts about the machine that the numbers depend on.
#[derive(Debug)]
pub struct Machine {
    pub cores: String,
    pub kernel: String,
    pub load: String,
    pub filesystem: String,
}

impl Machine {
    pub fn probe(dir: &Path) -> Self {
        let cores =
            std::thread::available_parallelism().map_or_else(|e| format!("unknown ({e})"), |n| n.to_string());
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map_or_else(|e| format!("unknown ({path}: {e})"), |s| s.trim().to_string())
        };
        let load = read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" ");
        Machine { cores, kernel: read("/proc/sys/kernel/osrelease"), load, filesystem: filesystem_of(dir) }
    }
}

/// The type and device of the mount that holds `dir`, from `/proc/mounts`.
fn filesystem_of(dir: &Path) -> String {
    let Ok(dir) = dir.canonicalize() else {
        return "unknown".into();
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown (no /proc/mounts)".into();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, point, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            dir.starts_with(point).then(|| (point.len(), format!("{fstype} on {device}, mounted at {point}")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, desc)| desc)
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn per_sec(rate: f64) -> String {
    if rate >= 100.0 { format!("{rate:.0}") } else { format!("{rate:.1}") }
}

fn ops(s: &Sample) -> String {
    if s.time_limited() { format!("{} of {} (time limit)", s.ops(), s.planned) } else { s.ops().to_string() }
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

pub fn print_anchor(rows: &[Row]) {
    println!("## Anchor: raw fsync in the same directory\n");
    println!("| anchor | ops | time (s) | fsyncs/s | p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let s = &r.sample;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            ops(s),
            secs(s.elapsed),
            per_sec(s.per_sec()),
            ms(s.quantile(0.5)),
            ms(s.quantile(0.99)),
            ms(s.max()),
        );
    }
    println!();
}

pub fn print_store(rows: &[Row], fsyncs_per_sec: f64) {
    println!("## Store transactions (SqliteStore: WAL, synchronous=FULL, group commit)\n");
    println!(
        "| store workload | tasks | ops | time (s) | txns/s | p50 (ms) | p99 (ms) | max (ms) | txns per anchor fsync | notes |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let s = &r.sample;
        let mut notes = Vec::new();
        if s.conflicts > 0 {
            let per = s.conflicts as f64 / s.ops().max(1) as f64;
            notes.push(format!(
                "{} lost CAS attempts ({per:.1} per success); {} writer txns/s",
                s.conflicts,
                per_sec(s.attempts_per_sec())
            ));
        }
        if s.errors > 0 {
            notes.push(format!("{} errors", s.errors));
        }
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            s.tasks,
            ops(s),
            secs(s.elapsed),
            per_sec(s.per_sec()),
            ms(s.quantile(0.5)),
            ms(s.quantile(0.99)),
            ms(s.max()),
            r.per_fsync(s.attempts_per_sec(), fsyncs_per_sec),
            notes.join("; "),
        );
    }
    println!();
}

pub fn print_api(rows: &[Row], fsyncs_per_sec: f64) {
    println!("## HTTP API (in-process control plane on 127.0.0.1, enjin-client, SQLite store)\n");
    println!(
        "| api request | concurrency | ops | time (s) | req/s | p50 (ms) | p99 (ms) | max (ms) | req per anchor fsync | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let s = &r.sample;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            s.tasks,
            ops(s),
            secs(s.elapsed),
            per_sec(s.per_sec()),
            ms(s.quantile(0.5)),
            ms(s.quantile(0.99)),
            ms(s.max()),
            r.per_fsync(s.per_sec(), fsyncs_per_sec),
            s.errors,
        );
    }
    println!();
}

pub fn print_bus_crypto(rows: &[CryptoRow]) {
    println!("## Ring bus: one envelope, one thread (enjin-bus; anchor: raw Ed25519 in the same run)\n");
    println!("| bus crypto | payload (B) | ops | time (s) | ns/op | ops/s | x anchor |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let s = &r.sample;
        let anchor = bus::ns_per_op(rows, r.op.anchor(), r.payload).filter(|ns| *ns > 0.0);
        println!(
            "| {} | {} | {} | {} | {:.0} | {} | {} |",
            r.op.name(),
            r.payload,
            ops(s),
            secs(s.elapsed),
            r.ns_per_op(),
            per_sec(s.per_sec()),
            anchor.map_or_else(|| "-".into(), |a| format!("{:.2}", r.ns_per_op() / a)),
        );
    }
    println!();
    println!(
        "The raw rows sign and verify exactly the bytes the envelope rows do (domain prefix and \
         envelope body). verify_signature parses the sender's key from its bytes every time; \
         accept keeps keys parsed, but decodes the envelope and copies its body.\n",
    );
}

pub fn print_bus_broadcast(rows: &[BroadcastRow], crypto: &[CryptoRow]) {
    let seal = bus::ns_per_op(crypto, CryptoOp::Seal, bus::BROADCAST_PAYLOAD);
    let accept = bus::ns_per_op(crypto, CryptoOp::Accept, bus::BROADCAST_PAYLOAD);
    println!(
        "## Ring bus: broadcast over mutual TLS on 127.0.0.1 (one hub; a signing publisher, \
         verifying subscribers; {} B payloads)\n",
        bus::BROADCAST_PAYLOAD
    );
    println!(
        "| bus broadcast | subscribers | window | msgs | time (s) | msgs/s | deliveries/s | p50 (ms) | p99 (ms) | max (ms) | CPU cores busy | sign+verify cores | slow-consumer disconnects | missing deliveries | publish Full retries | notes |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let s = &r.deliveries;
        let msgs = if r.time_limited {
            format!("{} of {} (time limit)", r.published, r.plan.messages)
        } else {
            r.published.to_string()
        };
        let crypto_cores = seal.zip(accept).map(|(seal, accept)| {
            let busy = r.published as f64 * seal + s.ops() as f64 * accept;
            let wall = s.elapsed.max(r.publish_time).as_secs_f64().max(f64::MIN_POSITIVE);
            format!("{:.2}", busy / 1e9 / wall)
        });
        let mut notes = Vec::new();
        if r.lagged_subscriptions > 0 {
            notes.push(format!("subscriptions ended for lagging: {}", r.lagged_subscriptions));
        }
        if r.disconnects > 0 {
            notes.push(format!("connections lost: {}", r.disconnects));
        }
        if s.errors > 0 {
            notes.push(format!("errors: {}", s.errors));
        }
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.plan.name,
            r.plan.subscribers,
            r.plan.window,
            msgs,
            secs(s.elapsed),
            per_sec(r.messages_per_sec()),
            per_sec(s.per_sec()),
            ms(s.quantile(0.5)),
            ms(s.quantile(0.99)),
            ms(s.max()),
            r.cpu_cores.map_or_else(|| "-".into(), |c| format!("{c:.2}")),
            crypto_cores.unwrap_or_else(|| "-".into()),
            r.slow_consumer_disconnects,
            r.missing,
            r.full_retries,
            notes.join("; "),
        );
    }
    println!();
    println!(
        "Every subscriber has its own mTLS connection, certificate and BusNode, and verifies every \
         message itself. Pacing is closed-loop: the publisher sends a message only while it is \
         fewer than \"window\" messages ahead of the slowest subscriber (it reads their progress \
         in-process, which a real publisher cannot). No queue on the way (the hub's per-connection \
         outbound queue, the client's per-subscription queue: 1024 each) then ever holds more than \
         the window, so neither the hub's slow-consumer policy nor the client's lagging-subscriber \
         policy can fire; --bus-window sets the window. With window 1 a message goes out only when \
         every subscriber has the previous one: latency without queueing. With a full window, \
         latency is mostly queueing: about window / msgs/s. Latency is receive time (after \
         verification) minus the send time in the payload (taken before signing), for every \
         delivery; time runs from the first publish to the last delivery; msgs/s counts until \
         the last publish. \"CPU cores busy\" is the CPU time of the whole process (hub, clients, \
         subscribers) per second of the row; \"sign+verify cores\" is the part the single-thread seal \
         and accept costs above account for (msgs x seal + deliveries x accept, per second).\n",
    );
}
