//! Hostile tenants against the `unix-user` sandbox, for real, as root: `enjin up` in a temporary
//! data directory under /var/tmp, small hostile apps from `tests/fixtures/` deployed with
//! `enjin deploy`, each attempt's outcome printed by the app as `RESULT key=value` and read back
//! with `enjin logs`. docs/security.md says what each layer must contain; these tests are its
//! evidence, and each assertion fails if the protection it names breaks:
//!
//! - `instances_cannot_reach_each_other_or_the_system` — `enjin node run` instances: another
//!   instance's files, processes, the system, setuid, memory and pids limits;
//! - `links_planted_before_a_restart_are_never_followed` — links, a FIFO and hard links
//!   planted in the writable layer, then a crash and a restart, then a rolling restart;
//! - `an_app_cannot_read_another_apps_files` — every path to another app's package, layer,
//!   `/tmp` and processes;
//! - `denied_syscalls_answer_eperm_and_the_instance_lives_on` — the seccomp policy, entry by
//!   entry, against a control run without it; capabilities, no_new_privs, user namespaces;
//! - `dev_holds_only_the_minimal_set` — `/dev` and every host device;
//! - `writes_past_the_disk_quota_fail_and_the_platform_carries_on` — the disk quota, `/tmp`
//!   and `/dev/shm` bounds, and the platform after a tenant filled its disk;
//! - `output_past_the_disk_quota_does_not_fill_the_hosts_disk` — stdout, the one write to the
//!   host's disk outside the instance's image;
//! - `nothing_in_the_data_directory_is_open_to_other_uids` — the data directory walked as
//!   `nobody` and as every instance's uid, and its modes.
//!
//! Without root they print "skipped" and pass: the sandbox needs root.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Running, cli, heartbeat, root_or_skip, stderr, stdout};

const MIB: u64 = 1 << 20;

macro_rules! require_root {
    () => {
        if !root_or_skip("the unix-user sandbox") {
            return;
        }
    };
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A name no other test run on this machine uses at the same time.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{nanos:09}", std::process::id())
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Runs `cmd`, killing it and failing the test after `limit`.
fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let (mut out, mut err) = (child.stdout.take().expect("stdout"), child.stderr.take().expect("stderr"));
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}

/// `sha256sum` of a host file.
fn sha256(path: &Path) -> String {
    let out = output_within(Command::new("sha256sum").arg(path), Duration::from_secs(10));
    assert!(out.status.success(), "sha256sum {}: {}", path.display(), stderr(&out));
    stdout(&out).split_whitespace().next().unwrap_or_default().to_string()
}

/// Copies a flat fixture directory; everything readable by every uid (the tests run host tools
/// from it as other uids).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for entry in std::fs::read_dir(from).expect("read fixture").flatten() {
        let meta = entry.metadata().expect("stat");
        let dst = to.join(entry.file_name());
        if meta.is_dir() {
            copy_dir(&entry.path(), &dst);
        } else {
            std::fs::copy(entry.path(), &dst).expect("copy fixture");
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
    }
}

/// One start of one instance, as its `RESULT key=value` lines tell it (a later value of a key
/// replaces an earlier one).
#[derive(Debug, Default, Clone)]
struct Run {
    instance: String,
    results: BTreeMap<String, String>,
}

impl Run {
    fn get(&self, key: &str) -> &str {
        self.results.get(key).map_or("<missing>", String::as_str)
    }

    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.results.iter().filter_map(move |(k, v)| k.strip_prefix(prefix).map(|k| (k, v.as_str())))
    }
}

/// `enjin logs` lines (`<time> <instance>[!]  <text>`) into runs: a `RESULT start=…` line begins
/// a new run of its instance.
fn parse_runs(logs: &str) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut current: BTreeMap<String, usize> = BTreeMap::new();
    for line in logs.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(_), Some(instance), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let instance = instance.trim_end_matches('!');
        let Some((key, value)) = rest.trim_start().strip_prefix("RESULT ").and_then(|kv| kv.split_once('='))
        else {
            continue;
        };
        if key == "start" || !current.contains_key(instance) {
            runs.push(Run { instance: instance.to_string(), results: BTreeMap::new() });
            current.insert(instance.to_string(), runs.len() - 1);
        }
        runs[current[instance]].results.insert(key.to_string(), value.to_string());
    }
    runs
}

/// An instance of an app, as the control plane recorded it.
#[derive(Debug, Clone)]
struct Instance {
    uuid: String,
    label: String,
    uid: u32,
    digest: String,
}

impl Instance {
    fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }
}

/// `enjin up` with one host, in a temporary directory of its own.
struct Cloud {
    dir: tempfile::TempDir,
    data: PathBuf,
    router: SocketAddr,
    up: Option<Running>,
}

impl Cloud {
    fn start() -> Cloud {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        // Searchable by every uid: the data directory's own modes must be what keeps them out.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let data = dir.path().join("data");
        let up = Running::start_with("up", &data, &["--hosts", "1"]);
        let router = up.router.expect("enjin up printed its router");
        wait_for("host-1 sends heartbeats", Duration::from_secs(60), || heartbeat(&data, "host-1"));
        Cloud { dir, data, router, up: Some(up) }
    }

    /// A copy of fixture `fixture` named `name`, with `env` added to its manifest's `[env]`
    /// (the last table of every fixture's manifest).
    fn app_as(&self, fixture: &str, name: &str, env: &[(&str, &str)]) -> PathBuf {
        let dst = self.dir.path().join("apps").join(name);
        copy_dir(&fixtures().join(fixture), &dst);
        let manifest = dst.join("enjin.toml");
        let text = std::fs::read_to_string(&manifest).expect("manifest");
        let last_table = text.lines().rfind(|l| l.trim_start().starts_with('['));
        assert_eq!(
            last_table.map(str::trim),
            Some("[env]"),
            "{fixture}: [env] must be the manifest's last table"
        );
        let mut text = text.replace(&format!("name = \"{fixture}\""), &format!("name = \"{name}\""));
        for (k, v) in env {
            text.push_str(&format!("{k} = {}\n", toml_string(v)));
        }
        std::fs::write(&manifest, text).expect("write manifest");
        dst
    }

    fn app(&self, fixture: &str, env: &[(&str, &str)]) -> PathBuf {
        self.app_as(fixture, fixture, env)
    }

    fn deploy(&self, dir: &Path) {
        let started = Instant::now();
        let out = cli(&self.data, &["deploy", dir.to_str().expect("utf-8 path")]);
        assert!(
            out.status.success(),
            "enjin deploy {} failed: {}{}",
            dir.display(),
            stdout(&out),
            stderr(&out)
        );
        eprintln!("deployed {} in {:?}", dir.display(), started.elapsed());
    }

    /// `enjin deploy DIR --account ACCOUNT`.
    fn deploy_as(&self, dir: &Path, account: &str) {
        let out = cli(&self.data, &["deploy", dir.to_str().expect("utf-8 path"), "--account", account]);
        assert!(
            out.status.success(),
            "enjin deploy {} as {account} failed: {}{}",
            dir.display(),
            stdout(&out),
            stderr(&out)
        );
    }

