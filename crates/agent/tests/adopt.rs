//! An agent killed between starting a sandboxed child and recording it finds the child again by
//! its cgroup: real cgroups, real processes (root only).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use enjin_agent::SandboxLauncher;
use enjin_supervisor::{ChildId, ChildSpec, Launcher};
use enjin_sys::Pid;
use enjin_sys::cgroup::CgroupConfig;
use enjin_testkit::root_or_skip;

fn sleeper(group: Option<u32>) -> Child {
    let mut c = Command::new("sleep");
    c.arg("60").process_group(group.map_or(0, |g| g as i32));
    c.spawn().expect("spawn sleep")
}

#[test]
fn the_oldest_live_group_leader_in_a_childs_cgroup_is_found() {
    if !root_or_skip("cgroups") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let parent = format!("enjin/adopt-test-{}", uuid::Uuid::new_v4());
    let launcher = SandboxLauncher::new(&dir.path().join("instances"), &dir.path().join("logs"), &parent)
        .expect("sandbox launcher");
    let id = uuid::Uuid::new_v4().to_string();
    let spec = ChildSpec::new(ChildId::new(id.clone()).expect("id"), vec!["sleep".into()]);
    assert!(launcher.find(&spec).is_none(), "no cgroup, nothing found");

    let cgroups =
        enjin_sys::cgroup::detect(&CgroupConfig { parent: parent.clone().into(), ..CgroupConfig::default() })
            .expect("cgroups");
    let group = cgroups.create(&id).expect("group");
    assert!(launcher.find(&spec).is_none(), "an empty cgroup holds nothing to adopt");

    // What a launch leaves: the leader of its own process group, and a descendant in that group.
    let mut leader = sleeper(None);
    let member = sleeper(Some(leader.id()));
    for p in [&leader, &member] {
        group.add_pid(Pid::from_raw(p.id() as i32)).expect("join the cgroup");
    }
    // A process outside the cgroup, even a group leader, is not the child.
    let stranger = sleeper(None);

    let found = launcher.find(&spec).expect("the leader is found");
    assert_eq!(found.pid, leader.id());
    assert_eq!(found.pgid, leader.id());
    let start = enjin_sys::proc::start_time(Pid::from_raw(leader.id() as i32)).expect("start time");
    assert_eq!(found.start_time, start, "the handle names that very process");
    assert!(launcher.is_alive(&found));

    // Once the leader is gone (reaped), a member that is no group leader is not taken for it.
    leader.kill().expect("kill");
    leader.wait().expect("wait");
    assert!(launcher.find(&spec).is_none(), "no live leader left: {:?}", launcher.find(&spec));

    for mut p in [member, stranger] {
        let _ = p.kill();
        let _ = p.wait();
    }
    let _ = group.kill_all(std::time::Duration::from_secs(5));
    group.delete().expect("remove the group");
    for d in cgroups.parent_dirs() {
        let _ = std::fs::remove_dir(&d);
    }
}
