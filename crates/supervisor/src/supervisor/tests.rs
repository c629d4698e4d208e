//! The supervisor against a fake launcher on tokio's paused clock: exact timings, no processes.

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;
use crate::child::{ExitWaiter, Signal};
use crate::policy::{Backoff, Intensity, Restart, RestartPolicy};

/// What a fake process does once launched.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Runs until signalled (or crashed by the test).
    Run,
    /// Exits with this status after running this long.
    ExitAfter(Duration, Exit),
}

#[derive(Debug)]
struct FakeProc {
    exit: Option<oneshot::Sender<Exit>>,
    alive: bool,
}

#[derive(Debug, Default)]
struct FakeState {
    next_pid: u32,
    /// Per child, what each successive launch does; the last entry repeats.
    script: HashMap<String, Vec<Behaviour>>,
    launches: Vec<(String, u32, Instant)>,
    signals: Vec<(u32, Signal)>,
    procs: HashMap<u32, FakeProc>,
    /// Per child, a process the fake's "cgroup" holds that no record names.
    unrecorded: HashMap<String, u32>,
    /// Launches made while another process of the same child was alive.
    doubled: Vec<String>,
}

#[derive(Debug, Default)]
struct Fake(Mutex<FakeState>);

impl Fake {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn script(&self, id: &str, behaviours: Vec<Behaviour>) {
        self.state().script.insert(id.to_owned(), behaviours);
    }

    fn launches(&self, id: &str) -> Vec<(u32, Instant)> {
        self.state().launches.iter().filter(|(i, ..)| i == id).map(|(_, p, t)| (*p, *t)).collect()
    }

    /// The process dies by itself (as a crash would).
    fn crash(&self, pid: u32, exit: Exit) {
        let mut s = self.state();
        if let Some(p) = s.procs.get_mut(&pid) {
            p.alive = false;
            if let Some(tx) = p.exit.take() {
                let _ = tx.send(exit);
            }
        }
    }
}

impl Launcher for Arc<Fake> {
    fn launch(&self, spec: &ChildSpec) -> Result<Launched, LaunchError> {
        let mut s = self.state();
        s.next_pid += 1;
        let pid = 1000 + s.next_pid;
        let id = spec.id.as_str().to_owned();
        let n = s.launches.iter().filter(|(i, ..)| *i == id).count();
        let behaviour =
            s.script.get(&id).and_then(|b| b.get(n).or(b.last()).copied()).unwrap_or(Behaviour::Run);
        let running = s.launches.iter().any(|(i, p, _)| *i == id && s.procs.get(p).is_some_and(|p| p.alive));
        if running {
            s.doubled.push(id.clone());
        }
        s.launches.push((id, pid, Instant::now()));
        let (tx, rx) = oneshot::channel();
        s.procs.insert(pid, FakeProc { exit: Some(tx), alive: true });
        let fake = self.clone();
        let waiter = ExitWaiter::new(async move {
            match behaviour {
                Behaviour::Run => Ok(rx.await.unwrap_or(Exit::Unknown)),
                Behaviour::ExitAfter(d, exit) => {
                    tokio::time::sleep(d).await;
                    fake.crash(pid, exit);
                    Ok(exit)
                }
            }
        });
        Ok(Launched { process: ProcessHandle { pid, pgid: pid, start_time: 1 }, waiter })
    }

    fn signal(&self, process: &ProcessHandle, signal: Signal) -> Result<(), crate::child::SignalError> {
        self.state().signals.push((process.pid, signal));
        self.crash(process.pid, Exit::Signal(signal.number()));
        Ok(())
    }

    fn is_alive(&self, process: &ProcessHandle) -> bool {
        self.state().procs.get(&process.pid).is_some_and(|p| p.alive)
    }

    fn group_alive(&self, process: &ProcessHandle) -> bool {
        self.is_alive(process)
    }

    fn find(&self, spec: &ChildSpec) -> Option<ProcessHandle> {
        let s = self.state();
        let pid = *s.unrecorded.get(spec.id.as_str())?;
        s.procs.get(&pid).is_some_and(|p| p.alive).then_some(ProcessHandle { pid, pgid: pid, start_time: 1 })
    }
}

fn spec(id: &str, restart: Restart) -> ChildSpec {
    let mut spec = ChildSpec::new(ChildId::new(id).expect("id"), vec!["fake".into()]);
    spec.restart = RestartPolicy {
        restart,
        intensity: Intensity { max_restarts: 3, period: Duration::from_secs(10) },
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.0,
            reset_after: Duration::from_secs(10),
        },
    };
    spec
}

