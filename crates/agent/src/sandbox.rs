//! The `unix-user` strategy as a supervisor launcher: each child runs as the uid the control
//! plane reserved for it (`spec.run.uid`), in its own cgroup with the node's limits, in a jail
//! of `enjin-sys` (its own root: the system read-only, the package at `/app` under a writable
//! layer, a minimal `/dev`, its own PID namespace, seccomp, no capabilities, no_new_privs).
//!
//! # Root never acts through a path a tenant can write
//!
//! The instance's writable layer, `/app`'s upper directory and `/tmp` live on a filesystem of
//! its own — a sparse ext4 image of the node's disk size on a loop device — that is mounted
//! only inside the sandbox's mount namespace. On the host an instance is
//! `<root>/<id>/` (root's, 0700): the image files and two empty mount points, nothing the
//! tenant can write. The image is replaced by a freshly formatted one at every start (the next
//! one is formatted and attached to a loop device in the background after each start), so the
//! layer starts clean, as a Heroku dyno's filesystem does, and the agent never deletes, copies or
//! chowns inside it. The
//! package is the overlay's lower layer, unpacked once per host by root into a root-only tree.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use enjin_model::kinds::Resources;
use enjin_net::instance::{InstanceNames, instance_names};
use enjin_supervisor::{
    ChildId, ChildSpec, Exit, ExitWaiter, LaunchError, Launched, Launcher, ProcessHandle, Signal, SignalError,
};
use enjin_sys::cgroup::{CgroupConfig, Cgroups, Limits};
use enjin_sys::sandbox::{Jail, SandboxSpec, Stdio, Writable};

/// Where an instance's app appears inside its jail (its cwd and `HOME`).
pub const APP_DIR: &str = "/app";

/// The writable layer's size when the node sets none (the operator chose unlimited): sparse,
/// so only what is written takes space, and still a bound the kernel enforces.
const UNLIMITED_DISK: u64 = 64 << 30;

/// How much of the host's disk each of a child's output streams may hold before the log
/// collector has read it: past it the child's writes wait (its tiny init stops relaying).
const LOG_BUDGET: u64 = 16 << 20;

/// `/dev/shm`'s size (Docker's default), never above the disk size.
const SHM_BYTES: u64 = 64 << 20;

/// What the agent knows of one sandboxed child before its launch.
#[derive(Debug, Clone, Default)]
pub struct SandboxChild {
    /// The uid the control plane reserved.
    pub uid: Option<u32>,
    /// The node's limits: memory, CPU and pids go to its cgroup, disk sizes its writable
    /// layer (64 GiB, sparse, when unset).
    pub resources: Resources,
    /// The unpacked package (the overlay's lower layer); none: an empty one.
    pub package: Option<PathBuf>,
    /// A network namespace of its own, made before it starts; none: the host's.
    pub network: Option<enjin_model::api::ChildNetwork>,
}

/// Launches `unix-user` children in the jail described above, one directory `<root>/<id>` and
/// one cgroup `<parent>/<id>` per child. Needs root; [`SandboxLauncher::new`] fails where there
/// is no usable cgroup hierarchy.
pub struct SandboxLauncher {
    root: PathBuf,
    logs: PathBuf,
    cgroups: Box<dyn Cgroups>,
    children: Mutex<HashMap<String, SandboxChild>>,
    /// Each child's next writable filesystem, formatted and attached in the background after
    /// its last start, so a restart only has to take it.
    next: std::sync::Arc<Mutex<HashMap<String, Prepared>>>,
    /// Loop devices and ext4 are there (else the writable layer is a sized tmpfs).
    disks: bool,
    /// Told when an instance's network is made, so the fast path takes it up.
    network: Option<std::sync::Arc<crate::network::HostNetwork>>,
}

impl std::fmt::Debug for SandboxLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxLauncher")
            .field("root", &self.root)
            .field("disks", &self.disks)
            .finish_non_exhaustive()
    }
}

