//! Boot the real `enjin` binary on loopback, port 0, in a temporary data directory.

#![allow(dead_code, reason = "each test file uses a different part of the harness")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[allow(unused_imports, reason = "each test file uses a different part of the harness")]
pub use enjin_testkit::{root_or_skip, wait_until};

pub const BIN: &str = env!("CARGO_BIN_EXE_enjin");

/// A hosts' network range of this test process's own (10.251.x.0/24), so that it meets neither
/// another test's nor an `enjin up` the machine may be running.
pub fn own_range() -> String {
    format!("10.251.{}.0/24", std::process::id() % 250 + 1)
}

/// An instance network range of this test process's own (10.x.0.0/16, x from 160 to 223),
/// for the same reason.
pub fn own_instance_range() -> String {
    format!("10.{}.0.0/16", 160 + std::process::id() % 64)
}

/// A running `enjin up` or `enjin server`; killed on drop.
pub struct Running {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    /// `enjin up`'s HTTP router and DNS service.
    pub router: Option<std::net::SocketAddr>,
    pub dns: Option<std::net::SocketAddr>,
    /// Stopped (and reaped) by the test itself: nothing left for `drop` to do.
    stopped: bool,
}

impl Running {
    /// Start `enjin <mode>` and wait until it prints its API address.
    pub fn start(mode: &str, data_dir: &Path) -> Running {
        Running::start_with(mode, data_dir, &[])
    }

    pub fn start_with(mode: &str, data_dir: &Path, extra: &[&str]) -> Running {
        Running::start_in(mode, data_dir, (&own_range(), &own_instance_range()), extra)
    }

    /// Start `enjin <mode>` with these hosts' and instances' ranges (for `enjin up`).
    pub fn start_in(mode: &str, data_dir: &Path, ranges: (&str, &str), extra: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .arg("--data-dir")
            .arg(data_dir)
            .arg(mode)
            .args(if extra.contains(&"--listen") { &[][..] } else { &["--listen", "127.0.0.1:0"][..] })
            .args(["--bus-listen", "127.0.0.1:0"])
            .args(if mode == "up" {
                [
                    "--hosts-cidr",
                    ranges.0,
                    "--instance-cidr",
                    ranges.1,
                    "--router-listen",
                    "127.0.0.1:0",
                    "--dns-listen",
                    "127.0.0.1:0",
                ]
                .map(String::from)
                .to_vec()
            } else {
                Vec::new()
            })
            .args(extra)
            .env("ENJIN_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn enjin");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let url = loop {
            let line =
                rx.recv_timeout(Duration::from_secs(60)).expect("enjin printed its API address in time");
            if let Some(rest) = line.trim().strip_prefix("API:") {
                break rest.split_whitespace().next().expect("an address after API:").to_string();
            }
        };
        let (mut router, mut dns) = (None, None);
        if mode == "up" {
            loop {
                let line =
                    rx.recv_timeout(Duration::from_secs(60)).expect("enjin up printed its banner in time");
                let line = line.trim();
                if let Some(rest) = line.strip_prefix("router:") {
                    let port = rest
                        .split_whitespace()
                        .next()
                        .and_then(|u| u.rsplit(':').next())
                        .and_then(|p| p.parse().ok());
                    router = port.map(|p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p)));
                }
                if let Some(rest) = line.strip_prefix("dns:") {
                    dns = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                }
                if line.starts_with("try:") {
                    break;
                }
            }
        }
        // Keep draining stdout so that the child never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Running { child, url, data_dir: data_dir.to_path_buf(), router, dns, stopped: false }
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token")).expect("admin token").trim().to_string()
    }

    /// The CA certificate (PEM) the API's certificate comes from.
    pub fn ca(&self) -> String {
        std::fs::read_to_string(self.ca_path()).expect("the CA certificate in the data directory")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.data_dir.join("ca.crt")
    }

    /// A client of the API that trusts its CA (none needed for an `--insecure-http` server).
    pub fn client(&self) -> enjin_client::Client {
        let ca = self.url.starts_with("https://").then(|| self.ca());
        enjin_client::Client::with_ca(&self.url, Some(self.token()), ca.as_deref()).expect("client")
    }

    /// Send SIGINT (what Ctrl-C sends) and wait for a clean exit.
    pub fn interrupt(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-INT", &pid]).status().expect("run kill");
        assert!(ok.success(), "kill -INT {pid}");
        let status =
            wait_timeout(&mut self.child, Duration::from_secs(20)).expect("enjin stopped after SIGINT");
        self.stopped = true;
        status
    }

    /// Stop it as Ctrl-C does, then remove the network namespaces, bridge and cgroups it made
    /// for its hosts (they outlive the process by design, so that a restart finds them).
    pub fn interrupt_and_clean(self) -> std::process::ExitStatus {
        let json = |args: &[&str]| -> serde_json::Value {
            serde_json::from_slice(&cli(&self.data_dir, args).stdout).unwrap_or_default()
        };
        let nodes = json(&["-o", "json", "node", "list"]);
        let networks = json(&["-o", "json", "network", "list"]);
        let status = self.interrupt();
        remove_host_networks(&nodes, &networks);
        status
    }

    /// SIGKILL, as a crash.
    pub fn crash(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
        self.stopped = true;
    }
}

