//! Instance logs on the host. Children write their stdout and stderr straight to raw files
//! (`<logs>/<id>.stdout.log`, `.stderr.log`, opened `O_APPEND`), never through a pipe to the
//! agent, because they outlive it. The collector follows those files by offset, cuts them into
//! lines and appends each line, stamped with when it was collected and a per-instance `seq`, to
//! `<logs>/<id>.log` (JSON lines), rotated at a size bound into `<id>.log.1` and `<id>.log.2`.
//! [`read_logs`] answers log requests from those files.
//!
//! # Exactly once across restarts
//! After each poll the collector appends the new records, then saves every stream's consumed
//! offset and each instance's next `seq` (`collector.json`, 0600, replaced by rename), and only
//! then frees what it consumed from the raw files. Each record also carries the raw offset it
//! ends at, so when the agent died between appending and saving, the next collector reads the
//! records past the saved `seq` and moves its offsets up to them: nothing is lost (offsets only
//! advance once lines are written) and nothing is repeated (they advance past everything
//! written). A torn last record is cut off. Power loss may still lose the last instants: the
//! files are not fsynced per poll.
//!
//! # Bounded raw files without racing the writer
//! The raw files are never truncated or rotated under the child, which may be appending at any
//! moment. Instead the consumed range is turned into a hole (`FALLOC_FL_PUNCH_HOLE`, keeping the
//! size): the writer's appends are untouched and its file's blocks are given back. Where the
//! filesystem cannot punch holes the raw files simply grow, as before.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use enjin_model::api::{LogLine, LogsReply, LogsRequest};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Rotate an instance's collected log once it would grow past this.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;
/// Longer lines are cut into pieces of at most this many bytes.
pub const MAX_LINE: usize = 16 * 1024;
/// Rotated files kept beside the current one: `<id>.log.1` (newer) and `<id>.log.2`.
pub const KEPT_ROTATIONS: u32 = 2;
/// Lines per instance when a request names no limit.
pub const DEFAULT_LIMIT: u32 = 1000;
/// The most lines per instance any request gets.
pub const MAX_LIMIT: u32 = 10_000;
/// How much JSON a reply may carry: well under the bus's 2 MiB payload limit, leaving room for
/// the envelope.
pub const REPLY_BUDGET: usize = 1536 * 1024;
/// The collector's state file, in the logs directory.
pub const STATE_FILE: &str = "collector.json";

const STREAMS: [&str; 2] = ["stdout", "stderr"];
/// Holes are punched in whole pages: the partial page at the edge would only be zeroed, which
/// is a write for nothing.
const PUNCH_ALIGN: u64 = 4096;
/// The most bytes read from one raw file in one poll, so one chatty child cannot starve the rest.
const READ_PER_POLL: u64 = 8 * 1024 * 1024;

/// How the collector runs; [`CollectorConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// Where the raw files are and the collected files go.
    pub dir: PathBuf,
    /// Time between two polls of every followed file (200 ms by default): the delay before a
    /// line becomes readable through [`read_logs`].
    pub poll_every: Duration,
    /// Size bound of `<id>.log` before it is rotated.
    pub max_bytes: u64,
    /// Longest line kept whole, in bytes.
    pub max_line: usize,
    /// An unterminated last line is collected as it is once its file has not grown for this
    /// long (a prompt, or a child that died mid-line).
    pub partial_flush: Duration,
    /// A child removed from the desired set is still followed until its files have been quiet
    /// this long, so what it writes while it is stopped gracefully is not lost.
    pub retire_after: Duration,
    /// The logs of a child that is gone are kept this long after it retired …
    pub retention: Duration,
    /// … and only for this many gone children (the oldest go first), so a host that replaces
    /// instances all day keeps a bounded number of files.
    pub max_retired: usize,
}

impl CollectorConfig {
    /// Defaults for a collector on `dir`: polls every 200 ms, rotates at 1 MiB, cuts lines at
    /// 16 KiB, flushes a partial line after 2 s, retires a removed child after 30 s of quiet,
    /// keeps the logs of at most 64 gone children for at most a day.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CollectorConfig {
            dir: dir.into(),
            poll_every: Duration::from_millis(200),
            max_bytes: DEFAULT_MAX_BYTES,
            max_line: MAX_LINE,
            partial_flush: Duration::from_secs(2),
            retire_after: Duration::from_secs(30),
            retention: Duration::from_secs(24 * 3600),
            max_retired: 64,
        }
    }
}

/// Why the collector could not start or save its state. Starting errors leave the agent
/// running without log collection; a failed save is retried on the next poll, and nothing is
/// freed from the raw files until a save succeeds.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// The logs directory could not be created.
    #[error("failed to create the logs directory {path}: {source}")]
    Dir {
        /// The logs directory.
        path: PathBuf,
        /// The error from the filesystem.
        source: io::Error,
    },
    /// `collector.json` exists but could not be read.
    #[error("failed to read the collector state {path}: {source}")]
    ReadState {
        /// The state file.
        path: PathBuf,
        /// The error from the filesystem.
        source: io::Error,
    },
    /// `collector.json` does not parse. It is left in place, so the collector fails the same
    /// way at every start until someone moves it aside.
    #[error("invalid collector state {path}: {source}")]
    InvalidState {
        /// The state file.
        path: PathBuf,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// `collector.json` could not be written.
    #[error("failed to save the collector state {path}: {source}")]
    SaveState {
        /// The state file.
        path: PathBuf,
        /// The error from encoding or writing.
        source: io::Error,
    },
    /// The collector's thread could not be spawned.
    #[error("failed to start the log collector thread: {0}")]
    Thread(io::Error),
}

