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

use super::{Jail, PidNamespace, SandboxSpec, SpawnError, Writable};

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
    /// `setns(fd, CLONE_NEWNET)`: into the network namespace the fd (opened by the parent
    /// before the fork) refers to.
    JoinNetNs { fd: RawFd },
    /// `unshare(CLONE_NEWNS)`.
    UnshareMountNs,
    /// `mount(NULL, "/", NULL, MS_REC | MS_PRIVATE)`: nothing we mount leaks to the host and
    /// nothing the host mounts later appears (writable) inside.
    MakeMountsPrivate,
    /// `mount_setattr("/", AT_RECURSIVE, RDONLY | NOSUID)`: every mount read-only and nosuid.
    ReadonlyRoot,
    /// A fresh tmpfs (nosuid, nodev) on `target`.
    MountTmpfs { target: CString, data: CString },
    /// Any mount: a filesystem (`fstype`), or a bind (`MS_BIND` in `flags`).
    Mount {
        source: CString,
        target: CString,
        fstype: Option<CString>,
        flags: nix::mount::MsFlags,
        data: Option<CString>,
    },
    /// `mount_setattr` on one mount (or its whole subtree).
    SetAttr { path: CString, recursive: bool, set: u64, clear: u64 },
    /// `mkdir`, then `chmod` to exactly `mode` (the umask does not apply).
    Mkdir { path: CString, mode: u32 },
    /// `chown` (the path was just made by an earlier step, in a filesystem nobody else sees).
    Chown { path: CString, uid: u32, gid: u32 },
    /// A character device node, mode 0666.
    Mknod { path: CString, major: u32, minor: u32 },
    /// `symlink(target, link)`.
    Symlink { target: CString, link: CString },
    /// `pivot_root` into `root`, then detach the old root: nothing of the host is reachable but
    /// what was mounted inside.
    PivotRoot { root: CString },
    /// Empty the capability bounding, ambient and inheritable sets.
    DropCapabilities,
    /// Install the seccomp programs of the plan.
    Seccomp,
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

/// The init's log relay: each pipe's read end and the file it is copied into, and how much of
/// a file may be allocated before the init stops reading its pipe (the program's writes then
/// block until the file's reader frees space).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Relay {
    pub pairs: [Option<(RawFd, RawFd)>; 2],
    pub budget: u64,
}

impl Relay {
    /// The fds the init keeps.
    pub fn fds(&self) -> [RawFd; 4] {
        let mut out = [-1; 4];
        for (i, (r, w)) in self.pairs.iter().flatten().enumerate() {
            out[2 * i] = *r;
            out[2 * i + 1] = *w;
        }
        out
    }
}

/// The whole child side.
#[derive(Debug)]
pub(crate) struct Plan {
    pub steps: Vec<Step>,
    pub exec: ExecArgs,
    /// What the tiny init relays (nothing without a log budget).
    pub relay: Relay,
    /// The seccomp programs, installed in order by [`Step::Seccomp`].
    pub filters: Vec<seccompiler::BpfProgram>,
}

/// What the parent found on the host before building the plan, so building stays pure.
#[derive(Debug, Default)]
pub(crate) struct Host {
    /// Whether `/dev/shm` exists.
    pub dev_shm: bool,
    /// The host's system directories for a jail: each path, and the target when it is a
    /// symlink.
    pub system: Vec<(std::path::PathBuf, Option<std::path::PathBuf>)>,
    /// Whether the host's [`RESOLV_CONF`] is a regular file (a jail's own can be mounted over
    /// it only then).
    pub resolv_conf_file: bool,
    pub filters: Vec<seccompiler::BpfProgram>,
}

/// Where programs look for their resolvers.
pub(crate) const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The host's [`super::SYSTEM_DIRS`] that exist, with their link targets.
pub(crate) fn system_dirs() -> Vec<(std::path::PathBuf, Option<std::path::PathBuf>)> {
    super::SYSTEM_DIRS
        .iter()
        .filter_map(|d| {
            let meta = std::fs::symlink_metadata(d).ok()?;
            if meta.file_type().is_symlink() {
                Some((d.into(), Some(std::fs::read_link(d).ok()?)))
            } else if meta.is_dir() {
                Some((d.into(), None))
            } else {
                None
            }
        })
        .collect()
}

/// The fds the parent prepared for the child's stdio (`None`: inherit).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ChildFds {
    pub stdin: Option<RawFd>,
    pub stdout: Option<RawFd>,
    pub stderr: Option<RawFd>,
    /// The network namespace to join, opened before the fork.
    pub netns: Option<RawFd>,
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

