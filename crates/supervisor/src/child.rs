//! A supervised child: what to run ([`ChildSpec`]), and how to run and stop it ([`Launcher`]).
//!
//! [`ProcessLauncher`] is the `process` strategy of DESIGN.md §6: a plain child process in its own
//! process group, with no isolation. It is the fallback without root. It reads `/proc` and
//! signals process groups through `enjin-sys`; the agent implements [`Launcher`] with the rest
//! of what `enjin-sys` offers (pidfds, cgroups, namespaces, a UNIX user per child) and takes its
//! place where the parent may use them.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::policy::{Exit, PolicyError, RestartPolicy};
use crate::probe::{self, ProbeSpec, ProbeSpecError};

/// A child's name among its siblings; also names its log files, so it is restricted to
/// `[A-Za-z0-9._-]`, at most 128 bytes, not starting with a dot. A uuid is a fine id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChildId(String);

/// Why a string is not a [`ChildId`]. Deserialising goes through [`ChildId::new`] too, so a
/// bad id in a spec or the state file fails with one of these messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChildIdError {
    /// The id is the empty string.
    #[error("child id must not be empty")]
    Empty,
    /// The id is over 128 bytes (bytes, not characters).
    #[error("child id {id:?} is longer than 128 bytes")]
    TooLong {
        /// The rejected id, whole.
        id: String,
    },
    /// The id has a character outside `[A-Za-z0-9._-]` or starts with a dot, so it could
    /// escape the log directory or make a hidden file there.
    #[error(
        "child id {id:?} may only contain letters, digits, '.', '_' and '-', and must not start with '.'"
    )]
    Invalid {
        /// The rejected id.
        id: String,
    },
}

impl ChildId {
    /// Checks `id` against the rules above; this is the only way to make a `ChildId`.
    pub fn new(id: impl Into<String>) -> Result<Self, ChildIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(ChildIdError::Empty);
        }
        if id.len() > 128 {
            return Err(ChildIdError::TooLong { id });
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if id.starts_with('.') || !id.chars().all(ok) {
            return Err(ChildIdError::Invalid { id });
        }
        Ok(ChildId(id))
    }

    /// The id as validated, safe to use as a file name component.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A stable 64-bit hash (FNV-1a) of the id; seeds the restart jitter.
    pub fn seed(&self) -> u64 {
        self.0.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    }
}

impl TryFrom<String> for ChildId {
    type Error = ChildIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ChildId::new(s)
    }
}

impl From<ChildId> for String {
    fn from(id: ChildId) -> String {
        id.0
    }
}

impl fmt::Display for ChildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The signals a supervisor sends; numbers are Linux's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Signal {
    /// SIGHUP (1); many daemons take it as "reload your configuration".
    Hup,
    /// SIGINT (2), what Ctrl-C sends.
    Int,
    /// SIGQUIT (3); some runtimes dump their threads' stacks on it.
    Quit,
    /// SIGKILL (9): cannot be caught; the end of every stop whose grace ran out.
    Kill,
    /// SIGUSR1 (10), meaning whatever the program decides.
    Usr1,
    /// SIGUSR2 (12), meaning whatever the program decides.
    Usr2,
    /// SIGTERM (15), the default stop signal: asks the program to exit cleanly.
    #[default]
    Term,
}

impl Signal {
    const ALL: [Signal; 7] =
        [Signal::Hup, Signal::Int, Signal::Quit, Signal::Kill, Signal::Usr1, Signal::Usr2, Signal::Term];

    /// The signal number on Linux (x86-64 and arm64 agree on these seven).
    pub fn number(self) -> i32 {
        match self {
            Signal::Hup => 1,
            Signal::Int => 2,
            Signal::Quit => 3,
            Signal::Kill => 9,
            Signal::Usr1 => 10,
            Signal::Usr2 => 12,
            Signal::Term => 15,
        }
    }

