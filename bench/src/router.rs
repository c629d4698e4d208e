//! The HTTP router against nginx: one fast backend (a hyper hello server on its own runtime),
//! driven by wrk directly, through enjin's router (in this process, on its own runtime) and
//! through nginx (a separate process with a generated config in a temp dir). Everything listens
//! on 127.0.0.1 only; nginx is stopped and its directory removed when the section ends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use enjin_model::api::{RouteBackend, RouteEntry, RouteTable};
use enjin_router::{Router, RouterConfig};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

use crate::Failure;

/// The host the route table routes, and wrk asks for.
const HOST: &str = "bench.localhost";
const APP: &str = "bench";
const BODY: &[u8] = b"hello from the bench backend\n";

/// wrk's load: threads and connections. Two threads for two cores; 64 connections is enough to
/// keep every thread of every server busy without measuring the accept queue.
const WRK_THREADS: u32 = 2;
const WRK_CONNECTIONS: u32 = 64;
const SECONDS: u32 = 10;
const QUICK_SECONDS: u32 = 2;
/// A short run before each measured one, so that both proxies have their upstream pools
/// filled and nothing is measured cold.
const WARMUP_SECONDS: u32 = 1;
/// Alternating rounds of the host-namespace and instance-namespace rows (one in a quick run).
const NETNS_ROUNDS: usize = 5;
/// Past its `-d`, how long wrk may take before it is killed.
const WRK_GRACE: Duration = Duration::from_secs(15);
/// How long nginx may take to answer on its port, and to stop.
const NGINX_PATIENCE: Duration = Duration::from_secs(10);

/// Worker threads of the backend's runtime, and the router's (its default, one per core);
/// nginx runs `worker_processes auto`, one per core too.
fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path3 {
    Direct,
    Enjin,
    /// The router to a backend in a host's namespace, on the hosts' bridge (instances before
    /// they had namespaces of their own).
    EnjinHostNs,
    /// The router to a backend in an instance's own namespace, through its host's eBPF fast
    /// path (how instances are reached).
    EnjinNetns,
    /// The same, a second instance left on the ordinary path through the host's IP stack and
    /// nftables.
    EnjinNetnsPlain,
    Nginx,
}

impl Path3 {
    fn name(self) -> &'static str {
        match self {
            Path3::Direct => "direct to the backend",
            Path3::Enjin => "through enjin-router",
            Path3::EnjinHostNs => "through enjin-router, backend in a host namespace (before)",
            Path3::EnjinNetns => "through enjin-router, backend in an instance namespace (eBPF fast path)",
            Path3::EnjinNetnsPlain => {
                "through enjin-router, backend in an instance namespace (ordinary path)"
            }
            Path3::Nginx => "through nginx",
        }
    }
}

/// What wrk reported for one path.
#[derive(Debug, Clone, Default)]
struct Wrk {
    requests: u64,
    per_sec: f64,
    p50: Option<Duration>,
    p99: Option<Duration>,
    non_2xx: u64,
    socket_errors: String,
    /// CPU time the proxy (router threads or nginx processes) used per request, when known.
    proxy_cpu: Option<Duration>,
}

#[derive(Debug)]
struct Row {
    path: Path3,
    outcome: Result<Wrk, String>,
}

/// Runs the section and prints its table. Blocking: it owns two runtimes of its own and waits
/// for wrk, so it runs on a blocking thread.
pub async fn run(quick: bool) -> anyhow::Result<Vec<Failure>> {
    tokio::task::spawn_blocking(move || section(quick)).await.context("the router section panicked")?
}

