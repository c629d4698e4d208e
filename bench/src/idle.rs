//! The idle memory of the real binary: `enjin up` with one ring 1 host, left alone for a few
//! seconds, then the resident memory of `enjin up` itself and of the host's `enjin agent`.
//!
//! The binary is the `enjin` next to this one in the target directory (build it with
//! `cargo build --release -p enjin`); without it the row says so and nothing runs. `enjin up`
//! listens on 127.0.0.1 port 0, keeps its data in a temporary directory under `/var/tmp`, and
//! is stopped with SIGINT. As root it gives the host a network namespace, a veth and a bridge,
//! which outlive it by design; they are removed here, but only the ones this run made: found
//! from the host's uuid, and never a name that existed before the run.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::procfs::{self, Memory};

/// How long `enjin up` may take to print its API address, and its host's agent to appear.
const START_PATIENCE: Duration = Duration::from_secs(60);
/// How long `enjin up` is left idle before its memory is read.
pub const SETTLE: Duration = Duration::from_secs(3);
/// How long `enjin up` may take to stop after SIGINT (it stops its agents gracefully first),
/// and its agents after it, before they are killed.
const STOP_PATIENCE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// What the section found.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing ran, and why.
    Skipped(String),
    Measured(Idle),
}

#[derive(Debug)]
pub struct Idle {
    pub up: Memory,
    pub agent: Memory,
    /// How it stopped and what was cleaned up, for the notes under the table.
    pub notes: Vec<String>,
}

/// The `enjin` binary beside this one, or the one `ENJIN_BENCH_BINARY` names (to measure
/// another build against this one).
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("ENJIN_BENCH_BINARY") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("cannot find this binary")?;
    Ok(exe.with_file_name("enjin"))
}

/// Runs `enjin up --hosts 1` in a data directory under `dir`, measures, stops and cleans up.
pub async fn measure(dir: PathBuf) -> anyhow::Result<Outcome> {
    tokio::task::spawn_blocking(move || measure_blocking(&dir))
        .await
        .context("the idle-memory thread panicked")?
}

fn measure_blocking(dir: &Path) -> anyhow::Result<Outcome> {
    let exe = binary()?;
    if !exe.is_file() {
        return Ok(Outcome::Skipped(format!(
            "{} not found: build it first with `cargo build --release -p enjin` (or without --release for a debug run)",
            exe.display()
        )));
    }
    let root = procfs::is_root();
    let before = Network::list(root);
    let data = dir.join("up");
    let log = dir.join("enjin-up.stderr.log");
    let mut child = start_up(&exe, &data, &log, 1, 252)?;
    let measured = observe(&mut child, &data);
    let mut notes = Vec::new();
    let stopped = stop(&mut child, &data);
    let cleaned = before.clean_up(&data);
    let tail = || log_tail(&log);
    let (up, agent) = measured.with_context(|| format!("enjin up; the end of its log:\n{}", tail()))?;
    notes.push(stopped.with_context(|| format!("stopping enjin up; the end of its log:\n{}", tail()))?);
    notes.extend(cleaned?);
    Ok(Outcome::Measured(Idle { up, agent, notes }))
}

/// Waits for the API address and the host's agent, lets them idle, reads their memory.
fn observe(child: &mut Child, data: &Path) -> anyhow::Result<(Memory, Memory)> {
    let rx = stdout_lines(child)?;
    let deadline = Instant::now() + START_PATIENCE;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("enjin up exited with {status} before printing its API address");
        }
        match rx.recv_timeout(POLL) {
            Ok(line) if line.trim_start().starts_with("API:") => break,
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("enjin up closed its stdout before printing its API address")
            }
        }
        if Instant::now() >= deadline {
            bail!("enjin up printed no API address within {START_PATIENCE:?}");
        }
    }
    let agent = loop {
        if let Some(pid) = agents(data).first() {
            break *pid;
        }
        if let Some(status) = child.try_wait()? {
            bail!("enjin up exited with {status} before starting its host's agent");
        }
        if Instant::now() >= deadline {
            bail!("no enjin agent for {} within {START_PATIENCE:?}", data.display());
        }
        std::thread::sleep(POLL);
    };
    std::thread::sleep(SETTLE);
    if !agents(data).contains(&agent) {
        bail!("the host's agent (pid {agent}) did not stay up for {SETTLE:?}");
    }
    let up = procfs::memory(child.id()).context("enjin up")?;
    let agent = procfs::memory(agent).context("enjin agent")?;
    Ok((up, agent))
}

