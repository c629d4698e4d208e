//! Privileged sandbox tests: real uids, namespaces, mounts and cgroups. Skipped with a message
//! when not root; as root they always run. Every mount happens in a sandbox's own mount
//! namespace; the host is only read.

mod common;

use std::ffi::OsString;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{GroupGuard, SandboxGuard, base_dir, cgroups, root_or_skip, unique, wait_for};
use enjin_sys::sandbox::{self, PidNamespace, Resource, Rlimit, SandboxSpec, SpawnError, Stdio};
use enjin_sys::{Errno, Pid, Signal};

const SH: &str = "/bin/sh";

/// A locked-down `sh -c script` as `uid` in `workdir`, stdout and stderr piped together.
fn sh_spec(uid: u32, workdir: &Path, script: &str) -> SandboxSpec {
    let mut spec = SandboxSpec::new(SH, uid, uid, workdir);
    spec.args = vec![OsString::from("-c"), OsString::from(format!("exec 2>&1\n{script}"))];
    spec.env = vec![
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("HOME".into(), workdir.into()),
        ("W".into(), workdir.into()),
    ];
    spec.rlimits = vec![
        Rlimit::fixed(Resource::RLIMIT_CORE, 0),
        Rlimit::fixed(Resource::RLIMIT_NOFILE, 256),
        Rlimit::fixed(Resource::RLIMIT_NPROC, 100),
    ];
    spec.stdout = Stdio::Piped;
    spec
}

/// Runs a sandbox to completion (bounded) and returns its exit status and output.
fn run(spec: SandboxSpec, timeout: Duration) -> (std::process::ExitStatus, String) {
    let mut sb = SandboxGuard(sandbox::spawn(spec).expect("spawn"));
    let mut stdout = sb.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let status = sb.wait_timeout(timeout).expect("wait").unwrap_or_else(|| {
        let _ = sb.kill();
        panic!("sandbox {} still running after {timeout:?}", sb.pid())
    });
    let out = reader.join().expect("reader thread");
    (status, out)
}

/// The value printed as `key=value` on its own line.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    out.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {key}= in output:\n{out}"))
}

/// The host pid of the program running under a sandbox's init.
fn program_pid(sb: &sandbox::Sandbox) -> Pid {
    let children = format!("/proc/{0}/task/{0}/children", sb.pid());
    wait_for(Duration::from_secs(5), || {
        let s = std::fs::read_to_string(&children).ok()?;
        s.split_whitespace().next()?.parse().ok().map(Pid::from_raw)
    })
    .expect("the init has a child")
}

