//! `enjin-bench`: measures store transactions and the meta API in one run and prints Markdown
//! tables, next to the disk's raw fsync rate measured in the same directory; and the ring bus,
//! next to raw Ed25519, and its signed fan-out next to the same over nats-server; and supervised
//! restarts in the unix-user sandbox, next to plain processes, with the idle memory of `enjin up`
//! and its agent; and the HTTP router under wrk, next to the backend alone and to nginx. It only
//! ever talks to loopback and writes only inside its own temporary directories, and the cgroups,
//! network namespaces and links it makes it removes again.

#![forbid(unsafe_code)]

mod api;
mod bus;
mod bus_flood;
mod bus_standing;
mod deploy;
mod fanout;
mod firewall;
mod idle;
mod idle_load;
mod leader;
mod list;
mod netns_backend;
mod procfs;
mod report;
mod router;
mod run;
mod store;
mod supervise;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use crate::report::{Machine, Row};
use crate::run::Limits;

const DEFAULT_OPS: u64 = 10_000;
const DEFAULT_SECONDS: f64 = 5.0;
const QUICK_OPS: u64 = 20;
const QUICK_SECONDS: f64 = 2.0;

/// Measure store transactions, the meta API, the ring bus, supervision and the HTTP router, and
/// print the results as Markdown tables.
///
/// Every row stops after `--ops` operations or `--seconds`, whichever comes first, and says
/// how many operations it ran. Bus broadcast rows have their own message counts; they publish
/// for at most `--seconds`, then let the subscribers take what is in flight for as long as they
/// make progress. Supervision rows have their own kill counts and time limits.
#[derive(Debug, Parser)]
#[command(name = "enjin-bench", version)]
struct Args {
    /// Operations per row [default: 10000, or 20 with --quick]
    #[arg(long, value_name = "N")]
    ops: Option<u64>,
    /// Time limit per row, in seconds [default: 5, or 2 with --quick]
    #[arg(long, value_name = "S")]
    seconds: Option<f64>,
    /// A tiny run that only checks that everything works (for CI)
    #[arg(long)]
    quick: bool,
    /// Messages the publisher may be ahead of the slowest subscriber in the bus throughput rows
    /// [default: 128]. Near 1024 (the hub's and the client's queues) subscribers get cut off,
    /// and the run fails with missing deliveries.
    #[arg(long, value_name = "N")]
    bus_window: Option<u64>,
    /// Messages a second in the fan-out section's paced rows, lowered where the row's deliveries
    /// would exceed 5,000 a second [default: 1000]
    #[arg(long, value_name = "N")]
    fanout_rate: Option<u64>,
    /// Run only these sections (repeat the flag or separate with commas) [default: all]
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SECTION")]
    only: Vec<Section>,
    /// The supervision rows' child: serve a per-process token on 127.0.0.1:PORT until killed
    #[arg(long, hide = true, value_name = "PORT")]
    serve_token: Option<u16>,
}

/// A part of the benchmark that can run on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    /// Store transactions (with the fsync anchor)
    Store,
    /// The meta HTTP API (with the fsync anchor)
    Api,
    /// The ring bus: envelope crypto and broadcast over mutual TLS
    Bus,
    /// The bus hub under 2,000 half-open connections: member connect time and round trip
    BusFlood,
    /// Signed fan-out to 1, 10 and 100 subscribers: the embedded hub against nats-server
    Fanout,
    /// Supervision: SIGKILL to replacement, processes per instance, idle memory of `enjin up`
    Supervise,
    /// The HTTP router under wrk: direct, through enjin-router, through nginx
    Router,
    /// From `enjin deploy` to the first 200 through the router of `enjin up`
    Deploy,
    /// The instance firewall: compile and apply 1,000 rules in one nft transaction
    Firewall,
    /// CPU and store reads per minute of an idle `enjin up` with 2 hosts and 10 apps
    IdleLoad,
    /// Leader hand-over: the leading server killed → another leads and writes (SQLite, etcd)
    Leader,
}

impl Args {
    fn runs(&self, section: Section) -> bool {
        self.only.is_empty() || self.only.contains(&section)
    }

