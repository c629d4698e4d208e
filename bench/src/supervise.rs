//! Supervision: how long a SIGKILLed child takes to come back under `enjin-supervisor`, with a
//! plain [`ProcessLauncher`] (the anchor) and with the agent's unix-user [`SandboxLauncher`]
//! (clone into new namespaces, private mounts, its own cgroup and uid, a tiny init) measured in
//! the same run; and how many processes, and how much memory, each supervised instance costs
//! beside the program itself.
//!
//! The child is this very binary in its hidden `--serve-token` mode: a TCP server on a fixed
//! loopback port that answers every connection with a token unique to the process, and starts
//! in about a millisecond, so the rows measure the supervisor and the launcher rather than an
//! interpreter's start-up. The token tells a connection to the replacement from one to the
//! killed process that had not died yet.
//!
//! Everything it creates lives in one directory under `/var/tmp` (the sandbox mounts a private
//! `/tmp` over the real one, so workdirs cannot be under it) and one cgroup branch named after
//! this process; both are removed at the end, and every child is stopped.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use enjin_agent::{SandboxChild, SandboxLauncher};
use enjin_model::kinds::ObservationState;
use enjin_model::kinds::Resources;
use enjin_supervisor::{
    Backoff, ChildId, ChildSpec, Intensity, Launcher, Observation, ProcessLauncher, Restart, RestartPolicy,
    Signal, StopSpec, Supervisor, SupervisorConfig,
};
use enjin_sys::cgroup::CgroupConfig;
use tokio::sync::mpsc;

use crate::procfs::{self, Memory};
use crate::run::{Limits, Sample, TaskReport};

/// Kills per row, and the time a row may take, whichever runs out first.
pub const KILLS: u64 = 100;
pub const QUICK_KILLS: u64 = 5;
pub const ROW_TIME: Duration = Duration::from_secs(60);
pub const QUICK_ROW_TIME: Duration = Duration::from_secs(20);
/// How long one replacement may take before the row gives up on it.
pub const PATIENCE: Duration = Duration::from_secs(10);
/// How often the port is tried while the child is down.
pub const POLL: Duration = Duration::from_millis(1);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// Restarts the policy allows per period: far more than a row makes, so that it never fails.
pub const MAX_RESTARTS: u32 = 10_000;
const PERIOD: Duration = Duration::from_secs(60);
/// How long stopping a row's supervisor (and its child) may take.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(30);
/// Where temporary directories go: not /tmp, which the sandbox replaces with its own.
pub const VAR_TMP: &str = "/var/tmp";
/// The sandbox's uids: a small block far above the agent's (200000 and up), offset by our pid
/// so that two runs at once never share one.
const UID_BASE: u32 = 2_900_000;
const UID_COUNT: u32 = 8;

/// Which launcher a row uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Process,
    Sandbox,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Process => "process (ProcessLauncher): anchor",
            Strategy::Sandbox => "unix-user sandbox (SandboxLauncher)",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Strategy::Process => "process",
            Strategy::Sandbox => "sandbox",
        }
    }
}

/// Which backoff a row's restart policy has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delay {
    /// `Backoff::none()`: restart at once.
    None,
    /// The default backoff, every kill the first crash of a loop.
    Default,
}

impl Delay {
    pub fn name(self) -> &'static str {
        match self {
            Delay::None => "0 ms (Backoff::none)",
            Delay::Default => "default: 100 ms + up to 10% jitter",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Delay::None => "0ms",
            Delay::Default => "default",
        }
    }

    /// The default's `reset_after` (10 s) would make kills closer together than that one crash
    /// loop, doubling the delay each time up to 30 s; with it at zero every kill waits the
    /// initial 100 ms (plus jitter), which is what a child that crashes now and then sees.
    fn backoff(self) -> Backoff {
        match self {
            Delay::None => Backoff::none(),
            Delay::Default => Backoff { reset_after: Duration::ZERO, ..Backoff::default() },
        }
    }
}

/// How long each replacement serves before it is killed. Back to back, the sandbox's restart
/// looks several times cheaper than it is: joining a cgroup v1 (writing `cgroup.procs`) waits for
/// an RCU grace period, about 10 ms here, unless another join happened a few milliseconds
/// before. 100 ms is well past that, and still lets a row make its 100 kills in seconds.
pub const UPTIME: Duration = Duration::from_millis(100);

