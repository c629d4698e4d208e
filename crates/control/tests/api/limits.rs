//! Default limits for instances: a ring 2 `unix-user` node with a run gets the configured
//! limits it leaves out, so what `enjin node get` shows is what applies; a limit stays absent
//! (unlimited) only when the operator configured it so.

use enjin_control::{ControlConfig, InstanceDefaults};
use serde_json::json;

use crate::fixtures::{machine, node};
use crate::harness::TestServer;
use crate::uids::instance;

async fn host(s: &TestServer) -> String {
    let m1 = s.create_id("nodes", machine("m1")).await;
    s.create_id("nodes", node(1, "h1", &m1)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_without_limits_get_the_defaults() {
    let s = TestServer::start().await;
    let h1 = host(&s).await;
    let defaults = json!({
        "memory_bytes": 512u64 << 20, "pids": 256, "cpu_millis": 1000, "disk_bytes": 1u64 << 30
    });
    let app = s.create("nodes", instance("app", &h1)).await;
    assert_eq!(app["spec"]["resources"], defaults);
    assert_eq!(s.fetch("nodes", &crate::harness::uuid_of(&app)).await["spec"]["resources"], defaults);

    // Only what is left out is filled.
    let mut body = instance("big", &h1);
    body["spec"]["resources"] = json!({"memory_bytes": 2u64 << 30, "pids": 10});
    let big = s.create("nodes", body).await;
    assert_eq!(
        big["spec"]["resources"],
        json!({"memory_bytes": 2u64 << 30, "pids": 10, "cpu_millis": 1000, "disk_bytes": 1u64 << 30})
    );

    // An update that leaves them out gets them again rather than going unlimited.
    let mut edited = instance("big", &h1)["spec"].clone();
    edited["resources"] = json!({"cpu_millis": 250});
    let updated = s.update("nodes", &big, edited).await;
    assert_eq!(
        updated["spec"]["resources"],
        json!({"memory_bytes": 512u64 << 20, "pids": 256, "cpu_millis": 250, "disk_bytes": 1u64 << 30})
    );

    // Nodes that are not instances are left as sent.
    let bare = s.create("nodes", node(2, "bare", &h1)).await;
    assert_eq!(bare["spec"]["resources"], json!({}));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unlimited_only_when_the_operator_says_so() {
    let config = ControlConfig {
        instances: InstanceDefaults { pids: Some(64), ..InstanceDefaults::UNLIMITED },
        ..ControlConfig::default()
    };
    let s = TestServer::start_with(&config).await;
    let h1 = host(&s).await;
    let app = s.create("nodes", instance("app", &h1)).await;
    assert_eq!(app["spec"]["resources"], json!({"pids": 64}));
    s.stop().await;
}
