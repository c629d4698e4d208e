//! The child side of the spawn: everything between fork and exec, and the tiny init.
//!
//! This code runs in a copy of a multithreaded process in which only the forking thread exists.
//! Any lock another thread held at fork time (the allocator's, stdio's, glibc's thread list) is
//! held forever, so it may only make async-signal-safe calls: no allocation, no `std` I/O, no
//! panics. Everything it needs was built by the parent (`plan::build`). Credentials change
//! through raw `setres[ug]id` syscalls rather than glibc's wrappers, which broadcast the change
//! to every thread glibc remembers — threads that do not exist in this copy.
//!
//! [`ChildSys`] is the seam: [`RealChildSys`] makes the syscalls, the test fake records them, so
//! [`apply`] (the order of operations) is tested without root.

use std::ffi::CStr;
use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::plan::{ExecArgs, Plan, Relay, Step};

/// The syscalls the child makes. Implementations used in a real child must not allocate.
pub(crate) trait ChildSys {
    fn reset_signal_dispositions(&self);
    fn setsid(&self) -> Result<(), Errno>;
    fn dup2(&self, from: RawFd, to: RawFd) -> Result<(), Errno>;
    fn write_file(&self, path: &CStr, data: &[u8]) -> Result<(), Errno>;
    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno>;
    fn setns_net(&self, fd: RawFd) -> Result<(), Errno>;
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: MsFlags,
        data: Option<&CStr>,
    ) -> Result<(), Errno>;
    fn umount_detach(&self, target: &CStr) -> Result<(), Errno>;
    fn mount_setattr(&self, path: &CStr, recursive: bool, set: u64, clear: u64) -> Result<(), Errno>;
    fn setrlimit(&self, resource: Resource, soft: u64, hard: u64) -> Result<(), Errno>;
    fn setgroups_empty(&self) -> Result<(), Errno>;
    fn setresgid(&self, gid: u32) -> Result<(), Errno>;
    fn setresuid(&self, uid: u32) -> Result<(), Errno>;
    fn set_no_new_privs(&self) -> Result<(), Errno>;
    fn chdir(&self, path: &CStr) -> Result<(), Errno>;
    fn mkdir(&self, path: &CStr, mode: u32) -> Result<(), Errno>;
    fn chown(&self, path: &CStr, uid: u32, gid: u32) -> Result<(), Errno>;
    fn mknod_char(&self, path: &CStr, major: u32, minor: u32) -> Result<(), Errno>;
    fn symlink(&self, target: &CStr, link: &CStr) -> Result<(), Errno>;
    fn pivot_root(&self, root: &CStr) -> Result<(), Errno>;
    fn drop_capabilities(&self) -> Result<(), Errno>;
    fn seccomp(&self, program: &seccompiler::BpfProgram) -> Result<(), Errno>;
    /// Forks; `None` in the child.
    fn fork(&self) -> Result<Option<Pid>, Errno>;
    /// Becomes the init of `program`'s PID namespace, relaying `relay`: never returns.
    fn run_init(&self, program: Pid, relay: Relay) -> !;
    fn close_fds_on_exec(&self) -> Result<(), Errno>;
    fn unblock_signals(&self) -> Result<(), Errno>;
    /// Returns only on failure.
    fn exec(&self, exec: &ExecArgs) -> Errno;
}

/// Which step failed and why; the parent maps the index back to the step's description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failure {
    pub step: usize,
    pub errno: Errno,
}

impl Failure {
    pub(crate) const WIRE_LEN: usize = 8;

    pub(crate) fn to_wire(self) -> [u8; Self::WIRE_LEN] {
        let mut out = [0u8; Self::WIRE_LEN];
        let step = u32::try_from(self.step).unwrap_or(u32::MAX).to_le_bytes();
        let errno = (self.errno as i32).to_le_bytes();
        out[..4].copy_from_slice(&step);
        out[4..].copy_from_slice(&errno);
        out
    }

    pub(crate) fn from_wire(bytes: [u8; Self::WIRE_LEN]) -> Self {
        let [s0, s1, s2, s3, e0, e1, e2, e3] = bytes;
        Self {
            step: u32::from_le_bytes([s0, s1, s2, s3]) as usize,
            errno: Errno::from_raw(i32::from_le_bytes([e0, e1, e2, e3])),
        }
    }
}

const MOUNT_ATTR_RDONLY: u64 = libc::MOUNT_ATTR_RDONLY;
const MOUNT_ATTR_NOSUID: u64 = libc::MOUNT_ATTR_NOSUID;
const MOUNT_ATTR_NODEV: u64 = libc::MOUNT_ATTR_NODEV;