    fn limits(&self) -> anyhow::Result<Limits> {
        let (ops, seconds) =
            if self.quick { (QUICK_OPS, QUICK_SECONDS) } else { (DEFAULT_OPS, DEFAULT_SECONDS) };
        let ops = self.ops.unwrap_or(ops);
        anyhow::ensure!(ops >= 1, "--ops must be at least 1");
        let seconds = self.seconds.unwrap_or(seconds);
        let time = Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|t| !t.is_zero())
            .with_context(|| format!("--seconds must be a positive number, not {seconds}"))?;
        Ok(Limits { ops, time })
    }

    fn fanout_rate(&self) -> anyhow::Result<u64> {
        let rate = self.fanout_rate.unwrap_or(fanout::PACED_RATE);
        anyhow::ensure!(rate >= 1, "--fanout-rate must be at least 1");
        Ok(rate)
    }

    fn bus_window(&self) -> anyhow::Result<u64> {
        let window = self.bus_window.unwrap_or(bus::WINDOW);
        anyhow::ensure!(window >= 1, "--bus-window must be at least 1");
        Ok(window)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(port) = args.serve_token {
        return supervise::serve(port);
    }
    let settings = args.limits().and_then(|l| Ok((l, args.bus_window()?, args.fanout_rate()?)));
    let (limits, window, rate) = match settings {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(&args, limits, window, rate)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A row that failed, and why.
struct Failure {
    row: String,
    why: String,
}

async fn bench(args: &Args, limits: Limits, window: u64, rate: u64) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("enjin-bench-")
        .tempdir()
        .context("failed to create a temporary directory")?;
    let machine = Machine::probe(dir.path());
    let build = if cfg!(debug_assertions) {
        "debug (numbers are not representative; use --release)"
    } else {
        "release"
    };
    let plans = bus::plans(args.quick, window);

    println!("# enjin-bench\n");
    println!("- cores: {} (available_parallelism)", machine.cores);
    println!("- kernel: {}", machine.kernel);
    println!("- load average at start: {}", machine.load);
    println!("- temp dir: {} ({})", dir.path().display(), machine.filesystem);
    println!("- build: {build}");
    println!(
        "- settings: up to {} ops or {:.1} s per row, whichever comes first{}; store values {} B; \
         concurrent store rows use {} tasks",
        limits.ops,
        limits.time.as_secs_f64(),
        if args.quick { " (--quick)" } else { "" },
        store::VALUE_BYTES,
        store::TASKS,
    );
    if args.runs(Section::Bus) {
        let rows: Vec<String> =
            plans.iter().map(|p| format!("{}x{} (window {})", p.subscribers, p.messages, p.window)).collect();
        println!(
            "- bus: crypto rows on {:?} B payloads; broadcast rows (subscribers x messages) {}; each \
             publishes for at most {:.1} s, then waits for the messages in flight until none \
             arrives for {} s",
            bus::CRYPTO_PAYLOADS,
            rows.join(", "),
            limits.time.as_secs_f64(),
            bus::STALL_PATIENCE.as_secs(),
        );
    }
    let fanout_plans = fanout::plans(args.quick, rate);
    if args.runs(Section::Fanout) {
        let rows: Vec<String> = fanout_plans
            .iter()
            .filter(|p| p.via == fanout::Via::Hub)
            .map(|p| match p.pace {
                fanout::Pace::Window(w) => format!("{}x{} (window {w})", p.subscribers, p.messages),
                fanout::Pace::Rate(r) => format!("{}x{} ({r} msg/s)", p.subscribers, p.messages),
            })
            .collect();
        println!(
            "- fanout: rows (subscribers x messages) {}, each on the hub and on nats-server; a row \
             publishes for at most {} s",
            rows.join(", "),
            fanout::ROW_TIME.as_secs(),
        );
    }
    let supervise_settings = supervise::Settings::new(args.quick);
    if args.runs(Section::Supervise) {
        let uids = supervise::uid_range();
        println!(
            "- supervise: up to {} SIGKILLs or {:.0} s per row, each replacement serving {} ms \
             before it is killed (0 in the back-to-back rows); the child is this binary serving a \
             token on a fixed 127.0.0.1 port (permanent, at most {} restarts in 60 s); the port is \
             tried every {} ms; each replacement may take {} s; sandbox uids {}..{}, cgroup \
             branch {}; enjin up idles {} s before its memory is read",
            supervise_settings.kills,
            supervise_settings.row_time.as_secs_f64(),
            supervise::UPTIME.as_millis(),
            supervise::MAX_RESTARTS,
            supervise::POLL.as_millis(),
            supervise::PATIENCE.as_secs(),
            uids.base,
            uids.base + uids.count,
            supervise::cgroup_parent(),
            idle::SETTLE.as_secs(),
        );
    }
    println!();

    let mut failures = Vec::new();
    if args.runs(Section::Store) || args.runs(Section::Api) {
        failures.extend(disk(args, dir.path(), limits).await?);
    }
    if args.runs(Section::Bus) {
        failures.extend(ring_bus(&plans, limits).await?);
    }
    if args.runs(Section::BusFlood) {
        failures.extend(bus_flood(args.quick).await?);
    }
    if args.runs(Section::Fanout) {
        failures.extend(fan_out(&fanout_plans).await?);
    }
    if args.runs(Section::Supervise) {
        failures.extend(supervision(supervise_settings).await?);
    }
    if args.runs(Section::Router) {
        failures.extend(router::run(args.quick).await?);
    }
    if args.runs(Section::Deploy) {
        failures.extend(deploy::run(args.quick).await?);
    }
    if args.runs(Section::Firewall) {
        failures.extend(firewall::run(args.quick).await?);
    }
    if args.runs(Section::IdleLoad) {
        failures.extend(idle_load::run(args.quick).await?);
    }
    if args.runs(Section::Leader) {
        failures.extend(leader::run(args.quick).await?);
    }

    dir.close().context("failed to remove the temporary directory")?;

    if let Some(first) = failures.first() {
        anyhow::bail!("{} row(s) failed; first {:?}: {}", failures.len(), first.row, first.why);
    }
    Ok(())
}

/// The store and API sections, which write to `dir`, with the fsync anchor they compare with.
async fn disk(args: &Args, dir: &Path, limits: Limits) -> anyhow::Result<Vec<Failure>> {
    let store_dir = dir.join("store");
    let api_dir = dir.join("api");
    for d in [&store_dir, &api_dir] {
        std::fs::create_dir(d).with_context(|| format!("failed to create {}", d.display()))?;
    }

    eprintln!("measuring the fsync anchor…");
    let first = store::fsync_anchor(dir, limits).await?;
    let mut store_rows = Vec::new();
    if args.runs(Section::Store) {
        eprintln!("measuring store transactions…");
        store_rows = store::rows(&store_dir, limits).await?;
    }
    let mut list_rows = Vec::new();
    if args.runs(Section::Store) {
        eprintln!("measuring lists over {} objects…", list::objects(args.quick));
        let list_dir = dir.join("list");
        std::fs::create_dir(&list_dir).with_context(|| format!("failed to create {}", list_dir.display()))?;
        list_rows = list::rows(&list_dir, list::objects(args.quick), limits).await?;
    }
    let mut api_rows = Vec::new();
    if args.runs(Section::Api) {
        eprintln!("measuring the HTTP API…");
        api_rows = api::rows(&api_dir, limits).await?;
        eprintln!("measuring the HTTP API on etcd…");
        api_rows.extend(api::etcd_rows(limits).await?);
    }
    // Measured again at the end: the disk is shared, and its rate can drift during the run.
    eprintln!("measuring the fsync anchor again…");
    let last = store::fsync_anchor(dir, limits).await?;
    let anchors = [
        Row::write("append 1 B + fdatasync, at start", first),
        Row::write("append 1 B + fdatasync, at end", last),
    ];
    let fsyncs_per_sec = anchors.iter().map(|r| r.sample.per_sec()).sum::<f64>() / anchors.len() as f64;

    report::print_anchor(&anchors);
    if args.runs(Section::Store) {
        report::print_store(&store_rows, fsyncs_per_sec);
        report::print_list(&list_rows);
    }
    if args.runs(Section::Api) {
        report::print_api(&api_rows, fsyncs_per_sec);
    }
    println!(
        "\"per anchor fsync\" divides a row's rate by the mean of the two anchor rates \
         ({fsyncs_per_sec:.0}/s): about 1 means one commit per fsync, more means group commit \
         is batching. Client and server share this process and its cores.\n",
    );

    Ok(anchors
        .iter()
        .chain(&store_rows)
        .chain(&list_rows)
        .chain(&api_rows)
        .filter(|r| r.sample.errors > 0)
        .map(|r| Failure {
            row: r.name.clone(),
            why: r.sample.first_error.clone().unwrap_or_else(|| "unknown error".into()),
        })
        .collect())
}

/// The bus section: envelope crypto, then broadcast.
async fn ring_bus(plans: &[bus::Plan], limits: Limits) -> anyhow::Result<Vec<Failure>> {
    eprintln!("measuring bus envelope crypto…");
    let crypto = bus::crypto_rows(limits).await?;
    eprintln!("measuring bus broadcast…");
    let broadcast = bus::broadcast_rows(plans, limits).await?;
    report::print_bus_crypto(&crypto);
    report::print_bus_broadcast(&broadcast, &crypto);

    let crypto_failures = crypto.iter().filter(|r| r.sample.errors > 0).map(|r| Failure {
        row: format!("{} ({} B)", r.op.name(), r.payload),
        why: r.sample.first_error.clone().unwrap_or_else(|| "unknown error".into()),
    });
    let broadcast_failures = broadcast.iter().filter_map(|r| {
        let why = r.failure()?;
        Some(Failure { row: format!("{}, subscribers: {}", r.plan.name, r.plan.subscribers), why })
    });
    Ok(crypto_failures.chain(broadcast_failures).collect())
}

/// The hub under a flood of half-open connections, next to the same hub quiet.
async fn bus_flood(quick: bool) -> anyhow::Result<Vec<Failure>> {
    eprintln!("measuring the bus hub under 2,000 half-open connections…");
    let rows = bus_flood::rows(quick).await?;
    report::print_bus_flood(&rows);
    let mut failures: Vec<Failure> =
        rows.iter().filter_map(|r| Some(Failure { row: r.name.to_owned(), why: r.failure()? })).collect();
    eprintln!("measuring revocation and a hub restart…");
    let standing = bus_standing::rows(quick).await?;
    report::print_bus_standing(&standing);
    failures
        .extend(standing.iter().filter_map(|r| Some(Failure { row: r.name.to_owned(), why: r.failure()? })));
    Ok(failures)
}

/// Signed fan-out, on the hub and on nats-server.
async fn fan_out(plans: &[fanout::Plan]) -> anyhow::Result<Vec<Failure>> {
    eprintln!("measuring signed fan-out on the hub and on nats-server…");
    let rows = fanout::rows(plans).await?;
    report::print_fanout(&rows);
    Ok(rows
        .iter()
        .filter_map(|r| {
            let row =
                format!("{}, subscribers: {}, {:?}", r.plan.via.name(), r.plan.subscribers, r.plan.pace);
            Some(Failure { row, why: r.failure()? })
        })
        .collect())
}

/// The supervision section: restarts after SIGKILL, what an instance is made of, and the idle
/// memory of `enjin up`; all in one directory under /var/tmp.
async fn supervision(settings: supervise::Settings) -> anyhow::Result<Vec<Failure>> {
    let dir = supervise::section_dir("enjin-bench-supervise-")?;
    eprintln!("measuring supervision: SIGKILL to replacement…");
    let results = supervise::run(dir.path(), settings).await?;
    eprintln!("measuring the idle memory of enjin up…");
    let idle = idle::measure(dir.path().to_path_buf()).await;
    dir.close().context("failed to remove the supervision directory")?;

    report::print_supervise_restarts(&results.rows);
    report::print_supervise_instances(&results.instances);
    let anchor = results.instances.iter().find(|i| i.strategy == supervise::Strategy::Process);
    let mut failures: Vec<Failure> = results
        .rows
        .iter()
        .filter_map(|r| {
            let why = r.failure()?;
            let p = r.plan;
            let row = format!("{}, backoff {}, uptime {:?}", p.strategy.name(), p.delay.name(), p.uptime);
            Some(Failure { row, why })
        })
        .collect();
    match &idle {
        Ok(outcome) => report::print_idle(outcome, anchor.map(|i| &i.program)),
        Err(e) => {
            report::print_idle(&idle::Outcome::Skipped(format!("failed: {e:#}")), anchor.map(|i| &i.program));
            failures.push(Failure { row: "idle memory of enjin up".into(), why: format!("{e:#}") });
        }
    }
    failures.extend(
        results.cleanup.iter().map(|why| Failure { row: "supervision cleanup".into(), why: why.clone() }),
    );
    Ok(failures)
}
