//! The sandbox's syscall filter: seccomp-BPF programs compiled by `seccompiler` (Firecracker's
//! compiler; no hand-written BPF), installed by the sandboxed child as its last privileged act
//! before `execve`, after `no_new_privs`.
//!
//! The policy is a deny list on top of the uid, namespaces and capabilities: a syscall on
//! [`DENIED`] answers `EPERM` and the process goes on; everything else is allowed. It covers at
//! least what Docker's default profile denies to a container without capabilities. Two
//! programs are installed (the kernel runs both and the stricter answer wins):
//!
//! 1. the deny list, `EPERM`;
//! 2. `clone3` answers `ENOSYS`, as under Docker: its flags sit in a struct the filter cannot
//!    read, and on `ENOSYS` libc falls back to `clone`, whose flags program 1 checks. (`EPERM`
//!    would make glibc's `pthread_create` fail instead of falling back.)
//!
//! Both programs kill the process on a foreign architecture (a 32-bit `int 0x80` call), and
//! every rule is also written for the x32 number of the syscall (`nr | 0x4000_0000`), so a
//! kernel that has x32 enabled cannot be used to step around the list.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

/// Why the filter could not be built (a bug in the rules, never the caller's input).
#[derive(Debug, thiserror::Error)]
#[error("failed to build the sandbox's seccomp filter: {0}")]
pub struct SeccompError(String);