/// Runs the plan. Returns only on failure (success ends in `execve`, or in the init loop).
pub(crate) fn apply(sys: &dyn ChildSys, plan: &Plan) -> Failure {
    for (index, step) in plan.steps.iter().enumerate() {
        let fail = |errno| Failure { step: index, errno };
        let result = match step {
            Step::ResetSignals => {
                sys.reset_signal_dispositions();
                Ok(())
            }
            Step::NewSession => sys.setsid(),
            Step::Dup2 { from, to } => sys.dup2(*from, *to),
            Step::JoinCgroup { procs } => sys.write_file(procs, b"0"),
            Step::JoinNetNs { fd } => sys.setns_net(*fd),
            Step::UnshareMountNs => sys.unshare(CloneFlags::CLONE_NEWNS),
            Step::MakeMountsPrivate => {
                sys.mount(None, c"/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)
            }
            Step::ReadonlyRoot => sys.mount_setattr(c"/", true, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0),
            Step::MountTmpfs { target, data } => sys.mount(
                Some(c"tmpfs"),
                target,
                Some(c"tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(data),
            ),
            Step::BindWritable { path } => {
                sys.mount(Some(path), path, None, MsFlags::MS_BIND | MsFlags::MS_REC, None).and_then(|()| {
                    sys.mount_setattr(path, false, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, MOUNT_ATTR_RDONLY)
                })
            }
            Step::MountProc => sys.umount_detach(c"/proc").and_then(|()| {
                sys.mount(
                    Some(c"proc"),
                    c"/proc",
                    Some(c"proc"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    None,
                )
            }),
            Step::MakeWritable { path } => sys.mount_setattr(path, false, 0, MOUNT_ATTR_RDONLY),
            Step::Mount { source, target, fstype, flags, data } => {
                sys.mount(Some(source), target, fstype.as_deref(), *flags, data.as_deref())
            }
            Step::SetAttr { path, recursive, set, clear } => {
                sys.mount_setattr(path, *recursive, *set, *clear)
            }
            Step::Mkdir { path, mode } => sys.mkdir(path, *mode),
            Step::Chown { path, uid, gid } => sys.chown(path, *uid, *gid),
            Step::Mknod { path, major, minor } => sys.mknod_char(path, *major, *minor),
            Step::Symlink { target, link } => sys.symlink(target, link),
            Step::PivotRoot { root } => sys.pivot_root(root),
            Step::DropCapabilities => sys.drop_capabilities(),
            Step::Seccomp => plan.filters.iter().try_for_each(|p| sys.seccomp(p)),
            Step::Rlimit { resource, soft, hard } => sys.setrlimit(*resource, *soft, *hard),
            Step::DropGroups => sys.setgroups_empty(),
            Step::SetGid(gid) => sys.setresgid(*gid),
            Step::SetUid(uid) => sys.setresuid(*uid),
            Step::NoNewPrivs => sys.set_no_new_privs(),
            Step::Chdir { path } => sys.chdir(path),
            Step::StartInit => match sys.fork() {
                Ok(Some(program)) => sys.run_init(program, plan.relay),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            },
            Step::CloseFds => sys.close_fds_on_exec(),
            Step::UnblockSignals => sys.unblock_signals(),
            Step::Exec => Err(sys.exec(&plan.exec)),
        };
        if let Err(errno) = result {
            return fail(errno);
        }
    }
    // `Exec` is always the last step and never succeeds by returning.
    Failure { step: plan.steps.len().saturating_sub(1), errno: Errno::ENOEXEC }
}

/// The real child: runs the plan and, if a step fails, reports it on `report_fd` and exits 127.
pub(crate) fn run(plan: &Plan, report_fd: RawFd) -> ! {
    let failure = apply(&RealChildSys, plan);
    let wire = failure.to_wire();
    // SAFETY: `report_fd` is the write end of the parent's pipe, open in this process; the
    // buffer is a live local array. A failed report leaves the parent with EOF and an exit
    // status of 127, which it also treats as a failure.
    unsafe { libc::write(report_fd, wire.as_ptr().cast(), wire.len()) };
    exit_now(127)
}

/// `_exit(2)`: no atexit handlers, no stdio flushing (the buffers are the parent's copies).
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and touches no process state we rely on.
    unsafe { libc::_exit(code) }
}

/// Fork-like `clone`: `extra` adds namespace flags (`CLONE_NEWPID`). Returns 0 in the child.
///
/// Not glibc's `fork()`: its atfork handlers take the allocator's locks, which another thread
/// may hold at that moment in the copy we get from forking an async runtime; and `fork()` cannot
/// create the child in a new PID namespace, which would cost one more process per sandbox.
pub(crate) fn raw_clone(extra: CloneFlags) -> Result<libc::pid_t, Errno> {
    /// `struct clone_args` of clone3(2), all fields 64-bit on every architecture.
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let flags = u64::try_from(extra.bits()).map_err(|_| Errno::EINVAL)?;
    let args = CloneArgs {
        flags,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: 0,
    };
    // SAFETY: clone3 with no stack and no CLONE_VM is fork: the child gets a copy-on-write copy
    // of this address space and returns 0 here on a copy of this stack. `args` lives across the
    // call and its size is passed with it. Callers make the child call only async-signal-safe
    // functions before exec or exit.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, size_of::<CloneArgs>()) };
    if ret >= 0 {
        return libc::pid_t::try_from(ret).map_err(|_| Errno::EOVERFLOW);
    }
    let errno = Errno::last();
    if errno != Errno::ENOSYS {
        return Err(errno);
    }
    // Seccomp profiles (Docker's) answer clone3 with ENOSYS so that callers fall back to clone.
    let legacy_flags = libc::c_ulong::try_from(flags | libc::SIGCHLD as u64).map_err(|_| Errno::EINVAL)?;
    // SAFETY: as above; with a null stack and null tid pointers the argument order differences
    // between architectures (newsp, parent_tid, child_tid, tls) do not matter except on s390,
    // which we do not build for.
    let ret = unsafe { libc::syscall(libc::SYS_clone, legacy_flags, 0usize, 0usize, 0usize, 0usize) };
    if ret < 0 {
        return Err(Errno::last());
    }
    libc::pid_t::try_from(ret).map_err(|_| Errno::EOVERFLOW)
}

/// The real syscalls.
#[derive(Debug)]
pub(crate) struct RealChildSys;

fn result(ret: libc::c_long) -> Result<(), Errno> {
    if ret == -1 { Err(Errno::last()) } else { Ok(()) }
}

impl ChildSys for RealChildSys {
    fn reset_signal_dispositions(&self) {
        for sig in 1..libc::SIGRTMAX() + 1 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            // SAFETY: an all-zero `sigaction` is a valid value (SIG_DFL, no flags, empty mask);
            // setting SIG_DFL never runs code. Errors (glibc's reserved signals) are ignored.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &action, std::ptr::null_mut());
            }
        }
    }

    fn setsid(&self) -> Result<(), Errno> {
        nix::unistd::setsid().map(drop)
    }

    fn dup2(&self, from: RawFd, to: RawFd) -> Result<(), Errno> {
        // SAFETY: plain dup2 on fds the parent opened for us; `to` is 0, 1 or 2 and `from` is
        // ≥ 3 (the parent moved it there), so the two never alias. The new fd has no CLOEXEC.
        result(unsafe { libc::dup2(from, to) }.into())
    }

    fn write_file(&self, path: &CStr, data: &[u8]) -> Result<(), Errno> {
        let fd = nix::fcntl::open(path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())?;
        let written = nix::unistd::write(&fd, data)?;
        if written != data.len() {
            return Err(Errno::EIO);
        }
        Ok(())
    }

    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno> {
        nix::sched::unshare(flags)
    }

    fn setns_net(&self, fd: RawFd) -> Result<(), Errno> {
        // SAFETY: setns(2) only reads its arguments; `fd` was opened by the parent and stays
        // open in the child until exec (close-on-exec).
        Errno::result(unsafe { libc::setns(fd, libc::CLONE_NEWNET) }).map(drop)
    }

    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: MsFlags,
        data: Option<&CStr>,
    ) -> Result<(), Errno> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount_detach(&self, target: &CStr) -> Result<(), Errno> {
        nix::mount::umount2(target, MntFlags::MNT_DETACH)
    }

    fn mount_setattr(&self, path: &CStr, recursive: bool, set: u64, clear: u64) -> Result<(), Errno> {
        let attr = libc::mount_attr { attr_set: set, attr_clr: clear, propagation: 0, userns_fd: 0 };
        let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
        // SAFETY: mount_setattr(2) reads `size_of::<mount_attr>()` bytes from `attr`, a live
        // local, and a NUL-terminated path; it changes only this mount namespace's mounts.
        result(unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                path.as_ptr(),
                flags,
                &attr as *const libc::mount_attr,
                size_of::<libc::mount_attr>(),
            )
        })
    }

    fn setrlimit(&self, resource: Resource, soft: u64, hard: u64) -> Result<(), Errno> {
        nix::sys::resource::setrlimit(resource, soft, hard)
    }

    fn setgroups_empty(&self) -> Result<(), Errno> {
        // SAFETY: raw setgroups(0, NULL) changes only this thread's (this process's only
        // thread's) credentials; a zero count means the null list is never read.
        result(unsafe { libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) })
    }

    fn setresgid(&self, gid: u32) -> Result<(), Errno> {
        // SAFETY: raw setresgid on plain integers; see the module doc for why not glibc's.
        result(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })
    }

    fn setresuid(&self, uid: u32) -> Result<(), Errno> {
        // SAFETY: raw setresuid on plain integers; see the module doc for why not glibc's.
        result(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) })
    }

    fn set_no_new_privs(&self) -> Result<(), Errno> {
        nix::sys::prctl::set_no_new_privs()
    }

    fn chdir(&self, path: &CStr) -> Result<(), Errno> {
        nix::unistd::chdir(path)
    }

    fn mkdir(&self, path: &CStr, mode: u32) -> Result<(), Errno> {
        // SAFETY: mkdir(2) and chmod(2) on a NUL-terminated path owned by the plan.
        result(unsafe { libc::mkdir(path.as_ptr(), mode) }.into())?;
        // SAFETY: as above.
        result(unsafe { libc::chmod(path.as_ptr(), mode) }.into())
    }

    fn chown(&self, path: &CStr, uid: u32, gid: u32) -> Result<(), Errno> {
        // SAFETY: lchown(2) on a NUL-terminated path owned by the plan; never follows a link.
        result(unsafe { libc::lchown(path.as_ptr(), uid, gid) }.into())
    }

    fn mknod_char(&self, path: &CStr, major: u32, minor: u32) -> Result<(), Errno> {
        let dev = libc::makedev(major, minor);
        // SAFETY: mknod(2) and chmod(2) on a NUL-terminated path owned by the plan.
        result(unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, dev) }.into())?;
        // SAFETY: as above.
        result(unsafe { libc::chmod(path.as_ptr(), 0o666) }.into())
    }

    fn symlink(&self, target: &CStr, link: &CStr) -> Result<(), Errno> {
        // SAFETY: symlink(2) on two NUL-terminated strings owned by the plan.
        result(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) }.into())
    }

    fn pivot_root(&self, root: &CStr) -> Result<(), Errno> {
        // The "pivot_root(".", ".")" way (as runc does): the old root ends up stacked under
        // the new one at "/", and detaching "." then removes it, so no directory for it is
        // needed in the new root.
        nix::unistd::chdir(root)?;
        // SAFETY: pivot_root(2) with two NUL-terminated string literals.
        result(unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) })?;
        nix::mount::umount2(c".", MntFlags::MNT_DETACH)?;
        nix::unistd::chdir(c"/")
    }

    fn drop_capabilities(&self) -> Result<(), Errno> {
        for cap in 0..64 {
            // SAFETY: prctl(PR_CAPBSET_DROP, cap) only changes this process's bounding set;
            // EINVAL past the kernel's last capability is expected and ignored.
            let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if ret != 0 && Errno::last() != Errno::EINVAL {
                return Err(Errno::last());
            }
        }
        // SAFETY: clears this process's ambient set; EINVAL on kernels without ambient sets.
        let ret = unsafe {
            libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0)
        };
        if ret != 0 && Errno::last() != Errno::EINVAL {
            return Err(Errno::last());
        }
        // The inheritable set: read the three sets and write them back without it.
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const VERSION_3: u32 = 0x2008_0522;
        let mut header = Header { version: VERSION_3, pid: 0 };
        let mut data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
        // SAFETY: capget(2) with a v3 header writes two `Data` entries into a live local array.
        result(unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()) })?;
        for d in &mut data {
            d.inheritable = 0;
        }
        // SAFETY: capset(2) reads the header and two `Data` entries from live locals.
        result(unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) })
    }

    fn seccomp(&self, program: &seccompiler::BpfProgram) -> Result<(), Errno> {
        let len = u16::try_from(program.len()).map_err(|_| Errno::E2BIG)?;
        let fprog = libc::sock_fprog { len, filter: program.as_ptr().cast::<libc::sock_filter>().cast_mut() };
        // SAFETY: the kernel copies `len` instructions from the program, which the plan owns
        // and keeps alive; seccompiler's `sock_filter` has the kernel's layout (u16, u8, u8,
        // u32), as libc's does.
        result(
            unsafe {
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                    &fprog as *const _,
                )
            }
            .into(),
        )
    }

    fn fork(&self) -> Result<Option<Pid>, Errno> {
        match raw_clone(CloneFlags::empty())? {
            0 => Ok(None),
            pid => Ok(Some(Pid::from_raw(pid))),
        }
    }

    fn run_init(&self, program: Pid, relay: Relay) -> ! {
        init(program, relay)
    }

    fn close_fds_on_exec(&self) -> Result<(), Errno> {
        // The program starts with the usual umask, whatever its launcher runs with.
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only sets flags on this process's fds.
        let ret = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
        if ret == 0 {
            return Ok(());
        }
        // Kernels before 5.11: walk the fds the limit allows.
        let max = nix::sys::resource::getrlimit(Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft.min(1 << 20))
            .unwrap_or(1024);
        for fd in 3..RawFd::try_from(max).unwrap_or(1024) {
            // SAFETY: F_SETFD on any integer is harmless; EBADF for unused numbers is ignored.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        Ok(())
    }

    fn unblock_signals(&self) -> Result<(), Errno> {
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
    }

    fn exec(&self, exec: &ExecArgs) -> Errno {
        // SAFETY: `program` and every pointer in `argv`/`envp` point into CStrings owned by the
        // plan, alive here; both arrays end with a null pointer (`plan::build`).
        unsafe { libc::execve(exec.program.as_ptr(), exec.argv.as_ptr(), exec.envp.as_ptr()) };
        Errno::last()
    }
}

