//! The supervisor: one owner task per supervisor holds every child's state. Others talk to it
//! through a [`SupervisorHandle`], which sends typed commands over a bounded channel; helper tasks
//! (launch, wait, probe, restart timer, stop) report back to it as events over another bounded
//! channel, tagged with the child's generation so that news about an earlier incarnation is
//! dropped.
//!
//! It is level-triggered: `ensure` with an unchanged spec does nothing, a changed spec restarts
//! the child, `set_desired` stops whatever is not in the set. Every state change becomes an
//! [`Observation`]: pending → starting → running (⇄ unhealthy by probe) → exited, then starting
//! again under the restart policy, or failed once the restart intensity is exceeded: that is the
//! escalation to the parent, which decides what happens next.
//!
//! Children survive the supervisor. Their (pid, start time, spec) are written to
//! `<dir>/children.json` (temporary file, fsync, rename) whenever they change; a supervisor
//! started on the same directory adopts every child that is still the same process and starts
//! the ones that are gone. Adopted children are not its children, so it cannot wait for them: it
//! polls their liveness (pid + start time in `/proc`) every `adopted_poll_interval` and learns
//! nothing about their exit status, which the restart policy treats as abnormal.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use enjin_model::kinds::{NodeObservationSpec, ObservationState, ObservationStrategy};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::child::{
    ChildId, ChildSpec, LaunchError, Launched, Launcher, ProcessHandle, SpecError, SpecHash, StopSpec,
    Stopped,
};
use crate::policy::{Decision, Exit, RestartTracker};
use crate::probe::{Health, ProbeSpec, ProbeTracker, run_check};

const STATE_FILE: &str = "children.json";
const LOCK_FILE: &str = "supervisor.lock";
const STATE_VERSION: u32 = 1;
const EVENT_CAPACITY: usize = 256;

/// One supervisor's settings.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Holds the state file; one supervisor per directory.
    pub dir: PathBuf,
    /// Commands that may wait for the owner task before senders block.
    pub command_capacity: usize,
    /// How often an adopted child's liveness is checked.
    pub adopted_poll_interval: Duration,
    /// How long to wait before trying again when a stop failed (for example, `kill` missing).
    pub stop_retry: Duration,
    /// Whether recorded children that are not running start as soon as the supervisor does
    /// (true), or wait until a later `ensure` or `set_desired` names them again (false): a
    /// launcher that learns from the desired set how to run a child (its user, its sandbox)
    /// must not be asked to start one before it has seen that set.
    pub launch_restored: bool,
}

impl SupervisorConfig {
    /// Settings for a supervisor on `dir`: 64 queued commands, adopted children polled every
    /// second, failed stops retried every second, recorded children started at once.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SupervisorConfig {
            dir: dir.into(),
            command_capacity: 64,
            adopted_poll_interval: Duration::from_secs(1),
            stop_retry: Duration::from_secs(1),
            launch_restored: true,
        }
    }

    /// `<dir>/children.json`: every child's spec and process, written with mode 0600 (specs
    /// carry environment variables, which may be secrets) and replaced atomically.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
}

/// A state change of one child.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observation {
    /// The child whose state changed.
    pub child: ChildId,
    /// The state it entered. A child with a probe stays `starting` until the probe makes
    /// it healthy; one without a probe is `running` as soon as its process is.
    pub state: ObservationState,
    /// What saw it: the process itself, or the child's TCP or HTTP probe.
    pub strategy: ObservationStrategy,
    /// The process the child runs at that moment; `None` while it has none (pending, backing
    /// off, down, or just launched and not yet reported).
    pub pid: Option<u32>,
    /// Wall-clock time the supervisor saw the change.
    pub at: DateTime<Utc>,
    /// What happened, for a human: the exit status and the restart decision, a probe's answer,
    /// a launch error. Not length-limited here; [`to_node_observation`](Self::to_node_observation)
    /// cuts it.
    pub message: String,
}

impl Observation {
    /// The model's form of this observation, for the node this child runs; the message is cut to
    /// the model's 4096-byte limit and stripped of control characters.
    pub fn to_node_observation(&self, node: uuid::Uuid) -> NodeObservationSpec {
        let mut message: String = self
            .message
            .chars()
            .map(|c| if c.is_control() && c != '\n' && c != '\t' { ' ' } else { c })
            .collect();
        if message.len() > 4096 {
            let mut end = 4096;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        NodeObservationSpec {
            node,
            strategy: self.strategy,
            state: self.state,
            observed_at: self.at,
            message,
        }
    }
}

/// One child as the supervisor sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildStatus {
    /// The child.
    pub id: ChildId,
    /// The state of its latest observation, even when that observation was dropped.
    pub state: ObservationState,
    /// The process it runs now (also while it is being stopped); `None` when it has none.
    pub pid: Option<u32>,
    /// Restarts under the current spec.
    pub restarts: u32,
    /// Whether the running process was started by an earlier supervisor.
    pub adopted: bool,
    /// The hash of the wanted spec. The running process may still run an older one while a
    /// changed spec rolls out.
    pub spec_hash: SpecHash,
    /// The message of its latest observation.
    pub message: String,
}

/// Everything a supervisor knows at one instant, from [`SupervisorHandle::snapshot`]; a
/// consistent view, since the owner task answers between two state changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Every child the supervisor holds, in id order, including failed ones, ones done for good
    /// and ones being removed.
    pub children: Vec<ChildStatus>,
    /// Observations dropped because their channel was full; snapshots still carry the latest state.
    pub observations_dropped: u64,
    /// Failed writes of the state file.
    pub persist_failures: u64,
}