/// What is saved between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    instances: BTreeMap<Uuid, InstanceState>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct InstanceState {
    next_seq: u64,
    /// No longer followed: the child is gone. Kept so that a child that comes back (stopped,
    /// then started again) continues its offsets and its `seq`.
    #[serde(default)]
    retired: bool,
    /// When it retired (milliseconds since the epoch; 0 for state saved before this was kept).
    #[serde(default)]
    retired_at_ms: u64,
    #[serde(default)]
    streams: BTreeMap<String, StreamState>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StreamState {
    /// Everything before this offset of the raw file has been collected.
    offset: u64,
    /// The raw file's inode, to notice it being replaced; 0 when not known.
    #[serde(default)]
    ino: u64,
    /// Everything before this offset has been punched out.
    #[serde(default)]
    punched: u64,
}

/// A collected line as stored: a [`LogLine`] and the raw offset it ends at (for recovery).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredLine {
    at: DateTime<Utc>,
    instance: Uuid,
    stream: String,
    seq: u64,
    line: String,
    /// The offset in the stream's raw file just after this line.
    #[serde(default)]
    offset: u64,
}

impl From<StoredLine> for LogLine {
    fn from(s: StoredLine) -> Self {
        LogLine { at: s.at, instance: s.instance, stream: s.stream, seq: s.seq, line: s.line }
    }
}

/// The raw file of `id`'s `stream`.
pub fn raw_path(dir: &Path, id: Uuid, stream: &str) -> PathBuf {
    dir.join(format!("{id}.{stream}.log"))
}

/// The collected file of `id`; rotation `n` (1 or 2) is `<id>.log.<n>`.
pub fn collected_path(dir: &Path, id: Uuid, rotation: u32) -> PathBuf {
    match rotation {
        0 => dir.join(format!("{id}.log")),
        n => dir.join(format!("{id}.log.{n}")),
    }
}

/// Whether logs of `id` were ever collected here.
pub fn has_logs(dir: &Path, id: Uuid) -> bool {
    (0..=KEPT_ROTATIONS).any(|n| collected_path(dir, id, n).exists())
}

/// Cuts a byte stream into lines. `start` is the stream offset of the first byte not yet
/// emitted as (part of) a line; everything before it has been.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LineSplitter {
    start: u64,
    pending: Vec<u8>,
}

/// One line cut out of a stream: its text (newline removed) and the stream offset just after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutLine {
    /// The line's bytes without its `\n` (nor a `\r` before it); not necessarily UTF-8, and at
    /// most `max_line` bytes.
    pub text: Vec<u8>,
    /// The stream offset just after the line's last byte (its newline included): where reading
    /// resumes once the line is safely stored.
    pub end: u64,
}

impl LineSplitter {
    /// A splitter for a stream whose bytes before `offset` were already emitted.
    pub fn at(offset: u64) -> Self {
        LineSplitter { start: offset, pending: Vec::new() }
    }

    /// The stream offset up to which every byte has been emitted.
    pub fn consumed(&self) -> u64 {
        self.start
    }

    /// The stream offset of the next byte to feed.
    pub fn read_to(&self) -> u64 {
        self.start + self.pending.len() as u64
    }

    /// Whether bytes of an unterminated line are held, waiting for their newline or a
    /// [`flush`](Self::flush).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Feed the next bytes of the stream; returns the lines they complete. A line longer than
    /// `max_line` is cut into pieces of at most `max_line` bytes (at a UTF-8 character boundary
    /// when there is one close by), so no line is held back unbounded.
    pub fn push(&mut self, data: &[u8], max_line: usize) -> Vec<CutLine> {
        let max_line = max_line.max(4);
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let rest = &self.pending[pos..];
            let window = &rest[..rest.len().min(max_line + 1)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let text = rest[..i].strip_suffix(b"\r").unwrap_or(&rest[..i]).to_vec();
                    pos += i + 1;
                    out.push(CutLine { text, end: self.start + pos as u64 });
                }
                None if rest.len() > max_line => {
                    let cut = char_boundary(rest, max_line);
                    out.push(CutLine { text: rest[..cut].to_vec(), end: self.start + (pos + cut) as u64 });
                    pos += cut;
                }
                None => break,
            }
        }
        self.pending.drain(..pos);
        self.start += pos as u64;
        out
    }

    /// Emit the unterminated rest as a line, if there is one.
    pub fn flush(&mut self) -> Option<CutLine> {
        if self.pending.is_empty() {
            return None;
        }
        let text = std::mem::take(&mut self.pending);
        self.start += text.len() as u64;
        Some(CutLine { text, end: self.start })
    }
}

/// `max`, or a little less so as not to cut a UTF-8 character in two.
fn char_boundary(bytes: &[u8], max: usize) -> usize {
    let is_continuation = |b: u8| b & 0xc0 == 0x80;
    let mut cut = max;
    while cut > max - 3 && bytes.get(cut).is_some_and(|&b| is_continuation(b)) {
        cut -= 1;
    }
    if bytes.get(cut).is_some_and(|&b| is_continuation(b)) { max } else { cut }
}

/// One raw file being followed.
#[derive(Debug)]
struct Stream {
    name: &'static str,
    path: PathBuf,
    file: Option<File>,
    ino: u64,
    splitter: LineSplitter,
    /// When the file last grew (or following began).
    grew: Instant,
    /// False once the filesystem refused to punch a hole in this file.
    can_punch: bool,
    punched: u64,
}

impl Stream {
    fn new(dir: &Path, id: Uuid, name: &'static str, saved: StreamState, now: Instant) -> Self {
        Stream {
            name,
            path: raw_path(dir, id, name),
            file: None,
            ino: saved.ino,
            splitter: LineSplitter::at(saved.offset),
            grew: now,
            can_punch: true,
            punched: saved.punched,
        }
    }

