//! What an idle cloud costs: the real binary runs `enjin up` with two ring 1 hosts, ten apps
//! of the Python example (two instances each) are deployed, and then nothing happens for a
//! window. The row is the CPU time of enjin's own processes (`enjin up` and its hosts' agents;
//! not the apps) and the reads and transactions the state store answered during the window, per
//! minute.
//!
//! CPU comes from `/proc/<pid>/stat` (user + system time) of every `enjin` process below
//! `enjin up`; the store's counters from `/metrics` (`enjin_store_*_total`), read with the admin
//! token `enjin up` leaves in its data directory. A binary without those counters (an older
//! build, given through `ENJIN_BENCH_BINARY`) gets its CPU measured and its reads shown as not
//! counted.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use enjin_client::Client;

use crate::deploy;
use crate::idle::{self, Network};
use crate::procfs;

/// How many apps the idle cloud runs: ten, or two with `--quick`.
pub fn apps(quick: bool) -> usize {
    if quick { 2 } else { 10 }
}
/// How long the cloud is left alone after the last deploy before the window opens.
pub const SETTLE: Duration = Duration::from_secs(10);
/// The window: a full minute, or ten seconds with `--quick`.
pub fn window(quick: bool) -> Duration {
    Duration::from_secs(if quick { 10 } else { 60 })
}
/// Clock ticks per second of `/proc/<pid>/stat`'s times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// What the store was asked, from `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
struct StoreCounters {
    reads: u64,
    keys_read: u64,
    txns: u64,
}

#[derive(Debug)]
pub struct IdleLoad {
    pub binary: PathBuf,
    pub window: Duration,
    /// CPU seconds of `enjin up` itself and of its agents during the window.
    pub up_cpu: f64,
    pub agents_cpu: f64,
    pub agents: usize,
    pub apps: usize,
    /// Store reads, keys read and transactions during the window; `None` if not counted.
    pub reads: Option<u64>,
    pub keys_read: Option<u64>,
    pub txns: Option<u64>,
    pub notes: Vec<String>,
}

pub enum Outcome {
    Skipped(String),
    Measured(IdleLoad),
}

pub async fn measure(dir: PathBuf, quick: bool) -> anyhow::Result<Outcome> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || measure_blocking(&runtime, &dir, quick))
        .await
        .context("the idle-load thread panicked")?
}

fn measure_blocking(runtime: &tokio::runtime::Handle, dir: &Path, quick: bool) -> anyhow::Result<Outcome> {
    let exe = idle::binary()?;
    if !exe.is_file() {
        return Ok(Outcome::Skipped(format!(
            "{} not found: build it first with `cargo build --release -p enjin`",
            exe.display()
        )));
    }
    if !deploy::example().join("enjin.toml").is_file() {
        return Ok(Outcome::Skipped(format!("the example app is not at {}", deploy::example().display())));
    }
    let before = Network::list(procfs::is_root());
    let data = dir.join("up");
    let log = dir.join("enjin-up.stderr.log");
    let mut child = idle::start_up(&exe, &data, &log, 2, 246)?;
    let measured = deploy::router_of(&mut child)
        .and_then(|_| deploy::wait_for_hosts(&exe, &data))
        .and_then(|()| observe(runtime, &exe, &child, &data, dir, apps(quick), window(quick)));
    let stopped = idle::stop(&mut child, &data);
    let cleaned = before.clean_up(&data);
    let tail = || idle::log_tail(&log);
    let mut load = measured.with_context(|| format!("enjin up; the end of its log:\n{}", tail()))?;
    load.notes.push(stopped?);
    load.notes.extend(cleaned?);
    Ok(Outcome::Measured(load))
}

