//! A server process a test starts for itself ([`crate::EtcdServer`], [`crate::NatsServer`]):
//! in a fresh directory of its own with its log there, listening on a loopback port chosen a
//! moment before (tried again with new ports if it could not listen), and killed, reaped and
//! its directory removed on drop.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server gets to listen.
const START_PATIENCE: Duration = Duration::from_secs(10);

/// A running server process.
#[derive(Debug)]
pub(crate) struct Daemon {
    child: Child,
    dir: PathBuf,
}

/// A port that was free a moment ago (the server binds it itself; a clash makes it exit, and
/// [`Daemon::start`] tries again with other ports).
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

impl Daemon {
    /// Start `program` (from Debian's `package`; a missing binary fails the test naming
    /// `scripts/install-deps`). `configure` gets each try's fresh directory and the command,
    /// adds its arguments (choosing ports with [`free_port`]), and returns the port to wait for
    /// and what the caller keeps (its URL, say).
    pub(crate) fn start<T>(
        program: &str,
        package: &str,
        mut configure: impl FnMut(&Path, &mut Command) -> (u16, T),
    ) -> (Daemon, T) {
        let found =
            Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
        assert!(
            found.is_ok_and(|status| status.success()),
            "the {program} binary is missing: run scripts/install-deps (it installs Debian's {package})"
        );
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = std::env::temp_dir().join(crate::unique(&format!("enjin-{program}")));
            std::fs::create_dir_all(&dir).expect("create the server's test directory");
            let log = dir.join(format!("{program}.log"));
            let log_file = File::create(&log).expect("create the server's log");
            let mut command = Command::new(program);
            let (port, kept) = configure(&dir, &mut command);
            let child = command
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log file"))
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("start {program}: {e}"));
            let mut daemon = Daemon { child, dir };
            if daemon.wait_listening(port) {
                return (daemon, kept);
            }
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("{program} did not start on loopback; its last log:\n{last_log}");
    }

    /// Whether `port` accepts connections before the server exits or the patience ends.
    fn wait_listening(&mut self, port: u16) -> bool {
        let deadline = Instant::now() + START_PATIENCE;
        while Instant::now() < deadline {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return true;
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The server's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Already gone is fine; either way it is reaped and its files removed.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
