//! Leader hand-over: how long after the leading control-plane server dies another one leads
//! and has a fenced write accepted, on SQLite (servers sharing the one file, as on one machine)
//! and on etcd (each server with its own connection, as on several). The leader runs on a
//! runtime of its own that is dropped without stepping down, as a killed process would be; the
//! clock starts at the drop and stops when the follower's first fenced write lands.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use enjin_control::Registry;
use enjin_control::leader::{Candidate, campaign};
use enjin_model::Ring;
use enjin_model::api::CreateRequest;
use enjin_model::kinds::NodeSpec;
use enjin_store::{EtcdStore, EtcdStoreConfig, SqliteStore, SqliteStoreConfig, Store};
use tokio::sync::watch;

const KILLS: usize = 20;
const QUICK_KILLS: usize = 2;

struct Row {
    backend: &'static str,
    ttl: Duration,
    times: Vec<Duration>,
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("failed to start a runtime")
}

/// One kill: a leads on a runtime of its own, b follows; a's runtime is dropped; the time until
/// b leads and a write fenced by b's leadership is accepted.
fn one_kill(
    rt: &tokio::runtime::Runtime,
    store_a: impl FnOnce(&tokio::runtime::Runtime) -> anyhow::Result<Arc<dyn Store>>,
    store_b: Arc<dyn Store>,
    n: usize,
) -> anyhow::Result<Duration> {
    let dying = runtime(1)?;
    let a_store = store_a(&dying)?;
    let (_stop_a, stop_a) = watch::channel(false);
    let mut a = dying.block_on(async { campaign(a_store, Candidate::controllers("a"), stop_a) });
    dying
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), a.wait_for(Option::is_some)).await })
        .context("the first server did not lead")?
        .context("campaign ended")?;
    let (stop_b, stop_b_rx) = watch::channel(false);
    let registry = Registry::new(store_b.clone());
    let mut b = rt.block_on(async { campaign(store_b, Candidate::controllers("b"), stop_b_rx) });
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(200)).await });
    anyhow::ensure!(b.borrow().is_none(), "two leaders at once");
    let died = Instant::now();
    drop(dying);
    let took = rt.block_on(async {
        let fence = tokio::time::timeout(Duration::from_secs(20), b.wait_for(Option::is_some))
            .await
            .context("the second server did not take over within 20 s")?
            .context("campaign ended")?
            .clone()
            .context("a fence")?;
        let machine = CreateRequest {
            account: None,
            ring: Ring::META,
            label: Some(format!("handover-{n}")),
            labels: BTreeMap::new(),
            spec: NodeSpec::default(),
        };
        registry.fenced(fence).create(machine, chrono::Utc::now()).await.context("the fenced write")?;
        anyhow::Ok(died.elapsed())
    })?;
    // Hand the key back at once for the next round.
    stop_b.send_replace(true);
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), b.wait_for(Option::is_none)).await })
        .ok();
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
    Ok(took)
}

fn measure(kills: usize) -> anyhow::Result<Vec<Row>> {
    let rt = runtime(1)?;
    let mut rows = Vec::new();

    let dir = tempfile::tempdir().context("tempdir")?;
    let sqlite: Arc<dyn Store> = {
        let _in = rt.enter();
        Arc::new(SqliteStore::open(SqliteStoreConfig::new(dir.path().join("state.db")))?)
    };
    let mut times = Vec::new();
    for n in 0..kills {
        let shared = sqlite.clone();
        times.push(one_kill(&rt, move |_| Ok(shared), sqlite.clone(), n)?);
    }
    rows.push(Row {
        backend: "SQLite (one file, servers in one process)",
        ttl: enjin_control::leader::DEFAULT_TTL,
        times,
    });

    let etcd = enjin_testkit::EtcdServer::start();
    let config = EtcdStoreConfig::new([etcd.endpoint()]);
    let connect = |rt: &tokio::runtime::Runtime| -> anyhow::Result<Arc<dyn Store>> {
        let store = rt.block_on(EtcdStore::connect(config.clone())).context("etcd does not answer")?;
        Ok(Arc::new(store))
    };
    let b = connect(&rt)?;
    let lease = rt.block_on(b.lease_grant(enjin_control::leader::DEFAULT_TTL))?;
    rt.block_on(b.lease_revoke(lease.id))?;
    let mut times = Vec::new();
    for n in 0..kills {
        times.push(one_kill(&rt, connect, b.clone(), kills + n)?);
    }
    rows.push(Row { backend: "etcd (one member, a connection per server)", ttl: lease.ttl, times });
    let mut processes = measure_processes(&rt, kills)?;
    processes.ttl = lease.ttl;
    rows.push(processes);
    Ok(rows)
}

fn percentile(times: &[Duration], p: f64) -> Duration {
    let mut t = times.to_vec();
    t.sort();
    let i = ((t.len() as f64 * p).ceil() as usize).clamp(1, t.len()) - 1;
    t[i]
}

