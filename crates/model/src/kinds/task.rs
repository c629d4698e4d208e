use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Kind, Spec, text};
use crate::{FieldError, Ring};

/// What a task does; fixed when the task is created. Only `deploy` tasks are created by the
/// platform today; the others are accepted through the API but nothing runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// A rollout of an app's release (a deploy or a scale); its progress is a [`RolloutStep`].
    Deploy,
    /// Moving a tier's primary role to another node.
    Failover,
    /// Copying an object's data somewhere safe.
    Backup,
    /// Work repeated on a schedule.
    Periodic,
    /// Updating the code a node runs.
    CodeUpdate,
}

/// A task's life: `pending → running → succeeded | failed`, and `cancelled` from either of the
/// first two. The last three are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Created, not started; the initial state when none is given.
    Pending,
    /// Being worked on.
    Running,
    /// Finished as asked; final.
    Succeeded,
    /// Given up on; `error` says why; final.
    Failed,
    /// Stopped before finishing, from pending or running; final.
    Cancelled,
}

impl TaskState {
    /// Whether the state is succeeded, failed or cancelled: a task in it never changes again.
    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled)
    }

    /// Whether an update may move a task from this state to `next`; staying in the same state is
    /// always allowed (a final task's spec must then not change at all, which the update check
    /// enforces separately).
    pub fn can_become(self, next: TaskState) -> bool {
        use TaskState::*;
        self == next
            || matches!(
                (self, next),
                (Pending, Running | Cancelled) | (Running, Succeeded | Failed | Cancelled)
            )
    }
}

/// How far a rollout (a deploy task) has come, recorded before each step so that a control
/// plane that stops in the middle can tell, when it comes back, whether to undo the rollout or
/// to finish it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutStep {
    /// Starting new instances and waiting for them to be healthy; what ran before still
    /// serves. Undone on a restart: the rollout's instances are removed.
    Starting,
    /// The new instances are healthy and take over: a new release becomes the app's live one,
    /// and every instance the rollout did not start is drained and removed. Finished on a
    /// restart (unless the new release was never made live: then undone).
    Live,
    /// A scale removes the instances past the release's counts. Finished on a restart.
    Draining,
}

/// Units of work finished; never more than `total` when `total` is known.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskProgress {
    /// Units of work in all.
    pub done: u64,
    /// 0 while the amount of work is unknown.
    pub total: u64,
    /// What the task is doing now, for people; at most 4,096 characters.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 4096), regex(pattern = super::TEXT_PATTERN))]
    pub message: String,
}

/// A unit of work with a state machine and progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// What the task does; cannot change after creation. Written `type` in the JSON.
    #[serde(rename = "type")]
    pub task_type: TaskKind,
    /// Where the task is in its life; only moves along [`TaskState::can_become`].
    #[serde(default = "pending")]
    pub state: TaskState,
    /// How much is done; zero and unknown by default.
    #[serde(default)]
    pub progress: TaskProgress,
    /// The object the task works on. Informational: it is not kept from being deleted, since a
    /// task's history outlives what it worked on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Uuid>,
    /// What a finished task produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why a failed task failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384), regex(pattern = super::TEXT_PATTERN))]
    pub error: Option<String>,
    /// A rollout's step, kept current while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<RolloutStep>,
    /// What a rollout does and where its instances may run: written by the platform when it
    /// starts one, so that whichever control-plane server runs the rollouts can carry it out
    /// from the store alone. Never written through the generic task API by a tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutPlan>,
    /// The run of the control plane carrying the rollout out (a uuid each run makes when it
    /// starts). Empty until one takes it up; a task held by another run than the current one
    /// was cut short (that run stopped) and is taken over by its recorded step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<Uuid>,
}

/// What a rollout task asks for; see [`TaskSpec::rollout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutPlan {
    /// Deploy a release, replace the live release's instances, or scale it.
    pub mode: RolloutMode,
    /// Where the instances may run: the caller's right, fixed when the task is recorded.
    pub isolation: RolloutIsolation,
}