fn section(quick: bool) -> anyhow::Result<Vec<Failure>> {
    let seconds = if quick { QUICK_SECONDS } else { SECONDS };
    let warmup = if quick { 0 } else { WARMUP_SECONDS };
    let wrk = which("wrk", "/usr/bin/wrk")
        .context("wrk is needed for the router section (Debian: apt-get install wrk)")?;
    let nginx = which("nginx", "/usr/sbin/nginx")
        .context("nginx is needed for the router section (Debian: apt-get install nginx)")?;

    let backend_rt = runtime("bench-backend", workers())?;
    let backend = backend_rt.block_on(hello_server())?;

    // The router runs its own worker threads (one per core); this runtime only waits in `serve`.
    let router_rt = runtime("bench-router", 1)?;
    let router = router_to(backend, "bench-0");
    let listener = router_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .context("failed to bind the router on 127.0.0.1:0")?;
    let router_addr = listener.local_addr().context("failed to read the router's address")?;
    let (stop_router, router_stopped) = oneshot::channel::<()>();
    let serving = {
        let router = router.clone();
        router_rt.spawn(async move {
            router
                .serve(listener, async move {
                    drop(router_stopped.await);
                })
                .await
        })
    };

    let dir = tempfile::Builder::new()
        .prefix("enjin-bench-nginx-")
        .tempdir()
        .context("failed to create nginx's directory")?;
    let mut rows = Vec::new();
    eprintln!("measuring the router: direct, through enjin-router, through nginx…");
    let load = |addr: SocketAddr, cpu: &dyn Fn() -> Option<u64>| -> Result<Wrk, String> {
        if warmup > 0 {
            wrk_run(&wrk, addr, warmup)?;
        }
        let before = cpu();
        let mut w = wrk_run(&wrk, addr, seconds)?;
        if let (Some(before), Some(after)) = (before, cpu())
            && w.requests > 0
        {
            let seconds = after.saturating_sub(before) as f64 / TICKS_PER_SECOND;
            w.proxy_cpu = Duration::try_from_secs_f64(seconds / w.requests as f64).ok();
        }
        Ok(w)
    };
    rows.push(Row { path: Path3::Direct, outcome: load(backend, &|| None) });
    rows.push(Row { path: Path3::Enjin, outcome: load(router_addr, &|| Some(thread_ticks("enjin-router"))) });
    let mut log = Vec::new();
    if crate::netns_backend::possible() {
        let rounds = if quick { 1 } else { NETNS_ROUNDS };
        let (before, now, plain) = netns_rows(
            &backend_rt,
            rounds,
            &|addr| load(addr, &|| Some(thread_ticks("enjin-router"))),
            &mut log,
        );
        rows.push(Row { path: Path3::EnjinHostNs, outcome: before });
        rows.push(Row { path: Path3::EnjinNetns, outcome: now });
        rows.push(Row { path: Path3::EnjinNetnsPlain, outcome: plain });
    }
    let nginx_outcome = match Nginx::start(&nginx, dir.path(), backend) {
        Ok(mut n) => {
            let master = n.child.id();
            let outcome = load(n.addr, &|| {
                let pids = std::iter::once(master).chain(crate::procfs::children(master));
                pids.map(|pid| stat_ticks(&format!("/proc/{pid}/stat"))).sum()
            });
            let stopped = n.stop();
            match (outcome, stopped) {
                (Ok(w), Ok(())) => Ok(w),
                (Err(e), _) => Err(e),
                (Ok(_), Err(e)) => Err(format!("{e:#}")),
            }
        }
        Err(e) => Err(format!("{e:#}")),
    };
    rows.push(Row { path: Path3::Nginx, outcome: nginx_outcome });

    let _ = stop_router.send(());
    let served = router_rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), serving).await });
    let stats = router.stats(APP);
    // Connections the backend still holds end with its runtime.
    router_rt.shutdown_timeout(Duration::from_secs(1));
    backend_rt.shutdown_timeout(Duration::from_secs(1));
    dir.close().context("failed to remove nginx's directory")?;

    print(&rows, seconds, stats.as_ref(), &log);

    let mut failures: Vec<Failure> = rows
        .iter()
        .filter_map(|r| {
            let why = match &r.outcome {
                Err(e) => e.clone(),
                Ok(w) if w.non_2xx > 0 => format!("{} responses were not 2xx", w.non_2xx),
                Ok(w) if w.requests == 0 => "no request completed".into(),
                Ok(_) => return None,
            };
            Some(Failure { row: format!("router: {}", r.path.name()), why })
        })
        .collect();
    match served {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => failures.push(Failure { row: "router: serve".into(), why: e.to_string() }),
        Ok(Err(e)) => failures.push(Failure { row: "router: serve".into(), why: format!("panicked: {e}") }),
        Err(_) => failures.push(Failure { row: "router: serve".into(), why: "did not stop in 10 s".into() }),
    }
    Ok(failures)
}