    /// Read what is new and cut it into lines. `draining` also emits an unterminated rest.
    fn collect(
        &mut self,
        max_line: usize,
        partial_flush: Duration,
        draining: bool,
        now: Instant,
    ) -> Vec<CutLine> {
        let mut lines = Vec::new();
        // The file at the path now; a different inode means it was replaced (deleted and made
        // again when the child was next launched): finish the old one, then start the new one
        // from its beginning.
        let current = std::fs::metadata(&self.path).ok().map(|m| m.ino());
        if self.file.is_none() {
            // Read-write so that consumed ranges can be punched out through the same handle;
            // nothing is ever written through it. Read-only where that is refused.
            let opened = OpenOptions::new().read(true).write(true).open(&self.path).or_else(|e| {
                if e.kind() == io::ErrorKind::PermissionDenied {
                    self.can_punch = false;
                    File::open(&self.path)
                } else {
                    Err(e)
                }
            });
            match opened {
                Ok(f) => {
                    let ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
                    if self.ino != 0 && self.ino != ino {
                        // Replaced while nobody followed it: the new file starts afresh.
                        self.splitter = LineSplitter::at(0);
                        self.punched = 0;
                    }
                    self.ino = ino;
                    self.file = Some(f);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return lines,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot open a raw log");
                    return lines;
                }
            }
        }
        lines.extend(self.read_new(max_line, now));
        if current.is_some_and(|ino| ino != self.ino) {
            lines.extend(self.splitter.flush());
            self.file = None;
            self.ino = current.unwrap_or(0);
            self.splitter = LineSplitter::at(0);
            self.punched = 0;
            self.can_punch = true;
            self.grew = now;
            return lines;
        }
        if self.splitter.has_pending() && (draining || now.duration_since(self.grew) >= partial_flush) {
            lines.extend(self.splitter.flush());
        }
        lines
    }

    fn read_new(&mut self, max_line: usize, now: Instant) -> Vec<CutLine> {
        let mut lines = Vec::new();
        let Some(file) = &self.file else { return lines };
        let size = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot stat a raw log");
                return lines;
            }
        };
        if size < self.splitter.read_to() {
            // Truncated under us (by hand): what was there is gone; follow from the start.
            tracing::info!(path = %self.path.display(), size, "raw log truncated; following it from its start");
            lines.extend(self.splitter.flush());
            self.splitter = LineSplitter::at(0);
            self.punched = 0;
        }
        let mut buf = vec![0u8; 64 * 1024];
        let limit = self.splitter.read_to().saturating_add(READ_PER_POLL);
        while self.splitter.read_to() < size.min(limit) {
            let want = usize::try_from(size.min(limit) - self.splitter.read_to())
                .map_or(buf.len(), |w| w.min(buf.len()));
            let n = match file.read_at(&mut buf[..want], self.splitter.read_to()) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot read a raw log");
                    break;
                }
            };
            self.grew = now;
            lines.extend(self.splitter.push(&buf[..n], max_line));
        }
        lines
    }

    /// Give back the blocks of what has been collected and saved.
    fn punch(&mut self, saved_offset: u64) {
        let upto = saved_offset - saved_offset % PUNCH_ALIGN;
        if !self.can_punch || upto <= self.punched {
            return;
        }
        let Some(file) = &self.file else { return };
        match enjin_sys::fs::punch_hole(file, self.punched, upto - self.punched) {
            Ok(enjin_sys::fs::Punched::Freed) => self.punched = upto,
            Ok(enjin_sys::fs::Punched::Unsupported) => {
                tracing::info!(path = %self.path.display(), "the filesystem cannot punch holes; raw logs will grow");
                self.can_punch = false;
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot free collected raw log");
                self.can_punch = false;
            }
        }
    }
}

/// An instance's collected file, appended to and rotated.
#[derive(Debug)]
struct Sink {
    dir: PathBuf,
    id: Uuid,
    file: File,
    size: u64,
}

fn open_private_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

impl Sink {
    fn open(dir: &Path, id: Uuid) -> io::Result<Sink> {
        let file = open_private_append(&collected_path(dir, id, 0))?;
        let size = file.metadata()?.len();
        Ok(Sink { dir: dir.to_path_buf(), id, file, size })
    }