#[test]
fn two_sandboxes_are_isolated_from_each_other_and_the_host() {
    if !root_or_skip("two_sandboxes_are_isolated_from_each_other_and_the_host") {
        return;
    }
    let base = base_dir();
    let wa = base.path().join("a");
    let wb = base.path().join("b");
    let tmp_marker = unique("enjin-sys-tmp");

    // B: writes a secret and a /tmp marker, then waits to be looked at.
    let mut spec_b = sh_spec(
        64002,
        &wb,
        &format!("echo secret > $W/secret && touch /tmp/{tmp_marker}-b && echo ready && exec sleep 60"),
    );
    spec_b.stdout = Stdio::Piped;
    let mut b = SandboxGuard(sandbox::spawn(spec_b).expect("spawn b"));
    let mut b_out = b.stdout.take().expect("b stdout");
    let mut ready = [0u8; 6];
    b_out.read_exact(&mut ready).expect("b says ready");
    assert_eq!(&ready, b"ready\n");
    let b_init = b.pid();
    let b_prog = program_pid(&b);
    assert!(!Path::new(&format!("/tmp/{tmp_marker}-b")).exists(), "b's /tmp leaked to the host");

    // A setuid-root copy of id in A's workdir.
    std::fs::create_dir_all(&wa).expect("mkdir a");
    let suid_id = wa.join("id");
    std::fs::copy("/usr/bin/id", &suid_id).expect("copy id");
    std::os::unix::fs::chown(&suid_id, Some(0), Some(0)).expect("chown id");
    std::fs::set_permissions(&suid_id, std::fs::Permissions::from_mode(0o4755)).expect("chmod 4755");

    let script = format!(
        r#"
cat {wb}/secret; echo "read_b=$?"
echo x > /etc/enjin-x; echo "write_etc=$?"
echo x > /var/tmp/enjin-x; echo "write_var_tmp=$?"
echo x > /usr/enjin-x; echo "write_usr=$?"
echo x > $W/ok; echo "write_workdir=$?"
echo x > /tmp/{tmp_marker}-a; echo "write_tmp=$?"
test -e /tmp/{tmp_marker}-b; echo "see_b_tmp=$?"
echo x > /dev/null; echo "dev_null=$?"
echo 500 > /proc/self/oom_score_adj; echo "proc_write=$?"
kill -0 {b_init}; echo "kill_b_init=$?"
kill -0 {b_prog}; echo "kill_b_prog=$?"
echo "pid=$$"
echo "init_comm=$(cat /proc/1/comm)"
echo "proc_pids=$(ls /proc | grep -c '^[0-9]')"
echo "suid_id=$($W/id)"
echo "plain_id=$(id)"
echo "status_caps=$(grep CapEff /proc/self/status)"
echo "nnp=$(grep NoNewPrivs /proc/self/status)"
cat /proc/self/limits
"#,
        wb = wb.display()
    );
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let (status, out) = run(sh_spec(64001, &wa, &script), Duration::from_secs(30));
    assert_eq!(
        std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo"),
        host_mounts,
        "the host's mount table changed"
    );
    eprintln!("{out}");
    assert!(status.success(), "{status:?}");

    // B's workdir is 0700 and B's.
    assert_ne!(field(&out, "read_b"), "0");
    assert!(out.contains("Permission denied"), "reading b's secret:\n{out}");
    // The system is read-only; only the workdir and /tmp are writable.
    for key in ["write_etc", "write_var_tmp", "write_usr"] {
        assert_ne!(field(&out, key), "0", "{key}");
    }
    assert!(out.contains("/etc/enjin-x: Read-only file system"), "{out}");
    assert!(out.contains("/usr/enjin-x: Read-only file system"), "{out}");
    assert!(out.contains("/var/tmp/enjin-x: Read-only file system"), "{out}");
    assert!(!Path::new("/etc/enjin-x").exists() && !Path::new("/var/tmp/enjin-x").exists());
    assert_eq!(field(&out, "write_workdir"), "0");
    let ok = std::fs::metadata(wa.join("ok")).expect("the workdir write reached the host");
    assert_eq!((ok.uid(), ok.gid()), (64001, 64001));
    let wa_meta = std::fs::metadata(&wa).expect("stat workdir");
    assert_eq!((wa_meta.uid(), wa_meta.mode() & 0o7777), (64001, 0o700));
    // A private /tmp: A's file is not on the host, B's is not in A's.
    assert_eq!(field(&out, "write_tmp"), "0");
    assert!(!Path::new(&format!("/tmp/{tmp_marker}-a")).exists(), "a's /tmp leaked to the host");
    assert_ne!(field(&out, "see_b_tmp"), "0", "a sees b's /tmp");
    assert_eq!(field(&out, "dev_null"), "0", "/dev/null is usable");
    assert_eq!(field(&out, "proc_write"), "0", "/proc is writable");
    // B's processes do not exist in A's PID namespace.
    assert_ne!(field(&out, "kill_b_init"), "0");
    assert_ne!(field(&out, "kill_b_prog"), "0");
    assert!(out.contains("No such process"), "{out}");
    // A is PID 2 under the tiny init, and sees only its own namespace.
    assert_eq!(field(&out, "pid"), "2");
    assert_eq!(field(&out, "init_comm"), "enjin-init");
    let visible: u32 = field(&out, "proc_pids").parse().expect("count");
    assert!(visible <= 6, "a sees {visible} processes");
    // The setuid-root binary gains nothing.
    let suid = field(&out, "suid_id");
    assert!(suid.starts_with("uid=64001 gid=64001"), "{suid}");
    assert!(!suid.contains("euid=0"), "setuid took effect: {suid}");
    assert_eq!(field(&out, "plain_id"), "uid=64001 gid=64001 groups=64001");
    assert_eq!(field(&out, "status_caps"), "CapEff:\t0000000000000000");
    assert_eq!(field(&out, "nnp"), "NoNewPrivs:\t1");
    // The rlimits.
    let limit = |name: &str| -> Vec<String> {
        out.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in limits:\n{out}"))
            [name.len()..]
            .split_whitespace()
            .take(2)
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(limit("Max open files"), ["256", "256"]);
    assert_eq!(limit("Max core file size"), ["0", "0"]);
    assert_eq!(limit("Max processes"), ["100", "100"]);

    // Without a PID namespace B is visible, but another uid cannot signal it. no_new_privs
    // alone (no mount namespace, so no nosuid) still keeps the setuid bit from working.
    let wa2 = base.path().join("a2");
    std::fs::create_dir_all(&wa2).expect("mkdir a2");
    let suid_id2 = wa2.join("id");
    std::fs::copy("/usr/bin/id", &suid_id2).expect("copy id");
    std::os::unix::fs::chown(&suid_id2, Some(0), Some(0)).expect("chown id");
    std::fs::set_permissions(&suid_id2, std::fs::Permissions::from_mode(0o4755)).expect("chmod 4755");
    let mut spec =
        sh_spec(64001, &wa2, &format!("kill -TERM {b_prog}; echo \"kill_b=$?\"\necho \"suid_id=$($W/id)\""));
    spec.pid_namespace = PidNamespace::Host;
    spec.readonly_root = false;
    spec.private_tmp = false;
    let (status, out) = run(spec, Duration::from_secs(30));
    eprintln!("{out}");
    assert!(status.success(), "{status:?}");
    assert_ne!(field(&out, "kill_b"), "0");
    assert!(out.contains("Operation not permitted"), "{out}");
    let suid = field(&out, "suid_id");
    assert!(suid.starts_with("uid=64001 gid=64001") && !suid.contains("euid=0"), "{suid}");
    assert!(matches!(b.try_wait(), Ok(None)), "b survived a's attempts");
    assert!(
        enjin_sys::proc::is_same_process(b_prog, enjin_sys::proc::start_time(b_prog).expect("b stat"))
            .expect("check")
    );

    b.kill().expect("kill b");
    let status = b.wait_timeout(Duration::from_secs(10)).expect("wait b").expect("b exits");
    assert_eq!(status.signal(), Some(9));
    assert!(!Path::new(&format!("/proc/{b_prog}")).exists(), "b's program died with its init");
}

#[test]
fn program_is_pid1_without_the_init() {
    if !root_or_skip("program_is_pid1_without_the_init") {
        return;
    }
    let base = base_dir();
    let mut spec = sh_spec(
        64003,
        &base.path().join("w"),
        "echo \"pid=$$\"; echo \"procs=$(ls /proc | grep -c '^[0-9]')\"",
    );
    spec.pid_namespace = PidNamespace::ProgramIsInit;
    let (status, out) = run(spec, Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{out}");
    assert_eq!(field(&out, "pid"), "1");
}

#[test]
fn init_is_small_reaps_orphans_and_forwards_signals() {
    if !root_or_skip("init_is_small_reaps_orphans_and_forwards_signals") {
        return;
    }
    let base = base_dir();
    // 64 MiB of the caller's memory, touched before the fork and rewritten after it: an init
    // that kept its copy-on-write view would end up with a private copy of all of it.
    let mut ballast = vec![1u8; 64 << 20];
    // An orphan (the subshell exits at once, its sleep is reparented to the init), then wait
    // for SIGTERM in an interruptible `wait`.
    let script = r#"trap 'echo got-term; exit 7' TERM
(sleep 0.2 &)
echo ready
while :; do sleep 1 & wait $!; done"#;
    let mut sb = SandboxGuard(sandbox::spawn(sh_spec(64004, &base.path().join("w"), script)).expect("spawn"));
    assert!(sb.has_init());
    let mut stdout = sb.stdout.take().expect("stdout");
    let mut ready = [0u8; 6];
    stdout.read_exact(&mut ready).expect("ready");
    let init = sb.pid();
    assert_eq!(std::fs::read_to_string(format!("/proc/{init}/comm")).expect("comm").trim(), "enjin-init");
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).expect("status");
    assert!(
        status.contains("Uid:\t64004\t64004\t64004\t64004"),
        "the init runs as the sandbox user:\n{status}"
    );
    let fds = std::fs::read_dir(format!("/proc/{init}/fd")).expect("fds").count();
    assert_eq!(fds, 0, "the init holds no fds");

    // The orphaned sleep exits after 0.2 s; the init must reap it: its only child left is
    // the program.
    let program = program_pid(&sb);
    let children = format!("/proc/{0}/task/{0}/children", init);
    let reaped = wait_for(Duration::from_secs(5), || {
        let list = std::fs::read_to_string(&children).ok()?;
        (list.split_whitespace().collect::<Vec<_>>() == [program.to_string()]).then_some(())
    });
    assert!(reaped.is_some(), "zombies under the init: {:?}", std::fs::read_to_string(&children));

    // Its memory: after the trim only a few private pages remain, even once the caller has
    // rewritten every page it had at fork time.
    ballast.iter_mut().for_each(|b| *b = 2);
    std::hint::black_box(&ballast);
    let rollup = |key: &str| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{init}/smaps_rollup")).expect("smaps_rollup");
        s.lines()
            .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in smaps_rollup:\n{s}"))
    };
    let private = wait_for(Duration::from_secs(5), || {
        let p = rollup("Private_Clean:") + rollup("Private_Dirty:");
        (p < 512).then_some(p)
    });
    let own_rss = std::fs::read_to_string("/proc/self/status")
        .expect("own status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    eprintln!(
        "init memory: Rss {} kB, Pss {} kB, private {:?} kB (the caller: VmRSS {own_rss})",
        rollup("Rss:"),
        rollup("Pss:"),
        private
    );
    drop(ballast);
    assert!(
        private.is_some(),
        "the init keeps {} kB private",
        rollup("Private_Clean:") + rollup("Private_Dirty:")
    );

    // SIGTERM to the sandbox reaches the program through the init; the exit code comes back.
    sb.signal(Signal::SIGTERM).expect("sigterm");
    let status = sb.wait_timeout(Duration::from_secs(10)).expect("wait").expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(7), "{status:?}");
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    assert!(rest.contains("got-term"), "{rest:?}");
    // Reaped: signalling again refuses rather than hitting a reused pid.
    assert_eq!(sb.signal(Signal::SIGTERM).expect_err("reaped").source, Errno::ESRCH);
}