fn runtime(name: &str, workers: usize) -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("failed to start the {name} runtime"))
}

/// `name` on PATH, else the path Debian installs it at.
fn which(name: &str, debian: &str) -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    match on_path {
        Some(p) => Ok(p),
        None if Path::new(debian).is_file() => Ok(debian.into()),
        None => bail!("{name} is not on PATH nor at {debian}"),
    }
}

/// The backend: HTTP/1.1 keep-alive, the same small body every time.
async fn hello_server() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("failed to bind the backend on 127.0.0.1:0")?;
    serve_hello(listener)
}

/// The backend on a listener made elsewhere (in an instance's namespace).
fn serve_hello(listener: tokio::net::TcpListener) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr().context("failed to read the backend's address")?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    let mut response = hyper::Response::new(Full::new(Bytes::from_static(BODY)));
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain"),
                    );
                    Ok::<_, Infallible>(response)
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(addr)
}

/// The router (a second one, the same configuration) to a backend in a host's namespace, a
/// third to one in an instance's own namespace behind that host's firewall and fast path,
/// reached through the host as the edge reaches instances, and a fourth to a second instance
/// there on the ordinary path. All stay up while wrk goes round them for `rounds` rounds (the
/// order rotates), so that a slow spell of the machine falls on every row alike; each row is
/// its median round by req/s. What every round measured goes to `log`.
fn netns_rows(
    backend_rt: &Runtime,
    rounds: usize,
    load: &dyn Fn(SocketAddr) -> Result<Wrk, String>,
    log: &mut Vec<String>,
) -> (Result<Wrk, String>, Result<Wrk, String>, Result<Wrk, String>) {
    let failed = |e: String| (Err(e.clone()), Err(e.clone()), Err(e));
    let mut made = match crate::netns_backend::InstanceBackend::make() {
        Ok(m) => m,
        Err(e) => return failed(format!("{e:#}")),
    };
    let (Some(instance), Some(host), Some(plain)) =
        (made.listener.take(), made.host_listener.take(), made.plain_listener.take())
    else {
        return failed("no listener".into());
    };
    let routers = RouterInFront::start(backend_rt, host, "bench-host").and_then(|h| {
        let ns = RouterInFront::start(backend_rt, instance, "bench-ns")?;
        Ok((h, ns, RouterInFront::start(backend_rt, plain, "bench-plain")?))
    });
    let mut runs: [Vec<Result<Wrk, String>>; 3] = Default::default();
    match routers {
        Ok((host, ns, plain)) => {
            let addrs = [host.addr, ns.addr, plain.addr];
            for round in 0..rounds {
                for i in 0..3 {
                    let which = (round + i) % 3;
                    runs[which].push(load(addrs[which]));
                }
            }
            host.stop();
            ns.stop();
            plain.stop();
        }
        Err(e) => return failed(e),
    }
    drop(made);
    let rates = |runs: &[Result<Wrk, String>]| -> String {
        let each: Vec<String> = runs
            .iter()
            .map(|r| r.as_ref().map_or_else(|_| "failed".into(), |w| format!("{:.0}", w.per_sec)))
            .collect();
        each.join(", ")
    };
    log.push(format!(
        "Host namespace vs instance namespace, {rounds} rounds in rotating order (req/s): host namespace [{}], \
         instance on the fast path [{}], instance on the ordinary path [{}].",
        rates(&runs[0]),
        rates(&runs[1]),
        rates(&runs[2])
    ));
    let [before, now, plain] = runs;
    (median(before), median(now), median(plain))
}

/// The median run by req/s; the first failure if any run failed.
fn median(runs: Vec<Result<Wrk, String>>) -> Result<Wrk, String> {
    let mut ok = Vec::new();
    for r in runs {
        ok.push(r?);
    }
    ok.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
    let mid = ok.len() / 2;
    ok.into_iter().nth(mid).ok_or_else(|| "no run".into())
}

