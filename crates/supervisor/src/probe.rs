//! Observation strategies: is the child alive, and is it healthy?
//!
//! - Process liveness: the leader's pid still names the same process. A pid alone can be reused,
//!   so the start time from `/proc/<pid>/stat` is compared too; a zombie counts as dead.
//! - TCP: a connection to the child's address succeeds within the timeout.
//! - HTTP: a `GET` over HTTP/1.1 returns a 2xx or 3xx status within the timeout. Only the status
//!   line is read; this is a probe, not a client.
//!
//! [`ProbeTracker`] turns single results into a health state: `success_threshold` consecutive
//! successes make a child healthy, `failure_threshold` consecutive failures make it unhealthy, and
//! failures inside the starting grace period do not count.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use enjin_model::kinds::ObservationStrategy;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", deny_unknown_fields)]
pub enum Check {
    /// Passes when a TCP connection to `addr` is accepted; nothing is sent.
    Tcp {
        /// Where the child listens, as reachable from the supervisor.
        addr: SocketAddr,
    },
    /// Passes when `GET path` on `addr` answers 2xx or 3xx (redirects are not followed).
    Http {
        /// Where the child listens, as reachable from the supervisor; also sent as `Host`.
        addr: SocketAddr,
        /// Starts with `/`; no whitespace or control characters, since it is written into
        /// the request line as is.
        path: String,
    },
}

/// A health probe and how its results are judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    /// What is checked.
    pub check: Check,
    /// Time between the starts of two checks; a check slower than this delays the next one
    /// rather than overlapping it. The first check runs as soon as the child is up. Written as
    /// `interval_ms`.
    #[serde(rename = "interval_ms", with = "crate::serde_ms")]
    pub interval: Duration,
    /// How long one check may take, connection included, before it counts as failed. Written
    /// as `timeout_ms`.
    #[serde(rename = "timeout_ms", with = "crate::serde_ms")]
    pub timeout: Duration,
    /// Consecutive passes that make the child healthy; at least 1.
    pub success_threshold: u32,
    /// Consecutive failures (outside the grace period) that make it unhealthy; at least 1.
    pub failure_threshold: u32,
    /// Failures this soon after the start do not count: the child is still starting.
    #[serde(rename = "grace_ms", with = "crate::serde_ms")]
    pub grace: Duration,
    /// Restart a child once it is unhealthy (under its restart policy, as an abnormal exit).
    /// Off by default: an unhealthy child is reported and its parent decides.
    #[serde(default)]
    pub restart_on_unhealthy: bool,
}

/// Why a [`ProbeSpec`] is refused by [`ProbeSpec::validate`]; the spec's author must fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeSpecError {
    /// `interval` is zero, which would probe in a busy loop.
    #[error("probe interval must be longer than zero")]
    ZeroInterval,
    /// `timeout` is zero, which would fail every check.
    #[error("probe timeout must be longer than zero")]
    ZeroTimeout,
    /// `success_threshold` or `failure_threshold` is zero.
    #[error("probe thresholds must be at least 1")]
    ZeroThreshold,
    /// The HTTP path does not start with `/` or holds whitespace or a control character, which
    /// could smuggle extra lines into the request.
    #[error("http probe path {path:?} must start with '/' and contain no spaces or control characters")]
    Path {
        /// The rejected path.
        path: String,
    },
}

impl ProbeSpec {
    /// Defaults: every 5 s, 2 s timeout, healthy after 1 success, unhealthy after 3 failures,
    /// 30 s grace.
    pub fn new(check: Check) -> Self {
        ProbeSpec {
            check,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            success_threshold: 1,
            failure_threshold: 3,
            grace: Duration::from_secs(30),
            restart_on_unhealthy: false,
        }
    }

    /// A TCP probe of `addr` with the defaults of [`new`](Self::new).
    pub fn tcp(addr: SocketAddr) -> Self {
        Self::new(Check::Tcp { addr })
    }

