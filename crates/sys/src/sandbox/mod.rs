//! The `unix-user` strategy's spawn: a command run as a dedicated uid/gid in its cgroup, with a
//! private mount namespace where the system is read-only, a private `/tmp`, its own PID
//! namespace, no_new_privs and rlimits.
//!
//! # How the child is made
//!
//! Not `std::process::Command` + `pre_exec`: std runs `pre_exec` closures *after* it has
//! changed uid and gid, too late for mounts, and a process cannot move itself into a new PID
//! namespace (`unshare(CLONE_NEWPID)` only affects its future children), so PID 1 would cost a
//! second fork and a waiting process outside the namespace. Instead [`spawn`] calls `clone3`
//! (falling back to `clone`) fork-style with `CLONE_NEWPID`: the child is PID 1 of its
//! namespace at birth and the caller's direct child. Between fork and exec it runs a plan built
//! in advance by the parent, using only async-signal-safe calls (see `child`).
//!
//! # Order of operations
//!
//! Parent, before the fork: validate the spec; open stdio (`/dev/null`, files, pipes) and move
//! those fds above 2; create the workdir if needed, `chown uid:gid`, `chmod 0700`; create a
//! close-on-exec report pipe; block all signals in the calling thread (restored right after),
//! so no handler of the caller's runs in the child.
//!
//! Child (`Step` in `plan`, in this order):
//! 1. reset every signal disposition to default (signals stay blocked);
//! 2. `setsid` — its own session and process group;
//! 3. `dup2` stdio onto 0, 1, 2;
//! 4. join the cgroup: write `0` to each `cgroup.procs` — first, so that everything after,
//!    including the tmpfs pages and the init, is charged to and limited by the group;
//! 5. `unshare(CLONE_NEWNS)`, then make `/` recursively *private* (not slave: a host mount
//!    appearing later would show up inside writable);
//! 6. `readonly_root`: `mount_setattr("/", AT_RECURSIVE, RDONLY | NOSUID)` — every mount,
//!    present ones included, read-only and nosuid (kernel ≥ 5.12);
//! 7. `private_tmp`: fresh tmpfs (nosuid, nodev, mode 1777) on `/tmp` and `/dev/shm`;
//! 8. bind the workdir onto itself and clear RDONLY on that one mount (nosuid, nodev);
//! 9. PID namespace: detach the host's `/proc` and mount a new one (nosuid, nodev, noexec) that
//!    shows only the sandbox; without one, `/proc` is made writable again. `/dev` stays the
//!    host's devtmpfs, read-only, which still lets `/dev/null`, `/dev/zero`, `/dev/urandom` and
//!    the tty be opened for writing (device nodes are not files on the read-only mount);
//! 10. rlimits, while still privileged (raising a hard limit needs CAP_SYS_RESOURCE);
//! 11. `setgroups([])`, `setresgid(gid)`, `setresuid(uid)` — last of the privileged steps; with
//!     all uids non-zero the kernel clears every capability;
//! 12. `prctl(PR_SET_NO_NEW_PRIVS)`;
//! 13. `chdir(workdir)` as the sandbox user (a workdir it cannot reach fails here, clearly);
//! 14. with [`PidNamespace::TinyInit`]: fork; the parent of that fork stays as the init (PID 1),
//!     the child (PID 2) goes on;
//! 15. every fd ≥ 3 close-on-exec, unblock signals, `execve`.
//!
//! A failing step writes its index and errno to the report pipe and exits 127; the parent reads
//! EOF (exec happened) or the report, which it turns into [`SpawnError::Setup`] naming the step
//! and its path.
//!
//! # The tiny init
//!
//! With [`PidNamespace::TinyInit`] the sandbox is two processes: the init (PID 1, comm
//! `enjin-init`, running as the sandbox uid under no_new_privs) and the program (PID 2). The
//! init reaps every zombie in the namespace, forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1,
//! SIGUSR2 and SIGWINCH to the program, and exits with the program's exit code (128 + N when a
//! signal N killed it), at which the kernel kills the rest of the namespace. It is a fork of the
//! caller that never execs (no binary to exec is assumed), so it starts sharing all of the
//! caller's memory copy-on-write and would keep an old copy of every page the caller writes
//! later; it therefore closes every fd and `MADV_DONTNEED`s all private anonymous memory except
//! its own stack before looping. Measured (`tests/sandbox.rs`,
//! `init_is_small_reaps_orphans_and_forwards_signals`, a caller holding 64 MiB that it rewrites
//! after the fork): RSS about 1.1 MB, nearly all of it the caller's code pages shared with the
//! page cache (PSS about 0.4 MB), and 24 kB private (Private_Clean + Private_Dirty in
//! `smaps_rollup`), plus its page tables and kernel stack. Without the trim the same init held
//! 65.5 MB private: a copy of everything the caller rewrote.
//! [`PidNamespace::ProgramIsInit`] costs no extra process when the program reaps its own
//! children and handles SIGTERM itself (PID 1 gets no default signal actions).

