//! A host on another machine: `enjin host add` makes its node, address and join token; on the
//! "machine" (a network namespace of its own on the hosts' bridge, reaching the cloud only
//! over that network) `enjin agent join` joins ring 1 through the API and `enjin agent` runs
//! it; it gets instances of a deploy, which answer through the router when every other host
//! is cut off. The token works once; a joined directory is never joined over.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Machine, Running, cli, example_copy, heartbeat, root_or_skip, stderr, stdout, wait_until};
use enjin_model::api::ListQuery;
use enjin_model::kinds::{NetworkSpec, NodeSpec};

fn curl(router: SocketAddr, app: &str) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-m", "5", "-w", "%{http_code}"])
        .arg(format!("http://{app}.localhost:{}/", router.port()))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

#[test]
fn a_machine_joins_over_the_network_with_a_token_and_serves_through_the_router() {
    if !root_or_skip("a joined host in a network namespace of its own") {
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let data = dir.path().join("data");
    let range: enjin_model::kinds::Cidr = common::own_range().parse().expect("range");
    let gateway = enjin_model::kinds::Cidr { addr: nth(range.addr, 1), prefix: range.prefix };
    // The API on every address, with a certificate naming the address the machine uses.
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("enjin.toml"), format!("[api]\ntls_names = [\"{}\"]\n", gateway.addr))
        .expect("enjin.toml");
    let up = Running::start_with("up", &data, &["--listen", "0.0.0.0:0", "--hosts", "1"]);
    let router = up.router.expect("router");
    let port: u16 = up.url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("API port");
    wait_until("host-1 sends heartbeats", Duration::from_secs(60), || {
        heartbeat(&data, "host-1").then_some(())
    });

    // The operator adds the machine: its node, its address, a join token bound to it.
    let out = cli(&data, &["-o", "json", "host", "add", "machine-1"]);
    assert!(out.status.success(), "host add: {}", stderr(&out));
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).expect("host add json");
    let node: uuid::Uuid = added["node"].as_str().and_then(|s| s.parse().ok()).expect("node uuid");
    let address: IpAddr = added["address"].as_str().and_then(|s| s.parse().ok()).expect("address");
    let token = added["join_token"]["token"].as_str().expect("token").to_string();
    assert!(range.contains(address), "{address} is on the hosts network {range}");

    // The machine: its own namespace on the hosts' bridge, nothing else shared.
    let c = up.client();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let q = ListQuery { label: Some("hosts".into()), ..ListQuery::default() };
    let network = rt.block_on(c.list::<NetworkSpec>(&q)).expect("hosts network").items[0].meta.uuid;
    let bridge = enjin_net::names(&network.to_string()).bridge;
    let names = enjin_net::names(&format!("joined-{node}"));
    let mut machine = Machine { netns: names.netns.clone(), veth: names.veth.clone(), agent: None };
    enjin_net::ensure_host(&names.netns, &names.veth, &bridge, address, range.prefix, gateway.addr)
        .expect("the machine's namespace");
    let server = format!("https://{}:{port}", gateway.addr);
    let ca = data.join("ca.crt");
    let agent_dir = dir.path().join("machine-agent");
    let join = |token: &str, dir: &Path| {
        machine
            .enjin(&["agent", "join", "--server", &server, "--ca"])
            .arg(&ca)
            .args(["--token", token, "--dir"])
            .arg(dir)
            .output()
            .expect("run enjin agent join")
    };

    // A wrong token is refused and leaves nothing behind.
    let out = join("enjin-join-0000", &agent_dir);
    assert!(!out.status.success(), "a made-up token must be refused: {}", stdout(&out));
    assert!(!agent_dir.exists(), "nothing written for a refused join");

    let out = join(&token, &agent_dir);
    assert!(out.status.success(), "join: {}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains(&node.to_string()), "joined as its node: {}", stdout(&out));
    for f in ["bus.key", "tls.key", "tls.crt", "ca.crt", "bundle.env", "agent.json"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(agent_dir.join(f)).expect(f).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f} is private");
    }
    // The token worked once.
    let out = join(&token, &dir.path().join("second"));
    assert!(!out.status.success(), "a used token must be refused: {}", stdout(&out));
    // A directory that holds an agent is never joined over.
    let again = rt.block_on(async {
        c.join_token_create(&enjin_model::api::JoinTokenCreateRequest {
            ring: enjin_model::Ring::INFRASTRUCTURE,
            parent: rt_parent(&c, node).await,
            ttl_seconds: None,
            node: Some(node),
        })
        .await
    });
    let again = again.expect("a second token for the machine");
    let out = join(&again.token, &agent_dir);
    assert!(!out.status.success(), "rejoining over a joined directory must fail");
    assert!(stderr(&out).contains("already holds a joined agent"), "{}", stderr(&out));

    machine.agent = Some(
        machine
            .enjin(&["agent", "--ring", "1", "--dir"])
            .arg(&agent_dir)
            .stdin(Stdio::null())
            .spawn()
            .expect("run the machine's agent"),
    );
    wait_until("the joined machine sends heartbeats", Duration::from_secs(60), || {
        heartbeat(&data, "machine-1").then_some(())
    });

    // A deploy spreads over both hosts: one instance lands on the machine.
    let app = example_copy(dir.path());
    let manifest = app.join("enjin.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(&manifest, text.replace("instances = 1", "instances = 2")).expect("manifest");
    let out = cli(&data, &["deploy", app.to_str().expect("utf-8")]);
    assert!(out.status.success(), "deploy: {}{}", stdout(&out), stderr(&out));
    let out = cli(&data, &["-o", "json", "app", "status", "python-hello"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status");
    let hosts: Vec<&str> = status["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["host"].as_str())
        .collect();
    assert!(hosts.contains(&"machine-1") && hosts.contains(&"host-1"), "spread over both: {status}");

    // Cut host-1 off: every request is served by the machine's instance.
    let host1 = rt
        .block_on(c.list::<NodeSpec>(&ListQuery { label: Some("host-1".into()), ..ListQuery::default() }))
        .expect("host-1")
        .items[0]
        .meta
        .uuid;
    let host1_veth = enjin_net::names(&host1.to_string()).veth;
    enjin_net::set_link(&host1_veth, false).expect("cut host-1 off");
    wait_until("the router answers from the machine", Duration::from_secs(30), || {
        (curl(router, "python-hello") == 200).then_some(())
    });
    let codes: Vec<u16> = (0..10).map(|_| curl(router, "python-hello")).collect();
    let _ = enjin_net::set_link(&host1_veth, true);
    assert!(codes.iter().all(|c| *c == 200), "served from the joined machine alone: {codes:?}");

    drop(machine);
    up.interrupt_and_clean();
}

/// The parent of `node`.
async fn rt_parent(c: &enjin_client::Client, node: uuid::Uuid) -> uuid::Uuid {
    c.get::<NodeSpec>(node).await.expect("node").spec.parent.expect("a parent")
}

fn nth(addr: IpAddr, n: u32) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + n).into()),
        IpAddr::V6(_) => addr,
    }
}