/// Signals the init passes on to the program.
const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// The tiny init: PID 1 of the sandbox's PID namespace, already running as the sandbox user
/// with no_new_privs. It closes every fd, hands its copy of the parent's memory back (see
/// [`trim_memory`]), then loops on `sigwait` with every signal still blocked: SIGCHLD reaps
/// every zombie (orphans are reparented to it), the signals in [`FORWARDED`] go to the
/// program, and when the program exits the init exits with its code (128 + signal number for a
/// signal, as shells report it), at which the kernel kills whatever is left in the namespace.
/// Signals from inside the namespace cannot kill it: as PID 1 it only gets signals it waits for.
///
/// With a [`Relay`] it also copies the program's stdout and stderr pipes into their files (see
/// [`relay`]).
fn init(program: Pid, relay: Relay) -> ! {
    let _ = nix::sys::prctl::set_name(c"enjin-init");
    // Every fd but the relay's closes (the parent's report pipe must close here so the parent
    // sees EOF at the program's exec).
    let mut keep = relay.fds();
    keep.sort_unstable();
    let mut from: u32 = 0;
    for fd in keep.into_iter().filter_map(|fd| u32::try_from(fd).ok()) {
        if fd > from {
            // SAFETY: close_range(2) on this process's own fd table, around the kept fds.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0u32) };
        }
        from = fd.saturating_add(1);
    }
    // SAFETY: as above, everything past the last kept fd.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) };
    trim_memory();
    if relay.pairs.iter().any(Option::is_some) {
        self::relay(program, relay);
    }
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for sig in FORWARDED {
        set.add(sig);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(code) = reap(program) {
                    exit_now(code);
                }
            }
            Ok(sig) => {
                let _ = nix::sys::signal::kill(program, sig);
            }
            Err(_) => {
                // Only EINTR-like failures are possible; reap in case a SIGCHLD was lost.
                if let Some(code) = reap(program) {
                    exit_now(code);
                }
            }
        }
    }
}

