//! Isolation of ring 2 instances run through `enjin node run` (the unix-user strategy), as
//! root, for real: each instance is its own uid in its own cgroup and mount and PID
//! namespaces. What one instance tries against another or the system is written to its log.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Running, cli, stderr};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn uuid_of(data: &Path, label: &str) -> String {
    let out = cli(data, &["-o", "json", "node", "get", label]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["uuid"].as_str().expect("uuid").to_string()
}

fn log(data: &Path, uuid: &str) -> String {
    std::fs::read_to_string(data.join(format!("hosts/host-1/children/logs/{uuid}.stdout.log")))
        .unwrap_or_default()
}

fn run(data: &Path, label: &str, extra: &[&str], script: &str) -> String {
    let mut args = vec!["node", "run", label, "--host", "host-1"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let out = cli(data, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    uuid_of(data, label)
}

/// The first value of `key` in a v1 cgroup file of the instance, e.g. memory.oom_control.
fn cgroup_file(controller: &str, host: &str, uuid: &str, file: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/cgroup/{controller}/enjin/{host}/{uuid}/{file}"))
}

#[test]
fn instances_cannot_reach_each_other_or_the_system() {
    if !is_root() {
        eprintln!("skipped: unix-user isolation needs root");
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let data = dir.path().join("data");
    let up = Running::start_with("up", &data, &["--hosts", "1"]);
    let host = {
        wait_for("host-1 exists", Duration::from_secs(30), || {
            cli(&data, &["node", "get", "host-1"]).status.success()
        });
        uuid_of(&data, "host-1")
    };

    // A setuid-root copy of `id`, where every instance can run it.
    let suid = dir.path().join("suid-id");
    std::fs::copy("/usr/bin/id", &suid).expect("copy id");
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).expect("setuid");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let b = run(&data, "bee", &[], "echo s3cret > secret; echo ready; exec sleep 1000");
    wait_for("bee is ready", Duration::from_secs(30), || log(&data, &b).contains("ready"));
    let b_dir = data.join(format!("hosts/host-1/instances/{b}"));
    // bee's sleep: the process whose command line is `/usr/bin/sleep 1000` (only bee runs one yet).
    let b_pid = std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c == b"sleep\x001000\x00" || c == b"/usr/bin/sleep\x001000\x00")
        })
        .expect("bee's process");
    let script = format!(
        "cat {b}/secret >/dev/null 2>&1 && echo read:LEAK || echo read:denied; \\
         (echo x > {b}/planted) 2>/dev/null && echo plant:LEAK || echo plant:denied; \\
         kill -9 {b_pid} 2>/dev/null && echo kill:LEAK || echo kill:denied; \\
         for p in /etc/enjin-x /usr/enjin-x /var/tmp/enjin-x; do (echo x > $p) 2>/dev/null && echo write:LEAK:$p || echo write:denied; done; \\
         echo x > /tmp/mine && echo tmp:ok; echo x > ./mine && echo home:ok; \\
         echo suid:$({suid} -u); echo pid1:$(cat /proc/1/comm); \\
         echo done; exec sleep 1000",
        b = b_dir.display(),
        suid = suid.display(),
    );
    let a = run(&data, "ay", &[], &script);
    wait_for("ay has tried everything", Duration::from_secs(30), || log(&data, &a).contains("done"));
    let out = log(&data, &a);
    assert!(!out.contains("LEAK"), "an instance reached what it must not: {out}");
    for expected in ["read:denied", "plant:denied", "kill:denied", "tmp:ok", "home:ok", "pid1:enjin-init"] {
        assert!(out.contains(expected), "missing {expected}: {out}");
    }
    let suid_uid: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("suid:"))
        .and_then(|u| u.trim().parse().ok())
        .expect("suid line");
    assert_ne!(suid_uid, 0, "a setuid-root binary gained root: {out}");
    assert!(
        !Path::new("/tmp/mine").exists() || std::fs::read_to_string("/tmp/mine").is_err(),
        "the instance's /tmp is private"
    );
    assert!(std::fs::read_to_string(b_dir.join("secret")).is_ok_and(|s| s.trim() == "s3cret"));

    // Memory: an instance over its limit is OOM-killed inside its own cgroup.
    let hog = run(
        &data,
        "hog",
        &["--memory", "67108864", "--restart", "temporary"],
        "exec python3 -c 'x = bytearray(400 * 1024 * 1024)'",
    );
    let oom = cgroup_file("memory", &host, &hog, "memory.oom_control");
    wait_for("the hog is OOM-killed", Duration::from_secs(30), || {
        std::fs::read_to_string(&oom)
            .is_ok_and(|s| s.lines().any(|l| l.starts_with("oom_kill ") && l != "oom_kill 0"))
    });

    // Pids: a fork bomb stays inside its limit.
    let bomb = run(
        &data,
        "bomb",
        &["--pids", "20", "--restart", "temporary"],
        "i=0; while [ $i -lt 200 ]; do sleep 300 & i=$((i+1)); done; exec sleep 1000",
    );
    let tasks = cgroup_file("pids", &host, &bomb, "tasks");
    let events = cgroup_file("pids", &host, &bomb, "pids.events");
    wait_for("the bomb hits its limit", Duration::from_secs(30), || {
        std::fs::read_to_string(&events)
            .is_ok_and(|s| s.lines().any(|l| l.starts_with("max ") && l != "max 0"))
    });
    let count = std::fs::read_to_string(&tasks).map(|t| t.lines().count()).unwrap_or(usize::MAX);
    assert!(count <= 20, "the fork bomb has {count} tasks, over its limit of 20");

    assert!(up.interrupt_and_clean().success());
}
