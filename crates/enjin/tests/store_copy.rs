//! `enjin store copy`: a cloud that ran on SQLite moved to etcd by the real binary, then its
//! control plane started on etcd finds what was made before the copy.

mod common;

use common::Running;
use enjin_model::Kind;
use enjin_model::api::ListQuery;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_copied_from_sqlite_to_etcd_keeps_its_objects_and_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    // etcd over TLS, trusting the ring 0 CA for clients and serving a certificate it issued.
    let (data, etcd) = common::data_dir_with_etcd(dir.path());
    let endpoint = etcd.endpoint().to_owned();
    let copy = ["store", "copy", "--to", "etcd", "--endpoints", endpoint.as_str()];

    let sqlite = Running::start("server", &data);
    let created = sqlite
        .client()
        .create_json(Kind::Node, &json!({"ring": 0, "label": "made-on-sqlite", "spec": {}}))
        .await
        .expect("create a node");
    let uuid: uuid::Uuid = created["uuid"].as_str().expect("uuid").parse().expect("uuid");

    // Not while the cloud runs: the store is locked, and nothing reaches etcd.
    let refused = common::cli(&data, &copy);
    assert!(!refused.status.success(), "a copy of a running cloud is refused");
    let stderr = common::stderr(&refused);
    assert!(stderr.contains("state.db"), "{stderr}");
    assert!(sqlite.interrupt().success(), "clean stop");

    let out = common::cli(&data, &[&copy[..], &["-o", "json"]].concat());
    assert!(out.status.success(), "copy: {}", common::stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&common::stdout(&out)).expect("json report");
    assert!(report["keys"].as_u64().expect("keys") > 10, "{report}");
    assert!(report["source_revision"].as_i64().expect("revision") > 1, "{report}");
    assert_eq!(report["target"], json!([endpoint]));

    // A second copy finds the target full and says so.
    let again = common::cli(&data, &copy);
    assert!(!again.status.success());
    let stderr = common::stderr(&again);
    assert!(
        stderr.contains("not empty") && stderr.contains("a finished copy (/meta/copied-from"),
        "{stderr}"
    );

    let config = format!("[store]\nbackend = \"etcd\"\nendpoints = [\"{endpoint}\"]\n");
    std::fs::write(data.join("enjin.toml"), config).expect("write enjin.toml");
    // Without the SQLite file, whatever the server finds can only come from etcd.
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let _ = std::fs::remove_file(data.join(format!("state.db{suffix}")));
    }
    let on_etcd = Running::start("server", &data);
    let client = on_etcd.client();
    let node = client.get_json(Kind::Node, uuid).await.expect("the node made before the copy");
    assert_eq!(node["label"], "made-on-sqlite");
    let nodes = client.list_json(Kind::Node, &ListQuery::default()).await.expect("list nodes");
    assert!(
        nodes.items.iter().any(|n| n.meta.uuid == uuid && n.meta.label.as_deref() == Some("made-on-sqlite")),
        "{:?}",
        nodes.items
    );
    assert!(!data.join("state.db").exists(), "the etcd backend writes no SQLite file");
    assert!(on_etcd.interrupt().success(), "clean stop");
}

#[test]
fn a_data_dir_without_a_store_has_nothing_to_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out =
        common::cli(dir.path(), &["store", "copy", "--to", "etcd", "--endpoints", "http://127.0.0.1:1"]);
    assert!(!out.status.success());
    let stderr = common::stderr(&out);
    assert!(stderr.contains("nothing to copy"), "{stderr}");
    assert!(!dir.path().join("state.db").exists(), "no store is created");
}