/// Deploys the apps, waits, and measures the window.
fn observe(
    runtime: &tokio::runtime::Handle,
    exe: &Path,
    child: &Child,
    data: &Path,
    dir: &Path,
    apps: usize,
    window: Duration,
) -> anyhow::Result<IdleLoad> {
    for i in 1..=apps {
        let app = dir.join(format!("app-{i}"));
        deploy::app_copy(&app, &format!("hello {i}"))?;
        let out =
            deploy::cli(exe, data, &["deploy", &app.display().to_string(), "--name", &format!("idle-{i}")])?;
        if !out.status.success() {
            bail!("enjin deploy idle-{i} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    std::thread::sleep(SETTLE);
    let client = client(data)?;
    let counters = || runtime.block_on(store_counters(&client));
    let up = child.id();
    let (up_start, agents_start) = cpu(up, data);
    let store_start = counters()?;
    let started = Instant::now();
    std::thread::sleep(window);
    let (up_end, agents_end) = cpu(up, data);
    let store_end = counters()?;
    let took = started.elapsed();
    let agents = agents_end.len();
    if agents < 2 {
        bail!("{agents} enjin agent(s) below enjin up at the end of the window, not 2");
    }
    let delta = |f: fn(&StoreCounters) -> u64| -> Option<u64> {
        Some(f(store_end.as_ref()?).saturating_sub(f(store_start.as_ref()?)))
    };
    let agents_cpu: u64 = agents_end
        .iter()
        .map(|(pid, ticks)| ticks - agents_start.iter().find(|(p, _)| p == pid).map_or(0, |(_, t)| *t))
        .sum();
    Ok(IdleLoad {
        binary: exe.to_path_buf(),
        window: took,
        up_cpu: up_end.saturating_sub(up_start) as f64 / TICKS_PER_SECOND,
        agents_cpu: agents_cpu as f64 / TICKS_PER_SECOND,
        agents,
        apps,
        reads: delta(|c| c.reads),
        keys_read: delta(|c| c.keys_read),
        txns: delta(|c| c.txns),
        notes: Vec::new(),
    })
}

/// CPU ticks of `enjin up` (pid `up`), and of each of its hosts' agents (found by their data
/// directory under `data`).
fn cpu(up: u32, data: &Path) -> (u64, Vec<(u32, u64)>) {
    let ticks = |pid: u32| procfs::cpu_ticks(pid).unwrap_or(0);
    let agents = idle::agents(data).into_iter().map(|pid| (pid, ticks(pid))).collect();
    (ticks(up), agents)
}

/// The admin client of the `enjin up` running from `data`.
fn client(data: &Path) -> anyhow::Result<Client> {
    let read = |name: &str| {
        std::fs::read_to_string(data.join(name))
            .with_context(|| format!("failed to read {}", data.join(name).display()))
            .map(|s| s.trim().to_string())
    };
    let (server, token, ca) = (read("endpoint")?, read("admin.token")?, read("ca.crt")?);
    Client::with_ca(&server, Some(token), Some(&ca)).context("failed to build the admin client")
}

/// The store's counters from `/metrics`; `None` if the server does not export them.
async fn store_counters(client: &Client) -> anyhow::Result<Option<StoreCounters>> {
    let text = client.metrics().await.context("failed to read /metrics")?;
    let value = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
    };
    Ok(
        match (
            value("enjin_store_reads_total"),
            value("enjin_store_keys_read_total"),
            value("enjin_store_txns_total"),
        ) {
            (Some(reads), Some(keys_read), Some(txns)) => Some(StoreCounters { reads, keys_read, txns }),
            _ => None,
        },
    )
}

/// The section: measure and print, and say whether it failed.
pub async fn run(quick: bool) -> anyhow::Result<Vec<crate::Failure>> {
    const TITLE: &str = "## Idle: what `enjin up` with 2 hosts and its apps costs when nothing happens";
    eprintln!("measuring an idle enjin up with {} apps…", apps(quick));
    let dir = crate::supervise::section_dir("idle-load")?;
    match measure(dir.path().to_path_buf(), quick).await {
        Ok(Outcome::Skipped(why)) => {
            println!("{TITLE}\n\nskipped: {why}\n");
            Ok(Vec::new())
        }
        Ok(Outcome::Measured(load)) => {
            print(TITLE, &load);
            Ok(Vec::new())
        }
        Err(e) => {
            println!("{TITLE}\n\nfailed: {e:#}\n");
            Ok(vec![crate::Failure { row: "idle load".into(), why: format!("{e:#}") }])
        }
    }
}

fn print(title: &str, l: &IdleLoad) {
    let minutes = l.window.as_secs_f64() / 60.0;
    let per_min =
        |n: Option<u64>| n.map_or("not counted".to_string(), |n| format!("{:.0}", n as f64 / minutes));
    println!("{title}\n");
    println!(
        "| idle cloud | window | CPU s/min: enjin up | agents ({}) | total | store reads/min | keys read/min | store txns/min |",
        l.agents
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| 2 hosts, {} apps | {:.1} s | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
        l.apps,
        l.window.as_secs_f64(),
        l.up_cpu / minutes,
        l.agents_cpu / minutes,
        (l.up_cpu + l.agents_cpu) / minutes,
        per_min(l.reads),
        per_min(l.keys_read),
        per_min(l.txns),
    );
    println!();
    println!(
        "{} apps of the Python example (2 instances each, HTTP health checks) on 2 hosts, \
         deployed one after the other, then {} s left alone before the window; binary {}. CPU is \
         user + system time of `enjin up` and of its hosts' `enjin agent` processes (the apps' \
         own processes are not counted). The two `/metrics` reads that bracket the window are \
         counted in it (one store read each).",
        l.apps,
        SETTLE.as_secs(),
        l.binary.display()
    );
    for n in &l.notes {
        println!("- {n}");
    }
    println!();
}