mod child;
mod plan;

use std::ffi::OsString;
use std::fs;
use std::io::{self, PipeReader, PipeWriter, Read as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

pub use nix::sys::resource::Resource;

use crate::cgroup::Group;
use crate::proc::SignalError;

/// How the sandbox relates to PID namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidNamespace {
    /// The caller's PID namespace: the sandbox sees (but, as another uid, cannot signal) every
    /// process on the host.
    Host,
    /// A new PID namespace where the program is PID 1. It must reap orphans and install its own
    /// SIGTERM handler: PID 1 gets no default signal actions.
    ProgramIsInit,
    /// A new PID namespace where a tiny init is PID 1 and the program PID 2 (see the module
    /// doc for what the init does and costs).
    TinyInit,
}

/// One resource limit; `u64::MAX` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// Which limit (`RLIMIT_NOFILE`, …), as `setrlimit(2)` names it.
    pub resource: Resource,
    /// The value enforced; the process may raise it up to `hard`.
    pub soft: u64,
    /// The ceiling, which the sandbox (unprivileged) can lower but never raise.
    pub hard: u64,
}

impl Rlimit {
    /// The same soft and hard limit.
    pub fn fixed(resource: Resource, limit: u64) -> Self {
        Self { resource, soft: limit, hard: limit }
    }
}

/// Where one of the sandbox's standard streams goes.
#[derive(Debug, Default)]
pub enum Stdio {
    /// `/dev/null`.
    #[default]
    Null,
    /// The caller's own stream.
    Inherit,
    /// A new pipe; the caller's end is in [`Sandbox::stdin`], [`Sandbox::stdout`] or
    /// [`Sandbox::stderr`].
    Piped,
    /// This fd (a file, a pipe end, a socket).
    Fd(OwnedFd),
}

impl From<fs::File> for Stdio {
    fn from(f: fs::File) -> Self {
        Self::Fd(f.into())
    }
}

impl From<PipeWriter> for Stdio {
    fn from(p: PipeWriter) -> Self {
        Self::Fd(p.into())
    }
}

impl From<OwnedFd> for Stdio {
    fn from(fd: OwnedFd) -> Self {
        Self::Fd(fd)
    }
}