/// A router with one worker thread per core whose one app has `backend` as its one backend.
fn router_to(backend: SocketAddr, label: &str) -> Router {
    let router = Router::new(RouterConfig { threads: workers(), ..RouterConfig::default() });
    router.apply(RouteTable {
        version: 1,
        routes: vec![RouteEntry {
            app: APP.into(),
            hosts: vec![HOST.into()],
            path_prefix: "/".into(),
            backends: vec![RouteBackend {
                instance: uuid::Uuid::new_v4(),
                label: label.into(),
                addr: backend,
            }],
        }],
    });
    router
}

/// The hello backend served on a listener, and a router of its own in front of it on
/// 127.0.0.1.
struct RouterInFront {
    addr: SocketAddr,
    runtime: Runtime,
    stop: oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), std::io::Error>>,
}

impl RouterInFront {
    fn start(backend_rt: &Runtime, listener: std::net::TcpListener, label: &str) -> Result<Self, String> {
        let backend = backend_rt
            .block_on(async { serve_hello(tokio::net::TcpListener::from_std(listener)?) })
            .map_err(|e| format!("{e:#}"))?;
        let runtime = runtime("bench-router-ns", 1).map_err(|e| format!("{e:#}"))?;
        let router = router_to(backend, label);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| format!("failed to bind the router: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = runtime.spawn(async move {
            router
                .serve(listener, async move {
                    drop(stopped.await);
                })
                .await
        });
        Ok(RouterInFront { addr, runtime, stop, serving })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let serving = self.serving;
        let _ = self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), serving).await });
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// Runs wrk against `addr` for `seconds` and parses what it prints.
fn wrk_run(wrk: &Path, addr: SocketAddr, seconds: u32) -> Result<Wrk, String> {
    let mut child = Command::new(wrk)
        .arg(format!("-t{WRK_THREADS}"))
        .arg(format!("-c{WRK_CONNECTIONS}"))
        .arg(format!("-d{seconds}s"))
        .args(["--latency", "--timeout", "2s", "-H"])
        .arg(format!("Host: {HOST}"))
        .arg(format!("http://{addr}/"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("failed to start {}: {e}", wrk.display()))?;
    let deadline = Instant::now() + Duration::from_secs(seconds.into()) + WRK_GRACE;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("wrk ran past {seconds} s + {} s and was killed", WRK_GRACE.as_secs()));
            }
            Err(e) => return Err(format!("failed to wait for wrk: {e}")),
        }
    }
    let output = child.wait_with_output().map_err(|e| format!("failed to read wrk's output: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("wrk failed ({}): {}{}", output.status, stdout.trim(), stderr.trim()));
    }
    parse_wrk(&stdout).ok_or_else(|| format!("could not read wrk's output:\n{stdout}"))
}

fn parse_wrk(out: &str) -> Option<Wrk> {
    let mut w = Wrk::default();
    let mut rate = None;
    for line in out.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => rate = v.parse().ok(),
            (Some("50%"), Some(v)) => w.p50 = parse_duration(v),
            (Some("99%"), Some(v)) => w.p99 = parse_duration(v),
            (Some(n), Some("requests")) => w.requests = n.parse().ok()?,
            _ if line.starts_with("Non-2xx or 3xx responses:") => {
                w.non_2xx = line.rsplit(' ').next()?.parse().ok()?;
            }
            _ if line.starts_with("Socket errors:") => {
                w.socket_errors = line.trim_start_matches("Socket errors:").trim().to_string();
            }
            _ => {}
        }
    }
    w.per_sec = rate?;
    Some(w)
}

