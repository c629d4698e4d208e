//! Real namespaces, as root: a host namespace on a bridge, an instance namespace inside it on a
//! routed veth pair. The machine reaches the instance through a route to the host; two
//! instances may listen on the same port; an instance that sends from an address not its own
//! is dropped by the host's reverse path filter. Only this test's namespaces carry traffic.

use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enjin_net::instance::{InstanceNames, ensure_instance, instance_names, prepare_host, remove_instance};
use enjin_net::{command_in, ensure_bridge, ensure_host, remove_bridge, remove_host};
use enjin_testkit::root_or_skip;

/// What the inner half (run inside the host namespace) is asked to do.
const INNER: &str = "ENJIN_NET_TEST_INSTANCES";

struct Cleanup {
    host: (String, String),
    bridge: String,
    instances: Vec<InstanceNames>,
    children: Vec<Child>,
    route: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in &self.instances {
            let _ = remove_instance(i);
        }
        if let Some(r) = &self.route {
            let _ = Command::new("ip").args(["route", "del", r]).status();
        }
        let _ = remove_host(&self.host.0, &self.host.1);
        let _ = remove_bridge(&self.bridge);
    }
}

/// A TCP connection from `ns` (the machine's own with `None`), optionally from `source`.
fn connects(ns: Option<&str>, addr: IpAddr, port: u16, source: Option<IpAddr>) -> bool {
    let bind = source.map_or_else(|| "None".to_string(), |s| format!("('{s}', 0)"));
    let script = format!(
        "import socket; socket.create_connection(('{addr}', {port}), timeout=1, source_address={bind}).close()"
    );
    let mut cmd = match ns {
        Some(ns) => command_in(ns, &["python3", "-c", &script]),
        None => {
            let mut c = Command::new("python3");
            c.args(["-c", &script]);
            c
        }
    };
    cmd.stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn listen(ns: &str, port: u16) -> Child {
    command_in(ns, &["python3", "-m", "http.server", "--bind", "0.0.0.0", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("listener")
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

/// The half that runs inside the host namespace (as the agent does): make the instances.
#[test]
fn inner_make_instances() {
    let Ok(spec) = std::env::var(INNER) else { return };
    prepare_host().expect("host sysctls");
    for item in spec.split(',') {
        let (id, addr) = item.split_once('=').expect("id=addr");
        let names = instance_names(id);
        ensure_instance(&names, addr.parse().expect("ip")).expect("instance");
        // Twice: idempotent.
        ensure_instance(&names, addr.parse().expect("ip")).expect("instance again");
    }
}

#[test]
fn instances_get_their_own_namespace_address_and_route() {
    if !root_or_skip("network namespaces") {
        return;
    }
    let tag = format!("{:04x}", std::process::id() % 0xffff);
    let bridge = format!("ejbi{tag}");
    let gateway: IpAddr = "10.198.7.1".parse().expect("ip");
    let host_ip: IpAddr = "10.198.7.2".parse().expect("ip");
    let host = (format!("ejnsi{tag}"), format!("ejvi{tag}"));
    let (a_id, b_id) = (format!("a{tag}0001"), format!("b{tag}0002"));
    let (a_ip, b_ip): (IpAddr, IpAddr) =
        ("10.197.2.2".parse().expect("ip"), "10.197.2.3".parse().expect("ip"));
    let (a, b) = (instance_names(&a_id), instance_names(&b_id));
    let block = "10.197.2.0/24".to_string();
    let mut cleanup = Cleanup {
        host: host.clone(),
        bridge: bridge.clone(),
        instances: vec![a.clone(), b.clone()],
        children: Vec::new(),
        route: None,
    };
    ensure_bridge(&bridge, gateway, 24).expect("bridge");
    ensure_host(&host.0, &host.1, &bridge, host_ip, 24, gateway).expect("host");

    // The instances are made from inside the host's namespace, like the agent makes them.
    let exe = std::env::current_exe().expect("test binary");
    let status = command_in(
        &host.0,
        &[exe.to_str().expect("utf-8"), "--exact", "inner_make_instances", "--nocapture"],
    )
    .env(INNER, format!("{a_id}={a_ip},{b_id}={b_ip}"))
    .status()
    .expect("inner half");
    assert!(status.success(), "making the instances inside the host failed");

    // The machine routes the host's block through the host.
    let ok = Command::new("ip")
        .args(["route", "replace", &block, "via", &host_ip.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "route to the host's block");
    cleanup.route = Some(block);

    // Both listen on the same port: each has a namespace of its own.
    cleanup.children.push(listen(&a.netns, 8080));
    cleanup.children.push(listen(&b.netns, 8080));
    assert!(eventually(|| connects(None, a_ip, 8080, None)), "the machine reaches instance a");
    assert!(
        eventually(|| connects(None, b_ip, 8080, None)),
        "the machine reaches instance b on the same port"
    );
    // Instances reach each other through the host (no firewall in this test).
    assert!(connects(Some(&a.netns), b_ip, 8080, None), "a reaches b through the host");

    // Spoofing: a takes b's address as a second one and sends from it. The host's reverse
    // path filter drops it, since b's address is routed to another veth.
    let added = Command::new("ip")
        .args(["-n", &a.netns, "addr", "add", "10.197.2.3/32", "dev", "eth0"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(added, "second address inside a");
    let port = 28000 + (std::process::id() % 1000) as u16;
    let mut machine = Command::new("python3")
        .args(["-m", "http.server", "--bind", &gateway.to_string(), &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("listener on the machine");
    let from_own = eventually(|| connects(Some(&a.netns), gateway, port, Some(a_ip)));
    let spoofed = connects(Some(&a.netns), gateway, port, Some(b_ip));
    let unrouted = connects(Some(&a.netns), gateway, port, Some("10.197.2.77".parse().expect("ip")));
    let _ = machine.kill();
    let _ = machine.wait();
    assert!(from_own, "a reaches the machine from its own address");
    assert!(!spoofed, "a spoofed source (b's address) must not get through");
    assert!(!unrouted, "an unrouted source must not get through either");

    // Removal leaves nothing behind.
    for c in &mut cleanup.children {
        let _ = c.kill();
        let _ = c.wait();
    }
    cleanup.children.clear();
    remove_instance(&a).expect("remove a");
    assert!(!std::path::Path::new("/run/netns").join(&a.netns).exists(), "a's namespace is gone");
    assert!(!connects(None, a_ip, 8080, None), "a is unreachable once removed");
}
