//! What a cloud owns outside its data directory, and taking it apart.
//!
//! A data directory's cloud id (`<data-dir>/cloud-id`, made by its first `enjin up`) names the
//! cloud; its record (`enjin_net::cloud`, under `/run/enjin/clouds`) lists the bridge and the
//! hosts (namespace, veth, node) it made. Everything else hangs off those: the instances'
//! namespaces are reached through their veths in a host's namespace, the cgroups are
//! `enjin/<host node>` in every hierarchy, routes and firewall tables live and die with the
//! bridge and the namespaces, loop devices are backed by files in the data directory.
//!
//! A cloud is live while its data directory holds its id, or while its `enjin up` or any process
//! in its namespaces runs. `enjin up` reclaims the resources of clouds that are not live at
//! start, and never touches a live one's; `enjin down` takes apart its own.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use enjin_net::NetError;
use enjin_net::cloud::{CloudRecord, ID_FILE, RecordError};
use enjin_sys::{Pid, Signal};

/// Why a cloud's record could not be made, or its resources not taken apart.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The cloud id or pid file could not be written into the data directory.
    #[error("failed to write {}", path.display())]
    Write {
        /// `<data-dir>/cloud-id` or `<data-dir>/enjin.pid`.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// `/proc/self/stat` could not be read: without the start time a pid cannot be told apart
    /// from a later process that reuses it.
    #[error("failed to read this process's start time")]
    StartTime(#[source] enjin_sys::proc::ReadStatError),
    /// Another live `enjin up` holds the data directory: two would fight over its store, hosts
    /// and network.
    #[error("enjin up already runs for {} (pid {pid}); stop it first (Ctrl-C, or `enjin down`)", dir.display())]
    AlreadyUp {
        /// The data directory both would run on.
        dir: PathBuf,
        /// The `enjin up` already running, from its pid file (checked against its start time).
        pid: u32,
    },
    /// The data directory could not be made absolute for the record, which must name it from
    /// any working directory.
    #[error("failed to resolve {}", path.display())]
    Resolve {
        /// The data directory as given.
        path: PathBuf,
        /// Usually the current directory is gone.
        #[source]
        source: std::io::Error,
    },
    /// The cloud's record under `/run/enjin/clouds` could not be saved or removed.
    #[error("{what}")]
    Record {
        /// The step, as a whole message.
        what: &'static str,
        /// The record store's reason.
        #[source]
        source: RecordError,
    },
    /// A namespace, veth or bridge could not be deleted; [`take_apart`] stops there and may be
    /// run again.
    #[error("failed to remove {what}")]
    Remove {
        /// The object, as `namespace <name>` or `bridge <name>`.
        what: String,
        /// Why `ip` failed.
        #[source]
        source: NetError,
    },
    /// What runs in a host's cgroups could not be killed.
    #[error("failed to stop host {node}'s instances")]
    KillCgroup {
        /// The host's node uuid, which names its cgroup `enjin/<node>`.
        node: String,
        /// Why the processes could not be killed (or did not die in time).
        #[source]
        source: enjin_sys::cgroup::KillAllError,
    },
    /// A host's emptied cgroup directories could not be removed.
    #[error("failed to remove host {node}'s cgroups")]
    DeleteCgroup {
        /// The host's node uuid, which names its cgroup `enjin/<node>`.
        node: String,
        /// Why the directories could not be removed.
        #[source]
        source: enjin_sys::cgroup::DeleteGroupError,
    },
}

/// `<data-dir>/enjin.pid`: the running `enjin up` ("<pid> <start time>").
pub const PID_FILE: &str = "enjin.pid";

/// The data directory's cloud id, made on first use.
pub fn cloud_id(dir: &Path) -> Result<String, CloudError> {
    if let Some(id) = enjin_net::cloud::read_id(dir) {
        return Ok(id);
    }
    let id = uuid::Uuid::new_v4().to_string();
    write_private(&dir.join(ID_FILE), &format!("{id}\n"))?;
    Ok(id)
}

/// This process and its start time.
pub fn own_process() -> Result<(u32, u64), CloudError> {
    let pid = std::process::id();
    let start = enjin_sys::proc::start_time(Pid::this()).map_err(CloudError::StartTime)?;
    Ok((pid, start))
}

/// Whether `(pid, start_time)` names a running process (a zombie has stopped: only its parent
/// has yet to reap it).
pub fn running(pid: u32, start_time: u64) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    raw > 0
        && enjin_sys::proc::stat(Pid::from_raw(raw))
            .is_ok_and(|s| s.start_time == start_time && s.state != 'Z' && s.state != 'X')
}

