//! Control groups: one [`Cgroups`] trait for the hierarchy and one [`Group`] trait for a group,
//! implemented for cgroup v1 ([`v1`]) and v2 ([`v2`]), one file per controller in each.
//! [`detect`] picks what the machine has: v2 when a unified hierarchy offers the memory, cpu and
//! pids controllers, else v1 when those controllers are mounted, else an error that says which
//! controller is missing.
//!
//! Groups live at `<base>/<parent>/<name>`, where `<base>` is the hierarchy's root or the
//! calling process's own cgroup ([`Placement`]) and `<parent>` is configurable (`enjin` by
//! default). What the two versions do differently:
//!
//! | operation | v1 | v2 |
//! |---|---|---|
//! | memory limit | `memory.limit_in_bytes`, and `memory.memsw.limit_in_bytes` to the same value when the kernel has swap accounting, so swap cannot stretch the limit | `memory.max`, and `memory.swap.max = 0` when present (the same cap on RAM + swap) |
//! | CPU limit | `cpu.cfs_period_us = 100000`, `cpu.cfs_quota_us = millicores × 100` | `cpu.max = "<millicores × 100> 100000"` |
//! | pids limit | `pids.max` | `pids.max` |
//! | CPU usage | `cpuacct.usage` (needs the cpuacct controller) | `cpu.stat` `usage_usec` |
//! | OOM kills | `memory.oom_control` `oom_kill` (kernel ≥ 4.13) | `memory.events` `oom_kill` |
//! | kill all | freeze (`freezer.state`), SIGKILL every task, thaw; without a freezer, SIGKILL every task until none is left | `cgroup.kill` (kernel ≥ 5.14); without it, SIGKILL until none is left |
//!
//! The SIGKILL loop converges on a forking tree because a process with a pending SIGKILL cannot
//! complete a fork; it reads pids and then signals them, so in theory a pid that exits and is
//! reused in between could be hit — the freezer and `cgroup.kill` paths have no such window.

mod pids;
pub mod v1;
pub mod v2;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::syscalls::{HostSyscalls, Syscalls};

/// The cgroup version of a hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One mount per controller (or set of co-mounted controllers), each with its own tree.
    V1,
    /// The unified hierarchy: one tree, controllers enabled per subtree.
    V2,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V1 => "cgroup v1",
            Self::V2 => "cgroup v2",
        })
    }
}

/// Where the `<parent>` directory hangs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Directly under each hierarchy's mount point (`/sys/fs/cgroup/memory/enjin/...`).
    MountRoot,
    /// Under the calling process's own cgroup in each hierarchy, so the groups stay inside any
    /// limits the caller itself runs under. On v2 this needs the caller's cgroup to hold no
    /// processes (the "no internal processes" rule), so it is mostly for v1.
    UnderOwnCgroup,
}

/// Where groups are created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupConfig {
    /// A relative path, e.g. `enjin` or `enjin/ring2`.
    pub parent: PathBuf,
    /// Whether `parent` hangs from the hierarchy's root or from this process's own cgroup.
    pub placement: Placement,
}

impl Default for CgroupConfig {
    fn default() -> Self {
        Self { parent: PathBuf::from("enjin"), placement: Placement::MountRoot }
    }
}

/// Limits of a group; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// RAM (+ swap, see the module doc) in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU time in thousandths of a CPU.
    pub cpu_millicores: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u64>,
}

/// How [`Group::kill_all`] emptied the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillMethod {
    /// v2 `cgroup.kill`.
    CgroupKill,
    /// v1 freezer: freeze, SIGKILL, thaw.
    Freezer,
    /// SIGKILL every listed pid until the list is empty.
    Loop,
}

/// What [`Group::kill_all`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillReport {
    /// The mechanism that emptied the group (the best the kernel offered).
    pub method: KillMethod,
    /// SIGKILLs sent (0 with `cgroup.kill` unless stragglers needed one).
    pub signalled: usize,
    /// Rounds of listing the group.
    pub rounds: u32,
}