    /// Append `records` (each one JSON line), rotating whenever the next would pass `max`. On a
    /// failed write the file is cut back to its last whole record.
    fn append(&mut self, records: &[Vec<u8>], max: u64) -> io::Result<()> {
        let mut buf = Vec::new();
        for r in records {
            let held = self.size + buf.len() as u64;
            if held > 0 && held + r.len() as u64 > max {
                self.write(&buf)?;
                buf.clear();
                self.rotate()?;
            }
            buf.extend_from_slice(r);
        }
        self.write(&buf)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(buf) {
            let _ = self.file.set_len(self.size);
            return Err(e);
        }
        self.size += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        for n in (1..=KEPT_ROTATIONS).rev() {
            let from = collected_path(&self.dir, self.id, n - 1);
            match std::fs::rename(&from, collected_path(&self.dir, self.id, n)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.file = open_private_append(&collected_path(&self.dir, self.id, 0))?;
        self.size = 0;
        Ok(())
    }
}

/// One instance being followed.
#[derive(Debug)]
struct Followed {
    streams: Vec<Stream>,
    sink: Option<Sink>,
    /// In the desired set; otherwise followed only until its files go quiet.
    desired: bool,
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollSummary {
    /// Lines appended to collected files, over every child.
    pub lines: u64,
    /// Children no longer desired whose files were drained and are no longer followed.
    pub retired: usize,
}

/// Follows the raw files of a set of children. Synchronous: run it on a thread of its own
/// ([`CollectorHandle`]) or drive [`Collector::poll`] directly.
#[derive(Debug)]
pub struct Collector {
    config: CollectorConfig,
    state: State,
    followed: BTreeMap<Uuid, Followed>,
    /// The state on disk differs from `state`.
    dirty: bool,
}

impl Collector {
    /// Load the saved state (if any) and resume following every child it was following.
    pub fn open(config: CollectorConfig) -> Result<Collector, CollectorError> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|source| CollectorError::Dir { path: config.dir.clone(), source })?;
        let path = config.dir.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| CollectorError::InvalidState { path: path.clone(), source })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(source) => return Err(CollectorError::ReadState { path, source }),
        };
        let mut c = Collector { config, state, followed: BTreeMap::new(), dirty: false };
        let resumed: Vec<Uuid> =
            c.state.instances.iter().filter(|(_, s)| !s.retired).map(|(id, _)| *id).collect();
        for id in resumed {
            c.follow(id);
        }
        Ok(c)
    }

    /// The children followed now (desired, or gone but not yet drained).
    pub fn following(&self) -> Vec<Uuid> {
        self.followed.keys().copied().collect()
    }

    /// The children that should run here now. New ones are followed from where their files
    /// were left (or their start); ones no longer listed are drained and then let go.
    pub fn set_desired(&mut self, ids: impl IntoIterator<Item = Uuid>) {
        let desired: BTreeSet<Uuid> = ids.into_iter().collect();
        for (id, f) in &mut self.followed {
            f.desired = desired.contains(id);
        }
        for id in desired {
            if !self.followed.contains_key(&id) {
                self.follow(id);
            }
        }
    }

    /// Deletes the logs of gone children past the retention period, and of the oldest gone
    /// children past `max_retired`. Only files the collector itself named, in its own
    /// directory (root's alone).
    fn prune(&mut self, now: u64) {
        let mut retired: Vec<(u64, Uuid)> = self
            .state
            .instances
            .iter()
            .filter(|(id, s)| s.retired && !self.followed.contains_key(id))
            .map(|(id, s)| (s.retired_at_ms, *id))
            .collect();
        retired.sort_unstable();
        let excess = retired.len().saturating_sub(self.config.max_retired);
        let retention = u64::try_from(self.config.retention.as_millis()).unwrap_or(u64::MAX);
        for (i, (at, id)) in retired.into_iter().enumerate() {
            if i >= excess && now.saturating_sub(at) < retention {
                continue;
            }
            let dir = &self.config.dir;
            let files = STREAMS
                .iter()
                .map(|s| raw_path(dir, id, s))
                .chain((0..=KEPT_ROTATIONS).map(|n| collected_path(dir, id, n)));
            for path in files {
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %path.display(), error = %e, "failed to remove an old log");
                }
            }
            self.state.instances.remove(&id);
            self.dirty = true;
            tracing::info!(instance = %id, "logs of a gone child removed");
        }
    }

    fn follow(&mut self, id: Uuid) {
        let dir = self.config.dir.clone();
        let entry = self.state.instances.entry(id).or_default();
        if entry.retired {
            entry.retired = false;
            self.dirty = true;
        }
        if recover(&dir, id, entry) {
            self.dirty = true;
        }
        let now = Instant::now();
        let streams = STREAMS
            .iter()
            .map(|name| {
                Stream::new(&dir, id, name, entry.streams.get(*name).copied().unwrap_or_default(), now)
            })
            .collect();
        self.followed.insert(id, Followed { streams, sink: None, desired: true });
    }

    /// Collect what is new from every followed child, save the state, and free what was
    /// collected. Problems with one child are logged and retried on the next poll; they never
    /// stop the others.
    pub fn poll(&mut self) -> PollSummary {
        let mut summary = PollSummary::default();
        let now = Instant::now();
        let at = Utc::now();
        let mut retire = Vec::new();
        for (id, f) in &mut self.followed {
            let Some(state) = self.state.instances.get_mut(id) else { continue };
            let quiet = f.streams.iter().all(|s| now.duration_since(s.grew) >= self.config.retire_after);
            let draining = !f.desired && quiet;
            let mut records = Vec::new();
            let mut next_seq = state.next_seq;
            for s in &mut f.streams {
                for cut in s.collect(self.config.max_line, self.config.partial_flush, draining, now) {
                    let line = StoredLine {
                        at,
                        instance: *id,
                        stream: s.name.to_string(),
                        seq: next_seq,
                        line: String::from_utf8_lossy(&cut.text).into_owned(),
                        offset: cut.end,
                    };
                    match serde_json::to_vec(&line) {
                        Ok(mut json) => {
                            json.push(b'\n');
                            records.push(json);
                            next_seq += 1;
                        }
                        Err(e) => {
                            tracing::warn!(instance = %id, error = %e, "log line not encodable; skipped")
                        }
                    }
                }
            }
            if !records.is_empty() {
                let written =
                    append_records(&mut f.sink, &self.config.dir, *id, &records, self.config.max_bytes);
                if let Err(e) = written {
                    // Nothing is marked collected: the same lines are read again next time.
                    tracing::warn!(instance = %id, error = %e, "cannot write collected logs; retrying");
                    f.sink = None;
                    for s in &mut f.streams {
                        let saved = state.streams.get(s.name).copied().unwrap_or_default();
                        s.splitter = LineSplitter::at(saved.offset);
                        s.file = None;
                    }
                    continue;
                }
                summary.lines += records.len() as u64;
                state.next_seq = next_seq;
                self.dirty = true;
            }
            for s in &f.streams {
                let saved = StreamState { offset: s.splitter.consumed(), ino: s.ino, punched: s.punched };
                if state.streams.get(s.name) != Some(&saved) {
                    state.streams.insert(s.name.to_string(), saved);
                    self.dirty = true;
                }
            }
            if draining && f.streams.iter().all(|s| !s.splitter.has_pending()) {
                state.retired = true;
                state.retired_at_ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
                self.dirty = true;
                retire.push(*id);
            }
        }
        for id in &retire {
            self.followed.remove(id);
            tracing::info!(instance = %id, "child gone; its logs are drained and no longer followed");
        }
        summary.retired = retire.len();
        self.prune(u64::try_from(at.timestamp_millis()).unwrap_or(0));
        if self.dirty {
            match self.save() {
                Ok(()) => self.dirty = false,
                // Freeing raw data that the saved state does not yet cover could lose it.
                Err(e) => {
                    tracing::warn!(error = %e, "collector state not saved; retrying");
                    return summary;
                }
            }
            self.punch_collected();
        }
        summary
    }

    fn punch_collected(&mut self) {
        for (id, f) in &mut self.followed {
            let Some(state) = self.state.instances.get_mut(id) else { continue };
            for s in &mut f.streams {
                let before = s.punched;
                if let Some(saved) = state.streams.get(s.name) {
                    s.punch(saved.offset);
                }
                if s.punched != before
                    && let Some(saved) = state.streams.get_mut(s.name)
                {
                    saved.punched = s.punched;
                    self.dirty = true;
                }
            }
        }
    }

    /// Save the state atomically and durably (0600): a crash leaves either the old state or the
    /// new, and once this returns the new state survives a power cut, so the blocks punched
    /// after it are never read again as if they still held lines.
    pub fn save(&self) -> Result<(), CollectorError> {
        let path = self.config.dir.join(STATE_FILE);
        let save = |source| CollectorError::SaveState { path: path.clone(), source };
        let bytes = serde_json::to_vec(&self.state).map_err(|e| save(io::Error::other(e)))?;
        enjin_sys::fs::write_private(&path, &bytes).map_err(save)
    }
}