/// The `enjin up` recorded in `dir`'s pid file, if it still runs.
pub fn running_up(dir: &Path) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(dir.join(PID_FILE)).ok()?;
    let mut parts = text.split_whitespace();
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    running(pid, start).then_some((pid, start))
}

/// Record this process as the data directory's `enjin up`, refusing if another one runs it.
pub fn claim(dir: &Path) -> Result<(), CloudError> {
    let (pid, start) = own_process()?;
    if let Some((other, _)) = running_up(dir).filter(|(p, _)| *p != pid) {
        return Err(CloudError::AlreadyUp { dir: dir.to_path_buf(), pid: other });
    }
    write_private(&dir.join(PID_FILE), &format!("{pid} {start}\n"))
}

fn write_private(path: &Path, contents: &str) -> Result<(), CloudError> {
    enjin_sys::fs::write_private(path, contents.as_bytes())
        .map_err(|source| CloudError::Write { path: path.to_path_buf(), source })
}

/// Forget the pid file at a clean stop.
pub fn release(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(PID_FILE));
}

/// A new record for this process's cloud, or the one kept from its last start (its hosts and
/// bridge may be found running and adopted), now naming this process.
pub fn record_for(dir: &Path, id: &str) -> Result<CloudRecord, CloudError> {
    let (pid, start_time) = own_process()?;
    let data_dir =
        std::path::absolute(dir).map_err(|source| CloudError::Resolve { path: dir.to_path_buf(), source })?;
    let mut record = enjin_net::cloud::records().into_iter().find(|r| r.id == id).unwrap_or(CloudRecord {
        id: id.to_string(),
        data_dir: data_dir.clone(),
        pid,
        start_time,
        bridge: None,
        hosts: Vec::new(),
    });
    record.data_dir = data_dir;
    record.pid = pid;
    record.start_time = start_time;
    record
        .save()
        .map_err(|source| CloudError::Record { what: "failed to record what this cloud makes", source })?;
    Ok(record)
}

/// Why a cloud is live (so that its resources must be left alone), or `None`.
pub fn live(record: &CloudRecord) -> Option<String> {
    if record.data_dir_is_ours() {
        return Some(format!("its data directory {} is there", record.data_dir.display()));
    }
    if running(record.pid, record.start_time) {
        return Some(format!("its enjin up runs (pid {})", record.pid));
    }
    let busy: Vec<Pid> = namespaces(record).iter().flat_map(|ns| pids_in(ns)).collect();
    if let Some(p) = busy.first() {
        return Some(format!("processes run in its namespaces (pid {p})"));
    }
    None
}

fn pids_in(netns: &str) -> Vec<Pid> {
    enjin_sys::proc::pids_in_netns(&enjin_net::instance::netns_path(netns))
}

/// Every namespace of the cloud: its hosts' and their instances'.
fn namespaces(record: &CloudRecord) -> Vec<String> {
    let mut out = Vec::new();
    for h in &record.hosts {
        out.extend(enjin_net::cloud::instance_namespaces(&h.netns).unwrap_or_default());
        out.push(h.netns.clone());
    }
    out
}

/// What [`take_apart`] removed.
#[derive(Debug, Default)]
pub struct Removed {
    /// Pids found running in the cloud's namespaces, each listed once, all stopped (SIGTERM,
    /// SIGKILL after 10 s) before anything else was removed.
    pub stopped: Vec<u32>,
    /// Network namespaces that existed and were removed: instances' first, then hosts'.
    pub namespaces: Vec<String>,
    /// Interfaces that existed and were removed: the hosts' veths, then the bridge.
    pub links: Vec<String>,
    /// Cgroup directories removed, in every hierarchy.
    pub cgroups: Vec<PathBuf>,
    /// Loop devices detached because their backing files are in the data directory.
    pub loop_devices: Vec<PathBuf>,
}

