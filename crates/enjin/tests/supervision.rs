//! Supervision end to end, from the binary: `enjin up` runs a ring 1 host (in its own network
//! namespace as root), the host runs a ring 2 node, and both survive SIGKILL under their
//! restart policies — the instance restarted, the agent restarted and its child re-adopted,
//! never a second copy.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Running, cli, stderr, wait_until};

/// Pids of processes whose command line is exactly `cmdline` (arguments joined by spaces; a
/// sandboxed program shows its resolved path, so `sleep 1` also matches `/usr/bin/sleep 1`).
fn pids_of(cmdline: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let line = args.join(" ");
        // A sandbox's tiny init is a fork of the agent that never execs: same command line,
        // different name.
        let init = std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == "enjin-init");
        if !init && (line == cmdline || line.ends_with(&format!("/{cmdline}"))) {
            out.push(pid);
        }
    }
    out
}

fn state_of(data: &std::path::Path, node: &str, strategy: &str) -> Option<String> {
    let out = cli(data, &["-o", "json", "node-observation", "list", "--parent", node]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    list["items"].as_array()?.iter().find(|o| o["spec"]["strategy"] == strategy)?["spec"]["state"]
        .as_str()
        .map(str::to_string)
}

fn kill9(pid: u32) {
    let ok = Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
    assert!(ok.success(), "kill -9 {pid}");
}

#[test]
fn instances_and_agents_survive_sigkill_without_duplicates() {
    // Not under /tmp: sandboxed instances get a private /tmp, so their workdirs live elsewhere.
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let data = dir.path().join("data");
    let up = Running::start_with("up", &data, &["--hosts", "1"]);
    let root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")));
    wait_until("host-1 sends heartbeats", Duration::from_secs(30), || {
        (state_of(&data, "host-1", "heartbeat").as_deref() == Some("running")).then_some(())
    });

    let cmd = "sleep 3171";
    // The default strategy: its own uid, cgroup and namespaces (as root; a plain process otherwise).
    let run = cli(&data, &["node", "run", "web", "--host", "host-1", "--pids", "64", "--", "sleep", "3171"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let first = wait_until("web runs", Duration::from_secs(30), || match pids_of(cmd).as_slice() {
        [one] => Some(*one),
        _ => None,
    });
    if root {
        let status = std::fs::read_to_string(format!("/proc/{first}/status")).expect("status");
        let uid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse().ok())
            .expect("uid");
        let node = cli(&data, &["-o", "json", "node", "get", "web"]);
        let node: serde_json::Value = serde_json::from_slice(&node.stdout).expect("json");
        let reserved = node["spec"]["run"]["uid"].as_u64().expect("the control plane reserved a uid");
        assert_eq!(u64::from(uid), reserved, "the instance runs as the uid reserved for it");
        assert!(uid >= 10_000_000, "a uid from the instances' range, not {uid}");
        assert!(status.lines().any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')), "{status}");
        let cgroup = std::fs::read_to_string(format!("/proc/{first}/cgroup")).expect("cgroup");
        assert!(cgroup.lines().any(|l| l.contains(":pids:/enjin/")), "its own cgroup: {cgroup}");
    }
    wait_until("web is observed running", Duration::from_secs(30), || {
        (state_of(&data, "web", "process").as_deref() == Some("running")).then_some(())
    });

    // SIGKILL the instance: restarted under its permanent policy.
    kill9(first);
    let second = wait_until("web is restarted", Duration::from_secs(30), || match pids_of(cmd).as_slice() {
        [one] if *one != first => Some(*one),
        _ => None,
    });

    // SIGKILL the host's agent: ring 0 restarts it, and the new agent adopts the running
    // instance instead of starting another.
    let agent_cmd =
        format!("{} agent --ring 1 --dir {}", common::BIN, data.join("hosts").join("host-1").display());
    let agent =
        wait_until("the agent runs", Duration::from_secs(10), || pids_of(&agent_cmd).first().copied());
    kill9(agent);
    let new_agent = wait_until("the agent is restarted", Duration::from_secs(30), || {
        pids_of(&agent_cmd).first().copied().filter(|p| *p != agent)
    });
    assert_ne!(new_agent, agent);
    wait_until("the new agent reports", Duration::from_secs(30), || {
        (state_of(&data, "host-1", "heartbeat").as_deref() == Some("running")).then_some(())
    });
    // For a while, exactly the same single instance.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(pids_of(cmd), vec![second], "the instance was duplicated or replaced");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A crash loop backs off and ends failed, and the host tells its parent (the store has it).
    let crashy = cli(
        &data,
        &[
            "node",
            "run",
            "crashy",
            "--host",
            "host-1",
            "--max-restarts",
            "2",
            "--period",
            "60",
            "--",
            "sh",
            "-c",
            "exit 1",
        ],
    );
    assert!(crashy.status.success(), "{}", stderr(&crashy));
    wait_until("crashy has failed", Duration::from_secs(30), || {
        (state_of(&data, "crashy", "process").as_deref() == Some("failed")).then_some(())
    });

    assert!(up.interrupt_and_clean().success());
    // A clean stop stops the hosts, and the hosts stop their children.
    wait_until("everything stopped", Duration::from_secs(20), || pids_of(cmd).is_empty().then_some(()));
}

/// Cut a host off (its veth down) and bring it back: it goes *disconnected*, never *lost*, its
/// instance keeps running, and when the link returns it is *running* again with the very same
/// instance — nothing killed, nothing doubled.
#[test]
fn a_partitioned_host_goes_disconnected_and_comes_back_without_harm() {
    let root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")));
    if !root {
        eprintln!("skipped: cutting a host's link needs root (network namespaces)");
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let data = dir.path().join("data");
    let up = Running::start_with("up", &data, &["--hosts", "1"]);
    wait_until("host-1 sends heartbeats", Duration::from_secs(30), || {
        (state_of(&data, "host-1", "heartbeat").as_deref() == Some("running")).then_some(())
    });
    let cmd = "sleep 3172";
    let run = cli(&data, &["node", "run", "app", "--host", "host-1", "--", "sleep", "3172"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let pid = wait_until("app runs", Duration::from_secs(30), || match pids_of(cmd).as_slice() {
        [one] => Some(*one),
        _ => None,
    });
    let host = cli(&data, &["-o", "json", "node", "get", "host-1"]);
    let host: serde_json::Value = serde_json::from_slice(&host.stdout).expect("json");
    let short: String =
        host["uuid"].as_str().expect("uuid").chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    let veth = format!("ejv-{short}");

    let link = |state: &str| {
        let ok = Command::new("ip").args(["link", "set", &veth, state]).status().expect("ip");
        assert!(ok.success(), "ip link set {veth} {state}");
    };
    link("down");
    wait_until("host-1 is disconnected", Duration::from_secs(40), || {
        (state_of(&data, "host-1", "heartbeat").as_deref() == Some("disconnected")).then_some(())
    });
    assert_eq!(pids_of(cmd), vec![pid], "the instance keeps running while its host is cut off");
    link("up");
    wait_until("host-1 is back", Duration::from_secs(60), || {
        (state_of(&data, "host-1", "heartbeat").as_deref() == Some("running")).then_some(())
    });
    assert_eq!(pids_of(cmd), vec![pid], "the same single instance after the partition");

    assert!(up.interrupt_and_clean().success());
    wait_until("everything stopped", Duration::from_secs(20), || pids_of(cmd).is_empty().then_some(()));
}
