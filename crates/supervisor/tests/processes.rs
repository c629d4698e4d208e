//! The supervisor over real processes: restarts, crash loops, graceful stops, process groups and
//! adoption after a supervisor crash.

mod common;

use std::time::Duration;

use common::*;
use enjin_model::kinds::ObservationState::{self, *};
use enjin_supervisor::{EnsureOutcome, Restart, StopSpec};

#[tokio::test]
async fn sigkilled_permanent_child_is_restarted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rig = start(tmp.path()).await;
    rig.sup.handle().ensure(spec("web", Restart::Permanent, &["sleep", "300"])).await.expect("ensure");
    rig.wait("web", Running).await;
    let pid = rig.pid("web").await;
    let before = rig.seen.len();

    kill(pid);
    let exited = rig.wait("web", Exited).await;
    assert!(
        exited.message.contains(&format!("pid {pid} exited with signal 9 (SIGKILL)")),
        "{}",
        exited.message
    );
    let running = rig.wait("web", Running).await;
    let new_pid = running.pid.expect("pid");
    assert_ne!(new_pid, pid);
    assert!(alive(new_pid));
    let after: Vec<ObservationState> = rig.seen[before..].iter().map(|o| o.state).collect();
    assert_eq!(after, vec![Exited, Starting, Running]);
    let snap = rig.sup.handle().snapshot().await.expect("snapshot");
    assert_eq!(snap.children[0].restarts, 1);
    rig.sup.shutdown().await.expect("shutdown");
    assert!(!alive(new_pid));
}

