//! Mutual TLS is enforced: peers without a certificate from the ring CA exchange no messages,
//! whichever side is the stranger.

mod transport_common;

use std::sync::Arc;
use std::time::Duration;

use enjin_bus::client::BusClient;
use enjin_bus::frame::{self, Frame};
use enjin_bus::hub::HubConfig;
use enjin_bus::tls::{ALPN_PROTOCOL, TlsMaterial};
use enjin_bus::transport::{Transport, TransportError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use transport_common::*;

/// Material signed by `rogue` that nevertheless trusts the real ring CA, so the client side of
/// the handshake goes through and only the hub can refuse it.
fn stranger(ring: &Ca, rogue: &Ca, cn: &str) -> TlsMaterial {
    TlsMaterial { ca_pem: ring.pem.clone(), ..rogue.node(cn) }
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let ring = Ca::new("ring");
    let rogue = Ca::new("rogue");
    let hub = RunningHub::start(loopback(), &ring.node("hub"), HubConfig::default()).await;
    let member = connected_client(hub.addr, &ring.node("member")).await;
    let mut member_sub = member.subscribe("x.>").expect("subscribe");
    member.flush(WAIT).await.expect("flush");

    let intruder =
        BusClient::connect(hub.addr, "localhost", &stranger(&ring, &rogue, "intruder"), fast_client())
            .expect("client");
    let mut intruder_sub = intruder.subscribe("x.>").expect("queued locally");
    intruder.publish("x.forged", None, b"forged".to_vec()).expect("queued locally");
    wait_until("the hub refused the intruder twice (it keeps retrying)", || {
        hub.stats().handshake_failures >= 2
    })
    .await;
    assert!(!intruder.is_connected());
    assert!(matches!(
        intruder.wait_connected(Duration::from_millis(200)).await,
        Err(TransportError::Timeout(_))
    ));
    assert!(intruder.stats().connect_failures >= 2);
    assert_eq!(intruder.stats().connects, 0);

    member.publish("x.real", None, b"real".to_vec()).expect("publish");
    assert_eq!(recv(&mut member_sub).await.topic, "x.real");
    assert_quiet(&mut member_sub).await;
    assert_quiet(&mut intruder_sub).await;
    let stats = hub.stats();
    assert_eq!(stats.connections_accepted, 1, "only the member got in");
    assert_eq!(stats.published, 1);
    hub.stop().await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let ring = Ca::new("ring");
    let hub = RunningHub::start(loopback(), &ring.node("hub"), HubConfig::default()).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ring.pem.as_bytes()).expect("ca pem")).expect("add root");
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];

    let tcp = TcpStream::connect(hub.addr).await.expect("tcp connect");
    let server = ServerName::try_from("localhost").expect("name");
    // With TLS 1.3 the client may finish its side before the hub rejects it; either way, nothing
    // it sends is answered.
    if let Ok(Ok(mut tls)) =
        tokio::time::timeout(WAIT, TlsConnector::from(Arc::new(config)).connect(server, tcp)).await
    {
        let mut out = Vec::new();
        Frame::Subscribe { sid: 1, pattern: ">".into() }.encode(&mut out).expect("encode");
        Frame::Ping.encode(&mut out).expect("encode");
        let _ = tls.write_all(&out).await;
        let _ = tls.flush().await;
        let answer = tokio::time::timeout(WAIT, frame::read_frame(&mut tls, &mut Vec::new()))
            .await
            .expect("the hub closes the connection promptly");
        assert!(!matches!(answer, Ok(Some(_))), "the hub answered an unauthenticated client: {answer:?}");
    }
    wait_until("the hub counted the failed handshake", || hub.stats().handshake_failures == 1).await;
    let stats = hub.stats();
    assert_eq!(stats.connections_accepted, 0);
    assert_eq!(stats.connections, 0);
    hub.stop().await;
}

#[tokio::test]
async fn a_hub_with_a_certificate_from_another_ca_is_refused() {
    let ring = Ca::new("ring");
    let rogue = Ca::new("rogue");
    // The fake hub trusts ring clients, but its own certificate is the rogue's.
    let hub = RunningHub::start(loopback(), &stranger(&ring, &rogue, "fake-hub"), HubConfig::default()).await;
    let client =
        BusClient::connect(hub.addr, "localhost", &ring.node("member"), fast_client()).expect("client");
    wait_until("the client refused the hub", || client.stats().connect_failures >= 1).await;
    assert!(!client.is_connected());
    assert_eq!(client.stats().connects, 0);
    assert_eq!(hub.stats().connections_accepted, 0);
    hub.stop().await;
}

#[tokio::test]
async fn a_hub_certificate_for_another_name_is_refused() {
    let ring = Ca::new("ring");
    let hub = RunningHub::start(loopback(), &ring.node("hub"), HubConfig::default()).await;
    let client = BusClient::connect(hub.addr, "other-host.example", &ring.node("member"), fast_client())
        .expect("client");
    wait_until("the client refused the hub", || client.stats().connect_failures >= 1).await;
    assert!(!client.is_connected());
    hub.stop().await;
}
