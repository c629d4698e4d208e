//! What a long life of deploys leaves behind, for real, as root: one app deployed and rolled
//! back again and again (each a rollout that starts a new sandboxed instance and removes the
//! old one), then the data directory, the cgroups and the loop devices are measured. Nothing
//! may grow with the number of rollouts but the store's history (one release per rollout) and
//! the logs of retired instances, which the host keeps for a bounded number of them.
//!
//! `ENJIN_CLEANUP_CYCLES` sets the number of deploy + rollback cycles (default
//! [`DEFAULT_CYCLES`]; each takes about 5–6 s, mostly the 2 s drain of each rollout).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Running, cli, heartbeat, root_or_skip, stderr, stdout};

/// Cycles when `ENJIN_CLEANUP_CYCLES` is not set: a hundred deploys and a hundred rollbacks,
/// about nine minutes.
const DEFAULT_CYCLES: usize = 100;
/// The host keeps the logs of at most this many retired instances (the agent's
/// `CollectorConfig::new().max_retired`).
const MAX_RETIRED_LOGS: usize = 64;
const MIB: u64 = 1 << 20;

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

/// The live instances of `app` (node uuids).
fn instances(data: &Path, app: &str) -> BTreeSet<String> {
    let out = cli(data, &["-o", "json", "node", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["spec"]["run"]["env"]["ENJIN_APP"] == app)
        .filter_map(|n| n["uuid"].as_str().map(str::to_string))
        .collect()
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// Files and allocated bytes of one part of the data directory.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Usage {
    files: usize,
    dirs: usize,
    bytes: u64,
}

/// The data directory by part: the store (`state.db*`), the instances' logs, and the rest.
#[derive(Debug, Default, Clone)]
struct Measure {
    parts: BTreeMap<&'static str, Usage>,
    /// Children with logs on the host.
    logged_children: usize,
    host_packages: usize,
    instance_dirs: usize,
    cgroups: usize,
    loop_devices: usize,
    /// Files by allocated size, largest first.
    largest: Vec<(u64, String)>,
}

impl Measure {
    fn of(data: &Path, host: &str) -> Measure {
        let mut m = Measure::default();
        let mut stack = vec![data.to_path_buf()];
        while let Some(p) = stack.pop() {
            let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
            let rel = p.strip_prefix(data).map(Path::to_path_buf).unwrap_or_default();
            let rel = rel.to_string_lossy();
            let part = if rel.starts_with("state.db") {
                "store"
            } else if rel.starts_with("hosts/host-1/children/logs") {
                "logs"
            } else if rel.starts_with("hosts/logs") {
                "agent-logs"
            } else if rel.starts_with("hosts/host-1/instances") {
                "instances"
            } else if rel.starts_with("hosts/host-1/packages") || rel.starts_with("packages") {
                "packages"
            } else {
                "other"
            };
            let u = m.parts.entry(part).or_default();
            if meta.is_dir() {
                u.dirs += 1;
                for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                    stack.push(e.path());
                }
            } else {
                u.files += 1;
                u.bytes += meta.blocks() * 512;
                m.largest.push((meta.blocks() * 512, rel.into_owned()));
            }
        }
        m.largest.sort_unstable_by(|a, b| b.cmp(a));
        m.largest.truncate(6);
        let logs = data.join("hosts/host-1/children/logs");
        m.logged_children = names_in(&logs)
            .iter()
            .filter_map(|n| n.split('.').next()?.parse::<uuid::Uuid>().ok())
            .collect::<BTreeSet<_>>()
            .len();
        m.host_packages = names_in(&data.join("hosts/host-1/packages")).len();
        m.instance_dirs = names_in(&data.join("hosts/host-1/instances")).len();
        m.cgroups = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|c| {
                names_in(&c.path().join("enjin").join(host))
                    .iter()
                    .filter(|n| n.parse::<uuid::Uuid>().is_ok())
                    .count()
            })
            .max()
            .unwrap_or(0);
        let needle = data.to_string_lossy().into_owned();
        m.loop_devices = std::fs::read_dir("/sys/block")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|b| {
                std::fs::read_to_string(b.path().join("loop/backing_file"))
                    .is_ok_and(|f| f.starts_with(&needle))
            })
            .count();
        m
    }

    fn part(&self, name: &str) -> Usage {
        self.parts.get(name).copied().unwrap_or_default()
    }

    fn files(&self) -> usize {
        self.parts.values().map(|u| u.files).sum()
    }

    fn bytes(&self) -> u64 {
        self.parts.values().map(|u| u.bytes).sum()
    }

    fn show(&self, when: &str) {
        eprintln!(
            "{when}: {} files, {} KiB allocated; {:?}; children with logs {}, host packages {}, instance dirs {}, cgroups {}, loop devices {}; largest {:?}",
            self.files(),
            self.bytes() / 1024,
            self.parts,
            self.logged_children,
            self.host_packages,
            self.instance_dirs,
            self.cgroups,
            self.loop_devices,
            self.largest,
        );
    }
}