/// One row's launcher, backoff and uptime before each kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub strategy: Strategy,
    pub delay: Delay,
    pub uptime: Duration,
}

impl Plan {
    const fn new(strategy: Strategy, delay: Delay, uptime: Duration) -> Self {
        Plan { strategy, delay, uptime }
    }

    /// Also the child's id and cgroup name.
    fn slug(self) -> String {
        format!("{}-{}-up{}ms", self.strategy.slug(), self.delay.slug(), self.uptime.as_millis())
    }

    /// The row this one compares with: the plain process under the same backoff and uptime.
    pub fn anchor(self) -> Plan {
        Plan { strategy: Strategy::Process, ..self }
    }
}

/// The rows, in print order. The last two kill each replacement as soon as it answers.
pub const PLANS: [Plan; 6] = [
    Plan::new(Strategy::Process, Delay::None, UPTIME),
    Plan::new(Strategy::Sandbox, Delay::None, UPTIME),
    Plan::new(Strategy::Process, Delay::Default, UPTIME),
    Plan::new(Strategy::Sandbox, Delay::Default, UPTIME),
    Plan::new(Strategy::Process, Delay::None, Duration::ZERO),
    Plan::new(Strategy::Sandbox, Delay::None, Duration::ZERO),
];

/// One row: SIGKILL the program, again and again.
#[derive(Debug)]
pub struct KillRow {
    pub plan: Plan,
    /// From the kill to the supervisor's `running` observation for the replacement.
    pub running: Sample,
    /// From the kill to a TCP connection answered by the replacement.
    pub serving: Sample,
    /// Restarts the supervisor counted under the row's spec.
    pub restarts: u32,
    pub observations_dropped: u64,
    /// Why the row did not run.
    pub skipped: Option<String>,
}

impl KillRow {
    fn skipped(plan: Plan, limits: Limits, why: String) -> Self {
        let empty = || Sample::new(1, limits, Duration::ZERO, Vec::new());
        KillRow {
            plan,
            running: empty(),
            serving: empty(),
            restarts: 0,
            observations_dropped: 0,
            skipped: Some(why),
        }
    }

    /// Why the row failed, if it did.
    pub fn failure(&self) -> Option<String> {
        [&self.running, &self.serving].iter().find_map(|s| s.first_error.clone())
    }
}

/// A process in an instance's tree.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    pub comm: String,
    pub memory: Memory,
}

/// What one running instance is made of, seen from `/proc`.
#[derive(Debug)]
pub struct Instance {
    pub strategy: Strategy,
    /// The supervised pid and everything below it.
    pub tree: usize,
    /// Processes in the supervised pid's process group.
    pub group: usize,
    pub program: Proc,
    /// Everything in the tree but the program.
    pub extra: Vec<Proc>,
}

/// The section's results.
#[derive(Debug)]
pub struct Results {
    pub rows: Vec<KillRow>,
    pub instances: Vec<Instance>,
    /// Problems cleaning up (cgroups, directories), which fail the run.
    pub cleanup: Vec<String>,
}

/// The section's settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub kills: u64,
    pub row_time: Duration,
}

impl Settings {
    pub fn new(quick: bool) -> Self {
        if quick {
            Settings { kills: QUICK_KILLS, row_time: QUICK_ROW_TIME }
        } else {
            Settings { kills: KILLS, row_time: ROW_TIME }
        }
    }

    fn limits(self) -> Limits {
        Limits { ops: self.kills, time: self.row_time }
    }
}

/// A block of uids for the sandbox rows.
#[derive(Debug, Clone, Copy)]
pub struct UidRange {
    pub base: u32,
    pub count: u32,
}

/// The sandbox's uid block and cgroup branch for this run.
pub fn uid_range() -> UidRange {
    UidRange { base: UID_BASE + (std::process::id() % 4096) * UID_COUNT, count: UID_COUNT }
}

/// The sandbox rows' writable layer: the default disk of a deployed instance.
const SANDBOX_DISK: u64 = 1 << 30;

pub fn cgroup_parent() -> String {
    format!("enjin-bench-{}", std::process::id())
}

