//! Processes by pid: their identity in `/proc/<pid>/stat` and signals.
//!
//! A pid alone does not name a process: after an agent restart the pid it remembered may belong
//! to someone else. `(pid, start time)` does, because the kernel never gives a new process the
//! pid and boot-relative start time of a live one; [`is_same_process`] is the check that lets a
//! restarted agent re-adopt its children without being fooled by pid reuse.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 1.
    pub pid: i32,
    /// Field 2 without its parentheses: the executable's name, truncated to 15 bytes by the
    /// kernel and chosen by the process (it may hold spaces, parentheses, newlines).
    pub comm: String,
    /// Field 3: `R`, `S`, `D`, `Z`, `T`, …
    pub state: char,
    /// Field 4.
    pub ppid: i32,
    /// Field 5: process group.
    pub pgrp: i32,
    /// Field 6: session.
    pub session: i32,
    /// Field 14: time spent in user mode, in clock ticks.
    pub utime: u64,
    /// Field 15: time spent in kernel mode, in clock ticks.
    pub stime: u64,
    /// Field 22: start time in clock ticks after boot.
    pub start_time: u64,
}

impl ProcStat {
    /// A zombie (exited, not yet reaped) or a dying task runs nothing any more.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Why `/proc/<pid>/stat` contents could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseStatError {
    /// There is no `(` … `)` pair around the comm field, so no field after it can be located.
    #[error("no parenthesised comm field")]
    NoComm,
    /// The contents end before a field we need.
    #[error("field {field} ({name}) is missing")]
    Missing {
        /// The field's 1-based number in proc(5).
        field: usize,
        /// The field's name in proc(5).
        name: &'static str,
    },
    /// A field we need as a number is not one (or does not fit its type).
    #[error("field {field} ({name}) is not a number: {value:?}")]
    NotANumber {
        /// The field's 1-based number in proc(5).
        field: usize,
        /// The field's name in proc(5).
        name: &'static str,
        /// The text found there.
        value: String,
    },
}

/// Why a process's stat could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadStatError {
    /// The process has exited (and been reaped), or never existed: the stat file is missing,
    /// or vanished while it was read (`ESRCH`).
    #[error("process {pid} does not exist ({} is missing)", path.display())]
    Gone {
        /// The process looked for.
        pid: Pid,
        /// Its stat file.
        path: PathBuf,
    },
    /// The stat file exists but could not be read (for instance `EACCES` under a restrictive
    /// `hidepid` mount).
    #[error("failed to read {}: {source}", path.display())]
    Read {
        /// The stat file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The contents are not what the kernel writes; with a real `/proc` this points at a bug.
    #[error("failed to parse {}: {source}", path.display())]
    Parse {
        /// The stat file.
        path: PathBuf,
        /// What did not parse.
        source: ParseStatError,
    },
}

/// Why a signal could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("failed to send {signal} to {target}: {source}")]
pub struct SignalError {
    /// `pid 123` or `process group 123`.
    pub target: String,
    /// The signal that was to be sent.
    pub signal: Signal,
    /// The error from `kill(2)`: `ESRCH` if the target is gone (see
    /// [`SignalError::is_gone`]), `EPERM` if the caller may not signal it.
    pub source: Errno,
}

impl SignalError {
    /// The target no longer exists (`ESRCH`).
    pub fn is_gone(&self) -> bool {
        self.source == Errno::ESRCH
    }
}

/// Parses the contents of `/proc/<pid>/stat`.
///
/// The comm field is delimited by the first `(` and the *last* `)`: a process can name itself
/// `a) S 1 (` and every field after comm is numeric or a single state letter, so the last `)` is
/// the real delimiter.
pub fn parse_stat(contents: &[u8]) -> Result<ProcStat, ParseStatError> {
    let open = contents.iter().position(|b| *b == b'(').ok_or(ParseStatError::NoComm)?;
    let close = contents.iter().rposition(|b| *b == b')').ok_or(ParseStatError::NoComm)?;
    if close < open {
        return Err(ParseStatError::NoComm);
    }
    let head = String::from_utf8_lossy(&contents[..open]);
    let pid = number(head.trim(), 1, "pid")?;
    let comm = String::from_utf8_lossy(&contents[open + 1..close]).into_owned();
    let tail = String::from_utf8_lossy(&contents[close + 1..]);
    // `rest[i]` is field i + 3.
    let rest: Vec<&str> = tail.split_ascii_whitespace().collect();
    let field = |n: usize, name: &'static str| -> Result<&str, ParseStatError> {
        rest.get(n - 3).copied().ok_or(ParseStatError::Missing { field: n, name })
    };
    let state_field = field(3, "state")?;
    let mut chars = state_field.chars();
    let state = match (chars.next(), chars.next()) {
        (Some(c), None) => c,
        _ => {
            return Err(ParseStatError::NotANumber {
                field: 3,
                name: "state",
                value: state_field.to_owned(),
            });
        }
    };
    Ok(ProcStat {
        pid,
        comm,
        state,
        ppid: number(field(4, "ppid")?, 4, "ppid")?,
        pgrp: number(field(5, "pgrp")?, 5, "pgrp")?,
        session: number(field(6, "session")?, 6, "session")?,
        start_time: number(field(22, "starttime")?, 22, "starttime")?,
        utime: number(field(14, "utime")?, 14, "utime")?,
        stime: number(field(15, "stime")?, 15, "stime")?,
    })
}