impl Removed {
    /// True when nothing was left to remove (the record alone was forgotten), as when
    /// [`take_apart`] runs a second time.
    pub fn is_empty(&self) -> bool {
        self.stopped.is_empty()
            && self.namespaces.is_empty()
            && self.links.is_empty()
            && self.cgroups.is_empty()
            && self.loop_devices.is_empty()
    }
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.stopped.is_empty() {
            parts.push(format!("stopped pids {:?}", self.stopped));
        }
        if !self.namespaces.is_empty() {
            parts.push(format!("namespaces {}", self.namespaces.join(" ")));
        }
        if !self.links.is_empty() {
            parts.push(format!("interfaces {}", self.links.join(" ")));
        }
        if !self.cgroups.is_empty() {
            parts.push(format!("{} cgroup directories", self.cgroups.len()));
        }
        if !self.loop_devices.is_empty() {
            parts.push(format!("{} loop devices", self.loop_devices.len()));
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// Stop a process: SIGTERM, then SIGKILL after `patience`.
pub fn stop(pid: u32, start_time: u64, patience: Duration) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let pid = Pid::from_raw(raw);
    let _ = enjin_sys::proc::signal(pid, Signal::SIGTERM);
    let deadline = Instant::now() + patience;
    while running(raw as u32, start_time) {
        if Instant::now() > deadline {
            let _ = enjin_sys::proc::signal(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Remove everything `record` names: processes left in its namespaces, its hosts' cgroups, its
/// instances' and hosts' namespaces, its bridge, then the record. Its `enjin up` must have
/// stopped. Idempotent; synchronous.
pub fn take_apart(record: &CloudRecord) -> Result<Removed, CloudError> {
    let mut removed = Removed::default();
    let all = namespaces(record);
    // Agents left by a crashed `enjin up` first (asked to stop their children), then whatever
    // is left in any namespace of the cloud.
    for ns in &all {
        for p in pids_in(ns) {
            let _ = enjin_sys::proc::signal(p, Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<Pid> = all.iter().flat_map(|ns| pids_in(ns)).collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for p in &left {
                let _ = enjin_sys::proc::signal(*p, Signal::SIGKILL);
            }
        }
        for p in left {
            let p = p.as_raw() as u32;
            if !removed.stopped.contains(&p) {
                removed.stopped.push(p);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for h in &record.hosts {
        removed.cgroups.extend(remove_cgroups(&h.node)?);
    }
    for ns in &all {
        if !enjin_net::cloud::netns_exists(ns) {
            continue;
        }
        let instance = ns.starts_with(enjin_net::INSTANCE_PREFIX);
        if instance {
            let names = enjin_net::instance::InstanceNames { netns: ns.clone(), veth: ns.clone() };
            enjin_net::instance::remove_instance(&names)
                .map_err(|source| CloudError::Remove { what: format!("namespace {ns}"), source })?;
        }
        removed.namespaces.push(ns.clone());
    }
    for h in &record.hosts {
        if enjin_net::cloud::link_exists(&h.veth) {
            removed.links.push(h.veth.clone());
        }
        enjin_net::remove_host(&h.netns, &h.veth)
            .map_err(|source| CloudError::Remove { what: format!("namespace {}", h.netns), source })?;
    }
    if let Some(b) = &record.bridge {
        if enjin_net::cloud::link_exists(b) {
            removed.links.push(b.clone());
        }
        // Its routes to the instances' blocks go with it.
        enjin_net::remove_bridge(b)
            .map_err(|source| CloudError::Remove { what: format!("bridge {b}"), source })?;
    }
    removed.loop_devices = enjin_sys::disk::detach_under(&record.data_dir);
    record
        .remove()
        .map_err(|source| CloudError::Record { what: "failed to forget the cloud's record", source })?;
    Ok(removed)
}

/// Kill what runs in a host's cgroups and remove them (`enjin/<node>` in every hierarchy).
fn remove_cgroups(node: &str) -> Result<Vec<PathBuf>, CloudError> {
    let config = enjin_sys::cgroup::CgroupConfig::default();
    let Ok(cgroups) = enjin_sys::cgroup::detect(&config) else { return Ok(Vec::new()) };
    let Some(group) = cgroups.existing(node).ok().flatten() else { return Ok(Vec::new()) };
    let dirs = group.dirs();
    group
        .kill_all(Duration::from_secs(10))
        .map_err(|source| CloudError::KillCgroup { node: node.to_string(), source })?;
    group.delete().map_err(|source| CloudError::DeleteCgroup { node: node.to_string(), source })?;
    Ok(dirs)
}

/// At `enjin up`'s start, as root: take apart every recorded cloud but `own` that is not live.
/// A dead cloud whose processes still run is left, said loudly, with how to stop it.
pub fn reclaim(own: &str) {
    for record in enjin_net::cloud::records().into_iter().filter(|r| r.id != own) {
        if let Some(why) = live(&record) {
            if !record.data_dir_is_ours() {
                tracing::warn!(
                    cloud = %record.id,
                    data_dir = %record.data_dir.display(),
                    "a cloud whose data directory is gone still runs ({why}); \
                     `enjin down --data-dir {}` stops it",
                    record.data_dir.display()
                );
            }
            continue;
        }
        match take_apart(&record) {
            Ok(r) => tracing::info!(
                cloud = %record.id,
                data_dir = %record.data_dir.display(),
                removed = %r,
                "reclaimed what a cloud whose data directory is gone left"
            ),
            Err(e) => {
                tracing::warn!(cloud = %record.id, error = %crate::error::chain(&e), "a gone cloud's resources not reclaimed")
            }
        }
    }
}