impl Snapshot {
    /// The child with this id, if the supervisor holds it.
    pub fn get(&self, id: &ChildId) -> Option<&ChildStatus> {
        self.children.iter().find(|c| &c.id == id)
    }
}

/// What [`SupervisorHandle::ensure`] did with a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnsureOutcome {
    /// The child was not known: it is launched (or adopted, if a launcher finds it running).
    Created,
    /// Same spec as before: nothing happened.
    Unchanged,
    /// New spec (the child restarts), or a child being removed was wanted again.
    Updated,
}

/// What [`SupervisorHandle::set_desired`] did, counted per child as [`EnsureOutcome`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncSummary {
    /// Children that were not known and are now starting.
    pub created: usize,
    /// Children whose spec changed (they restart) or that were being removed and are wanted
    /// again.
    pub updated: usize,
    /// Children left exactly as they were.
    pub unchanged: usize,
    /// Known children missing from the set, now being stopped and forgotten; one already being
    /// removed counts again.
    pub removed: usize,
}

/// The supervisor's owner task has ended (shut down, detached, aborted or panicked), so a
/// request could not be delivered or answered. Retrying on the same handle cannot help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("supervisor for {dir} is gone")]
pub struct SupervisorGone {
    /// The directory the supervisor ran on, naming it in logs.
    pub dir: PathBuf,
}

/// Why [`SupervisorHandle::ensure`] or [`SupervisorHandle::set_desired`] changed nothing. Specs
/// are checked before anything is sent, so a refused desired set leaves every child as it was.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EnsureError {
    /// A spec is invalid; the caller must fix it.
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// Two specs of one desired set share an id.
    #[error("child {id} appears twice in the desired set")]
    Duplicate {
        /// The repeated id.
        id: ChildId,
    },
    /// The supervisor has ended.
    #[error(transparent)]
    Gone(#[from] SupervisorGone),
}

/// Why [`Supervisor::start`] did not start a supervisor. A state file that cannot be parsed is
/// not one of them: it is moved aside (logged as an error) and the supervisor starts with no
/// children.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The supervisor's directory could not be created.
    #[error("failed to create supervisor directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The error from the filesystem.
        source: io::Error,
    },
    /// Another live supervisor (in this process or another) holds the directory's lock; two
    /// supervisors on one directory would each start the other's children.
    #[error("another supervisor holds {path}")]
    Locked {
        /// The lock file, `<dir>/supervisor.lock`.
        path: PathBuf,
    },
    /// The lock file could not be opened or locked.
    #[error("failed to lock {path}: {source}")]
    Lock {
        /// The lock file, `<dir>/supervisor.lock`.
        path: PathBuf,
        /// The error from the filesystem.
        source: io::Error,
    },
    /// The state file exists but could not be read (permissions, I/O error).
    #[error("failed to read supervisor state {path}: {source}")]
    ReadState {
        /// The state file.
        path: PathBuf,
        /// The error from the filesystem.
        source: io::Error,
    },
    /// The blocking task that locks and loads the directory panicked or was cancelled (the
    /// runtime shutting down).
    #[error("supervisor for {dir} could not load its state: {source}")]
    Join {
        /// The supervisor's directory.
        dir: PathBuf,
        /// Why the task did not finish.
        source: tokio::task::JoinError,
    },
}

/// A running supervisor. Dropping it (and every handle) ends the owner task and leaves the
/// children running, to be adopted by the next supervisor on the same directory.
#[derive(Debug)]
pub struct Supervisor {
    handle: SupervisorHandle,
    task: JoinHandle<()>,
}

/// Talks to a supervisor's owner task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SupervisorHandle {
    tx: mpsc::Sender<Command>,
    dir: Arc<Path>,
}

#[derive(Debug)]
enum Command {
    Ensure { spec: Box<ChildSpec>, reply: oneshot::Sender<EnsureOutcome> },
    SetDesired { specs: Vec<ChildSpec>, reply: oneshot::Sender<SyncSummary> },
    Remove { id: ChildId, reply: oneshot::Sender<bool> },
    Snapshot { reply: oneshot::Sender<Snapshot> },
    Shutdown { reply: oneshot::Sender<()> },
    Detach { reply: oneshot::Sender<()> },
}

