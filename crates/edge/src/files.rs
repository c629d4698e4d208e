//! The files an edge's directory holds besides its identity: where to listen (written by the
//! parent), where it listens (written by the edge once bound), and its last snapshots.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::EdgeError;

/// `<dir>/edge.json`: where to listen, written by the parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeFile {
    /// The HTTP router's TCP address; port 0 picks a free one, reported in [`Listening`].
    pub router_listen: SocketAddr,
    /// The DNS service's address, bound for both UDP and TCP; port 0 picks a free UDP port and
    /// TCP then binds the same one.
    pub dns_listen: SocketAddr,
    /// Where instances query DNS: the hosts network's gateway, port 53 (the instances'
    /// firewalls admit exactly that). `None` without a hosts network.
    #[serde(default)]
    pub instance_dns: Option<SocketAddr>,
}

impl EdgeFile {
    /// Read `<dir>/edge.json`.
    pub fn load(dir: &Path) -> Result<EdgeFile, EdgeError> {
        read_json(&dir.join(EDGE_FILE))
    }

    /// Write `<dir>/edge.json` (0600, atomically), for the edge the parent is about to start.
    pub fn write(&self, dir: &Path) -> Result<(), EdgeError> {
        let path = dir.join(EDGE_FILE);
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|source| EdgeError::Encode { path: path.clone(), source })?;
        enjin_sys::fs::write_private(&path, &bytes).map_err(|source| EdgeError::Write { path, source })
    }
}

/// `<dir>/listening.json`: where it listens, written by the edge once bound (the ports may
/// have been 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listening {
    /// The edge process; [`wait_listening`] trusts the file only while this pid exists.
    pub pid: u32,
    /// The router's bound address (its real port, even if 0 was asked for).
    pub router: SocketAddr,
    /// The DNS service's bound address, the same for UDP and TCP.
    pub dns: SocketAddr,
}

impl Listening {
    pub(crate) fn write(&self, dir: &Path) -> Result<(), EdgeError> {
        let path = dir.join(LISTENING_FILE);
        let bytes =
            serde_json::to_vec(self).map_err(|source| EdgeError::Encode { path: path.clone(), source })?;
        enjin_sys::fs::write_private(&path, &bytes).map_err(|source| EdgeError::Write { path, source })
    }
}

const EDGE_FILE: &str = "edge.json";
const LISTENING_FILE: &str = "listening.json";

pub(crate) fn routes_file(dir: &Path) -> PathBuf {
    dir.join("routes.json")
}

pub(crate) fn zone_file(dir: &Path) -> PathBuf {
    dir.join("zone.json")
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, EdgeError> {
    let bytes = std::fs::read(path).map_err(|source| EdgeError::Read { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| EdgeError::Invalid { path: path.to_path_buf(), source })
}

/// Where the edge in `dir` listens, once it does (the running process's own word).
pub async fn wait_listening(dir: &Path, patience: Duration) -> Result<Listening, EdgeError> {
    let path = dir.join(LISTENING_FILE);
    let deadline = Instant::now() + patience;
    loop {
        if let Ok(l) = read_json::<Listening>(&path)
            && Path::new(&format!("/proc/{}", l.pid)).exists()
        {
            return Ok(l);
        }
        if Instant::now() > deadline {
            let log = dir.parent().map(|p| p.join("logs")).unwrap_or_default();
            return Err(EdgeError::NotListening { patience, log });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_file_round_trips() -> Result<(), EdgeError> {
        let dir = tempfile::tempdir().map_err(|source| EdgeError::Read { path: "tmp".into(), source })?;
        let file = EdgeFile {
            router_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            dns_listen: SocketAddr::from(([127, 0, 0, 1], 53)),
            instance_dns: None,
        };
        file.write(dir.path())?;
        assert_eq!(EdgeFile::load(dir.path())?, file);
        Ok(())
    }

    #[tokio::test]
    async fn waiting_for_an_edge_that_never_listens_names_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let edge = dir.path().join("edge");
        let err = wait_listening(&edge, Duration::from_millis(100)).await.expect_err("nothing listens");
        assert!(err.to_string().contains(&dir.path().join("logs").display().to_string()), "{err}");
    }
}