pub async fn run(quick: bool) -> anyhow::Result<Vec<crate::Failure>> {
    eprintln!("measuring the leader hand-over…");
    let kills = if quick { QUICK_KILLS } else { KILLS };
    match tokio::task::spawn_blocking(move || measure(kills)).await? {
        Ok(rows) => {
            println!(
                "## Leader hand-over: the leading server killed → another leads and a fenced write lands\n"
            );
            println!("| store | lease TTL (s) | kills | p50 (ms) | p99 (ms) | max (ms) |");
            println!("|---|---:|---:|---:|---:|---:|");
            for r in &rows {
                println!(
                    "| {} | {:.1} | {} | {:.0} | {:.0} | {:.0} |",
                    r.backend,
                    r.ttl.as_secs_f64(),
                    r.times.len(),
                    percentile(&r.times, 0.5).as_secs_f64() * 1000.0,
                    percentile(&r.times, 0.99).as_secs_f64() * 1000.0,
                    percentile(&r.times, 1.0).as_secs_f64() * 1000.0,
                );
            }
            println!(
                "\nThe leader renews its lease at a third of the TTL; killed, its lease runs out \
                 within the TTL of its last renewal, and the follower, watching the key, campaigns \
                 at once. The lease TTL column is what the store granted (etcd keeps whole \
                 seconds). In the last row the clock stops when a surviving process's `/metrics` \
                 says its controllers run and a write through its API is accepted.\n"
            );
            Ok(Vec::new())
        }
        Err(e) => Ok(vec![crate::Failure { row: "leader".into(), why: format!("{e:#}") }]),
    }
}

/// One `enjin server` process of the cross-process row, and a client of its API.
struct ServerProcess {
    child: std::process::Child,
    client: enjin_client::Client,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `enjin server` on `dir` (its enjin.toml names the etcd) and wait for its API line.
fn start_server(dir: &std::path::Path) -> anyhow::Result<ServerProcess> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(crate::idle::binary()?)
        .arg("--data-dir")
        .arg(dir)
        .args(["server", "--listen", "127.0.0.1:0"])
        .env("ENJIN_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("failed to run enjin server")?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let url = loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).context("enjin server printed no API address")?;
        if let Some(rest) = line.trim().strip_prefix("API:") {
            break rest.split_whitespace().next().context("an address after API:")?.to_string();
        }
    };
    std::thread::spawn(move || while rx.recv().is_ok() {});
    let token = std::fs::read_to_string(dir.join("admin.token")).context("admin token")?;
    let ca = std::fs::read_to_string(dir.join("ca.crt")).context("CA")?;
    let client = enjin_client::Client::with_ca(&url, Some(token.trim().to_string()), Some(&ca))?;
    Ok(ServerProcess { child, client })
}

/// Whether the server's `/metrics` says it runs the controllers.
async fn process_leads(s: &ServerProcess) -> bool {
    s.client.metrics().await.is_ok_and(|m| m.lines().any(|l| l == "enjin_controllers_leading 1"))
}

/// Kill -9 the leading one of three `enjin server` processes on one etcd, `kills` times: the
/// time until another server's metrics say its controllers run and a write through it is
/// accepted. The killed server is started again (as a follower) before the next kill.
fn measure_processes(rt: &tokio::runtime::Runtime, kills: usize) -> anyhow::Result<Row> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().context("tempdir")?;
    let etcd = enjin_testkit::EtcdServer::start();
    let config = format!("[store]\nbackend = \"etcd\"\nendpoints = [\"{}\"]\n", etcd.endpoint());
    let dirs: Vec<std::path::PathBuf> = (1..=3).map(|i| dir.path().join(format!("server-{i}"))).collect();
    for d in &dirs {
        std::fs::create_dir_all(d)?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
        std::fs::write(d.join("enjin.toml"), &config)?;
    }
    let mut servers = vec![Some(start_server(&dirs[0])?)];
    // Every server of one cloud shares its CAs and signing keys.
    for d in &dirs[1..] {
        for sub in ["pki", "keys"] {
            std::fs::create_dir_all(d.join(sub))?;
            std::fs::set_permissions(d.join(sub), std::fs::Permissions::from_mode(0o700))?;
            for entry in std::fs::read_dir(dirs[0].join(sub))? {
                let entry = entry?;
                std::fs::copy(entry.path(), d.join(sub).join(entry.file_name()))?;
            }
        }
        servers.push(Some(start_server(d)?));
    }
    let ttl = enjin_control::leader::DEFAULT_TTL;
    let mut times = Vec::new();
    for n in 0..kills {
        let leader = rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                for (i, s) in servers.iter().enumerate() {
                    if let Some(s) = s
                        && process_leads(s).await
                    {
                        return Ok(i);
                    }
                }
                anyhow::ensure!(Instant::now() < deadline, "no server leads");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })?;
        let killed = Instant::now();
        drop(servers[leader].take());
        let took = rt.block_on(async {
            let deadline = killed + Duration::from_secs(20);
            loop {
                for s in servers.iter().flatten() {
                    if process_leads(s).await {
                        let body =
                            serde_json::json!({"ring": 0, "label": format!("handover-{n}"), "spec": {}});
                        s.client.create_json(enjin_model::Kind::Node, &body).await.context("the write")?;
                        return anyhow::Ok(killed.elapsed());
                    }
                }
                anyhow::ensure!(Instant::now() < deadline, "no server took over within 20 s");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })?;
        times.push(took);
        servers[leader] = Some(start_server(&dirs[leader])?);
    }
    Ok(Row { backend: "etcd, three `enjin server` processes, the leader killed -9", ttl, times })
}