impl SupervisorHandle {
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SupervisorGone> {
        let gone = || SupervisorGone { dir: self.dir.to_path_buf() };
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// Makes `spec` part of the desired set: starts the child, restarts it if its spec changed,
    /// does nothing if it is unchanged. A failed child stays failed until its spec changes or it
    /// is removed and ensured again.
    pub async fn ensure(&self, spec: ChildSpec) -> Result<EnsureOutcome, EnsureError> {
        spec.validate()?;
        Ok(self.request(|reply| Command::Ensure { spec: Box::new(spec), reply }).await?)
    }

    /// Replaces the whole desired set: children not in `specs` are stopped and forgotten.
    pub async fn set_desired(&self, specs: Vec<ChildSpec>) -> Result<SyncSummary, EnsureError> {
        let mut seen = BTreeSet::new();
        for spec in &specs {
            spec.validate()?;
            if !seen.insert(&spec.id) {
                return Err(EnsureError::Duplicate { id: spec.id.clone() });
            }
        }
        Ok(self.request(|reply| Command::SetDesired { specs, reply }).await?)
    }

    /// Stops the child and forgets it; false when there was no such child. Returns at once: the
    /// final `exited` observation says when the child is gone.
    pub async fn remove(&self, id: &ChildId) -> Result<bool, SupervisorGone> {
        self.request(|reply| Command::Remove { id: id.clone(), reply }).await
    }

    /// Every child's current state, straight from the owner task (not from the observation
    /// channel, so nothing is missing when observations were dropped).
    pub async fn snapshot(&self) -> Result<Snapshot, SupervisorGone> {
        self.request(|reply| Command::Snapshot { reply }).await
    }

    /// Stops every child (gracefully, each under its own stop spec) and ends the supervisor. The
    /// children stay in the state file and are started again by the next supervisor.
    pub async fn shutdown(&self) -> Result<(), SupervisorGone> {
        self.request(|reply| Command::Shutdown { reply }).await
    }
}

impl Supervisor {
    /// Starts a supervisor on `config.dir`, adopting or restarting the children a previous one
    /// recorded there. Observations go to `observations` without waiting: when it is full they
    /// are counted and dropped rather than stalling supervision.
    pub async fn start(
        config: SupervisorConfig,
        launcher: Arc<dyn Launcher>,
        observations: mpsc::Sender<Observation>,
    ) -> Result<Supervisor, StartError> {
        let dir = config.dir.clone();
        let path = config.state_file();
        let load_launcher = launcher.clone();
        type Loaded = (std::fs::File, Vec<(Record, bool)>);
        let (lock, restored) = tokio::task::spawn_blocking(move || -> Result<Loaded, StartError> {
            std::fs::create_dir_all(&dir)
                .map_err(|source| StartError::CreateDir { path: dir.clone(), source })?;
            let lock = lock_dir(&dir)?;
            let records = load_state(&path)?;
            let restored = records
                .into_iter()
                .map(|r| {
                    let alive = r.process.is_some_and(|p| load_launcher.is_alive(&p));
                    (r, alive)
                })
                .collect();
            Ok((lock, restored))
        })
        .await
        .map_err(|source| StartError::Join { dir: config.dir.clone(), source })??;

        let (tx, commands) = mpsc::channel(config.command_capacity.max(1));
        let (events_tx, events) = mpsc::channel(EVENT_CAPACITY);
        let span = info_span!("supervisor", dir = %config.dir.display());
        let handle = SupervisorHandle { tx, dir: Arc::from(config.dir.as_path()) };
        let mut owner = Owner {
            _lock: lock,
            config,
            launcher,
            observations,
            events: events_tx,
            tasks: JoinSet::new(),
            children: BTreeMap::new(),
            shutting_down: false,
            shutdown_waiters: Vec::new(),
            dirty: true,
            observations_dropped: 0,
            persist_failures: 0,
        };
        span.in_scope(|| owner.restore(restored));
        let task = tokio::spawn(owner.run(commands, events).instrument(span));
        Ok(Supervisor { handle, task })
    }

    /// Another handle on this supervisor. The owner task keeps running while any handle lives,
    /// even after the `Supervisor` itself is dropped.
    pub fn handle(&self) -> SupervisorHandle {
        self.handle.clone()
    }

    /// Stops every child, then waits for the owner task to end.
    pub async fn shutdown(self) -> Result<(), SupervisorGone> {
        self.handle.shutdown().await?;
        let _ = self.task.await;
        Ok(())
    }

    /// Ends the supervisor and leaves its children running, recorded for the next supervisor
    /// (an agent upgrade).
    pub async fn detach(self) {
        let _ = self.handle.request(|reply| Command::Detach { reply }).await;
        let _ = self.task.await;
    }

    /// Ends the owner task at once, as if the agent had crashed: nothing is stopped and nothing
    /// more is written to the state file.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// What the helpers tell the owner.
#[derive(Debug)]
enum Event {
    Launched { id: ChildId, inc: u64, result: Result<Launched, LaunchError> },
    Exited { id: ChildId, inc: u64, exit: Exit, detail: Option<String> },
    Probe { id: ChildId, inc: u64, result: Result<String, String> },
    RestartDue { id: ChildId, inc: u64 },
    Stopped { id: ChildId, inc: u64, stopped: Stopped },
}

impl Event {
    fn target(&self) -> (&ChildId, u64) {
        match self {
            Event::Launched { id, inc, .. }
            | Event::Exited { id, inc, .. }
            | Event::Probe { id, inc, .. }
            | Event::RestartDue { id, inc }
            | Event::Stopped { id, inc, .. } => (id, *inc),
        }
    }
}

#[derive(Debug)]
struct Up {
    process: ProcessHandle,
    /// The spec the process runs; differs from the child's while a changed spec is rolling out.
    hash: SpecHash,
    stop: StopSpec,
    unhealthy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopCause {
    /// Removed, replaced by a new spec, or shutting down.
    Desired,
    /// Unhealthy with `restart_on_unhealthy`.
    Unhealthy,
}

#[derive(Debug)]
enum Phase {
    /// Wants to run; nothing in flight.
    Pending,
    Launching {
        hash: SpecHash,
        stop: StopSpec,
    },
    Up(Up),
    /// Ends once the stop is done and, for a child of ours, its exit status is known.
    Stopping {
        up: Up,
        cause: StopCause,
        exit: Option<Exit>,
        stopped: Option<Stopped>,
    },
    /// Exited; a restart timer is running.
    Backoff,
    /// Exited or failed for good (under this spec).
    Down,
}

#[derive(Debug)]
struct Child {
    spec: ChildSpec,
    hash: SpecHash,
    removing: bool,
    tracker: RestartTracker,
    probe: Option<ProbeTracker>,
    inc: u64,
    phase: Phase,
    observed: ObservationState,
    message: String,
    adopted: bool,
    /// The task that waits for (or polls) the process.
    watcher: Option<AbortHandle>,
    prober: Option<AbortHandle>,
    timer: Option<AbortHandle>,
}

impl Child {
    fn new(spec: ChildSpec, hash: SpecHash) -> Self {
        Child {
            tracker: RestartTracker::new(spec.restart, spec.id.seed()),
            spec,
            hash,
            removing: false,
            probe: None,
            inc: 0,
            phase: Phase::Pending,
            observed: ObservationState::Pending,
            message: String::new(),
            adopted: false,
            watcher: None,
            prober: None,
            timer: None,
        }
    }