/// Append to the instance's collected file, opening it first if need be.
fn append_records(
    sink: &mut Option<Sink>,
    dir: &Path,
    id: Uuid,
    records: &[Vec<u8>],
    max: u64,
) -> io::Result<()> {
    if sink.is_none() {
        *sink = Some(Sink::open(dir, id)?);
    }
    match sink {
        Some(s) => s.append(records, max),
        None => Ok(()),
    }
}

/// Bring `state` level with what was written for `id` but not saved (the agent died between
/// the two), and cut off a torn last record. True when anything changed.
fn recover(dir: &Path, id: Uuid, state: &mut InstanceState) -> bool {
    let mut changed = false;
    let current = collected_path(dir, id, 0);
    if let Ok(f) = OpenOptions::new().write(true).open(&current)
        && let Ok(bytes) = std::fs::read(&current)
        && !bytes.is_empty()
        && !bytes.ends_with(b"\n")
    {
        let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        tracing::info!(instance = %id, "cutting a torn record off the collected log");
        let _ = f.set_len(keep as u64);
    }
    // Records past the saved seq can only be at the end: in the current file, or in the newest
    // rotation when the current file is new.
    for n in [1, 0] {
        let Ok(bytes) = std::fs::read(collected_path(dir, id, n)) else { continue };
        for raw in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(rec) = serde_json::from_slice::<StoredLine>(raw) else { continue };
            if rec.seq < state.next_seq {
                continue;
            }
            state.next_seq = rec.seq + 1;
            let s = state.streams.entry(rec.stream.clone()).or_default();
            s.offset = s.offset.max(rec.offset);
            changed = true;
        }
    }
    changed
}

#[derive(Debug)]
enum Command {
    Desired(Vec<Uuid>),
}

/// A [`Collector`] on a thread of its own, polling every `poll_every`. Dropping the handle (or
/// [`CollectorHandle::stop`]) makes it collect once more, save and end.
#[derive(Debug)]
pub struct CollectorHandle {
    tx: Option<std::sync::mpsc::Sender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CollectorHandle {
    /// Opens the collector (see [`Collector::open`]) and starts its thread, which polls at once
    /// and then every `poll_every`.
    pub fn spawn(config: CollectorConfig) -> Result<CollectorHandle, CollectorError> {
        let every = config.poll_every;
        let mut collector = Collector::open(config)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("log-collector".into())
            .spawn(move || {
                let mut next = Instant::now();
                loop {
                    let wait = next.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(wait) {
                        Ok(Command::Desired(ids)) => collector.set_desired(ids),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                            collector.poll();
                            return;
                        }
                    }
                    if Instant::now() >= next {
                        collector.poll();
                        next = Instant::now() + every;
                    }
                }
            })
            .map_err(CollectorError::Thread)?;
        Ok(CollectorHandle { tx: Some(tx), thread: Some(thread) })
    }

    /// The children that should run here now (see [`Collector::set_desired`]).
    pub fn set_desired(&self, ids: Vec<Uuid>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Desired(ids));
        }
    }

    /// Collect once more, save and wait for the thread to end. Blocks: call it from a blocking
    /// thread.
    pub fn stop(mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the log collector thread panicked");
        }
    }
}

impl Drop for CollectorHandle {
    fn drop(&mut self) {
        // Ends the thread after a last poll; not joined, so dropping never blocks.
        self.tx = None;
    }
}

