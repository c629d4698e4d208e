//! Supervision end to end, from the binary: `enjin up` runs a ring 1 host (in its own network
//! namespace as root), the host runs a ring 2 node, and both survive SIGKILL under their
//! restart policies — the instance restarted, the agent restarted and its child re-adopted,
//! never a second copy.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Running, cli, stderr};

/// Pids of processes whose command line is exactly `cmdline` (arguments joined by spaces).
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
        if args.join(" ") == cmdline {
            out.push(pid);
        }
    }
    out
}

fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
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
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let up = Running::start_with("up", &data, &["--hosts", "1"]);
    wait_until("host-1 sends heartbeats", Duration::from_secs(30), || {
        (state_of(&data, "host-1", "heartbeat").as_deref() == Some("running")).then_some(())
    });

    let cmd = "sleep 3171";
    let run = cli(
        &data,
        &["node", "run", "web", "--host", "host-1", "--strategy", "process", "--", "sleep", "3171"],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let first = wait_until("web runs", Duration::from_secs(30), || match pids_of(cmd).as_slice() {
        [one] => Some(*one),
        _ => None,
    });
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

    let all = cli(&data, &["-o", "json", "node", "list"]);
    let all: serde_json::Value = serde_json::from_slice(&all.stdout).expect("json");
    let nets = cli(&data, &["-o", "json", "network", "list"]);
    let nets: serde_json::Value = serde_json::from_slice(&nets.stdout).expect("json");
    assert!(up.interrupt().success());
    // A clean stop stops the hosts, and the hosts stop their children.
    wait_until("everything stopped", Duration::from_secs(20), || pids_of(cmd).is_empty().then_some(()));
    common::remove_host_networks(&all, &nets);
}
