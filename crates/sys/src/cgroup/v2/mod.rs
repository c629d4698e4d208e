//! cgroup v2: one unified hierarchy. Controllers reach a group only when every ancestor lists
//! them in `cgroup.subtree_control`, so creating a group enables memory, cpu and pids down the
//! parent chain first.

mod cpu;
mod memory;
mod pids;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::Pid;

use crate::cgroup::v1::list_names;
use crate::cgroup::{
    AddPidError, CgroupVersion, Cgroups, CreateGroupError, DeleteGroupError, Group, KillAllError, KillMethod,
    KillReport, Limits, REQUIRED_CONTROLLERS, ReadError, SetLimitError, create_dir_all, kill_loop,
    pids_recursive, read_string, remove_tree, validate_name,
};
use crate::syscalls::Syscalls;

/// The unified hierarchy.
#[derive(Debug, Clone)]
pub struct V2Cgroups {
    sys: Arc<dyn Syscalls>,
    mount: PathBuf,
    base: PathBuf,
    parent: PathBuf,
}

impl V2Cgroups {
    /// Groups go in `<base>/<parent>`; `base` is `mount` or a cgroup below it.
    pub fn new(sys: Arc<dyn Syscalls>, mount: PathBuf, base: PathBuf, parent: PathBuf) -> Self {
        Self { sys, mount, base, parent }
    }

    /// The mount point of the unified hierarchy.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    fn group(&self, name: &str) -> V2Group {
        V2Group { sys: self.sys.clone(), name: name.to_owned(), dir: self.base.join(&self.parent).join(name) }
    }

    /// Makes memory, cpu and pids available to children of `dir`.
    fn enable_controllers(&self, dir: &Path) -> Result<(), CreateGroupError> {
        let path = dir.join("cgroup.subtree_control");
        let enabled = read_string(&*self.sys, &path)?;
        let enabled: Vec<&str> = enabled.split_whitespace().collect();
        for controller in REQUIRED_CONTROLLERS.iter().filter(|c| !enabled.contains(c)) {
            self.sys.write(&path, format!("+{controller}").as_bytes()).map_err(|e| {
                let source = if e.raw_os_error() == Some(libc::EBUSY) {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "{e}: a cgroup that holds processes cannot hand controllers to \
                             children (place groups at the mount root or move the caller into a leaf)"
                        ),
                    )
                } else {
                    e
                };
                CreateGroupError::EnableControllers { path: path.clone(), source }
            })?;
        }
        Ok(())
    }
}

impl Cgroups for V2Cgroups {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn parent_dirs(&self) -> Vec<PathBuf> {
        vec![self.base.join(&self.parent)]
    }

    fn create(&self, name: &str) -> Result<Box<dyn Group>, CreateGroupError> {
        validate_name(name)?;
        let mut dir = self.base.clone();
        self.enable_controllers(&dir)?;
        for component in self.parent.components() {
            dir.push(component);
            create_dir_all(&*self.sys, &dir)?;
            self.enable_controllers(&dir)?;
        }
        let group = self.group(name);
        create_dir_all(&*self.sys, &group.dir)?;
        Ok(Box::new(group))
    }

    fn existing(&self, name: &str) -> Result<Option<Box<dyn Group>>, CreateGroupError> {
        validate_name(name)?;
        let group = self.group(name);
        Ok(self.sys.exists(&group.dir).then(|| Box::new(group) as Box<dyn Group>))
    }

    fn list(&self) -> Result<Vec<String>, ReadError> {
        list_names(&*self.sys, &self.base.join(&self.parent))
    }
}

/// A v2 group: one directory.
#[derive(Debug, Clone)]
pub struct V2Group {
    sys: Arc<dyn Syscalls>,
    name: String,
    dir: PathBuf,
}

