//! `[store] backend = "etcd"`: the control plane keeps its objects in etcd, over TLS with a
//! client certificate the ring 0 CA issues at start, and finds them there after a restart.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::Running;
use enjin_model::Kind;
use enjin_pki::RingCa;
use enjin_testkit::{EtcdServer, EtcdTls};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_keeps_its_objects_in_etcd_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    // The ring 0 CA the server will find in its data directory: etcd trusts it for clients,
    // and it issues etcd's own certificate, which the server checks against it by default.
    let ca = RingCa::load_or_create(&data.join("pki"), 0).expect("ring 0 CA");
    let issued = ca.issue("etcd", &["127.0.0.1".into()], Duration::from_secs(3600)).expect("etcd cert");
    let tls_dir = dir.path().join("etcd-tls");
    std::fs::create_dir_all(&tls_dir).expect("tls dir");
    let write = |name: &str, pem: &str| {
        let path = tls_dir.join(name);
        std::fs::write(&path, pem).expect("write pem");
        path
    };
    let tls = EtcdTls {
        cert: write("server.crt", &issued.cert_pem),
        key: write("server.key", &issued.key_pem),
        trusted_ca: write("ca.crt", ca.cert_pem()),
    };
    let etcd = EtcdServer::start_with(Some(&tls));
    let config = format!("[store]\nbackend = \"etcd\"\nendpoints = [\"{}\"]\n", etcd.endpoint());
    std::fs::write(data.join("enjin.toml"), config).expect("write enjin.toml");

    let server = Running::start("server", &data);
    let created = server
        .client()
        .create_json(Kind::Node, &json!({"ring": 0, "label": "kept-in-etcd", "spec": {}}))
        .await
        .expect("create a node");
    let uuid = created["uuid"].as_str().expect("uuid").to_owned();
    assert!(!data.join("state.db").exists(), "the etcd backend writes no SQLite file");
    assert!(server.interrupt().success(), "clean stop");

    let again = Running::start("server", &data);
    let node =
        again.client().get_json(Kind::Node, uuid.parse().expect("uuid")).await.expect("node after restart");
    assert_eq!(node["label"], "kept-in-etcd");
    assert!(again.interrupt().success(), "clean stop");
}

#[test]
fn a_bad_store_section_stops_the_server_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(
        data.join("enjin.toml"),
        "[store]\nbackend = \"etcd\"\nendpoints = [\"http://10.9.9.9:2379\"]\n",
    )
    .expect("write enjin.toml");
    let out = common::cli(&data, &["server", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let stderr = common::stderr(&out);
    assert!(stderr.contains("[store] endpoints") && stderr.contains("plain HTTP off loopback"), "{stderr}");
}
