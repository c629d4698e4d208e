//! The `unix-user` strategy as a supervisor launcher: each child runs as its own uid from the
//! host's range, in its own cgroup with the node's limits, in a private mount namespace with the
//! system read-only and a private /tmp, in its own PID namespace, with no_new_privs — through
//! `enjin-sys`. Its workdir is `<root>/<id>`, private to its uid.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use enjin_model::kinds::Resources;
use enjin_supervisor::{
    ChildId, ChildSpec, Exit, ExitWaiter, LaunchError, Launched, Launcher, ProcessHandle, Signal, SignalError,
};
use enjin_sys::cgroup::{CgroupConfig, Cgroups, Limits};
use enjin_sys::sandbox::{SandboxSpec, Stdio};

/// The uids a host may give its children: `[base, base + count)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub base: u32,
    pub count: u32,
}

pub struct SandboxLauncher {
    root: PathBuf,
    logs: PathBuf,
    range: UidRange,
    cgroups: Box<dyn Cgroups>,
    /// Which uid each child has: kept in `<root>/uids.json` so a restarted agent gives a child
    /// back its own uid (and its files).
    uids: Mutex<BTreeMap<String, u32>>,
    /// The node's limits, by child, set before the supervisor launches it.
    limits: Mutex<HashMap<String, Resources>>,
    /// The unpacked package (and its digest) to install into each child's directory.
    apps: Mutex<HashMap<String, (PathBuf, String)>>,
}

impl std::fmt::Debug for SandboxLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxLauncher")
            .field("root", &self.root)
            .field("range", &self.range)
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

impl SandboxLauncher {
    /// `cgroup_parent` names this host's branch of the cgroup tree (e.g. `enjin/host-1`).
    pub fn new(root: &Path, logs: &Path, range: UidRange, cgroup_parent: &str) -> Result<Self, String> {
        let cgroups = enjin_sys::cgroup::detect(&CgroupConfig {
            parent: cgroup_parent.into(),
            ..CgroupConfig::default()
        })
        .map_err(|e| e.to_string())?;
        std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
        let uids = std::fs::read(root.join("uids.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Ok(SandboxLauncher {
            root: root.to_path_buf(),
            logs: logs.to_path_buf(),
            range,
            cgroups,
            uids: Mutex::new(uids),
            limits: Mutex::new(HashMap::new()),
            apps: Mutex::new(HashMap::new()),
        })
    }

    /// The node's limits for `id`'s next launch.
    pub fn set_limits(&self, id: &str, resources: Resources) {
        if let Ok(mut l) = self.limits.lock() {
            l.insert(id.to_string(), resources);
        }
    }

    /// The unpacked package `id` runs, installed into its directory before its first start.
    pub fn set_app(&self, id: &str, unpacked: PathBuf, digest: String) {
        if let Ok(mut a) = self.apps.lock() {
            a.insert(id.to_string(), (unpacked, digest));
        }
    }

    fn uid_for(&self, id: &str) -> Option<u32> {
        let mut uids = self.uids.lock().ok()?;
        if let Some(u) = uids.get(id) {
            return Some(*u);
        }
        let taken: std::collections::HashSet<u32> = uids.values().copied().collect();
        let uid = (self.range.base..self.range.base + self.range.count).find(|u| !taken.contains(u))?;
        uids.insert(id.to_string(), uid);
        let path = self.root.join("uids.json");
        let tmp = path.with_extension("tmp");
        if serde_json::to_vec(&*uids).ok().and_then(|b| std::fs::write(&tmp, b).ok()).is_some() {
            let _ = std::fs::rename(&tmp, &path);
        }
        Some(uid)
    }
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

impl Launcher for SandboxLauncher {
    fn launch(&self, spec: &ChildSpec) -> Result<Launched, LaunchError> {
        let id = spec.id.clone();
        let name = spec.command.first().cloned().unwrap_or_default();
        let program =
            resolve(&name).ok_or_else(|| spawn_error(&id, &name, "not found on the system path"))?;
        let uid = self
            .uid_for(id.as_str())
            .ok_or_else(|| spawn_error(&id, &name, "no free uid left in the host's range"))?;
        let app = self.apps.lock().ok().and_then(|a| a.get(id.as_str()).cloned());
        if let Some((unpacked, digest)) = app {
            crate::packages::install(&unpacked, &self.root.join(id.as_str()), &digest, Some((uid, uid)))
                .map_err(|e| spawn_error(&id, &name, e))?;
        }
        let group = self.cgroups.create(id.as_str()).map_err(|e| spawn_error(&id, &name, e))?;
        let resources = self.limits.lock().ok().and_then(|l| l.get(id.as_str()).cloned()).unwrap_or_default();
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
        let mut sandbox = SandboxSpec::new(program, uid, uid, self.root.join(id.as_str()));
        sandbox.args = spec.command.iter().skip(1).map(Into::into).collect();
        sandbox.env = spec.env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        sandbox.env.push(("HOME".into(), self.root.join(id.as_str()).into()));
        sandbox.env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
        sandbox.join_cgroup(group.as_ref());
        sandbox.stdout = open("stdout")?;
        sandbox.stderr = open("stderr")?;
        let mut child = enjin_sys::sandbox::spawn(sandbox).map_err(|e| spawn_error(&id, &name, e))?;
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

    fn signal(&self, p: &ProcessHandle, s: Signal) -> Result<(), SignalError> {
        let signal = enjin_sys::Signal::try_from(s.number())
            .map_err(|_| SignalError::InvalidGroup { pgid: p.pgid })?;
        let pgid = i32::try_from(p.pgid).map_err(|_| SignalError::InvalidGroup { pgid: p.pgid })?;
        enjin_sys::proc::signal_group(enjin_sys::Pid::from_raw(pgid), signal)
            .map_err(|e| SignalError::Failed { signal: s, pgid: p.pgid, stderr: e.to_string() })
    }
}