/// Lines of the instances `req` names, from their collected files: per instance the newest
/// `limit` lines that pass `since` and `after`, oldest first, instances interleaved by collection
/// time. A reply bigger than [`REPLY_BUDGET`] loses its oldest lines — or its newest when the
/// request follows a cursor (`after`), so the follower picks them up next time. Synchronous:
/// call it from a blocking thread.
pub fn read_logs(dir: &Path, req: &LogsRequest) -> LogsReply {
    let limit = req.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT) as usize;
    let ids: BTreeSet<Uuid> = req.instances.iter().copied().collect();
    let mut per_instance: Vec<VecDeque<LogLine>> = Vec::new();
    for id in ids {
        let after = req.after.get(&id).copied();
        let mut lines: VecDeque<StoredLine> = VecDeque::new();
        for n in (0..=KEPT_ROTATIONS).rev() {
            let path = collected_path(dir, id, n);
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read collected logs");
                    continue;
                }
            };
            for raw in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let Ok(rec) = serde_json::from_slice::<StoredLine>(raw) else { continue };
                if rec.instance != id
                    || req.since.is_some_and(|t| rec.at < t)
                    || after.is_some_and(|a| rec.seq <= a)
                    || lines.back().is_some_and(|last| rec.seq <= last.seq)
                {
                    continue;
                }
                lines.push_back(rec);
                if lines.len() > limit {
                    lines.pop_front();
                }
            }
        }
        per_instance.push(lines.into_iter().map(LogLine::from).collect());
    }
    let mut merged = merge_by_time(per_instance);
    let mut total: usize = merged.iter().map(encoded_len).sum();
    let from_the_end = !req.after.is_empty();
    while total > REPLY_BUDGET {
        let dropped = if from_the_end { merged.pop_back() } else { merged.pop_front() };
        let Some(line) = dropped else { break };
        total -= encoded_len(&line);
    }
    LogsReply { lines: merged.into() }
}

fn encoded_len(line: &LogLine) -> usize {
    serde_json::to_vec(line).map_or(0, |v| v.len() + 1)
}

/// Merge per-instance lists (each in `seq` order) by collection time without reordering any
/// one instance's lines, even if the clock stepped back.
fn merge_by_time(mut lists: Vec<VecDeque<LogLine>>) -> VecDeque<LogLine> {
    let mut out = VecDeque::with_capacity(lists.iter().map(VecDeque::len).sum());
    loop {
        let next = lists
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.front().map(|line| (line.at, i)))
            .min()
            .map(|(_, i)| i);
        let Some(i) = next else { return out };
        if let Some(line) = lists[i].pop_front() {
            out.push_back(line);
        }
    }
}

pub use enjin_model::api::LogsRefused;