    /// The name without the `SIG` prefix, as `kill -s` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Hup => "HUP",
            Signal::Int => "INT",
            Signal::Quit => "QUIT",
            Signal::Kill => "KILL",
            Signal::Usr1 => "USR1",
            Signal::Usr2 => "USR2",
            Signal::Term => "TERM",
        }
    }

    /// The inverse of [`number`](Self::number); `None` for a signal this enum does not name,
    /// which [`Exit::Signal`] may still carry.
    pub fn from_number(n: i32) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.number() == n)
    }

    /// The same signal as the kernel's interfaces name it.
    pub fn to_nix(self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal as S;
        match self {
            Signal::Hup => S::SIGHUP,
            Signal::Int => S::SIGINT,
            Signal::Quit => S::SIGQUIT,
            Signal::Kill => S::SIGKILL,
            Signal::Usr1 => S::SIGUSR1,
            Signal::Usr2 => S::SIGUSR2,
            Signal::Term => S::SIGTERM,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIG{}", self.name())
    }
}

/// How a child is stopped: `signal` to its whole process group, then SIGKILL to the group if
/// anything in it is still alive after `grace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopSpec {
    /// Sent first, to the whole group; SIGTERM when the spec leaves it out.
    #[serde(default)]
    pub signal: Signal,
    /// How long the group has to exit after `signal` before SIGKILL (10 s by default); written
    /// as `grace_ms`, whole milliseconds.
    #[serde(rename = "grace_ms", with = "crate::serde_ms")]
    pub grace: Duration,
}

impl Default for StopSpec {
    fn default() -> Self {
        StopSpec { signal: Signal::Term, grace: Duration::from_secs(10) }
    }
}

/// What to run and how to keep it running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildSpec {
    /// Names the child among its supervisor's children; the key of `ensure`, `remove` and the
    /// state file.
    pub id: ChildId,
    /// Program and arguments; the program is looked up in `PATH` unless it contains a slash.
    pub command: Vec<String>,
    /// Variables set for the child, on top of the inherited environment when `inherit_env` is
    /// set. Names must be non-empty and free of `=` and NUL. Values may be secrets: the state
    /// file that records them is private to the supervisor's user.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Whether the child also sees the supervisor's own environment. Launchers that sandbox
    /// tenants ignore this and give them only `env`.
    #[serde(default = "yes")]
    pub inherit_env: bool,
    /// The working directory; `None` keeps the launcher's own (the supervisor's for
    /// [`ProcessLauncher`]).
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// Whether and how soon the child comes back after it exits.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// How the child is stopped when it is removed, replaced or the supervisor shuts down.
    #[serde(default)]
    pub stop: StopSpec,
    /// A health check; `None` means the child counts as running as soon as its process starts.
    #[serde(default)]
    pub probe: Option<ProbeSpec>,
}

fn yes() -> bool {
    true
}

/// Why a [`ChildSpec`] cannot be run, from [`ChildSpec::validate`]. The spec's author is at
/// fault; sending it again unchanged fails the same way.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// `command` is empty, or its program is the empty string.
    #[error("child {id} has an empty command")]
    EmptyCommand {
        /// The child whose spec was rejected.
        id: ChildId,
    },
    /// An argument or an environment value holds a NUL byte, which exec(2) cannot pass.
    #[error("child {id} has a command or environment containing a NUL byte")]
    Nul {
        /// The child whose spec was rejected.
        id: ChildId,
    },
    /// An environment variable name is empty or holds `=` or NUL.
    #[error("child {id} has an invalid environment variable name {name:?}")]
    EnvName {
        /// The child whose spec was rejected.
        id: ChildId,
        /// The offending name.
        name: String,
    },
    /// The restart policy is inconsistent (see [`PolicyError`]).
    #[error("child {id} has an invalid restart policy: {source}")]
    Policy {
        /// The child whose spec was rejected.
        id: ChildId,
        /// What is wrong with the policy.
        source: PolicyError,
    },
    /// The probe is inconsistent (see [`ProbeSpecError`]).
    #[error("child {id} has an invalid probe: {source}")]
    Probe {
        /// The child whose spec was rejected.
        id: ChildId,
        /// What is wrong with the probe.
        source: ProbeSpecError,
    },
}

impl ChildSpec {
    /// A permanent child with default policy, stop and no probe.
    pub fn new(id: ChildId, command: Vec<String>) -> Self {
        ChildSpec {
            id,
            command,
            env: BTreeMap::new(),
            inherit_env: true,
            workdir: None,
            restart: RestartPolicy::default(),
            stop: StopSpec::default(),
            probe: None,
        }
    }