/// A cgroup hierarchy (v1: a set of controller mounts; v2: the unified mount).
pub trait Cgroups: fmt::Debug + Send + Sync {
    /// Which version this is.
    fn version(&self) -> CgroupVersion;
    /// The directories groups are created in (one per distinct v1 mount; one on v2).
    fn parent_dirs(&self) -> Vec<PathBuf>;
    /// Creates the group `name` (and its parents, enabling controllers on v2); returns the
    /// existing group when it is already there.
    fn create(&self, name: &str) -> Result<Box<dyn Group>, CreateGroupError>;
    /// The group `name` if it exists (e.g. to re-adopt it after a restart).
    fn existing(&self, name: &str) -> Result<Option<Box<dyn Group>>, CreateGroupError>;
    /// Names of the groups under the parent.
    fn list(&self) -> Result<Vec<String>, ReadError>;
}

/// One group.
pub trait Group: fmt::Debug + Send + Sync {
    /// The name given at creation.
    fn name(&self) -> &str;
    /// Which version this is.
    fn version(&self) -> CgroupVersion;
    /// The group's directories (one per distinct v1 mount; one on v2).
    fn dirs(&self) -> Vec<PathBuf>;
    /// The files a process writes `0` to (itself) to join the group: every v1 controller's
    /// `cgroup.procs`, or the one v2 `cgroup.procs`. The sandbox joins them before exec.
    fn procs_files(&self) -> Vec<PathBuf>;
    /// Caps memory; `None` removes the cap.
    fn set_memory_limit(&self, bytes: Option<u64>) -> Result<(), SetLimitError>;
    /// Caps CPU time; at least 10 millicores (the kernel's 1 ms minimum quota); `None` removes the
    /// cap.
    fn set_cpu_limit(&self, millicores: Option<u64>) -> Result<(), SetLimitError>;
    /// Caps the number of tasks; `None` removes the cap.
    fn set_pids_limit(&self, max: Option<u64>) -> Result<(), SetLimitError>;
    /// Reads the limits back from the kernel's files.
    fn limits(&self) -> Result<Limits, ReadError>;
    /// Moves a process (all its threads) into the group.
    fn add_pid(&self, pid: Pid) -> Result<(), AddPidError>;
    /// Every process in the group and its subgroups, as the caller's PID namespace sees them.
    fn pids(&self) -> Result<Vec<Pid>, ReadError>;
    /// Memory charged to the group, in bytes.
    fn memory_usage(&self) -> Result<u64, ReadError>;
    /// CPU time used by the group, in nanoseconds.
    fn cpu_usage_ns(&self) -> Result<u64, ReadError>;
    /// How many processes the OOM killer has killed in the group.
    fn oom_kills(&self) -> Result<u64, ReadError>;
    /// Kills every process in the group, even while they fork, and waits until it is empty.
    fn kill_all(&self, timeout: Duration) -> Result<KillReport, KillAllError>;
    /// Removes the group's directories (and any subgroups); the group must be empty. Removing a
    /// group that is already gone succeeds.
    fn delete(&self) -> Result<(), DeleteGroupError>;

    /// Sets all three limits.
    fn set_limits(&self, limits: &Limits) -> Result<(), SetLimitError> {
        self.set_memory_limit(limits.memory_bytes)?;
        self.set_cpu_limit(limits.cpu_millicores)?;
        self.set_pids_limit(limits.pids)
    }
}

/// Why no usable hierarchy was found.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// `/proc/self/mountinfo`, `/proc/self/cgroup` or a v2 `cgroup.controllers` could not be
    /// read.
    #[error("failed to read {}: {source}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// [`CgroupConfig::parent`] is empty, absolute, or contains `.` or `..`: groups must stay
    /// below the base directory.
    #[error("invalid cgroup parent {}: {reason}", parent.display())]
    InvalidParent {
        /// The configured parent.
        parent: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Neither a v2 nor a v1 hierarchy has every [`REQUIRED_CONTROLLERS`]; the text lists what
    /// each candidate lacks.
    #[error("no usable cgroup hierarchy: {0}")]
    Unusable(String),
}

