//! cgroup v1: one hierarchy per controller (or per co-mounted set, e.g. `cpu,cpuacct`). A group
//! is one directory in each; a process joins it by writing itself to every `cgroup.procs`.

mod cpu;
mod freezer;
mod memory;
mod pids;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::Pid;

use crate::cgroup::{
    AddPidError, CgroupVersion, Cgroups, CreateGroupError, DeleteGroupError, Group, KillAllError, KillMethod,
    KillReport, Limits, ReadError, SetLimitError, create_dir_all, kill_loop, pids_recursive, remove_tree,
    validate_name,
};
use crate::syscalls::Syscalls;

/// The v1 controllers we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Controller {
    /// Memory (and, with swap accounting, memory + swap) limits, usage and OOM kills; required.
    Memory,
    /// CFS quota for the CPU limit; required.
    Cpu,
    /// CPU usage accounting; optional (without it CPU usage cannot be read).
    Cpuacct,
    /// The task count limit; required.
    Pids,
    /// Freezing a group so a kill cannot race forks; optional (without it the kill loops).
    Freezer,
}

impl Controller {
    /// The controller's name in mount options and `/proc/self/cgroup`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Cpu => "cpu",
            Self::Cpuacct => "cpuacct",
            Self::Pids => "pids",
            Self::Freezer => "freezer",
        }
    }

    /// The controller called `name`, if we use it.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Memory, Self::Cpu, Self::Cpuacct, Self::Pids, Self::Freezer]
            .into_iter()
            .find(|c| c.name() == name)
    }
}

/// A v1 hierarchy: for each controller, the directory groups are created in.
#[derive(Debug, Clone)]
pub struct V1Cgroups {
    sys: Arc<dyn Syscalls>,
    controllers: Vec<(Controller, PathBuf)>,
}

impl V1Cgroups {
    /// `controllers` maps each mounted controller to its `<base>/<parent>` directory; memory,
    /// cpu and pids must be there ([`crate::cgroup::detect`] checks).
    pub fn new(sys: Arc<dyn Syscalls>, controllers: Vec<(Controller, PathBuf)>) -> Self {
        Self { sys, controllers }
    }

    /// The same hierarchy without `controller` (e.g. to kill without the freezer).
    pub fn without_controller(&self, controller: Controller) -> Self {
        Self {
            sys: self.sys.clone(),
            controllers: self.controllers.iter().filter(|(c, _)| *c != controller).cloned().collect(),
        }
    }

    /// The controllers and the directory groups are created in for each.
    pub fn controllers(&self) -> &[(Controller, PathBuf)] {
        &self.controllers
    }

    fn group(&self, name: &str) -> V1Group {
        V1Group {
            sys: self.sys.clone(),
            name: name.to_owned(),
            controllers: self.controllers.iter().map(|(c, dir)| (*c, dir.join(name))).collect(),
        }
    }
}

impl Cgroups for V1Cgroups {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn parent_dirs(&self) -> Vec<PathBuf> {
        distinct(self.controllers.iter().map(|(_, d)| d.clone()))
    }

    fn create(&self, name: &str) -> Result<Box<dyn Group>, CreateGroupError> {
        validate_name(name)?;
        let group = self.group(name);
        for dir in group.dirs() {
            create_dir_all(&*self.sys, &dir)?;
        }
        Ok(Box::new(group))
    }

    fn existing(&self, name: &str) -> Result<Option<Box<dyn Group>>, CreateGroupError> {
        validate_name(name)?;
        let group = self.group(name);
        let present = group.dirs().iter().all(|d| self.sys.exists(d));
        Ok(present.then(|| Box::new(group) as Box<dyn Group>))
    }

    fn list(&self) -> Result<Vec<String>, ReadError> {
        let Some(dir) = self.controllers.iter().find(|(c, _)| *c == Controller::Pids).map(|(_, d)| d) else {
            return Ok(Vec::new());
        };
        list_names(&*self.sys, dir)
    }
}