#[test]
fn a_signal_death_is_reported_as_128_plus_the_signal() {
    if !root_or_skip("a_signal_death_is_reported_as_128_plus_the_signal") {
        return;
    }
    let base = base_dir();
    let (status, _) = run(sh_spec(64005, &base.path().join("w"), "kill -KILL $$"), Duration::from_secs(20));
    assert_eq!(status.code(), Some(128 + 9), "{status:?}");
}

#[test]
fn the_sandbox_joins_its_cgroup_before_exec_and_kill_all_ends_it() {
    if !root_or_skip("the_sandbox_joins_its_cgroup_before_exec_and_kill_all_ends_it") {
        return;
    }
    let cg = cgroups();
    let group = GroupGuard(cg.create(&unique("sandbox")).expect("create"));
    group.set_pids_limit(Some(10)).expect("pids");
    let base = base_dir();
    let mut spec = sh_spec(64006, &base.path().join("w"), "cat /proc/self/cgroup; echo ready; exec sleep 60");
    spec.join_cgroup(&*group);
    let mut sb = SandboxGuard(sandbox::spawn(spec).expect("spawn"));
    let start = sb.start_time();
    assert!(enjin_sys::proc::is_same_process(sb.pid(), start).expect("check"));
    let mut stdout = sb.stdout.take().expect("stdout");
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"ready\n") {
        stdout.read_exact(&mut byte).expect("read until ready");
        out.push(byte[0]);
    }
    let out = String::from_utf8_lossy(&out);
    let pids = group.pids().expect("pids");
    assert!(pids.contains(&sb.pid()), "the init is in the group: {pids:?}");
    assert!(pids.contains(&program_pid(&sb)), "the program is in the group: {pids:?}");
    assert!(out.contains(group.name()), "/proc/self/cgroup inside:\n{out}");

    group.kill_all(Duration::from_secs(10)).expect("kill_all");
    let status = sb.wait_timeout(Duration::from_secs(10)).expect("wait").expect("exits");
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(!enjin_sys::proc::is_same_process(sb.pid(), start).expect("check"));
    group.delete().expect("delete");
}

