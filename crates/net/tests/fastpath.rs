//! The edge's eBPF fast path in real namespaces, as root: an "edge" namespace (the router's,
//! the uplink's peer) reaches an instance in its own namespace behind a "host" namespace with
//! the real firewall applied. Connections the edge opens to the instance's port cross the host
//! without its IP stack (the host side of the instance's veth transmits nothing: the packets
//! go straight to its peer); what the firewall refuses stays refused.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use enjin_model::api::{FirewallInstance, HostFirewall};
use enjin_net::command_in;
use enjin_net::fastpath::FastPath;
use enjin_net::instance::{InstanceNames, ensure_instance, instance_names, netns_path, prepare_host};
use enjin_testkit::{root_or_skip, wait_until};
use uuid::Uuid;

const EDGE_IP: &str = "10.254.91.1";
const HOST_IP: &str = "10.254.91.2";
const INSTANCE_IP: &str = "10.254.92.7";
const PORT: u16 = 8080;

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Run `f` on a thread inside namespace `ns`.
fn inside<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = netns_path(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open the namespace");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

struct World {
    edge: String,
    host: String,
    instance: InstanceNames,
    children: Vec<Child>,
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.instance.netns, &self.host, &self.edge] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn build() -> World {
    let tag = format!("{:05x}", std::process::id() % 0xfffff);
    let w = World {
        edge: format!("ejpe{tag}"),
        host: format!("ejph{tag}"),
        instance: instance_names(&format!("p{tag}fp")),
        children: Vec::new(),
    };
    for ns in [&w.edge, &w.host, &w.instance.netns] {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    for ns in [&w.edge, &w.host] {
        run(&["ip", "netns", "add", ns]);
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    // The uplink: eth0 in the host, its peer in the edge's namespace.
    run(&[
        "ip", "-n", &w.edge, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &w.host,
    ]);
    run(&["ip", "-n", &w.edge, "addr", "add", &format!("{EDGE_IP}/24"), "dev", "up0"]);
    run(&["ip", "-n", &w.edge, "link", "set", "up0", "up"]);
    run(&["ip", "-n", &w.host, "addr", "add", &format!("{HOST_IP}/24"), "dev", "eth0"]);
    run(&["ip", "-n", &w.host, "link", "set", "eth0", "up"]);
    run(&["ip", "-n", &w.edge, "route", "add", "10.254.92.0/24", "via", HOST_IP]);
    let names = w.instance.clone();
    inside(&w.host, move || {
        prepare_host()?;
        ensure_instance(&names, INSTANCE_IP.parse().expect("ip"))
    })
    .expect("the instance's network");
    w
}

fn firewall(w: &World) -> HostFirewall {
    HostFirewall {
        edge: vec![EDGE_IP.parse().expect("ip")],
        dns: Vec::new(),
        protected: vec!["10.254.91.0/24".parse().expect("cidr")],
        instance_network: Some("10.254.92.0/24".parse().expect("cidr")),
        instances: vec![FirewallInstance {
            node: Uuid::new_v4(),
            account: Uuid::new_v4(),
            address: INSTANCE_IP.parse().expect("ip"),
            interface: w.instance.veth.clone(),
            port: Some(PORT),
            ingress: Vec::new(),
            egress: Vec::new(),
        }],
    }
}

/// A server echoing everything, on `addr:port` in `ns`.
fn echo(w: &mut World, ns: &str, addr: &str, port: u16) {
    const ECHO: &str = r#"
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64)
def h(c):
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=h, args=(c,), daemon=True).start()
"#;
    let child = command_in(ns, &["python3", "-c", ECHO, addr, &port.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("echo server");
    w.children.push(child);
    let probe = format!("import socket; socket.create_connection(('{addr}', {port}), timeout=1).close()");
    wait_until("the echo server", Duration::from_secs(10), || {
        command_in(ns, &["python3", "-c", &probe])
            .stderr(Stdio::null())
            .status()
            .ok()?
            .success()
            .then_some(())
    });
}

/// From `ns`, `rounds` round trips of 1 KiB over one connection to `addr:port`, from source
/// port `from` (0: any; shared with a server there, as a hostile app may). True when every
/// one came back.
fn round_trips(ns: &str, addr: &str, port: u16, from: u16, rounds: u32) -> bool {
    let script = format!(
        "import socket\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n\
         s.settimeout(2); s.bind(('0.0.0.0', {from})); s.connect(('{addr}', {port}))\n\
         for _ in range({rounds}):\n    \
             s.sendall(b'x' * 1024); got = b''\n    \
             while len(got) < 1024: got += s.recv(1024 - len(got))\n\
         s.close()"
    );
    command_in(ns, &["python3", "-c", &script]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Packets the host side of the instance's veth has transmitted (what the ordinary path
/// forwards to the instance; the fast path hands packets to the peer without it).
fn host_side_tx(w: &World) -> u64 {
    tx(w, &w.instance.veth)
}

/// Packets interface `dev` of the host has transmitted.
fn tx(w: &World, dev: &str) -> u64 {
    let out = command_in(&w.host, &["ip", "-s", "-j", "link", "show", "dev", dev]).output().expect("ip");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    v[0]["stats64"]["tx"]["packets"].as_u64().expect("tx packets")
}

#[test]
fn the_edge_reaches_instances_past_the_hosts_stack_and_nothing_else_does() {
    if !root_or_skip("network namespaces and eBPF") {
        return;
    }
    let mut w = build();
    let fw = firewall(&w);
    let host = w.host.clone();
    let fw2 = fw.clone();
    inside(&host, move || enjin_net::firewall::apply(&fw2)).expect("firewall");
    let (instance_ns, edge_ns) = (w.instance.netns.clone(), w.edge.clone());
    echo(&mut w, &instance_ns, "0.0.0.0", PORT);
    // The edge's own listener, which an instance must never reach.
    echo(&mut w, &edge_ns, EDGE_IP, 7481);

    // The ordinary path first: the host forwards every packet.
    let (before, uplink_before) = (host_side_tx(&w), tx(&w, "eth0"));
    assert!(round_trips(&w.edge, INSTANCE_IP, PORT, 0, 200), "the edge reaches the instance's port");
    assert!(tx(&w, "eth0") - uplink_before >= 200, "the ordinary path sends the replies out of the uplink");
    let ordinary = host_side_tx(&w) - before;
    assert!(ordinary >= 200, "the ordinary path forwarded {ordinary} packets");

    let fw2 = fw.clone();
    let (fast, synced) = inside(&host, move || {
        let mut fast = FastPath::new().expect("load the fast path").expect("the host has an uplink veth");
        let synced = fast.sync(&fw2).expect("sync");
        (fast, synced)
    });
    assert_eq!(synced.instances, 1, "{synced:?}");
    assert_eq!(fast.instances(), vec![INSTANCE_IP.parse::<std::net::Ipv4Addr>().expect("ip")]);

    let (before, uplink_before) = (host_side_tx(&w), tx(&w, "eth0"));
    assert!(
        round_trips(&w.edge, INSTANCE_IP, PORT, 0, 200),
        "the edge reaches the instance on the fast path"
    );
    let fast_tx = host_side_tx(&w) - before;
    assert!(
        fast_tx < 20,
        "the fast path still forwarded {fast_tx} packets through the host (ordinary: {ordinary})"
    );
    // And the replies: handed to the uplink's peer, never transmitted by the uplink.
    let uplink_tx = tx(&w, "eth0") - uplink_before;
    assert!(uplink_tx < 20, "the replies' fast path still sent {uplink_tx} packets out of the uplink");

    // Still refused: the instance opening a connection to the edge, even from its own port
    // (the edge's socket there is a listener, not a connection the edge opened) ...
    assert!(!round_trips(&w.instance.netns, EDGE_IP, 7481, PORT + 1, 1), "instance to the edge's listener");
    assert!(!round_trips(&w.instance.netns, EDGE_IP, 7481, PORT, 1), "instance to the edge, from its port");
    // ... and the edge to a port the instance does not serve.
    echo(&mut w, &instance_ns, "0.0.0.0", 9000);
    assert!(!round_trips(&w.edge, INSTANCE_IP, 9000, 0, 1), "the edge to another port");

    // An instance that leaves the firewall leaves the fast path; its port is closed again.
    let mut gone = fw.clone();
    gone.instances.clear();
    let fast = inside(&host, move || {
        let mut fast = fast;
        enjin_net::firewall::apply(&gone).expect("firewall");
        fast.sync(&gone).expect("sync");
        fast
    });
    assert!(fast.instances().is_empty());
    assert!(!round_trips(&w.edge, INSTANCE_IP, PORT, 0, 1), "a removed instance is unreachable");
    drop(fast);
}