    /// Checks what serde cannot: a non-empty command, no NUL bytes, valid variable names, a
    /// sane policy and probe. It does not look for the program or the workdir; a missing one
    /// shows up as a [`LaunchError::Spawn`]. [`SupervisorHandle::ensure`] calls it, so an
    /// invalid spec is refused before anything is stopped or started; [`ProcessLauncher`]
    /// checks again before it launches.
    ///
    /// [`SupervisorHandle::ensure`]: crate::SupervisorHandle::ensure
    pub fn validate(&self) -> Result<(), SpecError> {
        let id = || self.id.clone();
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(SpecError::EmptyCommand { id: id() });
        }
        let nul = |s: &String| s.contains('\0');
        if self.command.iter().any(nul) || self.env.values().any(nul) {
            return Err(SpecError::Nul { id: id() });
        }
        if let Some(name) = self.env.keys().find(|k| k.is_empty() || k.contains('=') || k.contains('\0')) {
            return Err(SpecError::EnvName { id: id(), name: name.clone() });
        }
        self.restart.validate().map_err(|source| SpecError::Policy { id: id(), source })?;
        if let Some(p) = &self.probe {
            p.validate().map_err(|source| SpecError::Probe { id: id(), source })?;
        }
        Ok(())
    }

    /// A hash of everything in the spec; a child whose hash changed is restarted.
    pub fn hash(&self) -> SpecHash {
        // A struct of plain fields and BTreeMaps always serialises, and in a stable order.
        let json = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&json);
        SpecHash(digest.iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// Hex SHA-256 of a spec's JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpecHash(String);

impl SpecHash {
    /// The 64 lowercase hex digits (empty for [`unknown`](Self::unknown)); `Display` shows
    /// only the first 12.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The spec of a process found without a record is not known: this hash matches no spec,
    /// so such a child is replaced (stopped, then started anew) once adopted.
    pub fn unknown() -> Self {
        SpecHash(String::new())
    }
}

impl fmt::Display for SpecHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get(..12).unwrap_or(&self.0))
    }
}

/// A running child's process: the leader's pid and start time (together they name one process
/// for as long as the machine is up) and its process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessHandle {
    /// The leader's pid, as seen from the supervisor's pid namespace.
    pub pid: u32,
    /// The process group every signal goes to; equal to `pid` for a child launched in a group of
    /// its own, as [`Launcher::launch`] requires.
    pub pgid: u32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot.
    pub start_time: u64,
}

/// Resolves when the launched process exits. For a launcher's own child this is a real wait;
/// the supervisor polls it on its runtime, never on a thread of its own.
pub struct ExitWaiter(Pin<Box<dyn Future<Output = io::Result<Exit>> + Send>>);

impl ExitWaiter {
    /// Wraps the future a launcher built to wait for its process; an `Err` is reported as an
    /// exit with an unknown status.
    pub fn new(wait: impl Future<Output = io::Result<Exit>> + Send + 'static) -> Self {
        ExitWaiter(Box::pin(wait))
    }
}

impl Future for ExitWaiter {
    type Output = io::Result<Exit>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for ExitWaiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExitWaiter")
    }
}

/// A freshly started child.
#[derive(Debug)]
pub struct Launched {
    /// Identifies the process from now on; recorded in the state file.
    pub process: ProcessHandle,
    /// Resolves with the leader's exit; the supervisor awaits it on a task of its own.
    pub waiter: ExitWaiter,
}

/// Why [`Launcher::launch`] started no process. The supervisor treats every one as an exit with
/// an unknown status, so the child's restart policy decides whether it is tried again.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The spec is invalid; retrying the same spec cannot help.
    #[error("child {id} was not launched: {source}")]
    Spec {
        /// The child that was not launched.
        id: ChildId,
        /// What is wrong with its spec.
        source: SpecError,
    },
    /// The log directory or a log file could not be created or written.
    #[error("failed to open log file {path}: {source}")]
    Log {
        /// The log file, or the log directory when creating it failed.
        path: PathBuf,
        /// The error from the filesystem.
        source: io::Error,
    },
    /// fork/exec failed: the program is missing or not executable, the workdir is missing, or
    /// the machine is out of processes. Also used when a launcher panicked (empty `program`).
    #[error("failed to start {program:?} for child {id}: {source}")]
    Spawn {
        /// The child that was not launched.
        id: ChildId,
        /// `command[0]` as given in the spec.
        program: String,
        /// The error from spawning.
        source: io::Error,
    },
    /// The process was spawned but has no pid, which means it was already reaped.
    #[error("child {id} started but its pid is unknown")]
    NoPid {
        /// The child whose process was lost.
        id: ChildId,
    },
    /// The process was spawned but `/proc/<pid>/stat` could not be read; the launcher has
    /// already sent it SIGKILL, since a process without a start time could not be told apart
    /// from a later one with the same pid.
    #[error("child {id} started as pid {pid} but its start time is unreadable: {source}")]
    StartTime {
        /// The child whose process was killed.
        id: ChildId,
        /// The pid it had.
        pid: u32,
        /// Why the stat file was unreadable.
        source: probe::ReadStatError,
    },
    /// [`ProcessLauncher`] was called outside a tokio runtime, where its exit waiter could not
    /// be built; a programming error, not a property of the child.
    #[error("child {id} must be launched from a thread of a tokio runtime")]
    NoRuntime {
        /// The child that was not launched.
        id: ChildId,
    },
}

