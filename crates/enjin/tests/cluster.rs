//! Three control-plane machines, each a network namespace of its own on one bridge, each with
//! an etcd member and an `enjin server`: killing a machine's server and cutting its link are
//! real. The controllers move when their leader is killed or cut off, writes through the other
//! servers go on, a healed machine catches up, a dead etcd member stops nothing, and every
//! acknowledged write is there at the end.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, root_or_skip};
use enjin_model::Kind;
use enjin_model::api::ListQuery;
use serde_json::json;

const MACHINES: usize = 3;
const API_PORT: u16 = 7480;

struct Machine {
    netns: String,
    veth: String,
    addr: IpAddr,
    data: PathBuf,
    etcd: Option<Child>,
    server: Option<Child>,
}

struct Cluster {
    dir: tempfile::TempDir,
    bridge: String,
    machines: Vec<Machine>,
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.machines {
            kill(&mut m.server);
            kill(&mut m.etcd);
            let _ = enjin_net::remove_host(&m.netns, &m.veth);
        }
        let _ = enjin_net::remove_bridge(&self.bridge);
    }
}

fn in_netns(netns: &str, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{netns}")).arg(program);
    c
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let id = std::process::id();
        let subnet = id % 250 + 1;
        let gateway = IpAddr::V4(Ipv4Addr::new(10, 254, subnet as u8, 1));
        // Names come from the front of an id: a fresh uuid each, so that none is shared.
        let bridge = enjin_net::names(&uuid::Uuid::new_v4().to_string()).bridge;
        enjin_net::ensure_bridge(&bridge, gateway, 24).expect("the machines' bridge");
        let mut machines = Vec::new();
        for i in 0..MACHINES {
            let names = enjin_net::names(&uuid::Uuid::new_v4().to_string());
            let addr = IpAddr::V4(Ipv4Addr::new(10, 254, subnet as u8, 10 + i as u8));
            enjin_net::ensure_host(&names.netns, &names.veth, &bridge, addr, 24, gateway)
                .expect("a machine's namespace");
            let data = dir.path().join(format!("machine-{i}"));
            std::fs::create_dir_all(&data).expect("data dir");
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
            machines.push(Machine {
                netns: names.netns,
                veth: names.veth,
                addr,
                data,
                etcd: None,
                server: None,
            });
        }
        // The ring 0 CA every machine shares issues each etcd member's certificate (client and
        // peer traffic both over TLS, client certificates required) and the servers' client
        // certificates.
        let ca = enjin_pki::RingCa::load_or_create(&machines[0].data.join("pki"), 0).expect("ring 0 CA");
        for m in &machines {
            let issued =
                ca.issue("etcd", &[m.addr.to_string()], Duration::from_secs(3600)).expect("etcd cert");
            let tls = dir.path().join(format!("etcd-tls-{}", m.addr));
            std::fs::create_dir_all(&tls).expect("tls dir");
            std::fs::write(tls.join("server.crt"), &issued.cert_pem).expect("cert");
            std::fs::write(tls.join("server.key"), &issued.key_pem).expect("key");
            std::fs::write(tls.join("ca.crt"), ca.cert_pem()).expect("ca");
        }
        let mut cluster = Cluster { dir, bridge, machines };
        for i in 0..MACHINES {
            cluster.start_etcd(i);
        }
        let endpoints: Vec<String> =
            cluster.machines.iter().map(|m| format!("\"https://{}:2379\"", m.addr)).collect();
        for m in &cluster.machines {
            let config = format!("[store]\nbackend = \"etcd\"\nendpoints = [{}]\n", endpoints.join(", "));
            std::fs::write(m.data.join("enjin.toml"), config).expect("enjin.toml");
        }
        cluster.start_server(0);
        // Every server of one cloud shares its CAs and signing keys.
        for i in 1..MACHINES {
            for sub in ["pki", "keys"] {
                let (src, dst) = (cluster.machines[0].data.join(sub), cluster.machines[i].data.join(sub));
                std::fs::create_dir_all(&dst).expect("mkdir");
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o700)).expect("chmod");
                for e in std::fs::read_dir(&src).expect("read dir") {
                    let e = e.expect("entry");
                    std::fs::copy(e.path(), dst.join(e.file_name())).expect("copy");
                }
            }
            cluster.start_server(i);
        }
        cluster
    }

    fn start_etcd(&mut self, i: usize) {
        let initial: Vec<String> =
            self.machines.iter().enumerate().map(|(j, m)| format!("m{j}=https://{}:2380", m.addr)).collect();
        let m = &mut self.machines[i];
        let etcd_dir = self.dir.path().join(format!("etcd-{i}"));
        let fresh = !etcd_dir.exists();
        std::fs::create_dir_all(&etcd_dir).expect("etcd dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(etcd_dir.join("etcd.log"))
            .expect("etcd log");
        let client = format!("https://{}:2379", m.addr);
        let peer = format!("https://{}:2380", m.addr);
        let tls = self.dir.path().join(format!("etcd-tls-{}", m.addr));
        let (cert, key, ca) = (tls.join("server.crt"), tls.join("server.key"), tls.join("ca.crt"));
        let child = in_netns(&m.netns, "etcd")
            .arg(format!("--cert-file={}", cert.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--trusted-ca-file={}", ca.display()))
            .arg("--client-cert-auth")
            .arg(format!("--peer-cert-file={}", cert.display()))
            .arg(format!("--peer-key-file={}", key.display()))
            .arg(format!("--peer-trusted-ca-file={}", ca.display()))
            .arg("--peer-client-cert-auth")
            .arg(format!("--name=m{i}"))
            .arg(format!("--data-dir={}", etcd_dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg(format!("--initial-cluster-state={}", if fresh { "new" } else { "existing" }))
            .arg("--initial-cluster-token=enjin-test")
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("etcd (scripts/install-deps installs etcd-server)");
        m.etcd = Some(child);
    }

    fn start_server(&mut self, i: usize) {
        let m = &mut self.machines[i];
        let mut child = in_netns(&m.netns, BIN)
            .arg("--data-dir")
            .arg(&m.data)
            .args(["server", "--listen", &format!("{}:{API_PORT}", m.addr)])
            .env("ENJIN_LOG", std::env::var("CLUSTER_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("enjin server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        loop {
            let line =
                rx.recv_timeout(Duration::from_secs(60)).expect("enjin server printed its API address");
            if line.trim().starts_with("API:") {
                break;
            }
        }
        std::thread::spawn(move || while rx.recv().is_ok() {});
        m.server = Some(child);
    }

    fn client(&self, i: usize) -> enjin_client::Client {
        let first = &self.machines[0].data;
        let token = std::fs::read_to_string(first.join("admin.token")).expect("token");
        let ca = std::fs::read_to_string(first.join("ca.crt")).expect("ca");
        let url = format!("https://{}:{API_PORT}", self.machines[i].addr);
        enjin_client::Client::with_ca(&url, Some(token.trim().to_string()), Some(&ca)).expect("client")
    }

    /// Cut machine `i` off the bridge, or connect it again.
    fn cut(&self, i: usize, off: bool) {
        enjin_net::set_link(&self.machines[i].veth, !off).expect("set the machine's link");
    }
}

/// Whether server `i` says it runs the controllers; `None` when it does not answer in 2 s.
async fn leads(c: &Cluster, i: usize) -> Option<bool> {
    let m = tokio::time::timeout(Duration::from_secs(2), c.client(i).metrics()).await.ok()?.ok()?;
    Some(m.lines().any(|l| l == "enjin_controllers_leading 1"))
}

/// The one server among `among` that leads, waiting up to `limit`.
async fn leader(c: &Cluster, among: &[usize], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        for &i in among {
            if leads(c, i).await == Some(true) {
                return i;
            }
        }
        if Instant::now() >= deadline {
            let mut states = Vec::new();
            for &i in among {
                states.push((i, leads(c, i).await));
            }
            panic!("no server among {among:?} leads within {limit:?}: {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A writer's stop switch, and its outcome: the labels acknowledged and the failures.
type Writer = (tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<(Vec<String>, Vec<String>)>);

/// Writes through server `i` every 50 ms until stopped: the labels acknowledged, and the
/// failures.
fn writer(c: &Cluster, i: usize, tag: &'static str) -> Writer {
    let client = c.client(i);
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let handle = tokio::spawn(async move {
        let (mut acked, mut failed) = (Vec::new(), Vec::new());
        let mut n = 0;
        while !*stopped.borrow() {
            let label = format!("{tag}-{n}");
            n += 1;
            match client
                .create_json(Kind::Compartment, &json!({"ring": 1, "label": label, "spec": {"type": "rack"}}))
                .await
            {
                Ok(_) => acked.push(label),
                Err(e) => failed.push(format!("{label}: {e}")),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stopped.changed() => {}
            }
        }
        (acked, failed)
    });
    (stop, handle)
}

async fn labels_through(c: &Cluster, i: usize) -> Result<Vec<String>, enjin_client::ClientError> {
    let list = c.client(i).list_json(Kind::Compartment, &ListQuery::default()).await?;
    Ok(list.items.iter().filter_map(|o| o.meta.label.clone()).collect())
}

fn others(i: usize) -> Vec<usize> {
    (0..MACHINES).filter(|j| *j != i).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_on_three_machines_survive_kills_partitions_and_a_dead_etcd_member() {
    if !root_or_skip("machines in network namespaces") {
        return;
    }
    let mut c = Cluster::start();
    let all: Vec<usize> = (0..MACHINES).collect();
    let first = leader(&c, &all, Duration::from_secs(20)).await;
    let mut acked_all = Vec::new();

    // 1. The leading server is killed -9: another leads, writes through a follower never fail.
    let (stop, w) = writer(&c, others(first)[0], "during-kill");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    kill(&mut c.machines[first].server);
    let second = leader(&c, &others(first), Duration::from_secs(10)).await;
    eprintln!("killed: server {first} → server {second} leads after {:?}", killed.elapsed());
    assert!(killed.elapsed() < Duration::from_secs(4), "hand-over after a kill: {:?}", killed.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send_replace(true);
    let (acked, failed) = w.await.expect("writer");
    assert!(failed.is_empty(), "writes through a follower while the leader died: {failed:?}");
    acked_all.extend(acked);
    c.start_server(first);

    // 2. The leader's machine is cut off: the majority elects another and goes on writing;
    //    healed, the machine's server follows and serves every write made meanwhile.
    let cut = leader(&c, &all, Duration::from_secs(10)).await;
    let majority = others(cut);
    let (stop, w) = writer(&c, majority[0], "during-partition");
    let cut_at = Instant::now();
    c.cut(cut, true);
    let next = leader(&c, &majority, Duration::from_secs(15)).await;
    eprintln!("partitioned: server {cut} → server {next} leads after {:?}", cut_at.elapsed());
    // The majority keeps writing for a while under its new leader, with the machine still cut.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send_replace(true);
    let (acked, failed) = w.await.expect("writer");
    // The writes whose requests were in flight when the member they went through lost its
    // leader may fail; none after the majority settled.
    assert!(
        failed.len() <= 3 && failed.iter().all(|f| f.contains("503")),
        "writes through the majority while a machine was cut off: {failed:?}"
    );
    assert!(acked.len() >= 10, "the majority kept writing: {} acknowledged", acked.len());
    acked_all.extend(acked.clone());
    c.cut(cut, false);
    let caught_up = Instant::now();
    loop {
        let through_healed = tokio::time::timeout(Duration::from_secs(5), labels_through(&c, cut)).await;
        if let Ok(Ok(labels)) = through_healed
            && acked.iter().all(|a| labels.contains(a))
        {
            break;
        }
        assert!(caught_up.elapsed() < Duration::from_secs(30), "the healed machine never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Healed, the cluster has one leader again (the healed member's return may move it).
    let settled = Instant::now();
    loop {
        let mut leading = Vec::new();
        for i in 0..MACHINES {
            if leads(&c, i).await == Some(true) {
                leading.push(i);
            }
        }
        assert!(leading.len() <= 1, "two servers lead at once: {leading:?}");
        if leading.len() == 1 {
            break;
        }
        assert!(settled.elapsed() < Duration::from_secs(10), "no leader after the heal");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let next = leader(&c, &all, Duration::from_secs(5)).await;

    // 3. An etcd member dies: writes through every server go on.
    let victim = others(next)[0];
    kill(&mut c.machines[victim].etcd);
    let mut writers = Vec::new();
    for (i, tag) in [(next, "member-dead-a"), (victim, "member-dead-b")] {
        writers.push(writer(&c, i, tag));
    }
    // Writing goes on through the member's death and etcd's election (well under a second
    // with its 500 ms election timeout), then for a while with two members.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (stop, w) in writers {
        stop.send_replace(true);
        let (acked, failed) = w.await.expect("writer");
        // A write in flight when the dead member was etcd's leader may be refused (503, not
        // acknowledged) while the others elect one; nothing else fails, and writing goes on.
        assert!(
            failed.len() <= 3 && failed.iter().all(|f| f.contains("503")),
            "writes with one etcd member dead: {failed:?}"
        );
        assert!(acked.len() >= 10, "writing went on: {} acknowledged", acked.len());
        acked_all.extend(acked);
    }
    c.start_etcd(victim);

    // Nothing acknowledged is lost, read through every server.
    for i in all {
        let labels = labels_through(&c, i).await.expect("list");
        let missing: Vec<&String> = acked_all.iter().filter(|a| !labels.contains(a)).collect();
        assert!(missing.is_empty(), "server {i} lacks acknowledged writes: {missing:?}");
    }
}