/// What to run and how to lock it down.
#[derive(Debug)]
pub struct SandboxSpec {
    /// Absolute path of the executable (no `PATH` search: the environment is the sandbox's).
    pub program: PathBuf,
    /// Arguments after `argv[0]` (which is `program`).
    pub args: Vec<OsString>,
    /// The whole environment: nothing is inherited.
    pub env: Vec<(OsString, OsString)>,
    /// Numeric ids; no passwd entry is needed. Neither may be 0.
    pub uid: u32,
    /// The primary group; supplementary groups are cleared.
    pub gid: u32,
    /// The one writable place besides `/tmp`: created if missing, owned by uid:gid, mode 0700,
    /// bind-mounted writable. Its parent directories must be searchable by `uid`. With
    /// `private_tmp` it may not be under `/tmp` or `/dev/shm`.
    pub workdir: PathBuf,
    /// Fresh tmpfs mounts on `/tmp` and `/dev/shm`, seen by nobody else.
    pub private_tmp: bool,
    /// Every mount read-only and nosuid except the workdir, the private tmpfs mounts and `/proc`.
    pub readonly_root: bool,
    /// Whether the sandbox gets its own PID namespace, and who is PID 1 in it.
    pub pid_namespace: PidNamespace,
    /// `PR_SET_NO_NEW_PRIVS`: setuid bits and file capabilities never grant anything.
    pub no_new_privs: bool,
    /// Set in the child while it is still privileged, so a hard limit may be raised above the
    /// caller's; the program can then only lower them. An empty list keeps the caller's.
    pub rlimits: Vec<Rlimit>,
    /// `cgroup.procs` files to join before anything else (see [`SandboxSpec::join_cgroup`]).
    pub cgroup_procs: Vec<PathBuf>,
    /// A root of the sandbox's own instead of the host's (see [`Jail`]); `workdir` is then a
    /// path inside it and `readonly_root`/`private_tmp` do not apply.
    pub jail: Option<Jail>,
    /// Empty the capability bounding set, the ambient and the inheritable set before the uid
    /// changes, so nothing can ever be regained (setuid binaries, file capabilities).
    pub drop_capabilities: bool,
    /// Install the syscall filter of [`crate::seccomp`] last before exec (needs `no_new_privs`).
    pub seccomp: bool,
    /// With [`PidNamespace::TinyInit`]: stdout and stderr given as [`Stdio::Fd`] reach their
    /// files through pipes that the init copies, pausing while a file has more than this many
    /// bytes allocated — so the program's output can never take more of the host's disk than
    /// this per stream while the file's reader lags (the program's writes block instead).
    pub log_budget: Option<u64>,
    /// A network namespace to run in (such as `/run/netns/<name>`), joined before anything
    /// else; `None` keeps the caller's.
    pub netns: Option<PathBuf>,
    /// Where the program's fd 0 comes from.
    pub stdin: Stdio,
    /// Where the program's fd 1 goes (through the init's relay with `log_budget`).
    pub stdout: Stdio,
    /// Where the program's fd 2 goes (through the init's relay with `log_budget`).
    pub stderr: Stdio,
}

impl SandboxSpec {
    /// Everything locked down: private `/tmp`, read-only root, a PID namespace with the tiny
    /// init, no_new_privs and [`SandboxSpec::default_rlimits`]; empty environment, stdio to
    /// `/dev/null`, no cgroup.
    pub fn new(program: impl Into<PathBuf>, uid: u32, gid: u32, workdir: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            uid,
            gid,
            workdir: workdir.into(),
            private_tmp: true,
            readonly_root: true,
            pid_namespace: PidNamespace::TinyInit,
            no_new_privs: true,
            rlimits: Self::default_rlimits(),
            cgroup_procs: Vec::new(),
            jail: None,
            drop_capabilities: true,
            seccomp: true,
            log_budget: None,
            netns: None,
            stdin: Stdio::Null,
            stdout: Stdio::Null,
            stderr: Stdio::Null,
        }
    }

    /// No core dumps, 4096 open files, 1024 processes for the uid.
    pub fn default_rlimits() -> Vec<Rlimit> {
        vec![
            Rlimit::fixed(Resource::RLIMIT_CORE, 0),
            Rlimit::fixed(Resource::RLIMIT_NOFILE, 4096),
            Rlimit::fixed(Resource::RLIMIT_NPROC, 1024),
        ]
    }

    /// Joins `group` before exec.
    pub fn join_cgroup(&mut self, group: &dyn Group) {
        self.cgroup_procs = group.procs_files();
    }
}

/// The sandbox's own root, assembled in its mount namespace on a small read-only tmpfs and
/// entered with `pivot_root`; the host's root is then detached and nothing of it but the
/// system directories is reachable:
///
/// - `/usr`, `/bin`, `/sbin`, `/lib*`, `/etc`, `/opt` — the host's, bound read-only, nosuid,
///   nodev (top-level symlinks such as a merged `/usr`'s are recreated as symlinks);
/// - `app` (e.g. `/app`) — an overlay: `lower` (the package, read-only, root's) under a
///   writable layer on the instance's own size-limited filesystem ([`Writable`]), which is new
///   at every start;
/// - `/tmp` — a directory on that same filesystem, so the one size bounds the writable layer
///   and `/tmp` together;
/// - `/dev` — a read-only tmpfs holding only `null`, `zero`, `full`, `random`, `urandom`, `tty`,
///   a private devpts (`pts`, `ptmx`), a `shm` tmpfs of `shm_bytes`, and the `fd`, `stdin`,
///   `stdout`, `stderr` links;
/// - `/proc` of the sandbox's PID namespace; `/var/tmp` a link to `/tmp`. No `/sys`, no `/home`,
///   no `/root`, no `/var`, no `/run`.
#[derive(Debug, Clone)]
pub struct Jail {
    /// An empty directory on the host, root's alone, where the root is assembled (the tmpfs is
    /// mounted on it in the sandbox's mount namespace only).
    pub root: PathBuf,
    /// Where the app appears inside: one component under `/`, e.g. `/app`.
    pub app: PathBuf,
    /// The overlay's read-only lower layer, a host directory (the unpacked package, or an empty
    /// directory).
    pub lower: PathBuf,
    /// The writable filesystem.
    pub writable: Writable,
    /// Size of the `/dev/shm` tmpfs.
    pub shm_bytes: u64,
    /// A host file shown read-only as the jail's `/etc/resolv.conf` (the instance's own
    /// resolvers), when the host's `/etc/resolv.conf` is a regular file to mount it over;
    /// `None` shows the host's.
    pub resolv_conf: Option<PathBuf>,
}