/// Why [`Launcher::signal`] sent nothing.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The group id is 0 or 1: killpg would hit the caller's own group or every process it may
    /// signal. A corrupt record, never a real child.
    #[error("refusing to signal process group {pgid}: it is not a child's group")]
    InvalidGroup {
        /// The refused group id.
        pgid: u32,
    },
    /// ESRCH: every process of the group is gone. Stopping treats this as success.
    #[error("no process left in group {pgid}")]
    NoSuchProcess {
        /// The empty group.
        pgid: u32,
    },
    /// Any other failure, typically EPERM: the group belongs to a user the supervisor may not
    /// signal.
    #[error("failed to send {signal} to process group {pgid}: {reason}")]
    Failed {
        /// The signal that was not sent.
        signal: Signal,
        /// The group it was meant for.
        pgid: u32,
        /// The system's error, as text.
        reason: String,
    },
}

/// Why [`Launcher::stop`] could not make the group go away. The supervisor keeps the child in
/// its stopping state and tries again after [`SupervisorConfig::stop_retry`].
///
/// [`SupervisorConfig::stop_retry`]: crate::SupervisorConfig::stop_retry
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The stop signal or SIGKILL could not be sent.
    #[error("failed to stop pid {pid}: {source}")]
    Signal {
        /// The group's leader.
        pid: u32,
        /// Why the signal was not sent.
        source: SignalError,
    },
    /// Something in the group was still alive 5 s after SIGKILL, typically stuck in
    /// uninterruptible sleep (a dead NFS mount, a hung disk).
    #[error("process group {pgid} survived SIGKILL for {waited:?}")]
    Survived {
        /// The group that would not die.
        pgid: u32,
        /// How long the stop waited after SIGKILL.
        waited: Duration,
    },
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Nothing was left to stop.
    AlreadyGone,
    /// The whole group exited within the grace period after the stop signal.
    Graceful {
        /// The stop signal that was sent.
        signal: Signal,
        /// From the start of the stop to the group being gone.
        after: Duration,
    },
    /// Something was still alive after the grace period and the group was killed.
    Killed {
        /// The stop signal that was ignored (or not acted on in time).
        signal: Signal,
        /// The grace the group had before SIGKILL.
        grace: Duration,
    },
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stopped::AlreadyGone => f.write_str("already gone"),
            Stopped::Graceful { signal, after } => write!(f, "exited {after:?} after {signal}"),
            Stopped::Killed { signal, grace } => {
                write!(f, "still running {grace:?} after {signal}; killed with SIGKILL")
            }
        }
    }
}

/// How long to wait for a group to vanish after SIGKILL before calling it a failure.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often a stop checks whether the group is gone.
const STOP_POLL: Duration = Duration::from_millis(20);

