//! Retained messages on disk, so that a hub that restarts still holds the ring's state: one
//! file per topic in the hub's `retained_dir`, named by the topic in hex (topics may hold any
//! printable character, `/` included) and holding the payload alone (retained messages carry
//! no reply-to that matters: state is published, not asked for).
//!
//! Writes happen off the router, in one task that keeps only the latest message per topic of
//! each burst and writes it to a temporary file renamed into place, so a reader never sees half
//! a message. They are not synced: after a power cut the files are at worst a little old, and
//! whoever publishes the state publishes it again when it reconnects. What is loaded goes
//! through the hub's filter again, so a file can never make the hub retain what it would not
//! accept from a member.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::frame::MAX_PAYLOAD;
use crate::topic;
use crate::transport::Message;

/// A retained message that changed: an empty payload clears its topic.
pub type Change = Arc<Message>;

/// Why the retained directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RetainedError {
    /// The directory could not be created, listed or read.
    #[error("cannot use the retained message directory {path}: {source}")]
    Dir {
        /// The retained-message directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// Most changes the writer takes in one batch before writing.
const BATCH: usize = 256;

fn file_name(topic: &str) -> String {
    crate::hex::encode(topic.as_bytes())
}

fn topic_of(name: &str) -> Option<String> {
    String::from_utf8(crate::hex::decode(name).filter(|b| !b.is_empty())?).ok()
}

/// The retained messages kept in `dir` (created 0700 if missing): every file that names a valid
/// topic under `prefix` and holds a payload of at most the frame limit, up to `max` of them.
/// Anything else there is skipped with a warning, never an error: one bad file must not keep
/// the hub from starting.
pub fn load(dir: &Path, prefix: &str, max: usize) -> Result<Vec<Message>, RetainedError> {
    let dir_err = |source| RetainedError::Dir { path: dir.to_path_buf(), source };
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(dir_err)?;
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(dir_err)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(topic) = name.to_str().and_then(topic_of) else {
            // Temporary files of an interrupted write, and strangers.
            continue;
        };
        if topic::validate_topic(&topic).is_err() || !topic.starts_with(prefix) {
            warn!(file = ?name, "retained file names no retained topic; skipped");
            continue;
        }
        if out.len() >= max {
            warn!(max, "more retained files than retained topics allowed; the rest skipped");
            break;
        }
        let path = entry.path();
        match entry.metadata() {
            Ok(m) if m.is_file() && m.len() <= MAX_PAYLOAD as u64 && m.len() > 0 => {}
            _ => {
                warn!(path = %path.display(), "retained file is not a regular file of a valid size; skipped");
                continue;
            }
        }
        match fs::read(&path) {
            Ok(payload) => out.push(Message { topic, reply_to: None, payload }),
            Err(error) => warn!(path = %path.display(), %error, "cannot read a retained file; skipped"),
        }
    }
    Ok(out)
}

/// Start the task that writes changes into `dir`; it ends when the sender is dropped (with
/// the hub's router).
pub fn spawn_writer(dir: PathBuf) -> mpsc::UnboundedSender<Change> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Change>();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            // The latest message of each topic is all that matters.
            let latest: HashMap<String, Change> = batch.drain(..).map(|m| (m.topic.clone(), m)).collect();
            let dir = dir.clone();
            let written = tokio::task::spawn_blocking(move || {
                for msg in latest.values() {
                    if let Err(error) = write(&dir, msg) {
                        warn!(topic = %msg.topic, %error, "cannot keep a retained message on disk");
                    }
                }
            });
            if written.await.is_err() {
                warn!("retained message writer failed");
            }
        }
        debug!("retained message writer stopped");
    });
    tx
}

fn write(dir: &Path, msg: &Message) -> std::io::Result<()> {
    let path = dir.join(file_name(&msg.topic));
    if msg.payload.is_empty() {
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let tmp = dir.join(format!(".{}.tmp", file_name(&msg.topic)));
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(&msg.payload)?;
    drop(f);
    fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(topic: &str, payload: &[u8]) -> Arc<Message> {
        Arc::new(Message { topic: topic.into(), reply_to: None, payload: payload.to_vec() })
    }

    #[tokio::test]
    async fn what_is_written_is_loaded_and_cleared_topics_are_gone() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("retained");
        assert!(load(&path, "state.", 10).expect("empty").is_empty());
        let tx = spawn_writer(path.clone());
        tx.send(msg("state.desired/a", b"one")).expect("send");
        tx.send(msg("state.desired/a", b"two")).expect("send");
        tx.send(msg("state.trust", b"bundle")).expect("send");
        tx.send(msg("state.gone", b"x")).expect("send");
        tx.send(msg("state.gone", b"")).expect("send");
        drop(tx);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let loaded = loop {
            let mut loaded = load(&path, "state.", 10).expect("load");
            loaded.sort_by(|a, b| a.topic.cmp(&b.topic));
            if loaded.len() == 2 && loaded[0].payload == b"two" || std::time::Instant::now() > deadline {
                break loaded;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let topics: Vec<_> = loaded.iter().map(|m| (m.topic.as_str(), m.payload.as_slice())).collect();
        assert_eq!(topics, [("state.desired/a", &b"two"[..]), ("state.trust", &b"bundle"[..])]);
        // Strangers in the directory are skipped, and so is what is not under the prefix.
        fs::write(path.join("zz"), b"x").expect("write");
        fs::write(path.join(file_name("other.topic")), b"x").expect("write");
        fs::write(path.join(file_name("state.empty")), b"").expect("write");
        assert_eq!(load(&path, "state.", 10).expect("load").len(), 2);
        assert_eq!(load(&path, "state.", 1).expect("load").len(), 1, "never more than max");
    }

    proptest! {
        #[test]
        fn file_names_round_trip(topic in "[ -~]{1,64}") {
            prop_assert_eq!(topic_of(&file_name(&topic)), Some(topic));
        }

        #[test]
        fn any_file_name_is_safe(name in ".{0,80}") {
            let _ = topic_of(&name);
        }
    }
}