/// What a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// Every call.
    Always,
    /// Calls whose first argument has any of these flag bits set.
    AnyFlag(&'static [u64]),
    /// Calls whose first argument equals one of these.
    Arg0In(&'static [u64]),
    /// Calls whose first argument is none of these.
    Arg0NotIn(&'static [u64]),
}

/// One entry of the policy, with the reason it is denied (docs/security.md lists the same).
#[derive(Debug, Clone, Copy)]
pub struct Denied {
    /// The syscall's name, as in its man page (for docs and logs only).
    pub name: &'static str,
    /// Its number on the native architecture (`libc::SYS_*`); the filter also denies the x32
    /// number, `nr | 0x4000_0000`.
    pub nr: i64,
    /// Which calls of it are denied; the others are allowed.
    pub when: Match,
    /// What a tenant could do with it, in a few words.
    pub why: &'static str,
}

/// Every namespace flag: a new namespace of any kind is refused (a new user namespace would
/// hand the tenant a root with capabilities over it, and with it the kernel's whole
/// namespaced-root surface).
pub const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWCGROUP as u64,
    0x80, // CLONE_NEWTIME (only valid for unshare and clone3)
];

/// `personality` values glibc and common runtimes use (as Docker allows): the default Linux
/// personality, `PER_LINUX32`, `UNAME26`, both, and the query.
pub const PERSONALITY_ALLOWED: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

const PTRACE_ATTACH: u64 = 16;
const PTRACE_SEIZE: u64 = 0x4206;

const fn deny(name: &'static str, nr: i64, when: Match, why: &'static str) -> Denied {
    Denied { name, nr, when, why }
}

/// The deny list, syscall by syscall, with the reason.
pub const DENIED: &[Denied] = &[
    deny(
        "unshare",
        libc::SYS_unshare,
        Match::AnyFlag(NAMESPACE_FLAGS),
        "new namespaces (a user namespace makes the caller root in it)",
    ),
    deny("clone", libc::SYS_clone, Match::AnyFlag(NAMESPACE_FLAGS), "new namespaces through clone's flags"),
    deny("setns", libc::SYS_setns, Match::Always, "joining another namespace"),
    deny("mount", libc::SYS_mount, Match::Always, "changing the filesystem view"),
    deny("umount2", libc::SYS_umount2, Match::Always, "uncovering what the sandbox's mounts hide"),
    deny("pivot_root", libc::SYS_pivot_root, Match::Always, "changing the root"),
    deny("move_mount", libc::SYS_move_mount, Match::Always, "the new mount API"),
    deny("fsopen", libc::SYS_fsopen, Match::Always, "the new mount API"),
    deny("fsconfig", libc::SYS_fsconfig, Match::Always, "the new mount API"),
    deny("fsmount", libc::SYS_fsmount, Match::Always, "the new mount API"),
    deny("fspick", libc::SYS_fspick, Match::Always, "the new mount API"),
    deny("open_tree", libc::SYS_open_tree, Match::Always, "the new mount API (cloning mount trees)"),
    deny("mount_setattr", libc::SYS_mount_setattr, Match::Always, "making read-only mounts writable"),
    deny("chroot", libc::SYS_chroot, Match::Always, "changing the root (also needs CAP_SYS_CHROOT)"),
    deny("keyctl", libc::SYS_keyctl, Match::Always, "the kernel keyring is not namespaced"),
    deny("add_key", libc::SYS_add_key, Match::Always, "the kernel keyring is not namespaced"),
    deny("request_key", libc::SYS_request_key, Match::Always, "the kernel keyring is not namespaced"),
    deny("bpf", libc::SYS_bpf, Match::Always, "loading BPF programs into the kernel"),
    deny(
        "perf_event_open",
        libc::SYS_perf_event_open,
        Match::Always,
        "performance counters leak other tenants' activity",
    ),
    deny(
        "userfaultfd",
        libc::SYS_userfaultfd,
        Match::Always,
        "a classic tool for widening kernel race windows",
    ),
    deny("kexec_load", libc::SYS_kexec_load, Match::Always, "loading a new kernel"),
    deny("kexec_file_load", libc::SYS_kexec_file_load, Match::Always, "loading a new kernel"),
    deny("init_module", libc::SYS_init_module, Match::Always, "loading kernel modules"),
    deny("finit_module", libc::SYS_finit_module, Match::Always, "loading kernel modules"),
    deny("delete_module", libc::SYS_delete_module, Match::Always, "unloading kernel modules"),
    deny(
        "open_by_handle_at",
        libc::SYS_open_by_handle_at,
        Match::Always,
        "opening files by handle bypasses path checks (the shocker escape)",
    ),
    deny(
        "name_to_handle_at",
        libc::SYS_name_to_handle_at,
        Match::Always,
        "the other half of open_by_handle_at",
    ),
    deny("reboot", libc::SYS_reboot, Match::Always, "rebooting the machine"),
    deny("swapon", libc::SYS_swapon, Match::Always, "swap is the machine's"),
    deny("swapoff", libc::SYS_swapoff, Match::Always, "swap is the machine's"),
    deny("settimeofday", libc::SYS_settimeofday, Match::Always, "the clock is the machine's"),
    deny("clock_settime", libc::SYS_clock_settime, Match::Always, "the clock is the machine's"),
    deny("clock_adjtime", libc::SYS_clock_adjtime, Match::Always, "the clock is the machine's"),
    deny("adjtimex", libc::SYS_adjtimex, Match::Always, "the clock is the machine's"),
    deny(
        "ptrace",
        libc::SYS_ptrace,
        Match::Arg0In(&[PTRACE_ATTACH, PTRACE_SEIZE]),
        "attaching to a process; tracing one's own children (PTRACE_TRACEME) stays allowed",
    ),
    deny("process_vm_readv", libc::SYS_process_vm_readv, Match::Always, "reading another process's memory"),
    deny("process_vm_writev", libc::SYS_process_vm_writev, Match::Always, "writing another process's memory"),
    deny(
        "personality",
        libc::SYS_personality,
        Match::Arg0NotIn(PERSONALITY_ALLOWED),
        "execution domains beyond the default (READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE …)",
    ),
    deny(
        "io_uring_setup",
        libc::SYS_io_uring_setup,
        Match::Always,
        "io_uring: a large kernel surface with a history of escalations",
    ),
    deny("io_uring_enter", libc::SYS_io_uring_enter, Match::Always, "io_uring"),
    deny("io_uring_register", libc::SYS_io_uring_register, Match::Always, "io_uring"),
    deny("acct", libc::SYS_acct, Match::Always, "process accounting is the machine's"),
    deny("quotactl", libc::SYS_quotactl, Match::Always, "disk quotas are the machine's"),
    deny("syslog", libc::SYS_syslog, Match::Always, "the kernel log"),
    deny("iopl", libc::SYS_iopl, Match::Always, "raw I/O ports"),
    deny("ioperm", libc::SYS_ioperm, Match::Always, "raw I/O ports"),
    deny("vhangup", libc::SYS_vhangup, Match::Always, "hanging up terminals"),
    deny("lookup_dcookie", libc::SYS_lookup_dcookie, Match::Always, "kernel profiling"),
    deny("fanotify_init", libc::SYS_fanotify_init, Match::Always, "watching the whole filesystem"),
    deny("kcmp", libc::SYS_kcmp, Match::Always, "comparing other processes' kernel objects"),
    deny("uselib", libc::SYS_uselib, Match::Always, "obsolete"),
    deny("sysfs", libc::SYS_sysfs, Match::Always, "obsolete"),
    deny("ustat", libc::SYS_ustat, Match::Always, "obsolete"),
    deny("nfsservctl", libc::SYS_nfsservctl, Match::Always, "obsolete"),
];

/// The x32 ABI's number of an x86-64 syscall.
const X32_BIT: i64 = 0x4000_0000;

impl SeccompError {
    pub(crate) fn new(message: String) -> Self {
        SeccompError(message)
    }
}

fn err(e: impl std::fmt::Display) -> SeccompError {
    SeccompError(e.to_string())
}

fn arg0(op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(0, SeccompCmpArgLen::Dword, op, value).map_err(err)
}

fn rules_for(when: Match) -> Result<Vec<SeccompRule>, SeccompError> {
    match when {
        // An empty rule list matches every call.
        Match::Always => Ok(Vec::new()),
        Match::AnyFlag(flags) => flags
            .iter()
            .map(|f| SeccompRule::new(vec![arg0(SeccompCmpOp::MaskedEq(*f), *f)?]).map_err(err))
            .collect(),
        Match::Arg0In(values) => {
            values.iter().map(|v| SeccompRule::new(vec![arg0(SeccompCmpOp::Eq, *v)?]).map_err(err)).collect()
        }
        Match::Arg0NotIn(values) => {
            let conditions =
                values.iter().map(|v| arg0(SeccompCmpOp::Ne, *v)).collect::<Result<Vec<_>, _>>()?;
            Ok(vec![SeccompRule::new(conditions).map_err(err)?])
        }
    }
}

fn program(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(u32::try_from(errno).map_err(err)?),
        TargetArch::x86_64,
    )
    .map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

/// The programs to install, in order (see the module doc).
pub fn programs() -> Result<Vec<BpfProgram>, SeccompError> {
    let mut deny = BTreeMap::new();
    for d in DENIED {
        for nr in [d.nr, d.nr | X32_BIT] {
            deny.insert(nr, rules_for(d.when)?);
        }
    }
    let clone3 = BTreeMap::from([(libc::SYS_clone3, Vec::new()), (libc::SYS_clone3 | X32_BIT, Vec::new())]);
    Ok(vec![program(deny, libc::EPERM)?, program(clone3, libc::ENOSYS)?])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn the_policy_compiles_and_names_each_syscall_once() {
        let progs = programs().unwrap();
        assert_eq!(progs.len(), 2);
        assert!(progs.iter().all(|p| !p.is_empty() && p.len() < 4096));
        let mut names: Vec<&str> = DENIED.iter().map(|d| d.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a syscall is listed twice");
        for must in [
            "unshare",
            "clone",
            "mount",
            "umount2",
            "pivot_root",
            "move_mount",
            "fsopen",
            "open_tree",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "open_by_handle_at",
            "reboot",
            "swapon",
            "swapoff",
            "settimeofday",
            "clock_settime",
            "ptrace",
            "personality",
            "io_uring_setup",
        ] {
            assert!(DENIED.iter().any(|d| d.name == must), "{must} is not denied");
        }
    }
}