/// `enjin up` with `hosts` ring 1 hosts on loopback port 0 (API, bus, router, DNS), its data in
/// `data`, its stderr in `log`, its hosts in `10.<octet>.<pid>.0/24` and its instances in
/// `10.<octet + 2>.0.0/16`: ranges of its own, apart from any `enjin up` the machine is running.
pub fn start_up(exe: &Path, data: &Path, log: &Path, hosts: usize, octet: u8) -> anyhow::Result<Child> {
    let stderr = std::fs::File::create(log).with_context(|| format!("failed to create {}", log.display()))?;
    Command::new(exe)
        .arg("--data-dir")
        .arg(data)
        .args(["up", "--listen", "127.0.0.1:0", "--bus-listen", "127.0.0.1:0", "--hosts", &hosts.to_string()])
        .args(["--router-listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0"])
        .args(["--hosts-cidr", &format!("10.{octet}.{}.0/24", std::process::id() % 250 + 1)])
        .args(["--instance-cidr", &format!("10.{}.0.0/16", octet.wrapping_add(2))])
        .env("ENJIN_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("failed to start {}", exe.display()))
}

/// The lines a child prints on its (piped) stdout. Reads to the end, so that the child never
/// blocks on (or fails writing to) a full pipe.
pub fn stdout_lines(child: &mut Child) -> anyhow::Result<mpsc::Receiver<String>> {
    let stdout = child.stdout.take().context("enjin up's stdout is not piped")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Ok(rx)
}

/// The last ten lines of a log file, for an error message.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// The `enjin agent` processes whose directory is under `data`.
pub fn agents(data: &Path) -> Vec<u32> {
    let data = data.display().to_string();
    procfs::table()
        .iter()
        .map(|s| s.pid)
        .filter(|pid| {
            let args = procfs::cmdline(*pid);
            args.get(1).is_some_and(|a| a == "agent") && args.iter().any(|a| a.starts_with(&data))
        })
        .collect()
}

/// SIGINT, then SIGKILL after [`STOP_PATIENCE`]; then the same for any agent left behind.
pub fn stop(child: &mut Child, data: &Path) -> anyhow::Result<String> {
    let started = Instant::now();
    let mut note = match child.try_wait()? {
        Some(status) => format!("enjin up had already exited with {status}"),
        None => {
            let pid = enjin_sys::Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
            enjin_sys::proc::signal(pid, enjin_sys::Signal::SIGINT)?;
            if wait(|| child.try_wait().ok().flatten().is_some(), STOP_PATIENCE) {
                let status = child.wait()?;
                format!(
                    "enjin up stopped {:.1} s after SIGINT, with {status}",
                    started.elapsed().as_secs_f64()
                )
            } else {
                child.kill()?;
                child.wait()?;
                format!("enjin up did not stop within {STOP_PATIENCE:?} of SIGINT and was killed")
            }
        }
    };
    if !wait(|| agents(data).is_empty(), STOP_PATIENCE) {
        for pid in agents(data) {
            let _ = enjin_sys::proc::signal(enjin_sys::Pid::from_raw(pid as i32), enjin_sys::Signal::SIGKILL);
        }
        // Gone before its network namespace is removed; a SIGKILL takes no longer than this.
        wait(|| agents(data).is_empty(), Duration::from_secs(5));
        note.push_str("; its agent outlived it and was killed");
    }
    Ok(note)
}

/// Polls `done` until it holds or `limit` passes.
pub fn wait(mut done: impl FnMut() -> bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Network namespaces, links and `enjin` cgroup branches that existed before the run.
pub struct Network {
    root: bool,
    netns: BTreeSet<String>,
    links: BTreeSet<String>,
}

fn ip(args: &[&str]) -> Option<String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Network {
    pub fn list(root: bool) -> Self {
        let netns = ip(&["netns", "list"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        // `3: ejv-1234abcd@if5: <...>`: the name is the second field, up to any `@`.
        let links = ip(&["-o", "link"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|n| n.trim_end_matches(':').split('@').next().unwrap_or_default().to_string())
            .collect();
        Network { root, netns, links }
    }

    /// Removes the host's namespace, veth and bridge and its cgroup branch, if this run made
    /// them; returns what it removed.
    pub fn clean_up(&self, data: &Path) -> anyhow::Result<Vec<String>> {
        let mut hosts: Vec<PathBuf> = std::fs::read_dir(data.join("hosts"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("agent.json"))
            .filter(|p| p.is_file())
            .collect();
        hosts.sort();
        if hosts.is_empty() {
            return Ok(vec![format!("no host was prepared in {}, nothing to clean up", data.display())]);
        }
        let mut notes = Vec::new();
        for agent_json in hosts {
            notes.extend(self.clean_up_host(&agent_json)?);
        }
        Ok(notes)
    }

    fn clean_up_host(&self, agent_json: &Path) -> anyhow::Result<Vec<String>> {
        let bytes =
            std::fs::read(agent_json).with_context(|| format!("failed to read {}", agent_json.display()))?;
        let file: enjin_agent::AgentFile = serde_json::from_slice(&bytes)
            .with_context(|| format!("failed to parse {}", agent_json.display()))?;
        let node = file.node.to_string();
        let mut removed = Vec::new();
        if self.root {
            let names = enjin_net::names(&node);
            // The bridge is named after the hosts' network, which only the store knows; the
            // veth says which one it is plugged into.
            let bridge = ip(&["-o", "link", "show", "dev", &names.veth]).and_then(|l| {
                let mut words = l.split_whitespace();
                words.by_ref().find(|w| *w == "master");
                words.next().map(str::to_string)
            });
            // The host's instances' namespaces first: only the host's veths name them.
            for ns in enjin_net::cloud::instance_namespaces(&names.netns).unwrap_or_default() {
                if self.netns.contains(&ns) {
                    continue;
                }
                let instance = enjin_net::instance::InstanceNames { netns: ns.clone(), veth: ns.clone() };
                if enjin_net::instance::remove_instance(&instance).is_ok() {
                    removed.push(format!("instance namespace {ns}"));
                }
            }
            if !self.netns.contains(&names.netns) && ip(&["netns", "del", &names.netns]).is_some() {
                removed.push(format!("network namespace {}", names.netns));
            }
            if !self.links.contains(&names.veth) && ip(&["link", "del", &names.veth]).is_some() {
                removed.push(format!("veth {}", names.veth));
            }
            if let Some(bridge) = bridge.filter(|b| b.starts_with("ejb-") && !self.links.contains(b))
                && ip(&["link", "del", &bridge]).is_some()
            {
                removed.push(format!("bridge {bridge}"));
            }
        }
        // The host's agent makes its instances' groups under `enjin/<node>` in every hierarchy.
        for mount in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let branch = mount.path().join("enjin").join(&node);
            if branch.is_dir() {
                remove_tree(&branch)
                    .with_context(|| format!("failed to remove cgroup {}", branch.display()))?;
                removed.push(format!("cgroup {}", branch.display()));
            }
        }
        Ok(vec![if removed.is_empty() {
            "nothing of the host's was left to remove".to_string()
        } else {
            format!("removed {}", removed.join(", "))
        }])
    }
}

/// Removes an (empty) cgroup directory and the groups below it, deepest first.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}
