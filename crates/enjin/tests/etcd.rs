//! `[store] backend = "etcd"`: the control plane keeps its objects in etcd, over TLS with a
//! client certificate the ring 0 CA issues at start, and finds them there after a restart.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::Running;
use enjin_model::Kind;
use enjin_testkit::EtcdServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_keeps_its_objects_in_etcd_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The ring 0 CA the server will find in its data directory: etcd trusts it for clients,
    // and it issues etcd's own certificate, which the server checks against it by default.
    let (data, etcd) = common::data_dir_with_etcd(dir.path());
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

/// Whether the server says it leads the controllers (its `/metrics`).
async fn leads(server: &Running) -> Option<bool> {
    let text = server.client().metrics().await.ok()?;
    let line = text.lines().find(|l| l.starts_with("enjin_controllers_leading "))?;
    Some(line.ends_with(" 1"))
}

/// Copy the cloud's CAs and keys, what every control-plane server of one cloud shares.
fn share_secrets(from: &std::path::Path, to: &std::path::Path) {
    for sub in ["pki", "keys"] {
        let (src, dst) = (from.join(sub), to.join(sub));
        std::fs::create_dir_all(&dst).expect("mkdir");
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        for entry in std::fs::read_dir(&src).expect("read dir") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), dst.join(entry.file_name())).expect("copy");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_one_etcd_hand_the_controllers_over_when_the_leader_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = EtcdServer::start();
    let config = format!("[store]\nbackend = \"etcd\"\nendpoints = [\"{}\"]\n", etcd.endpoint());
    let dirs: Vec<std::path::PathBuf> = (1..=3).map(|i| dir.path().join(format!("server-{i}"))).collect();
    for d in &dirs {
        std::fs::create_dir_all(d).expect("data dir");
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::write(d.join("enjin.toml"), &config).expect("enjin.toml");
    }
    let first = Running::start("server", &dirs[0]);
    for d in &dirs[1..] {
        share_secrets(&dirs[0], d);
    }
    let mut servers: Vec<Option<Running>> =
        vec![Some(first), Some(Running::start("server", &dirs[1])), Some(Running::start("server", &dirs[2]))];

    // Exactly one leads.
    let leader = wait_leader(&servers, None).await;
    // Two lease TTLs: long enough for a second server to have taken the lead too, were the
    // election not exclusive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut states = Vec::new();
    for s in servers.iter().flatten() {
        states.push(leads(s).await);
    }
    assert_eq!(states.iter().filter(|l| **l == Some(true)).count(), 1, "one leader: {states:?}");

    // Writes through a follower go on while the leader is killed.
    let writer = (leader + 1) % 3;
    let client = servers[writer].as_ref().expect("writer").client();
    let writes = tokio::spawn(async move {
        let mut failed = Vec::new();
        for i in 0..60 {
            let body = json!({"ring": 0, "label": format!("written-{i}"), "spec": {}});
            if let Err(e) = client.create_json(Kind::Node, &body).await {
                failed.push(e.to_string());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        failed
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = std::time::Instant::now();
    servers[leader].take().expect("leader").crash();
    let next = wait_leader(&servers, Some(leader)).await;
    let handover = killed_at.elapsed();
    eprintln!("controllers moved from server {} to server {} in {handover:?}", leader + 1, next + 1);
    assert!(handover < Duration::from_secs(4), "another server leads soon after the kill: {handover:?}");
    let failed = writes.await.expect("writer");
    assert!(failed.is_empty(), "writes through a follower never fail: {failed:?}");
    // Every write acknowledged is there, through any server.
    let reader = servers[next].as_ref().expect("new leader").client();
    let nodes = reader.list_json(Kind::Node, &enjin_model::api::ListQuery::default()).await.expect("list");
    let written =
        nodes.items.iter().filter(|n| n.meta.label.as_deref().is_some_and(|l| l.starts_with("written-")));
    assert_eq!(written.count(), 60);

    // The killed server comes back as a follower; the leader stays.
    servers[leader] = Some(Running::start("server", &dirs[leader]));
    // Three lease TTLs with the returned server campaigning: time enough to take the lead
    // were it (wrongly) able to while the leader renews.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(leads(servers[leader].as_ref().expect("back")).await, Some(false), "it follows");
    assert_eq!(leads(servers[next].as_ref().expect("leader")).await, Some(true), "the leader stays");
    for s in servers.into_iter().flatten() {
        assert!(s.interrupt().success(), "clean stop");
    }
}

/// The index of the server that leads (not `except`), waiting up to 10 s.
async fn wait_leader(servers: &[Option<Running>], except: Option<usize>) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        for (i, s) in servers.iter().enumerate() {
            if Some(i) != except
                && let Some(s) = s
                && leads(s).await == Some(true)
            {
                return i;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no server leads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