/// The three kinds of rollout; every deploy, rollback, restart and scale is one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutMode {
    /// A new release (a deploy or a rollback): start all its instances, then make it live and
    /// remove the old ones.
    Release,
    /// The live release again (a restart): replace every instance.
    Replace,
    /// The live release: add or remove instances to match its counts.
    Scale,
}

/// Where a rollout's instances may run, decided by who asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutIsolation {
    /// Only on hosts that sandbox them: a tenant's apps.
    Required,
    /// On any host, as a plain process where it cannot sandbox: the operator's own apps.
    Optional,
}

fn pending() -> TaskState {
    TaskState::Pending
}

impl Spec for TaskSpec {
    const KIND: Kind = Kind::Task;

    fn validate(&self, _ring: Ring) -> Result<(), FieldError> {
        let p = &self.progress;
        if p.total != 0 && p.done > p.total {
            return Err(FieldError::new(
                "spec.progress.done",
                format!("{} is more than the total {}", p.done, p.total),
            ));
        }
        text("spec.progress.message", &p.message, 4096)?;
        if let Some(e) = &self.error {
            text("spec.error", e, 16 * 1024)?;
        }
        if self.error.is_some() && self.state != TaskState::Failed {
            return Err(FieldError::new("spec.error", "only a failed task carries an error"));
        }
        Ok(())
    }

    fn check_update(&self, old: &Self) -> Result<(), FieldError> {
        if self.task_type != old.task_type {
            return Err(FieldError::new("spec.type", "a task's type cannot change"));
        }
        if self.rollout != old.rollout {
            return Err(FieldError::new("spec.rollout", "a rollout's plan cannot change"));
        }
        if old.state.is_final() && self != old {
            return Err(FieldError::new(
                "spec.state",
                format!("the task is {} and can no longer change", state_name(old.state)),
            ));
        }
        if !old.state.can_become(self.state) {
            return Err(FieldError::new(
                "spec.state",
                format!("a {} task cannot become {}", state_name(old.state), state_name(self.state)),
            ));
        }
        Ok(())
    }
}

fn state_name(s: TaskState) -> &'static str {
    match s {
        TaskState::Pending => "pending",
        TaskState::Running => "running",
        TaskState::Succeeded => "succeeded",
        TaskState::Failed => "failed",
        TaskState::Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn task(state: TaskState) -> TaskSpec {
        TaskSpec {
            task_type: TaskKind::Deploy,
            state,
            progress: TaskProgress::default(),
            subject: None,
            result: None,
            error: None,
            step: None,
            rollout: None,
            runner: None,
        }
    }

    fn any_state() -> impl Strategy<Value = TaskState> {
        prop_oneof![
            Just(TaskState::Pending),
            Just(TaskState::Running),
            Just(TaskState::Succeeded),
            Just(TaskState::Failed),
            Just(TaskState::Cancelled),
        ]
    }

    proptest! {
        /// Whatever sequence of updates is tried, a task never leaves a final state and never
        /// goes back to pending once it ran.
        #[test]
        fn state_machine_is_monotonic(steps in proptest::collection::vec(any_state(), 1..20)) {
            let mut current = task(TaskState::Pending);
            let mut ran = false;
            for next in steps {
                let candidate = task(next);
                if candidate.check_update(&current).is_ok() {
                    if current.state.is_final() {
                        prop_assert_eq!(next, current.state);
                    }
                    current = candidate;
                }
                ran |= current.state != TaskState::Pending;
                prop_assert!(!(ran && current.state == TaskState::Pending));
            }
        }
    }

    #[test]
    fn transitions() {
        assert!(task(TaskState::Running).check_update(&task(TaskState::Pending)).is_ok());
        assert!(task(TaskState::Succeeded).check_update(&task(TaskState::Pending)).is_err());
        assert!(task(TaskState::Running).check_update(&task(TaskState::Failed)).is_err());
    }
}