/// The init's loop with a log relay: `poll` on a signalfd (the same signals as the plain loop)
/// and on each pipe's read end. What a pipe holds is copied into its file unless the file has
/// more than `budget` bytes allocated (its reader, the host's log collector, frees what it has
/// read), in which case the pipe is left unread and looked at again every 100 ms: the program's
/// writes block once the pipe is full, so a flood of output costs the host at most the budget
/// per stream, never the disk. When the program exits, what is left in the pipes is copied
/// (within the budget) and the init exits with the program's code.
fn relay(program: Pid, relay: Relay) -> ! {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for sig in FORWARDED {
        set.add(sig);
    }
    // SAFETY: signalfd(2) with a live sigset; the signals stay blocked, so they queue on it.
    let sigfd = unsafe { libc::signalfd(-1, set.as_ref(), libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if sigfd < 0 {
        exit_now(255);
    }
    let mut pipes = relay.pairs;
    for (r, _) in pipes.iter().flatten() {
        // SAFETY: F_SETFL on our own pipe end.
        unsafe { libc::fcntl(*r, libc::F_SETFL, libc::O_NONBLOCK) };
    }
    let mut buf = [0u8; 16 * 1024];
    loop {
        let mut fds = [libc::pollfd { fd: sigfd, events: libc::POLLIN, revents: 0 }; 3];
        let mut paused = false;
        for (i, pair) in pipes.iter().enumerate() {
            let slot = &mut fds[i + 1];
            slot.fd = -1;
            if let Some((r, w)) = pair {
                if over_budget(*w, relay.budget) {
                    paused = true;
                } else {
                    slot.fd = *r;
                }
            }
        }
        let timeout = if paused { 100 } else { -1 };
        // SAFETY: poll(2) on a live local array of three pollfds (negative fds are ignored).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, timeout) };
        if n < 0 {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let mut info = [0u8; 128];
            // SAFETY: read(2) of one signalfd_siginfo (128 bytes) into a live local buffer.
            while unsafe { libc::read(sigfd, info.as_mut_ptr().cast(), info.len()) } == 128 {
                let signo = i32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
                if signo == libc::SIGCHLD {
                    if let Some(code) = reap(program) {
                        for pair in pipes.iter().flatten() {
                            copy(pair.0, pair.1, relay.budget, &mut buf, 64);
                        }
                        exit_now(code);
                    }
                } else if let Ok(sig) = Signal::try_from(signo) {
                    let _ = nix::sys::signal::kill(program, sig);
                }
            }
        }
        for (i, pair) in pipes.iter_mut().enumerate() {
            let Some((r, w)) = *pair else { continue };
            if fds[i + 1].fd >= 0 && fds[i + 1].revents != 0 && !copy(r, w, relay.budget, &mut buf, 16) {
                // The write end is gone everywhere: nothing more will come.
                *pair = None;
            }
        }
    }
}

/// Whether the file `fd` has more than `budget` bytes allocated.
fn over_budget(fd: RawFd, budget: u64) -> bool {
    // SAFETY: fstat(2) into a zeroed local struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512) > budget
}

/// Copies up to `rounds` buffers from the pipe `r` into the file `w`, stopping when the pipe is
/// empty or the file is over budget. False once the pipe has reached its end.
fn copy(r: RawFd, w: RawFd, budget: u64, buf: &mut [u8], rounds: usize) -> bool {
    for _ in 0..rounds {
        if over_budget(w, budget) {
            return true;
        }
        // SAFETY: read(2) into a live local buffer of its length.
        let n = unsafe { libc::read(r, buf.as_mut_ptr().cast(), buf.len()) };
        let Ok(n) = usize::try_from(n) else { return true };
        if n == 0 {
            return false;
        }
        let mut done = 0;
        while done < n {
            let rest = buf.get(done..n).unwrap_or(&[]);
            // SAFETY: write(2) from a live slice of the buffer.
            let m = unsafe { libc::write(w, rest.as_ptr().cast(), rest.len()) };
            match usize::try_from(m) {
                Ok(m) if m > 0 => done += m,
                // A failed write drops the rest of this buffer (the file is the host's; the
                // program must not stall on it).
                _ => break,
            }
        }
    }
    true
}

/// Reaps every exited child; the program's exit code once it is among them.
fn reap(program: Pid) -> Option<i32> {
    let mut code = None;
    loop {
        match nix::sys::wait::waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, c)) if pid == program => code = Some(c),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == program => code = Some(128 + sig as i32),
            Ok(WaitStatus::StillAlive) => return code,
            Ok(_) => {}
            // ECHILD: nobody left, so the program is gone even if we missed its status.
            Err(_) => return Some(code.unwrap_or(255)),
        }
    }
}