/// The reply to the log request `payload`: a [`LogsReply`], or a [`LogsRefused`] when it does
/// not decode or names an instance that neither runs here (`running`) nor has logs here.
pub fn answer(dir: &Path, payload: &[u8], running: &[Uuid]) -> Result<Vec<u8>, serde_json::Error> {
    let req: LogsRequest = match serde_json::from_slice(payload) {
        Ok(req) => req,
        Err(e) => return serde_json::to_vec(&LogsRefused { error: format!("unreadable log request: {e}") }),
    };
    if let Some(id) = req.instances.iter().find(|id| !running.contains(id) && !has_logs(dir, **id)) {
        return serde_json::to_vec(&LogsRefused {
            error: format!("instance {id} does not run on this host"),
        });
    }
    serde_json::to_vec(&read_logs(dir, &req))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use chrono::TimeDelta;

    use super::*;

    fn config(dir: &Path) -> CollectorConfig {
        CollectorConfig { partial_flush: Duration::from_secs(3600), ..CollectorConfig::new(dir) }
    }

    fn append(dir: &Path, id: Uuid, stream: &str, text: &str) {
        let mut f =
            OpenOptions::new().create(true).append(true).open(raw_path(dir, id, stream)).expect("open raw");
        f.write_all(text.as_bytes()).expect("write raw");
    }

    fn all(dir: &Path, id: Uuid) -> Vec<LogLine> {
        read_logs(dir, &LogsRequest { instances: vec![id], limit: Some(MAX_LIMIT), ..LogsRequest::default() })
            .lines
    }

    fn texts(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|l| l.line.as_str()).collect()
    }

    fn seqs(lines: &[LogLine]) -> Vec<u64> {
        lines.iter().map(|l| l.seq).collect()
    }

    #[test]
    fn lines_are_cut_at_newlines_and_long_ones_into_pieces() {
        let mut s = LineSplitter::at(100);
        let lines = s.push(b"one\ntwo\r\nthr", 8);
        assert_eq!(
            lines,
            vec![CutLine { text: b"one".to_vec(), end: 104 }, CutLine { text: b"two".to_vec(), end: 109 }]
        );
        assert_eq!((s.consumed(), s.read_to()), (109, 112));
        assert_eq!(
            s.push(b"ee\n\n", 8),
            vec![CutLine { text: b"three".to_vec(), end: 115 }, CutLine { text: Vec::new(), end: 116 }]
        );
        // Longer than the cap: pieces of at most 8 bytes, the rest held until its newline.
        let lines = s.push(b"abcdefghijklmnopq", 8);
        assert_eq!(texts_of(&lines), vec!["abcdefgh", "ijklmnop"]);
        assert_eq!(s.push(b"\n", 8), vec![CutLine { text: b"q".to_vec(), end: 134 }]);
        // Exactly the cap, then a newline: one line, not a piece and an empty line.
        assert_eq!(texts_of(&s.push(b"12345678\n", 8)), vec!["12345678"]);
        // A cut never splits a UTF-8 character when one starts close by.
        let lines = s.push("abcdefgéé\n".as_bytes(), 8);
        assert_eq!(texts_of(&lines), vec!["abcdefg", "éé"]);
        assert_eq!(s.flush(), None);
        s.push(b"no newline", 64);
        assert_eq!(s.flush(), Some(CutLine { text: b"no newline".to_vec(), end: s.consumed() }));
        assert!(!s.has_pending());
    }

    fn texts_of(lines: &[CutLine]) -> Vec<String> {
        lines.iter().map(|l| String::from_utf8(l.text.clone()).expect("utf-8")).collect()
    }

    #[test]
    fn both_streams_are_collected_in_one_sequence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Uuid::new_v4();
        let mut c = Collector::open(config(dir.path())).expect("open");
        c.set_desired([id]);
        assert_eq!(c.poll().lines, 0, "no files yet");
        append(dir.path(), id, "stdout", "out 1\nout 2\npartial");
        append(dir.path(), id, "stderr", "err 1\n");
        assert_eq!(c.poll().lines, 3);
        let lines = all(dir.path(), id);
        assert_eq!(texts(&lines), vec!["out 1", "out 2", "err 1"]);
        assert_eq!(seqs(&lines), vec![0, 1, 2]);
        assert_eq!(lines[2].stream, "stderr");
        append(dir.path(), id, "stdout", " line\n");
        c.poll();
        assert_eq!(texts(&all(dir.path(), id))[3], "partial line");
        let mode = std::fs::metadata(dir.path().join(STATE_FILE)).expect("state").mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = std::fs::metadata(collected_path(dir.path(), id, 0)).expect("log").mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn collected_logs_rotate_and_keep_two_old_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Uuid::new_v4();
        let mut c = Collector::open(CollectorConfig { max_bytes: 1000, ..config(dir.path()) }).expect("open");
        c.set_desired([id]);
        for i in 0..100 {
            append(dir.path(), id, "stdout", &format!("line {i:03}\n"));
            if i % 7 == 0 {
                c.poll();
            }
        }
        c.poll();
        for n in 0..=2 {
            let size = std::fs::metadata(collected_path(dir.path(), id, n)).expect("kept file").len();
            assert!(size <= 1000, "file {n} is {size} bytes");
        }
        assert!(!collected_path(dir.path(), id, 3).exists());
        let lines = all(dir.path(), id);
        assert!(lines.len() < 100, "the oldest were rotated away");
        let last = seqs(&lines);
        assert_eq!(*last.last().expect("lines"), 99);
        assert!(last.windows(2).all(|w| w[1] == w[0] + 1), "no gap in what is kept: {last:?}");
        assert_eq!(lines.last().map(|l| l.line.as_str()), Some("line 099"));
    }

    #[test]
    fn a_restarted_collector_neither_loses_nor_repeats() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Uuid::new_v4();
        let mut c = Collector::open(config(dir.path())).expect("open");
        c.set_desired([id]);
        append(dir.path(), id, "stdout", "a\nb\n");
        c.poll();
        drop(c);
        append(dir.path(), id, "stdout", "c\n");
        append(dir.path(), id, "stderr", "d\n");
        // A new collector, before it hears the desired set, resumes what it followed.
        let mut c = Collector::open(config(dir.path())).expect("reopen");
        assert_eq!(c.following(), vec![id]);
        c.poll();
        let lines = all(dir.path(), id);
        assert_eq!(texts(&lines), vec!["a", "b", "c", "d"]);
        assert_eq!(seqs(&lines), vec![0, 1, 2, 3]);
    }

    #[test]
    fn records_written_but_not_saved_are_not_repeated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Uuid::new_v4();
        let state = dir.path().join(STATE_FILE);
        let mut c = Collector::open(config(dir.path())).expect("open");
        c.set_desired([id]);
        append(dir.path(), id, "stdout", "a\n");
        c.poll();
        let saved = std::fs::read(&state).expect("state");
        append(dir.path(), id, "stdout", "b\nc\n");
        c.poll();
        drop(c);
        // As if the agent died after appending b and c but before saving: the old state, and a
        // torn record at the end.
        std::fs::write(&state, saved).expect("old state");
        let mut log = OpenOptions::new().append(true).open(collected_path(dir.path(), id, 0)).expect("log");
        log.write_all(b"{\"at\":\"2020-").expect("torn");
        append(dir.path(), id, "stdout", "d\n");
        let mut c = Collector::open(config(dir.path())).expect("reopen");
        c.poll();
        let lines = all(dir.path(), id);
        assert_eq!(texts(&lines), vec!["a", "b", "c", "d"]);
        assert_eq!(seqs(&lines), vec![0, 1, 2, 3]);
    }

    #[test]
    fn logs_of_gone_children_are_removed_past_the_count_or_the_retention() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = CollectorConfig { retire_after: Duration::ZERO, max_retired: 2, ..config(dir.path()) };
        let mut c = Collector::open(cfg.clone()).expect("open");
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            c.set_desired([*id]);
            append(dir.path(), *id, "stdout", "hello\n");
            append(dir.path(), *id, "stderr", "oops\n");
            c.poll();
            // Retirement times order the gone children.
            std::thread::sleep(Duration::from_millis(3));
        }
        c.set_desired([]);
        c.poll();
        c.poll();
        let files = std::fs::read_dir(dir.path()).expect("dir").count();
        let kept: Vec<&Uuid> = ids.iter().filter(|id| has_logs(dir.path(), **id)).collect();
        assert_eq!(kept.len(), 2, "only the newest gone children keep their logs");
        for id in &ids[..3] {
            assert!(!raw_path(dir.path(), *id, "stdout").exists(), "raw file of {id} left");
        }
        // 2 children × (2 raw files + 1 collected) + the collector's state file.
        assert!(files <= 7, "{files} files");
        drop(c);
        // Past the retention period the rest go too.
        let cfg = CollectorConfig { retention: Duration::ZERO, ..cfg };
        let mut c = Collector::open(cfg).expect("reopen");
        c.poll();
        assert!(ids.iter().all(|id| !has_logs(dir.path(), *id)));
    }

    #[test]
    fn a_child_gone_for_good_is_drained_then_let_go_and_resumed_if_it_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Uuid::new_v4();
        let cfg = CollectorConfig { retire_after: Duration::ZERO, ..config(dir.path()) };
        let mut c = Collector::open(cfg.clone()).expect("open");
        c.set_desired([id]);
        append(dir.path(), id, "stdout", "first\nlast words");
        c.poll();
        c.set_desired([]);
        assert_eq!(c.poll().retired, 1);
        assert!(c.following().is_empty());
        assert_eq!(texts(&all(dir.path(), id)), vec!["first", "last words"]);
        // Restarted later: it continues where it left off.
        append(dir.path(), id, "stdout", "\nback\n");
        let mut c = Collector::open(cfg).expect("reopen");
        assert!(c.following().is_empty(), "a retired child is not followed");
        c.set_desired([id]);
        c.poll();
        let lines = all(dir.path(), id);
        assert_eq!(texts(&lines), vec!["first", "last words", "", "back"]);
        assert_eq!(seqs(&lines), vec![0, 1, 2, 3]);
    }

    #[test]
    fn collected_raw_data_is_punched_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = Uuid::new_v4();
        let mut c = Collector::open(config(dir.path())).expect("open");
        c.set_desired([id]);
        let line = format!("{}\n", "x".repeat(999));
        append(dir.path(), id, "stdout", &line.repeat(1024));
        let raw = raw_path(dir.path(), id, "stdout");
        let before = std::fs::metadata(&raw).expect("raw");
        c.poll();
        c.poll();
        let after = std::fs::metadata(&raw).expect("raw");
        assert_eq!(after.len(), before.len(), "the raw file keeps its size");
        let saved: State =
            serde_json::from_slice(&std::fs::read(dir.path().join(STATE_FILE)).expect("state"))
                .expect("state json");
        let punched = saved.instances[&id].streams["stdout"].punched;
        if punched == 0 {
            eprintln!("the temporary directory's filesystem cannot punch holes");
            return;
        }
        assert_eq!(punched, before.len() - before.len() % PUNCH_ALIGN);
        assert!(after.blocks() < before.blocks() / 4, "blocks {} -> {}", before.blocks(), after.blocks());
        assert_eq!(all(dir.path(), id).len(), 1024);
        // The writer goes on appending; the new lines are collected.
        append(dir.path(), id, "stdout", "after the hole\n");
        c.poll();
        assert_eq!(all(dir.path(), id).last().map(|l| l.line.as_str()), Some("after the hole"));
    }

    fn stored(id: Uuid, seq: u64, at: DateTime<Utc>) -> String {
        let l = StoredLine {
            at,
            instance: id,
            stream: "stdout".into(),
            seq,
            line: format!("{id} {seq}"),
            offset: 0,
        };
        format!("{}\n", serde_json::to_string(&l).expect("json"))
    }

    #[test]
    fn requests_filter_by_since_after_and_limit_and_merge_by_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").expect("time").with_timezone(&Utc);
        let at = |s: i64| t0 + TimeDelta::seconds(s);
        // a: seq 0..6 at t0 + 0, 1, … 5 s, across a rotation; b: seq 0..3 at t0 + 1.5, 3.5, 5.5 s.
        let old: String = (0..3).map(|i| stored(a, i, at(i as i64))).collect();
        let new: String = (3..6).map(|i| stored(a, i, at(i as i64))).collect();
        std::fs::write(collected_path(dir.path(), a, 1), old).expect("write");
        std::fs::write(collected_path(dir.path(), a, 0), new).expect("write");
        let bs: String =
            (0..3).map(|i| stored(b, i, at(2 * i as i64 + 1) + TimeDelta::milliseconds(500))).collect();
        std::fs::write(collected_path(dir.path(), b, 0), bs).expect("write");
        let ask = |req: LogsRequest| -> Vec<(Uuid, u64)> {
            read_logs(dir.path(), &req).lines.iter().map(|l| (l.instance, l.seq)).collect()
        };
        let both = vec![a, b];

        assert_eq!(
            ask(LogsRequest { instances: both.clone(), ..LogsRequest::default() }),
            vec![(a, 0), (a, 1), (b, 0), (a, 2), (a, 3), (b, 1), (a, 4), (a, 5), (b, 2)]
        );
        let since = LogsRequest { instances: both.clone(), since: Some(at(4)), ..LogsRequest::default() };
        assert_eq!(ask(since), vec![(a, 4), (a, 5), (b, 2)]);
        let after = LogsRequest {
            instances: both.clone(),
            after: [(a, 3), (b, 1)].into_iter().collect(),
            ..LogsRequest::default()
        };
        assert_eq!(ask(after), vec![(a, 4), (a, 5), (b, 2)]);
        let newest = LogsRequest { instances: both, limit: Some(2), ..LogsRequest::default() };
        assert_eq!(ask(newest), vec![(b, 1), (a, 4), (a, 5), (b, 2)]);
        let unknown = LogsRequest { instances: vec![Uuid::new_v4()], ..LogsRequest::default() };
        assert!(ask(unknown).is_empty());
    }

    #[test]
    fn requests_for_instances_not_here_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (here, ran_here, elsewhere) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        std::fs::write(collected_path(dir.path(), ran_here, 0), stored(ran_here, 0, Utc::now()))
            .expect("write");
        let ask = |ids: Vec<Uuid>| {
            let payload =
                serde_json::to_vec(&LogsRequest { instances: ids, ..LogsRequest::default() }).expect("json");
            answer(dir.path(), &payload, &[here]).expect("answer")
        };
        let ok: LogsReply = serde_json::from_slice(&ask(vec![here, ran_here])).expect("a reply");
        assert_eq!(ok.lines.len(), 1);
        let refused: LogsRefused = serde_json::from_slice(&ask(vec![here, elsewhere])).expect("a refusal");
        assert_eq!(refused.error, format!("instance {elsewhere} does not run on this host"));
        let garbage: LogsRefused =
            serde_json::from_slice(&answer(dir.path(), b"{", &[here]).expect("answer")).expect("a refusal");
        assert!(garbage.error.starts_with("unreadable log request"), "{}", garbage.error);
    }
}
