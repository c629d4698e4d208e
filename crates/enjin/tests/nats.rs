//! A whole cloud with its ring 1 bus on a NATS server instead of the embedded hub: `enjin nats
//! config` writes what the server needs (the cloud's operator and the ring's account, mutual TLS
//! from the ring 1 CA, JetStream), `enjin up` with `[bus] nats_url` connects the control plane
//! as the ring's parent and gives each host and the edge a user of the account; hosts in their
//! namespaces report, get their desired sets and packages, and an app answers through the
//! router. A machine that joins gets its NATS user at the join, for a key only it holds.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Machine, Running, cli, example_copy, heartbeat, root_or_skip, stderr, stdout, wait_until};

struct NatsProcess(Child);

impl Drop for NatsProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_whole_cloud_runs_its_ring_bus_on_nats() {
    if !root_or_skip("hosts in network namespaces reaching NATS over the bridge") {
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let range: enjin_model::kinds::Cidr = common::own_range().parse().expect("range");
    let std::net::IpAddr::V4(net) = range.addr else { panic!("an IPv4 range") };
    let gateway = std::net::Ipv4Addr::from(u32::from(net) + 1);
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();

    let out = cli(
        &data,
        &[
            "nats",
            "config",
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--name",
            "127.0.0.1",
            "--name",
            &gateway.to_string(),
        ],
    );
    assert!(out.status.success(), "enjin nats config: {}", stderr(&out));
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, &out.stdout).expect("nats.conf");
    for f in ["server.key", "nats-operator.nk", "nats-accounts.nk"] {
        let mode = std::fs::metadata(data.join("nats").join(f)).expect(f).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let log = std::fs::File::create(dir.path().join("nats.log")).expect("log");
    let _nats = NatsProcess(
        Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("nats-server (scripts/install-deps installs it)"),
    );
    wait_until("nats-server listens", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(drop)
    });
    std::fs::write(
        data.join("enjin.toml"),
        format!("[api]\ntls_names = [\"{gateway}\"]\n[bus]\nnats_url = \"tls://127.0.0.1:{port}\"\n"),
    )
    .expect("enjin.toml");

    let up = Running::start_with("up", &data, &["--hosts", "1", "--listen", "0.0.0.0:0"]);
    let api_port: u16 = up.url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("API port");
    let router = up.router.expect("router");
    wait_until("host-1 reports over NATS", Duration::from_secs(60), || {
        heartbeat(&data, "host-1").then_some(())
    });
    let creds = data.join("hosts").join("host-1").join("nats.creds");
    let mode = std::fs::metadata(&creds).expect("the host's NATS user").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A machine of its own joins: its NATS user comes with the join, for its own key.
    let out = cli(&data, &["-o", "json", "host", "add", "machine-1"]);
    assert!(out.status.success(), "host add: {}", stderr(&out));
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let address: std::net::IpAddr = added["address"].as_str().and_then(|a| a.parse().ok()).expect("address");
    let token = added["join_token"]["token"].as_str().expect("token").to_string();
    let node = added["node"].as_str().expect("node").to_string();
    let q = enjin_model::api::ListQuery { label: Some("hosts".into()), ..Default::default() };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let network =
        rt.block_on(up.client().list::<enjin_model::kinds::NetworkSpec>(&q)).expect("network").items[0]
            .meta
            .uuid;
    let names = enjin_net::names(&uuid::Uuid::new_v4().to_string());
    let mut machine = Machine { netns: names.netns.clone(), veth: names.veth.clone(), agent: None };
    let bridge = enjin_net::names(&network.to_string()).bridge;
    enjin_net::ensure_host(&names.netns, &names.veth, &bridge, address, range.prefix, gateway.into())
        .expect("the machine's namespace");
    let agent_dir = dir.path().join("machine-agent");
    let server = format!("https://{gateway}:{api_port}");
    let out = machine
        .enjin(&["agent", "join", "--server", &server, "--token", &token, "--ca"])
        .arg(data.join("ca.crt"))
        .arg("--dir")
        .arg(&agent_dir)
        .output()
        .expect("enjin agent join");
    assert!(out.status.success(), "join: {}{}", stdout(&out), stderr(&out));
    let mode = std::fs::metadata(agent_dir.join("nats.creds"))
        .expect("the machine's NATS user")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let agent_json = std::fs::read_to_string(agent_dir.join("agent.json")).expect("agent.json");
    assert!(agent_json.contains(&format!("tls://{gateway}:{port}")), "{agent_json}");
    machine.agent = Some(
        machine
            .enjin(&["agent", "--ring", "1", "--dir"])
            .arg(&agent_dir)
            .stdin(Stdio::null())
            .spawn()
            .expect("the machine's agent"),
    );
    wait_until("the joined machine reports over NATS", Duration::from_secs(60), || {
        heartbeat(&data, "machine-1").then_some(())
    });
    assert!(!node.is_empty());

    let app = example_copy(dir.path());
    let manifest = app.join("enjin.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(&manifest, text.replace("instances = 1", "instances = 2")).expect("manifest");
    let out = cli(&data, &["deploy", app.to_str().expect("utf-8")]);
    assert!(out.status.success(), "deploy over NATS: {}{}", stdout(&out), stderr(&out));
    let code = wait_until("the app answers through the router", Duration::from_secs(30), || {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-m", "5", "-w", "%{http_code}"])
            .arg(format!("http://python-hello.localhost:{}/", router.port()))
            .output()
            .ok()?;
        let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (code == "200").then_some(code)
    });
    assert_eq!(code, "200");
    let out = cli(&data, &["-o", "json", "app", "status", "python-hello"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status");
    let routed: Vec<&str> = status["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter(|i| i["routed"] == true)
        .filter_map(|i| i["host"].as_str())
        .collect();
    assert!(routed.contains(&"host-1") && routed.contains(&"machine-1"), "both hosts serve: {status}");
    drop(machine);
    up.interrupt_and_clean();
}
