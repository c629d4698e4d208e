//! From `enjin deploy` to the first 200 through the router: the real binary runs `enjin up`
//! with two ring 1 hosts (network namespaces as root), and the Python example is deployed as a
//! new app several times and then as a new release of a live app. Each row times the `enjin
//! deploy` command and, separately, until the router first answers 200 with that release's
//! body (polled every 10 ms from the moment the command starts).
//!
//! Like the idle section it needs the `enjin` binary beside this one, keeps its data under
//! `/var/tmp`, listens on 127.0.0.1 port 0, stops `enjin up` with SIGINT and removes the host
//! networks this run made.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::idle::{self, Network};
use crate::procfs;

/// How long `enjin up` may take to print its banner and its hosts to send heartbeats.
const START_PATIENCE: Duration = Duration::from_secs(60);
/// How long one deploy may take to answer 200.
const DEPLOY_PATIENCE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug)]
pub enum Outcome {
    Skipped(String),
    Measured(Deploys),
}

/// Times of one kind of deploy, one per run.
#[derive(Debug)]
pub struct Row {
    pub what: String,
    /// Until `enjin deploy` returned (it waits for health).
    pub command: Vec<Duration>,
    /// Until the router first answered 200 with the new release.
    pub first_200: Vec<Duration>,
}

#[derive(Debug)]
pub struct Deploys {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

/// Runs the section in a data directory under `dir`.
pub async fn measure(dir: PathBuf, runs: usize) -> anyhow::Result<Outcome> {
    tokio::task::spawn_blocking(move || measure_blocking(&dir, runs))
        .await
        .context("the deploy thread panicked")?
}

pub fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python-hello")
}

fn measure_blocking(dir: &Path, runs: usize) -> anyhow::Result<Outcome> {
    let exe = idle::binary()?;
    if !exe.is_file() {
        return Ok(Outcome::Skipped(format!(
            "{} not found: build it first with `cargo build --release -p enjin`",
            exe.display()
        )));
    }
    if !example().join("enjin.toml").is_file() {
        return Ok(Outcome::Skipped(format!("the example app is not at {}", example().display())));
    }
    let before = Network::list(procfs::is_root());
    let data = dir.join("up");
    let log = dir.join("enjin-up.stderr.log");
    let mut child = idle::start_up(&exe, &data, &log, 2, 253)?;
    let measured = router_of(&mut child)
        .and_then(|router| wait_for_hosts(&exe, &data).map(|()| router))
        .and_then(|router| deploys(&exe, &data, dir, router, runs));
    let mut notes = Vec::new();
    let stopped = idle::stop(&mut child, &data);
    let cleaned = before.clean_up(&data);
    let tail = || idle::log_tail(&log);
    let rows = measured.with_context(|| format!("enjin up; the end of its log:\n{}", tail()))?;
    notes.push(stopped?);
    notes.extend(cleaned?);
    Ok(Outcome::Measured(Deploys { rows, notes }))
}

