//! The printed output: machine facts, settings and one Markdown table per subject.

use std::path::Path;
use std::time::Duration;

use crate::bus::{self, BroadcastRow, CryptoOp, CryptoRow};
use crate::fanout::{self, FanoutRow, Pace};
use crate::idle::Outcome;
use crate::procfs::Memory;
use crate::run::Sample;
use crate::supervise::{self, Instance, KillRow, Proc};

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

/// The hub with and without 2,000 half-open connections.
pub fn print_bus_flood(rows: &[crate::bus_flood::FloodRow]) {
    println!(
        "## Ring bus: the hub under {} half-open connections from one address (default hub \
         settings; members on 127.0.0.1; the flood from 127.0.0.2 opens them at once, never \
         starts TLS, and reopens each one the hub closes, at most 1,000 a second)\n",
        crate::bus_flood::HALF_OPEN
    );
    println!(
        "| hub | connects | connect p50 (ms) | connect p99 (ms) | connect max (ms) | round trips | round trip p50 (ms) | round trip p99 (ms) | round trip max (ms) | flood connections open | flood connections opened | handshakes in progress | turned away at accept | members refused | member connections lost |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            ops(&r.connects),
            ms(r.connects.quantile(0.5)),
            ms(r.connects.quantile(0.99)),
            ms(r.connects.max()),
            ops(&r.round_trips),
            ms(r.round_trips.quantile(0.5)),
            ms(r.round_trips.quantile(0.99)),
            ms(r.round_trips.max()),
            r.flood_open,
            r.flood_opened,
            r.hub.handshakes,
            r.hub.admission_refused,
            r.hub.connections_refused,
            r.disconnects,
        );
    }
    println!(
        "\nA connect is TCP, the mutual-TLS handshake and the hub's first answer; a round trip is \
         one member's publish delivered back to its own subscription through the hub. \
         \"Flood connections open\" are connected and not yet closed by the hub at the end of the \
         row (in its handshake budget or still in its accept backlog), \"opened\" during the \
         row; \"turned away at accept\" counts, over the whole run, flood connections closed at \
         once because their address had spent its handshake budget.\n"
    );
}

pub fn print_bus_standing(rows: &[crate::bus_standing::StandingRow]) {
    println!(
        "## Ring bus: revocation at the hub, and retained state across a hub restart (goal: 1 s at \
         the worst)\n"
    );
    println!("| what | samples | p50 (ms) | p99 (ms) | max (ms) | errors |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.name,
            r.times.len(),
            ms(r.quantile(0.5)),
            ms(r.quantile(0.99)),
            ms(r.max()),
            r.errors
        );
    }
    println!(
        "\nRevocation: a connected member's key leaves the set the hub's admission check reads; \
         the time until the member's client sees its connection closed (checks run every 250 ms), \
         {} times one after another. Restart: {} members each follow their own desired set; the \
         hub (with its retained directory) stops, nobody publishes the state again, the hub \
         starts and 20,000 other messages are published while the members come back; the time \
         from each member's reconnection to its desired set delivered.\n",
        crate::bus_standing::REVOCATIONS,
        crate::bus_standing::MEMBERS
    );
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

/// The cells every timed row shares: ops, time, rate, p50, p99 and max.
fn timing(s: &Sample) -> String {
    format!(
        "{} | {} | {} | {} | {} | {}",
        ops(s),
        secs(s.elapsed),
        per_sec(s.per_sec()),
        ms(s.quantile(0.5)),
        ms(s.quantile(0.99)),
        ms(s.max())
    )
}

