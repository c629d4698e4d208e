//! What `enjin up` prints once it serves: where everything is, and what to try.

use std::net::SocketAddr;
use std::path::Path;

use enjin_edge::Listening;
use enjin_model::Object;
use enjin_model::kinds::NodeSpec;

/// Where the parts of a started node are.
#[derive(Debug)]
pub(crate) struct Banner<'a> {
    pub url: &'a str,
    pub dir: &'a Path,
    pub token: &'a Path,
    pub ca: Option<&'a Path>,
    pub machine: Option<&'a Object<NodeSpec>>,
    pub hub: Option<SocketAddr>,
    /// The ring 1 bus's NATS server, when it is not the hub.
    pub nats: Option<&'a str>,
    pub edge: Option<&'a Listening>,
}

impl Banner<'_> {
    pub(crate) fn print(&self) {
        let Banner { url, dir, token, ca, machine, hub, nats, edge } = *self;
        println!("enjin is up");
        println!("  API:        {url}   (OpenAPI document: {url}/v1/openapi.json)");
        println!("  data:       {}", dir.display());
        println!("  token:      {}   (admin; send it as `Authorization: Bearer <token>`)", token.display());
        match ca {
            Some(ca) => println!("  CA:         {}   (the API's certificate comes from it)", ca.display()),
            None => println!("  TLS:        off (--insecure-http); loopback only"),
        }
        if let Some(m) = machine {
            println!(
                "  this node:  ring 0 node {} ({})",
                m.meta.label.as_deref().unwrap_or("?"),
                m.meta.uuid
            );
        }
        if let Some(n) = nats {
            println!("  bus:        ring 1 on NATS at {n} (operator and account in {}/nats)", dir.display());
        } else if let Some(h) = hub {
            println!("  bus:        ring 1 hub on {h} (mutual TLS, certificates from {}/pki)", dir.display());
        }
        if let Some(e) = edge {
            println!(
                "  router:     http://<app>.localhost:{}   (apps, once deployed: enjin deploy examples/python-hello)",
                e.router.port()
            );
            println!(
                "  dns:        {}   (dig @{} -p {} <app>.enjin.internal)",
                e.dns,
                e.dns.ip(),
                e.dns.port()
            );
        }
        println!("try:");
        println!("  enjin node list                 (from a checkout: cargo run -- node list)");
        let cacert = ca.map(|c| format!("--cacert {} ", c.display())).unwrap_or_default();
        println!("  curl {cacert}-H \"Authorization: Bearer $(cat {})\" {url}/v1/nodes", token.display());
        println!("Ctrl-C stops it; running it again resumes the same cloud; `enjin down` takes it apart.");
    }
}
