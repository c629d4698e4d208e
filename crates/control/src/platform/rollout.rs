//! Rollouts: the one procedure behind deploy, rollback, restart and scale. New instances are
//! placed and started beside the live ones; only when every one of them is healthy does the
//! release become live; the instances it replaces are then taken out of the routes, given
//! time to finish what they were doing, and removed. A rollout that fails removes what it
//! started and leaves the live release as it was.
//!
//! A rollout records its step in its task before taking it ([`RolloutStep`]), so that a
//! control plane that stops in the middle undoes it when it comes back if it had not gone live,
//! and finishes it if it had ([`resume`]).
//!
//! Each instance is recorded with the strategy its host really runs it by; a tenant's go only
//! to hosts that sandbox them, and the operator's that run unsandboxed are said so, in the
//! task's progress and result and in the log.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use enjin_model::api::{CreateRequest, PACKAGE_CHUNK, PACKAGES_TOPIC, PackageChunkRequest, UpdateRequest};
use enjin_model::kinds::{
    CompartmentSpec, DesiredState, HealthKind, NodeSpec, ObservationState, ObservationStrategy, ProbeSpec,
    ProcessType, ReleaseSpec, ReleaseState, RestartPolicy, RolloutStep, RunSpec, TaskProgress, TaskSpec,
    TaskState,
};
use enjin_model::{Kind, Object, Ring};
use uuid::Uuid;

use super::edge::View;
use super::network;
use super::placement::{HostLoad, Isolation, Sandbox, eligible, place};
use super::{
    APP_LABEL, DRAINING_LABEL, Health, PROCESS_LABEL, Platform, PlatformError, RELEASE_LABEL, ROLLOUT_LABEL,
    runs_instances,
};
use crate::bus::BusAuthority;
use crate::ports;
use crate::registry::{Registry, RegistryError};

/// How often a rollout looks at its instances' health.
const POLL: Duration = Duration::from_millis(200);

/// Why a rollout did not complete. Its message is what the task records as its error, for the
/// person who deployed: it names the instance, the release and what still serves.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The new instances could not be made or read (placement, quota, the store).
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error("instance {instance} failed: {message}")]
    InstanceFailed { instance: String, message: String },
    #[error("instance {0} was deleted")]
    InstanceDeleted(Uuid),
    #[error("{unhealthy} of {of} instances not healthy after {}s ({waiting})", timeout.as_secs())]
    NotHealthy { unhealthy: usize, of: usize, timeout: Duration, waiting: String },
    /// A previous run of the control plane stopped during the rollout; its instances are gone.
    #[error("interrupted: the control plane stopped during the rollout")]
    Interrupted,
    /// A deploy, replace or rollback failed: the release that was live before still is.
    #[error("v{version} of {app} was not deployed: {cause}; the live release keeps serving")]
    NotDeployed {
        version: u32,
        app: String,
        #[source]
        cause: Box<RolloutError>,
    },
    /// A scale failed: the instances that ran before still do.
    #[error("{app} was not scaled: {cause}")]
    NotScaled {
        app: String,
        #[source]
        cause: Box<RolloutError>,
    },
}

impl From<RegistryError> for RolloutError {
    fn from(e: RegistryError) -> Self {
        RolloutError::Platform(e.into())
    }
}

pub use enjin_model::kinds::RolloutMode as Mode;

/// A task this process is carrying out, kept current in the store.
#[derive(Debug)]
pub struct TaskHandle {
    registry: Registry,
    task: Object<TaskSpec>,
}

/// The name a task holds while it changes `app`. Names are unique among an account's tasks (the
/// store's label index), so at most one task at a time changes an app, however many servers try
/// to start one at once: the second create fails its compare.
pub(super) fn running_name(app: &str) -> String {
    format!("{app}-rollout")
}

/// The name a task keeps once it has ended: its app and the start of its uuid.
fn settled_name(task: &Object<TaskSpec>) -> Option<String> {
    let Some(app) = task.meta.labels.get(APP_LABEL) else { return task.meta.label.clone() };
    if task.meta.label.as_deref() != Some(running_name(app).as_str()) {
        return task.meta.label.clone();
    }
    Some(format!("{app}-{}", &task.meta.uuid.simple().to_string()[..8]))
}