pub fn print_anchor(rows: &[Row]) {
    println!("## Anchor: raw fsync in the same directory\n");
    println!("| anchor | ops | time (s) | fsyncs/s | p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("| {} | {} |", r.name, timing(&r.sample));
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
                "{} lost CAS attempts ({per:.1} per success, at most {} for one); {} writer txns/s",
                s.conflicts,
                s.most_conflicts,
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

pub fn print_list(rows: &[Row]) {
    println!("## Lists with a selector (Registry::list, one task)\n");
    println!("| list | ops | time (s) | lists/s | p50 (ms) | p99 (ms) | max (ms) | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("| {} | {} | {} |", r.name, timing(&r.sample), r.sample.errors);
    }
    println!();
    println!(
        "\"store scan\" reads and decodes the kind's whole prefix for every list; \"watch cache\" \
         answers from the cache's label index once it has caught up with the store's revision \
         (one revision read per list). The objects are written straight into the store, as the \
         registry encodes them.\n"
    );
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
    print_attenuation_cost(rows);
}

/// The difference between the opaque-token and the biscuit GET rows, in microseconds.
fn print_attenuation_cost(rows: &[Row]) {
    let find = |name: &str| rows.iter().find(|r| r.name == name).map(|r| &r.sample);
    let (Some(opaque), Some(biscuit)) = (find(crate::api::OPAQUE_GET), find(crate::api::BISCUIT_GET)) else {
        return;
    };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("| attenuated token, per request | p50 (µs) | p99 (µs) |");
    println!("|---|---:|---:|");
    for (what, q) in [("opaque token", opaque), ("2-block biscuit", biscuit)] {
        println!("| {what} | {:.0} | {:.0} |", us(q.quantile(0.5)), us(q.quantile(0.99)));
    }
    println!(
        "| difference | {:+.0} | {:+.0} |\n",
        us(biscuit.quantile(0.5)) - us(opaque.quantile(0.5)),
        us(biscuit.quantile(0.99)) - us(opaque.quantile(0.99)),
    );
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

pub fn print_fanout(rows: &[FanoutRow]) {
    println!(
        "## Signed fan-out: embedded hub against nats-server (mutual TLS 1.3 on 127.0.0.1 for both; \
         a signing publisher, verifying subscribers; {} B payloads)\n",
        bus::BROADCAST_PAYLOAD
    );
    println!(
        "| fan-out | subscribers | pace | msgs published | time (s) | deliveries/s | p50 (ms) | p99 (ms) | max (ms) | missing deliveries | subscribers cut off | publish Full retries | notes |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let s = &r.deliveries;
        let msgs = if r.time_limited {
            format!("{} of {} (time limit)", r.published, r.plan.messages)
        } else {
            r.published.to_string()
        };
        let pace = match r.plan.pace {
            Pace::Window(w) => format!("saturating (window {w})"),
            Pace::Rate(rate) => format!("paced {rate} msg/s"),
        };
        let mut notes = Vec::new();
        if r.rejected > 0 {
            notes.push(format!("envelopes refused: {}", r.rejected));
        }
        if s.errors > 0 {
            notes.push(format!("errors: {}", s.errors));
        }
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.plan.via.name(),
            r.plan.subscribers,
            pace,
            msgs,
            secs(s.elapsed),
            per_sec(s.per_sec()),
            ms(s.quantile(0.5)),
            ms(s.quantile(0.99)),
            ms(s.max()),
            r.missing,
            r.cut_off,
            r.full_retries,
            notes.join("; "),
        );
    }
    println!();
    println!(
        "Both transports run with mutual TLS 1.3 from one ring CA: the hub in this process with its \
         defaults, and nats-server ({}) with a `tls` block (`verify: true`) and one user per member \
         from `authorization()`, in a process of its own. Every subscriber has its own connection \
         and certificate and verifies every envelope with its own Verifier; the publisher seals \
         each one (Ed25519). Latency is verification time minus the send time in the payload \
         (one clock); time runs from the first measured publish to the last delivery. Saturating \
         rows keep the publisher at most \"window\" messages ahead of the slowest subscriber; \
         paced rows publish on a fixed schedule and take the scheduled time as the send time, \
         lowered so that rate x subscribers stays within {}/s. A subscriber is cut off when its \
         subscription ended or it got fewer messages than were published. nats-server's CPU is \
         another process's; the hub's is this one's.\n",
        nats_version(),
        fanout::PACED_DELIVERIES_PER_SEC,
    );
}

/// `nats-server --version`, or why not.
fn nats_version() -> String {
    std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "version unknown".into())
}

pub fn print_supervise_restarts(rows: &[KillRow]) {
    println!(
        "## Supervision: SIGKILL to replacement (enjin-supervisor, permanent child; anchor: \
         ProcessLauncher in the same run)\n"
    );
    println!(
        "| restart after SIGKILL | backoff | uptime before kill (ms) | kills | running p50 (ms) | running p99 (ms) | running max (ms) | serving p50 (ms) | serving p99 (ms) | serving max (ms) | serving p50 x anchor | restarts counted | notes |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let p = r.plan;
        let uptime = p.uptime.as_millis();
        if let Some(why) = &r.skipped {
            println!(
                "| {} | {} | {uptime} | skipped: {why} | - | - | - | - | - | - | - | - | |",
                p.strategy.name(),
                p.delay.name()
            );
            continue;
        }
        let anchor = rows
            .iter()
            .find(|a| a.plan == p.anchor() && a.skipped.is_none())
            .map(|a| a.serving.quantile(0.5).as_secs_f64())
            .filter(|a| *a > 0.0);
        let mut notes = Vec::new();
        if let Some(e) = r.failure() {
            notes.push(format!("errors: {}; first: {e}", r.running.errors + r.serving.errors));
        }
        if r.observations_dropped > 0 {
            notes.push(format!("observations dropped: {}", r.observations_dropped));
        }
        let (run, serve) = (&r.running, &r.serving);
        println!(
            "| {} | {} | {uptime} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.strategy.name(),
            p.delay.name(),
            ops(run),
            ms(run.quantile(0.5)),
            ms(run.quantile(0.99)),
            ms(run.max()),
            ms(serve.quantile(0.5)),
            ms(serve.quantile(0.99)),
            ms(serve.max()),
            anchor.map_or_else(|| "-".into(), |a| format!("{:.2}", serve.quantile(0.5).as_secs_f64() / a)),
            r.restarts,
            notes.join("; "),
        );
    }
    println!();
    println!(
        "Each replacement serves for \"uptime\" before it is killed. Back to back (0) the \
         sandbox looks far cheaper than it is: its first write to a cgroup v1 `cgroup.procs` \
         (joining its group) took 10-15 ms under strace here, unless another move happened a few \
         milliseconds before (probably the kernel's cgroup-migration lock waiting for an RCU \
         grace period; not confirmed). Each kill is kill(2) with SIGKILL to the program: the plain \
         process itself, or in the sandbox the program under the tiny init (PID 2 of its \
         namespace), so the init noticing and exiting is part of the time. The clock starts \
         just before kill(2). \"running\" ends when the supervisor's observation channel \
         delivers the replacement's `running` (after the exit is reaped, the state file is \
         written with fsync, the backoff has passed and the launcher's spawn has returned); \
         \"serving\" ends when a TCP connection to the child's fixed port (tried every {} ms \
         from the kill on, on a thread of its own) is answered by the replacement, told from \
         the killed process by a per-process token. Serving can come first: the child listens \
         as soon as it runs, while the observation waits for the launcher to return and for \
         the supervisor's task. Backoff 0 ms is `Backoff::none()`; the default backoff is \
         100 ms doubling to 30 s with 10% jitter, its `reset_after` (10 s) lowered to 0 so \
         that every kill waits the first step of a crash loop, as a child that crashes now \
         and then does. The sandbox launches with clone3 into new mount and PID namespaces, a \
         read-only root, private /tmp, its own uid and a cgroup (memory, cpu, pids) per \
         child.\n",
        supervise::POLL.as_millis(),
    );
}

fn kib(k: u64) -> String {
    k.to_string()
}

fn mib(k: u64) -> String {
    format!("{:.1}", k as f64 / 1024.0)
}

pub fn print_supervise_instances(instances: &[Instance]) {
    println!("## Supervision: what one instance is made of (/proc, while serving, after the kills above)\n");
    println!(
        "| instance | processes in its tree | in its process group | beside the program | extra process | extra RSS (KiB) | extra PSS (KiB) | extra private (KiB) | program RSS (KiB) | program private (KiB) |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    for i in instances {
        let names: Vec<String> = i.extra.iter().map(|p| format!("{} (pid {})", p.comm, p.pid)).collect();
        let sum = |f: fn(&Memory) -> u64| i.extra.iter().map(|p| f(&p.memory)).sum::<u64>();
        let has_extra = !i.extra.is_empty();
        let extra = |f: fn(&Memory) -> u64| if has_extra { kib(sum(f)) } else { "-".into() };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            i.strategy.name(),
            i.tree,
            i.group,
            i.extra.len(),
            if names.is_empty() { "-".into() } else { names.join(", ") },
            extra(|m| m.rss),
            extra(|m| m.pss),
            extra(|m| m.private),
            kib(i.program.memory.rss),
            kib(i.program.memory.private),
        );
    }
    println!();
    println!(
        "The tree is the supervised pid and everything below it by parent pid; the program is \
         this binary's tiny TCP server. Memory is from /proc/<pid>/smaps_rollup: RSS counts \
         shared pages (code, the page cache) in full, PSS divides them among the processes that \
         map them, private is Private_Clean + Private_Dirty. The init is a fork of the launching \
         process (here enjin-bench, in an agent the agent) that drops its copy of the parent's \
         memory; page tables and kernel stacks are not included.\n"
    );
}