/// Starts and stops children's processes. Every method blocks (fork/exec, signals, /proc reads)
/// and is called on a blocking thread of the supervisor's runtime.
pub trait Launcher: Send + Sync + fmt::Debug + 'static {
    /// Starts the child in a process group of its own; the group id is the leader's pid.
    fn launch(&self, spec: &ChildSpec) -> Result<Launched, LaunchError>;

    /// Sends `signal` to every process in the child's process group.
    fn signal(&self, process: &ProcessHandle, signal: Signal) -> Result<(), SignalError>;

    /// A live process of this child that nobody recorded: a supervisor killed between starting
    /// it and writing its record leaves one behind. Launchers that can tell (a cgroup per child)
    /// answer, so the child is adopted instead of started a second time; others never find one.
    fn find(&self, _spec: &ChildSpec) -> Option<ProcessHandle> {
        None
    }

    /// Whether the leader is still the process that was launched: same pid, same start time, not
    /// a zombie. This is how adopted children (not our children, so not waitable) are watched.
    fn is_alive(&self, process: &ProcessHandle) -> bool {
        probe::process_alive(process.pid, process.start_time)
    }

    /// Whether any process in the child's group is still alive (zombies do not count).
    fn group_alive(&self, process: &ProcessHandle) -> bool {
        probe::group_alive(process.pgid)
    }

    /// Graceful stop: `stop.signal` to the group, up to `stop.grace` for the whole group to exit,
    /// then SIGKILL to the group.
    fn stop(&self, process: &ProcessHandle, stop: &StopSpec) -> Result<Stopped, StopError> {
        let started = Instant::now();
        if !self.group_alive(process) {
            return Ok(Stopped::AlreadyGone);
        }
        match self.signal(process, stop.signal) {
            Ok(()) => {}
            Err(SignalError::NoSuchProcess { .. }) => return Ok(Stopped::AlreadyGone),
            Err(source) => return Err(StopError::Signal { pid: process.pid, source }),
        }
        if wait_until_gone(self, process, stop.grace) {
            return Ok(Stopped::Graceful { signal: stop.signal, after: started.elapsed() });
        }
        match self.signal(process, Signal::Kill) {
            Ok(()) | Err(SignalError::NoSuchProcess { .. }) => {}
            Err(source) => return Err(StopError::Signal { pid: process.pid, source }),
        }
        if wait_until_gone(self, process, KILL_WAIT) {
            Ok(Stopped::Killed { signal: stop.signal, grace: stop.grace })
        } else {
            Err(StopError::Survived { pgid: process.pgid, waited: KILL_WAIT })
        }
    }
}

fn wait_until_gone<L: Launcher + ?Sized>(launcher: &L, process: &ProcessHandle, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !launcher.group_alive(process) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(STOP_POLL.min(deadline - now));
    }
}

/// The `process` strategy: a plain child process in its own process group, stdout and stderr
/// appended to `<log_dir>/<id>.stdout.log` and `<id>.stderr.log`.
///
/// Output goes straight to the files, not through pipes: a pipe would tie the child's life to
/// the supervisor's (SIGPIPE once the supervisor is gone), and children must outlive an agent
/// restart to be re-adopted. So lines carry no timestamps; each start is marked by a header line.
///
/// Signals go to the child's whole process group with killpg(2), through `enjin-sys`.
#[derive(Debug, Clone)]
pub struct ProcessLauncher {
    log_dir: PathBuf,
}

impl ProcessLauncher {
    /// A launcher writing logs under `log_dir`, which is created on the first launch.
    pub fn new(log_dir: impl Into<PathBuf>) -> Self {
        ProcessLauncher { log_dir: log_dir.into() }
    }

    /// Where the child's stdout and stderr go.
    pub fn log_paths(&self, id: &ChildId) -> (PathBuf, PathBuf) {
        (self.log_dir.join(format!("{id}.stdout.log")), self.log_dir.join(format!("{id}.stderr.log")))
    }

    fn open_log(path: &Path, header: &str) -> Result<File, LaunchError> {
        let log = |source| LaunchError::Log { path: path.to_owned(), source };
        let mut file = OpenOptions::new().create(true).append(true).open(path).map_err(log)?;
        file.write_all(header.as_bytes()).map_err(log)?;
        Ok(file)
    }
}

impl Launcher for ProcessLauncher {
    fn launch(&self, spec: &ChildSpec) -> Result<Launched, LaunchError> {
        let id = &spec.id;
        spec.validate().map_err(|source| LaunchError::Spec { id: id.clone(), source })?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(LaunchError::NoRuntime { id: id.clone() });
        }
        std::fs::create_dir_all(&self.log_dir)
            .map_err(|source| LaunchError::Log { path: self.log_dir.clone(), source })?;
        let (out_path, err_path) = self.log_paths(id);
        let header = format!(
            "--- {} enjin-supervisor: starting {id}: {:?}\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            spec.command
        );
        let stdout = Self::open_log(&out_path, &header)?;
        let stderr = Self::open_log(&err_path, &header)?;