    /// An app's instances' addresses (`ip:port`), as `enjin app status` shows them.
    fn addresses(&self, app: &str) -> Vec<SocketAddr> {
        let out = cli(&self.data, &["-o", "json", "app", "status", app]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["address"].as_str()?.parse().ok())
            .collect()
    }

    /// An app's instances' labels, as `enjin app status` shows them.
    fn instance_labels(&self, app: &str) -> Vec<String> {
        let out = cli(&self.data, &["-o", "json", "app", "status", app]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| Some(i["label"].as_str()?.to_string()))
            .collect()
    }

    fn logs(&self, app: &str) -> String {
        let out = cli(&self.data, &["logs", app, "--tail", "10000"]);
        if out.status.success() { stdout(&out) } else { String::new() }
    }

    /// Waits until `n` runs of `app` have reported `key`; all of its runs so far.
    fn wait_runs(&self, app: &str, key: &str, n: usize, limit: Duration) -> Vec<Run> {
        let deadline = Instant::now() + limit;
        loop {
            let logs = self.logs(app);
            let runs = parse_runs(&logs);
            if runs.iter().filter(|r| r.results.contains_key(key)).count() >= n {
                return runs;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} runs of {app} to report {key}; its logs:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn nodes(&self) -> Vec<serde_json::Value> {
        let out = cli(&self.data, &["-o", "json", "node", "list"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("node list json");
        v["items"].as_array().cloned().unwrap_or_default()
    }

    fn instances(&self, app: &str) -> Vec<Instance> {
        self.nodes()
            .iter()
            .filter(|n| n["spec"]["run"]["env"]["ENJIN_APP"] == app)
            .map(|n| Instance {
                uuid: n["uuid"].as_str().expect("uuid").to_string(),
                label: n["label"].as_str().expect("label").to_string(),
                uid: n["spec"]["run"]["uid"]
                    .as_u64()
                    .and_then(|u| u32::try_from(u).ok())
                    .expect("an instance has spec.run.uid"),
                digest: n["spec"]["run"]["package"]["digest"].as_str().expect("package digest").to_string(),
            })
            .collect()
    }

    /// A GET through the router.
    fn get(&self, app: &str, path: &str) -> (u16, String) {
        get(self.router, app, path)
    }

    fn host_dir(&self) -> PathBuf {
        self.data.join("hosts/host-1")
    }

    fn stop(mut self) {
        if let Some(up) = self.up.take() {
            assert!(up.interrupt_and_clean().success(), "enjin up stopped cleanly");
        }
    }
}

impl Drop for Cloud {
    /// A test that failed part-way: stop `enjin up` (its own drop sends SIGINT) and remove the
    /// network namespace, veth, bridge and cgroups of its host, as `interrupt_and_clean` does,
    /// without panicking again.
    fn drop(&mut self) {
        let Some(up) = self.up.take() else { return };
        let json = |args: &[&str]| -> serde_json::Value {
            serde_json::from_slice(&cli(&self.data, args).stdout).unwrap_or_default()
        };
        let (nodes, networks) =
            (json(&["-o", "json", "node", "list"]), json(&["-o", "json", "network", "list"]));
        drop(up);
        let short = |u: &str| u.chars().filter(char::is_ascii_alphanumeric).take(8).collect::<String>();
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        for n in nodes["items"].as_array().into_iter().flatten() {
            let uuid = n["uuid"].as_str().unwrap_or_default();
            quiet(&["link", "del", &format!("ejv-{}", short(uuid))]);
            quiet(&["netns", "del", &format!("enjin-{}", short(uuid))]);
            quiet(&["netns", "del", &format!("eji-{}", short(uuid))]);
            for controller in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
                let host = controller.path().join("enjin").join(uuid);
                for inst in std::fs::read_dir(&host).into_iter().flatten().flatten() {
                    let _ = std::fs::remove_dir(inst.path());
                }
                let _ = std::fs::remove_dir(&host);
            }
        }
        for n in networks["items"].as_array().into_iter().flatten() {
            quiet(&["link", "del", &format!("ejb-{}", short(n["uuid"].as_str().unwrap_or_default()))]);
        }
    }
}

fn get(router: SocketAddr, app: &str, path: &str) -> (u16, String) {
    let out = output_within(
        Command::new("curl")
            .args(["-s", "-m", "5", "-w", "\n%{http_code}", "-H", &format!("Host: {app}.localhost")])
            .arg(format!("http://{router}{path}")),
        Duration::from_secs(10),
    );
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Host pids of the processes of instance `label` of `app` (by their environment).
fn host_pids(app: &str, label: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else { continue };
        let vars: BTreeSet<&[u8]> = env.split(|b| *b == 0).collect();
        if vars.contains(format!("ENJIN_INSTANCE={label}").as_bytes())
            && vars.contains(format!("ENJIN_APP={app}").as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

/// Everything under `root` as root sees it, without following links.
fn walk(root: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                stack.push(e.path());
            }
        }
        out.push((p, meta));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A file's contents, mode, owner and modification time (seconds, nanoseconds).
type FileState = (Vec<u8>, u32, u32, i64, i64);

/// The state of host files, to show nothing changed them.
fn snapshot(paths: &[PathBuf]) -> BTreeMap<PathBuf, Option<FileState>> {
    paths
        .iter()
        .map(|p| {
            let state = std::fs::symlink_metadata(p).ok().map(|m| {
                (std::fs::read(p).unwrap_or_default(), m.mode(), m.uid(), m.mtime(), m.mtime_nsec())
            });
            (p.clone(), state)
        })
        .collect()
}

/// Entries of /etc (and the data directory) whose name holds `marker`.
fn planted_on_host(data: &Path, marker: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/etc")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(marker)))
        .collect();
    found.extend(walk(data).into_iter().map(|(p, _)| p).filter(|p| p.to_string_lossy().contains(marker)));
    found
}

/// The names an instance's host directory may hold: disk images, two empty mount points and
/// the name of the package its overlay uses (docs/security.md, "The data directory").
fn check_instance_dir(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = std::fs::symlink_metadata(entry.path()).expect("stat");
        assert!(!meta.file_type().is_symlink(), "{} is a link", entry.path().display());
        match name.as_str() {
            "disk" | "root" => {
                assert!(meta.is_dir(), "{name} is a mount point directory");
                let inside: Vec<_> = std::fs::read_dir(entry.path()).expect("read").flatten().collect();
                assert!(inside.is_empty(), "{} holds {:?} on the host", entry.path().display(), inside);
            }
            "disk.img" | "package" | "next.tmp" => assert!(meta.is_file(), "{name} is a file"),
            // The instance's resolvers, world-readable for its uid through the jail's mount
            // (inside this 0700 directory, so no other uid reaches it).
            "resolv.conf" => {
                assert!(meta.is_file(), "{name} is a file");
                assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o644), "{name} is root's, read-only");
                continue;
            }
            // The next start's image, formatted ahead.
            n if n.starts_with("next") && n.ends_with(".img") => assert!(meta.is_file(), "{name} is a file"),
            other => panic!("{} holds an unexpected {other}", dir.display()),
        }
        assert_eq!((meta.uid(), meta.mode() & 0o077), (0, 0), "{} is root's alone", entry.path().display());
    }
}

/// Nothing of the instance's layers is mounted where the host (and this test) can see it.
fn check_not_mounted(instance_dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let needle = instance_dir.to_string_lossy();
    let found: Vec<&str> = mounts.lines().filter(|l| l.contains(needle.as_ref())).collect();
    assert!(found.is_empty(), "the host's mount namespace shows the instance's mounts: {found:?}");
}

// ---------------------------------------------------------------------------------------------

/// `enjin node run` instances: another instance's files and processes, the system, a setuid
/// binary, PID 1, and the memory and pids limits.
#[test]
fn instances_cannot_reach_each_other_or_the_system() {
    require_root!();
    let cloud = Cloud::start();
    let data = cloud.data.clone();
    let host = uuid_of(&data, "host-1");
    let u = unique("enjin-x");

    // A sleep no other process on the machine runs, to find bee's pid by.
    let sleep_arg = format!("3600.{}", std::process::id());
    let b = node_run(&data, "bee", &[], &format!("echo s3cret > secret; echo ready; exec sleep {sleep_arg}"));
    wait_for("bee is ready", Duration::from_secs(30), || node_log(&data, &b).contains("ready"));
    let b_dir = cloud.host_dir().join(format!("instances/{b}"));
    let b_pid = std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                c == format!("sleep\0{sleep_arg}\0").as_bytes()
                    || c == format!("/usr/bin/sleep\0{sleep_arg}\0").as_bytes()
            })
        })
        .expect("bee's process");
    let script = format!(
        "cat {b}/secret >/dev/null 2>&1 && echo read:LEAK || echo read:denied; \\
         cat {b}/root/app/secret >/dev/null 2>&1 && echo root:LEAK || echo root:denied; \\
         cat /proc/{b_pid}/root/app/secret >/dev/null 2>&1 && echo proc:LEAK || echo proc:denied; \\
         (echo x > {b}/planted) 2>/dev/null && echo plant:LEAK || echo plant:denied; \\
         kill -9 {b_pid} 2>/dev/null && echo kill:LEAK || echo kill:denied; \\
         for p in /etc/{u} /usr/{u} /opt/{u}; do (echo x > $p) 2>/dev/null && echo write:LEAK:$p || echo write:denied; done; \\
         echo x > /var/tmp/{u} && echo vartmp:own; \\
         echo x > /tmp/{u} && echo tmp:ok; echo x > ./{u} && echo home:ok; \\
         echo suid:$(LD_SHOW_AUXV=1 /usr/bin/mount 2>&1 | grep -c '^AT_SECURE: *0'); \\
         echo pid1:$(cat /proc/1/comm); \\
         echo done; exec sleep 1000",
        b = b_dir.display(),
    );
    let a = node_run(&data, "ay", &[], &script);
    wait_for("ay has tried everything", Duration::from_secs(30), || node_log(&data, &a).contains("done"));
    let out = node_log(&data, &a);
    assert!(!out.contains("LEAK"), "an instance reached what it must not: {out}");
    for expected in [
        "read:denied",
        "root:denied",
        "proc:denied",
        "plant:denied",
        "kill:denied",
        "vartmp:own",
        "tmp:ok",
        "home:ok",
        "pid1:enjin-init",
    ] {
        assert!(out.contains(expected), "missing {expected}: {out}");
    }
    // A setuid-root binary ran without raising privileges: the loader was not in secure mode.
    assert!(out.contains("suid:1"), "a setuid binary ran privileged: {out}");
    // What ay wrote stayed in its own sandbox: /var/tmp and /tmp are its own /tmp.
    for p in [
        format!("/var/tmp/{u}"),
        format!("/tmp/{u}"),
        format!("/etc/{u}"),
        format!("/usr/{u}"),
        format!("/opt/{u}"),
    ] {
        assert!(!Path::new(&p).exists(), "an instance's write reached the host's {p}");
    }
    // bee is alive, and nothing of its writable layer (its secret, ay's plant) is on the host.
    assert!(Path::new(&format!("/proc/{b_pid}")).exists(), "bee's process survived ay");
    check_instance_dir(&b_dir);
    check_not_mounted(&b_dir);

    // Memory: an instance over its limit is OOM-killed inside its own cgroup.
    let hog = node_run(
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
    let bomb = node_run(
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

    cloud.stop();
}

fn uuid_of(data: &Path, label: &str) -> String {
    let out = cli(data, &["-o", "json", "node", "get", label]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["uuid"].as_str().expect("uuid").to_string()
}

/// What a `node run` instance printed: the collected log (the raw file's consumed part is
/// punched out by the collector), and the raw file's rest.
fn node_log(data: &Path, uuid: &str) -> String {
    let logs = data.join("hosts/host-1/children/logs");
    let collected = std::fs::read_to_string(logs.join(format!("{uuid}.log"))).unwrap_or_default();
    let raw = std::fs::read(logs.join(format!("{uuid}.stdout.log"))).unwrap_or_default();
    let raw: Vec<u8> = raw.into_iter().filter(|b| *b != 0).collect();
    format!("{collected}\n{}", String::from_utf8_lossy(&raw))
}

fn node_run(data: &Path, label: &str, extra: &[&str], script: &str) -> String {
    let mut args = vec!["node", "run", label, "--host", "host-1"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let out = cli(data, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    uuid_of(data, label)
}

/// A v1 cgroup file of the instance, e.g. memory.oom_control.
fn cgroup_file(controller: &str, host: &str, uuid: &str, file: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/cgroup/{controller}/enjin/{host}/{uuid}/{file}"))
}

// ---------------------------------------------------------------------------------------------

/// An app replaces its packaged files with links to /etc and the data directory, plants a
/// directory link to /, links named like the host's own files, a FIFO named like a packaged
/// file and hard links to host files, then crashes; the host's agent restarts it. Root never
/// follows any of it, no host file changes, the package on the host is untouched, and the
/// restarted instance sees a fresh /app. A rolling restart then removes the instance with the
/// links still in its image, again without following them.
#[test]
fn links_planted_before_a_restart_are_never_followed() {
    require_root!();
    let cloud = Cloud::start();
    let data = cloud.data.clone();
    let pwned = unique("enjin-pwned");
    let host_dir = cloud.host_dir();
    let watched: Vec<PathBuf> =
        ["/etc/passwd", "/etc/shadow", "/etc/group", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf"]
            .iter()
            .map(PathBuf::from)
            .chain(
                ["admin.token", "keys/ring-1-parent.key", "pki/ring-1-ca.key", "pki/ring-1-ca.crt"]
                    .iter()
                    .map(|p| data.join(p)),
            )
            .chain(["agent.json", "bus.key", "tls.key"].iter().map(|p| host_dir.join(p)))
            .collect();
    let before = snapshot(&watched);

    let app = cloud.app("hostile-links", &[("PWNED", &pwned), ("DATA_DIR", data.to_str().expect("utf-8"))]);
    let packaged = ["app.py", "data.txt", "enjin.toml"];
    let sums: BTreeMap<&str, String> =
        packaged.iter().map(|f| (*f, format!("sha256:{}", sha256(&app.join(f))))).collect();
    cloud.deploy(&app);
    let runs = cloud.wait_runs("hostile-links", "planted", 1, Duration::from_secs(30));
    let first = runs[0].clone();
    for f in packaged {
        assert_eq!(first.get(&format!("seen.{f}")), sums[f], "the first start sees the package: {first:?}");
    }
    // The attack really happened: every link and the FIFO were planted …
    for (key, value) in first.with_prefix("plant.") {
        if key.starts_with("hardlink") {
            // … and no hard link to a host file could be made (another filesystem).
            assert_ne!(value, "ok", "plant.{key}: a hard link to a host file was made");
        } else {
            assert_eq!(value, "ok", "plant.{key} failed, so the test proves nothing: {first:?}");
        }
    }
    // Writes through the links reach nothing of the host.
    for (key, value) in first.with_prefix("write.") {
        assert!(value == "EROFS" || value == "ENOENT", "write.{key} = {value}");
    }
    let instances = cloud.instances("hostile-links");
    assert_eq!(instances.len(), 1, "{instances:?}");
    let inst = instances[0].clone();
    let inst_dir = host_dir.join("instances").join(&inst.uuid);

    // Crash: the agent restarts the instance with the links in its writable layer.
    let (code, body) = cloud.get("hostile-links", "/exit");
    assert_eq!(code, 200, "{body}");
    let runs = cloud.wait_runs("hostile-links", "planted", 2, Duration::from_secs(60));
    let second = runs.last().expect("a second run").clone();
    assert_ne!(second.get("start"), first.get("start"), "a second start");
    assert_eq!(second.instance, first.instance, "the same instance, restarted by its host");
    assert_eq!(cloud.instances("hostile-links")[0].uuid, inst.uuid, "the same node");
    for f in packaged {
        assert_eq!(
            second.get(&format!("seen.{f}")),
            sums[f],
            "the restarted instance sees the package again: {second:?}"
        );
    }
    assert_eq!(second.get("seen.app_extra"), "-", "the planted links are gone from /app: {second:?}");
    assert_eq!(second.get("seen.tmp"), "-", "/tmp starts empty: {second:?}");
    assert_eq!(second.get("seen.d"), "ENOENT", "{second:?}");

    // The host: nothing followed, nothing changed, nothing of the layer visible.
    let check_host = |when: &str| {
        let planted = planted_on_host(&data, &pwned);
        assert!(planted.is_empty(), "{when}: root followed a tenant's link: {planted:?}");
        let after = snapshot(&watched);
        for (path, state) in &before {
            assert!(after[path] == *state, "{when}: {} changed", path.display());
        }
        // The unpacked package is exactly what was deployed, although the tenant "changed" it.
        let pkg = host_dir.join("packages").join(inst.hex());
        let names: BTreeSet<String> = std::fs::read_dir(&pkg)
            .expect("the unpacked package")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, packaged.iter().map(|s| s.to_string()).collect(), "{when}: {}", pkg.display());
        for f in packaged {
            let meta = std::fs::symlink_metadata(pkg.join(f)).expect("stat");
            assert!(meta.is_file(), "{when}: {f} in the package is no longer a file");
            assert_eq!(
                std::fs::read(pkg.join(f)).ok(),
                std::fs::read(app.join(f)).ok(),
                "{when}: {f} changed"
            );
        }
        for (p, meta) in walk(&data) {
            let t = meta.file_type();
            assert!(
                !(t.is_symlink()
                    || t.is_fifo()
                    || t.is_socket()
                    || t.is_block_device()
                    || t.is_char_device()),
                "{when}: {} in the data directory is a {t:?}",
                p.display()
            );
        }
    };
    check_host("after the restart");
    check_instance_dir(&inst_dir);
    check_not_mounted(&inst_dir);
    wait_for("the restarted instance serves again", Duration::from_secs(30), || {
        cloud.get("hostile-links", "/").0 == 200
    });

    // A rolling restart: a new instance; the old one, links and all, is stopped and removed.
    let out = cli(&data, &["restart", "hostile-links"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("the old instance's directory is removed", Duration::from_secs(60), || !inst_dir.exists());
    wait_for("the old instance's cgroup is removed", Duration::from_secs(30), || {
        !Path::new(&format!("/sys/fs/cgroup/pids/enjin/{}/{}", uuid_of(&data, "host-1"), inst.uuid)).exists()
    });
    check_host("after the old instance was removed");
    wait_for("the new instance serves", Duration::from_secs(30), || cloud.get("hostile-links", "/").0 == 200);
    cloud.stop();
}

// ---------------------------------------------------------------------------------------------

/// App A is told where app B is on the host (the data directory, B's package digest, instance
/// uuid and host pids) and tries every path to B's package, writable layer, /tmp, /dev/shm and
/// processes, and to plant files there: every attempt fails, A's logs hold none of B's
/// secrets, and B's files are intact.
#[test]
fn an_app_cannot_read_another_apps_files() {
    require_root!();
    let cloud = Cloud::start();
    let data = cloud.data.clone();
    let secret = unique("victim-secret");
    let package_secret = unique("victim-package-secret");
    let victim = cloud.app("victim", &[("SECRET", &secret)]);
    std::fs::write(victim.join("package-secret.txt"), &package_secret).expect("write");
    cloud.deploy(&victim);
    cloud.wait_runs("victim", "secret_written", 1, Duration::from_secs(30));
    let v = cloud.instances("victim").into_iter().next().expect("the victim's instance");
    let pids: Vec<String> = host_pids("victim", &v.label).iter().map(u32::to_string).collect();
    assert!(!pids.is_empty(), "the victim's processes are found on the host");
    let status = cli(&data, &["-o", "json", "app", "status", "victim"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
    let addr = status["instances"][0]["address"].as_str().unwrap_or_default().to_string();

    let reader = cloud.app(
        "hostile-reader",
        &[
            ("DATA_DIR", data.to_str().expect("utf-8")),
            ("VICTIM_PACKAGE", v.hex()),
            ("VICTIM_DIGEST", &v.digest),
            ("VICTIM_INSTANCE", &v.uuid),
            ("VICTIM_HOST_PIDS", &pids.join(",")),
            ("VICTIM_ADDR", &addr),
        ],
    );
    cloud.deploy(&reader);
    let intact_before = cloud.logs("victim").matches("RESULT intact=").count();
    let runs = cloud.wait_runs("hostile-reader", "done", 1, Duration::from_secs(60));
    let r = runs.iter().find(|r| r.results.contains_key("done")).expect("the reader's run");
    let attempts: Vec<(&str, &str)> = r.with_prefix("read.").chain(r.with_prefix("plant.")).collect();
    let leaks: Vec<&(&str, &str)> = attempts.iter().filter(|(_, v)| v.contains("LEAK")).collect();
    assert!(leaks.is_empty(), "an app reached another's files: {leaks:#?}");
    assert!(attempts.len() >= 80, "only {} attempts were made: {r:?}", attempts.len());
    let host = format!("{}/hosts/host-1", data.display());
    for must in [
        format!("{host}/packages/{}/package-secret.txt ->", v.hex()),
        format!("{host}/instances/{}/disk/upper/secret.txt ->", v.uuid),
        format!("/var/lib/enjin/hosts/host-1/packages/{}/package-secret.txt ->", v.hex()),
        format!("/proc/{}/root/app/secret.txt ->", pids[0]),
        format!("{}/admin.token ->", data.display()),
    ] {
        assert!(attempts.iter().any(|(_, v)| v.starts_with(&must)), "{must} was not tried: {attempts:#?}");
    }
    let reader_logs = cloud.logs("hostile-reader");
    for s in [&secret, &package_secret] {
        assert!(!reader_logs.contains(s.as_str()), "the reader's logs hold the victim's secret {s}");
    }
    // Both apps are the operator's, yet the victim admits only the edge: no rule, no way in.
    assert_ne!(r.get("net.victim"), "connected", "the reader reached the victim's port: {r:?}");
    assert_ne!(r.get("net.victim"), "<missing>", "the reader did not try the victim's port: {r:?}");

    // The victim: its files unchanged and nothing planted beside them, checked after the reader.
    wait_for("the victim checks its files again", Duration::from_secs(20), || {
        cloud.logs("victim").matches("RESULT intact=").count() > intact_before + 1
    });
    let runs = parse_runs(&cloud.logs("victim"));
    assert_eq!(runs.last().expect("victim run").get("intact"), "1:-", "the victim's files changed: {runs:?}");
    let pkg = cloud.host_dir().join("packages").join(v.hex());
    assert_eq!(
        std::fs::read_to_string(pkg.join("package-secret.txt")).ok().as_deref(),
        Some(package_secret.as_str())
    );
    assert!(!pkg.join("planted").exists(), "something was planted in the victim's package");
    assert_eq!(cloud.get("victim", "/").0, 200);
    cloud.stop();
}

// ---------------------------------------------------------------------------------------------

/// Every entry of the seccomp policy (read from crates/sys/src/seccomp.rs, so a new entry
/// without a probe here fails) answers EPERM inside (clone3 ENOSYS, a 32-bit syscall kills
/// the process), the instance keeps serving, no capability is left, no_new_privs is set,
/// `unshare -Ur` fails and a setuid binary runs unprivileged. A control run of the same calls
/// on the host, as an unprivileged uid without the filter, shows the filter is what refuses
/// them.
#[test]
fn denied_syscalls_answer_eperm_and_the_instance_lives_on() {
    require_root!();
    let cloud = Cloud::start();
    let app = cloud.app("hostile-syscalls", &[]);
    cloud.deploy(&app);
    let runs = cloud.wait_runs("hostile-syscalls", "done", 1, Duration::from_secs(60));
    let run = runs.iter().find(|r| r.results.contains_key("done")).expect("the run").clone();
    let inst = cloud.instances("hostile-syscalls").into_iter().next().expect("instance");

    let sys: BTreeMap<&str, &str> = run.with_prefix("sys.").filter(|(k, _)| *k != "done").collect();
    let policy = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../sys/src/seccomp.rs"))
        .expect("crates/sys/src/seccomp.rs");
    // Every `libc::SYS_<name>` of the `DENIED` table, however it is formatted.
    let table = &policy[policy.find("pub const DENIED").expect("DENIED in seccomp.rs")..];
    let table = &table[..table.find("];").expect("the end of DENIED")];
    let denied: Vec<&str> = table
        .split("libc::SYS_")
        .skip(1)
        .filter_map(|s| s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next())
        .collect();
    assert!(denied.len() >= 50, "the policy lists {} syscalls: {denied:?}", denied.len());
    for name in &denied {
        assert!(
            sys.keys().any(|k| k == name || k.starts_with(&format!("{name}_"))),
            "the policy denies {name}, which hostile-syscalls/syscalls.py does not call"
        );
    }
    let mut wrong = Vec::new();
    for (name, value) in &sys {
        let want = match *name {
            "clone3" => "38",       // ENOSYS, so libc falls back to clone
            "int80" => "signal:31", // SIGSYS: a foreign architecture kills the process
            _ => "1",               // EPERM
        };
        if value != &want {
            wrong.push(format!("{name}: got {value}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "syscalls the filter let through: {wrong:#?}");

    let zero = "0000000000000000";
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(run.get(&format!("status.{cap}")), zero, "{cap}");
    }
    assert_eq!(run.get("status.Seccomp"), "2", "seccomp filter mode");
    assert_eq!(run.get("status.Seccomp_filters"), "2");
    assert_eq!(run.get("status.NoNewPrivs"), "1");
    let uid = inst.uid.to_string();
    assert_eq!(run.get("status.Uid"), [uid.as_str(); 4].join("_"));
    assert_eq!(run.get("status.Gid"), [uid.as_str(); 4].join("_"));
    assert_eq!(run.get("status.Groups"), "-", "no supplementary groups");
    assert_ne!(run.get("unshare_Ur.rc"), "0", "unshare -Ur worked: {}", run.get("unshare_Ur.out"));
    assert!(run.get("unshare_Ur.out").contains("Operation_not_permitted"), "{}", run.get("unshare_Ur.out"));
    assert_eq!(run.get("suid.AT_SECURE"), "0", "a setuid-root binary ran privileged");
    assert_eq!(run.get("suid.AT_EUID"), uid, "a setuid-root binary changed the effective uid");
    let (code, body) = cloud.get("hostile-syscalls", "/");
    assert_eq!((code, body.trim()), (200, "still alive"), "the instance lives on after every denied call");

    // The control: the same calls on the host as nobody, each in a child of its own.
    let out = output_within(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-B"])
            .arg(app.join("syscalls.py"))
            .arg("--fork")
            .current_dir("/"),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "control run: {}{}", stdout(&out), stderr(&out));
    let control: BTreeMap<String, String> = stdout(&out)
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT sys.")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let only_filter: Vec<&str> = sys
        .keys()
        .copied()
        .filter(|k| control.get(*k).is_some_and(|v| v != "1" && v != "signal:31"))
        .collect();
    eprintln!("refused only by the filter ({} of {}): {only_filter:?}", only_filter.len(), sys.len());
    eprintln!("control results: {control:?}");
    // Calls whose answer without the filter does not depend on the host's configuration.
    for name in [
        "setns",
        "clock_settime",
        "personality",
        "process_vm_readv",
        "process_vm_writev",
        "kcmp",
        "sysfs",
        "adjtimex",
        "clone3",
    ] {
        let v = control.get(name).map_or("<missing>", String::as_str);
        let filtered = if name == "clone3" { "38" } else { "1" };
        assert!(v != filtered && v != "<missing>", "without the filter {name} answered {v}");
    }
    assert!(only_filter.len() >= 15, "the control run shows the filter refusing only {only_filter:?}");
    cloud.stop();
}

// ---------------------------------------------------------------------------------------------

/// `/dev` is the minimal set; every host device is absent (ENOENT), no device node can be
/// made anywhere, `/dev` is read-only, `/dev/shm` is bounded and noexec, and the devices it is
/// given work.
#[test]
fn dev_holds_only_the_minimal_set() {
    require_root!();
    let cloud = Cloud::start();
    let app = cloud.app("hostile-devices", &[]);
    cloud.deploy(&app);
    let runs = cloud.wait_runs("hostile-devices", "done", 1, Duration::from_secs(60));
    let run = runs.iter().find(|r| r.results.contains_key("done")).expect("the run").clone();
    let minimal = "fd,full,null,ptmx,pts,random,shm,stderr,stdin,stdout,tty,urandom,zero";
    assert_eq!(run.get("dev.ls"), minimal);
    assert_eq!(run.get("dev.ls_cmd"), minimal, "`ls -A /dev`");
    assert_eq!(run.get("dev.pts"), "ptmx", "a private devpts: no other terminal");
    let opened: Vec<(&str, &str)> =
        run.with_prefix("open.").chain(run.with_prefix("openw.")).filter(|(_, v)| *v != "ENOENT").collect();
    assert!(opened.is_empty(), "host devices reachable: {opened:?}");
    assert!(run.with_prefix("open.").count() >= 50, "{run:?}");
    assert_eq!(run.get("mknod.0"), "/tmp/vda:EPERM");
    assert_eq!(run.get("mknod.1"), "/app/kmsg:EPERM");
    assert_eq!(run.get("mknod.2"), "/dev/shm/mem:EPERM");
    assert!(matches!(run.get("mknod.3"), "/dev/vda:EROFS" | "/dev/vda:EPERM"), "{}", run.get("mknod.3"));
    assert_eq!(run.get("create.dev"), "EROFS", "/dev is read-only");
    assert_eq!(run.get("use.urandom"), "16");
    assert_eq!(run.get("use.zero"), "00000000");
    assert_eq!(run.get("use.null"), "1");
    assert_eq!(run.get("use.full"), "ENOSPC");
    assert!(run.get("use.ptmx").starts_with("ok:"), "{}", run.get("use.ptmx"));
    let shm: u64 = run.get("use.shm_bytes").parse().expect("shm size");
    assert!(shm > 0 && shm <= 64 * MIB, "/dev/shm is {shm} bytes");
    assert_eq!(run.get("exec.shm"), "EACCES", "/dev/shm is noexec");
    assert_eq!(cloud.get("hostile-devices", "/").0, 200);
    cloud.stop();
}

// ---------------------------------------------------------------------------------------------

/// Allocated bytes (not the sparse images' apparent size) under `dir`.
fn allocated(dir: &Path) -> u64 {
    walk(dir).iter().filter(|(_, m)| !m.is_dir()).map(|(_, m)| m.blocks() * 512).sum()
}

/// A background GET loop against one app through the router.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(router: SocketAddr, app: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let (s, o) = (stop.clone(), ok.clone());
        let handle = std::thread::spawn(move || {
            let mut failed = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let (code, body) = get(router, app, "/");
                if code == 200 {
                    o.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.push(format!("{code} {body}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            failed
        });
        Load { stop, ok, handle }
    }

    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failed = self.handle.join().expect("load");
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

/// With `disk = "32MiB"`, 64 MiB written into /app, /tmp, /var/tmp or /dev/shm stop with
/// ENOSPC at the bound, as do inodes; the host spends at most the image's size on it; a
/// bystander app serves throughout; with both instances' /tmp left full, a deploy of another
/// app still works and both full instances still answer.
#[test]
fn writes_past_the_disk_quota_fail_and_the_platform_carries_on() {
    require_root!();
    let cloud = Cloud::start();
    cloud.deploy(&cloud.app("bystander", &[]));
    let load = Load::start(cloud.router, "bystander");
    let instances_dir = cloud.host_dir().join("instances");
    let before = allocated(&cloud.data);

    cloud.deploy(&cloud.app("hostile-disk", &[]));
    let runs = cloud.wait_runs("hostile-disk", "full", 2, Duration::from_secs(120));
    let full: Vec<&Run> = runs.iter().filter(|r| r.results.contains_key("full")).collect();
    let disk = 32 * MIB;
    for r in &full {
        let bytes: u64 = r.get("disk.bytes").parse().expect("disk.bytes");
        assert!(bytes <= disk, "the writable filesystem is {bytes} bytes, over 32 MiB");
        for place in ["app", "tmp", "var_tmp", "shm", "leave_full"] {
            let v = r.get(&format!("fill.{place}"));
            let (written, how) = v.split_once(':').expect("bytes:how");
            let written: u64 = written.parse().expect("bytes");
            assert_eq!(how, "ENOSPC", "{}: writing 64 MiB into {place} ended with {v}", r.instance);
            assert!(written <= disk, "{}: {written} bytes written into {place}, past 32 MiB", r.instance);
        }
        assert!(r.get("fill.inodes").ends_with(":ENOSPC"), "inodes: {}", r.get("fill.inodes"));
    }
    let insts = cloud.instances("hostile-disk");
    assert_eq!(insts.len(), 2);
    for i in &insts {
        let dir = instances_dir.join(&i.uuid);
        let used = allocated(&dir);
        eprintln!("{}: {} MiB allocated on the host", i.label, used / MIB);
        // The image (at most its size) and the next start's freshly formatted one.
        assert!(used <= disk + 8 * MIB, "{} takes {used} bytes of the host's disk", dir.display());
        check_instance_dir(&dir);
    }
    let after = allocated(&cloud.data);
    eprintln!("the data directory grew by {} MiB", after.saturating_sub(before) / MIB);
    assert!(after.saturating_sub(before) <= 2 * (disk + 8 * MIB) + 16 * MIB, "{before} → {after}");

    // /tmp full in both: the platform goes on.
    cloud.deploy(&cloud.app_as("bystander", "after-full", &[]));
    assert_eq!(cloud.get("after-full", "/").0, 200);
    let mut answered = BTreeSet::new();
    for _ in 0..60 {
        let (code, body) = cloud.get("hostile-disk", "/");
        assert_eq!(code, 200, "an instance with a full disk stopped serving: {body}");
        answered.insert(body);
        if answered.len() == 2 {
            break;
        }
    }
    assert_eq!(answered.len(), 2, "both full instances answer: {answered:?}");
    let (ok, failed) = load.finish();
    assert!(failed.is_empty(), "the bystander failed while another app filled its disk: {failed:?}");
    assert!(ok > 20, "the bystander answered {ok} requests");
    cloud.stop();
}

// ---------------------------------------------------------------------------------------------

/// stdout and stderr are the one way an instance writes to the host's disk outside its own
/// image: the agent keeps them in files it collects and rotates. 512 MiB written to stdout as
/// fast as it can, with `disk = "32MiB"`, must at no moment take more of the host's disk than
/// the instance's quota, its next image and its bounded collected logs.
#[test]
fn output_past_the_disk_quota_does_not_fill_the_hosts_disk() {
    require_root!();
    let cloud = Cloud::start();
    let before = allocated(&cloud.data);
    let app = cloud.app("hostile-logs", &[]);
    let data = cloud.data.clone();
    let deploy = std::thread::spawn(move || cli(&data, &["deploy", app.to_str().expect("utf-8 path")]));
    // Sampled until the deploy is done (the app serves only after its flood) and a little after.
    let mut peak = 0;
    let mut done_at: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while done_at.is_none_or(|t| t.elapsed() < Duration::from_secs(2)) {
        assert!(Instant::now() < deadline, "the deploy of hostile-logs did not end");
        peak = peak.max(allocated(&cloud.data));
        if done_at.is_none() && deploy.is_finished() {
            done_at = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = deploy.join().expect("deploy thread");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let grown = peak.saturating_sub(before);
    eprintln!(
        "the data directory grew by at most {} MiB while the instance wrote 512 MiB to stdout",
        grown / MIB
    );
    let bound = 32 * MIB + 8 * MIB + 4 * MIB + 8 * MIB;
    assert!(
        grown <= bound,
        "an instance with a 32 MiB disk put {} MiB on the host's disk through its stdout (bound {} MiB)",
        grown / MIB,
        bound / MIB
    );
    assert_eq!(cloud.get("hostile-logs", "/").0, 200);
    cloud.stop();
}

// ---------------------------------------------------------------------------------------------

/// With two apps deployed, every entry of the data directory is root's, and its mode is 0700
/// or 0600 except what docs/security.md lists (unpacked packages, 0777/0666 inside root's
/// 0700 `packages/`, the empty lower layer `instances/.empty`, and each instance's
/// `resolv.conf`, 0644 inside its 0700 directory). Walked as `nobody` and as
/// each instance's uid, nothing in it can be listed or opened, and only the data directory
/// itself can be seen to exist.
#[test]
fn nothing_in_the_data_directory_is_open_to_other_uids() {
    require_root!();
    let cloud = Cloud::start();
    let data = cloud.data.clone();
    let secret = unique("walk-secret");
    cloud.deploy(&cloud.app("victim", &[("SECRET", &secret)]));
    cloud.deploy(&cloud.app("bystander", &[]));
    cloud.wait_runs("victim", "secret_written", 1, Duration::from_secs(30));

    let mut uids: Vec<u32> =
        cloud.instances("victim").iter().chain(&cloud.instances("bystander")).map(|i| i.uid).collect();
    assert_eq!(uids.len(), 2);
    assert!(uids.iter().all(|u| *u != 0 && *u != 65534), "{uids:?}");
    assert_ne!(uids[0], uids[1], "each instance has a uid of its own");

    // Modes, as root sees them.
    let entries = walk(&data);
    let rel = |p: &Path| p.strip_prefix(&data).map(Path::to_path_buf).unwrap_or_default();
    let mut wrong = Vec::new();
    for (p, m) in &entries {
        let r = rel(p);
        let parts: Vec<String> =
            r.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        let mode = m.mode() & 0o7777;
        let t = m.file_type();
        if m.uid() != 0 || m.gid() != 0 {
            wrong.push(format!("{} is owned by {}:{}", r.display(), m.uid(), m.gid()));
        }
        if !(t.is_dir() || t.is_file()) {
            wrong.push(format!("{} is a {t:?}", r.display()));
        }
        // hosts/<host>/packages/<hex>/…: opened up for overlayfs, inside root's packages/.
        let in_package = parts.len() >= 4 && parts[0] == "hosts" && parts[2] == "packages";
        let empty_lower =
            parts.len() == 4 && parts[0] == "hosts" && parts[2] == "instances" && parts[3] == ".empty";
        // The instance's own resolvers, read inside its sandbox through the jail's mount.
        let resolv_conf =
            parts.len() == 5 && parts[0] == "hosts" && parts[2] == "instances" && parts[4] == "resolv.conf";
        let ok = if in_package {
            if t.is_dir() { mode == 0o777 } else { mode == 0o666 || mode == 0o777 }
        } else if empty_lower {
            mode == 0o755
        } else if resolv_conf {
            t.is_file() && mode == 0o644
        } else {
            mode & 0o077 == 0 && mode & 0o7000 == 0
        };
        if !ok {
            wrong.push(format!("{} has mode {mode:o}", r.display()));
        }
    }
    assert!(wrong.is_empty(), "the data directory's modes: {wrong:#?}");
    for p in [
        data.clone(),
        data.join("hosts"),
        data.join("hosts/host-1"),
        data.join("hosts/host-1/packages"),
        data.join("hosts/host-1/instances"),
    ] {
        let m = std::fs::symlink_metadata(&p).expect("stat");
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o700), "{} must be root's 0700", p.display());
    }
    assert!(entries.len() > 40, "the walk saw only {} entries", entries.len());

    // Access, as other uids: nobody, and each instance's uid outside its sandbox.
    let walker = cloud.dir.path().join("walker");
    copy_dir(&fixtures().join("walker"), &walker);
    let list: String = entries
        .iter()
        .map(|(p, m)| format!("{}\t{}\n", if m.is_dir() { "d" } else { "f" }, p.display()))
        .collect();
    uids.insert(0, 65534);
    for uid in uids {
        let mut child = Command::new("setpriv")
            .args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()])
            .args(["/usr/bin/python3", "-B"])
            .arg(walker.join("walk.py"))
            .arg(&data)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("setpriv");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = list.clone();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "the walk as uid {uid} took too long");
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = feeder.join();
        let out = child.wait_with_output().expect("walker output");
        assert!(out.status.success(), "walk as {uid}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains(&format!("CHECKED {}", entries.len())), "walk as {uid}: {text}");
        let reached: Vec<&str> = text.lines().filter(|l| l.starts_with("REACHED ")).collect();
        let public = format!("REACHED stat {}", data.display());
        let leaks: Vec<&&str> = reached.iter().filter(|l| **l != public).collect();
        assert!(leaks.is_empty(), "uid {uid} reached into the data directory: {leaks:#?}");
        assert!(
            reached.contains(&public.as_str()),
            "the walk as {uid} could not even see the data directory: {text}"
        );
    }
    cloud.stop();
}

/// The network from inside a tenant's app, through the real `enjin up`: the app (account
/// `net-b`) tries another account's instance, the bus hub, the API, its host and a spoofed
/// source address; all must fail, while a peer of its own account is reachable exactly while an
/// access rule allows it (applied on the host within a second of its commit, measured).
#[test]
fn instances_reach_only_what_the_firewall_admits() {
    require_root!();
    let cloud = Cloud::start();
    let data = cloud.data.clone();
    for account in ["net-a", "net-b"] {
        let out = cli(&data, &["account", "create", account]);
        assert!(out.status.success(), "account {account}: {}", stderr(&out));
    }
    // The victim, another account's; the peer, the hostile app's own account's.
    let victim = cloud.app_as("bystander", "victim-a", &[]);
    cloud.deploy_as(&victim, "net-a");
    let peer = cloud.app_as("bystander", "peer-b", &[]);
    cloud.deploy_as(&peer, "net-b");
    let victim_addr = *cloud.addresses("victim-a").first().expect("the victim's address");
    let peer_addr = *cloud.addresses("peer-b").first().expect("the peer's address");

    // What of rings 0 and 1 an instance could try: the hub (where the agents connect), the
    // API's port on the hosts' gateway, and a listener in its own host's namespace.
    let agent: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data.join("hosts/host-1/agent.json")).expect("host-1's agent file"),
    )
    .expect("agent file json");
    let hub: SocketAddr = agent["hub"].as_str().expect("hub").parse().expect("hub address");
    let api_port: u16 = cloud
        .up
        .as_ref()
        .expect("running")
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("api port");
    let host_ns = format!(
        "enjin-{}",
        uuid_of(&data, "host-1").chars().filter(char::is_ascii_alphanumeric).take(8).collect::<String>()
    );
    let host_ip = match hub.ip() {
        std::net::IpAddr::V4(g) => std::net::Ipv4Addr::from(u32::from(g) + 1),
        other => panic!("hub on {other}"),
    };
    let host_port = 29000 + (std::process::id() % 1000) as u16;
    let mut host_listener = Command::new("nsenter")
        .args([
            &format!("--net=/run/netns/{host_ns}"),
            "--",
            "python3",
            "-m",
            "http.server",
            "--bind",
            "0.0.0.0",
            &host_port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("a listener in the host's namespace");
    // A source address in the peer's block that nobody holds.
    let spoofed = match peer_addr.ip() {
        std::net::IpAddr::V4(p) => std::net::Ipv4Addr::from((u32::from(p) & 0xffff_ff00) | 200),
        other => panic!("peer on {other}"),
    };
    let targets = format!(
        "victim={victim_addr},peer={peer_addr},hub={hub},api={}:{api_port},host={host_ip}:{host_port}",
        hub.ip()
    );
    // Its peer by name, through the platform's DNS on the hosts network.
    let peer_name =
        format!("{}.peer-b.enjin.internal", cloud.instance_labels("peer-b").first().expect("a label"));
    let hostile = cloud.app(
        "hostile-net",
        &[
            ("RESOLVE", &format!("peer={peer_name}")),
            ("TARGETS", &targets),
            ("SPOOF_AS", &spoofed.to_string()),
            ("SPOOF_TO", &peer_addr.to_string()),
            ("INTERVAL_MS", "100"),
            ("WATCH", &peer_addr.to_string()),
        ],
    );
    cloud.deploy_as(&hostile, "net-b");
    let runs = cloud.wait_runs("hostile-net", "round", 1, Duration::from_secs(60));
    let first = runs.iter().find(|r| r.results.contains_key("round")).expect("a round").clone();
    let _ = host_listener.kill();
    let _ = host_listener.wait();
    for target in ["victim", "peer", "hub", "api", "host"] {
        // Also from the instance's own port, the one the edge's connections to it come to:
        // replies from there may take the host's fast path, a connection it opens must not.
        for key in [format!("net.{target}"), format!("net.{target}.fromport")] {
            let got = first.get(&key);
            assert_ne!(got, "connected", "the tenant's instance reached {key}: {first:?}");
            assert_ne!(got, "<missing>", "{key} was not tried: {first:?}");
        }
    }
    assert!(first.get("raw").starts_with("denied"), "a raw socket: {first:?}");
    let resolved = cloud.wait_runs("hostile-net", "dns.peer", 1, Duration::from_secs(30));
    let answers: Vec<String> = resolved.iter().filter_map(|r| r.results.get("dns.peer").cloned()).collect();
    assert!(
        answers.iter().any(|a| *a == peer_addr.ip().to_string()),
        "{peer_name} did not resolve to {} from inside the instance: {answers:?}",
        peer_addr.ip()
    );
    assert_ne!(first.get("spoof"), "connected", "a spoofed source got through: {first:?}");
    // Ports are the instance's own: the hostile app listens on 8080 too, and the victim still
    // answers through the router.
    assert_eq!(cloud.get("victim-a", "/").0, 200, "the victim still serves");
    // The router's requests and the instances' replies cross the hosts on the eBPF fast path:
    // a reply on the ordinary path would leave its host through the host's uplink.
    let hosts: Vec<String> = ["host-1", "host-2", "host-3"]
        .iter()
        .filter_map(|h| {
            let out = cli(&data, &["-o", "json", "node", "get", h]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let short: String =
                v["uuid"].as_str()?.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
            Some(format!("enjin-{short}"))
        })
        .collect();
    assert!(!hosts.is_empty(), "no hosts found");
    let uplinks_tx = || -> u64 {
        hosts
            .iter()
            .map(|ns| {
                let out =
                    Command::new("ip").args(["-n", ns, "-s", "-j", "link", "show", "dev", "eth0"]).output();
                let v: serde_json::Value =
                    serde_json::from_slice(&out.expect("ip").stdout).expect("ip -j link");
                v[0]["stats64"]["tx"]["packets"].as_u64().expect("tx packets")
            })
            .sum()
    };
    let before = uplinks_tx();
    for _ in 0..200 {
        assert_eq!(cloud.get("victim-a", "/").0, 200, "the victim serves");
    }
    let sent = uplinks_tx() - before;
    assert!(
        sent < 100,
        "the hosts' uplinks sent {sent} packets for 200 requests: replies took the ordinary path"
    );

    // A rule of its own account opens the peer, within a second of its commit: the app tries
    // the peer every 50 ms and prints when the outcome changed (its clock is the machine's).
    let watched = |want: &str| -> Option<u128> {
        let logs = cloud.logs("hostile-net");
        parse_runs(&logs).last().and_then(|r| {
            let (state, at) = r.get("watch").split_once('@')?;
            (state == want).then(|| at.parse().ok()).flatten()
        })
    };
    wait_for("the watcher reports the peer closed", Duration::from_secs(20), || watched("timeout").is_some());
    let now_ms = || SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let committed = now_ms();
    let out = cli(
        &data,
        &[
            "access-rule",
            "create",
            "allow-peer",
            "--from",
            "hostile-net:web",
            "--to",
            "peer-b:web",
            "--port",
            "8080",
            "--account",
            "net-b",
        ],
    );
    let returned = now_ms();
    assert!(out.status.success(), "access-rule create: {}{}", stdout(&out), stderr(&out));
    let mut opened_at = None;
    wait_for("the peer is reachable under the rule", Duration::from_secs(20), || {
        opened_at = watched("connected");
        opened_at.is_some()
    });
    let opened = opened_at.expect("opened").saturating_sub(returned);
    eprintln!(
        "rule applied {opened} ms after `enjin access-rule create` returned ({} ms for the command itself)",
        returned - committed
    );
    assert!(opened <= 1000, "the rule took {opened} ms to apply (goal: 1 s)");
    // And closed again when it goes.
    let out = cli(&data, &["access-rule", "delete", "allow-peer"]);
    assert!(out.status.success(), "access-rule delete: {}{}", stdout(&out), stderr(&out));
    let removed = now_ms();
    let mut closed_at = None;
    wait_for("the peer is closed again", Duration::from_secs(20), || {
        closed_at = watched("timeout");
        closed_at.is_some()
    });
    eprintln!(
        "rule removal applied {} ms after the delete returned",
        closed_at.unwrap_or(0).saturating_sub(removed)
    );
    let last = parse_runs(&cloud.logs("hostile-net")).last().cloned().expect("a run");
    assert_ne!(
        last.get("spoof"),
        "connected",
        "a spoofed source reached the peer once the rule allowed the real one: {last:?}"
    );
    assert_ne!(last.get("net.victim"), "connected", "the rule opened another account's instance: {last:?}");
    cloud.stop();
}