pub fn print_idle(outcome: &Outcome, anchor: Option<&Proc>) {
    println!(
        "## Idle memory: enjin up with one ring 1 host (anchor: the tiny TCP server above, a plain \
         process)\n"
    );
    println!("| idle process | RSS (MiB) | PSS (MiB) | private (MiB) | threads | RSS x anchor |");
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |name: &str, m: &Memory| {
        let ratio = anchor
            .filter(|a| a.memory.rss > 0)
            .map_or_else(|| "-".into(), |a| format!("{:.1}", m.rss as f64 / a.memory.rss as f64));
        println!(
            "| {name} | {} | {} | {} | {} | {ratio} |",
            mib(m.rss),
            mib(m.pss),
            mib(m.private),
            m.threads
        );
    };
    let notes = match outcome {
        Outcome::Skipped(why) => {
            println!(
                "| enjin up: skipped ({}) | - | - | - | - | - |",
                why.replace('\n', " ").replace('|', "/")
            );
            &[][..]
        }
        Outcome::Measured(idle) => {
            row("enjin up (API, store, ring 1 hub, the hosts' supervisor)", &idle.up);
            row("enjin agent --ring 1 (its host; no instances)", &idle.agent);
            &idle.notes[..]
        }
    };
    if let Some(a) = anchor {
        row("anchor: enjin-bench --serve-token (plain process)", &a.memory);
    }
    println!();
    println!(
        "Read {} s after `enjin up --hosts 1` printed its API address and its host's agent \
         appeared; data under /var/tmp, API and hub on 127.0.0.1 port 0, ENJIN_LOG=warn. {}\n",
        crate::idle::SETTLE.as_secs(),
        notes.join("; "),
    );
}