/// The instance's writable filesystem, mounted in the sandbox's namespace on `mountpoint` (an
/// empty host directory, root's alone); its `upper`, `work` and `tmp` directories are made
/// there, fresh, before any program of the sandbox runs.
#[derive(Debug, Clone)]
pub enum Writable {
    /// An ext4 filesystem on a block device (a loop device over a sized image, see
    /// [`crate::disk`]): disk usage bounded by the kernel, `ENOSPC` past it.
    Device {
        /// The block device holding the ext4 filesystem, e.g. `/dev/loop3`.
        device: PathBuf,
        /// The empty host directory it is mounted on, in the sandbox's namespace only.
        mountpoint: PathBuf,
    },
    /// A tmpfs of `bytes` (memory-backed, charged to the sandbox's memory cgroup): for hosts
    /// without loop devices, and tests.
    Tmpfs {
        /// The tmpfs's size limit.
        bytes: u64,
        /// The empty host directory it is mounted on, in the sandbox's namespace only.
        mountpoint: PathBuf,
    },
}

impl Writable {
    /// The host directory the filesystem is mounted on (in the sandbox's namespace), whatever
    /// its kind.
    pub fn mountpoint(&self) -> &Path {
        match self {
            Writable::Device { mountpoint, .. } | Writable::Tmpfs { mountpoint, .. } => mountpoint,
        }
    }
}

/// The host directories a [`Jail`] shows read-only, when they exist.
pub const SYSTEM_DIRS: [&str; 9] =
    ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt"];

