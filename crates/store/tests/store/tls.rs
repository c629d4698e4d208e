//! The etcd store over TLS: etcd requires a client certificate signed by a ring CA, and the
//! store checks etcd's certificate against it.

use std::time::Duration;

use enjin_pki::RingCa;
use enjin_store::{EtcdStore, EtcdStoreConfig, EtcdTlsConfig, Store, StoreError};

use enjin_testkit::{EtcdServer, EtcdTls};

use crate::etcd_server::connect_with;
use crate::put;

const VALIDITY: Duration = Duration::from_secs(3600);

fn client_tls(ca: &RingCa, client: &enjin_pki::Issued) -> EtcdTlsConfig {
    EtcdTlsConfig {
        ca_pem: ca.cert_pem().as_bytes().to_vec(),
        cert_pem: client.cert_pem.as_bytes().to_vec(),
        key_pem: client.key_pem.as_bytes().to_vec(),
        domain: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_client_certificate_from_the_ring_ca() {
    let ca = RingCa::generate(0).expect("ring 0 CA");
    let server = ca.issue("etcd", &["127.0.0.1".into(), "localhost".into()], VALIDITY).expect("server cert");
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write pem");
        path
    };
    let files = EtcdTls {
        cert: write("server.crt", &server.cert_pem),
        key: write("server.key", &server.key_pem),
        trusted_ca: write("ca.crt", ca.cert_pem()),
    };
    let etcd = EtcdServer::start_with(Some(&files));
    assert!(etcd.endpoint().starts_with("https://"), "{}", etcd.endpoint());

    let client = ca.issue("enjin-control", &[], VALIDITY).expect("client cert");
    let mut config = EtcdStoreConfig::new([etcd.endpoint()]);
    config.tls = Some(client_tls(&ca, &client));
    let store = connect_with(&etcd, config.clone()).await;
    assert_eq!(put(&store, "over/tls", "1").await.revision, 2);
    assert_eq!(store.get("over/tls").await.expect("get").expect("key").value, b"1");
    store.close().await.expect("close");

    // A certificate from another CA is refused by etcd; so is no certificate; and a client
    // that trusts another CA refuses etcd.
    let stranger = RingCa::generate(0).expect("another CA");
    let strange_client = stranger.issue("intruder", &[], VALIDITY).expect("cert");
    let refused = |tls: Option<EtcdTlsConfig>| {
        let mut config = config.clone();
        config.tls = tls;
        config.request_timeout = Duration::from_millis(500);
        async move { EtcdStore::connect(config).await.map(|_| ()) }
    };
    let foreign_client =
        EtcdTlsConfig { ca_pem: ca.cert_pem().as_bytes().to_vec(), ..client_tls(&stranger, &strange_client) };
    for (what, tls) in [
        ("a client certificate of another CA", Some(foreign_client)),
        ("a client that trusts another CA", Some(client_tls(&stranger, &client))),
    ] {
        let err = refused(tls).await.expect_err(what);
        assert!(matches!(err, StoreError::Open { .. }), "{what}: {err}");
    }
    let plain = refused(None).await.expect_err("https without tls");
    assert!(plain.to_string().contains("no tls"), "{plain}");
}