#[test]
fn setup_failures_name_the_step() {
    if !root_or_skip("setup_failures_name_the_step") {
        return;
    }
    let base = base_dir();
    let spec = SandboxSpec::new("/nonexistent/program", 64007, 64007, base.path().join("w"));
    match sandbox::spawn(spec) {
        Err(SpawnError::Setup { step, source, .. }) => {
            assert_eq!(step, "execve /nonexistent/program");
            assert_eq!(source, Errno::ENOENT);
        }
        other => panic!("expected a setup error, got {other:?}"),
    }

    // A workdir the sandbox user cannot reach.
    let closed = base.path().join("closed");
    std::fs::create_dir(&closed).expect("mkdir");
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let workdir = closed.join("w");
    let err = sandbox::spawn(SandboxSpec::new(SH, 64007, 64007, &workdir)).expect_err("unreachable workdir");
    let msg = err.to_string();
    assert!(msg.contains(&format!("chdir {}", workdir.display())) && msg.contains("EACCES"), "{msg}");

    let err = sandbox::spawn(SandboxSpec::new(SH, 0, 0, base.path().join("w"))).expect_err("root");
    assert!(matches!(err, SpawnError::InvalidSpec(_)), "{err}");

    let link = base.path().join("link");
    std::os::unix::fs::symlink("/etc", &link).expect("symlink");
    let err = sandbox::spawn(SandboxSpec::new(SH, 64007, 64007, &link)).expect_err("symlink workdir");
    assert!(matches!(err, SpawnError::Workdir { .. }), "{err}");
    assert_eq!(std::fs::metadata("/etc").expect("stat /etc").uid(), 0, "/etc was not chowned");
    let _: PathBuf = link;
}

