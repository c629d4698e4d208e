//! The platform end to end, from the binary: deploy the Python example, reach it through the
//! router by name, scale it, roll out a new release under load without one failed request,
//! roll back, refuse a release whose health check fails (it never gets traffic), survive an
//! instance's SIGKILL without 5xx, answer DNS, and show the app's logs.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Running, cli, example_copy, heartbeat, stderr, stdout, wait_until};

const APP: &str = "python-hello";

fn set_env(dir: &Path, key: &str, value: &str) {
    let path = dir.join("enjin.toml");
    let text = std::fs::read_to_string(&path).expect("manifest");
    let line = format!("{key} = \"{value}\"");
    let mut out = String::new();
    let mut done = false;
    for l in text.lines() {
        if l.starts_with(&format!("{key} =")) {
            out.push_str(&line);
            done = true;
        } else {
            out.push_str(l);
            if l.trim() == "[env]" && !text.contains(&format!("\n{key} =")) {
                out.push('\n');
                out.push_str(&line);
                done = true;
            }
        }
        out.push('\n');
    }
    assert!(done, "the manifest has an [env] table");
    std::fs::write(&path, out).expect("write manifest");
}

fn status(data: &Path) -> serde_json::Value {
    let out = cli(data, &["-o", "json", "app", "status", APP]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("status json")
}

fn routed(data: &Path) -> usize {
    status(data)["instances"].as_array().map_or(0, |i| i.iter().filter(|i| i["routed"] == true).count())
}

/// One GET through the router by host name, as curl sends it.
fn curl(router: SocketAddr, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .arg(format!("http://{APP}.localhost:{}{path}", router.port()))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Requests sent by a background load generator, and what came back.
#[derive(Debug, Default)]
struct Load {
    ok: u64,
    failed: Vec<String>,
    bodies: BTreeMap<String, u64>,
}

/// A load generator running in the background.
struct Loader {
    stop: Arc<AtomicBool>,
    /// Requests answered so far, whatever the answer.
    answered: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<Load>,
}

impl Loader {
    /// Wait until `n` more requests than now have been answered: the load has covered a span
    /// of the app's life measured in requests, not in wall time.
    fn covers(&self, what: &str, n: u64) {
        let target = self.answered.load(Ordering::Relaxed) + n;
        wait_until(what, Duration::from_secs(30), || {
            (self.answered.load(Ordering::Relaxed) >= target).then_some(())
        });
    }

    fn finish(self) -> Load {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("load")
    }
}

/// Send GETs through the router from `workers` connections until finished.
fn load(router: SocketAddr, workers: usize) -> Loader {
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let (stop2, answered2) = (stop.clone(), answered.clone());
    let handle = std::thread::spawn(move || {
        let (stop, answered) = (stop2, answered2);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let client = common::http_client(Duration::from_secs(10));
            let mut tasks = Vec::new();
            for _ in 0..workers {
                let (client, stop, answered) = (client.clone(), stop.clone(), answered.clone());
                tasks.push(tokio::spawn(async move {
                    let mut l = Load::default();
                    while !stop.load(Ordering::Relaxed) {
                        let r = client
                            .get(format!("http://{router}/"))
                            .header("Host", format!("{APP}.localhost"))
                            .send()
                            .await;
                        answered.fetch_add(1, Ordering::Relaxed);
                        match r {
                            Ok(resp) if resp.status() == 200 => {
                                let body = resp.text().await.unwrap_or_default();
                                // "greeting (vN, instance)": count by greeting and release.
                                let key = body.split(',').next().unwrap_or_default().to_string();
                                *l.bodies.entry(key).or_default() += 1;
                                l.ok += 1;
                            }
                            Ok(resp) => l.failed.push(format!("status {}", resp.status())),
                            Err(e) => l.failed.push(format!("error {e}")),
                        }
                    }
                    l
                }));
            }
            let mut all = Load::default();
            for t in tasks {
                let l = t.await.expect("load task");
                all.ok += l.ok;
                all.failed.extend(l.failed);
                for (k, v) in l.bodies {
                    *all.bodies.entry(k).or_default() += v;
                }
            }
            all
        })
    });
    Loader { stop, answered, handle }
}

fn deploy(data: &Path, dir: &Path) -> std::process::Output {
    cli(data, &["deploy", dir.to_str().expect("utf-8 path")])
}

