//! How a parent runs its children: Erlang/OTP restart policies (permanent, transient, temporary;
//! at most R restarts in T; exponential backoff), a `Launcher` trait with a plain-process
//! implementation, observation strategies (process liveness, TCP, HTTP) and a supervisor task that
//! owns every child's state, reports each state change as an observation and re-adopts children a
//! previous supervisor left running.
//!
//! This crate must never use `unsafe` or raw syscalls: sandboxed launching (UNIX users, namespaces,
//! cgroups) plugs in as another [`Launcher`], built on `enjin-sys` outside this crate. It must
//! never depend on the control plane: observations leave through a channel, desired state comes
//! in through [`SupervisorHandle`].

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod child;
pub mod policy;
pub mod probe;
mod serde_ms;
pub mod supervisor;

pub use child::{
    ChildId, ChildIdError, ChildSpec, ExitWaiter, LaunchError, Launched, Launcher, ProcessHandle,
    ProcessLauncher, Signal, SignalError, SpecError, SpecHash, StopError, StopSpec, Stopped,
};
pub use policy::{
    Backoff, Decision, Exit, GiveUpReason, Intensity, PolicyError, Restart, RestartPolicy, RestartTracker,
};
pub use probe::{Check, Health, ProbeError, ProbeSpec, ProbeSpecError, ProbeTracker, ProcStat};
pub use supervisor::{
    ChildStatus, EnsureError, EnsureOutcome, Observation, Snapshot, StartError, Supervisor, SupervisorConfig,
    SupervisorGone, SupervisorHandle, SyncSummary,
};