/// A jail over `base`: a package with one file, a writable layer of `writable`.
fn jail_spec(base: &Path, uid: u32, writable: sandbox::Writable, script: &str) -> SandboxSpec {
    let lower = base.join("pkg");
    std::fs::create_dir_all(&lower).expect("pkg");
    std::fs::write(lower.join("hello.txt"), "from the package\n").expect("pkg file");
    // As the agent leaves an unpacked package: the instance's uid owns nothing in it, and the
    // overlay checks the lower modes, so they let it change its own copy.
    std::fs::set_permissions(lower.join("hello.txt"), std::fs::Permissions::from_mode(0o666)).expect("chmod");
    std::fs::set_permissions(&lower, std::fs::Permissions::from_mode(0o777)).expect("chmod pkg");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("root");
    std::fs::create_dir_all(writable.mountpoint()).expect("mountpoint");
    let mut spec = sh_spec(uid, Path::new("/app"), script);
    spec.jail = Some(sandbox::Jail {
        root,
        app: "/app".into(),
        lower,
        writable,
        shm_bytes: 1 << 20,
        resolv_conf: None,
    });
    spec
}

#[test]
fn a_jail_shows_only_the_system_the_app_and_a_minimal_dev() {
    if !root_or_skip("a_jail_shows_only_the_system_the_app_and_a_minimal_dev") {
        return;
    }
    let base = base_dir();
    let secret = base.path().join("host-secret");
    std::fs::write(&secret, "host").expect("secret");
    let writable = sandbox::Writable::Tmpfs { bytes: 8 << 20, mountpoint: base.path().join("disk") };
    let script = format!(
        r#"
echo "dev=$(ls /dev | tr '\n' ' ')"
echo "top=$(ls / | tr '\n' ' ')"
echo "pkg=$(cat /app/hello.txt)"
echo changed > /app/hello.txt && echo "write_app=ok"
echo "pwd=$(pwd)"
test -e {secret} && echo "host_visible=yes" || echo "host_visible=no"
echo x > /usr/x 2>/dev/null && echo "usr_writable=yes" || echo "usr_writable=no"
echo "seccomp=$(grep '^Seccomp:' /proc/self/status | awk '{{print $2}}')"
echo "capbnd=$(grep '^CapBnd:' /proc/self/status | awk '{{print $2}}')"
echo "capeff=$(grep '^CapEff:' /proc/self/status | awk '{{print $2}}')"
unshare -Ur true 2>/dev/null && echo "userns=yes" || echo "userns=no"
dd if=/dev/zero of=/tmp/fill bs=1M count=20 2>/dev/null; echo "tmp_full=$?"
dd if=/dev/zero of=/dev/shm/fill bs=1M count=4 2>/dev/null; echo "shm_full=$?"
echo "mounts=$(wc -l < /proc/self/mounts)"
"#,
        secret = secret.display()
    );
    let (status, out) = run(jail_spec(base.path(), 64_321, writable, &script), Duration::from_secs(20));
    assert!(status.success(), "{out}");
    let mut dev: Vec<&str> = field(&out, "dev").split_whitespace().collect();
    dev.sort_unstable();
    assert_eq!(
        dev,
        [
            "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
            "urandom", "zero"
        ],
        "{out}"
    );
    for absent in ["home", "root", "sys", "run", "srv", "mnt"] {
        assert!(!field(&out, "top").split_whitespace().any(|d| d == absent), "/{absent} in the jail: {out}");
    }
    assert_eq!(field(&out, "pkg"), "from the package");
    assert_eq!(field(&out, "write_app"), "ok");
    assert_eq!(field(&out, "pwd"), "/app");
    assert_eq!(field(&out, "host_visible"), "no", "{out}");
    assert_eq!(field(&out, "usr_writable"), "no");
    assert_eq!(field(&out, "seccomp"), "2", "filter mode");
    assert_eq!(field(&out, "capbnd"), "0000000000000000");
    assert_eq!(field(&out, "capeff"), "0000000000000000");
    assert_eq!(field(&out, "userns"), "no");
    assert_ne!(field(&out, "tmp_full"), "0", "20 MiB fit in an 8 MiB writable layer: {out}");
    assert_ne!(field(&out, "shm_full"), "0", "4 MiB fit in a 1 MiB /dev/shm: {out}");
    // The package on the host is untouched by the instance's write.
    assert_eq!(
        std::fs::read_to_string(base.path().join("pkg/hello.txt")).expect("pkg"),
        "from the package\n"
    );
}

