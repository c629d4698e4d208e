//! What `enjin up` makes outside its data directory is its own: a newcomer who stops it,
//! removes the data directory and starts again gets a fresh cloud, and `enjin down --purge`
//! leaves nothing of one cloud behind while another one runs on. As root (namespaces, bridges,
//! cgroups); CI runs them as root.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Running, cli, root_or_skip, stderr, stdout, wait_until};

/// A second pair of ranges of this test process's own, apart from `common::own_range`'s.
fn other_ranges() -> (String, String) {
    let n = std::process::id();
    (format!("10.249.{}.0/24", n % 250 + 1), format!("10.{}.0.0/16", 96 + n % 64))
}

fn short(uuid: &str) -> String {
    uuid.chars().filter(char::is_ascii_alphanumeric).take(8).collect()
}

/// What a cloud has made on this machine, by name, read from its API while it runs.
#[derive(Debug, Default)]
struct Made {
    links: Vec<String>,
    namespaces: Vec<String>,
    cgroups: Vec<PathBuf>,
}

fn made(data: &Path) -> Made {
    let json = |args: &[&str]| -> serde_json::Value {
        let out = cli(data, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let mut m = Made::default();
    for n in json(&["-o", "json", "network", "list"])["items"].as_array().into_iter().flatten() {
        if n["ring"] == 1 {
            m.links.push(format!("ejb-{}", short(n["uuid"].as_str().expect("uuid"))));
        }
    }
    for n in json(&["-o", "json", "node", "list"])["items"].as_array().into_iter().flatten() {
        let uuid = n["uuid"].as_str().expect("uuid");
        match (n["ring"].as_u64(), n["spec"]["strategy"].as_str()) {
            (Some(1), Some("netns")) => {
                m.links.push(format!("ejv-{}", short(uuid)));
                m.namespaces.push(format!("enjin-{}", short(uuid)));
                for c in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
                    let dir = c.path().join("enjin").join(uuid);
                    if dir.is_dir() {
                        m.cgroups.push(dir);
                    }
                }
            }
            (Some(2), _) => m.namespaces.push(format!("eji-{}", short(uuid))),
            _ => {}
        }
    }
    m
}

fn links() -> String {
    let out = Command::new("ip").args(["-br", "link"]).output().expect("ip link");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn link_exists(name: &str) -> bool {
    links().lines().any(|l| l.split_whitespace().next().is_some_and(|n| n.split('@').next() == Some(name)))
}

/// Assert that nothing `m` names is left.
fn assert_gone(m: &Made, whose: &str) {
    let ns = namespaces();
    for l in &m.links {
        assert!(!link_exists(l), "{whose}: interface {l} is left:\n{}", links());
    }
    for n in &m.namespaces {
        assert!(!ns.contains(n), "{whose}: namespace {n} is left: {ns:?}");
    }
    for c in &m.cgroups {
        assert!(!c.exists(), "{whose}: cgroup {} is left", c.display());
    }
}

/// `enjin down --purge` for `data`, which must succeed.
fn down_purge(data: &Path) -> String {
    let out = cli(data, &["down", "--purge"]);
    assert!(out.status.success(), "enjin down --purge: {}{}", stdout(&out), stderr(&out));
    stdout(&out)
}

#[test]
fn up_starts_again_after_its_data_directory_is_removed() {
    if !root_or_skip("network namespaces") {
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let data = dir.path().join("data");
    let up = Running::start_with("up", &data, &["--hosts", "1"]);
    let first = made(&data);
    assert!(!first.links.is_empty() && !first.namespaces.is_empty(), "{first:?}");
    assert!(up.interrupt().success(), "Ctrl-C is a clean exit");
    // What a restart would adopt stays while the data directory does.
    assert!(first.links.iter().all(|l| link_exists(l)), "{first:?}\n{}", links());

    // A newcomer starts afresh: same ranges, new data directory.
    std::fs::remove_dir_all(&data).expect("remove the data directory");
    let again = Running::start_with("up", &data, &["--hosts", "1"]);
    // The gone cloud's bridge, veths and namespaces were reclaimed.
    assert_gone(&first, "the gone cloud");
    let second = made(&data);
    assert!(second.links.iter().all(|l| link_exists(l)), "{second:?}\n{}", links());

    drop(again);
    down_purge(&data);
    assert_gone(&second, "the second cloud");
    assert!(!data.exists(), "the data directory is purged");
}

#[test]
fn down_purge_removes_one_cloud_and_leaves_another_running() {
    if !root_or_skip("network namespaces") {
        return;
    }
    // Not under /tmp: sandboxed instances get a private /tmp.
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let up_a = Running::start_with("up", &a, &["--hosts", "1"]);
    let (hosts_b, instances_b) = other_ranges();
    let up_b = Running::start_in("up", &b, (&hosts_b, &instances_b), &["--hosts", "1"]);

    // An app on A: instances with their own namespaces and cgroups.
    let app = common::example_copy(dir.path());
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let deploy = cli(&a, &["deploy", app.to_str().expect("utf-8 path")]);
    assert!(deploy.status.success(), "{}{}", stdout(&deploy), stderr(&deploy));
    let of_a = wait_until("the app's instances have namespaces and cgroups", Duration::from_secs(60), || {
        let m = made(&a);
        let ns = namespaces();
        let instance_ns = m.namespaces.iter().any(|n| n.starts_with("eji-") && ns.contains(n));
        let cgroup = m
            .cgroups
            .iter()
            .any(|c| std::fs::read_dir(c).into_iter().flatten().flatten().any(|e| e.path().is_dir()));
        (instance_ns && cgroup).then_some(m)
    });
    let of_b = made(&b);
    assert!(of_a.namespaces.iter().any(|n| n.starts_with("eji-")), "{of_a:?}");

    let id_a = std::fs::read_to_string(a.join("cloud-id")).expect("A's cloud id");
    let said = down_purge(&a);
    assert!(said.contains("stopping enjin up"), "{said}");
    assert_gone(&of_a, "cloud A");
    assert!(!a.exists(), "A's data directory is purged");
    let record = Path::new("/run/enjin/clouds").join(format!("{}.json", id_a.trim()));
    assert!(!record.exists(), "A's record is forgotten");

    // B runs on, untouched.
    let ns = namespaces();
    for n in &of_b.namespaces {
        assert!(ns.contains(n), "B's namespace {n} is gone: {ns:?}");
    }
    for l in &of_b.links {
        assert!(link_exists(l), "B's interface {l} is gone:\n{}", links());
    }
    let list = cli(&b, &["node", "list"]);
    assert!(list.status.success(), "B still answers: {}", stderr(&list));

    // Again: nothing of A is left, and it says so.
    let again = cli(&a, &["down"]);
    assert!(!again.status.success(), "{}", stdout(&again));
    assert!(stderr(&again).contains("nothing to take down"), "{}", stderr(&again));

    drop(up_a);
    drop(up_b);
    down_purge(&b);
    assert_gone(&of_b, "cloud B");
    // A second `down` of a kept data directory is harmless.
    let kept = dir.path().join("kept");
    std::fs::create_dir_all(&kept).expect("mkdir");
    let out = cli(&kept, &["down"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("nothing of"), "{}", stdout(&out));
}

/// A crashed `enjin up` leaves its hosts' agents (and their instances) running, to be adopted
/// at its next start. Its data directory removed, another cloud's start leaves them alone, and
/// `enjin down` still finds the cloud by its recorded path and takes it apart.
#[test]
fn down_takes_apart_a_crashed_cloud_whose_data_directory_is_gone() {
    if !root_or_skip("network namespaces") {
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let data = dir.path().join("data");
    let up = Running::start_with("up", &data, &["--hosts", "1"]);
    let made = made(&data);
    let agent_dir = data.join("hosts").join("host-1");
    let agents = || {
        let needle = agent_dir.to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).split('\0').any(|a| a == needle))
            })
            .count()
    };
    wait_until("host-1's agent runs", Duration::from_secs(30), || (agents() > 0).then_some(()));
    up.crash();
    std::fs::remove_dir_all(&data).expect("remove the data directory");

    // Another cloud starts beside it and leaves the crashed one's running parts alone.
    let other = dir.path().join("other");
    let (hosts, instances) = other_ranges();
    let beside = Running::start_in("up", &other, (&hosts, &instances), &["--hosts", "1"]);
    assert!(agents() > 0, "the crashed cloud's agent was left running");
    for l in &made.links {
        assert!(link_exists(l), "the crashed cloud's interface {l} is kept while it runs:\n{}", links());
    }

    let out = cli(&data, &["down"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("stopped"), "{}", stdout(&out));
    assert_eq!(agents(), 0, "the agent is stopped");
    assert_gone(&made, "the crashed cloud");
    let again = cli(&data, &["down"]);
    assert!(stderr(&again).contains("nothing to take down"), "{}", stderr(&again));

    drop(beside);
    down_purge(&other);
}