/// The hidden `--serve-token PORT` mode: the supervised child. Answers every connection on
/// 127.0.0.1:PORT with a token unique to this process, until killed.
pub fn serve(port: u16) -> ExitCode {
    let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: failed to listen on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    // The pid alone is not unique: in the sandbox's PID namespace every program is pid 2.
    let token = format!("{}-{nanos}", std::process::id());
    // A failed accept or a client that went away is its own problem; the server goes on.
    for mut stream in listener.incoming().flatten() {
        let _ = stream.write_all(token.as_bytes());
    }
    ExitCode::SUCCESS
}

/// The token served on `addr`, if something answers.
fn fetch_token(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT)).ok()?;
    let mut token = String::new();
    stream.read_to_string(&mut token).ok()?;
    (!token.is_empty()).then_some(token)
}

/// Tries `addr` every [`POLL`] until it serves a token other than `old`; returns the time since
/// `since` and the new token. Blocking.
fn wait_serving(addr: SocketAddr, old: Option<String>, since: Instant) -> Result<(Duration, String), String> {
    loop {
        if let Some(token) = fetch_token(addr).filter(|t| Some(t) != old.as_ref()) {
            return Ok((since.elapsed(), token));
        }
        if since.elapsed() >= PATIENCE {
            return Err(format!("nothing new answered on {addr} within {PATIENCE:?}"));
        }
        std::thread::sleep(POLL);
    }
}

/// A free port on 127.0.0.1 now (it is free again once the listener is dropped).
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("failed to find a free port")?;
    Ok(listener.local_addr().context("failed to read the free port")?.port())
}

/// Waits for the next `running` observation and returns its pid.
async fn next_running(rx: &mut mpsc::Receiver<Observation>, deadline: Instant) -> Result<u32, String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let o = match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(o)) => o,
            Ok(None) => return Err("the supervisor closed its observation channel".into()),
            Err(_) => return Err(format!("no running observation within {PATIENCE:?}")),
        };
        match o.state {
            ObservationState::Running => {
                return o.pid.ok_or_else(|| format!("running without a pid: {}", o.message));
            }
            ObservationState::Failed => return Err(format!("the child failed: {}", o.message)),
            _ => {}
        }
    }
}

/// The program in an instance whose supervised pid is `pid`: the pid itself for a plain
/// process; the init's one child in a sandbox.
fn program_pid(strategy: Strategy, pid: u32) -> Result<u32, String> {
    match strategy {
        Strategy::Process => Ok(pid),
        Strategy::Sandbox => match procfs::children(pid)[..] {
            [program] => Ok(program),
            ref other => {
                Err(format!("the sandbox's init (pid {pid}) has children {other:?}, not one program"))
            }
        },
    }
}

fn proc_of(stat: &procfs::ProcStat) -> anyhow::Result<Proc> {
    let memory =
        procfs::memory(stat.pid).with_context(|| format!("failed to read the memory of pid {}", stat.pid))?;
    Ok(Proc { pid: stat.pid, comm: stat.comm.clone(), memory })
}

/// What the instance whose supervised pid is `pid` is made of.
fn instance(strategy: Strategy, pid: u32) -> anyhow::Result<Instance> {
    let program = program_pid(strategy, pid).map_err(anyhow::Error::msg)?;
    let table = procfs::table();
    let tree = procfs::tree(&table, pid);
    let root = tree.first().with_context(|| format!("supervised pid {pid} is gone"))?;
    let group = table.iter().filter(|s| s.pgrp == root.pgrp).count();
    let program =
        tree.iter().find(|s| s.pid == program).context("the program is not in the instance's tree")?;
    let extra =
        tree.iter().filter(|s| s.pid != program.pid).map(|s| proc_of(s)).collect::<anyhow::Result<_>>()?;
    Ok(Instance { strategy, tree: tree.len(), group, program: proc_of(program)?, extra })
}

/// The directory, launchers' settings and binary shared by the rows.
struct Env {
    dir: PathBuf,
    exe: PathBuf,
    root: bool,
    uids: UidRange,
    cgroup_parent: String,
}