#[test]
fn a_jail_on_a_loop_device_is_bounded_by_the_image_and_starts_fresh() {
    if !root_or_skip("a_jail_on_a_loop_device_is_bounded_by_the_image_and_starts_fresh") {
        return;
    }
    let base = base_dir();
    let image = base.path().join("disk.img");
    let mut outs = Vec::new();
    for round in 0..2 {
        enjin_sys::disk::format_ext4(&image, 16 << 20).expect("format");
        let device = enjin_sys::disk::LoopDevice::attach(&image).expect("attach");
        let writable = sandbox::Writable::Device {
            device: device.path().to_path_buf(),
            mountpoint: base.path().join("disk"),
        };
        let script = r#"
test -e /app/left-behind && echo "fresh=no" || echo "fresh=yes"
echo x > /app/left-behind
dd if=/dev/zero of=/app/fill bs=1M count=64 2>/tmp/dd.err; echo "rc=$?"
echo "err=$(grep -o 'No space left on device' /tmp/dd.err | head -1)"
"#;
        let (status, out) = run(jail_spec(base.path(), 64_322, writable, script), Duration::from_secs(30));
        drop(device);
        assert!(status.success(), "round {round}: {out}");
        outs.push(out);
    }
    for out in &outs {
        assert_eq!(field(out, "fresh"), "yes", "{out}");
        assert_ne!(field(out, "rc"), "0", "{out}");
        assert_eq!(field(out, "err"), "No space left on device", "{out}");
    }
    let used = std::fs::metadata(&image).expect("image").blocks() * 512;
    assert!(used <= 17 << 20, "the image holds {used} bytes");
}

