//! A deploy whose control plane is killed (SIGKILL) at each step of its rollout ends, once
//! `enjin up` is back on the same data, with exactly the app's wanted instances, all of one
//! live release, every one routed and running once: a rollout that had not gone live is
//! undone, one that had is finished.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Running, cli, root_or_skip, stderr, stdout, wait_until};
use serde_json::Value;

const APP: &str = "slowstart";
const WANTED: usize = 2;
const RELEASE_LABEL: &str = "enjin.dev/release";
const DRAINING_LABEL: &str = "enjin.dev/draining";

fn json(data: &Path, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let out = cli(data, &all);
    assert!(out.status.success(), "enjin {args:?}: {}{}", stdout(&out), stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("enjin {args:?}: {e}: {}", stdout(&out)))
}

fn items(v: Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

/// The app's instances, as the store has them.
fn instances(data: &Path) -> Vec<Value> {
    items(json(data, &["node", "list"]))
        .into_iter()
        .filter(|n| n["spec"]["run"]["env"]["ENJIN_APP"] == APP)
        .collect()
}

/// The app's releases: (uuid, version, state).
fn releases(data: &Path) -> Vec<(String, u64, String)> {
    items(json(data, &["release", "list"]))
        .into_iter()
        .filter(|r| r["labels"]["enjin.dev/app"] == APP)
        .map(|r| {
            (
                r["uuid"].as_str().unwrap_or_default().to_string(),
                r["spec"]["version"].as_u64().unwrap_or(0),
                r["spec"]["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Processes on this machine that are instances of the app (python3 app.py with its
/// ENJIN_APP), by instance name.
fn instance_processes() -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else { continue };
        // The python process itself, not the shell that started it.
        let argv: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if !(argv.first().is_some_and(|a| a.ends_with(b"python3")) && argv.get(1) == Some(&&b"app.py"[..])) {
            continue;
        }
        let Ok(env) = std::fs::read(entry.path().join("environ")) else { continue };
        let vars: Vec<String> =
            env.split(|b| *b == 0).map(|kv| String::from_utf8_lossy(kv).into_owned()).collect();
        if vars.iter().any(|v| v == &format!("ENJIN_APP={APP}"))
            && let Some(i) = vars.iter().find_map(|v| v.strip_prefix("ENJIN_INSTANCE="))
        {
            out.push(i.to_string());
        }
    }
    out.sort();
    out
}

/// One GET through the router by the app's host name, as curl sends it; the body.
fn get(router: std::net::SocketAddr, path: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "5"])
        .arg(format!("http://{APP}.localhost:{}{path}", router.port()))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn app_copy(into: &Path) -> PathBuf {
    // The bystander's app, under a manifest of its own (two instances).
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dst = into.join(APP);
    std::fs::create_dir_all(&dst).expect("mkdir");
    std::fs::copy(fixtures.join("bystander/app.py"), dst.join("app.py")).expect("copy the app");
    std::fs::copy(fixtures.join("slowstart/enjin.toml"), dst.join("enjin.toml")).expect("copy the manifest");
    dst
}

/// Where in the second deploy's rollout `enjin up` is killed.
#[derive(Debug, Clone, Copy)]
enum At {
    /// Its instances are made and starting (they take 5 s): the rollout is undone, v1 serves.
    Starting,
    /// It has recorded that it goes live: finished or undone, whichever the release reached.
    Live,
    /// The old instances are draining: the rollout is finished, v2 serves.
    Draining,
}

fn crash_during_a_deploy(at: At) {
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let data = dir.path().join("data");
    let up = Running::start_with("up", &data, &["--hosts", "1"]);
    let router = up.router.expect("enjin up printed its router");
    let app = app_copy(dir.path());
    let app_arg = app.to_str().expect("utf-8 path").to_string();
    wait_until("host-1 is up to run instances", Duration::from_secs(60), || {
        let out = cli(&data, &["deploy", &app_arg]);
        out.status.success().then_some(())
    });

    // v2 takes 5 s to start: long enough to be caught starting.
    std::fs::write(app.join("delay"), "5\n").expect("delay");
    let started = json(&data, &["deploy", "--no-wait", &app_arg]);
    let task = started["task"].as_str().expect("a task").to_string();
    let v2 = started["release"].as_str().expect("a release").to_string();
    wait_until(&format!("the rollout reaches {at:?}"), Duration::from_secs(60), || {
        let t = json(&data, &["task", "get", &task]);
        assert_ne!(t["spec"]["state"], "failed", "the rollout failed on its own: {t}");
        let step = t["spec"]["step"].as_str().unwrap_or_default().to_string();
        let nodes = instances(&data);
        let reached = match at {
            At::Starting => {
                step == "starting" && nodes.iter().any(|n| n["labels"][RELEASE_LABEL] == v2.as_str())
            }
            At::Live => step == "live",
            At::Draining => nodes.iter().any(|n| n["labels"][DRAINING_LABEL].is_string()),
        };
        reached.then_some(())
    });
    up.crash();

    let up = Running::start_with("up", &data, &["--hosts", "1"]);
    assert_eq!(up.router, Some(router), "the running edge was adopted");
    let t = wait_until("the interrupted rollout ends", Duration::from_secs(60), || {
        let t = json(&data, &["task", "get", &task]);
        matches!(t["spec"]["state"].as_str(), Some("succeeded" | "failed")).then_some(t)
    });
    let live = wait_until("the app settles on one live release", Duration::from_secs(60), || {
        let active: Vec<_> = releases(&data).into_iter().filter(|r| r.2 == "active").collect();
        let nodes = instances(&data);
        let [(uuid, version, _)] = active.as_slice() else { return None };
        let all_of_it = nodes.iter().all(|n| n["labels"][RELEASE_LABEL] == uuid.as_str());
        let draining = nodes.iter().any(|n| n["labels"][DRAINING_LABEL].is_string());
        (nodes.len() == WANTED && all_of_it && !draining).then(|| (uuid.clone(), *version))
    });
    match at {
        At::Starting => assert_eq!(live.1, 1, "a rollout caught starting is undone: {t}"),
        At::Draining => assert_eq!(live.1, 2, "a rollout caught draining is finished: {t}"),
        At::Live => {}
    }
    let expected = if live.1 == 2 { "succeeded" } else { "failed" };
    assert_eq!(t["spec"]["state"], expected, "the task says how it ended: {t}");

    // Exactly the wanted instances run, each once, and the router serves the live release.
    let names: Vec<String> =
        instances(&data).iter().filter_map(|n| n["label"].as_str().map(str::to_string)).collect();
    let mut want = names.clone();
    want.sort();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let running = instance_processes();
        if running == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only the live release's instances run, each once: running {running:?}, recorded {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_until("every instance is routed", Duration::from_secs(30), || {
        let s = json(&data, &["app", "status", APP]);
        let routed =
            s["instances"].as_array().map_or(0, |i| i.iter().filter(|i| i["routed"] == true).count());
        (routed == WANTED).then_some(())
    });
    let body = get(router, "/");
    assert!(body.starts_with(&format!("ok v{} ", live.1)), "the router serves v{}: {body}", live.1);
    assert!(up.interrupt_and_clean().success());
}

#[test]
fn a_rollout_caught_starting_is_undone() {
    if !root_or_skip("the unix-user sandbox of instances") {
        return;
    }
    crash_during_a_deploy(At::Starting);
}

#[test]
fn a_rollout_caught_going_live_ends_with_one_live_release() {
    if !root_or_skip("the unix-user sandbox of instances") {
        return;
    }
    crash_during_a_deploy(At::Live);
}

#[test]
fn a_rollout_caught_draining_is_finished() {
    if !root_or_skip("the unix-user sandbox of instances") {
        return;
    }
    crash_during_a_deploy(At::Draining);
}
