//! Which cloud owns which network resources on this machine.
//!
//! Every data directory that runs `enjin up` as root has a cloud id (`<data-dir>/cloud-id`).
//! The cloud keeps a record of what it makes outside its data directory in
//! `/run/enjin/clouds/<id>.json`: its data directory, the process running it, its bridge and
//! its hosts (node, namespace, veth). The record is written *before* each resource is made, so
//! that an interrupted start leaves nothing unaccounted for. `/run` is emptied at boot, exactly
//! like the namespaces, bridges and cgroups it describes, so a record never outlives them.
//!
//! A cloud is live while its data directory holds the same id, or while its process or any
//! process inside its namespaces runs. Only the resources of a cloud that is not live may be
//! reclaimed by another one; a cloud's own `enjin down` removes its own. The bridge and each
//! host's veth also carry the id as their interface alias (`ip link` shows `alias enjin:<id>`),
//! so that a person can tell whose they are.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{NetError, check_name, ip};

/// Where the records are kept.
pub const RECORDS_DIR: &str = "/run/enjin/clouds";

/// The prefix of the interface alias naming a resource's cloud.
pub const ALIAS_PREFIX: &str = "enjin:";

/// Why a cloud record could not be written or removed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The record, or the directory for it, could not be written; an existing record file
    /// still holds its old contents or the new, never part of either.
    #[error("failed to write the cloud record {}: {source}", path.display())]
    Write {
        /// The record file.
        path: PathBuf,
        /// The I/O error from creating the directory or writing the file (an encoding failure
        /// is wrapped as one).
        source: std::io::Error,
    },
    /// The record file exists but could not be deleted; it keeps naming resources that may be
    /// gone.
    #[error("failed to remove the cloud record {}: {source}", path.display())]
    Remove {
        /// The record file.
        path: PathBuf,
        /// The I/O error from deleting it.
        source: std::io::Error,
    },
    /// The record's id is not 1 to 64 letters, digits and '-', so it cannot name a file among
    /// the records; holds the id.
    #[error("invalid cloud id {0:?}")]
    BadId(String),
}

/// What one cloud made outside its data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudRecord {
    /// The cloud's id, as its data directory's [`ID_FILE`] holds it: the record's file name
    /// and the interface alias of what it made.
    pub id: String,
    /// Absolute.
    pub data_dir: PathBuf,
    /// The `enjin up` that runs it, and its start time (clock ticks since boot) so that a
    /// reused pid is not taken for it.
    pub pid: u32,
    /// The start time of `pid`, in clock ticks since boot; a process with that pid and another
    /// start time is not this cloud's.
    pub start_time: u64,
    /// The hosts network's bridge, recorded before it is made; `None` while the cloud has made
    /// none.
    #[serde(default)]
    pub bridge: Option<String>,
    /// Each host made (or about to be), one per node: see [`CloudRecord::add_host`].
    #[serde(default)]
    pub hosts: Vec<HostRecord>,
}

/// One ring 1 host a cloud made: what to remove, and whose cgroups to clean, when reclaiming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The host's node uuid: its cgroups are `enjin/<node>` in every hierarchy.
    pub node: String,
    /// The host's network namespace, under `/run/netns`.
    pub netns: String,
    /// The host-side end of its veth pair, on the cloud's bridge.
    pub veth: String,
}