#[test]
fn a_flood_of_output_takes_no_more_of_the_host_than_the_log_budget() {
    if !root_or_skip("a_flood_of_output_takes_no_more_of_the_host_than_the_log_budget") {
        return;
    }
    let base = base_dir();
    let log = base.path().join("out.log");
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log");
    // 64 MiB of output against a budget of 4 MiB, then a last line once the writes go through.
    let mut spec = sh_spec(
        64_324,
        &base.path().join("w"),
        "dd if=/dev/zero bs=1M count=64 2>/dev/null | tr '\\0' x; echo; echo done",
    );
    spec.stdout = Stdio::Fd(file.into());
    spec.log_budget = Some(4 << 20);
    let mut sb = SandboxGuard(sandbox::spawn(spec).expect("spawn"));
    // The program blocks once the file holds its budget.
    let allocated = || std::fs::metadata(&log).map(|m| m.blocks() * 512).unwrap_or(0);
    wait_for(Duration::from_secs(20), || (allocated() >= 4 << 20).then_some(())).expect("the budget fills");
    std::thread::sleep(Duration::from_millis(500));
    assert!(allocated() <= (4 << 20) + (64 << 10), "{} bytes allocated past a 4 MiB budget", allocated());
    assert!(sb.try_wait().expect("wait").is_none(), "the program waits for room instead of losing output");
    // A reader that frees what it has read (as the collector punches holes) lets it finish.
    let mut consumed = 0u64;
    let reader = std::fs::OpenOptions::new().write(true).open(&log).expect("open the log");
    let status = loop {
        // Frees all but the last 64 KiB written, which the test reads at the end.
        let len = std::fs::metadata(&log).expect("log").len().saturating_sub(64 << 10);
        if len > consumed {
            enjin_sys::fs::punch_hole(&reader, consumed, len - consumed).expect("punch");
            consumed = len;
        }
        if let Some(status) = sb.try_wait().expect("wait") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let len = std::fs::metadata(&log).expect("log").len();
    assert_eq!(len, (64 << 20) + 6, "every byte arrived, in order");
    let mut tail = vec![0u8; 6];
    use std::os::unix::fs::FileExt as _;
    std::fs::File::open(&log).expect("log").read_exact_at(&mut tail, len - 6).expect("tail");
    assert_eq!(&tail, b"\ndone\n");
}

#[test]
fn a_jail_resolves_with_the_instance_s_own_resolv_conf_read_only() {
    if !root_or_skip("a_jail_resolves_with_the_instance_s_own_resolv_conf_read_only") {
        return;
    }
    if !std::fs::symlink_metadata("/etc/resolv.conf").is_ok_and(|m| m.is_file()) {
        // Nothing to mount over: the jail keeps the host's, as documented.
        eprintln!("/etc/resolv.conf is not a regular file here; nothing to check");
        return;
    }
    let base = base_dir();
    let own = base.path().join("resolv.conf");
    std::fs::write(&own, "nameserver 10.250.0.1\n").expect("resolv.conf");
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let writable = sandbox::Writable::Tmpfs { bytes: 8 << 20, mountpoint: base.path().join("disk") };
    let script = r#"
echo "resolv=$(cat /etc/resolv.conf)"
echo x >> /etc/resolv.conf 2>/dev/null && echo "resolv_writable=yes" || echo "resolv_writable=no"
"#;
    let mut spec = jail_spec(base.path(), 64_322, writable, script);
    if let Some(jail) = spec.jail.as_mut() {
        jail.resolv_conf = Some(own.clone());
    }
    let (status, out) = run(spec, Duration::from_secs(20));
    assert!(status.success(), "{out}");
    assert_eq!(field(&out, "resolv"), "nameserver 10.250.0.1", "{out}");
    assert_eq!(field(&out, "resolv_writable"), "no", "{out}");
    assert_eq!(std::fs::read_to_string(&own).expect("read"), "nameserver 10.250.0.1\n");
}