/// wrk's durations: `291.00us`, `1.08ms`, `2.00s`, `1.00m`.
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// nginx as a reverse proxy to the backend, in its own process group, from a config in `dir`.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    fn start(binary: &Path, dir: &Path, backend: SocketAddr) -> anyhow::Result<Nginx> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let d = dir.display();
        // Every path nginx writes is inside `dir`; `-e` keeps even the log it opens before
        // reading this file there.
        let config = format!(
            "daemon off;\n\
             master_process on;\n\
             worker_processes auto;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
             \x20 access_log off;\n\
             \x20 client_body_temp_path {d}/client_body;\n\
             \x20 proxy_temp_path {d}/proxy;\n\
             \x20 fastcgi_temp_path {d}/fastcgi;\n\
             \x20 uwsgi_temp_path {d}/uwsgi;\n\
             \x20 scgi_temp_path {d}/scgi;\n\
             \x20 upstream backend {{ server {backend}; keepalive 128; }}\n\
             \x20 server {{\n\
             \x20   listen {addr};\n\
             \x20   location / {{\n\
             \x20     proxy_pass http://backend;\n\
             \x20     proxy_http_version 1.1;\n\
             \x20     proxy_set_header Connection \"\";\n\
             \x20     proxy_set_header Host $host;\n\
             \x20   }}\n\
             \x20 }}\n\
             }}\n"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).with_context(|| format!("failed to write {}", conf.display()))?;
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("failed to start {}", binary.display()))?;
        let mut nginx = Nginx { child, addr, dir: dir.to_path_buf() };
        let deadline = Instant::now() + NGINX_PATIENCE;
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                bail!("nginx exited ({status}) before serving: {}", nginx.log());
            }
            if Instant::now() >= deadline {
                let log = nginx.log();
                let _ = nginx.stop();
                bail!("nginx did not listen on {addr} within {} s: {log}", NGINX_PATIENCE.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_else(|e| format!("(no error log: {e})"))
    }

    /// SIGTERM to the master (a fast shutdown that takes its workers along), SIGKILL to the
    /// whole group if that does not do it in time.
    fn stop(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait().ok().flatten().is_some() {
            return Ok(());
        }
        let pid =
            enjin_sys::Pid::from_raw(i32::try_from(self.child.id()).context("nginx's pid is out of range")?);
        let _ = enjin_sys::proc::signal(pid, enjin_sys::Signal::SIGTERM);
        let deadline = Instant::now() + NGINX_PATIENCE;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = enjin_sys::proc::signal_group(pid, enjin_sys::Signal::SIGKILL);
        let _ = self.child.wait();
        bail!("nginx did not stop on SIGTERM within {} s and was killed", NGINX_PATIENCE.as_secs())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// `/proc`'s unit of CPU time: USER_HZ, 100 on every Linux architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU ticks from a `/proc` `stat` file (fields 14 and 15).
fn stat_ticks(path: &str) -> Option<u64> {
    ticks_in(&std::fs::read_to_string(path).ok()?)
}

fn ticks_in(stat: &str) -> Option<u64> {
    // The name in field 2 may hold spaces; the fields after its closing parenthesis do not.
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks of this process's threads whose name starts with `prefix`.
fn thread_ticks(prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix)))
        .filter_map(|t| stat_ticks(&t.path().join("stat").to_string_lossy()))
        .sum()
}

/// A port free on 127.0.0.1 a moment ago, for nginx, which cannot be told to pick one.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("failed to find a free port")?;
    Ok(listener.local_addr().context("failed to read a free port")?.port())
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.3}", d.as_secs_f64() * 1000.0))
}