    /// An HTTP probe of `path` on `addr` with the defaults of [`new`](Self::new); the path is
    /// checked by [`validate`](Self::validate), not here.
    pub fn http(addr: SocketAddr, path: impl Into<String>) -> Self {
        Self::new(Check::Http { addr, path: path.into() })
    }

    /// How observations made by this probe are labelled in the model.
    pub fn strategy(&self) -> ObservationStrategy {
        match self.check {
            Check::Tcp { .. } => ObservationStrategy::Tcp,
            Check::Http { .. } => ObservationStrategy::Http,
        }
    }

    /// Checks the bounds listed in [`ProbeSpecError`]; part of [`ChildSpec::validate`].
    ///
    /// [`ChildSpec::validate`]: crate::ChildSpec::validate
    pub fn validate(&self) -> Result<(), ProbeSpecError> {
        if self.interval.is_zero() {
            return Err(ProbeSpecError::ZeroInterval);
        }
        if self.timeout.is_zero() {
            return Err(ProbeSpecError::ZeroTimeout);
        }
        if self.success_threshold == 0 || self.failure_threshold == 0 {
            return Err(ProbeSpecError::ZeroThreshold);
        }
        if let Check::Http { path, .. } = &self.check
            && (!path.starts_with('/') || path.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            return Err(ProbeSpecError::Path { path: path.clone() });
        }
        Ok(())
    }
}

/// Why one check failed. Each counts as one failure towards `failure_threshold`; the message
/// becomes the observation's text when the child turns unhealthy.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The whole check (connect, and for HTTP the request and status line) took longer than
    /// the probe's timeout.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// The probed address.
        addr: SocketAddr,
        /// The timeout that ran out.
        timeout: Duration,
    },
    /// The connection was refused or failed: usually nothing listens yet.
    #[error("failed to connect to {addr}: {source}")]
    Connect {
        /// The probed address.
        addr: SocketAddr,
        /// The error from connect(2).
        source: std::io::Error,
    },
    /// Sending the request or reading the answer failed after connecting.
    #[error("failed to talk http to {addr}: {source}")]
    Io {
        /// The probed address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The first line of the answer is not `HTTP/1.x NNN ...` (or the peer closed without
    /// answering: the line is then empty).
    #[error("{addr} answered with a malformed http status line {line:?}")]
    StatusLine {
        /// The probed address.
        addr: SocketAddr,
        /// What was read, at most 1024 bytes, lossily decoded, trailing whitespace removed.
        line: String,
    },
    /// The answer's status is outside 200..=399.
    #[error("{addr} answered http status {status}")]
    Status {
        /// The probed address.
        addr: SocketAddr,
        /// The status received.
        status: u16,
    },
}

/// Runs one check; `Ok` carries a short description of the success.
pub async fn run_check(check: &Check, timeout: Duration) -> Result<String, ProbeError> {
    match check {
        Check::Tcp { addr } => check_tcp(*addr, timeout).await.map(|()| format!("tcp {addr} accepts")),
        Check::Http { addr, path } => check_http(*addr, path, timeout)
            .await
            .map(|status| format!("http {addr}{path} answered {status}")),
    }
}

/// Connects to `addr` within `timeout`.
pub async fn check_tcp(addr: SocketAddr, timeout: Duration) -> Result<(), ProbeError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(ProbeError::Timeout { addr, timeout }),
        Ok(Err(source)) => Err(ProbeError::Connect { addr, source }),
        Ok(Ok(_stream)) => Ok(()),
    }
}

/// `GET path` on `addr` within `timeout`; returns the status when it is 2xx or 3xx.
pub async fn check_http(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, ProbeError> {
    match tokio::time::timeout(timeout, http_status(addr, path)).await {
        Err(_) => Err(ProbeError::Timeout { addr, timeout }),
        Ok(Err(e)) => Err(e),
        Ok(Ok(status)) if (200..400).contains(&status) => Ok(status),
        Ok(Ok(status)) => Err(ProbeError::Status { addr, status }),
    }
}

/// The longest status line we read.
const MAX_STATUS_LINE: usize = 1024;

async fn http_status(addr: SocketAddr, path: &str) -> Result<u16, ProbeError> {
    let mut stream = TcpStream::connect(addr).await.map_err(|source| ProbeError::Connect { addr, source })?;
    let io = |source| ProbeError::Io { addr, source };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: enjin-supervisor\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    let line_end = loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            break end;
        }
        if buf.len() >= MAX_STATUS_LINE {
            break buf.len();
        }
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            break buf.len();
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let line = String::from_utf8_lossy(&buf[..line_end.min(MAX_STATUS_LINE)]).trim_end().to_owned();
    parse_status_line(&line).ok_or(ProbeError::StatusLine { addr, line })
}