    fn id(&self) -> &ChildId {
        &self.spec.id
    }

    fn pid(&self) -> Option<u32> {
        match &self.phase {
            Phase::Up(up) | Phase::Stopping { up, .. } => Some(up.process.pid),
            _ => None,
        }
    }

    fn cancel_helpers(&mut self) {
        for h in [self.watcher.take(), self.prober.take(), self.timer.take()].into_iter().flatten() {
            h.abort();
        }
    }

    fn is_busy(&self) -> bool {
        matches!(self.phase, Phase::Launching { .. } | Phase::Up(_) | Phase::Stopping { .. })
    }
}

/// The state file: every child, its spec and the process it runs.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    children: Vec<Record>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    spec: ChildSpec,
    #[serde(default)]
    process: Option<ProcessHandle>,
    /// The hash of the spec `process` runs.
    #[serde(default)]
    running_hash: Option<SpecHash>,
    state: RecordState,
    #[serde(default)]
    removing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RecordState {
    /// Should be running.
    Active,
    /// Exited for good under its policy.
    Exited,
    /// Exceeded its restart intensity.
    Failed,
}

fn lock_dir(dir: &Path) -> Result<std::fs::File, StartError> {
    let path = dir.join(LOCK_FILE);
    let lock_err = |source| StartError::Lock { path: path.clone(), source };
    let file =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::Locked { path }),
        Err(std::fs::TryLockError::Error(e)) => Err(lock_err(e)),
    }
}

fn load_state(path: &Path) -> Result<Vec<Record>, StartError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StartError::ReadState { path: path.to_owned(), source }),
    };
    match serde_json::from_slice::<StateFile>(&bytes) {
        Ok(state) if state.version == STATE_VERSION => Ok(state.children),
        parsed => {
            let why = match parsed {
                Ok(s) => format!("unknown version {}", s.version),
                Err(e) => e.to_string(),
            };
            let aside =
                path.with_extension(format!("json.unreadable-{}", Utc::now().format("%Y%m%dT%H%M%S")));
            error!(
                path = %path.display(),
                "failed to read supervisor state {}: {why}; moved to {} and starting with no children",
                path.display(),
                aside.display()
            );
            let _ = std::fs::rename(path, &aside);
            Ok(Vec::new())
        }
    }
}

fn write_state(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    // Specs carry environment variables, which may be secrets: 0600, atomically, durably.
    enjin_sys::fs::write_private(&dir.join(STATE_FILE), bytes)
}

struct Owner {
    /// Held for the owner's life: one supervisor per directory, released even by a crash.
    _lock: std::fs::File,
    config: SupervisorConfig,
    launcher: Arc<dyn Launcher>,
    observations: mpsc::Sender<Observation>,
    events: mpsc::Sender<Event>,
    /// Every helper; dropping the set (the owner ending) aborts them all.
    tasks: JoinSet<()>,
    children: BTreeMap<ChildId, Child>,
    shutting_down: bool,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    dirty: bool,
    observations_dropped: u64,
    persist_failures: u64,
}

impl Owner {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut events: mpsc::Receiver<Event>) {
        info!(children = self.children.len(), "supervisor started");
        loop {
            if self.dirty {
                self.persist().await;
            }
            if self.shutting_down && !self.children.values().any(Child::is_busy) {
                info!("every child stopped; supervisor shut down");
                for w in self.shutdown_waiters.drain(..) {
                    let _ = w.send(());
                }
                return;
            }
            tokio::select! {
                Some(event) = events.recv() => self.on_event(event),
                command = commands.recv() => match command {
                    Some(Command::Detach { reply }) => {
                        self.persist().await;
                        info!("supervisor detached; children keep running");
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    None => {
                        self.persist().await;
                        info!("every handle dropped; supervisor ends and children keep running");
                        return;
                    }
                },
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Err(e) = joined && e.is_panic() {
                        error!("a supervisor helper task panicked: {e}");
                    }
                }
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Ensure { spec, reply } => {
                let outcome = self.ensure(*spec);
                let _ = reply.send(outcome);
            }
            Command::SetDesired { specs, reply } => {
                let mut summary = SyncSummary::default();
                let wanted: BTreeSet<ChildId> = specs.iter().map(|s| s.id.clone()).collect();
                for spec in specs {
                    match self.ensure(spec) {
                        EnsureOutcome::Created => summary.created += 1,
                        EnsureOutcome::Updated => summary.updated += 1,
                        EnsureOutcome::Unchanged => summary.unchanged += 1,
                    }
                }
                let extra: Vec<ChildId> =
                    self.children.keys().filter(|id| !wanted.contains(*id)).cloned().collect();
                for id in extra {
                    if self.remove(&id) {
                        summary.removed += 1;
                    }
                }
                let _ = reply.send(summary);
            }
            Command::Remove { id, reply } => {
                let existed = self.remove(&id);
                let _ = reply.send(existed);
            }
            Command::Snapshot { reply } => {
                let _ = reply.send(self.snapshot());
            }
            Command::Shutdown { reply } => {
                if !self.shutting_down {
                    info!("supervisor shutting down: stopping every child");
                }
                self.shutting_down = true;
                self.shutdown_waiters.push(reply);
                let ids: Vec<ChildId> = self.children.keys().cloned().collect();
                for id in ids {
                    self.with_child(&id, |_, _| {});
                }
            }
            Command::Detach { .. } => {}
        }
    }