/// Runs every row, then removes the cgroup branch; `dir` is a directory under [`VAR_TMP`] that
/// sandbox users may traverse.
pub async fn run(dir: &Path, settings: Settings) -> anyhow::Result<Results> {
    let own = std::env::current_exe().context("cannot find this binary to run it as the child")?;
    // The child runs from a copy beside the sandboxes: this binary may live under /tmp (a
    // checkout there), which a sandbox replaces with its own private /tmp.
    let exe = dir.join("serve-token");
    std::fs::copy(&own, &exe)
        .with_context(|| format!("failed to copy {} to {}", own.display(), exe.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("failed to make {} executable", exe.display()))?;
    }
    // The sandboxed child runs it from its package, at /app/serve-token in its jail.
    let package = dir.join("package");
    std::fs::create_dir_all(&package).with_context(|| format!("failed to create {}", package.display()))?;
    std::fs::copy(&own, package.join("serve-token"))
        .with_context(|| format!("failed to copy {} into {}", own.display(), package.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        for (path, mode) in [(package.join("serve-token"), 0o777), (package.clone(), 0o777)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("failed to set the mode of {}", path.display()))?;
        }
    }
    let env = Env {
        dir: dir.to_path_buf(),
        exe,
        root: procfs::is_root(),
        uids: uid_range(),
        cgroup_parent: cgroup_parent(),
    };
    let mut rows = Vec::new();
    let mut instances = Vec::new();
    let mut cleanup = Vec::new();
    for plan in PLANS {
        if plan.strategy == Strategy::Sandbox && !env.root {
            let why = "needs root (uids, namespaces, cgroups)".to_string();
            rows.push(KillRow::skipped(plan, settings.limits(), why));
            continue;
        }
        eprintln!("  {}…", plan.slug());
        match kill_row(&env, plan, settings).await {
            Ok((row, inst)) => {
                rows.push(row);
                instances.extend(inst);
            }
            Err(e) => {
                cleanup.extend(remove_cgroups(&env.cgroup_parent).err());
                return Err(e);
            }
        }
    }
    if env.root {
        cleanup.extend(remove_cgroups(&env.cgroup_parent).err());
    }
    Ok(Results { rows, instances, cleanup })
}

/// One row: its own supervisor and child; the child is stopped whatever happens.
async fn kill_row(env: &Env, plan: Plan, settings: Settings) -> anyhow::Result<(KillRow, Option<Instance>)> {
    let Plan { strategy, delay, uptime } = plan;
    let name = plan.slug();
    let logs = env.dir.join("logs");
    let launcher: Arc<dyn Launcher> = match strategy {
        Strategy::Process => Arc::new(ProcessLauncher::new(&logs)),
        Strategy::Sandbox => {
            std::fs::create_dir_all(&logs).with_context(|| format!("failed to create {}", logs.display()))?;
            let root = env.dir.join("instances");
            let launcher = SandboxLauncher::new(&root, &logs, &env.cgroup_parent)
                .map_err(anyhow::Error::msg)
                .context("failed to set up the sandbox launcher")?;
            launcher.set_child(
                &name,
                SandboxChild {
                    uid: Some(env.uids.base),
                    resources: Resources { disk_bytes: Some(SANDBOX_DISK), ..Resources::default() },
                    package: Some(env.dir.join("package")),
                    network: None,
                },
            );
            Arc::new(launcher)
        }
    };
    let program = match strategy {
        Strategy::Process => env.exe.display().to_string(),
        Strategy::Sandbox => format!("{}/serve-token", enjin_agent::APP_DIR),
    };
    let port = free_port()?;
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let id = ChildId::new(name.clone())?;
    let mut spec = ChildSpec::new(id.clone(), vec![program, "--serve-token".into(), port.to_string()]);
    spec.inherit_env = false;
    spec.restart = RestartPolicy {
        restart: Restart::Permanent,
        intensity: Intensity { max_restarts: MAX_RESTARTS, period: PERIOD },
        backoff: delay.backoff(),
    };
    spec.stop = StopSpec { signal: Signal::Term, grace: Duration::from_secs(5) };

    let (tx, mut rx) = mpsc::channel(1024);
    let config = SupervisorConfig::new(env.dir.join(format!("supervisor-{name}")));
    let supervisor = Supervisor::start(config, launcher, tx).await.context("failed to start a supervisor")?;
    let handle = supervisor.handle();
    let measured = async {
        handle.ensure(spec).await.context("failed to start the child")?;
        let deadline = Instant::now() + PATIENCE;
        let pid = next_running(&mut rx, deadline).await.map_err(anyhow::Error::msg).context("first start")?;
        let (_, token) = tokio::task::spawn_blocking(move || wait_serving(addr, None, Instant::now()))
            .await?
            .map_err(anyhow::Error::msg)
            .context("first start")?;
        let (running, serving, pid) = kills(plan, &mut rx, addr, pid, token, settings).await?;
        // Once per launcher, in its first row, if nothing went wrong in it.
        let first = delay == Delay::None && !uptime.is_zero();
        let inst =
            (first && running.errors + serving.errors == 0).then(|| instance(strategy, pid)).transpose()?;
        let snapshot = handle.snapshot().await?;
        let restarts = snapshot.get(&id).map_or(0, |c| c.restarts);
        let row = KillRow {
            plan,
            running,
            serving,
            restarts,
            observations_dropped: snapshot.observations_dropped,
            skipped: None,
        };
        anyhow::Ok((row, inst))
    }
    .await;
    let stopped = match tokio::time::timeout(SHUTDOWN_PATIENCE, supervisor.shutdown()).await {
        Ok(r) => r.context("the supervisor was gone before its shutdown"),
        Err(_) => Err(anyhow::anyhow!("the supervisor did not stop its child within {SHUTDOWN_PATIENCE:?}")),
    };
    let row = measured.with_context(|| format!("row {name}"))?;
    stopped.with_context(|| format!("row {name}"))?;
    Ok(row)
}