/// Validates `spec` and lays out the child's steps, from what the parent found on the `host`
/// (the plan stays pure).
pub(crate) fn build(spec: &SandboxSpec, fds: ChildFds, host: Host) -> Result<Plan, SpawnError> {
    let dev_shm = host.dev_shm;
    check_clean_absolute("program", &spec.program)?;
    check_clean_absolute("workdir", &spec.workdir)?;
    if spec.workdir == Path::new("/") && spec.jail.is_none() {
        return Err(invalid("workdir / would leave the whole root writable"));
    }
    if spec.seccomp && !spec.no_new_privs {
        return Err(invalid("a seccomp filter needs no_new_privs"));
    }
    if spec.uid == 0 || spec.gid == 0 {
        return Err(invalid(format!(
            "uid {} gid {}: a sandbox never runs as root or the root group",
            spec.uid, spec.gid
        )));
    }
    if spec.private_tmp && spec.jail.is_none() {
        for dir in PRIVATE_TMP_DIRS {
            if spec.workdir.starts_with(dir) {
                return Err(invalid(format!(
                    "workdir {} is under {dir}, which private_tmp replaces with an empty tmpfs",
                    spec.workdir.display()
                )));
            }
        }
    }
    if spec.workdir.starts_with("/proc") && spec.jail.is_none() {
        return Err(invalid(format!("workdir {} is under /proc", spec.workdir.display())));
    }
    for procs in &spec.cgroup_procs {
        check_clean_absolute("cgroup procs file", procs)?;
    }

    let pid_ns = spec.pid_namespace != PidNamespace::Host;
    let mount_ns = spec.readonly_root || spec.private_tmp || pid_ns || spec.jail.is_some();
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
    // Its own network before anything else can open a socket; needs CAP_SYS_ADMIN, so long
    // before the uid changes.
    if let Some(fd) = fds.netns {
        steps.push(Step::JoinNetNs { fd });
    }
    if mount_ns {
        steps.push(Step::UnshareMountNs);
        steps.push(Step::MakeMountsPrivate);
    }
    if let Some(jail) = &spec.jail {
        if !pid_ns {
            return Err(invalid("a jail needs a PID namespace of its own (its /proc is new)"));
        }
        jail_steps(&mut steps, jail, &host, spec.uid, spec.gid)?;
    } else {
        host_root_steps(&mut steps, spec, &workdir, dev_shm, pid_ns)?;
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
    // The bounding set needs CAP_SETPCAP to shrink: before the uid changes.
    if spec.drop_capabilities {
        steps.push(Step::DropCapabilities);
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
    // Last before the init: the filter covers the init too (it never needs a denied call).
    if spec.seccomp {
        if host.filters.is_empty() {
            return Err(invalid("seccomp is on but no filter was built"));
        }
        steps.push(Step::Seccomp);
    }
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
    let filters = if spec.seccomp { host.filters } else { Vec::new() };
    Ok(Plan {
        steps,
        exec: ExecArgs { program, _args: args, _env: env, argv, envp },
        filters,
        relay: Relay::default(),
    })
}

/// The host's root, read-only, with a private `/tmp` and the workdir writable (no jail).
fn host_root_steps(
    steps: &mut Vec<Step>,
    spec: &SandboxSpec,
    workdir: &CString,
    dev_shm: bool,
    pid_ns: bool,
) -> Result<(), SpawnError> {
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
    Ok(())
}

const MS_NOSUID_NODEV: u64 = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;

/// `root` + an absolute `path`.
fn inside(root: &Path, path: &Path) -> Result<CString, SpawnError> {
    let rel = path.strip_prefix("/").map_err(|_| invalid(format!("{} is not absolute", path.display())))?;
    path_cstring("jail path", &root.join(rel))
}

/// Overlay options are comma- and colon-separated; paths holding either (or a backslash)
/// would be misread.
fn overlay_path(what: &str, path: &Path) -> Result<String, SpawnError> {
    let s = path.to_str().ok_or_else(|| invalid(format!("{what} {} is not UTF-8", path.display())))?;
    if s.contains([',', ':', '\\']) {
        return Err(invalid(format!(
            "{what} {s} contains ',', ':' or '\\', which overlayfs options cannot hold"
        )));
    }
    Ok(s.to_string())
}

/// Names the jail makes at its top level itself.
const JAIL_OWN: [&str; 4] = ["/tmp", "/dev", "/proc", "/var"];

/// The devices of the jail's `/dev`: name, major, minor.
pub(crate) const DEVICES: [(&str, u32, u32); 6] =
    [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

fn jail_steps(steps: &mut Vec<Step>, jail: &Jail, host: &Host, uid: u32, gid: u32) -> Result<(), SpawnError> {
    use nix::mount::MsFlags;
    check_clean_absolute("jail root", &jail.root)?;
    check_clean_absolute("jail lower layer", &jail.lower)?;
    check_clean_absolute("jail app", &jail.app)?;
    let mp = jail.writable.mountpoint();
    check_clean_absolute("writable mountpoint", mp)?;
    if jail.app.components().count() != 2
        || JAIL_OWN.iter().chain(super::SYSTEM_DIRS.iter()).any(|d| jail.app == Path::new(d))
    {
        return Err(invalid(format!(
            "jail app {} must be one name under / that is not a system directory",
            jail.app.display()
        )));
    }
    let c = |what: &str, s: &str| cstring(what, s.as_bytes());
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let root = &jail.root;

    // The writable filesystem, then its three directories, fresh.
    match &jail.writable {
        Writable::Device { device, .. } => {
            check_clean_absolute("disk device", device)?;
            steps.push(Step::Mount {
                source: path_cstring("disk device", device)?,
                target: path_cstring("writable mountpoint", mp)?,
                fstype: Some(c("fstype", "ext4")?),
                flags: nosuid_nodev,
                data: None,
            });
        }
        Writable::Tmpfs { bytes, .. } => steps.push(Step::Mount {
            source: c("source", "tmpfs")?,
            target: path_cstring("writable mountpoint", mp)?,
            fstype: Some(c("fstype", "tmpfs")?),
            flags: nosuid_nodev,
            data: Some(c("tmpfs options", &format!("mode=0700,size={bytes}"))?),
        }),
    }
    let (upper, work, tmp) = (mp.join("upper"), mp.join("work"), mp.join("tmp"));
    steps.push(Step::Mkdir { path: path_cstring("upper", &upper)?, mode: 0o755 });
    steps.push(Step::Chown { path: path_cstring("upper", &upper)?, uid, gid });
    steps.push(Step::Mkdir { path: path_cstring("work", &work)?, mode: 0o700 });
    steps.push(Step::Mkdir { path: path_cstring("tmp", &tmp)?, mode: 0o1777 });
    steps.push(Step::Chown { path: path_cstring("tmp", &tmp)?, uid, gid });

    // The new root: a small tmpfs, read-only once assembled.
    steps.push(Step::Mount {
        source: c("source", "tmpfs")?,
        target: path_cstring("jail root", root)?,
        fstype: Some(c("fstype", "tmpfs")?),
        flags: nosuid_nodev,
        data: Some(c("tmpfs options", "mode=0755,size=1m")?),
    });
    for (dir, link) in &host.system {
        match link {
            Some(target) => steps.push(Step::Symlink {
                target: path_cstring("link target", target)?,
                link: inside(root, dir)?,
            }),
            None => {
                let at = inside(root, dir)?;
                steps.push(Step::Mkdir { path: at.clone(), mode: 0o755 });
                steps.push(Step::Mount {
                    source: path_cstring("system dir", dir)?,
                    target: at.clone(),
                    fstype: None,
                    flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                    data: None,
                });
                steps.push(Step::SetAttr {
                    path: at,
                    recursive: true,
                    set: libc::MOUNT_ATTR_RDONLY | MS_NOSUID_NODEV,
                    clear: 0,
                });
            }
        }
    }

    // The instance's resolvers over the host's, where /etc is the host's directory.
    let etc_mounted = host.system.iter().any(|(d, link)| d == Path::new("/etc") && link.is_none());
    if let Some(resolv) = jail.resolv_conf.as_ref().filter(|_| etc_mounted && host.resolv_conf_file) {
        check_clean_absolute("resolv.conf", resolv)?;
        let at = inside(root, Path::new(RESOLV_CONF))?;
        steps.push(Step::Mount {
            source: path_cstring("resolv.conf", resolv)?,
            target: at.clone(),
            fstype: None,
            flags: MsFlags::MS_BIND,
            data: None,
        });
        steps.push(Step::SetAttr {
            path: at,
            recursive: false,
            set: libc::MOUNT_ATTR_RDONLY | MS_NOSUID_NODEV,
            clear: 0,
        });
    }

    // The app: the package under the writable layer.
    let app = inside(root, &jail.app)?;
    steps.push(Step::Mkdir { path: app.clone(), mode: 0o755 });
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        overlay_path("lower layer", &jail.lower)?,
        overlay_path("upper layer", &upper)?,
        overlay_path("overlay workdir", &work)?
    );
    steps.push(Step::Mount {
        source: c("source", "overlay")?,
        target: app,
        fstype: Some(c("fstype", "overlay")?),
        flags: nosuid_nodev,
        data: Some(c("overlay options", &options)?),
    });

    // /tmp on the same filesystem.
    let jtmp = inside(root, Path::new("/tmp"))?;
    steps.push(Step::Mkdir { path: jtmp.clone(), mode: 0o1777 });
    steps.push(Step::Mount {
        source: path_cstring("tmp", &tmp)?,
        target: jtmp.clone(),
        fstype: None,
        flags: MsFlags::MS_BIND,
        data: None,
    });
    steps.push(Step::SetAttr { path: jtmp, recursive: false, set: MS_NOSUID_NODEV, clear: 0 });

    // A minimal /dev.
    let dev = inside(root, Path::new("/dev"))?;
    steps.push(Step::Mkdir { path: dev.clone(), mode: 0o755 });
    steps.push(Step::Mount {
        source: c("source", "tmpfs")?,
        target: dev.clone(),
        fstype: Some(c("fstype", "tmpfs")?),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        data: Some(c("tmpfs options", "mode=0755,size=64k")?),
    });
    for (name, major, minor) in DEVICES {
        steps.push(Step::Mknod { path: inside(root, &Path::new("/dev").join(name))?, major, minor });
    }
    let pts = inside(root, Path::new("/dev/pts"))?;
    let shm = inside(root, Path::new("/dev/shm"))?;
    steps.push(Step::Mkdir { path: pts.clone(), mode: 0o755 });
    steps.push(Step::Mkdir { path: shm.clone(), mode: 0o1777 });
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        steps.push(Step::Symlink {
            target: c("link target", target)?,
            link: inside(root, &Path::new("/dev").join(name))?,
        });
    }
    steps.push(Step::SetAttr { path: dev, recursive: false, set: libc::MOUNT_ATTR_RDONLY, clear: 0 });
    steps.push(Step::Mount {
        source: c("source", "devpts")?,
        target: pts,
        fstype: Some(c("fstype", "devpts")?),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        data: Some(c("devpts options", "newinstance,ptmxmode=0666,mode=0620")?),
    });
    steps.push(Step::Mount {
        source: c("source", "tmpfs")?,
        target: shm,
        fstype: Some(c("fstype", "tmpfs")?),
        flags: nosuid_nodev | MsFlags::MS_NOEXEC,
        data: Some(c("tmpfs options", &format!("mode=1777,size={}", jail.shm_bytes.max(4096)))?),
    });

    // /proc of the sandbox's PID namespace, /var/tmp.
    let proc = inside(root, Path::new("/proc"))?;
    steps.push(Step::Mkdir { path: proc.clone(), mode: 0o555 });
    steps.push(Step::Mount {
        source: c("source", "proc")?,
        target: proc,
        fstype: Some(c("fstype", "proc")?),
        flags: nosuid_nodev | MsFlags::MS_NOEXEC,
        data: None,
    });
    steps.push(Step::Mkdir { path: inside(root, Path::new("/var"))?, mode: 0o755 });
    steps.push(Step::Symlink {
        target: c("link target", "../tmp")?,
        link: inside(root, Path::new("/var/tmp"))?,
    });

    steps.push(Step::SetAttr {
        path: path_cstring("jail root", root)?,
        recursive: false,
        set: libc::MOUNT_ATTR_RDONLY,
        clear: 0,
    });
    steps.push(Step::PivotRoot { root: path_cstring("jail root", root)? });
    Ok(())
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
            Step::JoinNetNs { .. } => "joining the network namespace (setns)".into(),
            Step::UnshareMountNs => "unshare(CLONE_NEWNS)".into(),
            Step::MakeMountsPrivate => "making / rprivate".into(),
            Step::ReadonlyRoot => "remounting / read-only and nosuid recursively".into(),
            Step::MountTmpfs { target, .. } => format!("mounting a tmpfs on {}", show(target)),
            Step::Mount { source, target, fstype, .. } => match fstype {
                Some(t) => format!("mounting {} ({}) on {}", show(source), show(t), show(target)),
                None => format!("bind-mounting {} on {}", show(source), show(target)),
            },
            Step::SetAttr { path, .. } => format!("setting mount attributes of {}", show(path)),
            Step::Mkdir { path, .. } => format!("mkdir {}", show(path)),
            Step::Chown { path, .. } => format!("chown {}", show(path)),
            Step::Mknod { path, .. } => format!("mknod {}", show(path)),
            Step::Symlink { link, .. } => format!("symlink {}", show(link)),
            Step::PivotRoot { root } => format!("pivot_root into {}", show(root)),
            Step::DropCapabilities => "dropping capabilities".into(),
            Step::Seccomp => "installing the seccomp filter".into(),
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
