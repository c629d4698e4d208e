//! Every write whose response arrived survives SIGKILL of the server.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Running;
use enjin_model::Kind;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Running::start("server", &data);
    let client = server.client();

    const WRITERS: usize = 8;
    const KILL_AFTER: usize = 300;
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = client.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let label = format!("w{w}-{i}");
                let body = json!({"ring": 0, "label": label, "spec": {}});
                match client.create_json(Kind::Node, &body).await {
                    Ok(obj) => {
                        let uuid = obj["uuid"].as_str().expect("uuid").to_string();
                        acked.lock().expect("lock").push((uuid, label));
                    }
                    // The server is gone: the stream of writes ends here.
                    Err(_) => return,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().expect("lock").len() < KILL_AFTER {
        assert!(Instant::now() < deadline, "writes were too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Kill mid-stream: writers have requests in flight right now.
    server.crash();
    for w in writers {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("writers notice the crash")
            .expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= KILL_AFTER);

    let restarted = Running::start("server", &data);
    let client = restarted.client();
    for (uuid, label) in &acked {
        let obj = client
            .get_json(Kind::Node, uuid.parse().expect("uuid"))
            .await
            .unwrap_or_else(|e| panic!("acknowledged node {label} ({uuid}) was lost in the crash: {e}"));
        assert_eq!(obj["label"], label.as_str());
    }
    // And the store goes on from where it was: new writes succeed.
    client
        .create_json(Kind::Node, &json!({"ring": 0, "label": "after-crash", "spec": {}}))
        .await
        .expect("write after restart");
}
