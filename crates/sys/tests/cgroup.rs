//! Privileged cgroup tests against the host's real hierarchy (v1 or v2, whichever `detect`
//! finds). Skipped with a message when not root; as root they always run.

mod common;

use std::io::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{GroupGuard, cgroups, read_file, root_or_skip, unique, wait_for};
use enjin_sys::Pid;
use enjin_sys::cgroup::{CgroupVersion, Group, KillMethod, Limits};

/// The group's control file `name`, in whichever of its directories has it.
fn control_file(group: &dyn Group, name: &str) -> PathBuf {
    group
        .dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no {name} in {:?}", group.dirs()))
}

/// Starts `sh -c script` held at a `read` until it is in `group`, so not even its first fork
/// happens outside.
fn start_in(group: &dyn Group, script: &str) -> Child {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("read _ && {script}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    group.add_pid(pid).expect("add pid");
    child.stdin.take().expect("stdin").write_all(b"go\n").expect("release the gate");
    child
}

fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    wait_for(timeout, || child.try_wait().expect("try_wait")).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("child {} did not exit within {timeout:?}", child.id())
    })
}

/// Every process forks in a loop, sleeping briefly when the pids limit refuses.
const FORK_BOMB: &str = "
import os, time
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.01)
";

/// Forks 300 sleepers, counting refusals, then reports and waits.
const COUNTED_FORKS: &str = "
import os, sys, time
made = refused = 0
for _ in range(300):
    try:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        made += 1
    except OSError:
        refused += 1
print(made, refused, flush=True)
time.sleep(30)
";

#[test]
fn lifecycle_limits_and_kill_all_of_a_forking_tree() {
    if !root_or_skip("lifecycle_limits_and_kill_all_of_a_forking_tree") {
        return;
    }
    let cg = cgroups();
    let name = unique("life");
    let group = GroupGuard(cg.create(&name).expect("create"));
    cg.create(&name).expect("create is idempotent");
    assert!(cg.list().expect("list").contains(&name));

    let limits = Limits { memory_bytes: Some(256 << 20), cpu_millicores: Some(500), pids: Some(40) };
    group.set_limits(&limits).expect("set limits");
    assert_eq!(group.limits().expect("read limits"), limits);
    // And straight from the kernel's files.
    match group.version() {
        CgroupVersion::V1 => {
            assert_eq!(read_file(&control_file(&*group, "memory.limit_in_bytes")).trim(), "268435456");
            let memsw =
                group.dirs().into_iter().map(|d| d.join("memory.memsw.limit_in_bytes")).find(|p| p.exists());
            if let Some(memsw) = memsw {
                assert_eq!(read_file(&memsw).trim(), "268435456");
            }
            assert_eq!(read_file(&control_file(&*group, "cpu.cfs_quota_us")).trim(), "50000");
            assert_eq!(read_file(&control_file(&*group, "cpu.cfs_period_us")).trim(), "100000");
        }
        CgroupVersion::V2 => {
            assert_eq!(read_file(&control_file(&*group, "memory.max")).trim(), "268435456");
            assert_eq!(read_file(&control_file(&*group, "cpu.max")).trim(), "50000 100000");
        }
    }
    assert_eq!(read_file(&control_file(&*group, "pids.max")).trim(), "40");

    // A real fork bomb, bounded by the pids limit: every process forks forever and retries
    // when fork fails (dash would give up at the first failure).
    let mut child = start_in(&*group, &format!("exec /usr/bin/python3 -c '{FORK_BOMB}'"));
    let sh = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let full = wait_for(Duration::from_secs(10), || {
        let pids = group.pids().expect("pids");
        (pids.len() >= 30).then_some(pids)
    })
    .expect("the tree grows to the pids limit");
    assert!(full.contains(&sh), "{sh} in {full:?}");
    assert!(full.len() <= 40, "{} processes exceed pids.max 40", full.len());
    assert!(group.memory_usage().expect("memory usage") > 0);
    let cpu = wait_for(Duration::from_secs(5), || group.cpu_usage_ns().ok().filter(|n| *n > 0));
    assert!(cpu.is_some(), "cpu usage stays 0");

    let report = group.kill_all(Duration::from_secs(10)).expect("kill_all");
    eprintln!("kill_all: {report:?}");
    match group.version() {
        CgroupVersion::V1 => {
            let freezer = group.dirs().iter().any(|d| d.to_string_lossy().contains("/freezer/"));
            let expected = if freezer { KillMethod::Freezer } else { KillMethod::Loop };
            assert_eq!(report.method, expected);
        }
        CgroupVersion::V2 => {}
    }
    assert!(group.pids().expect("pids").is_empty());
    let status = wait_child(&mut child, Duration::from_secs(5));
    assert_eq!(status.signal(), Some(9), "{status:?}");

    group.delete().expect("delete");
    for dir in group.dirs() {
        assert!(!dir.exists(), "{} still exists", dir.display());
    }
    assert!(cg.existing(&name).expect("existing").is_none());
}