struct Rig {
    fake: Arc<Fake>,
    sup: Supervisor,
    rx: mpsc::Receiver<Observation>,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn new() -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = Arc::new(Fake::default());
        let (sup, rx) = start(dir.path(), &fake).await;
        Rig { fake, sup, rx, _dir: dir }
    }

    /// Observations until one for `id` in `state`, which is returned last.
    async fn until(&mut self, id: &str, state: ObservationState) -> Vec<Observation> {
        let mut seen = Vec::new();
        loop {
            let o = tokio::time::timeout(Duration::from_secs(600), self.rx.recv())
                .await
                .expect("observation in time")
                .expect("channel open");
            let done = o.child.as_str() == id && o.state == state;
            seen.push(o);
            if done {
                return seen;
            }
        }
    }
}

async fn start(dir: &Path, fake: &Arc<Fake>) -> (Supervisor, mpsc::Receiver<Observation>) {
    let (tx, rx) = mpsc::channel(1024);
    let config =
        SupervisorConfig { adopted_poll_interval: Duration::from_millis(50), ..SupervisorConfig::new(dir) };
    let sup = Supervisor::start(config, Arc::new(fake.clone()), tx).await.expect("start");
    (sup, rx)
}

fn states(obs: &[Observation]) -> Vec<ObservationState> {
    obs.iter().map(|o| o.state).collect()
}