/// Why a group could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum CreateGroupError {
    /// The name is not one plain directory name (empty, `.`, `..`, contains `/`, NUL or a
    /// newline) or looks like a control file (`cgroup.*`, `memory.*`, `cpu.*`).
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A directory of the group or of its parents could not be made (no permission, read-only
    /// cgroupfs, a delegated subtree the caller does not own).
    #[error("failed to create {}: {source}", path.display())]
    Create {
        /// The directory that could not be made.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// v2 only: writing `cgroup.subtree_control` failed, so the group's controllers would not
    /// be available (typically the parent holds processes, or the controller is not delegated).
    #[error("failed to enable controllers in {}: {source}", path.display())]
    EnableControllers {
        /// The directory whose `cgroup.subtree_control` was written.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// Looking for the group failed for another reason than its absence.
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Why a limit could not be set.
#[derive(Debug, thiserror::Error)]
pub enum SetLimitError {
    /// The kernel refused the value (for instance a memory cap below what the group already
    /// uses, or a cap above the parent's on v1).
    #[error("failed to write {value} to {}: {source}", path.display())]
    Write {
        /// The control file written.
        path: PathBuf,
        /// The text written to it.
        value: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// The limit was refused before touching the kernel: a CPU limit under 10 millicores or
    /// too large to express, or a pids limit of 0. The text says which.
    #[error("invalid limit: {0}")]
    Invalid(String),
}

/// Why a pid could not be added.
#[derive(Debug, thiserror::Error)]
#[error("failed to add pid {pid} to {}: {source}", path.display())]
pub struct AddPidError {
    /// The process that was to move.
    pub pid: Pid,
    /// The `cgroup.procs` file it was written to.
    pub path: PathBuf,
    /// What the kernel said (`ESRCH`: the process is gone).
    pub source: io::Error,
}

/// Why a control file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file or directory could not be read (`NotFound`: the group is gone).
    #[error("failed to read {}: {source}", path.display())]
    Read {
        /// The control file or group directory.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The file's contents are not in the format the kernel documents.
    #[error("failed to parse {}: {detail}", path.display())]
    Parse {
        /// The control file.
        path: PathBuf,
        /// What did not parse.
        detail: String,
    },
}

/// Why a group could not be emptied.
#[derive(Debug, thiserror::Error)]
pub enum KillAllError {
    /// Listing the group's processes failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Writing `cgroup.kill` (v2) or `freezer.state` (v1) failed.
    #[error("failed to write {value} to {}: {source}", path.display())]
    Write {
        /// The control file.
        path: PathBuf,
        /// What was written (`1`, `FROZEN`, `THAWED`).
        value: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
    /// SIGKILL failed for another reason than the process having exited (typically `EPERM`:
    /// the caller may not signal it).
    #[error("failed to send SIGKILL to pid {pid} in {}: {source}", path.display())]
    Signal {
        /// The process that could not be signalled.
        pid: Pid,
        /// The group's directory.
        path: PathBuf,
        /// The error from `kill(2)`.
        source: Errno,
    },
    /// Processes were still listed when the timeout ran out (for instance stuck in
    /// uninterruptible sleep); the group may empty later.
    #[error("{} still holds {remaining} processes after {waited:?} of killing", path.display())]
    Timeout {
        /// The group's directory.
        path: PathBuf,
        /// Processes listed in the last round.
        remaining: usize,
        /// How long the kill had been going on.
        waited: Duration,
    },
}

/// Why a group could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum DeleteGroupError {
    /// The kernel refused with `EBUSY`: the group or a subgroup still holds processes; kill
    /// them first ([`Group::kill_all`]).
    #[error("cannot remove {}: it still holds processes {pids:?}", path.display())]
    Busy {
        /// The directory that could not be removed.
        path: PathBuf,
        /// The processes found in it and below, as this PID namespace sees them (may be empty
        /// if they exited in the meantime).
        pids: Vec<Pid>,
    },
    /// Listing or removing a directory failed otherwise.
    #[error("failed to remove {}: {source}", path.display())]
    Remove {
        /// The directory.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// Listing the processes of a busy group failed.
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Detects the host's hierarchy.
pub fn detect(config: &CgroupConfig) -> Result<Box<dyn Cgroups>, DetectError> {
    detect_with(Arc::new(HostSyscalls), config)
}

/// The controllers every group needs; `cpuacct` (v1) and `freezer` (v1) are used when mounted.
pub const REQUIRED_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// Detects the hierarchy through `sys` (reads `/proc/self/mountinfo`, `/proc/self/cgroup` and
/// v2 `cgroup.controllers`).
pub fn detect_with(sys: Arc<dyn Syscalls>, config: &CgroupConfig) -> Result<Box<dyn Cgroups>, DetectError> {
    validate_parent(&config.parent)?;
    let read = |path: &str| {
        sys.read_to_string(Path::new(path))
            .map_err(|source| DetectError::Read { path: PathBuf::from(path), source })
    };
    let mounts = parse_mountinfo(&read("/proc/self/mountinfo")?);
    let own = parse_proc_cgroup(&read("/proc/self/cgroup")?);

    let mut v2_candidates: Vec<&CgroupMount> = mounts.iter().filter(|m| m.controllers.is_none()).collect();
    // The conventional location first (pure v2), then e.g. /sys/fs/cgroup/unified (hybrid).
    v2_candidates.sort_by_key(|m| m.mount_point != Path::new("/sys/fs/cgroup"));
    let mut v2_notes = Vec::new();
    for mount in v2_candidates {
        let path = mount.mount_point.join("cgroup.controllers");
        let available = match sys.read_to_string(&path) {
            Ok(s) => s,
            Err(source) => return Err(DetectError::Read { path, source }),
        };
        let available: Vec<&str> = available.split_whitespace().collect();
        let missing: Vec<&str> =
            REQUIRED_CONTROLLERS.iter().copied().filter(|c| !available.contains(c)).collect();
        if missing.is_empty() {
            let base = base_dir(mount, own_path(&own, None), config.placement);
            return Ok(Box::new(v2::V2Cgroups::new(
                sys,
                mount.mount_point.clone(),
                base,
                config.parent.clone(),
            )));
        }
        v2_notes.push(format!(
            "the cgroup2 mount at {} lacks {}",
            mount.mount_point.display(),
            missing.join(", ")
        ));
    }

    match v1_from_mounts(sys, config, &mounts, &own) {
        Ok(v1) => Ok(Box::new(v1)),
        Err(missing) => {
            v2_notes.push(missing);
            Err(DetectError::Unusable(v2_notes.join("; ")))
        }
    }
}

/// A v1 hierarchy from the host's mounts, ignoring any v2 mount: for hybrid hosts and tests.
pub fn detect_v1(config: &CgroupConfig) -> Result<v1::V1Cgroups, DetectError> {
    validate_parent(&config.parent)?;
    let sys: Arc<dyn Syscalls> = Arc::new(HostSyscalls);
    let read = |path: &str| {
        sys.read_to_string(Path::new(path))
            .map_err(|source| DetectError::Read { path: PathBuf::from(path), source })
    };
    let mounts = parse_mountinfo(&read("/proc/self/mountinfo")?);
    let own = parse_proc_cgroup(&read("/proc/self/cgroup")?);
    v1_from_mounts(sys, config, &mounts, &own).map_err(DetectError::Unusable)
}

/// The v1 hierarchy, or what is missing.
fn v1_from_mounts(
    sys: Arc<dyn Syscalls>,
    config: &CgroupConfig,
    mounts: &[CgroupMount],
    own: &[(Vec<String>, PathBuf)],
) -> Result<v1::V1Cgroups, String> {
    let mut controllers = Vec::new();
    for mount in mounts {
        let Some(names) = &mount.controllers else { continue };
        for name in names {
            let Some(controller) = v1::Controller::from_name(name) else { continue };
            if controllers.iter().any(|(c, _)| *c == controller) {
                continue;
            }
            let base = base_dir(mount, own_path(own, Some(name)), config.placement);
            controllers.push((controller, base.join(&config.parent)));
        }
    }
    let missing: Vec<&str> = REQUIRED_CONTROLLERS
        .iter()
        .copied()
        .filter(|name| !controllers.iter().any(|(c, _)| c.name() == *name))
        .collect();
    if missing.is_empty() {
        Ok(v1::V1Cgroups::new(sys, controllers))
    } else {
        Err(format!("no cgroup v1 mount has {}", missing.join(", ")))
    }
}

fn validate_parent(parent: &Path) -> Result<(), DetectError> {
    let bad = |reason| Err(DetectError::InvalidParent { parent: parent.to_path_buf(), reason });
    if parent.as_os_str().is_empty() {
        return bad("it is empty");
    }
    for c in parent.components() {
        if !matches!(c, std::path::Component::Normal(_)) {
            return bad("it must be a relative path without `..`");
        }
    }
    Ok(())
}

pub(crate) fn validate_name(name: &str) -> Result<(), CreateGroupError> {
    let bad = |reason| Err(CreateGroupError::InvalidName { name: name.to_owned(), reason });
    if name.is_empty() || name == "." || name == ".." {
        return bad("it must be a non-empty directory name");
    }
    if name.contains('/') || name.contains('\0') || name.contains('\n') {
        return bad("it must not contain '/', NUL or newline");
    }
    // Control files are `<controller>.<name>`; a group named like one would be confusing and
    // v2 refuses names with a dot after a controller prefix anyway.
    if name.starts_with("cgroup.") || name.starts_with("memory.") || name.starts_with("cpu.") {
        return bad("it must not look like a control file");
    }
    Ok(())
}

/// One cgroup mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    pub mount_point: PathBuf,
    /// The hierarchy path mounted there (`/` unless a container sees only a subtree).
    pub root: PathBuf,
    /// v1: the controllers (and `name=...` tags) of the hierarchy; `None` for cgroup2.
    pub controllers: Option<Vec<String>>,
}

/// The cgroup mounts in a mountinfo file, in order.
pub(crate) fn parse_mountinfo(contents: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in contents.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else { continue };
        let (Some(root), Some(mount_point)) = (fields.get(3), fields.get(4)) else { continue };
        let (Some(fstype), Some(super_opts)) = (fields.get(sep + 1), fields.get(sep + 3)) else {
            continue;
        };
        let controllers = match *fstype {
            "cgroup2" => None,
            "cgroup" => Some(
                super_opts.split(',').filter(|o| !matches!(*o, "rw" | "ro")).map(str::to_owned).collect(),
            ),
            _ => continue,
        };
        out.push(CgroupMount {
            mount_point: PathBuf::from(unescape_mountinfo(mount_point)),
            root: PathBuf::from(unescape_mountinfo(root)),
            controllers,
        });
    }
    out
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let value = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/proc/self/cgroup`: (controllers, path) per line; v2's line has no controllers.
pub(crate) fn parse_proc_cgroup(contents: &str) -> Vec<(Vec<String>, PathBuf)> {
    contents
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            let controllers = controllers.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect();
            Some((controllers, PathBuf::from(path)))
        })
        .collect()
}

/// The calling process's cgroup in the hierarchy holding `controller` (`None`: the v2 one).
fn own_path<'a>(own: &'a [(Vec<String>, PathBuf)], controller: Option<&str>) -> Option<&'a Path> {
    own.iter()
        .find(|(controllers, _)| match controller {
            Some(c) => controllers.iter().any(|x| x == c),
            None => controllers.is_empty(),
        })
        .map(|(_, p)| p.as_path())
}

fn base_dir(mount: &CgroupMount, own: Option<&Path>, placement: Placement) -> PathBuf {
    match (placement, own) {
        (Placement::UnderOwnCgroup, Some(own)) => {
            // `own` is relative to the hierarchy's root; the mount shows the subtree `root`.
            let relative = own.strip_prefix(&mount.root).unwrap_or(own);
            let relative = relative.strip_prefix("/").unwrap_or(relative);
            mount.mount_point.join(relative)
        }
        _ => mount.mount_point.clone(),
    }
}

// Helpers shared by the v1 and v2 controller files.

/// 100 ms, the kernel's default period.
pub(crate) const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses quotas under 1 ms: 10 millicores at a 100 ms period.
pub(crate) const MIN_CPU_MILLICORES: u64 = 10;

/// Microseconds of quota per period for `millicores`.
pub(crate) fn cpu_quota_us(millicores: u64) -> Result<u64, SetLimitError> {
    if millicores < MIN_CPU_MILLICORES {
        return Err(SetLimitError::Invalid(format!(
            "cpu limit {millicores} millicores is below the {MIN_CPU_MILLICORES} millicore minimum"
        )));
    }
    millicores
        .checked_mul(CPU_PERIOD_US / 1000)
        .filter(|q| i64::try_from(*q).is_ok())
        .ok_or_else(|| SetLimitError::Invalid(format!("cpu limit {millicores} millicores is too large")))
}

pub(crate) fn write_value(sys: &dyn Syscalls, path: &Path, value: &str) -> Result<(), SetLimitError> {
    sys.write(path, value.as_bytes()).map_err(|source| SetLimitError::Write {
        path: path.to_path_buf(),
        value: value.to_owned(),
        source,
    })
}

pub(crate) fn read_string(sys: &dyn Syscalls, path: &Path) -> Result<String, ReadError> {
    sys.read_to_string(path).map_err(|source| ReadError::Read { path: path.to_path_buf(), source })
}

pub(crate) fn parse_error(path: &Path, detail: impl Into<String>) -> ReadError {
    ReadError::Parse { path: path.to_path_buf(), detail: detail.into() }
}

/// A file holding one unsigned number.
pub(crate) fn read_u64(sys: &dyn Syscalls, path: &Path) -> Result<u64, ReadError> {
    let s = read_string(sys, path)?;
    s.trim().parse().map_err(|_| parse_error(path, format!("{:?} is not a number", s.trim())))
}

/// A number or `max`.
pub(crate) fn read_max(sys: &dyn Syscalls, path: &Path) -> Result<Option<u64>, ReadError> {
    let s = read_string(sys, path)?;
    match s.trim() {
        "max" => Ok(None),
        v => v.parse().map(Some).map_err(|_| parse_error(path, format!("{v:?} is neither a number nor max"))),
    }
}

/// The value of `key` in a flat-keyed file (`key value` per line).
pub(crate) fn read_keyed(sys: &dyn Syscalls, path: &Path, key: &str) -> Result<u64, ReadError> {
    let s = read_string(sys, path)?;
    keyed(&s, key).ok_or_else(|| parse_error(path, format!("no numeric {key} field")))
}

pub(crate) fn keyed(contents: &str, key: &str) -> Option<u64> {
    contents.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        (it.next()? == key).then_some(())?;
        it.next()?.parse().ok()
    })
}

/// The pids in `dir/cgroup.procs` and in every subgroup's.
pub(crate) fn pids_recursive(sys: &dyn Syscalls, dir: &Path) -> Result<Vec<Pid>, ReadError> {
    let path = dir.join("cgroup.procs");
    let contents = match sys.read_to_string(&path) {
        Ok(c) => c,
        // A group that is gone holds nothing.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ReadError::Read { path, source }),
    };
    let mut pids = Vec::new();
    for line in contents.lines() {
        let pid: i32 =
            line.trim().parse().map_err(|_| parse_error(&path, format!("{line:?} is not a pid")))?;
        pids.push(Pid::from_raw(pid));
    }
    let subs = match sys.sub_dirs(dir) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(ReadError::Read { path: dir.to_path_buf(), source });
        }
    };
    for sub in subs {
        pids.extend(pids_recursive(sys, &sub)?);
    }
    Ok(pids)
}

/// Creates `dir` and its missing ancestors (each one `mkdir`, like `mkdir -p`).
pub(crate) fn create_dir_all(sys: &dyn Syscalls, dir: &Path) -> Result<(), CreateGroupError> {
    if sys.exists(dir) {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all(sys, parent)?;
    }
    match sys.create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CreateGroupError::Create { path: dir.to_path_buf(), source }),
    }
}

/// Removes `dir` after its subgroups, deepest first.
pub(crate) fn remove_tree(sys: &dyn Syscalls, dir: &Path) -> Result<(), DeleteGroupError> {
    let subs = match sys.sub_dirs(dir) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(DeleteGroupError::Remove { path: dir.to_path_buf(), source });
        }
    };
    for sub in subs {
        remove_tree(sys, &sub)?;
    }
    match sys.remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            Err(DeleteGroupError::Busy { path: dir.to_path_buf(), pids: pids_recursive(sys, dir)? })
        }
        Err(source) => Err(DeleteGroupError::Remove { path: dir.to_path_buf(), source }),
    }
}

/// How often the kill loop looks at the group again.
const KILL_POLL: Duration = Duration::from_millis(10);

/// SIGKILLs every pid `list` returns until it returns none or `timeout` passes. `after_first`
/// runs once after the first round's signals (the v1 freezer thaws there so the frozen victims
/// can die).
pub(crate) fn kill_loop(
    sys: &dyn Syscalls,
    dir: &Path,
    timeout: Duration,
    method: KillMethod,
    list: &dyn Fn() -> Result<Vec<Pid>, ReadError>,
    after_first: &mut dyn FnMut() -> Result<(), KillAllError>,
) -> Result<KillReport, KillAllError> {
    let start = sys.now();
    let mut report = KillReport { method, signalled: 0, rounds: 0 };
    let mut first = true;
    loop {
        let pids = list()?;
        report.rounds += 1;
        if pids.is_empty() {
            if first {
                after_first()?;
            }
            return Ok(report);
        }
        let waited = sys.now() - start;
        if waited >= timeout {
            if first {
                after_first()?;
            }
            return Err(KillAllError::Timeout { path: dir.to_path_buf(), remaining: pids.len(), waited });
        }
        for pid in pids {
            match sys.kill(pid, Signal::SIGKILL) {
                Ok(()) => report.signalled += 1,
                // Exited since we listed it.
                Err(Errno::ESRCH) => {}
                Err(source) => {
                    return Err(KillAllError::Signal { pid, path: dir.to_path_buf(), source });
                }
            }
        }
        if first {
            after_first()?;
            first = false;
        }
        sys.sleep(KILL_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscalls::FakeSyscalls;

    const MOUNTINFO_V1: &str = "\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
35 30 0:31 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
36 30 0:32 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
37 30 0:33 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const PROC_CGROUP_V1: &str = "\
9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn mountinfo_finds_v1_and_v2_mounts() {
        let mounts = parse_mountinfo(MOUNTINFO_V1);
        assert_eq!(mounts.len(), 7);
        assert_eq!(mounts[0].mount_point, Path::new("/sys/fs/cgroup/cpu"));
        assert_eq!(mounts[0].controllers, Some(vec!["cpu".to_owned()]));
        assert_eq!(mounts[6].controllers, None);
        let odd = parse_mountinfo("40 30 0:40 /sub /mnt/with\\040space rw - cgroup cg rw,cpu,cpuacct\n");
        assert_eq!(odd[0].mount_point, Path::new("/mnt/with space"));
        assert_eq!(odd[0].root, Path::new("/sub"));
        assert_eq!(odd[0].controllers, Some(vec!["cpu".to_owned(), "cpuacct".to_owned()]));
    }

    fn fake_host(mountinfo: &str, proc_cgroup: &str) -> Arc<FakeSyscalls> {
        let fake = Arc::new(FakeSyscalls::new());
        fake.add_file("/proc/self/mountinfo", mountinfo);
        fake.add_file("/proc/self/cgroup", proc_cgroup);
        fake
    }

    #[test]
    fn detect_prefers_v1_when_the_unified_mount_has_no_controllers() {
        let fake = fake_host(MOUNTINFO_V1, PROC_CGROUP_V1);
        fake.add_file("/sys/fs/cgroup/unified/cgroup.controllers", "\n");
        let config = CgroupConfig { parent: PathBuf::from("enjin"), placement: Placement::UnderOwnCgroup };
        let cg = detect_with(fake, &config).expect("detect");
        assert_eq!(cg.version(), CgroupVersion::V1);
        let dirs = cg.parent_dirs();
        assert!(dirs.contains(&PathBuf::from("/sys/fs/cgroup/memory/process_api/abc/enjin")), "{dirs:?}");
        assert!(dirs.contains(&PathBuf::from("/sys/fs/cgroup/pids/enjin")), "{dirs:?}");
        assert!(dirs.contains(&PathBuf::from("/sys/fs/cgroup/freezer/enjin")), "{dirs:?}");
    }

    #[test]
    fn detect_prefers_v2_with_the_controllers() {
        let fake = fake_host(
            "30 22 0:26 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n",
            "0::/user.slice\n",
        );
        fake.add_file("/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma\n");
        let cg = detect_with(fake, &CgroupConfig::default()).expect("detect");
        assert_eq!(cg.version(), CgroupVersion::V2);
        assert_eq!(cg.parent_dirs(), vec![PathBuf::from("/sys/fs/cgroup/enjin")]);
    }

    #[test]
    fn detect_says_what_is_missing() {
        let fake = fake_host("30 22 0:26 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n", "0::/\n");
        fake.add_file("/sys/fs/cgroup/cgroup.controllers", "cpu io\n");
        let err = detect_with(fake, &CgroupConfig::default()).expect_err("unusable").to_string();
        assert!(err.contains("lacks memory, pids"), "{err}");
        assert!(err.contains("no cgroup v1 mount has memory, cpu, pids"), "{err}");
    }

    #[test]
    fn parent_and_names_are_validated() {
        let fake = fake_host(MOUNTINFO_V1, PROC_CGROUP_V1);
        for parent in ["", "/abs", "../up", "a/../b"] {
            let config = CgroupConfig { parent: PathBuf::from(parent), placement: Placement::MountRoot };
            assert!(matches!(detect_with(fake.clone(), &config), Err(DetectError::InvalidParent { .. })));
        }
        for name in ["", ".", "..", "a/b", "cgroup.procs", "x\ny"] {
            assert!(validate_name(name).is_err(), "{name:?}");
        }
        validate_name("web-1").expect("valid");
    }

    #[test]
    fn keyed_files() {
        let s = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(s, "oom_kill"), Some(3));
        assert_eq!(keyed(s, "oom"), None);
    }
}