#[test]
fn deploy_and_rollback_leave_the_data_directory_bounded() {
    if !root_or_skip("the unix-user sandbox") {
        return;
    }
    let cycles: usize = std::env::var("ENJIN_CLEANUP_CYCLES")
        .ok()
        .map(|v| v.parse().expect("ENJIN_CLEANUP_CYCLES is a number"))
        .unwrap_or(DEFAULT_CYCLES);
    // The baseline: after 10 cycles, or half of a shorter run.
    let baseline_at = 10.min(cycles / 2).max(1);
    assert!(cycles > baseline_at, "ENJIN_CLEANUP_CYCLES must be at least 2");

    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let data = dir.path().join("data");
    let up = Running::start_with("up", &data, &["--hosts", "1"]);
    wait_for("host-1 sends heartbeats", Duration::from_secs(60), || heartbeat(&data, "host-1"));
    let host = uuid_of(&data, "host-1");

    let app = dir.path().join("bystander");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bystander");
    std::fs::create_dir_all(&app).expect("mkdir");
    for f in ["app.py", "enjin.toml"] {
        std::fs::copy(fixture.join(f), app.join(f)).expect("copy the fixture");
    }
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let run = |args: &[&str]| {
        let out = cli(&data, args);
        assert!(out.status.success(), "enjin {args:?}: {}{}", stdout(&out), stderr(&out));
    };
    let app_arg = app.to_str().expect("utf-8 path").to_string();
    // Two packages in turn, so the host unpacks and removes packages as well as instances.
    let deploy = |n: usize| {
        std::fs::write(app.join("marker"), format!("{}\n", n % 2)).expect("marker");
        run(&["deploy", &app_arg]);
    };
    deploy(0);

    // Everything the rollouts replaced is gone: one instance, its package, its cgroup, its disk
    // (two loop devices: the mounted image and the next start's, attached ahead).
    let settle = |when: &str| -> Measure {
        let live = instances(&data, "bystander");
        assert_eq!(live.len(), 1, "{when}: one live instance: {live:?}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let last = Measure::of(&data, &host);
            if last.instance_dirs == 1
                && last.host_packages == 1
                && last.cgroups == 1
                && last.loop_devices <= 2
            {
                return last;
            }
            assert!(
                Instant::now() < deadline,
                "{when}: what replaced instances left is not removed within 60 s: {last:?}; live: {live:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    let started = Instant::now();
    let mut baseline = None;
    for i in 1..=cycles {
        deploy(i);
        run(&["rollback", "bystander"]);
        if i == baseline_at {
            let m = settle(&format!("after {i} cycles"));
            m.show(&format!("after {i} cycles"));
            baseline = Some(m);
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{cycles} deploy + rollback cycles in {elapsed:?}, {:?} per cycle",
        elapsed / u32::try_from(cycles).unwrap_or(1)
    );
    let end = settle(&format!("after {cycles} cycles"));
    end.show(&format!("after {cycles} cycles"));
    let base = baseline.expect("a baseline");

    // Nothing but the store's history and logs grows with rollouts: the same files, about the
    // same bytes.
    for (part, slack) in [("other", 256 * 1024), ("instances", 8 * MIB), ("packages", 256 * 1024)] {
        let (b, e) = (base.part(part), end.part(part));
        assert!(
            e.files <= b.files + 4 && e.dirs <= b.dirs + 2,
            "{part}: {} files in {} dirs after {baseline_at} cycles, {} in {} after {cycles}",
            b.files,
            b.dirs,
            e.files,
            e.dirs
        );
        assert!(e.bytes <= b.bytes + slack, "{part}: {} KiB → {} KiB", b.bytes / 1024, e.bytes / 1024);
    }
    // Every rollout retires an instance; the host keeps the logs of at most 64 of them once
    // they have been quiet for 30 s (the collector's retire_after).
    let limit = MAX_RETIRED_LOGS + 1;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut end = end;
    while end.logged_children > limit {
        assert!(
            Instant::now() < deadline,
            "logs of {} children are still kept, more than {MAX_RETIRED_LOGS} retired + 1 live",
            end.logged_children
        );
        // Polled: the collector lets a child's logs go 30 s after its last output, and each
        // measure walks the whole data directory, so once a second is enough.
        std::thread::sleep(Duration::from_secs(1));
        end = Measure::of(&data, &host);
    }
    let logs = end.part("logs");
    assert!(logs.files <= 4 * limit + 2, "{logs:?}");
    assert!(logs.bytes <= 8 * MIB, "{logs:?}");
    // The hosts' and the edge's own logs (`hosts/logs/`, a few lines per rollout).
    let (b, e) = (base.part("agent-logs"), end.part("agent-logs"));
    let more = (cycles - baseline_at) as u64;
    eprintln!(
        "agent logs: {} KiB → {} KiB, {} bytes per cycle",
        b.bytes / 1024,
        e.bytes / 1024,
        e.bytes.saturating_sub(b.bytes) / more
    );
    assert!(e.files <= b.files, "agent logs: {b:?} → {e:?}");
    assert!(e.bytes <= b.bytes + more * 64 * 1024, "agent logs: {b:?} → {e:?}");
    // The store holds two releases per cycle: it may grow, but by little per release.
    let (b, e) = (base.part("store"), end.part("store"));
    eprintln!(
        "store: {} KiB → {} KiB, {} bytes per release",
        b.bytes / 1024,
        e.bytes / 1024,
        e.bytes.saturating_sub(b.bytes) / (2 * more)
    );
    assert!(e.bytes <= b.bytes + 8 * MIB + 2 * more * 64 * 1024, "store {b:?} → {e:?}");

    assert!(up.interrupt_and_clean().success());
}