fn spawn_error(id: &ChildId, program: &str, e: impl std::fmt::Display) -> LaunchError {
    LaunchError::Spawn {
        id: id.clone(),
        program: program.to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// The instance's `resolv.conf` in its directory (replaced whole each start), naming
/// `nameservers`: world-readable, as the instance reads it through the jail's mount.
fn write_resolv_conf(dir: &Path, nameservers: &[std::net::IpAddr]) -> std::io::Result<PathBuf> {
    let mut text = String::from("# Written by enjin: the platform's DNS for this instance.\n");
    for ns in nameservers {
        text.push_str(&format!("nameserver {ns}\n"));
    }
    let path = dir.join("resolv.conf");
    enjin_sys::fs::write_atomic(&path, text.as_bytes(), 0o644)?;
    Ok(path)
}

/// A directory that is root's alone (created if missing; a link in its place is refused).
fn private_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_dir() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "exists and is not a directory",
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(path)?,
        Err(e) => return Err(e),
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Why the sandbox could not be set up, or an instance's filesystem made.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No cgroup hierarchy to put instances in.
    #[error(transparent)]
    Cgroups(#[from] enjin_sys::cgroup::DetectError),
    /// A directory of the sandbox (root's, mode 0700 or 0755) could not be made.
    #[error("{}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The error from the filesystem.
        source: std::io::Error,
    },
    /// The instance's size-limited filesystem could not be formatted or attached.
    #[error(transparent)]
    Disk(#[from] enjin_sys::disk::DiskError),
}

fn dir_error(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + use<> {
    let path = path.to_path_buf();
    move |source| SandboxError::Dir { path, source }
}

impl SandboxLauncher {
    /// `cgroup_parent` names this host's branch of the cgroup tree (e.g. `enjin/host-1`).
    pub fn new(root: &Path, logs: &Path, cgroup_parent: &str) -> Result<Self, SandboxError> {
        let cgroups = enjin_sys::cgroup::detect(&CgroupConfig {
            parent: cgroup_parent.into(),
            ..CgroupConfig::default()
        })?;
        private_dir(root).map_err(dir_error(root))?;
        let empty = root.join(".empty");
        std::fs::create_dir_all(&empty).map_err(dir_error(&empty))?;
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o755))
            .map_err(dir_error(&empty))?;
        let disks = enjin_sys::disk::available();
        if !disks {
            tracing::warn!(
                "no loop devices or mkfs.ext4: instances' writable layers are tmpfs, counted as memory"
            );
        }
        Ok(SandboxLauncher {
            root: root.to_path_buf(),
            logs: logs.to_path_buf(),
            cgroups,
            children: Mutex::new(HashMap::new()),
            next: std::sync::Arc::new(Mutex::new(HashMap::new())),
            disks,
            network: None,
        })
    }

    /// Tell `network` whenever an instance's network is made.
    pub fn with_network(mut self, network: std::sync::Arc<crate::network::HostNetwork>) -> Self {
        self.network = Some(network);
        self
    }

    /// What `id`'s next launch runs with.
    pub fn set_child(&self, id: &str, child: SandboxChild) {
        if let Ok(mut c) = self.children.lock() {
            c.insert(id.to_string(), child);
        }
    }

    /// Removes what the children not in `keep` left on the host: their directories (disk
    /// images and empty mount points, all root's), and their cgroups once empty. Children
    /// still running are left alone until a later call.
    pub fn clean_up(&self, keep: &HashSet<String>) {
        if let Ok(mut c) = self.children.lock() {
            c.retain(|id, _| keep.contains(id));
        }
        // Unused prepared disks detach when dropped (they were never mounted).
        if let Ok(mut n) = self.next.lock() {
            n.retain(|id, _| keep.contains(id));
        }
        let Ok(entries) = std::fs::read_dir(&self.root) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || keep.contains(&name) || name.parse::<uuid::Uuid>().is_err() {
                continue;
            }
            match self.cgroups.create(&name) {
                Ok(group) => {
                    if group.pids().map(|p| !p.is_empty()).unwrap_or(false) {
                        continue;
                    }
                    if let Err(e) = group.delete() {
                        tracing::debug!(child = %name, error = %e, "cgroup not removed yet");
                        continue;
                    }
                }
                Err(e) => tracing::debug!(child = %name, error = %e, "no cgroup to remove"),
            }
            remove_network(&name);
            // Root's own tree: image files and empty mount points, never mounted on the host.
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => tracing::info!(child = %name, "removed instance directory"),
                Err(e) => tracing::warn!(child = %name, error = %e, "failed to remove instance directory"),
            }
        }
    }

    /// Removes instance namespaces no child in `keep` uses (left by children removed while
    /// this agent was away, whose directories are already gone).
    pub fn clean_up_networks(&self, keep: &HashSet<String>) {
        let wanted: HashSet<String> = keep.iter().map(|id| instance_names(id).netns).collect();
        for ns in enjin_net::instance::list_instances() {
            if wanted.contains(&ns) {
                continue;
            }
            let names = InstanceNames { veth: ns.clone(), netns: ns };
            // Another host's instance: not ours to remove.
            if !enjin_net::instance::is_local(&names) {
                continue;
            }
            match enjin_net::instance::remove_instance(&names) {
                Ok(()) => tracing::info!(netns = %names.netns, "removed instance network"),
                Err(e) => tracing::warn!(netns = %names.netns, error = %e, "instance network not removed"),
            }
        }
    }

    /// The packages (hex digests) of instances whose directories are still here.
    pub fn packages_in_use(&self) -> HashSet<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return HashSet::new() };
        entries
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("package")).ok())
            .map(|d| d.trim().to_string())
            .collect()
    }

    /// The instance's writable filesystem for this start, and the loop device holding it (to
    /// be dropped once the sandbox has mounted it).
    fn writable(
        &self,
        dir: &Path,
        resources: &Resources,
    ) -> Result<(Writable, Option<enjin_sys::disk::LoopDevice>), SandboxError> {
        let mountpoint = dir.join("disk");
        private_dir(&mountpoint).map_err(dir_error(&mountpoint))?;
        let bytes = resources.disk_bytes.unwrap_or(UNLIMITED_DISK).max(enjin_sys::disk::MIN_BYTES);
        if !self.disks {
            let bytes = resources.memory_bytes.map_or(bytes, |m| bytes.min(m));
            return Ok((Writable::Tmpfs { bytes, mountpoint }, None));
        }
        let image = dir.join("disk.img");
        // A fresh filesystem every start: the one prepared after the last start, or a new one.
        let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let prepared = self.next.lock().ok().and_then(|mut n| n.remove(&id)).filter(|p| p.bytes == bytes);
        let device = match prepared {
            Some(p) if std::fs::rename(&p.image, &image).is_ok() => p.device,
            _ => {
                enjin_sys::disk::format_ext4(&image, bytes)?;
                enjin_sys::disk::LoopDevice::attach(&image)?
            }
        };
        Ok((Writable::Device { device: device.path().to_path_buf(), mountpoint }, Some(device)))
    }

    /// Formats and attaches the next start's filesystem in the background (about 10 ms of
    /// mkfs and loop set-up off the restart path). A failure only means the next start makes
    /// its own.
    fn prepare_next(&self, id: &str, dir: PathBuf, bytes: u64) {
        let next = std::sync::Arc::clone(&self.next);
        let id = id.to_string();
        std::thread::spawn(move || {
            let image = dir.join("next.img");
            let made = enjin_sys::disk::format_ext4(&image, bytes)
                .and_then(|()| enjin_sys::disk::LoopDevice::attach(&image));
            match made {
                Ok(device) => {
                    if let Ok(mut n) = next.lock() {
                        n.insert(id, Prepared { bytes, image, device });
                    }
                }
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "failed to prepare the next disk"),
            }
        });
    }
}