/// Why a sandbox could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The spec was refused before anything was forked: a uid or gid of 0, a relative path or
    /// one with `.` or `..`, a workdir that would expose too much, seccomp without
    /// no_new_privs, a jail without its own PID namespace, a NUL byte in an argument. The
    /// caller's mistake; retrying the same spec fails the same way.
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    /// The workdir (outside a jail) exists but is not a directory or is a symlink, or could
    /// not be created, chowned or chmodded.
    #[error("failed to prepare workdir {}: {source}", path.display())]
    Workdir {
        /// The workdir as given in the spec.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A pipe or fd the child needs could not be made or duplicated: a standard stream, a
    /// log relay pipe, the network namespace file, the report pipe.
    #[error("failed to set up {what} for {}: {source}", program.display())]
    Stdio {
        /// Which one (`stdin`, `a log pipe`, `the network namespace`, …).
        what: &'static str,
        /// The program the sandbox was for.
        program: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// `clone(2)` failed (`EAGAIN` at the process limit, `ENOMEM`, `EPERM` without the
    /// privilege for a new PID namespace); no child exists.
    #[error("failed to fork the sandbox for {}: {source}", program.display())]
    Clone {
        /// The program the sandbox was for.
        program: PathBuf,
        /// The error from `clone(2)`.
        source: Errno,
    },
    /// A setup step in the child failed, so the program never ran; the child has been
    /// reaped.
    #[error("sandbox for {} failed while {step}: {source}", program.display())]
    Setup {
        /// The program the sandbox was for.
        program: PathBuf,
        /// The failing step, described with its path or value (`mounting a tmpfs on /tmp`).
        step: String,
        /// The errno the step failed with.
        source: Errno,
    },
    /// Reading the child's report pipe failed, so whether setup succeeded is unknown; the
    /// child has been killed and reaped.
    #[error("failed to read the setup report of the sandbox for {}: {source}", program.display())]
    Report {
        /// The program the sandbox was for.
        program: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The seccomp filter could not be compiled: a bug in the rules, not in the spec.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// Why waiting failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to wait for sandbox pid {pid}: {source}")]
pub struct WaitError {
    /// The sandbox's pid (its init's, with [`PidNamespace::TinyInit`]).
    pub pid: Pid,
    /// The error from `waitpid(2)` or `poll(2)`; `ECHILD` if someone else reaped it.
    pub source: Errno,
}

/// A running (or exited, not yet reaped) sandbox. Dropping it neither kills nor reaps it.
#[derive(Debug)]
pub struct Sandbox {
    pid: Pid,
    start_time: u64,
    pidfd: Option<OwnedFd>,
    status: Option<ExitStatus>,
    has_init: bool,
    /// The write end of a [`Stdio::Piped`] stdin.
    pub stdin: Option<PipeWriter>,
    /// The read end of a [`Stdio::Piped`] stdout.
    pub stdout: Option<PipeReader>,
    /// The read end of a [`Stdio::Piped`] stderr.
    pub stderr: Option<PipeReader>,
}

impl Sandbox {
    /// The sandbox's PID 1 (the init or the program) as the caller sees it; killing it with
    /// SIGKILL ends the whole PID namespace.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Its start time (clock ticks after boot), to re-identify it with
    /// [`crate::proc::is_same_process`] after a restart.
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// Whether [`Sandbox::pid`] is the tiny init rather than the program.
    pub fn has_init(&self) -> bool {
        self.has_init
    }

    /// A pidfd, readable once the sandbox exits (for an event loop); `None` on kernels before
    /// 5.3.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }

    /// Sends a signal (through the pidfd when there is one, so a reused pid is never hit). The
    /// init forwards the usual termination signals to the program.
    pub fn signal(&self, signal: Signal) -> Result<(), SignalError> {
        let target = format!("sandbox pid {}", self.pid);
        if self.status.is_some() {
            // Reaped: the pid may already be someone else's.
            return Err(SignalError { target, signal, source: Errno::ESRCH });
        }
        match &self.pidfd {
            Some(fd) => {
                // SAFETY: pidfd_send_signal(2) on a pidfd we own, with no siginfo (null) and
                // no flags.
                let ret = unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        signal as libc::c_int,
                        std::ptr::null::<libc::siginfo_t>(),
                        0u32,
                    )
                };
                if ret == 0 { Ok(()) } else { Err(SignalError { target, signal, source: Errno::last() }) }
            }
            None => crate::proc::signal(self.pid, signal),
        }
    }

    /// SIGKILL: the whole sandbox dies (PID 1 of a namespace takes everything with it).
    pub fn kill(&self) -> Result<(), SignalError> {
        self.signal(Signal::SIGKILL)
    }

    /// Reaps the sandbox if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, WaitError> {
        self.wait_with(Some(WaitPidFlag::WNOHANG))
    }

    /// Blocks until the sandbox exits.
    pub fn wait(&mut self) -> Result<ExitStatus, WaitError> {
        loop {
            if let Some(status) = self.wait_with(None)? {
                return Ok(status);
            }
        }
    }

    /// Waits up to `timeout`; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, WaitError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match &self.pidfd {
                Some(fd) => {
                    let ms = u16::try_from(left.as_millis().min(10_000)).unwrap_or(10_000);
                    let mut fds = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
                    match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
                        Ok(_) | Err(Errno::EINTR) => {}
                        Err(source) => return Err(WaitError { pid: self.pid, source }),
                    }
                }
                None => std::thread::sleep(left.min(Duration::from_millis(10))),
            }
        }
    }

    fn wait_with(&mut self, flags: Option<WaitPidFlag>) -> Result<Option<ExitStatus>, WaitError> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        loop {
            match nix::sys::wait::waitpid(self.pid, flags) {
                Ok(WaitStatus::StillAlive) => return Ok(None),
                Ok(WaitStatus::Exited(_, code)) => {
                    self.status = Some(ExitStatus::from_raw((code & 0xff) << 8));
                }
                Ok(WaitStatus::Signaled(_, sig, core)) => {
                    self.status = Some(ExitStatus::from_raw(sig as i32 | if core { 0x80 } else { 0 }));
                }
                // Stopped/continued: keep waiting.
                Ok(_) => {
                    if flags.is_some() {
                        return Ok(None);
                    }
                    continue;
                }
                Err(Errno::EINTR) => continue,
                Err(source) => return Err(WaitError { pid: self.pid, source }),
            }
            return Ok(self.status);
        }
    }
}