impl Drop for Running {
    /// A test that fails part-way still stops `enjin up` the way Ctrl-C does, so that its hosts'
    /// agents and their children stop too rather than live on as orphans; SIGKILL only if that
    /// does not work in time.
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        if wait_timeout(&mut self.child, Duration::from_secs(15)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A plain-HTTP client (for the router): it trusts no CA, and is handed its TLS setup since
/// reqwest has no crypto provider of its own in this build.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(enjin_client::tls::no_roots().expect("a TLS configuration"))
        .timeout(timeout)
        .build()
        .expect("an HTTP client")
}

/// Run the CLI against a data directory (it finds the server, token and CA there).
pub fn cli(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("ENJIN_SERVER")
        .env_remove("ENJIN_TOKEN")
        .output()
        .expect("run enjin")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Remove the network namespaces, bridges and cgroups `enjin up` made for the nodes and
/// networks listed.
fn remove_host_networks(list: &serde_json::Value, networks: &serde_json::Value) {
    let short = |u: &str| u.chars().filter(char::is_ascii_alphanumeric).take(8).collect::<String>();
    for n in list["items"].as_array().into_iter().flatten() {
        let uuid = n["uuid"].as_str().unwrap_or_default();
        let _ = Command::new("ip").args(["link", "del", &format!("ejv-{}", short(uuid))]).status();
        let _ = Command::new("ip").args(["netns", "del", &format!("enjin-{}", short(uuid))]).status();
        // An instance's own namespace (its veth pair goes with it).
        let _ = Command::new("ip").args(["netns", "del", &format!("eji-{}", short(uuid))]).status();
    }
    // Empty cgroups of the hosts' instances (the launcher leaves them; see the closing note).
    for n in list["items"].as_array().into_iter().flatten() {
        let uuid = n["uuid"].as_str().unwrap_or_default();
        for controller in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let host = controller.path().join("enjin").join(uuid);
            for inst in std::fs::read_dir(&host).into_iter().flatten().flatten() {
                if inst.path().is_dir() {
                    let _ = std::fs::remove_dir(inst.path());
                }
            }
            let _ = std::fs::remove_dir(&host);
        }
    }
    for n in networks["items"].as_array().into_iter().flatten() {
        let uuid = n["uuid"].as_str().unwrap_or_default();
        let _ = Command::new("ip").args(["link", "del", &format!("ejb-{}", short(uuid))]).status();
    }
}

/// The Python example copied where the test may change it.
pub fn example_copy(into: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/python-hello");
    let dst = into.join("python-hello");
    std::fs::create_dir_all(&dst).expect("mkdir");
    for f in ["app.py", "enjin.toml", "Procfile"] {
        std::fs::copy(src.join(f), dst.join(f)).expect("copy the example");
    }
    dst
}

/// Whether ring 1 node `label`'s agent says it is alive.
pub fn heartbeat(data: &Path, label: &str) -> bool {
    let out = cli(data, &["-o", "json", "node-observation", "list", "--parent", label]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["items"].as_array().is_some_and(|items| {
        items.iter().any(|o| o["spec"]["strategy"] == "heartbeat" && o["spec"]["state"] == "running")
    })
}

/// A machine of its own for a joined host: a network namespace on the hosts' bridge and the
/// agent run in it; the agent stopped (SIGTERM: it stops its children) and the namespace
/// removed on drop.
pub struct Machine {
    pub netns: String,
    pub veth: String,
    pub agent: Option<Child>,
}

impl Machine {
    /// `enjin …` inside the machine's namespace.
    pub fn enjin(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns)).arg(BIN).args(args).env("ENJIN_LOG", "warn");
        c
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = Command::new("kill").arg(agent.id().to_string()).status();
            if wait_timeout(&mut agent, Duration::from_secs(20)).is_none() {
                let _ = agent.kill();
                let _ = agent.wait();
            }
        }
        let _ = enjin_net::remove_host(&self.netns, &self.veth);
    }
}

/// A data directory (0700) under `dir`, with the ring 0 CA the server will find in it, and an
/// etcd over TLS that trusts that CA for clients and serves a certificate it issued for
/// 127.0.0.1 (which the server checks against it by default).
pub fn data_dir_with_etcd(dir: &Path) -> (PathBuf, enjin_testkit::EtcdServer) {
    use std::os::unix::fs::PermissionsExt;
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let ca = enjin_pki::RingCa::load_or_create(&data.join("pki"), 0).expect("ring 0 CA");
    let issued = ca.issue("etcd", &["127.0.0.1".into()], Duration::from_secs(3600)).expect("etcd cert");
    let tls_dir = dir.join("etcd-tls");
    std::fs::create_dir_all(&tls_dir).expect("tls dir");
    let write = |name: &str, pem: &str| {
        let path = tls_dir.join(name);
        std::fs::write(&path, pem).expect("write pem");
        path
    };
    let tls = enjin_testkit::EtcdTls {
        cert: write("server.crt", &issued.cert_pem),
        key: write("server.key", &issued.key_pem),
        trusted_ca: write("ca.crt", ca.cert_pem()),
    };
    (data, enjin_testkit::EtcdServer::start_with(Some(&tls)))
}