/// A formatted, attached, never mounted filesystem waiting for a child's next start.
#[derive(Debug)]
struct Prepared {
    bytes: u64,
    image: PathBuf,
    device: enjin_sys::disk::LoopDevice,
}

/// The absolute path of `program`, looked up on the usual system directories.
fn resolve(program: &str) -> Option<PathBuf> {
    if program.starts_with('/') {
        return Some(PathBuf::from(program));
    }
    ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// Removes a gone child's namespace and veth pair, if it had them.
fn remove_network(id: &str) {
    let names = instance_names(id);
    if enjin_net::instance::netns_path(&names.netns).exists()
        && let Err(e) = enjin_net::instance::remove_instance(&names)
    {
        tracing::warn!(child = %id, error = %e, "instance network not removed");
    }
}

impl Launcher for SandboxLauncher {
    fn launch(&self, spec: &ChildSpec) -> Result<Launched, LaunchError> {
        let id = spec.id.clone();
        let name = spec.command.first().cloned().unwrap_or_default();
        let program =
            resolve(&name).ok_or_else(|| spawn_error(&id, &name, "not found on the system path"))?;
        let child = self.children.lock().ok().and_then(|c| c.get(id.as_str()).cloned()).unwrap_or_default();
        let uid = child.uid.filter(|u| *u != 0).ok_or_else(|| {
            spawn_error(&id, &name, "the control plane reserved no uid for it (spec.run.uid)")
        })?;
        let dir = self.root.join(id.as_str());
        private_dir(&dir).map_err(|e| spawn_error(&id, &name, format!("{}: {e}", dir.display())))?;
        let root = dir.join("root");
        private_dir(&root).map_err(|e| spawn_error(&id, &name, format!("{}: {e}", root.display())))?;
        // Which package the instance's overlay holds, so it is not removed while the instance
        // may still be stopping.
        if let Some(digest) = child.package.as_ref().and_then(|p| p.file_name()) {
            let marker = dir.join("package");
            std::fs::write(&marker, digest.as_encoded_bytes())
                .map_err(|e| spawn_error(&id, &name, format!("{}: {e}", marker.display())))?;
        }

        let group = self.cgroups.create(id.as_str()).map_err(|e| spawn_error(&id, &name, e))?;
        let resources = child.resources.clone();
        let limits = Limits {
            memory_bytes: resources.memory_bytes,
            cpu_millicores: resources.cpu_millis,
            pids: resources.pids,
        };
        group.set_limits(&limits).map_err(|e| spawn_error(&id, &name, e))?;
        let open = |suffix: &str| {
            let path = self.logs.join(format!("{}.{suffix}.log", id.as_str()));
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map(|f| Stdio::Fd(f.into()))
                .map_err(|e| LaunchError::Log { path, source: e })
        };
        let (writable, device) = self.writable(&dir, &resources).map_err(|e| spawn_error(&id, &name, e))?;
        let disk_bytes = match &writable {
            Writable::Device { .. } => Some(resources.disk_bytes.unwrap_or(UNLIMITED_DISK)),
            Writable::Tmpfs { .. } => None,
        };
        let lower = child.package.clone().unwrap_or_else(|| self.root.join(".empty"));
        let mut sandbox = SandboxSpec::new(program, uid, uid, APP_DIR);
        if let Some(net) = &child.network {
            let names = InstanceNames { netns: net.netns.clone(), veth: net.interface.clone() };
            enjin_net::instance::ensure_instance(&names, net.address)
                .map_err(|e| spawn_error(&id, &name, format!("its network: {e}")))?;
            if let Some(network) = &self.network {
                network.resync();
            }
            sandbox.netns = Some(enjin_net::instance::netns_path(&net.netns));
        }
        let resolv_conf = match child.network.as_ref().filter(|n| !n.nameservers.is_empty()) {
            Some(net) => {
                Some(write_resolv_conf(&dir, &net.nameservers).map_err(|e| spawn_error(&id, &name, e))?)
            }
            None => None,
        };
        sandbox.jail = Some(Jail {
            root,
            app: APP_DIR.into(),
            lower,
            writable,
            shm_bytes: SHM_BYTES.min(resources.disk_bytes.unwrap_or(SHM_BYTES)),
            resolv_conf,
        });
        sandbox.args = spec.command.iter().skip(1).map(Into::into).collect();
        sandbox.env = spec.env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        sandbox.env.push(("HOME".into(), APP_DIR.into()));
        sandbox.env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
        sandbox.env.push(("TMPDIR".into(), "/tmp".into()));
        sandbox.join_cgroup(group.as_ref());
        sandbox.stdout = open("stdout")?;
        sandbox.stderr = open("stderr")?;
        sandbox.log_budget = Some(LOG_BUDGET);
        let spawned = enjin_sys::sandbox::spawn(sandbox);
        // The sandbox has mounted the device (or failed): our handle is no longer needed, and
        // the device detaches itself when the sandbox's mount namespace ends.
        drop(device);
        if let Some(bytes) = disk_bytes {
            self.prepare_next(id.as_str(), dir, bytes);
        }
        let mut child = spawned.map_err(|e| spawn_error(&id, &name, e))?;
        let pid = u32::try_from(child.pid().as_raw()).map_err(|_| LaunchError::NoPid { id: id.clone() })?;
        let process = ProcessHandle { pid, pgid: pid, start_time: child.start_time() };
        let waiter = ExitWaiter::new(async move {
            let status = tokio::task::spawn_blocking(move || child.wait())
                .await
                .map_err(std::io::Error::other)?
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(Exit::from_std(status))
        });
        tracing::info!(child = %id, pid, uid, "sandboxed child started");
        Ok(Launched { process, waiter })
    }

    /// The child's cgroup is named by its id and outlives an agent killed before it recorded
    /// the launch: the oldest live group leader in it is the process that launch started.
    fn find(&self, spec: &ChildSpec) -> Option<ProcessHandle> {
        let group = self.cgroups.existing(spec.id.as_str()).ok()??;
        let pids = group.pids().ok()?;
        let leader = pids
            .into_iter()
            .filter_map(|pid| enjin_sys::proc::stat(pid).ok())
            .filter(|s| s.pid == s.pgrp && s.state != 'Z' && s.state != 'X')
            .min_by_key(|s| s.start_time)?;
        let pid = u32::try_from(leader.pid).ok()?;
        Some(ProcessHandle { pid, pgid: pid, start_time: leader.start_time })
    }

    fn signal(&self, p: &ProcessHandle, s: Signal) -> Result<(), SignalError> {
        let signal = enjin_sys::Signal::try_from(s.number())
            .map_err(|_| SignalError::InvalidGroup { pgid: p.pgid })?;
        let pgid = i32::try_from(p.pgid).map_err(|_| SignalError::InvalidGroup { pgid: p.pgid })?;
        enjin_sys::proc::signal_group(enjin_sys::Pid::from_raw(pgid), signal)
            .map_err(|e| SignalError::Failed { signal: s, pgid: p.pgid, reason: e.to_string() })
    }
}