/// Starts a sandbox (see the module doc for exactly what happens). Synchronous: run it on a
/// blocking thread.
pub fn spawn(mut spec: SandboxSpec) -> Result<Sandbox, SpawnError> {
    let program = spec.program.clone();
    let stdio_err = |what| {
        let program = program.clone();
        move |source| SpawnError::Stdio { what, program, source }
    };
    // The init's relay: the program writes into pipes, the init into the files.
    let mut relay = plan::Relay::default();
    let mut relay_fds: Vec<OwnedFd> = Vec::new();
    if let (Some(budget), PidNamespace::TinyInit) = (spec.log_budget, spec.pid_namespace) {
        relay.budget = budget;
        for (i, stdio) in [&mut spec.stdout, &mut spec.stderr].into_iter().enumerate() {
            if !matches!(stdio, Stdio::Fd(_)) {
                continue;
            }
            if let Stdio::Fd(file) = std::mem::take(stdio) {
                let (reader, writer) = io::pipe().map_err(stdio_err("a log pipe"))?;
                let reader = above_stdio(reader.into()).map_err(stdio_err("a log pipe"))?;
                let file = above_stdio(file).map_err(stdio_err("a log file"))?;
                if let Some(slot) = relay.pairs.get_mut(i) {
                    *slot = Some((reader.as_raw_fd(), file.as_raw_fd()));
                }
                relay_fds.push(reader);
                relay_fds.push(file);
                *stdio = Stdio::Fd(writer.into());
            }
        }
    }
    let (stdin_child, stdin_parent) =
        prepare_stdio(std::mem::take(&mut spec.stdin), true).map_err(stdio_err("stdin"))?;
    let (stdout_child, stdout_parent) =
        prepare_stdio(std::mem::take(&mut spec.stdout), false).map_err(stdio_err("stdout"))?;
    let (stderr_child, stderr_parent) =
        prepare_stdio(std::mem::take(&mut spec.stderr), false).map_err(stdio_err("stderr"))?;
    // Opened here, close-on-exec: the child joins it with setns and the program never sees it.
    let netns = match &spec.netns {
        Some(path) => Some(
            fs::File::open(path)
                .map(OwnedFd::from)
                .and_then(above_stdio)
                .map_err(stdio_err("the network namespace"))?,
        ),
        None => None,
    };
    let fds = plan::ChildFds {
        netns: netns.as_ref().map(AsRawFd::as_raw_fd),
        stdin: stdin_child.as_ref().map(AsRawFd::as_raw_fd),
        stdout: stdout_child.as_ref().map(AsRawFd::as_raw_fd),
        stderr: stderr_child.as_ref().map(AsRawFd::as_raw_fd),
    };
    let host = plan::Host {
        dev_shm: Path::new("/dev/shm").is_dir(),
        system: if spec.jail.is_some() { plan::system_dirs() } else { Vec::new() },
        resolv_conf_file: std::fs::symlink_metadata(plan::RESOLV_CONF).is_ok_and(|m| m.is_file()),
        filters: if spec.seccomp { seccomp_programs()? } else { Vec::new() },
    };
    let mut plan = plan::build(&spec, fds, host)?;
    plan.relay = relay;
    if spec.jail.is_none() {
        prepare_workdir(&spec)?;
    }

    let (report_read, report_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| stdio_err("the report pipe")(io::Error::from(e)))?;
    let report_write = above_stdio(report_write).map_err(stdio_err("the report pipe"))?;

    let flags =
        if spec.pid_namespace == PidNamespace::Host { CloneFlags::empty() } else { CloneFlags::CLONE_NEWPID };
    let mut old_mask = SigSet::empty();
    let blocked =
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut old_mask));
    let cloned = child::raw_clone(flags);
    if cloned == Ok(0) {
        // The child: never returns.
        child::run(&plan, report_write.as_raw_fd());
    }
    if blocked.is_ok() {
        let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
    }
    drop(report_write);
    drop((stdin_child, stdout_child, stderr_child));
    drop(relay_fds);
    drop(netns);
    let pid = Pid::from_raw(cloned.map_err(|source| SpawnError::Clone { program: program.clone(), source })?);

    let mut report = [0u8; child::Failure::WIRE_LEN];
    let mut got = 0;
    let mut file = fs::File::from(report_read);
    while got < report.len() {
        match file.read(&mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
                return Err(SpawnError::Report { program, source });
            }
        }
    }
    if got > 0 {
        // The child (or the program under the init) failed and exits 127; reap it.
        let _ = nix::sys::wait::waitpid(pid, None);
        let failure = child::Failure::from_wire(report);
        let step = plan
            .steps
            .get(failure.step)
            .map_or_else(|| format!("step {}", failure.step), |s| s.describe(&plan.exec));
        return Err(SpawnError::Setup { program, step, source: failure.errno });
    }

    // Race-free: the child is ours and unreaped, so the pid cannot have been reused.
    let pidfd = pidfd_open(pid);
    let start_time = crate::proc::start_time(pid).map_or(0, |t| t);
    Ok(Sandbox {
        pid,
        start_time,
        pidfd,
        status: None,
        has_init: spec.pid_namespace == PidNamespace::TinyInit,
        stdin: stdin_parent.and_then(|p| match p {
            ParentEnd::Writer(w) => Some(w),
            ParentEnd::Reader(_) => None,
        }),
        stdout: stdout_parent.and_then(ParentEnd::reader),
        stderr: stderr_parent.and_then(ParentEnd::reader),
    })
}