/// The kill loop: let the child serve for the plan's uptime, SIGKILL the program, then time the
/// replacement's `running` observation and its first answer. Returns both samples and the last
/// supervised pid.
async fn kills(
    plan: Plan,
    rx: &mut mpsc::Receiver<Observation>,
    addr: SocketAddr,
    mut pid: u32,
    mut token: String,
    settings: Settings,
) -> anyhow::Result<(Sample, Sample, u32)> {
    let limits = settings.limits();
    let (mut running, mut serving) = (TaskReport::default(), TaskReport::default());
    let start = Instant::now();
    for _ in 0..settings.kills {
        if start.elapsed() >= settings.row_time {
            break;
        }
        tokio::time::sleep(plan.uptime).await;
        // Whatever arrived so far is about the process being killed.
        while rx.try_recv().is_ok() {}
        let program = match program_pid(plan.strategy, pid) {
            Ok(p) => p,
            Err(e) => {
                running.error(e);
                break;
            }
        };
        let target = enjin_sys::Pid::from_raw(i32::try_from(program).context("pid out of range")?);
        let killed_at = Instant::now();
        if let Err(e) = enjin_sys::proc::signal(target, enjin_sys::Signal::SIGKILL) {
            running.error(e);
            break;
        }
        let old = Some(token.clone());
        let poller = tokio::task::spawn_blocking(move || wait_serving(addr, old, killed_at));
        match next_running(rx, killed_at + PATIENCE).await {
            Ok(p) => {
                running.latencies.push(killed_at.elapsed());
                pid = p;
            }
            Err(e) => running.error(e),
        }
        match poller.await.context("the port poller panicked")? {
            Ok((took, t)) => {
                serving.latencies.push(took);
                token = t;
            }
            Err(e) => serving.error(e),
        }
        if running.errors + serving.errors > 0 {
            break;
        }
    }
    let elapsed = start.elapsed();
    Ok((Sample::new(1, limits, elapsed, vec![running]), Sample::new(1, limits, elapsed, vec![serving]), pid))
}

/// Removes the run's cgroup branch: each group, then the branch's own directories.
fn remove_cgroups(parent: &str) -> Result<(), String> {
    let config = CgroupConfig { parent: parent.into(), ..CgroupConfig::default() };
    let cgroups = enjin_sys::cgroup::detect(&config).map_err(|e| format!("cgroups: {e}"))?;
    for name in cgroups.list().map_err(|e| e.to_string())? {
        if let Some(group) = cgroups.existing(&name).map_err(|e| e.to_string())? {
            group.delete().map_err(|e| e.to_string())?;
        }
    }
    for dir in cgroups.parent_dirs() {
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("failed to remove {}: {e}", dir.display())),
        }
    }
    Ok(())
}

/// A directory under [`VAR_TMP`] that sandbox users may pass through to their workdirs.
pub fn section_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(VAR_TMP)
        .with_context(|| format!("failed to create a temporary directory in {VAR_TMP}"))?;
    // Traversable, not listable: each workdir below is its own uid's, mode 0700.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("failed to set the mode of {}", dir.path().display()))?;
    Ok(dir)
}