#[tokio::test(start_paused = true)]
async fn crash_loop_backs_off_exactly_then_fails() {
    let mut rig = Rig::new().await;
    rig.fake.script("loop", vec![Behaviour::ExitAfter(Duration::ZERO, Exit::Code(1))]);
    rig.sup.handle().ensure(spec("loop", Restart::Permanent)).await.expect("ensure");
    let seen = rig.until("loop", ObservationState::Failed).await;
    use ObservationState::*;
    let mut expected = vec![Pending];
    for _ in 0..4 {
        expected.extend([Starting, Running, Exited]);
    }
    expected.pop();
    expected.push(Failed);
    assert_eq!(states(&seen), expected);
    let times: Vec<Instant> = rig.fake.launches("loop").into_iter().map(|(_, t)| t).collect();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let ms = Duration::from_millis;
    assert_eq!(gaps, vec![ms(100), ms(200), ms(400)]);
    assert!(seen.last().expect("failed").message.contains("restart intensity exceeded"));
    let snap = rig.sup.handle().snapshot().await.expect("snapshot");
    assert_eq!(snap.children[0].restarts, 3);
    assert_eq!(snap.children[0].state, Failed);
    // A failed child stays failed for the same spec; a new spec revives it.
    let again = rig.sup.handle().ensure(spec("loop", Restart::Permanent)).await.expect("ensure");
    assert_eq!(again, EnsureOutcome::Unchanged);
    let mut changed = spec("loop", Restart::Permanent);
    changed.command.push("--fixed".into());
    assert_eq!(rig.sup.handle().ensure(changed).await.expect("ensure"), EnsureOutcome::Updated);
    rig.until("loop", Starting).await;
    rig.sup.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn stable_run_resets_backoff() {
    let mut rig = Rig::new().await;
    let crash = |secs| Behaviour::ExitAfter(Duration::from_secs(secs), Exit::Signal(11));
    rig.fake.script("web", vec![crash(0), crash(0), crash(20), crash(0), Behaviour::Run]);
    let mut s = spec("web", Restart::Permanent);
    s.restart.intensity.max_restarts = 10;
    rig.sup.handle().ensure(s).await.expect("ensure");
    // Five launches: the fifth runs.
    loop {
        rig.until("web", ObservationState::Running).await;
        if rig.fake.launches("web").len() == 5 {
            break;
        }
    }
    let launches = rig.fake.launches("web");
    let gaps: Vec<Duration> = launches.windows(2).map(|w| w[1].1 - w[0].1).collect();
    let ms = Duration::from_millis;
    // 100, 200, then 20 s of running and a fresh 100 (not 400), then 200.
    assert_eq!(gaps, vec![ms(100), ms(200), Duration::from_secs(20) + ms(100), ms(200)]);
    rig.sup.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn transient_and_temporary_children_finish() {
    let mut rig = Rig::new().await;
    rig.fake.script("job", vec![Behaviour::ExitAfter(Duration::from_millis(5), Exit::Code(0))]);
    rig.fake.script("once", vec![Behaviour::ExitAfter(Duration::from_millis(5), Exit::Code(3))]);
    rig.fake
        .script("retry", vec![Behaviour::ExitAfter(Duration::from_millis(5), Exit::Code(3)), Behaviour::Run]);
    let h = rig.sup.handle();
    h.ensure(spec("job", Restart::Transient)).await.expect("ensure");
    h.ensure(spec("once", Restart::Temporary)).await.expect("ensure");
    h.ensure(spec("retry", Restart::Transient)).await.expect("ensure");
    rig.until("job", ObservationState::Exited).await;
    // Paused clock: this only advances virtual time, far past any backoff, so a restart that
    // should not happen would have happened by now.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(rig.fake.launches("job").len(), 1);
    assert_eq!(rig.fake.launches("once").len(), 1);
    assert_eq!(rig.fake.launches("retry").len(), 2);
    let snap = h.snapshot().await.expect("snapshot");
    let state = |id: &str| snap.get(&ChildId::new(id).expect("id")).expect("child").state;
    assert_eq!(state("job"), ObservationState::Exited);
    assert_eq!(state("once"), ObservationState::Exited);
    assert_eq!(state("retry"), ObservationState::Running);
    rig.sup.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn ensure_is_level_triggered() {
    let mut rig = Rig::new().await;
    let h = rig.sup.handle();
    assert_eq!(h.ensure(spec("a", Restart::Permanent)).await.expect("ensure"), EnsureOutcome::Created);
    rig.until("a", ObservationState::Running).await;
    assert_eq!(h.ensure(spec("a", Restart::Permanent)).await.expect("ensure"), EnsureOutcome::Unchanged);
    let mut changed = spec("a", Restart::Permanent);
    changed.env.insert("V".into(), "2".into());
    assert_eq!(h.ensure(changed.clone()).await.expect("ensure"), EnsureOutcome::Updated);
    let seen = rig.until("a", ObservationState::Running).await;
    assert_eq!(
        states(&seen),
        vec![ObservationState::Exited, ObservationState::Starting, ObservationState::Running]
    );
    assert!(seen[0].message.contains("spec changed"), "{}", seen[0].message);
    let launches = rig.fake.launches("a");
    assert_eq!(launches.len(), 2);
    assert_eq!(rig.fake.state().signals, vec![(launches[0].0, Signal::Term)]);

    let summary = h.set_desired(vec![changed, spec("b", Restart::Permanent)]).await.expect("sync");
    assert_eq!(summary, SyncSummary { created: 1, updated: 0, unchanged: 1, removed: 0 });
    rig.until("b", ObservationState::Running).await;
    let summary = h.set_desired(vec![spec("b", Restart::Permanent)]).await.expect("sync");
    assert_eq!(summary.removed, 1);
    let seen = rig.until("a", ObservationState::Exited).await;
    assert!(seen.last().expect("exit").message.contains("removed"));
    let snap = h.snapshot().await.expect("snapshot");
    assert_eq!(snap.children.len(), 1);
    assert_eq!(snap.children[0].id.as_str(), "b");
    assert_eq!(rig.fake.launches("a").len(), 2, "no restart after removal");

    let dup = h.set_desired(vec![spec("b", Restart::Permanent), spec("b", Restart::Permanent)]).await;
    assert!(matches!(dup, Err(EnsureError::Duplicate { .. })));
    let invalid = h.ensure(ChildSpec::new(ChildId::new("c").expect("id"), vec![])).await;
    assert!(matches!(invalid, Err(EnsureError::Invalid(_))));
    rig.sup.shutdown().await.expect("shutdown");
    assert!(h.snapshot().await.is_err(), "handle reports the supervisor gone");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(rig._dir.path().join(STATE_FILE)).expect("state file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the state file holds environments");
}

#[tokio::test(start_paused = true)]
async fn adopts_after_a_crash_and_restarts_what_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = Arc::new(Fake::default());
    let (sup, mut rx) = start(dir.path(), &fake).await;
    for id in ["a", "b", "c"] {
        sup.handle().ensure(spec(id, Restart::Permanent)).await.expect("ensure");
    }
    let mut running = 0;
    while running < 3 {
        if rx.recv().await.expect("observation").state == ObservationState::Running {
            running += 1;
        }
    }
    let before = sup.handle().snapshot().await.expect("snapshot");
    sup.abort().await;
    // While nobody supervises, c dies.
    let pid_c = before.get(&ChildId::new("c").expect("id")).and_then(|c| c.pid).expect("pid");
    fake.crash(pid_c, Exit::Signal(9));

    let (sup, rx) = start(dir.path(), &fake).await;
    let mut rig = Rig { fake: fake.clone(), sup, rx, _dir: dir };
    rig.until("c", ObservationState::Running).await;
    let after = rig.sup.handle().snapshot().await.expect("snapshot");
    for id in ["a", "b"] {
        let id = ChildId::new(id).expect("id");
        let (old, new) = (before.get(&id).expect("before"), after.get(&id).expect("after"));
        assert_eq!(old.pid, new.pid, "{id} adopted, same pid");
        assert!(new.adopted);
        assert_eq!(new.state, ObservationState::Running);
    }
    assert_eq!(fake.launches("a").len(), 1);
    assert_eq!(fake.launches("b").len(), 1);
    assert_eq!(fake.launches("c").len(), 2, "c was gone and started again");
    assert!(!after.get(&ChildId::new("c").expect("id")).expect("c").adopted);

    // Kill an adopted child: the poller sees it gone and the policy restarts it.
    let pid_a = after.get(&ChildId::new("a").expect("id")).and_then(|c| c.pid).expect("pid");
    fake.crash(pid_a, Exit::Signal(9));
    let seen = rig.until("a", ObservationState::Running).await;
    let exited = seen.iter().find(|o| o.state == ObservationState::Exited).expect("exited");
    assert!(exited.message.contains(&format!("adopted pid {pid_a} is gone")), "{}", exited.message);
    assert_eq!(fake.launches("a").len(), 2);
    rig.sup.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_child_running_without_a_record_is_adopted_then_replaced_never_doubled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = Arc::new(Fake::default());
    // A supervisor was killed between starting "a" and recording it: the process runs, no record
    // names it, and only the launcher (its cgroup) can find it.
    let orphan = fake.launch(&spec("a", Restart::Permanent)).expect("launch").process.pid;
    fake.state().unrecorded.insert("a".into(), orphan);
    let (sup, rx) = start(dir.path(), &fake).await;
    let mut rig = Rig { fake: fake.clone(), sup, rx, _dir: dir };
    rig.sup.handle().ensure(spec("a", Restart::Permanent)).await.expect("ensure");
    let seen = rig.until("a", ObservationState::Running).await;
    assert!(seen.iter().any(|o| o.message.contains(&format!("adopted pid {orphan}"))), "{seen:?}");
    // Its spec is unknown, so it is replaced: stopped first, then started from the wanted spec.
    let seen = rig.until("a", ObservationState::Running).await;
    assert!(seen.iter().any(|o| o.state == ObservationState::Exited), "{seen:?}");
    let launches = fake.launches("a");
    assert_eq!(launches.len(), 2, "the orphan and its one replacement: {launches:?}");
    assert!(fake.state().signals.iter().any(|(pid, _)| *pid == orphan), "the orphan was stopped");
    assert!(!fake.is_alive(&ProcessHandle { pid: orphan, pgid: orphan, start_time: 1 }));
    assert!(fake.state().doubled.is_empty(), "never two processes of one child");
    let snap = rig.sup.handle().snapshot().await.expect("snapshot");
    assert_eq!(snap.children[0].pid, Some(launches[1].0));

    // A child with nothing left behind is simply started.
    rig.sup.handle().ensure(spec("b", Restart::Permanent)).await.expect("ensure");
    rig.until("b", ObservationState::Running).await;
    assert_eq!(fake.launches("b").len(), 1);
    assert!(fake.state().doubled.is_empty());
    rig.sup.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn restored_children_can_wait_to_be_named_again_before_they_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = Arc::new(Fake::default());
    let (sup, mut rx) = start(dir.path(), &fake).await;
    sup.handle().ensure(spec("a", Restart::Permanent)).await.expect("ensure");
    while rx.recv().await.expect("observation").state != ObservationState::Running {}
    let pid = sup.handle().snapshot().await.expect("snapshot").children[0].pid.expect("pid");
    sup.abort().await;
    // While nobody supervises, a dies (the machine rebooted, say).
    fake.crash(pid, Exit::Signal(9));

    let (tx, rx) = mpsc::channel(1024);
    let config = SupervisorConfig { launch_restored: false, ..SupervisorConfig::new(dir.path()) };
    let sup = Supervisor::start(config, Arc::new(fake.clone()), tx).await.expect("start");
    let mut rig = Rig { fake: fake.clone(), sup, rx, _dir: dir };
    // Virtual time (the clock is paused): far past any restart backoff, so a launch of the
    // restored child would have happened by now if the supervisor were going to make one.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(fake.launches("a").len(), 1, "not started before it is named again");
    rig.sup.handle().set_desired(vec![spec("a", Restart::Permanent)]).await.expect("set");
    rig.until("a", ObservationState::Running).await;
    assert_eq!(fake.launches("a").len(), 2);
    rig.sup.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn shutdown_is_remembered_and_finished_children_stay_finished() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = Arc::new(Fake::default());
    fake.script("done", vec![Behaviour::ExitAfter(Duration::ZERO, Exit::Code(0))]);
    let (sup, mut rx) = start(dir.path(), &fake).await;
    sup.handle().ensure(spec("web", Restart::Permanent)).await.expect("ensure");
    sup.handle().ensure(spec("done", Restart::Temporary)).await.expect("ensure");
    let mut waiting = 2;
    while waiting > 0 {
        let o = rx.recv().await.expect("observation");
        if (o.child.as_str(), o.state) == ("web", ObservationState::Running)
            || (o.child.as_str(), o.state) == ("done", ObservationState::Exited)
        {
            waiting -= 1;
        }
    }
    sup.shutdown().await.expect("shutdown");
    assert_eq!(fake.state().signals.len(), 1, "web stopped once");

    let (sup, mut rx) = start(dir.path(), &fake).await;
    let mut web_running = false;
    while !web_running {
        let o = rx.recv().await.expect("observation");
        web_running = (o.child.as_str(), o.state) == ("web", ObservationState::Running);
    }
    assert_eq!(fake.launches("web").len(), 2, "a stopped child starts again");
    assert_eq!(fake.launches("done").len(), 1, "a finished temporary child does not");
    let snap = sup.handle().snapshot().await.expect("snapshot");
    assert_eq!(snap.get(&ChildId::new("done").expect("id")).expect("done").state, ObservationState::Exited);
    sup.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn one_supervisor_per_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = Arc::new(Fake::default());
    let (sup, _rx) = start(dir.path(), &fake).await;
    let (tx, _rx2) = mpsc::channel(8);
    let second =
        Supervisor::start(SupervisorConfig::new(dir.path()), Arc::new(fake.clone()), tx.clone()).await;
    assert!(matches!(second, Err(StartError::Locked { .. })), "{second:?}");
    sup.abort().await;
    let third = Supervisor::start(SupervisorConfig::new(dir.path()), Arc::new(fake.clone()), tx).await;
    third.expect("the lock goes with the crashed owner").shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn unreadable_state_is_moved_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(STATE_FILE), b"{not json").expect("write");
    let fake = Arc::new(Fake::default());
    let (sup, _rx) = start(dir.path(), &fake).await;
    assert!(sup.handle().snapshot().await.expect("snapshot").children.is_empty());
    let aside = std::fs::read_dir(dir.path())
        .expect("read dir")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains("unreadable"));
    assert!(aside);
    sup.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_full_observation_channel_never_stalls_supervision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = Arc::new(Fake::default());
    let (tx, _rx) = mpsc::channel(1);
    let sup = Supervisor::start(SupervisorConfig::new(dir.path()), Arc::new(fake.clone()), tx)
        .await
        .expect("start");
    for id in ["a", "b", "c"] {
        sup.handle().ensure(spec(id, Restart::Permanent)).await.expect("ensure");
    }
    let snap = loop {
        let snap = sup.handle().snapshot().await.expect("snapshot");
        if snap.children.iter().all(|c| c.state == ObservationState::Running) {
            break snap;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(snap.observations_dropped > 0);
    sup.shutdown().await.expect("shutdown");
}

#[test]
fn observations_become_valid_node_observations() {
    let o = Observation {
        child: ChildId::new("web").expect("id"),
        state: ObservationState::Unhealthy,
        strategy: ObservationStrategy::Http,
        pid: Some(7),
        at: Utc::now(),
        message: format!("bad\u{1b}[0m {}", "é".repeat(3000)),
    };
    let node = uuid::Uuid::new_v4();
    let spec = o.to_node_observation(node);
    assert_eq!((spec.node, spec.state, spec.strategy), (node, o.state, o.strategy));
    assert!(spec.message.len() <= 4096);
    assert!(spec.message.starts_with("bad [0m"));
    use enjin_model::Spec;
    spec.validate(enjin_model::Ring::PLATFORM).expect("valid observation");
}
