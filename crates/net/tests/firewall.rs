//! The instance firewall in real network namespaces, as root, with real TCP and UDP: a "host"
//! namespace routes between two instance namespaces (routed veth pairs, as the agent makes
//! them) and an "edge" namespace that also stands for a protected range and the outside.
//! Every namespace and link is this test's own, named with the process id, and removed on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use enjin_model::api::{FirewallInstance, FirewallRule, HostFirewall};
use enjin_model::kinds::{Action, Cidr, PortRange, Protocol};
use enjin_net::firewall::{apply_in, compile, set_rp_filter_in};
use enjin_net::{INSTANCE_PREFIX, command_in, exec_prefix};
use enjin_testkit::is_root;
use uuid::Uuid;

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Removes this test's namespaces (which takes their veths with them) and children.
struct World {
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

const ECHO: &str = r#"
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    def h(c):
        while True:
            d = c.recv(1024)
            if not d: break
            c.sendall(d)
        c.close()
    while True:
        c, _ = s.accept(); threading.Thread(target=h, args=(c,), daemon=True).start()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
threading.Event().wait()
"#;

/// UDP receiver: prints the source address of each datagram.
const UDP_LOG: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    d, a = s.recvfrom(1024); print(a[0], flush=True)
"#;

/// A client that keeps one connection open and echoes a line through it per line of stdin,
/// answering `ok` or `fail`.
const HOLD: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
print("connected", flush=True)
for line in sys.stdin:
    try:
        c.sendall(b"x"); print("ok" if c.recv(1) == b"x" else "fail", flush=True)
    except Exception:
        print("fail", flush=True)
"#;

fn connects(ns: &str, addr: IpAddr, port: u16) -> bool {
    let script = format!("import socket; socket.create_connection(('{addr}', {port}), timeout=1).close()");
    command_in(ns, &["python3", "-c", &script]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

struct Names {
    host: String,
    a: String,
    b: String,
    edge: String,
    a_if: String,
    b_if: String,
}

const HOST_IP: &str = "10.251.77.1";
const A_IP: &str = "10.251.77.2";
const B_IP: &str = "10.251.77.3";
const EDGE_IP: &str = "10.252.77.2";
const EDGE_GW: &str = "10.252.77.1";
/// Also on the edge namespace: stands for ring 0/1 (the hub, the API).
const PROTECTED_IP: &str = "10.253.77.2";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// The host namespace, two instances on routed veths, the edge on a plain veth.
fn build(world: &mut World) -> Names {
    let tag = format!("{:05x}", std::process::id() % 0xfffff);
    let n = Names {
        host: format!("ejfh{tag}"),
        a: format!("ejfa{tag}"),
        b: format!("ejfb{tag}"),
        edge: format!("ejfe{tag}"),
        a_if: format!("{INSTANCE_PREFIX}{tag}a"),
        b_if: format!("{INSTANCE_PREFIX}{tag}b"),
    };
    for ns in [&n.host, &n.a, &n.b, &n.edge] {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
        run(&["ip", "netns", "add", ns]);
        world.namespaces.push(ns.clone());
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    run(&["ip", "netns", "exec", &n.host, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    for (ns, iface, addr) in [(&n.a, &n.a_if, A_IP), (&n.b, &n.b_if, B_IP)] {
        run(&[
            "ip", "-n", &n.host, "link", "add", iface, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        run(&["ip", "-n", &n.host, "addr", "add", &format!("{HOST_IP}/32"), "dev", iface]);
        run(&["ip", "-n", &n.host, "link", "set", iface, "up"]);
        run(&["ip", "-n", &n.host, "route", "add", &format!("{addr}/32"), "dev", iface]);
        run(&["ip", "-n", ns, "addr", "add", &format!("{addr}/32"), "dev", "eth0"]);
        run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", ns, "route", "add", "default", "via", HOST_IP, "dev", "eth0", "onlink"]);
    }
    let edge_if = format!("ejfx{tag}");
    run(&[
        "ip", "-n", &n.host, "link", "add", &edge_if, "type", "veth", "peer", "name", "eth0", "netns",
        &n.edge,
    ]);
    run(&["ip", "-n", &n.host, "addr", "add", &format!("{EDGE_GW}/24"), "dev", &edge_if]);
    run(&["ip", "-n", &n.host, "link", "set", &edge_if, "up"]);
    run(&["ip", "-n", &n.host, "route", "add", "10.253.77.0/24", "via", EDGE_IP]);
    run(&["ip", "-n", &n.edge, "addr", "add", &format!("{EDGE_IP}/24"), "dev", "eth0"]);
    run(&["ip", "-n", &n.edge, "addr", "add", &format!("{PROTECTED_IP}/24"), "dev", "eth0"]);
    run(&["ip", "-n", &n.edge, "link", "set", "eth0", "up"]);
    run(&["ip", "-n", &n.edge, "route", "add", "default", "via", EDGE_GW]);
    n
}

fn spawn_echo(world: &mut World, ns: &str, ports: &[u16]) {
    let mut args = vec!["python3".to_string(), "-c".into(), ECHO.into()];
    args.extend(ports.iter().map(u16::to_string));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    world.children.push(command_in(ns, &argv).stdout(Stdio::null()).spawn().expect("echo server"));
    for p in ports {
        assert!(eventually(|| connects(ns, ip("127.0.0.1"), *p)), "echo server on {ns}:{p}");
    }
}

fn rule(action: Action, protocol: Protocol, ports: Option<&str>, peers: &[&str]) -> FirewallRule {
    FirewallRule {
        action,
        protocol,
        ports: ports.map(|p| p.parse::<PortRange>().expect("ports")),
        peers: peers.iter().map(|p| p.parse::<Cidr>().expect("cidr")).collect(),
        rule: None,
    }
}

fn firewall(n: &Names, a_ingress: Vec<FirewallRule>, b_ingress: Vec<FirewallRule>) -> HostFirewall {
    let (acct_a, acct_b) = (Uuid::new_v4(), Uuid::new_v4());
    HostFirewall {
        edge: vec![ip(EDGE_IP)],
        dns: vec![SocketAddr::new(ip(HOST_IP), 5353)],
        protected: vec!["10.253.77.0/24".parse().expect("cidr")],
        instance_network: Some("10.251.0.0/16".parse().expect("cidr")),
        instances: vec![
            FirewallInstance {
                node: Uuid::new_v4(),
                account: acct_a,
                address: ip(A_IP),
                interface: n.a_if.clone(),
                port: Some(8080),
                ingress: a_ingress,
                // Anywhere by TCP and UDP: still never the protected range or the host.
                egress: vec![
                    rule(Action::Allow, Protocol::Tcp, None, &["0.0.0.0/0"]),
                    rule(Action::Allow, Protocol::Udp, None, &["0.0.0.0/0"]),
                ],
            },
            FirewallInstance {
                node: Uuid::new_v4(),
                account: acct_b,
                address: ip(B_IP),
                interface: n.b_if.clone(),
                port: Some(8080),
                ingress: b_ingress,
                egress: vec![],
            },
        ],
    }
}

struct Hold {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Hold {
    fn open(ns: &str, addr: &str, port: u16) -> Hold {
        let mut child = command_in(ns, &["python3", "-c", HOLD, addr, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("hold");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "connected", "the held connection opens");
        Hold { child, stdin, stdout }
    }

    fn works(&mut self) -> bool {
        if writeln!(self.stdin, "go").is_err() {
            return false;
        }
        let mut line = String::new();
        self.stdout.read_line(&mut line).is_ok() && line.trim() == "ok"
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn instances_are_isolated_by_default_and_rules_open_exactly_what_they_say() {
    assert!(is_root(), "this test needs root: it makes network namespaces and nftables rules");
    let mut world = World { namespaces: Vec::new(), children: Vec::new() };
    let n = build(&mut world);
    spawn_echo(&mut world, &n.a, &[8080, 8081, 9000]);
    spawn_echo(&mut world, &n.b, &[8080, 9000, 9001]);
    spawn_echo(&mut world, &n.host, &[5353, 7000]);
    spawn_echo(&mut world, &n.edge, &[7100]);

    // Without a firewall everything is reachable: the baseline the firewall must change.
    assert!(connects(&n.a, ip(B_IP), 9000), "baseline: a reaches b");
    assert!(connects(&n.a, ip(HOST_IP), 7000), "baseline: a reaches the host");
    assert!(connects(&n.a, ip(PROTECTED_IP), 7100), "baseline: a reaches the protected range");
    assert!(connects(&n.edge, ip(A_IP), 8081), "baseline: the edge reaches any port");

    let allow_a_to_b_9000 = rule(Action::Allow, Protocol::Tcp, Some("9000"), &[&format!("{A_IP}/32")]);
    let fw = firewall(&n, vec![], vec![allow_a_to_b_9000.clone()]);
    apply_in(&n.host, &fw).expect("apply");

    assert!(connects(&n.edge, ip(A_IP), 8080), "edge → instance port works");
    assert!(connects(&n.edge, ip(B_IP), 8080), "edge → the other instance's port works");
    assert!(!connects(&n.edge, ip(A_IP), 8081), "edge → another port is refused");
    assert!(!connects(&n.edge, ip(A_IP), 9000), "edge → another port is refused");
    assert!(!connects(&n.b, ip(A_IP), 9000), "b → a (another account, no rule) is refused");
    assert!(!connects(&n.b, ip(A_IP), 8080), "b → a's port is the edge's only");
    assert!(connects(&n.a, ip(B_IP), 9000), "the allowed rule a → b:9000 works");
    assert!(!connects(&n.a, ip(B_IP), 9001), "a → b on another port is refused");
    assert!(!connects(&n.a, ip(HOST_IP), 7000), "instance → host address is refused");
    assert!(!connects(&n.a, ip(EDGE_GW), 7000), "instance → the host's other address is refused");
    assert!(connects(&n.a, ip(HOST_IP), 5353), "instance → the DNS server on the host works");
    assert!(
        !connects(&n.a, ip(PROTECTED_IP), 7100),
        "instance → protected range refused despite allow-all egress"
    );
    assert!(connects(&n.a, ip(EDGE_IP), 7100), "instance → outside allowed by its egress rule works");
    assert!(!connects(&n.b, ip(EDGE_IP), 7100), "egress is default deny for b");
    // Traffic that involves no instance is not judged: the edge still reaches the host.
    assert!(connects(&n.edge, ip(EDGE_GW), 7000), "edge → host is untouched");

    // A change that keeps a → b:9000: the held flow survives; then one that removes it: new
    // connections are refused, and the held one (established) survives, as documented.
    let mut held = Hold::open(&n.a, B_IP, 9000);
    assert!(held.works());
    let deny_edge_udp = rule(Action::Deny, Protocol::Udp, None, &["10.252.0.0/16"]);
    apply_in(&n.host, &firewall(&n, vec![deny_edge_udp], vec![allow_a_to_b_9000])).expect("re-apply");
    assert!(held.works(), "an allowed established flow survives a rule change");
    assert!(connects(&n.a, ip(B_IP), 9000), "still allowed after the change");
    apply_in(&n.host, &firewall(&n, vec![], vec![])).expect("remove the allowance");
    assert!(!connects(&n.a, ip(B_IP), 9000), "a removed allowance refuses new connections");
    assert!(held.works(), "established flows of a removed allowance are not cut (conntrack is kept)");
    assert!(connects(&n.edge, ip(A_IP), 8080), "edge still reaches a after the change");

    // Only enjin's table was ever written.
    let out = command_in(&n.host, &["nft", "list", "tables"]).output().expect("nft");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "table inet enjin");
}

#[test]
fn a_spoofed_source_is_dropped_and_other_tables_are_left_alone() {
    assert!(is_root(), "this test needs root: it makes network namespaces and nftables rules");
    let mut world = World { namespaces: Vec::new(), children: Vec::new() };
    let n = build(&mut world);
    // Loose reverse-path filtering, so that only the firewall stands between a spoofed
    // datagram and the edge.
    for key in ["all", "default", n.a_if.as_str()] {
        run(&[
            "ip",
            "netns",
            "exec",
            &n.host,
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv4.conf.{key}.rp_filter=0"),
        ]);
    }
    // Someone else's table in the host namespace, which the firewall must not touch.
    run(&["ip", "netns", "exec", &n.host, "nft", "add", "table", "ip", "other"]);
    run(&["ip", "netns", "exec", &n.host, "nft", "add", "chain", "ip", "other", "keep"]);
    let mut log = command_in(&n.edge, &["python3", "-u", "-c", UDP_LOG, "7200"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("udp log");
    let log_out = log.stdout.take().expect("stdout");
    world.children.push(log);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(log_out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // A second address on a's side, as a tenant with CAP_NET_ADMIN in its namespace could add.
    let spoofed = "10.251.77.99";
    run(&["ip", "-n", &n.a, "addr", "add", &format!("{spoofed}/32"), "dev", "eth0"]);
    let send = |from: &str| {
        let script = format!(
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('{from}', 0)); \
             [s.sendto(b'x', ('{EDGE_IP}', 7200)) for _ in range(3)]"
        );
        run(&exec_prefix(&n.a)
            .iter()
            .map(String::as_str)
            .chain(["python3", "-c", &script])
            .collect::<Vec<_>>());
    };
    // Baseline: without the firewall the spoofed datagram arrives (wait for the receiver).
    assert!(
        eventually(|| {
            send(spoofed);
            rx.recv_timeout(Duration::from_millis(200)).is_ok_and(|l| l == spoofed)
        }),
        "baseline: a spoofed datagram reaches the edge without the firewall"
    );
    apply_in(&n.host, &firewall(&n, vec![], vec![])).expect("apply");
    while rx.try_recv().is_ok() {}
    send(spoofed);
    send(A_IP);
    let mut seen = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(700)) {
        seen.push(l);
    }
    assert!(seen.iter().any(|l| l == A_IP), "a's own address still gets out: {seen:?}");
    assert!(!seen.iter().any(|l| l == spoofed), "the spoofed source was dropped: {seen:?}");

    let out = command_in(&n.host, &["nft", "list", "tables"]).output().expect("nft");
    let tables = String::from_utf8_lossy(&out.stdout);
    assert!(tables.contains("table ip other"), "{tables}");
    apply_in(&n.host, &firewall(&n, vec![], vec![])).expect("apply again");
    let out = command_in(&n.host, &["nft", "list", "chain", "ip", "other", "keep"]).output().expect("nft");
    assert!(out.status.success(), "the other table's chain is still there");

    // rp_filter: set to strict on the instance's veth.
    set_rp_filter_in(&n.host, &n.a_if).expect("rp_filter");
    let out = command_in(&n.host, &["sysctl", "-n", &format!("net.ipv4.conf.{}.rp_filter", n.a_if)])
        .output()
        .expect("sysctl");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
}

#[test]
fn nft_refusals_name_what_was_refused_and_change_nothing() {
    assert!(is_root(), "this test needs root: it makes network namespaces and nftables rules");
    let mut world = World { namespaces: Vec::new(), children: Vec::new() };
    let tag = format!("{:05x}", std::process::id() % 0xfffff);
    let ns = format!("ejfr{tag}");
    run(&["ip", "netns", "add", &ns]);
    world.namespaces.push(ns.clone());
    let n = Names {
        host: ns.clone(),
        a: String::new(),
        b: String::new(),
        edge: String::new(),
        a_if: format!("{INSTANCE_PREFIX}{tag}a"),
        b_if: format!("{INSTANCE_PREFIX}{tag}b"),
    };
    let good = firewall(&n, vec![], vec![]);
    apply_in(&ns, &good).expect("apply");
    let before =
        command_in(&ns, &["nft", "-j", "list", "table", "inet", "enjin"]).output().expect("nft").stdout;
    // A document nft cannot take: a jump to a chain that does not exist, after the table's
    // delete in the same transaction.
    let mut doc = compile(&good);
    doc["nftables"].as_array_mut().expect("array").push(serde_json::json!({"add": {"rule": {
        "family": "inet", "table": "enjin", "chain": "forward", "expr": [{"jump": {"target": "nowhere"}}]}}}));
    let e = enjin_net::firewall::run_nft(&exec_prefix(&ns), &doc).expect_err("refused");
    let msg = e.to_string();
    assert!(msg.contains("nft refused") && msg.contains("inet enjin"), "{msg}");
    assert!(msg.to_lowercase().contains("error"), "nft's own reason is kept: {msg}");
    let n = doc["nftables"].as_array().expect("array").len();
    assert!(msg.contains(&format!("command {n} of {n}: add rule in forward")), "the culprit is named: {msg}");
    assert!(msg.contains("nowhere"), "{msg}");
    let after =
        command_in(&ns, &["nft", "-j", "list", "table", "inet", "enjin"]).output().expect("nft").stdout;
    assert_eq!(before, after, "a refused transaction leaves the old table whole");
}