/// Whether `id` can name a record file (letters, digits and '-').
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl CloudRecord {
    /// Where the record of cloud `id` is kept in `dir`: `<dir>/<id>.json`. `id` is not checked
    /// here ([`valid_id`]).
    pub fn path_in(dir: &Path, id: &str) -> PathBuf {
        dir.join(format!("{id}.json"))
    }

    /// Write the record (atomically: a temporary file renamed into place) into `dir`.
    pub fn save_in(&self, dir: &Path) -> Result<(), RecordError> {
        if !valid_id(&self.id) {
            return Err(RecordError::BadId(self.id.clone()));
        }
        let path = Self::path_in(dir, &self.id);
        let fail = |source| RecordError::Write { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(fail)?;
        let body = serde_json::to_vec_pretty(self).map_err(|e| fail(std::io::Error::other(e)))?;
        // Root's record of what it made: written whole or not at all, and it survives a crash.
        enjin_sys::fs::write_private(&path, &body).map_err(fail)
    }

    /// Saves the record in the machine's records directory, [`RECORDS_DIR`]
    /// ([`CloudRecord::save_in`]).
    pub fn save(&self) -> Result<(), RecordError> {
        self.save_in(Path::new(RECORDS_DIR))
    }

    /// Forget the record (once what it names is gone).
    pub fn remove_in(&self, dir: &Path) -> Result<(), RecordError> {
        // A record read from disk names itself: never let its id reach outside `dir`.
        if !valid_id(&self.id) {
            return Err(RecordError::BadId(self.id.clone()));
        }
        let path = Self::path_in(dir, &self.id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(RecordError::Remove { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Forgets the record in the machine's records directory, [`RECORDS_DIR`]
    /// ([`CloudRecord::remove_in`]).
    pub fn remove(&self) -> Result<(), RecordError> {
        self.remove_in(Path::new(RECORDS_DIR))
    }

    /// Add (or replace) a host.
    pub fn add_host(&mut self, host: HostRecord) {
        self.hosts.retain(|h| h.node != host.node);
        self.hosts.push(host);
    }

    /// Whether the data directory still holds this cloud's id.
    pub fn data_dir_is_ours(&self) -> bool {
        read_id(&self.data_dir).as_deref() == Some(self.id.as_str())
    }
}

/// The cloud id a data directory holds, if any.
pub fn read_id(data_dir: &Path) -> Option<String> {
    let id = std::fs::read_to_string(data_dir.join(ID_FILE)).ok()?;
    let id = id.trim();
    valid_id(id).then(|| id.to_string())
}

/// The file in a data directory that holds its cloud id.
pub const ID_FILE: &str = "cloud-id";

/// Every readable record in `dir`; unreadable ones are skipped (and logged).
pub fn records_in(dir: &Path) -> Vec<CloudRecord> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        match std::fs::read(entry.path()).map(|b| serde_json::from_slice::<CloudRecord>(&b)) {
            Ok(Ok(r)) if valid_id(&r.id) => out.push(r),
            Ok(Ok(_)) | Ok(Err(_)) => {
                tracing::warn!(path = %entry.path().display(), "unreadable cloud record")
            }
            Err(e) => tracing::warn!(path = %entry.path().display(), error = %e, "cloud record not read"),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Every readable record in [`RECORDS_DIR`], sorted by id; unreadable ones are skipped (and
/// logged).
pub fn records() -> Vec<CloudRecord> {
    records_in(Path::new(RECORDS_DIR))
}

/// Name an interface's cloud in its alias.
pub fn set_alias(netns: Option<&str>, link: &str, id: &str) -> Result<(), NetError> {
    check_name(link)?;
    let alias = format!("{ALIAS_PREFIX}{id}");
    match netns {
        Some(ns) => ip(&["-n", ns, "link", "set", "dev", link, "alias", &alias]).map(drop),
        None => ip(&["link", "set", "dev", link, "alias", &alias]).map(drop),
    }
}

/// The names of the instance namespaces a host's namespace has veths to (an instance's
/// namespace and its host-side veth share a name, [`crate::instance::instance_names`]).
pub fn instance_namespaces(host_netns: &str) -> Result<Vec<String>, NetError> {
    check_name(host_netns)?;
    let out = match ip(&["-n", host_netns, "-o", "link", "show"]) {
        Ok(o) => o,
        Err(NetError::Failed { stderr, .. }) if stderr.contains("No such file") => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(parse_links(&out).into_iter().filter(|n| n.starts_with(crate::INSTANCE_PREFIX)).collect())
}

/// Interface names from `ip -o link show`.
fn parse_links(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).trim().to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Whether a namespace of this name exists under `/run/netns`.
pub fn netns_exists(netns: &str) -> bool {
    crate::instance::netns_path(netns).exists()
}

/// Whether an interface of this name exists in the caller's namespace.
pub fn link_exists(link: &str) -> bool {
    Path::new("/sys/class/net").join(link).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, data: &Path) -> CloudRecord {
        CloudRecord {
            id: id.into(),
            data_dir: data.into(),
            pid: 1,
            start_time: 2,
            bridge: Some("ejb-12345678".into()),
            hosts: Vec::new(),
        }
    }

    #[test]
    fn records_round_trip_and_are_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = record("3f0c2d5e-aaaa", &dir.path().join("data"));
        r.add_host(HostRecord { node: "n1".into(), netns: "enjin-n1".into(), veth: "ejv-n1".into() });
        r.add_host(HostRecord { node: "n1".into(), netns: "enjin-n1".into(), veth: "ejv-n1".into() });
        assert_eq!(r.hosts.len(), 1, "a host is recorded once");
        r.save_in(dir.path()).expect("save");
        std::fs::write(dir.path().join("junk.json"), "{").expect("junk");
        assert_eq!(records_in(dir.path()), vec![r.clone()]);
        r.remove_in(dir.path()).expect("remove");
        r.remove_in(dir.path()).expect("removing twice is fine");
        assert!(records_in(dir.path()).is_empty());
        assert!(record("../x", dir.path()).save_in(dir.path()).is_err(), "ids never name other paths");
        // Nor when a record read back names itself so: the file beside the records stays.
        let outside = dir.path().join("records");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(dir.path().join("x.json"), "{}").expect("bystander");
        assert!(record("../x", dir.path()).remove_in(&outside).is_err());
        assert!(dir.path().join("x.json").exists(), "nothing outside the records directory is removed");
    }

    #[test]
    fn a_data_directory_is_ours_while_it_holds_our_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let r = record("abc", &data);
        assert!(!r.data_dir_is_ours(), "gone");
        std::fs::create_dir_all(&data).expect("mkdir");
        std::fs::write(data.join(ID_FILE), "other\n").expect("write");
        assert!(!r.data_dir_is_ours(), "another cloud's now");
        std::fs::write(data.join(ID_FILE), "abc\n").expect("write");
        assert!(r.data_dir_is_ours());
    }

    #[test]
    fn links_are_parsed_without_their_peers() {
        let out = "1: lo: <LOOPBACK,UP> mtu 65536\n2: eth0@if9: <UP> mtu 1500\n3: eji-6c9b5c2e@if2: <UP> mtu 1500 link-netns eji-6c9b5c2e\n";
        assert_eq!(parse_links(out), vec!["lo", "eth0", "eji-6c9b5c2e"]);
    }
}
