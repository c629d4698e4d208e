//! Shared helpers: a supervisor over real processes in a temporary directory, observations
//! awaited with deadlines, and /proc checks.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use enjin_model::kinds::ObservationState;
use enjin_supervisor::{
    Backoff, ChildId, ChildSpec, Intensity, Observation, ProcessLauncher, Restart, RestartPolicy, StopSpec,
    Supervisor, SupervisorConfig, probe,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub const DEADLINE: Duration = Duration::from_secs(10);

pub struct Rig {
    pub sup: Supervisor,
    pub rx: mpsc::Receiver<Observation>,
    pub seen: Vec<Observation>,
    pub dir: PathBuf,
    /// Kills what a failed test left running.
    pub reaper: Reaper,
}

/// Every child pid a test saw; on drop, the groups still alive are killed, so that a failing
/// test leaves no processes behind.
#[derive(Debug, Default)]
pub struct Reaper(Mutex<BTreeSet<u32>>);

impl Reaper {
    fn saw(&self, pid: u32) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(pid);
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let pids = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for pid in pids {
            // Only a live group leader we saw: never a reused pid in someone else's group.
            if probe::read_stat(pid).is_ok_and(|s| !s.is_dead() && i64::from(s.pgrp) == i64::from(pid)) {
                let group = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid"));
                let _ = enjin_sys::proc::signal_group(group, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

pub fn launcher(dir: &Path) -> Arc<ProcessLauncher> {
    Arc::new(ProcessLauncher::new(dir.join("logs")))
}

pub async fn start(dir: &Path) -> Rig {
    let (tx, rx) = mpsc::channel(1024);
    let config = SupervisorConfig {
        adopted_poll_interval: Duration::from_millis(50),
        stop_retry: Duration::from_millis(100),
        ..SupervisorConfig::new(dir.join("supervisor"))
    };
    let sup = Supervisor::start(config, launcher(dir), tx).await.expect("start supervisor");
    Rig { sup, rx, seen: Vec::new(), dir: dir.to_owned(), reaper: Reaper::default() }
}

impl Rig {
    /// Waits for an observation of `id` in `state`; returns it. Everything seen is kept.
    pub async fn wait(&mut self, id: &str, state: ObservationState) -> Observation {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let o = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {state:?} for {id} in time; saw {:#?}", self.seen))
                .expect("observation channel open");
            if let Some(pid) = o.pid {
                self.reaper.saw(pid);
            }
            self.seen.push(o.clone());
            if o.child.as_str() == id && o.state == state {
                return o;
            }
        }
    }

    /// Like `wait`, but also accepts an observation already seen.
    pub async fn seen_or_wait(&mut self, id: &str, state: ObservationState) -> Observation {
        match self.seen.iter().find(|o| o.child.as_str() == id && o.state == state) {
            Some(o) => o.clone(),
            None => self.wait(id, state).await,
        }
    }

    /// The states seen for `id`, in order.
    pub fn states(&self, id: &str) -> Vec<ObservationState> {
        self.seen.iter().filter(|o| o.child.as_str() == id).map(|o| o.state).collect()
    }

    /// The child's pid, once it has one (a launch runs on a blocking thread and may still be in
    /// flight right after `ensure`).
    pub async fn pid(&self, id: &str) -> u32 {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let snap = self.sup.handle().snapshot().await.expect("snapshot");
            if let Some(pid) = snap.get(&cid(id)).and_then(|c| c.pid) {
                return pid;
            }
            assert!(tokio::time::Instant::now() < deadline, "{id} has no pid: {snap:#?}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

pub fn cid(id: &str) -> ChildId {
    ChildId::new(id).expect("child id")
}

/// A child with quick restarts: backoff 20 ms doubling, no jitter, at most 3 restarts in 30 s,
/// and a short stop grace.
pub fn spec(id: &str, restart: Restart, command: &[&str]) -> ChildSpec {
    let mut spec = ChildSpec::new(cid(id), command.iter().map(|s| s.to_string()).collect());
    spec.restart = RestartPolicy {
        restart,
        intensity: Intensity { max_restarts: 3, period: Duration::from_secs(30) },
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.0,
            reset_after: Duration::from_secs(10),
        },
    };
    spec.stop = StopSpec { grace: Duration::from_secs(2), ..StopSpec::default() };
    spec
}

pub fn sh(id: &str, restart: Restart, script: &str) -> ChildSpec {
    spec(id, restart, &["sh", "-c", script])
}

/// Sends SIGKILL to one process.
pub fn kill(pid: u32) {
    let raw = i32::try_from(pid).expect("pid");
    enjin_sys::proc::signal(enjin_sys::Pid::from_raw(raw), enjin_sys::Signal::SIGKILL)
        .unwrap_or_else(|e| panic!("kill -9 {pid}: {e}"));
}

pub fn alive(pid: u32) -> bool {
    probe::read_stat(pid).is_ok_and(|s| !s.is_dead())
}

/// Polls `cond` until it holds or the deadline passes.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads a pid a script wrote to `path`, waiting for it to appear.
pub async fn read_pid(path: &Path) -> u32 {
    let mut pid = None;
    eventually(&format!("{} holds a pid", path.display()), || {
        pid = std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok());
        pid.is_some()
    })
    .await;
    pid.unwrap_or_default()
}

/// Live processes whose command line is exactly `args`.
pub fn count_processes(args: &[&str]) -> usize {
    let want: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|&pid| alive(pid) && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .count()
}

/// A `sleep` argument no other test uses, so its processes can be counted.
pub fn unique_sleep() -> String {
    let n = uuid::Uuid::new_v4().as_u128() % 1_000_000;
    format!("300.{n:06}")
}