#[test]
fn memory_limit_oom_kills_inside_the_group() {
    if !root_or_skip("memory_limit_oom_kills_inside_the_group") {
        return;
    }
    let cg = cgroups();
    let group = GroupGuard(cg.create(&unique("oom")).expect("create"));
    group
        .set_limits(&Limits { memory_bytes: Some(64 << 20), cpu_millicores: None, pids: Some(16) })
        .expect("limits");
    assert_eq!(group.oom_kills().expect("oom count"), 0);

    // 400 MiB, touched (bytearray zero-fills), in a 64 MiB group.
    let mut child = start_in(&*group, "exec /usr/bin/python3 -c 'x = bytearray(400 * 1024 * 1024)'");
    let status = wait_child(&mut child, Duration::from_secs(60));
    assert_eq!(status.signal(), Some(9), "the OOM killer's SIGKILL, got {status:?}");
    let kills = group.oom_kills().expect("oom count");
    assert!(kills >= 1, "oom_kill count {kills}");
    eprintln!("oom kills: {kills}");
}

#[test]
fn pids_limit_contains_a_fork_bomb() {
    if !root_or_skip("pids_limit_contains_a_fork_bomb") {
        return;
    }
    let cg = cgroups();
    let group = GroupGuard(cg.create(&unique("pids")).expect("create"));
    group.set_pids_limit(Some(20)).expect("pids limit");

    // 300 attempts, at most 20 processes (python included).
    let mut child = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!("import sys; sys.stdin.readline()\n{COUNTED_FORKS}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn python3");
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    group.add_pid(pid).expect("add pid");
    child.stdin.take().expect("stdin").write_all(b"go\n").expect("release the gate");
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("read the report");
    let counts: Vec<u32> = line.split_whitespace().map(|n| n.parse().expect("number")).collect();
    eprintln!("forked {} refused {}", counts[0], counts[1]);
    assert_eq!(counts[0], 19, "python plus 19 children fill pids.max 20");
    assert_eq!(counts[1], 281);
    for _ in 0..20 {
        let n = group.pids().expect("pids").len();
        assert!(n <= 20, "{n} processes in a group limited to 20");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The host still forks.
    let host = Command::new("/bin/true").status().expect("the host can still fork");
    assert!(host.success());

    group.kill_all(Duration::from_secs(10)).expect("kill_all");
    let status = wait_child(&mut child, Duration::from_secs(5));
    assert_eq!(status.signal(), Some(9), "{status:?}");
    group.delete().expect("delete");
}

#[test]
fn delete_refuses_a_busy_group_and_names_it() {
    if !root_or_skip("delete_refuses_a_busy_group_and_names_it") {
        return;
    }
    let cg = cgroups();
    let group = GroupGuard(cg.create(&unique("busy")).expect("create"));
    let mut child = start_in(&*group, "exec sleep 30");
    let err = group.delete().expect_err("busy group");
    let msg = err.to_string();
    assert!(msg.contains(&group.name().to_string()) && msg.contains("still holds processes"), "{msg}");
    group.kill_all(Duration::from_secs(5)).expect("kill_all");
    wait_child(&mut child, Duration::from_secs(5));
    group.delete().expect("delete once empty");
    group.delete().expect("deleting again is fine");
}

#[test]
fn v1_kill_all_without_freezer_loops_until_a_fork_bomb_is_gone() {
    if !root_or_skip("v1_kill_all_without_freezer_loops_until_a_fork_bomb_is_gone") {
        return;
    }
    let config = enjin_sys::cgroup::CgroupConfig {
        parent: PathBuf::from("enjin-sys-test"),
        placement: enjin_sys::cgroup::Placement::UnderOwnCgroup,
    };
    let v1 = match enjin_sys::cgroup::detect_v1(&config) {
        Ok(v1) => v1,
        Err(e) if cgroups().version() == CgroupVersion::V2 => {
            eprintln!("no v1 hierarchy on this v2 host ({e}); the loop is covered by the v2 path");
            return;
        }
        Err(e) => panic!("detect v1: {e}"),
    };
    let v1 = v1.without_controller(enjin_sys::cgroup::v1::Controller::Freezer);
    let group = GroupGuard(enjin_sys::cgroup::Cgroups::create(&v1, &unique("loop")).expect("create"));
    group.set_pids_limit(Some(40)).expect("pids limit");
    let mut child = start_in(&*group, &format!("exec /usr/bin/python3 -c '{FORK_BOMB}'"));
    wait_for(Duration::from_secs(10), || (group.pids().expect("pids").len() >= 30).then_some(()))
        .expect("the bomb grows");
    let report = group.kill_all(Duration::from_secs(10)).expect("kill_all");
    eprintln!("kill_all: {report:?}");
    assert_eq!(report.method, KillMethod::Loop);
    assert!(group.pids().expect("pids").is_empty());
    assert_eq!(wait_child(&mut child, Duration::from_secs(5)).signal(), Some(9));
    group.delete().expect("delete");
}