fn number<T: std::str::FromStr>(value: &str, field: usize, name: &'static str) -> Result<T, ParseStatError> {
    value.parse().map_err(|_| ParseStatError::NotANumber { field, name, value: value.to_owned() })
}

/// A procfs mount: the host's `/proc`, or a directory laid out like it in tests.
#[derive(Debug, Clone)]
pub struct Procfs {
    root: PathBuf,
}

impl Default for Procfs {
    fn default() -> Self {
        Self::host()
    }
}

impl Procfs {
    /// `/proc`: pids as the calling process's PID namespace sees them.
    pub fn host() -> Self {
        Self::at("/proc")
    }

    /// A procfs (or a fake one) mounted at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads and parses `<root>/<pid>/stat`.
    pub fn stat(&self, pid: Pid) -> Result<ProcStat, ReadStatError> {
        let path = self.root.join(pid.as_raw().to_string()).join("stat");
        let contents = match std::fs::read(&path) {
            Ok(c) => c,
            // ESRCH: the process exited between open and read.
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
                return Err(ReadStatError::Gone { pid, path });
            }
            Err(source) => return Err(ReadStatError::Read { path, source }),
        };
        parse_stat(&contents).map_err(|source| ReadStatError::Parse { path, source })
    }

    /// The process's start time in clock ticks after boot.
    pub fn start_time(&self, pid: Pid) -> Result<u64, ReadStatError> {
        Ok(self.stat(pid)?.start_time)
    }

    /// Whether `pid` is still the process that started at `start_time` (a zombie still is; a
    /// process that reused the pid is not).
    pub fn is_same_process(&self, pid: Pid, start_time: u64) -> Result<bool, ReadStatError> {
        match self.stat(pid) {
            Ok(stat) => Ok(stat.start_time == start_time),
            Err(ReadStatError::Gone { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// [`Procfs::stat`] on the host's `/proc`.
pub fn stat(pid: Pid) -> Result<ProcStat, ReadStatError> {
    Procfs::host().stat(pid)
}

/// [`Procfs::start_time`] on the host's `/proc`.
pub fn start_time(pid: Pid) -> Result<u64, ReadStatError> {
    Procfs::host().start_time(pid)
}

/// [`Procfs::is_same_process`] on the host's `/proc`.
pub fn is_same_process(pid: Pid, start_time: u64) -> Result<bool, ReadStatError> {
    Procfs::host().is_same_process(pid, start_time)
}

struct Target(&'static str, Pid);

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

/// Sends `signal` to one process. Refuses pids that `kill(2)` would read as "many processes"
/// (0 and negatives), which a stale or zeroed pid must never turn into.
pub fn signal(pid: Pid, signal: Signal) -> Result<(), SignalError> {
    let target = Target("pid", pid).to_string();
    if pid.as_raw() <= 0 {
        return Err(SignalError { target, signal, source: Errno::EINVAL });
    }
    nix::sys::signal::kill(pid, signal).map_err(|source| SignalError { target, signal, source })
}

/// Sends `signal` to every process in a process group. Refuses group ids 0 and 1 (the caller's
/// own group and, through `kill(-1)` semantics, everything).
pub fn signal_group(pgid: Pid, signal: Signal) -> Result<(), SignalError> {
    let target = Target("process group", pgid).to_string();
    if pgid.as_raw() <= 1 {
        return Err(SignalError { target, signal, source: Errno::EINVAL });
    }
    nix::sys::signal::killpg(pgid, signal).map_err(|source| SignalError { target, signal, source })
}

/// The processes whose network namespace is the one bound at `netns` (a file under
/// `/run/netns`): those that would keep it alive, unnamed, after its name is removed.
pub fn pids_in_netns(netns: &Path) -> Vec<Pid> {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(netns) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        // Following the link gives the namespace's own inode, as a bind mount of it does.
        let Ok(ns) = std::fs::metadata(entry.path().join("ns/net")) else { continue };
        if ns.dev() == target.dev() && ns.ino() == target.ino() {
            out.push(Pid::from_raw(pid));
        }
    }
    out
}

/// Sets the process's umask to 077: everything it creates from now on is private to its
/// owner (0600 files, 0700 directories) unless a mode is set explicitly.
pub fn private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(pid: i32, comm: &str, start: u64) -> Vec<u8> {
        let mut v = format!("{pid} (").into_bytes();
        v.extend_from_slice(comm.as_bytes());
        v.extend_from_slice(
            format!(
                ") S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {start} 2600000 100 \
                 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
            )
            .as_bytes(),
        );
        v
    }

    #[test]
    fn parses_a_plain_line() {
        let s = parse_stat(&line(42, "sleep", 12345)).expect("parse");
        assert_eq!(s.pid, 42);
        assert_eq!(s.comm, "sleep");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgrp, 42);
        assert_eq!(s.session, 42);
        assert_eq!(s.start_time, 12345);
        assert_eq!((s.utime, s.stime), (1, 2));
    }

    #[test]
    fn comm_with_parens_spaces_and_newline() {
        let s = parse_stat(&line(7, "a) S 1 (b\n)", 99)).expect("parse");
        assert_eq!(s.comm, "a) S 1 (b\n)");
        assert_eq!(s.start_time, 99);
        assert_eq!(s.ppid, 1);
    }

    #[test]
    fn truncated_and_garbage_lines_are_errors() {
        assert_eq!(parse_stat(b"12 sleep S 1"), Err(ParseStatError::NoComm));
        assert!(matches!(parse_stat(b"12 (sleep) S 1 2 3"), Err(ParseStatError::Missing { field: 22, .. })));
        assert!(matches!(parse_stat(b"x (sleep) S"), Err(ParseStatError::NotANumber { field: 1, .. })));
        assert!(matches!(parse_stat(b"1 )sleep( S"), Err(ParseStatError::NoComm)));
    }

    #[test]
    fn own_process_is_same_and_a_wrong_start_time_is_not() {
        let me = Pid::this();
        let st = stat(me).expect("own stat");
        assert_eq!(st.pid, me.as_raw());
        assert!(is_same_process(me, st.start_time).expect("check"));
        assert!(!is_same_process(me, st.start_time + 1).expect("check"));
    }

    #[test]
    fn a_missing_pid_is_not_the_same_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let procfs = Procfs::at(dir.path());
        assert!(!procfs.is_same_process(Pid::from_raw(4242), 1).expect("check"));
        std::fs::create_dir(dir.path().join("4242")).expect("mkdir");
        std::fs::write(dir.path().join("4242/stat"), line(4242, "x", 77)).expect("write");
        assert!(procfs.is_same_process(Pid::from_raw(4242), 77).expect("check"));
        std::fs::write(dir.path().join("4242/stat"), b"garbage").expect("write");
        assert!(matches!(procfs.is_same_process(Pid::from_raw(4242), 77), Err(ReadStatError::Parse { .. })));
    }

    #[test]
    fn signals_refuse_wildcard_pids() {
        assert_eq!(signal(Pid::from_raw(0), Signal::SIGTERM).expect_err("0").source, Errno::EINVAL);
        assert_eq!(signal(Pid::from_raw(-1), Signal::SIGTERM).expect_err("-1").source, Errno::EINVAL);
        assert_eq!(signal_group(Pid::from_raw(1), Signal::SIGTERM).expect_err("1").source, Errno::EINVAL);
    }

    #[test]
    fn signalling_a_reaped_child_says_gone() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
        child.wait().expect("wait");
        // The pid could in theory be reused at once; the check is about the error mapping.
        if let Err(e) = signal(pid, Signal::SIGCONT) {
            assert!(e.is_gone(), "{e}");
        }
    }

    proptest! {
        #[test]
        fn any_comm_round_trips(comm in "[^\u{0}]{0,15}", pid in 1i32..4_000_000, start in any::<u64>()) {
            let s = parse_stat(&line(pid, &comm, start)).expect("parse");
            prop_assert_eq!(s.comm, comm);
            prop_assert_eq!(s.pid, pid);
            prop_assert_eq!(s.start_time, start);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_stat(&bytes);
        }
    }
}