    /// Runs `f` on the child taken out of the map, then reconciles it and puts it back unless it
    /// is gone for good.
    fn with_child(&mut self, id: &ChildId, f: impl FnOnce(&mut Self, &mut Child)) -> bool {
        let Some(mut child) = self.children.remove(id) else {
            return false;
        };
        f(self, &mut child);
        if self.reconcile(&mut child) {
            self.children.insert(id.clone(), child);
        }
        true
    }

    fn ensure(&mut self, spec: ChildSpec) -> EnsureOutcome {
        let id = spec.id.clone();
        let hash = spec.hash();
        if !self.children.contains_key(&id) {
            self.dirty = true;
            let mut child = Child::new(spec, hash);
            info!(child = %id, "child {id} added");
            self.emit(&mut child, ObservationState::Pending, ObservationStrategy::Process, "accepted".into());
            if self.reconcile(&mut child) {
                self.children.insert(id, child);
            }
            return EnsureOutcome::Created;
        }
        let mut outcome = EnsureOutcome::Unchanged;
        self.with_child(&id, |_, child| {
            if child.hash != hash {
                info!(child = %id, "child {id} has a new spec {hash} (was {})", child.hash);
                child.tracker = RestartTracker::new(spec.restart, id.seed());
                child.spec = spec;
                child.hash = hash;
                if matches!(child.phase, Phase::Backoff | Phase::Down) {
                    child.cancel_helpers();
                    child.phase = Phase::Pending;
                }
                outcome = EnsureOutcome::Updated;
            }
            if child.removing {
                child.removing = false;
                outcome = EnsureOutcome::Updated;
            }
        });
        if outcome != EnsureOutcome::Unchanged {
            self.dirty = true;
        }
        outcome
    }