/// `HTTP/1.x NNN reason` → NNN.
pub fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/1.") || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok().filter(|c| (100..600).contains(c))
}

/// What the probes say about a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No verdict yet.
    Starting,
    /// `success_threshold` consecutive checks passed.
    Healthy,
    /// `failure_threshold` consecutive checks failed.
    Unhealthy,
}

/// Consecutive-result thresholds over a stream of probe results. Pure: times come from the
/// caller.
#[derive(Debug, Clone)]
pub struct ProbeTracker {
    success_threshold: u32,
    failure_threshold: u32,
    grace_until: Instant,
    successes: u32,
    failures: u32,
    health: Health,
}

impl ProbeTracker {
    /// For a child that started at `started`.
    pub fn new(spec: &ProbeSpec, started: Instant) -> Self {
        ProbeTracker {
            success_threshold: spec.success_threshold.max(1),
            failure_threshold: spec.failure_threshold.max(1),
            grace_until: started + spec.grace,
            successes: 0,
            failures: 0,
            health: Health::Starting,
        }
    }

    /// For a child found running by someone else: presumed healthy until the probes say not.
    pub fn adopted(spec: &ProbeSpec, now: Instant) -> Self {
        ProbeTracker { health: Health::Healthy, grace_until: now, ..Self::new(spec, now) }
    }

    /// The current verdict; it changes only through [`record`](Self::record).
    pub fn health(&self) -> Health {
        self.health
    }

    /// Records one result; returns the new health when it changed.
    pub fn record(&mut self, ok: bool, at: Instant) -> Option<Health> {
        let next = if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (self.successes >= self.success_threshold).then_some(Health::Healthy)
        } else {
            self.successes = 0;
            if self.health == Health::Starting && at < self.grace_until {
                return None;
            }
            self.failures = self.failures.saturating_add(1);
            (self.failures >= self.failure_threshold).then_some(Health::Unhealthy)
        };
        match next {
            Some(h) if h != self.health => {
                self.health = h;
                Some(h)
            }
            _ => None,
        }
    }
}

pub use enjin_sys::proc::{ProcStat, ReadStatError};

/// `/proc/<pid>/stat` of `pid`.
pub fn read_stat(pid: u32) -> Result<ProcStat, ReadStatError> {
    enjin_sys::proc::stat(as_pid(pid))
}

/// A pid as the kernel's interfaces take it; one beyond `i32` names no process (`-1` is
/// never read as a pid: `/proc/-1` does not exist).
pub(crate) fn as_pid(pid: u32) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(-1))
}

/// Whether `pid` is still the process that started at `start_time` and has not exited.
pub fn process_alive(pid: u32, start_time: u64) -> bool {
    read_stat(pid).is_ok_and(|s| s.start_time == start_time && !s.is_dead())
}