/// Drops the init's references to the parent's anonymous memory.
///
/// A forked child shares the parent's pages copy-on-write; every page the parent (a long-lived
/// agent) writes afterwards is copied, and the init would keep the old copy for its whole life:
/// up to the agent's anonymous memory at fork time, per sandbox. The init needs none of it —
/// its loop lives on its stack — so it `MADV_DONTNEED`s every private anonymous mapping except
/// the one holding its stack and thread control block (glibc keeps errno and the stack guard
/// there). File-backed mappings (code, `.data`) stay: they are shared with the page cache.
/// `/proc/self/maps` is parsed with a stack buffer; any surprise leaves the rest untouched.
fn trim_memory() {
    let stack_marker = 0u8;
    let sp = std::ptr::addr_of!(stack_marker) as usize;
    // SAFETY: pthread_self only reads the thread pointer register.
    let tcb = unsafe { libc::pthread_self() } as usize;
    let keep = |start: usize, end: usize| {
        (start <= sp && sp < end) || (start <= tcb.saturating_add(4096) && tcb.saturating_sub(1 << 16) < end)
    };
    let Ok(fd) = nix::fcntl::open(c"/proc/self/maps", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
    else {
        return;
    };
    let mut buf = [0u8; 4096];
    let mut line = [0u8; 512];
    let mut len = 0usize;
    let mut overflow = false;
    loop {
        let n = match nix::unistd::read(&fd, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in buf.get(..n).unwrap_or(&[]) {
            if b == b'\n' {
                if !overflow
                    && let Some((start, end)) = droppable(line.get(..len).unwrap_or(&[]))
                    && !keep(start, end)
                    && let Some(addr) = std::ptr::NonNull::new(start as *mut libc::c_void)
                {
                    // SAFETY: MADV_DONTNEED on a private anonymous mapping that holds neither
                    // this stack nor the thread control block: the init never touches that
                    // memory again (and would read zeros, not another process's data, if it
                    // did).
                    let _ = unsafe {
                        nix::sys::mman::madvise(addr, end - start, nix::sys::mman::MmapAdvise::MADV_DONTNEED)
                    };
                }
                len = 0;
                overflow = false;
            } else if let Some(slot) = line.get_mut(len) {
                *slot = b;
                len += 1;
            } else {
                overflow = true;
            }
        }
    }
}

/// `(start, end)` of a `/proc/self/maps` line describing a private, writable, anonymous mapping
/// other than the main stack and the kernel's special mappings.
pub(crate) fn droppable(line: &[u8]) -> Option<(usize, usize)> {
    let mut fields = line.split(|b| *b == b' ').filter(|f| !f.is_empty());
    let range = fields.next()?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?;
    let name = fields.next();
    if perms.len() != 4 || perms.get(1) != Some(&b'w') || perms.get(3) != Some(&b'p') || inode != b"0" {
        return None;
    }
    match name {
        None | Some(b"[heap]") => {}
        Some(_) => return None,
    }
    let dash = range.iter().position(|b| *b == b'-')?;
    let start = hex(range.get(..dash)?)?;
    let end = hex(range.get(dash + 1..)?)?;
    (start < end).then_some((start, end))
}

fn hex(digits: &[u8]) -> Option<usize> {
    let mut v: usize = 0;
    if digits.is_empty() {
        return None;
    }
    for d in digits {
        let x = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        v = v.checked_mul(16)?.checked_add(usize::from(x))?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::ffi::OsString;
    use std::path::PathBuf;

    use super::*;
    use crate::sandbox::plan::{self, ChildFds};
    use crate::sandbox::{PidNamespace, SandboxSpec};

    /// Records every call as a line; fails the call whose line starts with `fail_on`.
    #[derive(Default)]
    struct FakeChildSys {
        calls: RefCell<Vec<String>>,
        fail_on: Option<&'static str>,
    }

    impl FakeChildSys {
        fn record(&self, call: String) -> Result<(), Errno> {
            let fail = self.fail_on.is_some_and(|f| call.starts_with(f));
            self.calls.borrow_mut().push(call);
            if fail { Err(Errno::EPERM) } else { Ok(()) }
        }
    }

    fn s(c: &CStr) -> String {
        c.to_string_lossy().into_owned()
    }

    impl ChildSys for FakeChildSys {
        fn reset_signal_dispositions(&self) {
            let _ = self.record("reset_signals".into());
        }
        fn setsid(&self) -> Result<(), Errno> {
            self.record("setsid".into())
        }
        fn dup2(&self, from: RawFd, to: RawFd) -> Result<(), Errno> {
            self.record(format!("dup2 {from} {to}"))
        }
        fn write_file(&self, path: &CStr, data: &[u8]) -> Result<(), Errno> {
            self.record(format!("write {} {}", s(path), String::from_utf8_lossy(data)))
        }
        fn unshare(&self, flags: CloneFlags) -> Result<(), Errno> {
            self.record(format!("unshare {flags:?}"))
        }
        fn setns_net(&self, fd: RawFd) -> Result<(), Errno> {
            self.record(format!("setns net {fd}"))
        }
        fn mount(
            &self,
            source: Option<&CStr>,
            target: &CStr,
            fstype: Option<&CStr>,
            flags: MsFlags,
            _data: Option<&CStr>,
        ) -> Result<(), Errno> {
            self.record(format!(
                "mount {} {} {} {flags:?}",
                source.map(s).unwrap_or_default(),
                s(target),
                fstype.map(s).unwrap_or_default()
            ))
        }
        fn umount_detach(&self, target: &CStr) -> Result<(), Errno> {
            self.record(format!("umount {}", s(target)))
        }
        fn mount_setattr(&self, path: &CStr, recursive: bool, set: u64, clear: u64) -> Result<(), Errno> {
            self.record(format!("setattr {} recursive={recursive} set={set:#x} clear={clear:#x}", s(path)))
        }
        fn setrlimit(&self, resource: Resource, soft: u64, hard: u64) -> Result<(), Errno> {
            self.record(format!("setrlimit {resource:?} {soft} {hard}"))
        }
        fn setgroups_empty(&self) -> Result<(), Errno> {
            self.record("setgroups".into())
        }
        fn setresgid(&self, gid: u32) -> Result<(), Errno> {
            self.record(format!("setresgid {gid}"))
        }
        fn setresuid(&self, uid: u32) -> Result<(), Errno> {
            self.record(format!("setresuid {uid}"))
        }
        fn set_no_new_privs(&self) -> Result<(), Errno> {
            self.record("no_new_privs".into())
        }
        fn chdir(&self, path: &CStr) -> Result<(), Errno> {
            self.record(format!("chdir {}", s(path)))
        }
        fn mkdir(&self, path: &CStr, mode: u32) -> Result<(), Errno> {
            self.record(format!("mkdir {} {mode:o}", s(path)))
        }
        fn chown(&self, path: &CStr, uid: u32, gid: u32) -> Result<(), Errno> {
            self.record(format!("chown {} {uid}:{gid}", s(path)))
        }
        fn mknod_char(&self, path: &CStr, major: u32, minor: u32) -> Result<(), Errno> {
            self.record(format!("mknod {} {major}:{minor}", s(path)))
        }
        fn symlink(&self, target: &CStr, link: &CStr) -> Result<(), Errno> {
            self.record(format!("symlink {} -> {}", s(link), s(target)))
        }
        fn pivot_root(&self, root: &CStr) -> Result<(), Errno> {
            self.record(format!("pivot_root {}", s(root)))
        }
        fn drop_capabilities(&self) -> Result<(), Errno> {
            self.record("drop_caps".into())
        }
        fn seccomp(&self, program: &seccompiler::BpfProgram) -> Result<(), Errno> {
            self.record(format!("seccomp {}", program.len()))
        }
        fn fork(&self) -> Result<Option<Pid>, Errno> {
            self.record("fork".into()).map(|()| None)
        }
        fn run_init(&self, _program: Pid, _relay: Relay) -> ! {
            unreachable!("the fake always continues as the program")
        }
        fn close_fds_on_exec(&self) -> Result<(), Errno> {
            self.record("close_fds".into())
        }
        fn unblock_signals(&self) -> Result<(), Errno> {
            self.record("unblock".into())
        }
        fn exec(&self, exec: &ExecArgs) -> Errno {
            let _ = self.record(format!("exec {}", s(&exec.program)));
            Errno::ENOENT
        }
    }

    fn spec() -> SandboxSpec {
        let mut spec = SandboxSpec::new("/bin/sh", 64001, 64001, "/var/lib/enjin/w/a");
        spec.args = vec![OsString::from("-c"), OsString::from("true")];
        spec.cgroup_procs = vec![
            PathBuf::from("/sys/fs/cgroup/memory/enjin/a/cgroup.procs"),
            PathBuf::from("/sys/fs/cgroup/pids/enjin/a/cgroup.procs"),
        ];
        spec
    }

    fn host() -> plan::Host {
        plan::Host {
            dev_shm: true,
            system: vec![("/usr".into(), None), ("/bin".into(), Some("usr/bin".into()))],
            resolv_conf_file: true,
            filters: crate::seccomp::programs().expect("filter"),
        }
    }

    fn fds() -> ChildFds {
        ChildFds { stdin: Some(10), stdout: Some(11), stderr: Some(12), netns: None }
    }

    fn run_fake(spec: &SandboxSpec, fail_on: Option<&'static str>) -> (Vec<String>, Failure, plan::Plan) {
        let plan = plan::build(spec, fds(), host()).expect("plan");
        let fake = FakeChildSys { fail_on, ..FakeChildSys::default() };
        let failure = apply(&fake, &plan);
        (fake.calls.into_inner(), failure, plan)
    }

    fn pos(calls: &[String], prefix: &str) -> usize {
        calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no call starting with {prefix:?} in {calls:#?}"))
    }

    #[test]
    fn full_lockdown_happens_in_the_documented_order() {
        let (calls, failure, plan) = run_fake(&spec(), None);
        let order = [
            "reset_signals",
            "setsid",
            "dup2 10 0",
            "dup2 12 2",
            "write /sys/fs/cgroup/memory/enjin/a/cgroup.procs 0",
            "write /sys/fs/cgroup/pids/enjin/a/cgroup.procs 0",
            "unshare",
            "mount  / ",
            "setattr / recursive=true set=0x3",
            "mount tmpfs /tmp tmpfs",
            "mount tmpfs /dev/shm tmpfs",
            "mount /var/lib/enjin/w/a /var/lib/enjin/w/a",
            "setattr /var/lib/enjin/w/a recursive=false set=0x6 clear=0x1",
            "umount /proc",
            "mount proc /proc proc",
            "setrlimit RLIMIT_CORE 0 0",
            "setgroups",
            "setresgid 64001",
            "setresuid 64001",
            "no_new_privs",
            "chdir /var/lib/enjin/w/a",
            "fork",
            "close_fds",
            "unblock",
            "exec /bin/sh",
        ];
        let positions: Vec<usize> = order.iter().map(|p| pos(&calls, p)).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{calls:#?}");
        assert_eq!(failure.step, plan.steps.len() - 1, "only exec (faked) fails");
        assert_eq!(failure.errno, Errno::ENOENT);
    }

    #[test]
    fn the_network_namespace_is_joined_after_the_cgroup_and_before_any_mount() {
        let plan = plan::build(&spec(), ChildFds { netns: Some(13), ..fds() }, host()).expect("plan");
        let fake = FakeChildSys::default();
        let _ = apply(&fake, &plan);
        let calls = fake.calls.into_inner();
        let (cgroup, netns, unshare, uid) = (
            pos(&calls, "write /sys/fs/cgroup/pids"),
            pos(&calls, "setns net 13"),
            pos(&calls, "unshare"),
            pos(&calls, "setresuid"),
        );
        assert!(cgroup < netns && netns < unshare && netns < uid, "{calls:#?}");
        // Without one, no setns at all.
        let (calls, _, _) = run_fake(&spec(), None);
        assert!(!calls.iter().any(|c| c.starts_with("setns")), "{calls:#?}");
    }

    #[test]
    fn a_failed_mount_stops_before_credentials_and_exec() {
        let (calls, failure, plan) = run_fake(&spec(), Some("mount tmpfs /tmp"));
        assert!(!calls.iter().any(|c| c.starts_with("setresuid") || c.starts_with("exec")), "{calls:#?}");
        assert_eq!(failure.errno, Errno::EPERM);
        let what = plan.steps[failure.step].describe(&plan.exec);
        assert_eq!(what, "mounting a tmpfs on /tmp");
    }

    #[test]
    fn without_pid_namespace_there_is_no_init_and_proc_stays_writable() {
        let mut spec = spec();
        spec.pid_namespace = PidNamespace::Host;
        let (calls, _, _) = run_fake(&spec, None);
        assert!(!calls.iter().any(|c| c == "fork" || c.starts_with("umount")), "{calls:#?}");
        pos(&calls, "setattr /proc recursive=false set=0x0 clear=0x1");
    }

    #[test]
    fn program_as_pid1_has_no_init_fork() {
        let mut spec = spec();
        spec.pid_namespace = PidNamespace::ProgramIsInit;
        let (calls, _, _) = run_fake(&spec, None);
        assert!(!calls.iter().any(|c| c == "fork"), "{calls:#?}");
        pos(&calls, "mount proc /proc proc");
    }

    #[test]
    fn nothing_isolated_means_no_mount_namespace() {
        let mut spec = spec();
        spec.pid_namespace = PidNamespace::Host;
        spec.readonly_root = false;
        spec.private_tmp = false;
        let (calls, _, _) = run_fake(&spec, None);
        assert!(!calls.iter().any(|c| c.starts_with("unshare") || c.starts_with("mount")), "{calls:#?}");
        pos(&calls, "setresuid 64001");
    }

    #[test]
    fn invalid_specs_are_refused_before_forking() {
        type Mutation = Box<dyn Fn(&mut SandboxSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.program = "sh".into()), "not an absolute path"),
            (Box::new(|s| s.uid = 0), "never runs as root"),
            (Box::new(|s| s.gid = 0), "never runs as root"),
            (Box::new(|s| s.workdir = "/".into()), "whole root"),
            (Box::new(|s| s.workdir = "/tmp/x".into()), "under /tmp"),
            (Box::new(|s| s.workdir = "/var/../etc".into()), "contains . or .."),
            (Box::new(|s| s.args.push(OsString::from("a\0b"))), "NUL"),
            (Box::new(|s| s.env.push(("A=B".into(), "c".into()))), "has '='"),
            (
                Box::new(|s| {
                    s.rlimits.push(crate::sandbox::Rlimit {
                        resource: Resource::RLIMIT_NOFILE,
                        soft: 10,
                        hard: 5,
                    })
                }),
                "exceeds hard limit",
            ),
        ];
        for (mutate, expected) in cases {
            let mut spec = spec();
            mutate(&mut spec);
            let err = plan::build(&spec, fds(), host()).expect_err(expected).to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
        let mut spec = spec();
        spec.private_tmp = false;
        spec.workdir = "/tmp/x".into();
        plan::build(&spec, fds(), host()).expect("a workdir under /tmp is fine without private_tmp");
    }

    #[test]
    fn exec_args_are_null_terminated() {
        let mut spec = spec();
        spec.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
        let plan = plan::build(&spec, fds(), host()).expect("plan");
        assert_eq!(plan.exec.argv.len(), 4);
        assert!(plan.exec.argv[3].is_null());
        assert_eq!(plan.exec.envp.len(), 2);
        assert!(plan.exec.envp[1].is_null());
    }

    #[test]
    fn failure_wire_round_trips() {
        let f = Failure { step: 17, errno: Errno::EACCES };
        assert_eq!(Failure::from_wire(f.to_wire()), f);
    }

    #[test]
    fn maps_lines_that_may_be_dropped() {
        assert_eq!(droppable(b"7f00-7f10 rw-p 00000000 00:00 0 "), Some((0x7f00, 0x7f10)));
        assert_eq!(droppable(b"5500-5600 rw-p 00000000 00:00 0          [heap]"), Some((0x5500, 0x5600)));
        assert_eq!(droppable(b"7ffd-7ffe rw-p 00000000 00:00 0          [stack]"), None);
        assert_eq!(droppable(b"5500-5600 rw-p 00001000 08:01 1234       /usr/bin/x"), None);
        assert_eq!(droppable(b"7f00-7f10 r--p 00000000 00:00 0 "), None);
        assert_eq!(droppable(b"7f00-7f10 rw-s 00000000 00:01 77 /dev/zero (deleted)"), None);
        assert_eq!(droppable(b"garbage"), None);
    }
}