    fn remove(&mut self, id: &ChildId) -> bool {
        self.with_child(id, |owner, child| {
            if !child.removing {
                info!(child = %id, "child {id} removed from the desired set");
            }
            child.removing = true;
            owner.dirty = true;
        })
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            children: self
                .children
                .values()
                .map(|c| ChildStatus {
                    id: c.id().clone(),
                    state: c.observed,
                    pid: c.pid(),
                    restarts: c.tracker.restarts(),
                    adopted: c.adopted,
                    spec_hash: c.hash.clone(),
                    message: c.message.clone(),
                })
                .collect(),
            observations_dropped: self.observations_dropped,
            persist_failures: self.persist_failures,
        }
    }

    /// Moves the child towards what is wanted of it; false when it is gone for good.
    fn reconcile(&mut self, child: &mut Child) -> bool {
        match &child.phase {
            Phase::Pending | Phase::Down | Phase::Backoff if child.removing => {
                // An exited child was already reported (a stop for removal says so itself), unless
                // a restart was announced.
                if child.observed != ObservationState::Exited || matches!(child.phase, Phase::Backoff) {
                    let message = format!("child {} removed", child.id());
                    self.emit(child, ObservationState::Exited, ObservationStrategy::Process, message);
                }
                child.cancel_helpers();
                self.dirty = true;
                return false;
            }
            Phase::Pending if !self.shutting_down => self.launch(child),
            Phase::Backoff if self.shutting_down => {
                child.cancel_helpers();
                child.phase = Phase::Pending;
            }
            Phase::Up(up) => {
                let restart_unhealthy =
                    up.unhealthy && child.spec.probe.as_ref().is_some_and(|p| p.restart_on_unhealthy);
                if child.removing || self.shutting_down || up.hash != child.hash {
                    self.begin_stop(child, StopCause::Desired);
                } else if restart_unhealthy {
                    self.begin_stop(child, StopCause::Unhealthy);
                }
            }
            Phase::Pending
            | Phase::Down
            | Phase::Backoff
            | Phase::Launching { .. }
            | Phase::Stopping { .. } => {}
        }
        true
    }

    fn on_event(&mut self, event: Event) {
        let (id, inc) = event.target();
        let id = id.clone();
        let current = self.children.get(&id).is_some_and(|c| c.inc == inc);
        if !current {
            debug!(child = %id, inc, "dropping news about an earlier incarnation of child {id}");
            if let Event::Launched { result: Ok(launched), .. } = event {
                // Cannot happen while launches are never abandoned; if it does, do not leak it.
                warn!(child = %id, "stopping pid {} launched for a child that no longer wants it", launched.process.pid);
                let launcher = self.launcher.clone();
                self.tasks.spawn_blocking(move || {
                    let _ = launcher.stop(&launched.process, &StopSpec::default());
                });
            }
            return;
        }
        self.with_child(&id, |owner, child| match event {
            Event::Launched { result, .. } => owner.on_launched(child, result),
            Event::Exited { exit, detail, .. } => owner.on_exited(child, exit, detail),
            Event::Probe { result, .. } => owner.on_probe(child, result),
            Event::RestartDue { .. } => {
                if matches!(child.phase, Phase::Backoff) {
                    child.timer = None;
                    child.phase = Phase::Pending;
                }
            }
            Event::Stopped { stopped, .. } => owner.on_stopped(child, stopped),
        });
    }

    fn launch(&mut self, child: &mut Child) {
        // Before its first start under this supervisor, a child may already be running: started
        // by a supervisor killed before it could record the process. Adopt it, never start two.
        if child.inc == 0
            && let Some(process) = self.launcher.find(&child.spec)
        {
            warn!(child = %child.id(), pid = process.pid, "found pid {} of child {} running without a record", process.pid, child.id());
            self.adopt(child, process, SpecHash::unknown());
            self.dirty = true;
            // Its spec is unknown, so the adopted process is stopped and the child started
            // anew from its spec: one process at a time, of the spec that is wanted.
            self.reconcile(child);
            return;
        }
        child.inc += 1;
        child.adopted = false;
        child.probe = None;
        child.phase = Phase::Launching { hash: child.hash.clone(), stop: child.spec.stop };
        let message = format!("starting {:?}", child.spec.command);
        self.emit(child, ObservationState::Starting, ObservationStrategy::Process, message);
        let (id, inc) = (child.id().clone(), child.inc);
        let (launcher, spec, events) = (self.launcher.clone(), child.spec.clone(), self.events.clone());
        // Not cancelled on phase changes: a launch always reports back, so no process is lost.
        self.tasks.spawn(async move {
            let result =
                tokio::task::spawn_blocking(move || launcher.launch(&spec)).await.unwrap_or_else(|e| {
                    Err(LaunchError::Spawn {
                        id: id.clone(),
                        program: String::new(),
                        source: io::Error::other(format!("launcher panicked: {e}")),
                    })
                });
            let _ = events.send(Event::Launched { id, inc, result }).await;
        });
    }

    fn on_launched(&mut self, child: &mut Child, result: Result<Launched, LaunchError>) {
        let Phase::Launching { hash, stop } = std::mem::replace(&mut child.phase, Phase::Pending) else {
            return;
        };
        let now = Instant::now();
        child.tracker.started(now.into_std());
        match result {
            Ok(Launched { process, waiter }) => {
                let pid = process.pid;
                info!(child = %child.id(), pid, "child {} started as pid {pid}", child.id());
                let (id, inc, events) = (child.id().clone(), child.inc, self.events.clone());
                child.watcher = Some(self.tasks.spawn(async move {
                    let (exit, detail) = match waiter.await {
                        Ok(exit) => (exit, None),
                        Err(e) => (Exit::Unknown, Some(format!("failed to wait for pid {pid}: {e}"))),
                    };
                    let _ = events.send(Event::Exited { id, inc, exit, detail }).await;
                }));
                let current = hash == child.hash;
                child.phase = Phase::Up(Up { process, hash, stop, unhealthy: false });
                self.dirty = true;
                match child.spec.probe.clone() {
                    Some(probe) if current => {
                        child.probe = Some(ProbeTracker::new(&probe, now.into_std()));
                        debug!(child = %child.id(), pid, "pid {pid} waits for its {:?} probe", probe.strategy());
                        self.start_prober(child, probe);
                    }
                    _ => {
                        let message = format!("running as pid {pid}");
                        self.emit(child, ObservationState::Running, ObservationStrategy::Process, message);
                    }
                }
            }
            Err(e) => {
                warn!(child = %child.id(), "{e}");
                let decision = child.tracker.exited(Exit::Unknown, now.into_std());
                self.apply_decision(child, decision, e.to_string());
            }
        }
    }

    fn start_prober(&mut self, child: &mut Child, probe: ProbeSpec) {
        let (id, inc, events) = (child.id().clone(), child.inc, self.events.clone());
        child.prober = Some(self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(probe.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let result = run_check(&probe.check, probe.timeout).await.map_err(|e| e.to_string());
                if events.send(Event::Probe { id: id.clone(), inc, result }).await.is_err() {
                    return;
                }
            }
        }));
    }

    fn on_exited(&mut self, child: &mut Child, exit: Exit, detail: Option<String>) {
        match &mut child.phase {
            Phase::Up(up) => {
                let process = up.process;
                child.cancel_helpers();
                child.probe = None;
                // The leader is gone; whatever it left in its group goes with it, or a restart
                // would run beside its stragglers.
                let launcher = self.launcher.clone();
                self.tasks.spawn_blocking(move || {
                    if launcher.group_alive(&process) {
                        let _ = launcher.signal(&process, crate::child::Signal::Kill);
                    }
                });
                let what = detail.unwrap_or_else(|| format!("pid {} exited with {exit}", process.pid));
                info!(child = %child.id(), pid = process.pid, "child {}: {what}", child.id());
                let decision = child.tracker.exited(exit, Instant::now().into_std());
                self.apply_decision(child, decision, what);
            }
            Phase::Stopping { exit: seen, stopped, .. } => {
                *seen = Some(exit);
                if stopped.is_some() {
                    self.finish_stop(child);
                }
            }
            _ => {}
        }
    }

    fn apply_decision(&mut self, child: &mut Child, decision: Decision, what: String) {
        self.dirty = true;
        let id = child.id().clone();
        match decision {
            Decision::Restart { after } => {
                child.inc += 1;
                child.phase = Phase::Backoff;
                let intensity = child.spec.restart.intensity;
                let message = format!(
                    "{what}; restart {} (at most {} in {:?}) in {after:?}",
                    child.tracker.restarts(),
                    intensity.max_restarts,
                    intensity.period
                );
                self.emit(child, ObservationState::Exited, ObservationStrategy::Process, message);
                let (inc, events) = (child.inc, self.events.clone());
                child.timer = Some(self.tasks.spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = events.send(Event::RestartDue { id, inc }).await;
                }));
            }
            Decision::GiveUp(reason) => {
                child.phase = Phase::Down;
                let message = format!("{what}; {reason}");
                if reason.is_failure() {
                    error!(child = %id, "child {id} failed: {message}");
                    self.emit(child, ObservationState::Failed, ObservationStrategy::Process, message);
                } else {
                    info!(child = %id, "child {id} is done: {message}");
                    self.emit(child, ObservationState::Exited, ObservationStrategy::Process, message);
                }
            }
        }
    }

    fn on_probe(&mut self, child: &mut Child, result: Result<String, String>) {
        let Phase::Up(up) = &mut child.phase else {
            return;
        };
        let Some(tracker) = child.probe.as_mut() else {
            return;
        };
        let pid = up.process.pid;
        let strategy = child.spec.probe.as_ref().map_or(ObservationStrategy::Process, ProbeSpec::strategy);
        let flipped = tracker.record(result.is_ok(), Instant::now().into_std());
        let text = match &result {
            Ok(s) | Err(s) => s.clone(),
        };
        match flipped {
            Some(Health::Healthy) => {
                up.unhealthy = false;
                info!(child = %child.id(), pid, "pid {pid} is healthy: {text}");
                self.emit(
                    child,
                    ObservationState::Running,
                    strategy,
                    format!("pid {pid} is healthy: {text}"),
                );
            }
            Some(Health::Unhealthy) => {
                up.unhealthy = true;
                warn!(child = %child.id(), pid, "pid {pid} is unhealthy: {text}");
                self.emit(
                    child,
                    ObservationState::Unhealthy,
                    strategy,
                    format!("pid {pid} is unhealthy: {text}"),
                );
            }
            Some(Health::Starting) | None => debug!(child = %child.id(), pid, "probe: {text}"),
        }
    }

    fn begin_stop(&mut self, child: &mut Child, cause: StopCause) {
        let Phase::Up(up) = std::mem::replace(&mut child.phase, Phase::Pending) else {
            return;
        };
        // Keep the watcher: it reaps the leader and reports its exit status.
        if let Some(p) = child.prober.take() {
            p.abort();
        }
        let (process, stop) = (up.process, up.stop);
        info!(child = %child.id(), pid = process.pid, "stopping pid {} with {} ({:?} grace)", process.pid, stop.signal, stop.grace);
        child.phase = Phase::Stopping { up, cause, exit: None, stopped: None };
        let (id, inc, events) = (child.id().clone(), child.inc, self.events.clone());
        let (launcher, retry) = (self.launcher.clone(), self.config.stop_retry);
        self.tasks.spawn(async move {
            loop {
                let l = launcher.clone();
                match tokio::task::spawn_blocking(move || l.stop(&process, &stop)).await {
                    Ok(Ok(stopped)) => {
                        let _ = events.send(Event::Stopped { id, inc, stopped }).await;
                        return;
                    }
                    Ok(Err(e)) => warn!(child = %id, "{e}; trying again in {retry:?}"),
                    Err(e) => warn!(child = %id, "stopping pid {} panicked: {e}; trying again in {retry:?}", process.pid),
                }
                tokio::time::sleep(retry).await;
            }
        });
    }

    fn on_stopped(&mut self, child: &mut Child, done: Stopped) {
        let Phase::Stopping { exit, stopped, .. } = &mut child.phase else {
            return;
        };
        *stopped = Some(done);
        // The group is gone, so our own child's waiter is about to report its status; an adopted
        // child's status is unknowable.
        if exit.is_some() || child.adopted {
            self.finish_stop(child);
        }
    }

    fn finish_stop(&mut self, child: &mut Child) {
        if !matches!(child.phase, Phase::Stopping { stopped: Some(_), .. }) {
            return;
        }
        let Phase::Stopping { up, cause, exit, stopped: Some(stopped) } =
            std::mem::replace(&mut child.phase, Phase::Pending)
        else {
            return;
        };
        child.cancel_helpers();
        child.probe = None;
        self.dirty = true;
        let status = exit.map(|e| format!(" with {e}")).unwrap_or_default();
        let what = format!("pid {} stopped{status}: {stopped}", up.process.pid);
        info!(child = %child.id(), pid = up.process.pid, "{what}");
        match cause {
            StopCause::Unhealthy => {
                // Whatever the exit code after our signal, being unhealthy was the abnormal exit.
                let decision = child.tracker.exited(Exit::Unknown, Instant::now().into_std());
                self.apply_decision(child, decision, format!("{what} (unhealthy)"));
            }
            StopCause::Desired => {
                child.inc += 1;
                let why = if child.removing {
                    "removed"
                } else if self.shutting_down {
                    "supervisor shutting down"
                } else {
                    "spec changed"
                };
                self.emit(
                    child,
                    ObservationState::Exited,
                    ObservationStrategy::Process,
                    format!("{what} ({why})"),
                );
            }
        }
    }

    /// Puts back what the previous supervisor recorded: adopts the children still running, starts
    /// the ones that should run, remembers the ones that are done.
    fn restore(&mut self, restored: Vec<(Record, bool)>) {
        for (record, alive) in restored {
            let spec = record.spec;
            if let Err(e) = spec.validate() {
                warn!("ignoring a recorded child: {e}");
                continue;
            }
            let id = spec.id.clone();
            let hash = spec.hash();
            let mut child = Child::new(spec, hash.clone());
            child.removing = record.removing;
            match (record.process, alive) {
                (Some(process), true) => self.adopt(&mut child, process, record.running_hash.unwrap_or(hash)),
                (Some(process), false) => {
                    info!(child = %id, "recorded pid {} of child {id} is gone", process.pid);
                }
                (None, _) => {}
            }
            if matches!(child.phase, Phase::Pending) && record.state != RecordState::Active {
                child.phase = Phase::Down;
                let (state, message) = if record.state == RecordState::Failed {
                    (ObservationState::Failed, "failed under a previous supervisor")
                } else {
                    (ObservationState::Exited, "exited for good under a previous supervisor")
                };
                self.emit(&mut child, state, ObservationStrategy::Process, message.into());
            }
            if matches!(child.phase, Phase::Pending) && !self.config.launch_restored {
                debug!(child = %id, "child {id} waits to be named again before it starts");
                self.children.insert(id, child);
                continue;
            }
            if self.reconcile(&mut child) {
                self.children.insert(id, child);
            }
        }
    }

    fn adopt(&mut self, child: &mut Child, process: ProcessHandle, running: SpecHash) {
        let pid = process.pid;
        let now = Instant::now();
        child.inc += 1;
        child.adopted = true;
        child.tracker.started(now.into_std());
        let current = running == child.hash;
        child.phase = Phase::Up(Up { process, hash: running, stop: child.spec.stop, unhealthy: false });
        info!(child = %child.id(), pid, "adopted pid {pid} of child {}", child.id());
        let (id, inc, events) = (child.id().clone(), child.inc, self.events.clone());
        let (launcher, every) = (self.launcher.clone(), self.config.adopted_poll_interval);
        child.watcher = Some(self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // A read of /proc answers from kernel memory: cheap enough for the runtime thread.
                if !launcher.is_alive(&process) {
                    let detail =
                        Some(format!("adopted pid {pid} is gone (not our child: exit status unknown)"));
                    let _ = events.send(Event::Exited { id, inc, exit: Exit::Unknown, detail }).await;
                    return;
                }
            }
        }));
        if let Some(probe) = child.spec.probe.clone().filter(|_| current) {
            child.probe = Some(ProbeTracker::adopted(&probe, now.into_std()));
            self.start_prober(child, probe);
        }
        let message = format!("adopted pid {pid}, left running by a previous supervisor");
        self.emit(child, ObservationState::Running, ObservationStrategy::Process, message);
    }

    fn emit(
        &mut self,
        child: &mut Child,
        state: ObservationState,
        strategy: ObservationStrategy,
        message: String,
    ) {
        child.observed = state;
        child.message.clone_from(&message);
        let observation = Observation {
            child: child.id().clone(),
            state,
            strategy,
            pid: child.pid(),
            at: Utc::now(),
            message,
        };
        debug!(child = %observation.child, state = ?state, "{}", observation.message);
        match self.observations.try_send(observation) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(o)) => {
                self.observations_dropped += 1;
                warn!(child = %o.child, "observation channel full: dropped {:?}; snapshots keep the latest state", o.state);
            }
        }
    }

    async fn persist(&mut self) {
        self.dirty = false;
        let children = self
            .children
            .values()
            .map(|c| {
                let (process, running_hash) = match &c.phase {
                    Phase::Up(up) | Phase::Stopping { up, .. } => (Some(up.process), Some(up.hash.clone())),
                    _ => (None, None),
                };
                let state = match (&c.phase, c.observed) {
                    (Phase::Down, ObservationState::Failed) => RecordState::Failed,
                    (Phase::Down, _) => RecordState::Exited,
                    _ => RecordState::Active,
                };
                Record { spec: c.spec.clone(), process, running_hash, state, removing: c.removing }
            })
            .collect();
        let state = StateFile { version: STATE_VERSION, children };
        let bytes = match serde_json::to_vec_pretty(&state) {
            Ok(b) => b,
            Err(e) => {
                self.persist_failures += 1;
                error!("failed to encode supervisor state: {e}");
                return;
            }
        };
        let dir = self.config.dir.clone();
        let result = tokio::task::spawn_blocking(move || write_state(&dir, &bytes)).await;
        let err = match result {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        self.persist_failures += 1;
        error!("failed to write {}: {err}", self.config.state_file().display());
    }
}

#[cfg(test)]
mod tests;