/// The router's address, from `enjin up`'s banner.
pub fn router_of(child: &mut Child) -> anyhow::Result<SocketAddr> {
    let rx = idle::stdout_lines(child)?;
    let deadline = Instant::now() + START_PATIENCE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("enjin up exited with {status} before printing its router");
        }
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(50))
            && let Some(rest) = line.trim().strip_prefix("router:")
        {
            let port: u16 = rest
                .split_whitespace()
                .next()
                .and_then(|u| u.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .context("no port in the router line")?;
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    bail!("enjin up printed no router address within {START_PATIENCE:?}")
}

pub fn cli(exe: &Path, data: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new(exe)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to run enjin {}", args.join(" ")))
}

pub fn wait_for_hosts(exe: &Path, data: &Path) -> anyhow::Result<()> {
    let alive = |host: &str| {
        let Ok(out) = cli(exe, data, &["-o", "json", "node-observation", "list", "--parent", host]) else {
            return false;
        };
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["items"].as_array().is_some_and(|items| {
            items.iter().any(|o| o["spec"]["strategy"] == "heartbeat" && o["spec"]["state"] == "running")
        })
    };
    let up = idle::wait(|| alive("host-1") && alive("host-2"), START_PATIENCE);
    if !up {
        bail!("the two hosts sent no heartbeats within {START_PATIENCE:?}");
    }
    Ok(())
}

/// One GET through the router; the status and body.
fn get(router: SocketAddr, host: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&router, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

/// Copy the example to `to`, with `greeting`.
pub fn app_copy(to: &Path, greeting: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("failed to create {}", to.display()))?;
    for f in ["app.py", "Procfile"] {
        std::fs::copy(example().join(f), to.join(f)).with_context(|| format!("failed to copy {f}"))?;
    }
    let manifest =
        std::fs::read_to_string(example().join("enjin.toml")).context("the example's enjin.toml")?;
    let manifest =
        manifest
            .lines()
            .map(|l| {
                if l.starts_with("GREETING =") { format!("GREETING = \"{greeting}\"") } else { l.to_string() }
            })
            .collect::<Vec<_>>()
            .join("\n");
    std::fs::write(to.join("enjin.toml"), manifest).context("failed to write enjin.toml")
}

/// Deploy `dir` as `name`; the time the command took and until the router said `expect`.
fn timed_deploy(
    exe: &Path,
    data: &Path,
    dir: &Path,
    name: &str,
    router: SocketAddr,
    expect: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let start = Instant::now();
    let mut deploy = Command::new(exe)
        .arg("--data-dir")
        .arg(data)
        .args(["deploy", &dir.display().to_string(), "--name", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to run enjin deploy")?;
    let host = format!("{name}.localhost");
    let mut first = None;
    let mut command = None;
    while start.elapsed() < DEPLOY_PATIENCE {
        if first.is_none()
            && let Some((200, body)) = get(router, &host)
            && body.starts_with(expect)
        {
            first = Some(start.elapsed());
        }
        if command.is_none()
            && let Some(status) = deploy.try_wait()?
        {
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = deploy.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!("enjin deploy {name} failed ({status}): {err}");
            }
            command = Some(start.elapsed());
        }
        if let (Some(f), Some(c)) = (first, command) {
            return Ok((c, f));
        }
        std::thread::sleep(POLL);
    }
    let _ = deploy.kill();
    bail!("{name} answered no 200 through the router within {DEPLOY_PATIENCE:?}")
}

fn deploys(exe: &Path, data: &Path, dir: &Path, router: SocketAddr, runs: usize) -> anyhow::Result<Vec<Row>> {
    let mut new = Row {
        what: "new app (python, 2 instances, http health check)".into(),
        command: Vec::new(),
        first_200: Vec::new(),
    };
    for i in 1..=runs {
        let app = dir.join(format!("app-{i}"));
        app_copy(&app, "hello v1")?;
        let (c, f) = timed_deploy(exe, data, &app, &format!("bench-{i}"), router, "hello v1")?;
        new.command.push(c);
        new.first_200.push(f);
    }
    let mut release =
        Row { what: "new release of a live app".into(), command: Vec::new(), first_200: Vec::new() };
    for i in 1..=runs {
        let app = dir.join(format!("app-{i}"));
        let greeting = format!("hello v{}", i + 1);
        app_copy(&app, &greeting)?;
        let (c, f) = timed_deploy(exe, data, &app, "bench-1", router, &greeting)?;
        release.command.push(c);
        release.first_200.push(f);
    }
    Ok(vec![new, release])
}

/// The section: measure, print the table, and say which rows failed.
pub async fn run(quick: bool) -> anyhow::Result<Vec<crate::Failure>> {
    eprintln!("measuring deploys through enjin up…");
    let dir = crate::supervise::section_dir("deploy")?;
    let runs = if quick { 1 } else { 3 };
    match measure(dir.path().to_path_buf(), runs).await {
        Ok(Outcome::Skipped(why)) => {
            println!("## Deploy: `enjin deploy` to the first 200 through the router\n\nskipped: {why}\n");
            Ok(Vec::new())
        }
        Ok(Outcome::Measured(d)) => {
            print(&d, runs);
            Ok(Vec::new())
        }
        Err(e) => {
            println!("## Deploy: `enjin deploy` to the first 200 through the router\n\nfailed: {e:#}\n");
            Ok(vec![crate::Failure { row: "deploy".into(), why: format!("{e:#}") }])
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn stats(v: &[Duration]) -> (Duration, Duration, Duration) {
    let mut s = v.to_vec();
    s.sort();
    let median = s.get(s.len() / 2).copied().unwrap_or_default();
    (s.first().copied().unwrap_or_default(), median, s.last().copied().unwrap_or_default())
}

fn print(d: &Deploys, runs: usize) {
    println!("## Deploy: `enjin deploy` to the first 200 through the router\n");
    println!("| deploy | runs | first 200: min | median | max | command returned: median |");
    println!("|---|---|---|---|---|---|");
    for r in &d.rows {
        let (min, med, max) = stats(&r.first_200);
        let (_, cmd, _) = stats(&r.command);
        println!("| {} | {runs} | {} | {} | {} | {} |", r.what, ms(min), ms(med), ms(max), ms(cmd));
    }
    println!();
    println!(
        "Each run packs the example, uploads it, places two instances on two hosts, starts them \
         (unix-user sandbox as root), waits for their HTTP health checks and for the router to \
         serve the new table; \"first 200\" is when a GET through the router first answered with \
         the new release's body, polled every {} ms from the start of the command.",
        POLL.as_millis()
    );
    for n in &d.notes {
        println!("- {n}");
    }
    println!();
}