fn print(rows: &[Row], seconds: u32, stats: Option<&enjin_router::AppStats>, log: &[String]) {
    println!(
        "## HTTP router: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{seconds}s on 127.0.0.1, one hyper hello backend, \
         HTTP/1.1 keep-alive on both sides; the backend on a {w}-thread runtime and the router with {w} worker \
         threads in this process, nginx with worker_processes auto ({w}); proxy CPU is the router's threads' \
         or nginx's processes' user+system time over the requests served\n",
        w = workers()
    );
    println!(
        "| router path | req/s | p50 (ms) | p99 (ms) | vs direct | proxy CPU (µs/req) | requests | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    let direct = rows
        .iter()
        .find(|r| r.path == Path3::Direct)
        .and_then(|r| r.outcome.as_ref().ok())
        .map(|w| w.per_sec);
    for r in rows {
        match &r.outcome {
            Ok(w) => {
                let vs = direct
                    .filter(|d| *d > 0.0)
                    .map_or_else(|| "-".into(), |d| format!("{:.2}", w.per_sec / d));
                let mut errors = Vec::new();
                if w.non_2xx > 0 {
                    errors.push(format!("{} not 2xx", w.non_2xx));
                }
                if !w.socket_errors.is_empty() {
                    errors.push(format!("socket: {}", w.socket_errors));
                }
                let errors = if errors.is_empty() { "0".to_string() } else { errors.join("; ") };
                let cpu = w.proxy_cpu.map_or_else(|| "-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e6));
                println!(
                    "| {} | {:.0} | {} | {} | {vs} | {cpu} | {} | {errors} |",
                    r.path.name(),
                    w.per_sec,
                    ms(w.p50),
                    ms(w.p99),
                    w.requests
                );
            }
            Err(e) => {
                println!("| {} | - | - | - | - | - | - | failed: {} |", r.path.name(), e.replace('\n', " "))
            }
        }
    }
    println!();
    let rate =
        |p: Path3| rows.iter().find(|r| r.path == p).and_then(|r| r.outcome.as_ref().ok()).map(|w| w.per_sec);
    match (rate(Path3::Enjin), rate(Path3::Nginx)) {
        (Some(e), Some(n)) if n > 0.0 => {
            let verdict = if e > n { "ahead of" } else { "behind" };
            println!("enjin-router is {verdict} nginx: {:.2}x nginx's req/s ({e:.0} vs {n:.0}).", e / n);
        }
        _ => println!("enjin-router vs nginx: not compared (a row failed)."),
    }
    if let (Some(before), Some(now)) = (rate(Path3::EnjinHostNs), rate(Path3::EnjinNetns))
        && before > 0.0
    {
        println!(
            "Instance namespace (fast path) vs host namespace (medians): {:.2}x ({now:.0} vs {before:.0}).",
            now / before
        );
    }
    if let (Some(before), Some(plain)) = (rate(Path3::EnjinHostNs), rate(Path3::EnjinNetnsPlain))
        && before > 0.0
    {
        println!(
            "Instance namespace (ordinary path) vs host namespace (medians): {:.2}x ({plain:.0} vs {before:.0}).",
            plain / before
        );
    }
    for line in log {
        println!("{line}");
    }
    if let Some(s) = stats {
        println!(
            "The router's own count for the app: {} responses ({} 2xx, {} 5xx), p50 {} ms, p99 {} ms to response \
             headers (from its histogram).",
            s.requests,
            s.by_class.success,
            s.by_class.server_error,
            ms(s.p50),
            ms(s.p99)
        );
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 10s test @ http://127.0.0.1:8080/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   635.91us    0.89ms  12.92ms   93.69%
    Req/Sec    56.20k     8.07k   62.00k    86.54%
  Latency Distribution
     50%  291.00us
     75%  523.00us
     90%    1.08ms
     99%    4.46ms
  1117853 requests in 10.01s, 118.35MB read
  Socket errors: connect 0, read 3, write 0, timeout 0
  Non-2xx or 3xx responses: 12
Requests/sec: 111686.16
Transfer/sec:     11.82MB
";
        let w = parse_wrk(out).expect("parsed");
        assert_eq!(w.requests, 1_117_853);
        assert!((w.per_sec - 111_686.16).abs() < 0.01);
        assert_eq!(w.p50, Some(Duration::from_micros(291)));
        assert_eq!(w.p99, Some(Duration::from_micros(4460)));
        assert_eq!(w.non_2xx, 12);
        assert_eq!(w.socket_errors, "connect 0, read 3, write 0, timeout 0");
        assert!(parse_wrk("nothing useful").is_none());
        assert_eq!(parse_duration("2.00s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("bogus"), None);
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0 5000 1000 10";
        assert_eq!(ticks_in(stat), Some(281));
        assert_eq!(ticks_in("42 (short) S 1"), None);
    }
}
