//! The rollout controller. The API only records a rollout: a task with its plan (what to do,
//! and where the instances may run) and its release as subject. This controller, run with the
//! platform's controllers (on the one server that runs them), carries every such task out:
//!
//! - a task nobody has taken up is claimed — this run's id written into it, compared against
//!   the revision read, so that only one run ever claims it — and run from the start;
//! - a task another run had claimed was cut short when that run stopped: it is claimed and
//!   taken over by its recorded step ([`rollout::resume`]);
//! - a task cancelled through the API while its rollout runs here has the rollout stopped and
//!   brought to a clean end by its step ([`rollout::settle`]); the task stays cancelled.
//!
//! A deploy task with neither a plan nor a step was not made by the platform: it is left alone.
//! Stopping the controller stops every rollout it runs; whoever runs the controllers next
//! takes them over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use enjin_model::Kind;
use enjin_model::api::ListQuery;
use enjin_model::kinds::{TaskKind, TaskSpec, TaskState};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::Platform;
use super::rollout::{self, TaskHandle};
use crate::cache::Change;
use crate::controller::{Action, ReconcileError, Reconciler};
use crate::registry::RegistryError;

/// How many times, and how far apart, a cancelled rollout's late instances are looked for.
const LATE_WRITE_CHECKS: u32 = 3;
const LATE_WRITE_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// Runs the platform's rollouts; see the module's documentation.
pub(super) struct RolloutRunner {
    platform: Arc<Platform>,
    /// This run of the control plane, as tasks record who carries them out.
    run: Uuid,
    /// The rollouts this controller started, by task.
    running: Mutex<HashMap<Uuid, JoinHandle<()>>>,
}

impl RolloutRunner {
    pub(super) fn new(platform: Arc<Platform>, run: Uuid) -> Self {
        RolloutRunner { platform, run, running: Mutex::new(HashMap::new()) }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, JoinHandle<()>>> {
        // A panic while holding this lock leaves a map that is still right.
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_running(&self, task: Uuid) -> bool {
        self.running().get(&task).is_some_and(|h| !h.is_finished())
    }

    /// Stop this controller's rollout of `task` (if any) and wait until it has stopped.
    async fn stop(&self, task: Uuid) -> bool {
        let Some(handle) = self.running().remove(&task) else { return false };
        if handle.is_finished() {
            return false;
        }
        handle.abort();
        let _ = handle.await;
        true
    }
}

impl Drop for RolloutRunner {
    fn drop(&mut self) {
        for (_, handle) in self.running().drain() {
            handle.abort();
        }
    }
}

impl Reconciler for RolloutRunner {
    type Key = Uuid;

    fn name(&self) -> &'static str {
        "rollouts"
    }

    fn keys_of(&self, change: &Change) -> Vec<Uuid> {
        if change.kind == Kind::Task { vec![change.uuid] } else { Vec::new() }
    }

    async fn all_keys(&self) -> Result<Vec<Uuid>, ReconcileError> {
        let (tasks, _) = self
            .platform
            .registry
            .list::<TaskSpec>(&ListQuery::default())
            .await
            .map_err(ReconcileError::new)?;
        Ok(tasks
            .into_iter()
            .filter(|t| t.spec.task_type == TaskKind::Deploy && !t.spec.state.is_final())
            .map(|t| t.meta.uuid)
            .collect())
    }

    async fn reconcile(&self, id: &Uuid) -> Result<Action, ReconcileError> {
        let task = match self.platform.registry.get::<TaskSpec>(*id).await {
            Ok(t) => t,
            Err(RegistryError::NotFound { .. }) => {
                self.stop(*id).await;
                return Ok(Action::Done);
            }
            Err(e) => return Err(ReconcileError::new(e)),
        };
        if task.spec.task_type != TaskKind::Deploy {
            return Ok(Action::Done);
        }
        if task.spec.state.is_final() {
            // Our own rollout writes only success or failure, as its last act: anything else
            // while it runs is a cancellation.
            if task.spec.state == TaskState::Cancelled && self.stop(*id).await {
                let mut handle = TaskHandle::new(&self.platform.registry, task);
                match rollout::settle(&self.platform, &mut handle).await {
                    Ok(m) => tracing::info!(task = %id, "rollout cancelled: {m}"),
                    Err(e) => tracing::info!(task = %id, "rollout cancelled: {e}"),
                }
                // A write the stopped rollout had sent may still land after it stopped (the
                // store commits what it was given): an instance made then is removed too.
                for _ in 0..LATE_WRITE_CHECKS {
                    tokio::time::sleep(LATE_WRITE_PAUSE).await;
                    rollout::remove_late_instances(&self.platform, &handle).await;
                }
            } else {
                self.running().remove(id);
            }
            return Ok(Action::Done);
        }
        if self.is_running(*id) || (task.spec.rollout.is_none() && task.spec.step.is_none()) {
            return Ok(Action::Done);
        }
        let fresh = task.spec.runner.is_none();
        let mut handle = TaskHandle::new(&self.platform.registry, task);
        // Another writer went first: its change brings the task back here.
        if !handle.claim(self.run).await.map_err(ReconcileError::new)? {
            return Ok(Action::Done);
        }
        let p = self.platform.clone();
        let work = if fresh {
            tracing::info!(task = %id, "rollout taken up");
            tokio::spawn(rollout::start(p, handle))
        } else {
            tracing::info!(task = %id, step = ?handle.recorded_step(), "taking over an unfinished rollout");
            tokio::spawn(rollout::resume(p, handle))
        };
        self.running().insert(*id, work);
        Ok(Action::Done)
    }
}
