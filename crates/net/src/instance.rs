//! An instance's own network: a namespace per ring 2 instance, as Kubernetes gives each pod,
//! joined to its host's namespace by a *routed* veth pair (no bridge). The instance side is
//! `eth0` with the instance's address as a /32 and a default route through a link-local next
//! hop whose neighbour entry is fixed to the host side's MAC; the host side has no address, only
//! a /32 route to the instance. So every packet of an instance, to anyone, crosses the host
//! namespace's `forward` hook, where the host's firewall judges it (`firewall.rs`), and reverse
//! path filtering on the host side drops what an instance sends from an address not its own.
//!
//! The host side of every pair has the same MAC ([`HOST_SIDE_MAC`]): each pair is its own
//! point-to-point link, so no two of them ever share a segment.

use std::net::IpAddr;

use crate::{NetError, check_name, ip, ok_if_exists};

/// The next hop an instance's default route names. It is never an address of anything: the
/// neighbour entry maps it to the host side's MAC, and the host routes whatever arrives.
pub const NEXT_HOP: &str = "169.254.1.1";
/// The MAC of every host-side veth of an instance.
pub const HOST_SIDE_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// The names of an instance's namespace and host-side veth, derived from its node's uuid (the
/// first 8 alphanumerics), short enough for Linux's 15-byte interface names.
pub fn instance_names(node: &str) -> InstanceNames {
    let short: String = node.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    InstanceNames { netns: format!("eji-{short}"), veth: format!("eji-{short}") }
}

/// The names [`instance_names`] derives for an instance. Both are `eji-` and the uuid's first 8
/// letters and digits; the same string is fine, as namespaces and interfaces are named apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceNames {
    /// Under `/run/netns`.
    pub netns: String,
    /// The host side of the pair, in the host's namespace.
    pub veth: String,
}

/// The path a process opens to join a named namespace.
pub fn netns_path(netns: &str) -> std::path::PathBuf {
    std::path::Path::new("/run/netns").join(netns)
}

/// Write a sysctl of the calling process's network namespace (`/proc/sys/net/...` resolves
/// to the namespace of whoever opens it).
fn sysctl(key: &str, value: &str) -> Result<(), NetError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value)
        .map_err(|e| NetError::Failed { args: format!("sysctl {key}={value}"), stderr: e.to_string() })
}

/// Make the calling process's namespace (a host's) route for its instances: forwarding on,
/// strict reverse path filtering by default. Idempotent.
pub fn prepare_host() -> Result<(), NetError> {
    sysctl("net.ipv4.ip_forward", "1")?;
    sysctl("net.ipv4.conf.all.rp_filter", "1")?;
    sysctl("net.ipv4.conf.default.rp_filter", "1")
}

/// An instance's namespace and veth pair with `address`, from the calling process's namespace
/// (the host's). Idempotent: a half-made pair from an interrupted setup is made again.
pub fn ensure_instance(names: &InstanceNames, address: IpAddr) -> Result<(), NetError> {
    check_name(&names.netns)?;
    check_name(&names.veth)?;
    let IpAddr::V4(v4) = address else {
        return Err(NetError::Failed {
            args: format!("instance address {address}"),
            stderr: "instance networks are IPv4".into(),
        });
    };
    let (ns, veth) = (names.netns.as_str(), names.veth.as_str());
    ok_if_exists(ip(&["netns", "add", ns]))?;
    if ip(&["-n", ns, "link", "show", "eth0"]).is_err() {
        let _ = ip(&["link", "del", veth]);
        ip(&[
            "link",
            "add",
            veth,
            "address",
            HOST_SIDE_MAC,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        ])?;
    }
    // Each instance is alone on its link: no IPv6 (link-local addresses would be a second way
    // to the host), no ARP answers for addresses it does not hold.
    if ipv6_enabled() {
        sysctl_in(ns, "net.ipv6.conf.all.disable_ipv6", "1")?;
        sysctl(&format!("net.ipv6.conf.{veth}.disable_ipv6"), "1")?;
    }
    ip(&["link", "set", veth, "up"])?;
    sysctl(&format!("net.ipv4.conf.{veth}.rp_filter"), "1")?;
    ok_if_exists(ip(&["-n", ns, "addr", "add", &format!("{v4}/32"), "dev", "eth0"]))?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n",
        ns,
        "neigh",
        "replace",
        NEXT_HOP,
        "lladdr",
        HOST_SIDE_MAC,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    ip(&["-n", ns, "route", "replace", NEXT_HOP, "dev", "eth0", "scope", "link"])?;
    ip(&["-n", ns, "route", "replace", "default", "via", NEXT_HOP, "dev", "eth0", "onlink"])?;
    ip(&["route", "replace", &format!("{v4}/32"), "dev", veth, "scope", "link"])?;
    Ok(())
}

/// Whether the kernel has IPv6 at all (without it there is nothing to turn off).
fn ipv6_enabled() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists()
}

/// A sysctl inside `netns`, through a short-lived process there.
fn sysctl_in(netns: &str, key: &str, value: &str) -> Result<(), NetError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let joined = format!("nsenter --net={} -- sh -c 'echo {value} > {path}'", netns_path(netns).display());
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns_path(netns).display()))
        .args(["--", "sh", "-c", &format!("echo {value} > {path}")])
        .output()
        .map_err(|e| NetError::Spawn { args: joined.clone(), source: e })?;
    if !out.status.success() {
        return Err(NetError::Failed {
            args: joined,
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        });
    }
    Ok(())
}

/// Remove an instance's namespace and veth pair (and with them its route). What ran inside
/// must be gone first, or the namespace lives on unnamed until it is.
pub fn remove_instance(names: &InstanceNames) -> Result<(), NetError> {
    check_name(&names.netns)?;
    check_name(&names.veth)?;
    let _ = ip(&["link", "del", &names.veth]);
    match ip(&["netns", "del", &names.netns]) {
        Err(NetError::Failed { stderr, .. }) if stderr.contains("No such file") => Ok(()),
        other => other.map(drop),
    }
}

/// Whether the instance's host side is in the caller's namespace: `/run/netns` is shared by
/// every host on the machine, so a host must only ever remove its own instances' namespaces.
pub fn is_local(names: &InstanceNames) -> bool {
    check_name(&names.veth).is_ok() && ip(&["link", "show", "dev", &names.veth]).is_ok()
}

/// The instance namespaces that exist on the machine (`eji-…` under `/run/netns`, every
/// host's: see [`is_local`]), for cleaning up those no desired child has any more.
pub fn list_instances() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("eji-"))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_limits() {
        let n = instance_names("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
        assert_eq!(n.netns, "eji-0f1e2d3c");
        assert!(n.veth.len() <= 15);
        assert!(check_name(&n.veth).is_ok());
    }

    #[test]
    fn ipv6_is_refused_by_name() {
        let n = instance_names("abcdef01");
        let err = ensure_instance(&n, "fd00::5".parse().expect("ip")).expect_err("v6");
        assert!(err.to_string().contains("IPv4"), "{err}");
    }
}