impl V2Group {
    /// The group's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Group for V2Group {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn dirs(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    fn procs_files(&self) -> Vec<PathBuf> {
        vec![self.dir.join("cgroup.procs")]
    }

    fn set_memory_limit(&self, bytes: Option<u64>) -> Result<(), SetLimitError> {
        memory::set_limit(&*self.sys, &self.dir, bytes)
    }

    fn set_cpu_limit(&self, millicores: Option<u64>) -> Result<(), SetLimitError> {
        cpu::set_limit(&*self.sys, &self.dir, millicores)
    }

    fn set_pids_limit(&self, max: Option<u64>) -> Result<(), SetLimitError> {
        pids::set_limit(&*self.sys, &self.dir, max)
    }

    fn limits(&self) -> Result<Limits, ReadError> {
        Ok(Limits {
            memory_bytes: memory::limit(&*self.sys, &self.dir)?,
            cpu_millicores: cpu::limit(&*self.sys, &self.dir)?,
            pids: pids::limit(&*self.sys, &self.dir)?,
        })
    }

    fn add_pid(&self, pid: Pid) -> Result<(), AddPidError> {
        let path = self.dir.join("cgroup.procs");
        self.sys.write(&path, pid.as_raw().to_string().as_bytes()).map_err(|source| AddPidError {
            pid,
            path,
            source,
        })
    }

    fn pids(&self) -> Result<Vec<Pid>, ReadError> {
        pids_recursive(&*self.sys, &self.dir)
    }

    fn memory_usage(&self) -> Result<u64, ReadError> {
        memory::usage(&*self.sys, &self.dir)
    }

    fn cpu_usage_ns(&self) -> Result<u64, ReadError> {
        cpu::usage_ns(&*self.sys, &self.dir)
    }

    fn oom_kills(&self) -> Result<u64, ReadError> {
        memory::oom_kills(&*self.sys, &self.dir)
    }

    fn kill_all(&self, timeout: Duration) -> Result<KillReport, KillAllError> {
        let sys = &*self.sys;
        let list = || self.pids();
        let kill_file = self.dir.join("cgroup.kill");
        if sys.exists(&kill_file) {
            sys.write(&kill_file, b"1").map_err(|source| KillAllError::Write {
                path: kill_file.clone(),
                value: "1",
                source,
            })?;
            // The kernel has signalled everything; the loop waits for the exits (and catches
            // nothing else, since a process with SIGKILL pending cannot fork).
            return kill_loop(sys, &self.dir, timeout, KillMethod::CgroupKill, &list, &mut || Ok(()));
        }
        kill_loop(sys, &self.dir, timeout, KillMethod::Loop, &list, &mut || Ok(()))
    }

    fn delete(&self) -> Result<(), DeleteGroupError> {
        remove_tree(&*self.sys, &self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscalls::FakeSyscalls;

    fn fake_v2(with_kill: bool) -> (Arc<FakeSyscalls>, V2Cgroups) {
        let fake = Arc::new(FakeSyscalls::new());
        let mut files: Vec<(&str, &str)> = vec![
            ("cgroup.procs", ""),
            ("cgroup.subtree_control", ""),
            ("cgroup.controllers", "cpu memory pids"),
        ];
        if with_kill {
            files.push(("cgroup.kill", ""));
        }
        files.extend_from_slice(memory::FAKE_FILES);
        files.extend_from_slice(cpu::FAKE_FILES);
        files.extend_from_slice(pids::FAKE_FILES);
        fake.mount("/cg", &files);
        let cg = V2Cgroups::new(fake.clone(), "/cg".into(), "/cg".into(), "enjin/ring2".into());
        (fake, cg)
    }

    #[test]
    fn create_enables_controllers_down_the_chain() {
        let (fake, cg) = fake_v2(true);
        let g = cg.create("web").expect("create");
        assert_eq!(g.dirs(), vec![PathBuf::from("/cg/enjin/ring2/web")]);
        let enabled: Vec<(PathBuf, String)> =
            fake.writes().into_iter().filter(|(p, _)| p.ends_with("cgroup.subtree_control")).collect();
        let dirs: Vec<&Path> = enabled.iter().filter_map(|(p, _)| p.parent()).collect();
        assert_eq!(dirs.len(), 9, "{enabled:?}");
        assert!(dirs.contains(&Path::new("/cg")));
        assert!(dirs.contains(&Path::new("/cg/enjin/ring2")));
        assert_eq!(cg.list().expect("list"), vec!["web".to_owned()]);
    }

    #[test]
    fn limits_round_trip_and_swap_is_closed() {
        let (fake, cg) = fake_v2(true);
        let g = cg.create("web").expect("create");
        let limits = Limits { memory_bytes: Some(128 << 20), cpu_millicores: Some(1500), pids: Some(64) };
        g.set_limits(&limits).expect("set");
        assert_eq!(g.limits().expect("read"), limits);
        assert_eq!(fake.file(Path::new("/cg/enjin/ring2/web/cpu.max")).as_deref(), Some("150000 100000"));
        assert_eq!(fake.file(Path::new("/cg/enjin/ring2/web/memory.swap.max")).as_deref(), Some("0"));
        g.set_limits(&Limits::default()).expect("unset");
        assert_eq!(g.limits().expect("read"), Limits::default());
    }

    #[test]
    fn stats() {
        let (fake, cg) = fake_v2(true);
        let g = cg.create("web").expect("create");
        fake.add_file("/cg/enjin/ring2/web/cpu.stat", "usage_usec 1500\nuser_usec 1000\n");
        fake.add_file("/cg/enjin/ring2/web/memory.events", "low 0\noom 2\noom_kill 1\n");
        fake.add_file("/cg/enjin/ring2/web/memory.current", "8192\n");
        assert_eq!(g.cpu_usage_ns().expect("cpu"), 1_500_000);
        assert_eq!(g.oom_kills().expect("oom"), 1);
        assert_eq!(g.memory_usage().expect("mem"), 8192);
    }

    #[test]
    fn kill_all_uses_cgroup_kill_when_present_and_loops_otherwise() {
        let (_fake, cg) = fake_v2(true);
        let g = cg.create("web").expect("create");
        g.add_pid(Pid::from_raw(5)).expect("add");
        let report = g.kill_all(Duration::from_secs(1)).expect("kill");
        assert_eq!(report.method, KillMethod::CgroupKill);
        assert_eq!(report.signalled, 0);
        g.delete().expect("delete");

        let (_fake, cg) = fake_v2(false);
        let g = cg.create("web").expect("create");
        g.add_pid(Pid::from_raw(5)).expect("add");
        let report = g.kill_all(Duration::from_secs(1)).expect("kill");
        assert_eq!(report.method, KillMethod::Loop);
        assert_eq!(report.signalled, 1);
        g.delete().expect("delete");
    }

    #[test]
    fn busy_subtree_control_explains_the_no_internal_process_rule() {
        let (fake, cg) = fake_v2(true);
        fake.fail_writes("/cg/cgroup.subtree_control", nix::errno::Errno::EBUSY);
        let err = cg.create("web").expect_err("busy").to_string();
        assert!(err.starts_with("failed to enable controllers in /cg/cgroup.subtree_control"), "{err}");
        assert!(err.contains("holds processes"), "{err}");
    }
}
