//! The spawn as data: [`build`] validates a [`SandboxSpec`] and turns it into the ordered list of
//! [`Step`]s the child will run, with every string already a `CString` and every pointer array
//! already built, because the child may not allocate. Building the plan is pure, so the order of
//! operations is unit-tested without root (see `child::tests`).

use std::ffi::{CString, OsStr};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use libc::c_char;
use nix::sys::resource::Resource;

use super::{PidNamespace, SandboxSpec, SpawnError};

/// One thing the child does. The order in [`Plan::steps`] is the order it happens in.
#[derive(Debug)]
pub(crate) enum Step {
    /// Every signal back to its default disposition (an ignored SIGPIPE would survive exec);
    /// signals stay blocked until just before exec.
    ResetSignals,
    /// `setsid`: its own session and process group, so a terminal or the caller's group
    /// signals never reach it and `kill(-pgid)` reaches all of it.
    NewSession,
    /// `dup2(from, to)` for stdin, stdout and stderr.
    Dup2 { from: RawFd, to: RawFd },
    /// Writes `0` (itself) to a cgroup's `cgroup.procs`.
    JoinCgroup { procs: CString },
    /// `unshare(CLONE_NEWNS)`.
    UnshareMountNs,
    /// `mount(NULL, "/", NULL, MS_REC | MS_PRIVATE)`: nothing we mount leaks to the host and
    /// nothing the host mounts later appears (writable) inside.
    MakeMountsPrivate,
    /// `mount_setattr("/", AT_RECURSIVE, RDONLY | NOSUID)`: every mount read-only and nosuid.
    ReadonlyRoot,
    /// A fresh tmpfs (nosuid, nodev) on `target`.
    MountTmpfs { target: CString, data: CString },
    /// Binds `path` onto itself and makes that one mount writable (nosuid, nodev).
    BindWritable { path: CString },
    /// Detaches the host's `/proc` and mounts one for the new PID namespace.
    MountProc,
    /// Makes the mount at `path` writable again (without a PID namespace `/proc` stays the
    /// host's, writable like it).
    MakeWritable { path: CString },
    /// `setrlimit`.
    Rlimit { resource: Resource, soft: u64, hard: u64 },
    /// `setgroups(0, NULL)`.
    DropGroups,
    /// `setresgid(gid, gid, gid)`.
    SetGid(u32),
    /// `setresuid(uid, uid, uid)`; with all three ids non-zero the kernel clears every
    /// capability.
    SetUid(u32),
    /// `prctl(PR_SET_NO_NEW_PRIVS, 1)`: exec can never grant privileges (setuid bits, file
    /// capabilities).
    NoNewPrivs,
    /// `chdir` into the workdir (after the mounts, so the cwd is the writable bind mount).
    Chdir { path: CString },
    /// Forks: the parent stays behind as the tiny init (PID 1), the child goes on as the
    /// program (PID 2).
    StartInit,
    /// Marks every fd from 3 up close-on-exec.
    CloseFds,
    /// Unblocks every signal.
    UnblockSignals,
    /// `execve`.
    Exec,
}

/// What `execve` gets. The pointer arrays point into the `CString`s kept alongside.
#[derive(Debug)]
pub(crate) struct ExecArgs {
    pub program: CString,
    _args: Vec<CString>,
    _env: Vec<CString>,
    pub argv: Vec<*const c_char>,
    pub envp: Vec<*const c_char>,
}

/// The whole child side.
#[derive(Debug)]
pub(crate) struct Plan {
    pub steps: Vec<Step>,
    pub exec: ExecArgs,
}

/// The fds the parent prepared for the child's stdio (`None`: inherit).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ChildFds {
    pub stdin: Option<RawFd>,
    pub stdout: Option<RawFd>,
    pub stderr: Option<RawFd>,
}

fn invalid(msg: impl Into<String>) -> SpawnError {
    SpawnError::InvalidSpec(msg.into())
}

pub(crate) fn cstring(what: &str, bytes: &[u8]) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| invalid(format!("{what} contains a NUL byte")))
}

fn path_cstring(what: &str, path: &Path) -> Result<CString, SpawnError> {
    cstring(what, path.as_os_str().as_bytes())
}

/// An absolute path without `.` or `..`.
fn check_clean_absolute(what: &str, path: &Path) -> Result<(), SpawnError> {
    if !path.is_absolute() {
        return Err(invalid(format!("{what} {} is not an absolute path", path.display())));
    }
    if path.components().any(|c| matches!(c, Component::CurDir | Component::ParentDir)) {
        return Err(invalid(format!("{what} {} contains . or ..", path.display())));
    }
    Ok(())
}

/// `/tmp` and `/dev/shm` are replaced by fresh tmpfs mounts when `private_tmp` is on.
pub(crate) const PRIVATE_TMP_DIRS: [&str; 2] = ["/tmp", "/dev/shm"];

