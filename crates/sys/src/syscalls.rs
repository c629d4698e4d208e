//! The seam between the cgroup and `/proc` logic and the kernel: file reads and writes, directory
//! creation and removal, `kill`, and the clock. [`HostSyscalls`] is the real thing;
//! [`FakeSyscalls`] is an in-memory cgroupfs that behaves like the kernel's in the ways our code
//! relies on (control files appear on `mkdir`, a pid written to a procs file moves there, `rmdir`
//! refuses a populated group, `SIGKILL` empties a pid out of every group), so the cgroup code is
//! tested without root. The sandbox's child side has its own seam in `sandbox::child`, because
//! code that runs between fork and exec must not allocate.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// The operations the cgroup and proc code needs from the kernel.
pub trait Syscalls: fmt::Debug + Send + Sync {
    /// Reads a whole (small) file.
    fn read_to_string(&self, path: &Path) -> io::Result<String>;
    /// Writes `contents` to an existing file in one `write(2)`; never creates the file (a missing
    /// control file means the kernel lacks the feature, which callers want to know).
    fn write(&self, path: &Path, contents: &[u8]) -> io::Result<()>;
    /// Creates one directory; `AlreadyExists` when it is there.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Removes one (cgroup) directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Whether a file or directory exists.
    fn exists(&self, path: &Path) -> bool;
    /// The subdirectories of a directory, sorted.
    fn sub_dirs(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
    /// `kill(2)`.
    fn kill(&self, pid: Pid, signal: Signal) -> Result<(), Errno>;
    /// A monotonic clock.
    fn now(&self) -> Instant;
    /// Sleeps (the fake advances its clock instead).
    fn sleep(&self, duration: Duration);
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostSyscalls;

impl Syscalls for HostSyscalls {
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }

    fn write(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let mut file = fs::OpenOptions::new().write(true).open(path)?;
        // cgroupfs parses each write(2) as one value: a short write is an error, not a retry.
        let written = file.write(contents)?;
        if written != contents.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {written} of {} bytes", contents.len()),
            ));
        }
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn sub_dirs(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
        dirs.sort();
        Ok(dirs)
    }

    fn kill(&self, pid: Pid, signal: Signal) -> Result<(), Errno> {
        nix::sys::signal::kill(pid, signal)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// An in-memory cgroupfs (and process table, as far as `kill` goes) for tests.
///
/// Set it up with [`FakeSyscalls::mount`] (a hierarchy root and the control files every group in
/// it gets) and [`FakeSyscalls::add_file`]. Writes to `cgroup.procs` or `tasks` move the pid
/// there; other writes replace the file's contents (`freezer.state` and `cgroup.freeze` echo
/// like the kernel's; `cgroup.kill` kills the group's pids). `SIGKILL` removes a pid from every
/// group, after forking a child into its group while [`FakeSyscalls::set_forks_before_death`]
/// allows, to stand in for a process tree that forks while it is being killed.
#[derive(Debug)]
pub struct FakeSyscalls {
    state: Mutex<FakeState>,
    start: Instant,
}

#[derive(Debug, Default)]
struct FakeState {
    /// Hierarchy root → control files (name, initial contents) created in each new group.
    mounts: BTreeMap<PathBuf, Vec<(String, String)>>,
    dirs: BTreeSet<PathBuf>,
    files: BTreeMap<PathBuf, String>,
    writes: Vec<(PathBuf, String)>,
    kills: Vec<(Pid, Signal)>,
    elapsed: Duration,
    forks_before_death: u32,
    next_pid: i32,
    /// Paths whose writes fail with this errno (to test error paths).
    failing: BTreeMap<PathBuf, Errno>,
}

const PROCS_FILES: [&str; 2] = ["cgroup.procs", "tasks"];

impl Default for FakeSyscalls {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeSyscalls {
    /// An empty fake with nothing mounted.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(FakeState { next_pid: 10_000, ..FakeState::default() }),
            start: Instant::now(),
        }
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        // A panic in another test thread poisons nothing we cannot still read.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mounts a fake hierarchy at `root`: the root directory exists with `files`, and every
    /// directory created below it gets the same control files.
    pub fn mount(&self, root: impl Into<PathBuf>, files: &[(&str, &str)]) {
        let root = root.into();
        let files: Vec<(String, String)> =
            files.iter().map(|(n, c)| ((*n).to_owned(), (*c).to_owned())).collect();
        let mut st = self.state();
        let mut dir = root.clone();
        loop {
            st.dirs.insert(dir.clone());
            if !dir.pop() {
                break;
            }
        }
        for (name, contents) in &files {
            st.files.insert(root.join(name), contents.clone());
        }
        st.mounts.insert(root, files);
    }

    /// Adds (or replaces) a file, creating its parent directories.
    pub fn add_file(&self, path: impl Into<PathBuf>, contents: &str) {
        let path = path.into();
        let mut st = self.state();
        let mut dir = path.clone();
        while dir.pop() {
            st.dirs.insert(dir.clone());
        }
        st.files.insert(path, contents.to_owned());
    }

    /// Removes a file (e.g. a control file an old kernel does not have).
    pub fn remove_file(&self, path: &Path) {
        self.state().files.remove(path);
    }

    /// Makes writes to `path` fail with `errno`.
    pub fn fail_writes(&self, path: impl Into<PathBuf>, errno: Errno) {
        self.state().failing.insert(path.into(), errno);
    }

    /// The next `n` SIGKILLs each fork one new process into the victim's group before it dies.
    pub fn set_forks_before_death(&self, n: u32) {
        self.state().forks_before_death = n;
    }

    /// The contents of a file, if it exists.
    pub fn file(&self, path: &Path) -> Option<String> {
        self.state().files.get(path).cloned()
    }

    /// Whether a directory exists.
    pub fn has_dir(&self, path: &Path) -> bool {
        self.state().dirs.contains(path)
    }

    /// Every successful write, in order.
    pub fn writes(&self) -> Vec<(PathBuf, String)> {
        self.state().writes.clone()
    }

    /// Every signal sent, in order.
    pub fn kills(&self) -> Vec<(Pid, Signal)> {
        self.state().kills.clone()
    }

    /// A new pid placed in the group at `dir` (as if a process there had forked).
    pub fn spawn_in(&self, dir: &Path) -> Pid {
        let mut st = self.state();
        st.spawn_in(&[dir.to_path_buf()])
    }
}

fn is_procs_file(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| PROCS_FILES.contains(&n))
}

