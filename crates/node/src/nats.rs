//! The ring 1 bus on a NATS server (`[bus] nats_url`) instead of the embedded hub: the cloud's
//! NATS operator and the ring's account live in `<data-dir>/nats` (seeds 0600); the control
//! plane connects as the ring's parent, and every host and the edge get a user of the account
//! minted when they are enrolled. `enjin nats config` writes what the server needs.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use enjin_bus::acl::{Member, PARENT_ID};
use enjin_bus::nats::auth::{NatsAccount, NatsOperator};
use enjin_bus::nats::{NatsAuth, NatsConfig, NatsTransport};
use enjin_bus::tls::TlsMaterial;

use crate::error::NodeError;
use crate::hosts::{NATS_USER_VALIDITY, NatsPlan};

/// The ring 1 account's name in the operator.
pub const RING1_ACCOUNT: &str = "ring-1";

/// The operator and the ring 1 account of the cloud whose data directory is `dir`.
pub fn account(dir: &Path) -> Result<(NatsOperator, NatsAccount), NodeError> {
    let operator = NatsOperator::load_or_create(&dir.join("nats"))
        .map_err(|e| NodeError::Nats(format!("the NATS operator in {}: {e}", dir.join("nats").display())))?;
    let account = operator.account(RING1_ACCOUNT);
    Ok((operator, account))
}

/// How long the NATS server's certificate is valid; `enjin nats config` issues a new one.
const SERVER_CERT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// A nats-server configuration for the ring 1 bus of the cloud in `dir`: listening on
/// `listen`, JetStream in `<dir>/nats/jetstream`, mutual TLS with a certificate from the ring 1
/// CA for `names` and the listen address (written 0600 to `<dir>/nats`, the CA beside it), and
/// operator mode trusting the cloud's operator with the ring's account preloaded.
pub fn server_config(dir: &Path, listen: SocketAddr, names: &[String]) -> Result<String, NodeError> {
    let nats = dir.join("nats");
    let (operator, account) = account(dir)?;
    let ca = enjin_pki::RingCa::load_or_create(&dir.join("pki"), enjin_model::Ring::INFRASTRUCTURE.get())
        .map_err(NodeError::RingCa)?;
    let mut names = names.to_vec();
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    let issued = ca.issue("parent:nats", &names, SERVER_CERT_VALIDITY).map_err(NodeError::RingCa)?;
    let (cert, key, ca_file) = (nats.join("server.crt"), nats.join("server.key"), nats.join("ca.crt"));
    for (path, pem) in
        [(&cert, &issued.cert_pem), (&key, &issued.key_pem), (&ca_file, &ca.cert_pem().to_string())]
    {
        enjin_sys::fs::write_private(path, pem.as_bytes()).map_err(|source| NodeError::Io {
            action: "write",
            path: path.clone(),
            source,
        })?;
    }
    // Paths and addresses as quoted strings (nats-server's configuration reads JSON strings).
    let quote = |p: &Path| format!("{:?}", p.display().to_string());
    let listen = format!("{:?}", listen.to_string());
    Ok(format!(
        "listen: {}\njetstream {{ store_dir: {} }}\ntls {{ cert_file: {}, key_file: {}, ca_file: {}, verify: true }}\n{}",
        listen,
        quote(&nats.join("jetstream")),
        quote(&cert),
        quote(&key),
        quote(&ca_file),
        enjin_bus::nats::auth::server_config(&operator, &[&account]),
    ))
}

/// What [`connect`] found: the plan for the nodes, and the server's address.
pub struct Connected {
    /// Where nodes reach the server, and the account that mints their users.
    pub plan: NatsPlan,
    /// The server's socket address, from the URL.
    pub server: SocketAddr,
}

/// Connect the control plane to the NATS server at `url` as the ring's parent; hosts reach it
/// at the same port on `gateway` when they live behind the hosts' bridge.
pub async fn connect(
    dir: &Path,
    url: &str,
    gateway: Option<IpAddr>,
    tls: TlsMaterial,
) -> Result<(Connected, NatsTransport), NodeError> {
    let (scheme, server) = parse(url)?;
    let (_operator, account) = account(dir)?;
    let parent = Member::parent("control-plane").map_err(|e| NodeError::Nats(e.to_string()))?;
    let creds = account.mint_user(&parent, NATS_USER_VALIDITY).map_err(|e| NodeError::Nats(e.to_string()))?;
    let mut config = NatsConfig::new(url);
    config.member_id = Some(PARENT_ID.to_string());
    config.auth = Some(NatsAuth::Credentials(creds));
    config.tls = (scheme == "tls").then_some(tls);
    let transport =
        NatsTransport::connect(config).await.map_err(|e| NodeError::Nats(format!("{url}: {e}")))?;
    let hosts_url = match gateway {
        Some(g) => format!("{scheme}://{}", SocketAddr::new(g, server.port())),
        None => url.to_string(),
    };
    let plan = NatsPlan { local_url: url.to_string(), hosts_url, account };
    Ok((Connected { plan, server }, transport))
}

/// The scheme and address of a `nats://` or `tls://` URL with an IP address and a port.
pub fn parse(url: &str) -> Result<(String, SocketAddr), NodeError> {
    let bad = || {
        NodeError::Nats(format!("[bus] nats_url {url:?}: not tls://IP:PORT (or nats://IP:PORT on loopback)"))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let addr: SocketAddr = rest.trim_end_matches('/').parse().map_err(|_| bad())?;
    match scheme {
        "tls" => Ok((scheme.to_string(), addr)),
        // Every message of the ring would cross the wire in the clear.
        "nats" if addr.ip().is_loopback() => Ok((scheme.to_string(), addr)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tls_or_loopback_urls_are_taken() {
        assert!(parse("tls://10.0.0.1:4222").is_ok());
        assert!(parse("nats://127.0.0.1:4222").is_ok());
        for bad in ["nats://10.0.0.1:4222", "tls://host:4222", "tls://10.0.0.1", "http://127.0.0.1:4222", "x"]
        {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