enum ParentEnd {
    Reader(PipeReader),
    Writer(PipeWriter),
}

impl ParentEnd {
    fn reader(self) -> Option<PipeReader> {
        match self {
            Self::Reader(r) => Some(r),
            Self::Writer(_) => None,
        }
    }
}

/// The child's fd (≥ 3, close-on-exec; `None` to inherit) and the parent's pipe end.
fn prepare_stdio(stdio: Stdio, input: bool) -> io::Result<(Option<OwnedFd>, Option<ParentEnd>)> {
    match stdio {
        Stdio::Inherit => Ok((None, None)),
        Stdio::Null => {
            let null = fs::OpenOptions::new().read(input).write(!input).open("/dev/null")?;
            Ok((Some(above_stdio(null.into())?), None))
        }
        Stdio::Fd(fd) => Ok((Some(above_stdio(fd)?), None)),
        Stdio::Piped => {
            let (reader, writer) = io::pipe()?;
            if input {
                Ok((Some(above_stdio(reader.into())?), Some(ParentEnd::Writer(writer))))
            } else {
                Ok((Some(above_stdio(writer.into())?), Some(ParentEnd::Reader(reader))))
            }
        }
    }
}

/// A close-on-exec duplicate of `fd` numbered 3 or more, so that the child's `dup2` onto 0, 1
/// and 2 can never clobber another of its sources.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    let raw: RawFd = nix::fcntl::fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn prepare_workdir(spec: &SandboxSpec) -> Result<(), SpawnError> {
    let path = &spec.workdir;
    let err = |source| SpawnError::Workdir { path: path.clone(), source };
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() || !meta.is_dir() => {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "it exists and is not a directory (symlinks are refused)",
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(path).map_err(err)?,
        Err(e) => return Err(err(e)),
    }
    std::os::unix::fs::lchown(path, Some(spec.uid), Some(spec.gid)).map_err(err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(err)?;
    Ok(())
}

/// The filter is the same for every sandbox: compiled once.
fn seccomp_programs() -> Result<Vec<seccompiler::BpfProgram>, crate::seccomp::SeccompError> {
    static PROGRAMS: std::sync::OnceLock<Result<Vec<seccompiler::BpfProgram>, String>> =
        std::sync::OnceLock::new();
    PROGRAMS
        .get_or_init(|| crate::seccomp::programs().map_err(|e| e.to_string()))
        .clone()
        .map_err(crate::seccomp::SeccompError::new)
}

fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0u32) };
    let raw = RawFd::try_from(ret).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just created this fd for us; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(raw) })
}