fn parse_pids(contents: &str) -> Vec<i32> {
    contents.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

impl FakeState {
    fn mount_of(&self, path: &Path) -> Option<(PathBuf, Vec<(String, String)>)> {
        self.mounts
            .iter()
            .filter(|(root, _)| path.starts_with(root))
            .max_by_key(|(root, _)| root.as_os_str().len())
            .map(|(r, f)| (r.clone(), f.clone()))
    }

    /// A new pid in each of `dirs` (a fork lands in its parent's group in every hierarchy).
    fn spawn_in(&mut self, dirs: &[PathBuf]) -> Pid {
        self.next_pid += 1;
        let pid = self.next_pid;
        for dir in dirs {
            for name in PROCS_FILES {
                let path = dir.join(name);
                if let Some(contents) = self.files.get_mut(&path) {
                    contents.push_str(&format!("{pid}\n"));
                }
            }
        }
        Pid::from_raw(pid)
    }

    /// Removes `pid` from every procs file and returns the groups it was in.
    fn remove_pid(&mut self, pid: i32) -> Vec<PathBuf> {
        let mut groups = Vec::new();
        for (path, contents) in self.files.iter_mut() {
            if !is_procs_file(path) {
                continue;
            }
            let pids = parse_pids(contents);
            if pids.contains(&pid) {
                *contents = pids.iter().filter(|p| **p != pid).map(|p| format!("{p}\n")).collect();
                if let Some(dir) = path.parent()
                    && !groups.contains(&dir.to_path_buf())
                {
                    groups.push(dir.to_path_buf());
                }
            }
        }
        groups
    }

    fn group_pids(&self, dir: &Path) -> Vec<i32> {
        PROCS_FILES.iter().filter_map(|n| self.files.get(&dir.join(n))).flat_map(|c| parse_pids(c)).collect()
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} does not exist", path.display()))
}

impl Syscalls for FakeSyscalls {
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        self.state().files.get(path).cloned().ok_or_else(|| not_found(path))
    }

    fn write(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let mut st = self.state();
        if let Some(errno) = st.failing.get(path) {
            return Err(io::Error::from_raw_os_error(*errno as i32));
        }
        if !st.files.contains_key(path) {
            return Err(not_found(path));
        }
        let text = String::from_utf8_lossy(contents).into_owned();
        st.writes.push((path.to_path_buf(), text.clone()));
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        if is_procs_file(path) {
            let pid: i32 = text.trim().parse().map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // A pid lives in one group per hierarchy: moving it removes it from the others.
            let root = st.mount_of(path).map(|(r, _)| r);
            let others: Vec<PathBuf> = st
                .files
                .keys()
                .filter(|p| is_procs_file(p) && root.as_ref().is_some_and(|r| p.starts_with(r)))
                .cloned()
                .collect();
            for other in others {
                if let Some(c) = st.files.get_mut(&other) {
                    *c = parse_pids(c).iter().filter(|p| **p != pid).map(|p| format!("{p}\n")).collect();
                }
            }
            for procs in PROCS_FILES {
                if let Some(c) = st.files.get_mut(&dir.join(procs)) {
                    c.push_str(&format!("{pid}\n"));
                }
            }
            return Ok(());
        }
        match name {
            "cgroup.kill" => {
                for pid in st.group_pids(&dir) {
                    st.remove_pid(pid);
                }
            }
            "freezer.state" => {
                st.files.insert(path.to_path_buf(), text.trim().to_owned() + "\n");
            }
            _ => {
                st.files.insert(path.to_path_buf(), text);
            }
        }
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state();
        if st.dirs.contains(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists"));
        }
        let parent = path.parent().ok_or_else(|| not_found(path))?;
        if !st.dirs.contains(parent) {
            return Err(not_found(parent));
        }
        st.dirs.insert(path.to_path_buf());
        if let Some((_, files)) = st.mount_of(path) {
            for (name, contents) in files {
                let initial = if PROCS_FILES.contains(&name.as_str()) { String::new() } else { contents };
                st.files.insert(path.join(name), initial);
            }
        }
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state();
        if !st.dirs.contains(path) {
            return Err(not_found(path));
        }
        if st.dirs.iter().any(|d| d != path && d.starts_with(path)) {
            return Err(io::Error::from_raw_os_error(libc::ENOTEMPTY));
        }
        if !st.group_pids(path).is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        st.dirs.remove(path);
        st.files.retain(|p, _| p.parent() != Some(path));
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let st = self.state();
        st.dirs.contains(path) || st.files.contains_key(path)
    }

    fn sub_dirs(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let st = self.state();
        if !st.dirs.contains(path) {
            return Err(not_found(path));
        }
        Ok(st.dirs.iter().filter(|d| d.parent() == Some(path)).cloned().collect())
    }

    fn kill(&self, pid: Pid, signal: Signal) -> Result<(), Errno> {
        let mut st = self.state();
        st.kills.push((pid, signal));
        let groups: Vec<PathBuf> = st
            .files
            .iter()
            .filter(|(p, c)| is_procs_file(p) && parse_pids(c).contains(&pid.as_raw()))
            .filter_map(|(p, _)| p.parent().map(Path::to_path_buf))
            .fold(Vec::new(), |mut acc, d| {
                if !acc.contains(&d) {
                    acc.push(d);
                }
                acc
            });
        if groups.is_empty() {
            return Err(Errno::ESRCH);
        }
        if signal == Signal::SIGKILL {
            if st.forks_before_death > 0 {
                st.forks_before_death -= 1;
                st.spawn_in(&groups);
            }
            st.remove_pid(pid.as_raw());
        }
        Ok(())
    }

    fn now(&self) -> Instant {
        self.start + self.state().elapsed
    }

    fn sleep(&self, duration: Duration) {
        self.state().elapsed += duration;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_cgroupfs_moves_pids_and_refuses_busy_rmdir() {
        let fake = FakeSyscalls::new();
        fake.mount("/cg/pids", &[("cgroup.procs", ""), ("pids.max", "max\n")]);
        let a = Path::new("/cg/pids/a");
        let b = Path::new("/cg/pids/b");
        fake.create_dir(a).expect("mkdir a");
        fake.create_dir(b).expect("mkdir b");
        assert_eq!(fake.file(&a.join("pids.max")).as_deref(), Some("max\n"));
        fake.write(&a.join("cgroup.procs"), b"42").expect("join a");
        fake.write(&b.join("cgroup.procs"), b"42").expect("join b");
        assert_eq!(fake.file(&a.join("cgroup.procs")).as_deref(), Some(""));
        assert_eq!(fake.file(&b.join("cgroup.procs")).as_deref(), Some("42\n"));
        let busy = fake.remove_dir(b).expect_err("populated");
        assert_eq!(busy.raw_os_error(), Some(libc::EBUSY));
        fake.kill(Pid::from_raw(42), Signal::SIGKILL).expect("kill");
        fake.remove_dir(b).expect("rmdir after kill");
        assert!(!fake.has_dir(b));
        assert!(fake.write(&b.join("pids.max"), b"1").is_err());
    }

    #[test]
    fn fake_clock_advances_only_on_sleep() {
        let fake = FakeSyscalls::new();
        let t0 = fake.now();
        fake.sleep(Duration::from_secs(5));
        assert_eq!(fake.now() - t0, Duration::from_secs(5));
    }
}
