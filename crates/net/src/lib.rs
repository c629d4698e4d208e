//! Host networking for the `netns` strategy: each ring 1 host on a ring 0 machine is a network
//! namespace joined to a bridge (one per network) by a veth pair, with the address IPAM gave it
//! and a default route to the bridge's address. It drives iproute2's `ip` (the kernel's own
//! tool for netlink) rather than writing netlink by hand. It must never route or masquerade
//! traffic off the machine: hosts reach each other and their supervisor, nothing else.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cloud;
pub mod fastpath;
pub mod firewall;
pub mod instance;

use std::net::IpAddr;
use std::process::Command;

/// Why setting up or tearing down a host's networking failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `ip` could not be started: iproute2 is not installed, or not on `PATH`.
    #[error("failed to run `ip {args}`: {source}")]
    Spawn {
        /// The arguments `ip` was to get, joined by spaces.
        args: String,
        /// The error from starting it.
        source: std::io::Error,
    },
    /// `ip` ran and exited non-zero: the kernel refused the change (or, with `args` starting
    /// `sysctl`, a write under `/proc/sys` failed).
    #[error("`ip {args}` failed: {stderr}")]
    Failed {
        /// The arguments `ip` got, joined by spaces; `sysctl key=value` for a sysctl.
        args: String,
        /// What `ip` wrote to standard error, trimmed (for a sysctl, the I/O error).
        stderr: String,
    },
    /// An interface or namespace name is empty, longer than Linux's 15 bytes, or holds a
    /// character other than a letter, digit, '-' or '_'; refused before `ip` sees it.
    #[error("invalid name {0:?}: at most 15 characters of letters, digits, '-' and '_'")]
    BadName(String),
    /// A bridge's gateway address is already on another interface, most likely another enjin's
    /// hosts network on the same machine: the operator must give this one another range.
    #[error(
        "{address} is already on interface {interface} (another enjin's hosts network?); \
         give this one another range"
    )]
    AddressInUse {
        /// The gateway address the bridge was to get.
        address: IpAddr,
        /// The interface (in the caller's namespace) that holds it.
        interface: String,
    },
    /// The instance firewall was refused or could not be applied; boxed to keep this enum small.
    #[error(transparent)]
    Firewall(Box<firewall::FirewallError>),
}