fn dig(dns: SocketAddr, name: &str, rtype: &str) -> String {
    let out = Command::new("dig")
        .args([&format!("@{}", dns.ip()), "-p", &dns.port().to_string(), name, rtype, "+short", "+time=2"])
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pids of the app's instances (python3 app.py with ENJIN_INSTANCE set).
fn instance_pids() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if !String::from_utf8_lossy(&cmd).contains("app.py") {
            continue;
        }
        let Ok(env) = std::fs::read(entry.path().join("environ")) else { continue };
        let instance = env
            .split(|b| *b == 0)
            .filter_map(|kv| String::from_utf8_lossy(kv).strip_prefix("ENJIN_INSTANCE=").map(str::to_string))
            .next();
        if let Some(i) = instance {
            out.push((pid, i));
        }
    }
    out
}

#[test]
fn deploy_route_scale_roll_out_roll_back_and_survive_failures() {
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let data = dir.path().join("data");
    let up = Running::start_with("up", &data, &["--hosts", "2"]);
    let router = up.router.expect("enjin up printed its router");
    let dns = up.dns.expect("enjin up printed its DNS address");
    wait_until("both hosts send heartbeats", Duration::from_secs(60), || {
        ["host-1", "host-2"].iter().all(|h| heartbeat(&data, h)).then_some(())
    });
    let app = example_copy(dir.path());

    // Deploy: packed, uploaded, placed, started, healthy, routed.
    let started = Instant::now();
    let out = deploy(&data, &app);
    assert!(out.status.success(), "deploy failed: {}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("is live at"), "{}", stdout(&out));
    let (code, body) = wait_until("the app answers through the router", Duration::from_secs(10), || {
        let (c, b) = curl(router, "/");
        (c == 200).then_some((c, b))
    });
    eprintln!("deploy to first 200: {:?}", started.elapsed());
    assert_eq!(code, 200);
    assert!(body.starts_with("hello from python (v1"), "{body}");
    let s = status(&data);
    let hosts: std::collections::BTreeSet<&str> =
        s["instances"].as_array().expect("instances").iter().filter_map(|i| i["host"].as_str()).collect();
    assert_eq!(hosts.len(), 2, "two instances spread over both hosts: {s}");
    let addresses: Vec<std::net::SocketAddr> = s["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["address"].as_str()?.parse().ok())
        .collect();
    let ips: std::collections::BTreeSet<std::net::IpAddr> = addresses.iter().map(|a| a.ip()).collect();
    assert_eq!(ips.len(), 2, "each instance has an address of its own: {s}");
    let instance_net: enjin_model::kinds::Cidr = common::own_instance_range().parse().expect("range");
    assert!(
        addresses.iter().all(|a| instance_net.contains(a.ip()) && a.port() == 8080),
        "instances are on the instance network, all on port 8080 in their own namespaces: {s}"
    );
    // An unknown app is a clear 404 from the router.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://nope.localhost:{}/", router.port()),
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");

    // DNS: the app, its instances (A) and where its web processes listen (SRV).
    let a = dig(dns, &format!("{APP}.enjin.internal"), "A");
    assert_eq!(a.trim(), "127.0.0.1", "{a}");
    let srv = wait_until("SRV records for both instances", Duration::from_secs(10), || {
        let srv = dig(dns, &format!("_http._tcp.{APP}.enjin.internal"), "SRV");
        (srv.lines().count() == 2).then_some(srv)
    });
    assert!(srv.contains(&format!(".{APP}.enjin.internal.")), "{srv}");
    let host = dig(dns, "host-1.hosts.enjin.internal", "A");
    assert!(!host.trim().is_empty(), "host-1 has an A record");

    // Scale to 3 and back.
    let out = cli(&data, &["scale", APP, "web=3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(routed(&data), 3);
    let out = cli(&data, &["scale", APP, "web=2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until("two instances left", Duration::from_secs(15), || {
        (status(&data)["instances"].as_array()?.len() == 2).then_some(())
    });

    // Roll out v2 under load: not one request fails.
    set_env(&app, "GREETING", "hello v2");
    let loader = load(router, 8);
    loader.covers("the load runs against v1", 50);
    let out = deploy(&data, &app);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    // On past the rollout, while the hosts stop the old instances.
    loader.covers("the load goes on after the rollout", 200);
    let l = loader.finish();
    eprintln!("rollout under load: {} ok, {} failed, {:?}", l.ok, l.failed.len(), l.bodies);
    assert!(
        l.failed.is_empty(),
        "requests failed during the rollout: {:?}",
        &l.failed[..l.failed.len().min(10)]
    );
    assert!(l.bodies.keys().any(|k| k.starts_with("hello from python (v1")), "{:?}", l.bodies);
    assert!(l.bodies.keys().any(|k| k.starts_with("hello v2 (v2")), "{:?}", l.bodies);
    let (_, body) = curl(router, "/");
    assert!(body.starts_with("hello v2 (v2"), "{body}");

    // Roll back: v1's code and configuration as v3.
    let out = cli(&data, &["rollback", APP]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, body) = curl(router, "/");
    assert!(body.starts_with("hello from python (v3"), "{body}");

    // A release whose health check fails never receives traffic, and is rolled back.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).expect("mkdir");
    for f in ["app.py", "enjin.toml"] {
        std::fs::copy(app.join(f), bad.join(f)).expect("copy");
    }
    set_env(&bad, "GREETING", "bad");
    set_env(&bad, "FAIL_HEALTH", "1");
    let text = std::fs::read_to_string(bad.join("enjin.toml")).expect("read");
    std::fs::write(bad.join("enjin.toml"), format!("{text}start_timeout_seconds = 6\n")).expect("write");
    let loader = load(router, 4);
    let out = deploy(&data, &bad);
    let l = loader.finish();
    assert!(!out.status.success(), "a release that never gets healthy is refused: {}", stdout(&out));
    assert!(stderr(&out).contains("not healthy"), "{}", stderr(&out));
    assert!(l.failed.is_empty(), "{:?}", &l.failed[..l.failed.len().min(10)]);
    assert!(!l.bodies.keys().any(|k| k.starts_with("bad")), "the failed release got traffic: {:?}", l.bodies);
    let out = cli(&data, &["-o", "json", "releases", APP]);
    let releases: serde_json::Value = serde_json::from_slice(&out.stdout).expect("releases");
    let states: Vec<(u64, String)> = releases["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| {
            (
                r["spec"]["version"].as_u64().unwrap_or(0),
                r["spec"]["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![(4, "failed".into()), (3, "active".into()), (2, "superseded".into()), (1, "superseded".into())]
    );
    let (_, body) = curl(router, "/");
    assert!(body.starts_with("hello from python (v3"), "the live release still serves: {body}");

    // SIGKILL an instance under load: no 5xx for GETs, and it comes back.
    let loader = load(router, 4);
    loader.covers("the load runs", 50);
    let (pid, victim) = instance_pids().into_iter().next().expect("an instance process");
    let ok = Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
    assert!(ok.success());
    // Under load through its death, its restart and its return to the routes.
    wait_until("the killed instance is back and routed", Duration::from_secs(20), || {
        let back = instance_pids().iter().any(|(p, i)| *i == victim && *p != pid);
        (back && routed(&data) == 2).then_some(())
    });
    loader.covers("the load goes on after it is back", 100);
    let l = loader.finish();
    assert!(l.ok > 0);
    assert!(
        l.failed.is_empty(),
        "requests failed after SIGKILL of {victim}: {:?}",
        &l.failed[..l.failed.len().min(10)]
    );
    wait_until("the killed instance is routed again", Duration::from_secs(20), || {
        (routed(&data) == 2).then_some(())
    });

    // A rolling restart under load: every instance replaced, not one request failed.
    let before: Vec<String> = status(&data)["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["label"].to_string())
        .collect();
    let loader = load(router, 4);
    let out = cli(&data, &["restart", APP]);
    let l = loader.finish();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        l.failed.is_empty(),
        "requests failed during the restart: {:?}",
        &l.failed[..l.failed.len().min(10)]
    );
    let after: Vec<String> = status(&data)["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["label"].to_string())
        .collect();
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|a| !before.contains(a)), "every instance was replaced: {before:?} → {after:?}");

    // Traffic and use: the router's counters and the instances' cgroups, in status and /metrics.
    let s = wait_until("the edge reports the app's traffic", Duration::from_secs(15), || {
        let s = status(&data);
        (s["traffic"]["requests"].as_u64().unwrap_or(0) > 0).then_some(s)
    });
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|st| {
        st.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    if root {
        let measured = wait_until("instances' memory is reported", Duration::from_secs(15), || {
            let s = status(&data);
            s["instances"]
                .as_array()?
                .iter()
                .all(|i| i["memory_bytes"].as_u64().unwrap_or(0) > 0)
                .then_some(s)
        });
        assert!(measured["instances"][0]["cpu_seconds"].as_f64().is_some(), "{measured}");
    }
    let metrics = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(up.ca_path())
        .args(["-H", &format!("Authorization: Bearer {}", up.token()), &format!("{}/metrics", up.url)])
        .output()
        .expect("curl");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(metrics.contains(&format!("enjin_router_requests_total{{app=\"{APP}\"")), "{s}\n{metrics}");

    // The Rust example: built with rustc by `enjin deploy`, then served like the other.
    let rust = dir.path().join("rust-hello");
    std::fs::create_dir_all(rust.join("src")).expect("mkdir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/rust-hello");
    for f in ["enjin.toml", "src/main.rs"] {
        std::fs::copy(src.join(f), rust.join(f)).expect("copy the rust example");
    }
    let out = deploy(&data, &rust);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let out = Command::new("curl")
        .args(["-s", "-m", "5", &format!("http://rust-hello.localhost:{}/", router.port())])
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.starts_with("hello from rust (v1"), "{body}");

    // Logs: the app's own lines, with times and instance names.
    let out = cli(&data, &["logs", APP]);
    assert!(out.status.success(), "{}", stderr(&out));
    let logs = stdout(&out);
    assert!(logs.contains("GET / -> "), "{logs}");
    assert!(logs.contains("web-v3-"), "lines name their instance: {logs}");
    assert!(logs.contains("starting"), "stderr is kept too: {logs}");
    let out = cli(&data, &["logs", APP, "--since", "1h", "--tail", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Following: a request made after `logs -f` started shows up in it.
    let mut follow = Command::new(common::BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["logs", APP, "-f", "--tail", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("enjin logs -f");
    let out = follow.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Asked again until it shows: the first ones may come before the follower's first look.
    let seen = wait_until("the new line is followed", Duration::from_secs(15), || {
        assert_eq!(curl(router, "/followed-path").0, 200);
        rx.recv_timeout(Duration::from_millis(300))
            .ok()
            .into_iter()
            .chain(rx.try_iter())
            .find(|l| l.contains("GET /followed-path"))
    });
    assert!(seen.contains("web-v3-"), "{seen}");
    let _ = follow.kill();
    let _ = follow.wait();

    // Bad manifests are refused before anything is uploaded, naming the line and field.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).expect("mkdir");
    std::fs::write(
        broken.join("enjin.toml"),
        "name = \"broken\"\n\n[processes.web]\ncommand = \"x\"\ninstances = 1000\n",
    )
    .expect("write");
    let out = deploy(&data, &broken);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("enjin.toml:5"), "{}", stderr(&out));
    assert!(stderr(&out).contains("processes.web.instances"), "{}", stderr(&out));

    assert!(up.interrupt_and_clean().success());
}

#[test]
fn apps_keep_serving_while_the_control_plane_is_down() {
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let data = dir.path().join("data");
    let up = Running::start_with("up", &data, &["--hosts", "1"]);
    let router = up.router.expect("enjin up printed its router");
    wait_until("host-1 sends heartbeats", Duration::from_secs(60), || {
        heartbeat(&data, "host-1").then_some(())
    });
    let app = example_copy(dir.path());
    let out = deploy(&data, &app);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(curl(router, "/").0, 200);

    // The control plane (and the ring bus it hosts) dies: the edge and the instances are
    // processes of their own and keep serving from the last route table.
    up.crash();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let (code, body) = curl(router, "/");
        assert_eq!(code, 200, "the router stopped serving without the control plane: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Back again on the same data: the edge is adopted on the same port, not restarted.
    let up = Running::start_with("up", &data, &["--hosts", "1"]);
    assert_eq!(up.router, Some(router), "the running edge was adopted");
    let (code, body) = curl(router, "/");
    assert_eq!(code, 200, "{body}");
    wait_until("the app's instances are routed again", Duration::from_secs(30), || {
        (routed(&data) == 2).then_some(())
    });
    let s = status(&data);
    assert_eq!(s["version"], 1, "{s}");
    assert!(up.interrupt_and_clean().success());
}