/// Whether any live process is in process group `pgid`. Scans `/proc`; used only while stopping.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            return false;
        };
        // Processes vanish while we scan; a missing one is not in the group.
        read_stat(pid).is_ok_and(|s| i64::from(s.pgrp) == i64::from(pgid) && !s.is_dead())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU16, Ordering};
    use tokio::net::TcpListener;

    #[test]
    fn reads_own_stat() {
        let me = std::process::id();
        let s = read_stat(me).expect("own stat");
        assert_eq!(i64::from(s.pid), i64::from(me));
        assert!(process_alive(me, s.start_time));
        assert!(!process_alive(me, s.start_time + 1));
        assert!(group_alive(u32::try_from(s.pgrp).expect("a group id")));
    }

    proptest! {
        /// Health flips only after the threshold of consecutive results, and never to unhealthy
        /// inside the grace period of a starting child.
        #[test]
        fn thresholds(results in prop::collection::vec((any::<bool>(), 0..50u64), 0..200),
                      ok_n in 1..5u32, fail_n in 1..5u32, grace in 0..500u64) {
            let mut spec = ProbeSpec::tcp(SocketAddr::from(([127, 0, 0, 1], 1)));
            spec.success_threshold = ok_n;
            spec.failure_threshold = fail_n;
            spec.grace = Duration::from_millis(grace);
            let start = Instant::now();
            let mut tr = ProbeTracker::new(&spec, start);
            let mut now = start;
            let mut history: Vec<bool> = Vec::new();
            for (ok, gap) in results {
                now += Duration::from_millis(gap);
                history.push(ok);
                let before = tr.health();
                if let Some(h) = tr.record(ok, now) {
                    prop_assert_ne!(h, before);
                    let n = if ok { ok_n } else { fail_n } as usize;
                    prop_assert!(history.len() >= n);
                    prop_assert!(history[history.len() - n..].iter().all(|&r| r == ok));
                    if h == Health::Unhealthy {
                        prop_assert!(before != Health::Starting || now >= start + spec.grace);
                    } else {
                        prop_assert_eq!(h, Health::Healthy);
                    }
                }
            }
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status_line("HTTP/1.0 302"), Some(302));
        assert_eq!(parse_status_line("HTTP/1.1 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status_line("HTTP/2 200"), None);
        assert_eq!(parse_status_line("HTTP/1.1 20 OK"), None);
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
    }

    /// A tiny HTTP server answering every request with `status` (0: a garbage line; 1: never).
    async fn server(status: Arc<AtomicU16>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let status = status.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let reply = match status {
                        0 => "garbage\r\n\r\n".to_owned(),
                        1 => {
                            // Hold the connection without answering, past any probe timeout.
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return;
                        }
                        n => format!("HTTP/1.1 {n} X\r\nContent-Length: 0\r\n\r\n"),
                    };
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_and_tcp_checks() {
        let status = Arc::new(AtomicU16::new(200));
        let addr = server(status.clone()).await;
        let t = Duration::from_secs(2);
        assert_eq!(check_http(addr, "/healthz", t).await.expect("200"), 200);
        status.store(301, Ordering::SeqCst);
        assert_eq!(check_http(addr, "/", t).await.expect("301"), 301);
        status.store(503, Ordering::SeqCst);
        let err = check_http(addr, "/", t).await.expect_err("503");
        assert!(matches!(err, ProbeError::Status { status: 503, .. }), "{err}");
        status.store(0, Ordering::SeqCst);
        assert!(matches!(check_http(addr, "/", t).await, Err(ProbeError::StatusLine { .. })));
        status.store(1, Ordering::SeqCst);
        let short = Duration::from_millis(100);
        assert!(matches!(check_http(addr, "/", short).await, Err(ProbeError::Timeout { .. })));
        check_tcp(addr, t).await.expect("tcp");
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        let err = check_tcp(closed, t).await.expect_err("closed port");
        assert!(err.to_string().starts_with(&format!("failed to connect to {closed}")), "{err}");
    }

    #[test]
    fn probe_validation() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 80));
        assert_eq!(ProbeSpec::http(addr, "/ok").validate(), Ok(()));
        assert!(matches!(ProbeSpec::http(addr, "ok").validate(), Err(ProbeSpecError::Path { .. })));
        assert!(matches!(ProbeSpec::http(addr, "/a b").validate(), Err(ProbeSpecError::Path { .. })));
        let mut p = ProbeSpec::tcp(addr);
        p.failure_threshold = 0;
        assert_eq!(p.validate(), Err(ProbeSpecError::ZeroThreshold));
        let json = serde_json::to_string(&ProbeSpec::http(addr, "/")).expect("json");
        assert!(json.contains("\"kind\":\"http\""), "{json}");
    }
}