/// Run `ip` with `args`.
pub(crate) fn ip(args: &[&str]) -> Result<String, NetError> {
    let joined = args.join(" ");
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetError::Spawn { args: joined.clone(), source: e })?;
    if !out.status.success() {
        return Err(NetError::Failed {
            args: joined,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `ip` reports that the thing already exists (for idempotent setup).
fn exists(e: &NetError) -> bool {
    matches!(e, NetError::Failed { stderr, .. } if stderr.contains("File exists") || stderr.contains("already exists") || stderr.contains("already assigned"))
}

fn ok_if_exists(r: Result<String, NetError>) -> Result<(), NetError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if exists(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) fn check_name(name: &str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
    if ok { Ok(()) } else { Err(NetError::BadName(name.to_string())) }
}

/// Names derived from an id (a node's or a network's uuid), short enough for Linux's 15-byte
/// interface names.
pub fn names(id: &str) -> Names {
    let short: String = id.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    Names { bridge: format!("ejb-{short}"), veth: format!("ejv-{short}"), netns: format!("enjin-{short}") }
}

/// The prefix of every instance's host-side veth. The firewall drops traffic on any interface
/// with this prefix that it has no rules for, so it must not be used for anything else (hosts'
/// veths are `ejv-`, bridges `ejb-`).
pub const INSTANCE_PREFIX: &str = "eji-";

/// The host-side veth of an instance (a ring 2 node): [`INSTANCE_PREFIX`] and the first 8
/// letters and digits of its uuid, 12 bytes.
pub fn instance_interface(node: uuid::Uuid) -> String {
    let short: String = node.to_string().chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    format!("{INSTANCE_PREFIX}{short}")
}

/// The interface and namespace names [`names`] derives from one id; each is a prefix and the
/// id's first 8 letters and digits, so two ids that share those get the same names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `ejb-…`: a network's bridge, when the id is the network's.
    pub bridge: String,
    /// `ejv-…`: the host-side end of a host's veth pair, on the bridge; its peer is made as
    /// `<veth>p` and renamed `eth0` inside the host's namespace.
    pub veth: String,
    /// `enjin-…`: a host's network namespace, under `/run/netns`.
    pub netns: String,
}

/// A bridge with the network's gateway address on it, up. Idempotent.
pub fn ensure_bridge(bridge: &str, gateway: IpAddr, prefix: u8) -> Result<(), NetError> {
    check_name(bridge)?;
    // The same address on two bridges would leave routing to chance: refuse it plainly.
    if let Some(other) = interface_with(gateway)?.filter(|i| i != bridge) {
        return Err(NetError::AddressInUse { address: gateway, interface: other });
    }
    ok_if_exists(ip(&["link", "add", bridge, "type", "bridge"]))?;
    ok_if_exists(ip(&["addr", "add", &format!("{gateway}/{prefix}"), "dev", bridge]))?;
    ip(&["link", "set", bridge, "up"])?;
    Ok(())
}

/// The interface (in this namespace) that holds `address`, if any.
fn interface_with(address: IpAddr) -> Result<Option<String>, NetError> {
    let out = ip(&["-o", "addr", "show"])?;
    let wanted = format!(" {address}/");
    Ok(out
        .lines()
        .find(|l| l.contains(&wanted))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|i| i.split('@').next().unwrap_or(i).to_string()))
}

/// Deletes the bridge `bridge`; one that does not exist is not an error. Veths on it are
/// detached, not deleted.
pub fn remove_bridge(bridge: &str) -> Result<(), NetError> {
    check_name(bridge)?;
    match ip(&["link", "del", bridge]) {
        Err(NetError::Failed { stderr, .. }) if stderr.contains("Cannot find device") => Ok(()),
        other => other.map(drop),
    }
}

/// A host: a network namespace whose `eth0` is one end of a veth pair, the other end (`veth`)
/// on `bridge`; `address/prefix` on eth0, loopback up, default route via `gateway`. Idempotent.
pub fn ensure_host(
    netns: &str,
    veth: &str,
    bridge: &str,
    address: IpAddr,
    prefix: u8,
    gateway: IpAddr,
) -> Result<(), NetError> {
    check_name(veth)?;
    check_name(netns)?;
    ok_if_exists(ip(&["netns", "add", netns]))?;
    let peer = format!("{veth}p");
    check_name(&peer)?;
    let has_eth0 = ip(&["-n", netns, "link", "show", "eth0"]).is_ok();
    if !has_eth0 {
        // A half-made pair from an interrupted setup is removed and made again.
        let _ = ip(&["link", "del", veth]);
        ip(&["link", "add", veth, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", netns])?;
        ip(&["-n", netns, "link", "set", &peer, "name", "eth0"])?;
    }
    ip(&["link", "set", veth, "master", bridge])?;
    ip(&["link", "set", veth, "up"])?;
    ok_if_exists(ip(&["-n", netns, "addr", "add", &format!("{address}/{prefix}"), "dev", "eth0"]))?;
    ip(&["-n", netns, "link", "set", "lo", "up"])?;
    ip(&["-n", netns, "link", "set", "eth0", "up"])?;
    ok_if_exists(ip(&["-n", netns, "route", "add", "default", "via", &gateway.to_string()]))?;
    Ok(())
}

/// Remove a host's namespace and veth pair (what ran inside must be stopped first).
pub fn remove_host(netns: &str, veth: &str) -> Result<(), NetError> {
    check_name(netns)?;
    check_name(veth)?;
    let _ = ip(&["link", "del", veth]);
    match ip(&["netns", "del", netns]) {
        Err(NetError::Failed { stderr, .. }) if stderr.contains("No such file") => Ok(()),
        other => other.map(drop),
    }
}

/// `ip route replace DEST via VIA`, in `netns` or (with `None`) in the caller's namespace.
pub fn route_replace(netns: Option<&str>, dest: &str, via: IpAddr) -> Result<(), NetError> {
    let via = via.to_string();
    match netns {
        Some(ns) => {
            check_name(ns)?;
            ip(&["-n", ns, "route", "replace", dest, "via", &via]).map(drop)
        }
        None => ip(&["route", "replace", dest, "via", &via]).map(drop),
    }
}

/// `ip route del DEST`, in `netns` or (with `None`) in the caller's namespace; a route that is
/// not there is no error.
pub fn route_delete(netns: Option<&str>, dest: &str) -> Result<(), NetError> {
    let r = match netns {
        Some(ns) => {
            check_name(ns)?;
            ip(&["-n", ns, "route", "del", dest])
        }
        None => ip(&["route", "del", dest]),
    };
    match r {
        Err(NetError::Failed { stderr, .. }) if stderr.contains("No such process") => Ok(()),
        other => other.map(drop),
    }
}

/// Cut a host off its network (`up = false`) or bring it back: its supervisor-side link goes
/// down, as when a cable is pulled.
pub fn set_link(veth: &str, up: bool) -> Result<(), NetError> {
    check_name(veth)?;
    ip(&["link", "set", veth, if up { "up" } else { "down" }]).map(drop)
}

/// The command prefix that runs a program inside `netns`. `nsenter` switches only the network
/// namespace; `ip netns exec` would also mount a fresh `/sys`, hiding the cgroup hierarchy the
/// host's agent needs for its children.
pub fn exec_prefix(netns: &str) -> Vec<String> {
    vec!["nsenter".into(), format!("--net=/run/netns/{netns}"), "--".into()]
}

/// `argv` (a program and its arguments) as a command that runs inside `netns`, through
/// [`exec_prefix`].
pub fn command_in(netns: &str, argv: &[&str]) -> Command {
    let prefix = exec_prefix(netns);
    let mut c = Command::new(&prefix[0]);
    c.args(&prefix[1..]).args(argv);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_limits() {
        let n = names("6c9b5c2e-0d1f-4a55-9f0e-3f1a2b3c4d5e");
        assert_eq!(n.bridge, "ejb-6c9b5c2e");
        assert_eq!(n.veth, "ejv-6c9b5c2e");
        for name in [&n.bridge, &n.veth, &format!("{}p", n.veth)] {
            assert!(check_name(name).is_ok(), "{name}");
        }
        assert!(check_name("much-too-long-interface").is_err());
        assert!(check_name("bad name").is_err());
    }

    #[test]
    fn instance_interfaces_have_their_own_prefix() {
        let node: uuid::Uuid = "6c9b5c2e-0d1f-4a55-9f0e-3f1a2b3c4d5e".parse().expect("uuid");
        let i = instance_interface(node);
        assert_eq!(i, "eji-6c9b5c2e");
        assert!(check_name(&i).is_ok());
        let n = names(&node.to_string());
        for other in [n.bridge, n.veth] {
            assert!(!other.starts_with(INSTANCE_PREFIX), "{other} would be judged as an instance");
        }
    }
}
