//! Real network namespaces, as root: two hosts on a bridge reach each other over TCP, and a
//! host whose link is cut cannot, until it is restored. Only this test's own namespaces and
//! bridge carry traffic.

use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enjin_net::{command_in, ensure_bridge, ensure_host, remove_bridge, remove_host, set_link};
use enjin_testkit::root_or_skip;

struct Cleanup {
    hosts: Vec<(String, String)>,
    bridge: String,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (ns, veth) in &self.hosts {
            let _ = remove_host(ns, veth);
        }
        let _ = remove_bridge(&self.bridge);
    }
}

/// Try a TCP connection from `ns` to `addr:port` with python (present on the machine).
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

#[test]
fn hosts_on_a_bridge_reach_each_other_and_a_cut_link_partitions_one() {
    if !root_or_skip("network namespaces") {
        return;
    }
    let tag = format!("{:04x}", std::process::id() % 0xffff);
    let bridge = format!("ejbt{tag}");
    let gateway: IpAddr = "10.199.7.1".parse().expect("ip");
    let (a_ip, b_ip): (IpAddr, IpAddr) =
        ("10.199.7.2".parse().expect("ip"), "10.199.7.3".parse().expect("ip"));
    let (a, b) =
        ((format!("ejnsa{tag}"), format!("ejva{tag}")), (format!("ejnsb{tag}"), format!("ejvb{tag}")));
    let mut cleanup =
        Cleanup { hosts: vec![a.clone(), b.clone()], bridge: bridge.clone(), children: Vec::new() };

    ensure_bridge(&bridge, gateway, 24).expect("bridge");
    ensure_host(&a.0, &a.1, &bridge, a_ip, 24, gateway).expect("host a");
    ensure_host(&b.0, &b.1, &bridge, b_ip, 24, gateway).expect("host b");
    // Idempotent: setting up again changes nothing and fails nothing.
    ensure_host(&a.0, &a.1, &bridge, a_ip, 24, gateway).expect("host a again");
    ensure_bridge(&bridge, gateway, 24).expect("bridge again");
    // A second bridge claiming the same gateway is refused, naming the first.
    let other = format!("ejbu{tag}");
    let refused = ensure_bridge(&other, gateway, 24);
    let _ = remove_bridge(&other);
    assert!(
        matches!(&refused, Err(enjin_net::NetError::AddressInUse { interface, .. }) if *interface == bridge),
        "{refused:?}"
    );

    let server = command_in(&b.0, &["python3", "-c", "import socket,time\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 7999)); s.listen(16)\nwhile True:\n  c,_=s.accept(); c.close()"])
        .spawn()
        .expect("server in b");
    cleanup.children.push(server);
    assert!(eventually(|| connects(&a.0, b_ip, 7999)), "a reaches b across the bridge");
    // The supervisor (this machine) reaches the host through the bridge too.
    assert!(eventually(|| std::net::TcpStream::connect_timeout(
        &(b_ip, 7999).into(),
        Duration::from_secs(1)
    )
    .is_ok()));

    set_link(&b.1, false).expect("cut b");
    assert!(!connects(&a.0, b_ip, 7999), "a cut host is unreachable");
    set_link(&b.1, true).expect("restore b");
    assert!(eventually(|| connects(&a.0, b_ip, 7999)), "b is back");
    drop(cleanup);
    assert!(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).contains(&a.0))
    );
}