impl TaskHandle {
    pub fn new(registry: &Registry, task: Object<TaskSpec>) -> Self {
        TaskHandle { registry: registry.clone(), task }
    }

    pub fn uuid(&self) -> Uuid {
        self.task.meta.uuid
    }

    pub fn subject(&self) -> Option<Uuid> {
        self.task.spec.subject
    }

    async fn write(&mut self, change: impl Fn(&mut TaskSpec)) {
        for _ in 0..5 {
            let mut spec = self.task.spec.clone();
            change(&mut spec);
            // An ending task gives up the app's running name in the write that ends it.
            let label = match spec.state.is_final() {
                true => settled_name(&self.task),
                false => self.task.meta.label.clone(),
            };
            let req = UpdateRequest {
                revision: self.task.meta.revision,
                label,
                labels: self.task.meta.labels.clone(),
                spec,
            };
            match self.registry.update(self.task.meta.uuid, req, Utc::now()).await {
                Ok(t) => {
                    self.task = t;
                    return;
                }
                Err(RegistryError::Conflict { .. }) => {
                    match self.registry.get::<TaskSpec>(self.task.meta.uuid).await {
                        Ok(t) => self.task = t,
                        Err(e) => {
                            tracing::warn!(task = %self.task.meta.uuid, error = %e, "task vanished");
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(task = %self.task.meta.uuid, error = %e, "task progress not stored");
                    return;
                }
            }
        }
    }

    /// Record the step the rollout is about to take; it is in the store before the step begins.
    pub async fn step(&mut self, step: RolloutStep) {
        if self.task.spec.step != Some(step) {
            self.write(|s| s.step = Some(step)).await;
        }
    }

    /// Take the task up for `run` of the control plane, compared against the revision read:
    /// whether this run holds it now (another that wrote first keeps it).
    pub async fn claim(&mut self, run: Uuid) -> Result<bool, RegistryError> {
        let mut spec = self.task.spec.clone();
        spec.runner = Some(run);
        let req = UpdateRequest {
            revision: self.task.meta.revision,
            label: self.task.meta.label.clone(),
            labels: self.task.meta.labels.clone(),
            spec,
        };
        match self.registry.update(self.task.meta.uuid, req, Utc::now()).await {
            Ok(t) => {
                self.task = t;
                Ok(true)
            }
            Err(RegistryError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn recorded_step(&self) -> Option<RolloutStep> {
        self.task.spec.step
    }

    pub async fn progress(&mut self, done: u64, total: u64, message: String) {
        let p = TaskProgress { done, total, message };
        if self.task.spec.progress != p {
            self.write(|s| s.progress = p.clone()).await;
        }
    }

    pub async fn finish(mut self, outcome: Result<String, RolloutError>) {
        let outcome = outcome.map_err(|e| e.to_string());
        self.write(|s| match &outcome {
            Ok(m) => {
                s.state = TaskState::Succeeded;
                s.progress.done = s.progress.total;
                s.progress.message.clone_from(m);
                s.result = Some(serde_json::json!({ "message": m }));
            }
            Err(e) => {
                s.state = TaskState::Failed;
                s.progress.message.clone_from(e);
                s.error = Some(e.clone());
            }
        })
        .await;
    }
}

/// Carry out one rollout and record how it ended in its task.
pub async fn run(
    platform: Arc<Platform>,
    mut task: TaskHandle,
    env: Object<CompartmentSpec>,
    release: Object<ReleaseSpec>,
    mode: Mode,
    isolation: Isolation,
) {
    let app = env.meta.label.clone().unwrap_or_default();
    let outcome = match mode {
        Mode::Release | Mode::Replace => replace(&platform, &mut task, &env, &release, mode, isolation).await,
        Mode::Scale => scale(&platform, &mut task, &env, &release, isolation).await,
    };
    match &outcome {
        Ok(m) => tracing::info!(%app, task = %task.uuid(), "{m}"),
        Err(e) => tracing::warn!(%app, task = %task.uuid(), "rollout failed: {e}"),
    }
    task.finish(outcome).await;
}

async fn replace(
    p: &Arc<Platform>,
    task: &mut TaskHandle,
    env: &Object<CompartmentSpec>,
    release: &Object<ReleaseSpec>,
    mode: Mode,
    isolation: Isolation,
) -> Result<String, RolloutError> {
    let app = env.meta.label.clone().unwrap_or_default();
    let version = release.spec.version;
    let view = View::read(&p.registry).await?;
    let old: Vec<Uuid> = view.instances_of(env.meta.uuid).map(|n| n.meta.uuid).collect();
    let wanted: Vec<(String, ProcessType)> =
        release.spec.manifest.processes.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let total: u64 = wanted.iter().map(|(_, pt)| u64::from(pt.instances)).sum();
    task.progress(0, total, format!("starting {total} instances of v{version}")).await;
    let mut started = Vec::new();
    let mut unsandboxed = 0;
    let mut result = Ok(());
    for (process, pt) in &wanted {
        let count = pt.instances as usize;
        match create_instances(p, task.uuid(), env, release, process, pt, count, 0, isolation).await {
            Ok(mut made) => {
                started.append(&mut made.nodes);
                unsandboxed += made.unsandboxed;
            }
            Err(e) => {
                result = Err(RolloutError::from(e));
                break;
            }
        }
    }
    let note = if result.is_ok() && unsandboxed > 0 {
        let note = unsandboxed_note(&app, unsandboxed, started.len());
        tracing::warn!(%app, instances = unsandboxed, "{note}");
        format!("; {note}")
    } else {
        String::new()
    };
    if result.is_ok() {
        let timeout = wanted
            .iter()
            .map(|(name, pt)| pt.health_or_default(name).start_timeout_seconds)
            .max()
            .unwrap_or(60);
        result = wait_healthy(p, task, &started, Duration::from_secs(timeout), total, version, &note).await;
    }
    if let Err(e) = result {
        remove(p, &started).await;
        if mode == Mode::Release {
            set_release_state(&p.registry, release.meta.uuid, ReleaseState::Failed).await;
        }
        return Err(RolloutError::NotDeployed { version, app, cause: Box::new(e) });
    }
    // From here on a restart finishes the rollout rather than undoing it: recorded first.
    task.step(RolloutStep::Live).await;
    if mode == Mode::Release {
        // Live first, then the others superseded: between the two both serve, never neither.
        let live = set_release_state(&p.registry, release.meta.uuid, ReleaseState::Active).await;
        // The release is live for users once the routers send it traffic.
        p.wait_routes_applied(live.unwrap_or(0)).await;
        for r in view.releases.values() {
            if r.spec.app == env.meta.uuid
                && r.meta.uuid != release.meta.uuid
                && r.spec.state == ReleaseState::Active
            {
                set_release_state(&p.registry, r.meta.uuid, ReleaseState::Superseded).await;
            }
        }
    }
    task.progress(total, total, format!("v{version} is live; draining {} old instances", old.len())).await;
    drain_and_remove(p, &old).await;
    Ok(format!("v{version} of {app} is live with {total} instances at {}{note}", p.url_of(&app)))
}

async fn scale(
    p: &Arc<Platform>,
    task: &mut TaskHandle,
    env: &Object<CompartmentSpec>,
    release: &Object<ReleaseSpec>,
    isolation: Isolation,
) -> Result<String, RolloutError> {
    let app = env.meta.label.clone().unwrap_or_default();
    let view = View::read(&p.registry).await?;
    let to_remove = past_counts(&view, env.meta.uuid, &release.spec);
    let mut started = Vec::new();
    let mut unsandboxed = 0;
    let mut adding = 0u64;
    let plan: Vec<(String, ProcessType, Vec<&Object<NodeSpec>>)> = release
        .spec
        .manifest
        .processes
        .iter()
        .map(|(name, pt)| {
            let mut have: Vec<&Object<NodeSpec>> = view
                .instances_of(env.meta.uuid)
                .filter(|n| n.meta.labels.get(PROCESS_LABEL) == Some(name))
                .filter(|n| !n.meta.labels.contains_key(DRAINING_LABEL))
                .collect();
            have.sort_by_key(|n| n.meta.created_at);
            (name.clone(), pt.clone(), have)
        })
        .collect();
    for (_, pt, have) in &plan {
        adding += (pt.instances as usize).saturating_sub(have.len()) as u64;
    }
    task.progress(0, adding, format!("adding {adding} instances")).await;
    for (name, pt, have) in &plan {
        let want = pt.instances as usize;
        if have.len() < want {
            let (count, first) = (want - have.len(), have.len());
            let made =
                create_instances(p, task.uuid(), env, release, name, pt, count, first, isolation).await;
            match made {
                Ok(mut m) => {
                    started.append(&mut m.nodes);
                    unsandboxed += m.unsandboxed;
                }
                Err(e) => {
                    remove(p, &started).await;
                    return Err(RolloutError::NotScaled { app, cause: Box::new(e.into()) });
                }
            }
        }
    }
    let note = if unsandboxed > 0 {
        let note = unsandboxed_note(&app, unsandboxed, started.len());
        tracing::warn!(%app, instances = unsandboxed, "{note}");
        format!("; {note}")
    } else {
        String::new()
    };
    if !started.is_empty() {
        let timeout =
            plan.iter().map(|(n, pt, _)| pt.health_or_default(n).start_timeout_seconds).max().unwrap_or(60);
        if let Err(e) =
            wait_healthy(p, task, &started, Duration::from_secs(timeout), adding, release.spec.version, &note)
                .await
        {
            remove(p, &started).await;
            return Err(RolloutError::NotScaled { app, cause: Box::new(e) });
        }
    }
    task.step(RolloutStep::Draining).await;
    drain_and_remove(p, &to_remove).await;
    let counts: Vec<String> = plan.iter().map(|(n, pt, _)| format!("{n}={}", pt.instances)).collect();
    Ok(format!("{app} scaled to {}{note}", counts.join(" ")))
}

/// Carry out a rollout its task describes from the start: the task's subject is the release,
/// its plan the mode and isolation. What the rollout controller runs for a task nobody has
/// taken up yet.
pub async fn start(platform: Arc<Platform>, task: TaskHandle) {
    let Some(plan) = task.task.spec.rollout else {
        return resume(platform, task).await;
    };
    let found = async {
        let id = task.subject().ok_or_else(|| missing("names no release"))?;
        let release = platform.registry.get::<ReleaseSpec>(id).await?;
        let env = platform.registry.get::<CompartmentSpec>(release.spec.app).await?;
        // The platform makes both in the task's account; anything else was not its doing.
        if release.meta.account != task.task.meta.account || env.meta.account != task.task.meta.account {
            return Err(missing("names a release of another account"));
        }
        Ok::<_, RolloutError>((env, release))
    };
    match found.await {
        Ok((env, release)) => run(platform, task, env, release, plan.mode, plan.isolation).await,
        Err(e) => {
            tracing::warn!(task = %task.uuid(), "rollout not started: {e}");
            task.finish(Err(e)).await;
        }
    }
}

fn missing(what: &str) -> RolloutError {
    RolloutError::Platform(PlatformError::Conflict(format!("the rollout's task {what}")))
}

/// Take up a rollout a run of the control plane left unfinished (it stopped), by the step its
/// task recorded ([`settle`]), and record how it ended.
pub async fn resume(p: Arc<Platform>, mut task: TaskHandle) {
    let outcome = settle(&p, &mut task).await;
    match &outcome {
        Ok(m) => tracing::info!(task = %task.uuid(), "{m}"),
        Err(e) => tracing::warn!(task = %task.uuid(), "rollout undone: {e}"),
    }
    task.finish(outcome).await;
}

/// Bring a rollout that stopped part-way (its control plane stopped, or it was cancelled) to a
/// clean end by the step its task recorded:
///
/// - `live`, and its release is the app's live one (or it was a restart of the live release):
///   finished. Every other live release of the app is superseded, and every instance of the
///   app that this rollout did not start is drained and removed.
/// - `draining` (a scale): finished. The instances past the release's counts are drained and
///   removed.
/// - anything else (`starting`, or `live` for a release that was never made live): undone. The
///   rollout's instances are removed and a release still deploying is marked failed; what
///   served before still serves.
pub async fn settle(p: &Arc<Platform>, task: &mut TaskHandle) -> Result<String, RolloutError> {
    let release = match task.subject() {
        Some(id) => p.registry.get::<ReleaseSpec>(id).await.ok(),
        None => None,
    }
    .filter(|r| r.meta.account == task.task.meta.account);
    match (release, task.recorded_step()) {
        (Some(r), Some(RolloutStep::Live)) if r.spec.state == ReleaseState::Active => {
            finish_live(p, task, &r).await
        }
        (Some(r), Some(RolloutStep::Draining)) => finish_scale(p, &r).await,
        (release, _) => {
            undo(p, task, release.as_ref()).await;
            Err(RolloutError::Interrupted)
        }
    }
}

/// Remove instances a stopped rollout made after it was settled, when it was undone (it had
/// not gone live): those are the rollout's own, and nothing routes them.
pub async fn remove_late_instances(p: &Arc<Platform>, task: &TaskHandle) {
    if task.recorded_step() == Some(RolloutStep::Live) {
        return;
    }
    let late = remove_own_instances(p, task).await;
    if late > 0 {
        tracing::info!(task = %task.uuid(), instances = late, "removed instances a stopped rollout made late");
    }
}

/// Remove every instance the rollout of `task` started (by their rollout label); how many.
async fn remove_own_instances(p: &Arc<Platform>, task: &TaskHandle) -> usize {
    match p.instances_where(ROLLOUT_LABEL, &task.uuid().to_string()).await {
        Ok(nodes) => {
            remove(p, &nodes.iter().map(|n| n.meta.uuid).collect::<Vec<_>>()).await;
            nodes.len()
        }
        Err(e) => {
            tracing::warn!(task = %task.uuid(), error = %e, "the rollout's instances were not found");
            0
        }
    }
}

/// The rest of a rollout whose instances had gone live: see [`resume`].
async fn finish_live(
    p: &Arc<Platform>,
    task: &mut TaskHandle,
    release: &Object<ReleaseSpec>,
) -> Result<String, RolloutError> {
    let view = View::read(&p.registry).await?;
    let app = release.spec.app;
    for r in view.releases.values() {
        if r.spec.app == app && r.meta.uuid != release.meta.uuid && r.spec.state == ReleaseState::Active {
            set_release_state(&p.registry, r.meta.uuid, ReleaseState::Superseded).await;
        }
    }
    let rollout = task.uuid().to_string();
    let (ours, old): (Vec<&Object<NodeSpec>>, Vec<&Object<NodeSpec>>) =
        view.instances_of(app).partition(|n| n.meta.labels.get(ROLLOUT_LABEL) == Some(&rollout));
    let old: Vec<Uuid> = old.iter().map(|n| n.meta.uuid).collect();
    task.progress(0, 0, format!("v{} is live; draining {} old instances", release.spec.version, old.len()))
        .await;
    drain_and_remove(p, &old).await;
    Ok(format!(
        "v{} is live with {} instances (the rollout was finished after the control plane restarted)",
        release.spec.version,
        ours.len()
    ))
}

/// The rest of a scale that was removing instances: see [`resume`].
async fn finish_scale(p: &Arc<Platform>, release: &Object<ReleaseSpec>) -> Result<String, RolloutError> {
    let view = View::read(&p.registry).await?;
    let excess = past_counts(&view, release.spec.app, &release.spec);
    drain_and_remove(p, &excess).await;
    Ok(format!(
        "scaled: {} instances past the counts of v{} removed (the rollout was finished after the control \
         plane restarted)",
        excess.len(),
        release.spec.version
    ))
}

/// The undoing of a rollout that had not gone live: see [`resume`].
async fn undo(p: &Arc<Platform>, task: &TaskHandle, release: Option<&Object<ReleaseSpec>>) {
    remove_own_instances(p, task).await;
    if let Some(r) = release
        && r.spec.state == ReleaseState::Deploying
    {
        set_release_state(&p.registry, r.meta.uuid, ReleaseState::Failed).await;
    }
}

/// The app's instances past `release`'s counts: per process type, the newest of those not
/// draining beyond the count (the oldest have proven themselves), and every one already
/// draining. What a scale removes.
fn past_counts(view: &View, app: Uuid, release: &ReleaseSpec) -> Vec<Uuid> {
    let mut out = Vec::new();
    let mut by_process: BTreeMap<&str, Vec<&Object<NodeSpec>>> = BTreeMap::new();
    for n in view.instances_of(app) {
        if n.meta.labels.contains_key(DRAINING_LABEL) {
            out.push(n.meta.uuid);
            continue;
        }
        let process = n.meta.labels.get(PROCESS_LABEL).map_or("", String::as_str);
        by_process.entry(process).or_default().push(n);
    }
    for (process, mut have) in by_process {
        let want = release.manifest.processes.get(process).map_or(0, |pt| pt.instances as usize);
        have.sort_by_key(|n| n.meta.created_at);
        out.extend(have.iter().skip(want).map(|n| n.meta.uuid));
    }
    out
}

/// What the operator is told when instances run unsandboxed.
fn unsandboxed_note(app: &str, unsandboxed: usize, of: usize) -> String {
    format!(
        "not isolated: {unsandboxed} of {of} new instances of {app} run as plain processes of the \
         operator's user, on hosts that cannot sandbox (no root)"
    )
}

/// The instances one call of [`create_instances`] made.
#[derive(Debug, Default)]
struct Made {
    nodes: Vec<Uuid>,
    /// How many of them run as plain processes, their hosts unable to sandbox them.
    unsandboxed: usize,
}

/// Make `count` instances of one process type, numbered from `first`, each on a host chosen
/// by placement (a sandboxing one if `isolation` requires it) with a port of its own, recorded
/// with the strategy that host runs it by.
#[allow(clippy::too_many_arguments, reason = "one call site per mode; a struct would only rename them")]
async fn create_instances(
    p: &Arc<Platform>,
    rollout: Uuid,
    env: &Object<CompartmentSpec>,
    release: &Object<ReleaseSpec>,
    process: &str,
    pt: &ProcessType,
    count: usize,
    first: usize,
    isolation: Isolation,
) -> Result<Made, PlatformError> {
    if count == 0 {
        return Ok(Made::default());
    }
    let app = env.meta.label.clone().unwrap_or_default();
    let tier = p.tier(&app, env.meta.account, process).await?;
    let view = View::read(&p.registry).await?;
    let mut loads = host_loads(&view, env.meta.uuid, process);
    eligible(&mut loads, isolation).map_err(|e| PlatformError::Unavailable(e.to_string()))?;
    // Where the cloud has an instance network, a sandboxing host with a block of it gives each
    // instance a namespace and an address of its own; a tenant's instances go only there.
    let networks = network::networks(&p.registry).await?;
    let block = |host: Uuid| {
        let (instances, hosts) = networks.as_ref()?;
        network::block_of(host, instances, hosts, &view.interfaces)
    };
    if networks.is_some() && isolation == Isolation::Required {
        loads.retain(|l| block(l.host).is_some());
        if loads.is_empty() {
            return Err(PlatformError::Unavailable(
                "no sandboxing host that is up has a block of the instance network".into(),
            ));
        }
    }
    // Placed by what the instance will really be given: the operator's default when the
    // manifest names no memory.
    let memory = p.registry.instance_defaults().applied(&pt.resources).memory_bytes.unwrap_or(0);
    let hosts = place(&mut loads, count, memory).map_err(|e| PlatformError::Unavailable(e.to_string()))?;
    let health = pt.health_or_default(process);
    let version = release.spec.version;
    let short = &rollout.simple().to_string()[..4];
    let mut made = Vec::new();
    let mut unsandboxed = 0;
    for (i, host) in hosts.into_iter().enumerate() {
        let sandbox = loads.iter().find(|l| l.host == host).map_or(Sandbox::None, |l| l.sandbox);
        let strategy = sandbox.instance_strategy();
        let own_block = block(host).filter(|_| sandbox == Sandbox::UnixUser);
        let label = format!("{process}-v{version}-{short}-{}", first + i + 1);
        let labels = [
            (APP_LABEL.to_string(), app.clone()),
            (PROCESS_LABEL.to_string(), process.to_string()),
            (RELEASE_LABEL.to_string(), release.meta.uuid.to_string()),
            (ROLLOUT_LABEL.to_string(), rollout.to_string()),
        ]
        .into();
        let mut attempt = 0;
        let node = loop {
            attempt += 1;
            let port = match own_block {
                Some(_) => network::INSTANCE_PORT,
                None => free_port(&p.registry).await?,
            };
            let mut envs: BTreeMap<String, String> = release.spec.manifest.env.clone();
            envs.insert("PORT".into(), port.to_string());
            envs.insert("ENJIN_APP".into(), app.clone());
            envs.insert("ENJIN_PROCESS".into(), process.to_string());
            envs.insert("ENJIN_RELEASE".into(), format!("v{version}"));
            envs.insert("ENJIN_INSTANCE".into(), label.clone());
            let probe = match health.kind {
                HealthKind::Process => None,
                kind => Some(ProbeSpec {
                    strategy: if kind == HealthKind::Http {
                        ObservationStrategy::Http
                    } else {
                        ObservationStrategy::Tcp
                    },
                    port: Some(port),
                    path: health.path.clone(),
                    interval_ms: health.interval_ms,
                    timeout_ms: health.timeout_ms,
                    failure_threshold: health.failure_threshold,
                    success_threshold: 1,
                }),
            };
            let spec = NodeSpec {
                parent: Some(host),
                strategy: Some(strategy),
                tiers: vec![tier],
                compartment: Some(env.meta.uuid),
                resources: pt.resources.clone(),
                desired_state: DesiredState::Running,
                run: Some(RunSpec {
                    command: vec!["/bin/sh".into(), "-c".into(), pt.command.clone()],
                    env: envs,
                    restart: RestartPolicy::default(),
                    probe,
                    stop_grace_seconds: 5,
                    package: Some(release.spec.package.clone()),
                    port: Some(port),
                    uid: None,
                    own_network: own_block.is_some(),
                }),
            };
            let req = CreateRequest {
                account: Some(env.meta.account),
                ring: Ring::PLATFORM,
                label: Some(label.clone()),
                labels: Clone::clone(&labels),
                spec,
            };
            match p.registry.create(req, Utc::now()).await {
                Ok(n) => break n,
                // Taken by a concurrent rollout between reading and claiming: take another.
                Err(RegistryError::Invalid(e)) if e.field == "spec.run.port" && attempt < 20 => continue,
                Err(e) => {
                    remove(p, &made).await;
                    return Err(e.into());
                }
            }
        };
        if let (Some(block), Some((instances, _))) = (own_block, &networks)
            && let Err(e) = network::attach(&p.registry, &node, instances.meta.uuid, &block).await
        {
            made.push(node.meta.uuid);
            remove(p, &made).await;
            return Err(e);
        }
        tracing::info!(app = %app, instance = %label, host = %host, strategy = strategy.name(), "instance placed");
        if sandbox == Sandbox::None {
            unsandboxed += 1;
        }
        made.push(node.meta.uuid);
    }
    Ok(Made { nodes: made, unsandboxed })
}

/// The hosts instances may go to now, with what they already run.
fn host_loads(view: &View, app: Uuid, process: &str) -> Vec<HostLoad> {
    let mut loads: Vec<HostLoad> = view
        .hosts
        .values()
        // Ring 1 nodes with a role of their own (the edge: router and DNS) run no instances.
        .filter(|h| runs_instances(h))
        .filter(|h| {
            // Only hosts whose agent says it is alive.
            view.observations.get(&h.meta.uuid).is_some_and(|obs| {
                obs.iter().any(|o| {
                    o.spec.strategy == ObservationStrategy::Heartbeat
                        && o.spec.state == ObservationState::Running
                })
            })
        })
        .map(|h| HostLoad {
            host: h.meta.uuid,
            label: h.meta.label.clone().unwrap_or_default(),
            compartment: h.spec.compartment,
            memory_capacity: h.spec.resources.memory_bytes,
            memory_reserved: 0,
            same_process: 0,
            total: 0,
            sandbox: Sandbox::of(&h.meta.labels),
        })
        .collect();
    for n in &view.instances {
        let Some(l) = loads.iter_mut().find(|l| Some(l.host) == n.spec.parent) else { continue };
        l.total += 1;
        l.memory_reserved += n.spec.resources.memory_bytes.unwrap_or(0);
        if n.spec.compartment == Some(app)
            && n.meta.labels.get(PROCESS_LABEL).map(String::as_str) == Some(process)
        {
            l.same_process += 1;
        }
    }
    loads
}

async fn free_port(registry: &Registry) -> Result<u16, PlatformError> {
    let held = registry.store().range(ports::PREFIX).await.map_err(RegistryError::from)?;
    let used: HashSet<u16> = held.kvs.iter().filter_map(|kv| ports::port_of(&kv.key)).collect();
    ports::first_free(&used).ok_or_else(|| PlatformError::Unavailable("every instance port is taken".into()))
}

/// Wait until every one of `nodes` is healthy, reporting progress of `total` with `note`
/// after it (that instances run unsandboxed, said all along).
async fn wait_healthy(
    p: &Arc<Platform>,
    task: &mut TaskHandle,
    nodes: &[Uuid],
    timeout: Duration,
    total: u64,
    version: u32,
    note: &str,
) -> Result<(), RolloutError> {
    let start = Instant::now();
    loop {
        let view = View::read(&p.registry).await?;
        let mut healthy = 0u64;
        let mut waiting = None;
        for id in nodes {
            let Some(n) = view.instances.iter().find(|n| n.meta.uuid == *id) else {
                return Err(RolloutError::InstanceDeleted(*id));
            };
            let label = n.meta.label.clone().unwrap_or_default();
            match view.health(n) {
                Health::Healthy(_) => healthy += 1,
                Health::Failed(m) => {
                    return Err(RolloutError::InstanceFailed { instance: label, message: m.to_string() });
                }
                other => {
                    waiting = Some(format!(
                        "{label}: {}",
                        if other.message().is_empty() { other.name() } else { other.message() }
                    ))
                }
            }
        }
        task.progress(
            healthy,
            total,
            format!("{healthy} of {} new instances of v{version} healthy{note}", nodes.len()),
        )
        .await;
        if healthy == nodes.len() as u64 {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(RolloutError::NotHealthy {
                unhealthy: nodes.len() - healthy as usize,
                of: nodes.len(),
                timeout,
                waiting: waiting.unwrap_or_default(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Take instances out of the routes, give their requests in flight time to finish, then
/// remove them (their hosts stop them gracefully).
async fn drain_and_remove(p: &Arc<Platform>, nodes: &[Uuid]) {
    if nodes.is_empty() {
        return;
    }
    let mut newest = 0;
    for id in nodes {
        let Ok(n) = p.registry.get::<NodeSpec>(*id).await else { continue };
        let mut labels = n.meta.labels.clone();
        labels.insert(DRAINING_LABEL.into(), "true".into());
        let req = UpdateRequest {
            revision: n.meta.revision,
            label: n.meta.label.clone(),
            labels,
            spec: n.spec.clone(),
        };
        match p.registry.update(*id, req, Utc::now()).await {
            Ok(n) => newest = newest.max(n.meta.revision),
            Err(e) => tracing::warn!(instance = %id, error = %e, "instance not marked draining"),
        }
    }
    // No new request goes to them once the routers serve a table without them; those in
    // flight get the drain time.
    p.wait_routes_applied(newest).await;
    tokio::time::sleep(p.config.drain).await;
    remove(p, nodes).await;
}

async fn remove(p: &Arc<Platform>, nodes: &[Uuid]) {
    for id in nodes {
        match p.registry.delete(Kind::Node, *id, None).await {
            Ok(()) | Err(RegistryError::NotFound { .. }) => {}
            Err(e) => tracing::warn!(instance = %id, error = %e, "instance not removed"),
        }
    }
}

/// Set a release's state; the store revision of the change, if it was made.
async fn set_release_state(registry: &Registry, release: Uuid, state: ReleaseState) -> Option<i64> {
    for _ in 0..5 {
        let Ok(r) = registry.get::<ReleaseSpec>(release).await else { return None };
        let spec = ReleaseSpec { state, ..r.spec.clone() };
        let req = UpdateRequest {
            revision: r.meta.revision,
            label: r.meta.label.clone(),
            labels: r.meta.labels.clone(),
            spec,
        };
        match registry.update(release, req, Utc::now()).await {
            Ok(r) => return Some(r.meta.revision),
            Err(RegistryError::Conflict { .. }) => continue,
            Err(e) => {
                tracing::warn!(%release, error = %e, "release state not stored");
                return None;
            }
        }
    }
    None
}

/// Answer hosts' requests for package chunks from the package store.
pub(super) async fn serve_packages(p: Arc<Platform>, bus: Arc<BusAuthority>) {
    let store = p.packages.clone();
    let handler = move |payload: &[u8]| -> Vec<u8> {
        let Ok(req) = serde_json::from_slice::<PackageChunkRequest>(payload) else { return Vec::new() };
        store.read_chunk(&req.digest, req.offset, PACKAGE_CHUNK).unwrap_or_default()
    };
    if let Err(e) = bus.serve_requests(PACKAGES_TOPIC, Arc::new(handler)).await {
        tracing::error!(error = %e, "cannot serve packages to hosts");
    }
}
