//! Mutual TLS on NATS from the ring's certificates: nats-server requires a client certificate
//! signed by the ring CA, and a member with one connects and exchanges messages, while a
//! connection in the clear or with a certificate from another CA is refused.

mod transport_common;

use std::path::Path;
use std::time::Duration;

use enjin_bus::nats::{NatsConfig, NatsTransport};
use enjin_bus::tls::TlsMaterial;
use enjin_bus::transport::Transport;
use enjin_testkit::NatsServer;
use transport_common::*;

/// The server's `tls` block, its files written to `dir`.
fn tls_block(dir: &Path, server: &TlsMaterial) -> String {
    let files = [("ca.pem", &server.ca_pem), ("cert.pem", &server.cert_pem), ("key.pem", &server.key_pem)];
    for (name, pem) in files {
        std::fs::write(dir.join(name), pem).expect("write the server's TLS files");
    }
    let path = |name: &str| dir.join(name).display().to_string();
    format!(
        "tls {{\n  ca_file: \"{}\"\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  verify: true\n}}\n",
        path("ca.pem"),
        path("cert.pem"),
        path("key.pem"),
    )
}

fn config(server: &NatsServer, tls: Option<TlsMaterial>) -> NatsConfig {
    NatsConfig { tls, connect_timeout: Duration::from_secs(3), ..NatsConfig::new(server.url()) }
}

#[tokio::test]
async fn only_ring_members_connect_over_mutual_tls() {
    let (ring, rogue) = (Ca::new("ring"), Ca::new("rogue"));
    let files = tempfile::tempdir().expect("temp dir");
    let server = NatsServer::start_with(&tls_block(files.path(), &ring.node("nats")));

    let member = NatsTransport::connect(config(&server, Some(ring.node("member"))))
        .await
        .expect("a ring member connects over TLS");
    let mut sub = member.subscribe("bench.tls").expect("subscribe");
    // The subscription is registered before the publish (one ordered queue), so it arrives.
    member.publish("bench.tls", None, b"over tls".to_vec()).expect("publish");
    assert_eq!(recv(&mut sub).await.payload, b"over tls");

    assert!(NatsTransport::connect(config(&server, None)).await.is_err(), "a client in the clear connects");
    // Trusts the ring CA, but its own certificate is the rogue CA's.
    let stranger = TlsMaterial { ca_pem: ring.pem.clone(), ..rogue.node("member") };
    assert!(
        NatsTransport::connect(config(&server, Some(stranger))).await.is_err(),
        "a certificate from another CA connects"
    );
    // Presents a ring certificate, but trusts only the rogue CA: the server is not believed.
    let misled = TlsMaterial { ca_pem: rogue.pem.clone(), ..ring.node("member") };
    assert!(
        NatsTransport::connect(config(&server, Some(misled))).await.is_err(),
        "a server outside the trusted CA is believed"
    );
}