pub(crate) fn list_names(sys: &dyn Syscalls, dir: &Path) -> Result<Vec<String>, ReadError> {
    match sys.sub_dirs(dir) {
        Ok(dirs) => Ok(dirs.iter().filter_map(|d| d.file_name()?.to_str().map(str::to_owned)).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(ReadError::Read { path: dir.to_path_buf(), source }),
    }
}

fn distinct(dirs: impl Iterator<Item = PathBuf>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for d in dirs {
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// A v1 group: one directory per controller.
#[derive(Debug, Clone)]
pub struct V1Group {
    sys: Arc<dyn Syscalls>,
    name: String,
    controllers: Vec<(Controller, PathBuf)>,
}

impl V1Group {
    /// The group's directory in `controller`'s hierarchy, if that controller is mounted.
    pub fn dir(&self, controller: Controller) -> Option<&Path> {
        self.controllers.iter().find(|(c, _)| *c == controller).map(|(_, d)| d.as_path())
    }

    fn required(&self, controller: Controller) -> Result<&Path, io::Error> {
        self.dir(controller).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the {} controller is not mounted", controller.name()),
            )
        })
    }

    fn read_dir(&self, controller: Controller, file: &str) -> Result<&Path, ReadError> {
        self.required(controller)
            .map_err(|source| ReadError::Read { path: self.fallback_path(controller, file), source })
    }

    fn write_dir(&self, controller: Controller, file: &str) -> Result<&Path, SetLimitError> {
        self.required(controller).map_err(|source| SetLimitError::Write {
            path: self.fallback_path(controller, file),
            value: String::new(),
            source,
        })
    }

    /// A path to name in an error about a controller that is not mounted.
    fn fallback_path(&self, controller: Controller, file: &str) -> PathBuf {
        PathBuf::from(format!("<{} hierarchy>/{}/{file}", controller.name(), self.name))
    }

    /// The hierarchy whose membership we list: pids (required, so always there).
    fn membership_dir(&self) -> Result<&Path, ReadError> {
        self.read_dir(Controller::Pids, "cgroup.procs")
    }
}

impl Group for V1Group {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn dirs(&self) -> Vec<PathBuf> {
        distinct(self.controllers.iter().map(|(_, d)| d.clone()))
    }

    fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs().into_iter().map(|d| d.join("cgroup.procs")).collect()
    }

    fn set_memory_limit(&self, bytes: Option<u64>) -> Result<(), SetLimitError> {
        memory::set_limit(&*self.sys, self.write_dir(Controller::Memory, "memory.limit_in_bytes")?, bytes)
    }

    fn set_cpu_limit(&self, millicores: Option<u64>) -> Result<(), SetLimitError> {
        cpu::set_limit(&*self.sys, self.write_dir(Controller::Cpu, "cpu.cfs_quota_us")?, millicores)
    }

    fn set_pids_limit(&self, max: Option<u64>) -> Result<(), SetLimitError> {
        pids::set_limit(&*self.sys, self.write_dir(Controller::Pids, "pids.max")?, max)
    }

    fn limits(&self) -> Result<Limits, ReadError> {
        Ok(Limits {
            memory_bytes: memory::limit(
                &*self.sys,
                self.read_dir(Controller::Memory, "memory.limit_in_bytes")?,
            )?,
            cpu_millicores: cpu::limit(&*self.sys, self.read_dir(Controller::Cpu, "cpu.cfs_quota_us")?)?,
            pids: pids::limit(&*self.sys, self.read_dir(Controller::Pids, "pids.max")?)?,
        })
    }

    fn add_pid(&self, pid: Pid) -> Result<(), AddPidError> {
        for path in self.procs_files() {
            self.sys.write(&path, pid.as_raw().to_string().as_bytes()).map_err(|source| AddPidError {
                pid,
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn pids(&self) -> Result<Vec<Pid>, ReadError> {
        pids_recursive(&*self.sys, self.membership_dir()?)
    }

    fn memory_usage(&self) -> Result<u64, ReadError> {
        memory::usage(&*self.sys, self.read_dir(Controller::Memory, "memory.usage_in_bytes")?)
    }

    fn cpu_usage_ns(&self) -> Result<u64, ReadError> {
        cpu::usage_ns(&*self.sys, self.read_dir(Controller::Cpuacct, "cpuacct.usage")?)
    }

    fn oom_kills(&self) -> Result<u64, ReadError> {
        memory::oom_kills(&*self.sys, self.read_dir(Controller::Memory, "memory.oom_control")?)
    }

    fn kill_all(&self, timeout: Duration) -> Result<KillReport, KillAllError> {
        let sys = &*self.sys;
        let dir = self.membership_dir()?;
        let list = || self.pids();
        let start = sys.now();
        if let Some(freezer_dir) = self.dir(Controller::Freezer).filter(|d| sys.exists(d)) {
            // Half the budget for freezing; a group that will not freeze still gets the loop.
            if freezer::freeze(sys, freezer_dir, timeout / 2)? {
                let mut thaw = || freezer::thaw(sys, freezer_dir);
                let rest = timeout.saturating_sub(sys.now() - start);
                return kill_loop(sys, dir, rest, KillMethod::Freezer, &list, &mut thaw);
            }
            freezer::thaw(sys, freezer_dir)?;
        }
        let rest = timeout.saturating_sub(sys.now() - start);
        kill_loop(sys, dir, rest, KillMethod::Loop, &list, &mut || Ok(()))
    }

    fn delete(&self) -> Result<(), DeleteGroupError> {
        for dir in self.dirs() {
            remove_tree(&*self.sys, &dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscalls::FakeSyscalls;

    fn fake_v1(with_freezer: bool, with_memsw: bool) -> (Arc<FakeSyscalls>, V1Cgroups) {
        let fake = Arc::new(FakeSyscalls::new());
        let memory_files: Vec<(&str, &str)> = memory::FAKE_FILES
            .iter()
            .copied()
            .filter(|(n, _)| with_memsw || *n != "memory.memsw.limit_in_bytes")
            .collect();
        fake.mount("/cg/memory", &memory_files);
        fake.mount("/cg/cpu", cpu::FAKE_CPU_FILES);
        fake.mount("/cg/cpuacct", cpu::FAKE_CPUACCT_FILES);
        fake.mount("/cg/pids", pids::FAKE_FILES);
        let mut controllers = vec![
            (Controller::Memory, PathBuf::from("/cg/memory/enjin")),
            (Controller::Cpu, PathBuf::from("/cg/cpu/enjin")),
            (Controller::Cpuacct, PathBuf::from("/cg/cpuacct/enjin")),
            (Controller::Pids, PathBuf::from("/cg/pids/enjin")),
        ];
        if with_freezer {
            fake.mount("/cg/freezer", freezer::FAKE_FILES);
            controllers.push((Controller::Freezer, PathBuf::from("/cg/freezer/enjin")));
        }
        let cg = V1Cgroups::new(fake.clone(), controllers);
        (fake, cg)
    }

    #[test]
    fn create_is_idempotent_and_makes_a_dir_per_controller() {
        let (fake, cg) = fake_v1(true, true);
        let g = cg.create("web").expect("create");
        cg.create("web").expect("create again");
        assert_eq!(g.dirs().len(), 5);
        assert!(fake.has_dir(Path::new("/cg/memory/enjin/web")));
        assert!(fake.has_dir(Path::new("/cg/freezer/enjin/web")));
        assert_eq!(cg.list().expect("list"), vec!["web".to_owned()]);
        assert!(cg.existing("web").expect("existing").is_some());
        assert!(cg.existing("db").expect("existing").is_none());
    }

    #[test]
    fn limits_are_written_and_read_back() {
        let (fake, cg) = fake_v1(false, true);
        let g = cg.create("web").expect("create");
        let limits = Limits { memory_bytes: Some(64 << 20), cpu_millicores: Some(250), pids: Some(32) };
        g.set_limits(&limits).expect("set");
        assert_eq!(g.limits().expect("read"), limits);
        assert_eq!(
            fake.file(Path::new("/cg/memory/enjin/web/memory.memsw.limit_in_bytes")).as_deref(),
            Some("67108864")
        );
        assert_eq!(fake.file(Path::new("/cg/cpu/enjin/web/cpu.cfs_quota_us")).as_deref(), Some("25000"));
        g.set_limits(&Limits::default()).expect("unset");
        assert_eq!(fake.file(Path::new("/cg/memory/enjin/web/memory.limit_in_bytes")).as_deref(), Some("-1"));
        assert_eq!(fake.file(Path::new("/cg/pids/enjin/web/pids.max")).as_deref(), Some("max"));
        assert!(matches!(g.set_cpu_limit(Some(5)), Err(SetLimitError::Invalid(_))));
        assert!(matches!(g.set_pids_limit(Some(0)), Err(SetLimitError::Invalid(_))));
    }

    #[test]
    fn memsw_is_written_after_memory_when_the_kernel_refuses_it_first() {
        let (fake, cg) = fake_v1(false, true);
        let g = cg.create("web").expect("create");
        let memsw = PathBuf::from("/cg/memory/enjin/web/memory.memsw.limit_in_bytes");
        fake.fail_writes(memsw.clone(), nix::errno::Errno::EINVAL);
        let err = g.set_memory_limit(Some(1 << 20)).expect_err("memsw still refused");
        // memory.limit_in_bytes was written before the second memsw attempt.
        let writes = fake.writes();
        assert_eq!(writes.last().map(|(p, _)| p.file_name()), Some(Some("memory.limit_in_bytes".as_ref())));
        assert!(err.to_string().contains(&memsw.display().to_string()), "{err}");
    }

    #[test]
    fn no_memsw_means_only_the_memory_limit() {
        let (fake, cg) = fake_v1(false, false);
        let g = cg.create("web").expect("create");
        g.set_memory_limit(Some(1 << 20)).expect("set");
        assert_eq!(fake.writes().len(), 1);
    }

    #[test]
    fn add_pid_joins_every_hierarchy_and_errors_name_the_file() {
        let (fake, cg) = fake_v1(true, true);
        let g = cg.create("web").expect("create");
        g.add_pid(Pid::from_raw(77)).expect("add");
        assert_eq!(g.pids().expect("pids"), vec![Pid::from_raw(77)]);
        assert_eq!(fake.file(Path::new("/cg/freezer/enjin/web/cgroup.procs")).as_deref(), Some("77\n"));
        fake.fail_writes("/cg/cpu/enjin/web/cgroup.procs", nix::errno::Errno::ESRCH);
        let err = g.add_pid(Pid::from_raw(78)).expect_err("gone").to_string();
        assert!(err.starts_with("failed to add pid 78 to /cg/cpu/enjin/web/cgroup.procs"), "{err}");
    }

    #[test]
    fn stats_and_oom_count() {
        let (fake, cg) = fake_v1(false, true);
        let g = cg.create("web").expect("create");
        fake.add_file("/cg/memory/enjin/web/memory.usage_in_bytes", "4096\n");
        fake.add_file("/cg/cpuacct/enjin/web/cpuacct.usage", "123456789\n");
        fake.add_file(
            "/cg/memory/enjin/web/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        assert_eq!(g.memory_usage().expect("mem"), 4096);
        assert_eq!(g.cpu_usage_ns().expect("cpu"), 123_456_789);
        assert_eq!(g.oom_kills().expect("oom"), 2);
        fake.add_file("/cg/memory/enjin/web/memory.oom_control", "oom_kill_disable 0\n");
        let err = g.oom_kills().expect_err("old kernel").to_string();
        assert!(err.contains("/cg/memory/enjin/web/memory.oom_control"), "{err}");
    }

    #[test]
    fn kill_all_with_freezer_freezes_kills_and_thaws() {
        let (fake, cg) = fake_v1(true, true);
        let g = cg.create("web").expect("create");
        for pid in [101, 102, 103] {
            g.add_pid(Pid::from_raw(pid)).expect("add");
        }
        let report = g.kill_all(Duration::from_secs(5)).expect("kill");
        assert_eq!(report.method, KillMethod::Freezer);
        assert_eq!(report.signalled, 3);
        assert!(g.pids().expect("pids").is_empty());
        let states: Vec<String> =
            fake.writes().into_iter().filter(|(p, _)| p.ends_with("freezer.state")).map(|(_, v)| v).collect();
        assert_eq!(states, vec!["FROZEN".to_owned(), "THAWED".to_owned()]);
        g.delete().expect("delete");
        g.delete().expect("delete again");
        assert!(!fake.has_dir(Path::new("/cg/pids/enjin/web")));
    }

    #[test]
    fn kill_all_without_freezer_loops_over_a_forking_tree() {
        let (fake, cg) = fake_v1(false, true);
        let g = cg.create("web").expect("create");
        g.add_pid(Pid::from_raw(101)).expect("add");
        // The first three kills each fork a new process first.
        fake.set_forks_before_death(3);
        let report = g.kill_all(Duration::from_secs(5)).expect("kill");
        assert_eq!(report.method, KillMethod::Loop);
        assert!(report.rounds > 1, "{report:?}");
        assert!(g.pids().expect("pids").is_empty());
    }

    #[test]
    fn kill_all_times_out_naming_the_group() {
        let (fake, cg) = fake_v1(false, true);
        let g = cg.create("web").expect("create");
        g.add_pid(Pid::from_raw(101)).expect("add");
        fake.set_forks_before_death(u32::MAX);
        let err = g.kill_all(Duration::from_millis(100)).expect_err("never empties");
        assert!(matches!(err, KillAllError::Timeout { .. }), "{err}");
        assert!(err.to_string().starts_with("/cg/pids/enjin/web still holds"), "{err}");
    }

    #[test]
    fn delete_refuses_a_populated_group() {
        let (_fake, cg) = fake_v1(false, true);
        let g = cg.create("web").expect("create");
        g.add_pid(Pid::from_raw(101)).expect("add");
        let err = g.delete().expect_err("busy");
        assert!(matches!(err, DeleteGroupError::Busy { .. }), "{err}");
    }
}
