//! Uids are allocated like ports: the control plane reserves one per instance in the
//! instance's create transaction, and the hosts run each instance as exactly that uid. With
//! twelve hosts (host labels that sort `host-1, host-10, host-11, host-12, host-2, …`), a restart
//! of `enjin up` and a new deploy, no two instances ever run as one uid. The data directory is
//! under /tmp on purpose: instances no longer see the host's /tmp or the data directory at all.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::{Running, cli, example_copy, root_or_skip, stderr};

/// Every ring 2 node of the app: uuid → reserved uid.
fn reserved(data: &Path) -> BTreeMap<String, u64> {
    let out = cli(data, &["-o", "json", "node", "list", "--ring", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|n| {
            let uuid = n["uuid"].as_str().expect("uuid").to_string();
            let uid =
                n["spec"]["run"]["uid"].as_u64().unwrap_or_else(|| panic!("node {uuid} has no uid: {n}"));
            (uuid, uid)
        })
        .collect()
}

/// The app's running programs on this machine, as `ps` would show them: for each `python3`
/// process in one of this cloud's instance cgroups, its instance (from the cgroup path) and uid.
fn running(hosts: &BTreeSet<String>) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        if !cmdline.starts_with(b"python3\0app.py") {
            continue;
        }
        let Ok(cgroup) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else { continue };
        let Some(path) = cgroup.lines().find_map(|l| l.split_once(":pids:").map(|(_, p)| p.to_string()))
        else {
            continue;
        };
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let [.., "enjin", host, instance] = parts.as_slice() else { continue };
        if !hosts.contains(*host) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let Some(uid) = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse().ok())
        else {
            continue;
        };
        found.push((instance.to_string(), uid));
    }
    found
}

/// Waits until every reserved instance runs, then checks: one uid per instance, the reserved
/// one, and no uid shared. Returns the uids in use.
fn check_no_shared_uid(data: &Path, hosts: &BTreeSet<String>, want: usize) -> BTreeSet<u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (nodes, procs) = loop {
        let nodes = reserved(data);
        let procs = running(hosts);
        let covered: BTreeSet<&String> = procs.iter().map(|(i, _)| i).collect();
        if nodes.len() == want && nodes.keys().all(|n| covered.contains(n)) && procs.len() == nodes.len() {
            break (nodes, procs);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until every instance runs as its uid: nodes {nodes:?}, processes {procs:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let uids: BTreeSet<u64> = nodes.values().copied().collect();
    assert_eq!(uids.len(), nodes.len(), "two instances reserved one uid: {nodes:?}");
    for (instance, uid) in &procs {
        assert_eq!(
            Some(&u64::from(*uid)),
            nodes.get(instance),
            "instance {instance} runs as {uid}: {nodes:?}"
        );
    }
    let running: BTreeSet<u32> = procs.iter().map(|(_, u)| *u).collect();
    assert_eq!(running.len(), procs.len(), "ps shows one uid twice: {procs:?}");
    uids
}

#[test]
fn twelve_hosts_a_restart_and_a_deploy_never_share_a_uid() {
    if !root_or_skip("sandboxed instances") {
        return;
    }
    // Under /tmp, which instances used to see privately: a data directory anywhere works.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let app = example_copy(dir.path());
    let up = Running::start_with("up", &data, &["--hosts", "12"]);
    let hosts: BTreeSet<String> = {
        let out = cli(&data, &["-o", "json", "node", "list", "--ring", "1"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|n| n["label"].as_str().is_some_and(|l| l.starts_with("host-")))
            .map(|n| n["uuid"].as_str().expect("uuid").to_string())
            .collect()
    };
    assert_eq!(hosts.len(), 12, "{hosts:?}");

    let deploy = || {
        let out = cli(&data, &["deploy", app.to_str().expect("utf-8")]);
        assert!(out.status.success(), "deploy: {}", stderr(&out));
    };
    deploy();
    let out = cli(&data, &["scale", "python-hello", "web=12"]);
    assert!(out.status.success(), "scale: {}", stderr(&out));
    let first = check_no_shared_uid(&data, &hosts, 12);

    // A restart of the control plane and every agent: each instance keeps its uid.
    up.interrupt();
    let up = Running::start_with("up", &data, &["--hosts", "12"]);
    let again = check_no_shared_uid(&data, &hosts, 12);
    assert_eq!(first, again, "a restart changed instances' uids");

    // A new release (the manifest's two instances), scaled to twelve again: new uids, none of
    // the released ones handed out again.
    deploy();
    let out = cli(&data, &["scale", "python-hello", "web=12"]);
    assert!(out.status.success(), "scale: {}", stderr(&out));
    let third = check_no_shared_uid(&data, &hosts, 12);
    assert!(third.is_disjoint(&first), "a released uid came back at once: {first:?} / {third:?}");
    up.interrupt_and_clean();
}
