//! The one crate that talks to the kernel below the standard library: cgroups (v1 and v2 behind
//! one trait), the sandboxed spawn of the `unix-user` strategy (namespaces, mounts, credentials,
//! rlimits, a tiny PID-1 reaper), `/proc` reading for re-adopting children, and punching holes
//! in files (to free what a log collector has consumed). It is the only crate allowed `unsafe`;
//! every block carries a `// SAFETY:` comment. It must never decide policy (which uid, which
//! limits, when to restart: the caller does), never touch the host's own mounts (every mount
//! happens in the child's private mount namespace), and never allocate or take a lock between
//! fork and exec.
//!
//! Everything here is synchronous: callers run it on a blocking thread.

#![warn(missing_docs)]

pub mod bpf;
pub mod cgroup;
pub mod disk;
pub mod fs;
pub mod proc;
pub mod sandbox;
pub mod seccomp;
pub mod syscalls;

pub use nix::errno::Errno;
pub use nix::sys::signal::Signal;
pub use nix::unistd::Pid;