/// Validates `spec` and lays out the child's steps. `dev_shm` says whether the host has
/// `/dev/shm` (the parent checks; the plan stays pure).
pub(crate) fn build(spec: &SandboxSpec, fds: ChildFds, dev_shm: bool) -> Result<Plan, SpawnError> {
    check_clean_absolute("program", &spec.program)?;
    check_clean_absolute("workdir", &spec.workdir)?;
    if spec.workdir == Path::new("/") {
        return Err(invalid("workdir / would leave the whole root writable"));
    }
    if spec.uid == 0 || spec.gid == 0 {
        return Err(invalid(format!(
            "uid {} gid {}: a sandbox never runs as root or the root group",
            spec.uid, spec.gid
        )));
    }
    if spec.private_tmp {
        for dir in PRIVATE_TMP_DIRS {
            if spec.workdir.starts_with(dir) {
                return Err(invalid(format!(
                    "workdir {} is under {dir}, which private_tmp replaces with an empty tmpfs",
                    spec.workdir.display()
                )));
            }
        }
    }
    if spec.workdir.starts_with("/proc") {
        return Err(invalid(format!("workdir {} is under /proc", spec.workdir.display())));
    }
    for procs in &spec.cgroup_procs {
        check_clean_absolute("cgroup procs file", procs)?;
    }

    let pid_ns = spec.pid_namespace != PidNamespace::Host;
    let mount_ns = spec.readonly_root || spec.private_tmp || pid_ns;
    let workdir = path_cstring("workdir", &spec.workdir)?;

    let mut steps = vec![Step::ResetSignals, Step::NewSession];
    for (from, to) in [(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)] {
        if let Some(from) = from {
            steps.push(Step::Dup2 { from, to });
        }
    }
    // The cgroup first: everything the child does from here on (mounting a tmpfs, the init,
    // the program) is charged to and limited by the group.
    for procs in &spec.cgroup_procs {
        steps.push(Step::JoinCgroup { procs: path_cstring("cgroup procs file", procs)? });
    }
    if mount_ns {
        steps.push(Step::UnshareMountNs);
        steps.push(Step::MakeMountsPrivate);
    }
    if spec.readonly_root {
        steps.push(Step::ReadonlyRoot);
    }
    if spec.private_tmp {
        for dir in PRIVATE_TMP_DIRS {
            if dir == "/dev/shm" && !dev_shm {
                continue;
            }
            steps.push(Step::MountTmpfs {
                target: cstring("tmp dir", dir.as_bytes())?,
                data: cstring("tmpfs options", b"mode=1777")?,
            });
        }
    }
    if spec.readonly_root {
        steps.push(Step::BindWritable { path: workdir.clone() });
    }
    if pid_ns {
        steps.push(Step::MountProc);
    } else if spec.readonly_root {
        steps.push(Step::MakeWritable { path: cstring("proc", b"/proc")? });
    }
    // Limits while still privileged: raising a hard limit needs CAP_SYS_RESOURCE.
    for r in &spec.rlimits {
        if r.soft > r.hard {
            return Err(invalid(format!(
                "rlimit {:?}: soft limit {} exceeds hard limit {}",
                r.resource, r.soft, r.hard
            )));
        }
        steps.push(Step::Rlimit { resource: r.resource, soft: r.soft, hard: r.hard });
    }
    // Credentials last among the privileged steps: groups, then gid (needs CAP_SETGID, gone
    // once the uid changes), then uid (drops every capability).
    steps.push(Step::DropGroups);
    steps.push(Step::SetGid(spec.gid));
    steps.push(Step::SetUid(spec.uid));
    if spec.no_new_privs {
        steps.push(Step::NoNewPrivs);
    }
    // As the sandbox user: a workdir the user cannot reach fails here, with a clear error.
    steps.push(Step::Chdir { path: workdir });
    if spec.pid_namespace == PidNamespace::TinyInit {
        steps.push(Step::StartInit);
    }
    steps.push(Step::CloseFds);
    steps.push(Step::UnblockSignals);
    steps.push(Step::Exec);

    let program = path_cstring("program", &spec.program)?;
    let mut args = vec![program.clone()];
    for a in &spec.args {
        args.push(cstring("argument", a.as_bytes())?);
    }
    let mut env = Vec::new();
    for (k, v) in &spec.env {
        if k.is_empty() || k.as_bytes().contains(&b'=') {
            return Err(invalid(format!("environment variable name {k:?} is empty or has '='")));
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env.push(cstring("environment variable", &kv)?);
    }
    let argv = args.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
    let envp = env.iter().map(|e| e.as_ptr()).chain([std::ptr::null()]).collect();
    Ok(Plan { steps, exec: ExecArgs { program, _args: args, _env: env, argv, envp } })
}

fn show(c: &CString) -> String {
    OsStr::from_bytes(c.as_bytes()).to_string_lossy().into_owned()
}

impl Step {
    /// What the step does, for an error message.
    pub(crate) fn describe(&self, exec: &ExecArgs) -> String {
        match self {
            Step::ResetSignals => "resetting signal dispositions".into(),
            Step::NewSession => "setsid".into(),
            Step::Dup2 { to, .. } => format!("dup2 onto fd {to}"),
            Step::JoinCgroup { procs } => format!("joining cgroup via {}", show(procs)),
            Step::UnshareMountNs => "unshare(CLONE_NEWNS)".into(),
            Step::MakeMountsPrivate => "making / rprivate".into(),
            Step::ReadonlyRoot => "remounting / read-only and nosuid recursively".into(),
            Step::MountTmpfs { target, .. } => format!("mounting a tmpfs on {}", show(target)),
            Step::BindWritable { path } => format!("bind-mounting {} writable", show(path)),
            Step::MountProc => "mounting /proc for the new PID namespace".into(),
            Step::MakeWritable { path } => format!("making {} writable", show(path)),
            Step::Rlimit { resource, soft, hard } => format!("setrlimit {resource:?} {soft}/{hard}"),
            Step::DropGroups => "setgroups([])".into(),
            Step::SetGid(g) => format!("setresgid {g}"),
            Step::SetUid(u) => format!("setresuid {u}"),
            Step::NoNewPrivs => "prctl(PR_SET_NO_NEW_PRIVS)".into(),
            Step::Chdir { path } => format!("chdir {}", show(path)),
            Step::StartInit => "forking the program under the init".into(),
            Step::CloseFds => "marking inherited fds close-on-exec".into(),
            Step::UnblockSignals => "unblocking signals".into(),
            Step::Exec => format!("execve {}", show(&exec.program)),
        }
    }
}