#[tokio::test]
async fn crash_loop_backs_off_and_fails_after_the_intensity() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rig = start(tmp.path()).await;
    rig.sup.handle().ensure(sh("crashy", Restart::Permanent, "exit 1")).await.expect("ensure");
    let failed = rig.wait("crashy", Failed).await;
    assert!(
        failed.message.contains("restart intensity exceeded: more than 3 restarts in 30s"),
        "{}",
        failed.message
    );

    let exits: Vec<&str> =
        rig.seen.iter().filter(|o| o.state == Exited).map(|o| o.message.as_str()).collect();
    assert_eq!(exits.len(), 3, "{exits:#?}");
    for (message, delay) in exits.iter().zip(["20ms", "40ms", "80ms"]) {
        assert!(
            message.contains("exited with exit code 1") && message.ends_with(&format!("in {delay}")),
            "{message}"
        );
    }
    // Each restart waited at least its backoff.
    let starts: Vec<_> = rig.seen.iter().filter(|o| o.state == Starting).map(|o| o.at).collect();
    assert_eq!(starts.len(), 4);
    for (w, min) in starts.windows(2).zip([20, 40, 80]) {
        assert!((w[1] - w[0]).num_milliseconds() >= min, "{:?}", w[1] - w[0]);
    }
    let snap = rig.sup.handle().snapshot().await.expect("snapshot");
    assert_eq!((snap.children[0].state, snap.children[0].restarts), (Failed, 3));
    rig.sup.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn transient_child_exiting_cleanly_is_not_restarted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rig = start(tmp.path()).await;
    let h = rig.sup.handle();
    h.ensure(sh("job", Restart::Transient, "exit 0")).await.expect("ensure");
    h.ensure(sh("flaky", Restart::Transient, "exit 3")).await.expect("ensure");
    h.ensure(sh("once", Restart::Temporary, "exit 3")).await.expect("ensure");
    let done = rig.seen_or_wait("job", Exited).await;
    assert!(done.message.contains("exited normally is not restarted"), "{}", done.message);
    rig.seen_or_wait("flaky", Failed).await;
    let once = rig.seen_or_wait("once", Exited).await;
    assert!(once.message.contains("exit code 3; a temporary child is not restarted"), "{}", once.message);
    // Nothing can be awaited for "never": give the 20 ms backoff ten times over.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(o) = rig.rx.try_recv() {
        rig.seen.push(o);
    }
    assert_eq!(rig.states("job"), vec![Pending, Starting, Running, Exited]);
    assert_eq!(rig.states("once"), vec![Pending, Starting, Running, Exited]);
    let snap = h.snapshot().await.expect("snapshot");
    assert_eq!(snap.get(&cid("job")).expect("job").restarts, 0);
    assert_eq!(snap.get(&cid("flaky")).expect("flaky").restarts, 3);
    rig.sup.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn graceful_stop_sends_sigterm_first() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rig = start(tmp.path()).await;
    let ready = tmp.path().join("ready");
    let marker = tmp.path().join("terminated");
    let mut s = sh(
        "polite",
        Restart::Permanent,
        r#"trap 'echo term > "$MARKER"; exit 0' TERM; echo $$ > "$READY"; while :; do sleep 0.05; done"#,
    );
    s.env.insert("READY".into(), ready.display().to_string());
    s.env.insert("MARKER".into(), marker.display().to_string());
    rig.sup.handle().ensure(s).await.expect("ensure");
    let pid = read_pid(&ready).await;
    assert_eq!(rig.pid("polite").await, pid);

    assert!(rig.sup.handle().remove(&cid("polite")).await.expect("remove"));
    let exited = rig.wait("polite", Exited).await;
    assert!(exited.message.contains("after SIGTERM (removed)"), "{}", exited.message);
    assert!(!exited.message.contains("SIGKILL"), "{}", exited.message);
    assert_eq!(std::fs::read_to_string(&marker).expect("marker").trim(), "term");
    assert!(!alive(pid));
    assert!(rig.sup.handle().snapshot().await.expect("snapshot").children.is_empty());
    rig.sup.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn child_ignoring_sigterm_is_killed_after_the_grace() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rig = start(tmp.path()).await;
    let ready = tmp.path().join("ready");
    let mut s = sh(
        "stubborn",
        Restart::Permanent,
        r#"trap '' TERM; echo $$ > "$READY"; while :; do sleep 0.05; done"#,
    );
    s.env.insert("READY".into(), ready.display().to_string());
    s.stop = StopSpec { grace: Duration::from_millis(300), ..StopSpec::default() };
    rig.sup.handle().ensure(s).await.expect("ensure");
    let pid = read_pid(&ready).await;

    let started = tokio::time::Instant::now();
    rig.sup.handle().remove(&cid("stubborn")).await.expect("remove");
    let exited = rig.wait("stubborn", Exited).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        exited.message.contains("still running 300ms after SIGTERM; killed with SIGKILL"),
        "{}",
        exited.message
    );
    assert!(exited.message.contains("signal 9"), "{}", exited.message);
    assert!(!alive(pid));
    rig.sup.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn stopping_takes_the_whole_process_group() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rig = start(tmp.path()).await;
    let gc = tmp.path().join("grandchild");
    // The grandchild ignores SIGTERM, so the leader exits alone and the group must be killed.
    let mut s = sh("family", Restart::Permanent, r#"(trap '' TERM; exec sleep 300) & echo $! > "$GC"; wait"#);
    s.env.insert("GC".into(), gc.display().to_string());
    s.stop = StopSpec { grace: Duration::from_millis(200), ..StopSpec::default() };
    rig.sup.handle().ensure(s).await.expect("ensure");
    let grandchild = read_pid(&gc).await;
    let leader = rig.pid("family").await;
    assert_eq!(probe_pgrp(grandchild), leader);

    rig.sup.handle().remove(&cid("family")).await.expect("remove");
    let exited = rig.wait("family", Exited).await;
    assert!(exited.message.contains("killed with SIGKILL"), "{}", exited.message);
    assert!(!alive(leader));
    assert!(!alive(grandchild), "grandchild {grandchild} survived its group");
    rig.sup.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_dead_leader_takes_its_stragglers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rig = start(tmp.path()).await;
    let gc = tmp.path().join("grandchild");
    let mut s = sh("leader", Restart::Temporary, r#"sleep 300 & echo $! > "$GC"; sleep 0.1; exit 1"#);
    s.env.insert("GC".into(), gc.display().to_string());
    rig.sup.handle().ensure(s).await.expect("ensure");
    let grandchild = read_pid(&gc).await;
    rig.wait("leader", Exited).await;
    eventually("the grandchild is killed with its leader's group", || !alive(grandchild)).await;
    rig.sup.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn ensure_is_level_triggered() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rig = start(tmp.path()).await;
    let h = rig.sup.handle();
    let s = spec("a", Restart::Permanent, &["sleep", "300"]);
    assert_eq!(h.ensure(s.clone()).await.expect("ensure"), EnsureOutcome::Created);
    rig.wait("a", Running).await;
    let pid = rig.pid("a").await;
    assert_eq!(h.ensure(s.clone()).await.expect("ensure"), EnsureOutcome::Unchanged);
    assert_eq!(rig.pid("a").await, pid);
    let mut changed = s.clone();
    changed.command = vec!["sleep".into(), "301".into()];
    assert_eq!(h.ensure(changed).await.expect("ensure"), EnsureOutcome::Updated);
    rig.wait("a", Exited).await;
    let running = rig.wait("a", Running).await;
    assert_ne!(running.pid, Some(pid));
    assert!(!alive(pid));
    let new_pid = running.pid.expect("pid");
    h.set_desired(vec![]).await.expect("sync");
    rig.wait("a", Exited).await;
    assert!(!alive(new_pid));
    let log = std::fs::read_to_string(tmp.path().join("logs/a.stdout.log")).expect("log");
    assert_eq!(log.matches("enjin-supervisor: starting a").count(), 2, "{log}");
    rig.sup.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn children_are_adopted_after_a_supervisor_crash() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rig = start(tmp.path()).await;
    let args: Vec<String> = (0..3).map(|_| unique_sleep()).collect();
    let specs: Vec<_> = ["a", "b", "c"]
        .iter()
        .zip(&args)
        .map(|(id, arg)| spec(id, Restart::Permanent, &["sleep", arg]))
        .collect();
    rig.sup.handle().set_desired(specs.clone()).await.expect("sync");
    for id in ["a", "b", "c"] {
        rig.seen_or_wait(id, Running).await;
    }
    let before = rig.sup.handle().snapshot().await.expect("snapshot");
    let pid =
        |snap: &enjin_supervisor::Snapshot, id: &str| snap.get(&cid(id)).and_then(|c| c.pid).expect("pid");

    // The agent crashes: nothing is stopped. While no one watches, c dies.
    rig.sup.abort().await;
    kill(pid(&before, "c"));
    eventually("c is dead", || !alive(pid(&before, "c"))).await;

    let mut rig = start(tmp.path()).await;
    rig.wait("c", Running).await;
    let after = rig.sup.handle().snapshot().await.expect("snapshot");
    for (id, arg) in ["a", "b"].iter().zip(&args) {
        assert_eq!(pid(&after, id), pid(&before, id), "{id} adopted with its pid");
        assert!(after.get(&cid(id)).expect("child").adopted);
        assert_eq!(count_processes(&["sleep", arg]), 1, "{id} runs exactly once");
    }
    assert_ne!(pid(&after, "c"), pid(&before, "c"), "c was gone and started again");
    eventually("c runs exactly once", || count_processes(&["sleep", &args[2]]) == 1).await;
    let adopted: Vec<_> = rig.seen.iter().filter(|o| o.message.starts_with("adopted pid")).collect();
    assert_eq!(adopted.len(), 2, "{adopted:#?}");

    // The desired set, sent again by the parent, changes nothing.
    let summary = rig.sup.handle().set_desired(specs).await.expect("sync");
    assert_eq!(summary.unchanged, 3);
    assert_eq!(rig.sup.handle().snapshot().await.expect("snapshot"), after);

    // An adopted child that dies is noticed by polling and restarted by its policy.
    let a = pid(&after, "a");
    kill(a);
    let exited = rig.wait("a", Exited).await;
    assert!(exited.message.contains(&format!("adopted pid {a} is gone")), "{}", exited.message);
    let running = rig.wait("a", Running).await;
    assert_ne!(running.pid, Some(a));
    // "running" is reported once the process exists; its exec may still be under way.
    eventually("a runs exactly once again", || count_processes(&["sleep", &args[0]]) == 1).await;

    let pids: Vec<u32> = ["a", "b", "c"].iter().map(|id| pid(&after, id)).collect();
    let b = pids[1];
    rig.sup.shutdown().await.expect("shutdown");
    assert!(!alive(b), "an adopted child is stopped on shutdown too");
    for arg in &args {
        assert_eq!(count_processes(&["sleep", arg]), 0);
    }
}

#[tokio::test]
async fn a_missing_program_is_a_crash_loop() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rig = start(tmp.path()).await;
    rig.sup
        .handle()
        .ensure(spec("ghost", Restart::Permanent, &["/nonexistent/enjin-test"]))
        .await
        .expect("ensure");
    let failed = rig.wait("ghost", Failed).await;
    assert!(
        failed.message.contains("failed to start \"/nonexistent/enjin-test\" for child ghost"),
        "{}",
        failed.message
    );
    rig.sup.shutdown().await.expect("shutdown");
}

fn probe_pgrp(pid: u32) -> u32 {
    u32::try_from(enjin_supervisor::probe::read_stat(pid).expect("stat").pgrp).expect("a group id")
}