        let program = &spec.command[0];
        let mut cmd = std::process::Command::new(program);
        cmd.args(&spec.command[1..]);
        if !spec.inherit_env {
            cmd.env_clear();
        }
        cmd.envs(&spec.env);
        if let Some(dir) = &spec.workdir {
            cmd.current_dir(dir);
        }
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr).process_group(0);
        let mut cmd = tokio::process::Command::from(cmd);
        // The child must outlive us to be re-adopted: never kill it when its handle goes.
        cmd.kill_on_drop(false);
        let spawn = |source| LaunchError::Spawn { id: id.clone(), program: program.clone(), source };
        let mut child = cmd.spawn().map_err(spawn)?;
        let Some(pid) = child.id() else {
            return Err(LaunchError::NoPid { id: id.clone() });
        };
        // The leader is unreaped until its waiter runs, so its stat is there even if it already
        // exited.
        let start_time = match probe::read_stat(pid) {
            Ok(stat) => stat.start_time,
            Err(source) => {
                let _ = child.start_kill();
                return Err(LaunchError::StartTime { id: id.clone(), pid, source });
            }
        };
        let waiter = ExitWaiter::new(async move { child.wait().await.map(Exit::from_std) });
        Ok(Launched { process: ProcessHandle { pid, pgid: pid, start_time }, waiter })
    }

    fn signal(&self, process: &ProcessHandle, signal: Signal) -> Result<(), SignalError> {
        let pgid = process.pgid;
        // `kill -- -1` would signal every process we may signal.
        if pgid <= 1 {
            return Err(SignalError::InvalidGroup { pgid });
        }
        match enjin_sys::proc::signal_group(probe::as_pid(pgid), signal.to_nix()) {
            Ok(()) => Ok(()),
            Err(e) if e.is_gone() => Err(SignalError::NoSuchProcess { pgid }),
            Err(e) => Err(SignalError::Failed { signal, pgid, reason: e.to_string() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(ChildId::new("web.1_a-b").is_ok());
        assert!(ChildId::new("0f0c6f4e-8a1b-4c5e-9b59-2d8f7c1e0a11").is_ok());
        assert_eq!(ChildId::new(""), Err(ChildIdError::Empty));
        assert!(matches!(ChildId::new(".hidden"), Err(ChildIdError::Invalid { .. })));
        assert!(matches!(ChildId::new("a/b"), Err(ChildIdError::Invalid { .. })));
        assert!(matches!(ChildId::new("x".repeat(129)), Err(ChildIdError::TooLong { .. })));
        let err: Result<ChildId, _> = serde_json::from_str("\"../etc\"");
        assert!(err.is_err());
    }

    #[test]
    fn spec_hash_tracks_every_field() {
        let id = ChildId::new("web").expect("id");
        let a = ChildSpec::new(id, vec!["sleep".into(), "1".into()]);
        let mut b = a.clone();
        assert_eq!(a.hash(), b.hash());
        b.env.insert("PORT".into(), "8080".into());
        assert_ne!(a.hash(), b.hash());
        let mut c = a.clone();
        c.stop.grace = Duration::from_secs(1);
        assert_ne!(a.hash(), c.hash());
        let json = serde_json::to_string(&a).expect("serialise");
        let back: ChildSpec = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.hash(), a.hash());
    }

    #[test]
    fn spec_validation() {
        let id = ChildId::new("web").expect("id");
        let empty = ChildSpec::new(id.clone(), vec![]);
        assert_eq!(
            empty.validate().expect_err("empty command").to_string(),
            "child web has an empty command"
        );
        let mut env = ChildSpec::new(id, vec!["true".into()]);
        env.env.insert("A=B".into(), "c".into());
        assert!(matches!(env.validate(), Err(SpecError::EnvName { .. })));
    }

    #[test]
    fn signals() {
        for s in Signal::ALL {
            assert_eq!(Signal::from_number(s.number()), Some(s));
        }
        assert_eq!(Exit::Signal(9).to_string(), "signal 9 (SIGKILL)");
        assert_eq!(serde_json::to_string(&Signal::Term).expect("json"), "\"TERM\"");
    }

    #[test]
    fn refuses_to_signal_every_process() {
        let l = ProcessLauncher::new("/nonexistent");
        for pgid in [0, 1] {
            let p = ProcessHandle { pid: 1, pgid, start_time: 0 };
            assert!(matches!(l.signal(&p, Signal::Kill), Err(SignalError::InvalidGroup { .. })));
        }
    }
}
