//! An agent that falls behind its desired sets (each takes it a while to apply, and its parent
//! publishes thousands) is cut off from the subscription; it subscribes again, carries on with
//! the newest set, and never stops — stopping would stop every child it runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use enjin_agent::Children;
use enjin_model::api::{DesiredChildren, desired_topic};
use tokio::sync::{mpsc, watch};

mod ring1;

use ring1::*;

/// Applies slowly, and remembers the newest revision it was given.
struct Slow(Arc<Mutex<i64>>);

impl Children for Slow {
    fn apply(&self, desired: &DesiredChildren) {
        std::thread::sleep(Duration::from_millis(2));
        *self.0.lock().expect("lock") = desired.revision;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_from_its_desired_sets_subscribes_again_and_keeps_running() {
    let ring = Ring1::start().await;
    let (host, config) = ring.host("h1").await;
    let applied = Arc::new(Mutex::new(i64::MIN));
    let (stop_agent, stopped) = watch::channel(false);
    let (_obs_tx, obs_rx) = mpsc::channel(8);
    let agent =
        tokio::spawn(enjin_agent::run(config, Arc::new(Slow(applied.clone())), obs_rx, until(stopped)));
    let set = |revision: i64| {
        serde_json::to_vec(&DesiredChildren { node: host, revision, children: vec![], firewall: None })
            .expect("json")
    };
    // The first set reaches the agent: it is subscribed.
    let deadline = tokio::time::Instant::now() + WAIT;
    while *applied.lock().expect("lock") != 1 {
        assert!(tokio::time::Instant::now() < deadline, "the agent never applied a set");
        ring.authority.publish_state(&desired_topic(host), set(1)).expect("publish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Far more than its subscription queue holds (1,024), faster than it applies them.
    const LAST: i64 = 6_000;
    for revision in 2..=LAST {
        ring.authority.publish_state(&desired_topic(host), set(revision)).expect("publish");
        if revision % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while *applied.lock().expect("lock") != LAST {
        assert!(!agent.is_finished(), "the agent stopped when it fell behind");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the newest set was not applied: {}",
            applied.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!agent.is_finished(), "the agent keeps running");
    stop_agent.send_replace(true);
    tokio::time::timeout(WAIT, agent).await.expect("stops").expect("joins").expect("ends well");
}
