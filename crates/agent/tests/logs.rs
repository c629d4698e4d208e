//! The log collector against a real child process writing its stdout and stderr straight to
//! files, as the launchers set it up: lines arrive in order with one sequence, a long line is
//! cut, and a collector restarted while the child keeps writing neither loses nor repeats.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use enjin_agent::logs::{CollectorConfig, CollectorHandle, MAX_LINE, raw_path, read_logs};
use enjin_model::api::{LogLine, LogsRequest};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

fn lines(dir: &Path, id: Uuid) -> Vec<LogLine> {
    read_logs(dir, &LogsRequest { instances: vec![id], limit: Some(10_000), ..LogsRequest::default() }).lines
}

/// Wait until `id` has at least `n` collected lines; returns them.
fn wait_for_lines(dir: &Path, id: Uuid, n: usize) -> Vec<LogLine> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = lines(dir, id);
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "only {} of {n} lines collected: {:?}", got.len(), got.last());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `sh -c script` with stdout and stderr appended to `id`'s raw files.
fn child(dir: &Path, id: Uuid, script: &str) -> std::process::Child {
    let open = |stream: &str| {
        OpenOptions::new().create(true).append(true).open(raw_path(dir, id, stream)).expect("open a raw file")
    };
    Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(open("stdout"))
        .stderr(open("stderr"))
        .spawn()
        .expect("spawn sh")
}

fn config(dir: &Path) -> CollectorConfig {
    CollectorConfig { poll_every: Duration::from_millis(20), ..CollectorConfig::new(dir) }
}

#[test]
fn a_child_s_output_is_collected_in_order_across_a_collector_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = Uuid::new_v4();
    // The child waits for a go file between its two halves, so the collector can be restarted
    // in between while the child lives on.
    let go = dir.path().join("go");
    let script = format!(
        "i=0; while [ $i -lt 200 ]; do echo \"out $i\"; echo \"err $i\" >&2; i=$((i+1)); done; \
         head -c {} /dev/zero | tr '\\0' x; echo; \
         while [ ! -e {go} ]; do sleep 0.02; done; \
         i=200; while [ $i -lt 300 ]; do echo \"out $i\"; i=$((i+1)); done",
        MAX_LINE + 10,
        go = go.display()
    );
    let collector = CollectorHandle::spawn(config(dir.path())).expect("collector");
    collector.set_desired(vec![id]);
    let mut sh = child(dir.path(), id, &script);

    let first = wait_for_lines(dir.path(), id, 402);
    assert_eq!(first.len(), 402, "200 + 200 lines and a long line cut in two");
    assert!(first.iter().enumerate().all(|(i, l)| l.seq == i as u64), "one sequence from 0");
    let outs: Vec<&str> = first.iter().filter(|l| l.stream == "stdout").map(|l| l.line.as_str()).collect();
    let errs: Vec<&str> = first.iter().filter(|l| l.stream == "stderr").map(|l| l.line.as_str()).collect();
    assert_eq!(outs[..200], (0..200).map(|i| format!("out {i}")).collect::<Vec<_>>());
    assert_eq!(errs, (0..200).map(|i| format!("err {i}")).collect::<Vec<_>>());
    assert_eq!(outs[200].len(), MAX_LINE);
    assert_eq!(outs[201].len(), 10);

    // Stop the collector, let the child write on, and start a new collector on the same
    // directory: it continues where the last one stopped.
    collector.stop();
    std::fs::write(&go, b"").expect("go");
    let status = sh.wait().expect("wait");
    assert!(status.success(), "{status}");
    let collector = CollectorHandle::spawn(config(dir.path())).expect("collector again");
    let all = wait_for_lines(dir.path(), id, 502);
    collector.stop();
    assert_eq!(all.len(), 502, "nothing repeated");
    assert!(all.iter().enumerate().all(|(i, l)| l.seq == i as u64), "the sequence goes on");
    let tail: Vec<&str> = all[402..].iter().map(|l| l.line.as_str()).collect();
    assert_eq!(tail, (200..300).map(|i| format!("out {i}")).collect::<Vec<_>>());
}
