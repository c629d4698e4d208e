//! Packages: an app directory as a deterministic tar stream compressed with zstd, and the
//! safe way back.
//!
//! Packing is deterministic so that the same tree always has the same digest, whoever packs
//! it and whenever: entries are sorted by path, every mtime, uid and gid is 0, there are no
//! user or group names, and only the permission bits (`0o777`) of each mode are kept.
//! Regular files, directories and symlinks are stored; sockets, fifos and devices are
//! skipped. `.git` is never packed, and neither is anything an optional `.enjinignore` at the
//! top of the directory names. Its rules, one a line (blank lines and `#` comments allowed):
//!
//! - `name` matches a file or directory of that name at any depth (`node_modules`);
//! - a pattern with a `/` in it matches that path from the top (`/build`, `docs/site`);
//! - `*` matches any run of characters and `?` one character, within one path component
//!   (`*.log`, `tmp/*.pid`);
//! - a trailing `/` makes the rule match directories only;
//! - a matched directory is skipped with everything in it.
//!
//! `**` and `!` negations are not supported and are refused, rather than silently packing
//! something other than what was meant.
//!
//! Unpacking reads untrusted bytes: it refuses absolute paths, `..` components, entries that
//! go through a symlink, symlinks that resolve outside the package (following the package's
//! other symlinks), hard links to anything but a file already unpacked, and device and fifo
//! entries; it caps unpacked bytes, entries and the decompression ratio; and it works in a
//! temporary directory beside the destination that is renamed into place only once all of
//! it has been written, so a failed unpack leaves nothing behind.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

/// The name of the ignore file at the top of an app directory.
pub const IGNORE_FILE: &str = ".enjinignore";
/// The zstd level packages are compressed with: fast, and most of the ratio there is.
pub const ZSTD_LEVEL: i32 = 3;
/// The four bytes every zstd frame starts with.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The largest window a package may need to decompress (32 MiB of memory); level 3 uses 2 MiB.
const ZSTD_WINDOW_LOG_MAX: u32 = 25;
/// Linux's limits on a path and on one of its components.
const MAX_PATH_BYTES: usize = 4096;
const MAX_NAME_BYTES: usize = 255;
/// The largest pax extended header read: real ones are a few hundred bytes.
const MAX_PAX_BYTES: u64 = 64 * 1024;
/// Symlinks followed while resolving one, as the kernel's limit.
const MAX_SYMLINK_HOPS: u32 = 40;

/// Where packing stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackLimits {
    /// Bytes of file content (default 512 MiB).
    pub max_unpacked_bytes: u64,
    /// Files, directories and symlinks (default 100 000, as [`UnpackLimits`]).
    pub max_entries: u64,
}

impl Default for PackLimits {
    fn default() -> Self {
        PackLimits { max_unpacked_bytes: 512 * 1024 * 1024, max_entries: 100_000 }
    }
}

/// A packed directory, in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// The package: a tar stream compressed with zstd.
    pub bytes: Vec<u8>,
    /// `sha256:` and the hex digest of `bytes`.
    pub digest: String,
    /// Regular files and symlinks packed (directories are not counted).
    pub files: u64,
    /// Bytes of file content packed.
    pub unpacked_bytes: u64,
}

/// A packed directory, written to a stream by [`pack_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackSummary {
    /// `sha256:` and the hex digest of the bytes written.
    pub digest: String,
    /// Bytes written: the package's size.
    pub size: u64,
    /// Regular files and symlinks packed (directories are not counted).
    pub files: u64,
    /// Bytes of file content packed.
    pub unpacked_bytes: u64,
}

/// Why a directory could not be packed. Every variant but `Write` is about the app directory
/// (the user can fix it); `Write` is about where the package was going.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// A file, directory, symlink or the ignore file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// What could not be read, under the app directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The ignore file has a rule that cannot be used (`**`, `!`, `..`, or one that matches
    /// nothing).
    #[error("{}:{line}: {message}", path.display())]
    Ignore {
        /// The ignore file.
        path: PathBuf,
        /// The 1-based line of the rule.
        line: usize,
        /// What is wrong with the rule.
        message: String,
    },
    /// The files to pack add up to more than [`PackLimits::max_unpacked_bytes`].
    #[error("{} holds more than {limit} bytes of files, the most a package may", dir.display())]
    TooLarge {
        /// The app directory.
        dir: PathBuf,
        /// The limit passed, in bytes.
        limit: u64,
    },
    /// The directory has more than [`PackLimits::max_entries`] entries to pack.
    #[error("{} holds more than {limit} files and directories, the most a package may", dir.display())]
    TooManyEntries {
        /// The app directory.
        dir: PathBuf,
        /// The limit passed, in entries.
        limit: u64,
    },
    /// A symlink resolves outside the directory, or loops: unpacking would refuse it, so
    /// packing does first.
    #[error(
        "symlink {} points outside the app directory (to {}), or loops; it could not be unpacked",
        path.display(),
        target.display()
    )]
    SymlinkEscapes {
        /// The symlink.
        path: PathBuf,
        /// What it points to, as stored in it.
        target: PathBuf,
    },
    /// A file shrank between the walk of the directory and its reading; packing again once
    /// it is still may succeed.
    #[error("{} changed while it was being packed", path.display())]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// The package could not be written to its destination.
    #[error("cannot write the package of {}: {source}", dir.display())]
    Write {
        /// The app directory being packed.
        dir: PathBuf,
        /// The I/O error of the destination (or of the compressor).
        source: io::Error,
    },
}

/// `sha256:` and 64 lowercase hex digits: the digest of a package's bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Pack `dir` in memory, within the default limits.
pub fn pack(dir: &Path) -> Result<Packed, PackError> {
    pack_with(dir, &PackLimits::default())
}

/// Pack `dir` in memory.
pub fn pack_with(dir: &Path, limits: &PackLimits) -> Result<Packed, PackError> {
    let mut bytes = Vec::new();
    let summary = pack_to(dir, &mut bytes, limits)?;
    Ok(Packed { bytes, digest: summary.digest, files: summary.files, unpacked_bytes: summary.unpacked_bytes })
}

/// Pack `dir` into `out` as it is read, hashing on the way; for packages that should not be
/// held in memory.
pub fn pack_to<W: Write>(dir: &Path, out: W, limits: &PackLimits) -> Result<PackSummary, PackError> {
    let rules = IgnoreRules::load(dir)?;
    let entries = walk(dir, &rules, limits)?;
    let write_err = |source| PackError::Write { dir: dir.to_path_buf(), source };

    let mut encoder = zstd::stream::write::Encoder::new(Hashing::new(out), ZSTD_LEVEL).map_err(write_err)?;
    encoder.include_checksum(true).map_err(write_err)?;
    let mut tar = tar::Builder::new(encoder);
    let (mut files, mut unpacked_bytes) = (0, 0);
    for entry in &entries {
        let mut header = Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(0);
        match &entry.kind {
            Kind::Dir => {
                header.set_entry_type(EntryType::Directory);
                tar.append_data(&mut header, &entry.path, io::empty()).map_err(write_err)?;
            }
            Kind::Symlink(target) => {
                header.set_entry_type(EntryType::Symlink);
                tar.append_link(&mut header, &entry.path, target).map_err(write_err)?;
                files += 1;
            }
            Kind::File(size) => {
                let abs = dir.join(&entry.path);
                let file =
                    fs::File::open(&abs).map_err(|source| PackError::Read { path: abs.clone(), source })?;
                header.set_entry_type(EntryType::Regular);
                header.set_size(*size);
                let read_failed = Cell::new(None);
                let reader = Exact { inner: file.take(*size), left: *size, failed: &read_failed };
                let appended = tar.append_data(&mut header, &entry.path, reader);
                // The tar writer reports the file's errors and the package's alike; only the
                // reader knows which side it was.
                if let Some(kind) = read_failed.take() {
                    return Err(match kind {
                        ReadFailure::Short => PackError::Changed { path: abs },
                        ReadFailure::Io(source) => PackError::Read { path: abs, source },
                    });
                }
                appended.map_err(write_err)?;
                files += 1;
                unpacked_bytes += size;
            }
        }
    }
    let encoder = tar.into_inner().map_err(write_err)?;
    let hashing = encoder.finish().map_err(write_err)?;
    let (digest, size) = hashing.finish();
    Ok(PackSummary { digest, size, files, unpacked_bytes })
}

#[derive(Debug)]
enum Kind {
    Dir,
    File(u64),
    Symlink(PathBuf),
}

#[derive(Debug)]
struct PackEntry {
    path: PathBuf,
    mode: u32,
    kind: Kind,
}

fn walk(root: &Path, rules: &IgnoreRules, limits: &PackLimits) -> Result<Vec<PackEntry>, PackError> {
    let mut entries = Vec::new();
    let mut total: u64 = 0;
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel_dir) = dirs.pop() {
        let abs_dir = root.join(&rel_dir);
        let read_err = |source| PackError::Read { path: abs_dir.clone(), source };
        for child in fs::read_dir(&abs_dir).map_err(read_err)? {
            let child = child.map_err(read_err)?;
            let name = child.file_name();
            if name == ".git" {
                continue;
            }
            let path = rel_dir.join(&name);
            // `DirEntry::metadata` does not follow symlinks, which is what packing one needs.
            let meta =
                child.metadata().map_err(|source| PackError::Read { path: root.join(&path), source })?;
            let ft = meta.file_type();
            if rules.ignores(&path, ft.is_dir()) {
                continue;
            }
            let mode = meta.permissions().mode() & 0o777;
            let kind = if ft.is_dir() {
                dirs.push(path.clone());
                Kind::Dir
            } else if ft.is_file() {
                total = total.saturating_add(meta.len());
                if total > limits.max_unpacked_bytes {
                    return Err(PackError::TooLarge {
                        dir: root.to_path_buf(),
                        limit: limits.max_unpacked_bytes,
                    });
                }
                Kind::File(meta.len())
            } else if ft.is_symlink() {
                let abs = root.join(&path);
                Kind::Symlink(fs::read_link(&abs).map_err(|source| PackError::Read { path: abs, source })?)
            } else {
                tracing::debug!(path = %root.join(&path).display(), "not packing a special file");
                continue;
            };
            entries.push(PackEntry { path, mode, kind });
            if entries.len() as u64 > limits.max_entries {
                return Err(PackError::TooManyEntries { dir: root.to_path_buf(), limit: limits.max_entries });
            }
        }
    }
    // `Path`'s order is component by component, so a directory comes before its contents.
    entries.sort_by(|a, b| a.path.cmp(&b.path));

    let links: HashMap<PathBuf, PathBuf> = entries
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::Symlink(t) => Some((e.path.clone(), t.clone())),
            _ => None,
        })
        .collect();
    for (path, target) in &links {
        if resolve_within(&links, parent_of(path), target, &mut 0).is_none() {
            return Err(PackError::SymlinkEscapes { path: root.join(path), target: target.clone() });
        }
    }
    Ok(entries)
}

fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

/// Where a symlink in directory `base` (relative to the package's top) pointing at `target`
/// ends up, following the package's other symlinks as the kernel would; `None` if it leaves
/// the package or loops. Checking each link on its own is not enough: with `t -> .`, the
/// link `r -> t/..` looks as if it stays at the top but leaves it.
fn resolve_within(
    links: &HashMap<PathBuf, PathBuf>,
    base: &Path,
    target: &Path,
    hops: &mut u32,
) -> Option<PathBuf> {
    let mut at = base.to_path_buf();
    for component in target.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => return None,
            Component::CurDir => {}
            Component::ParentDir => {
                if !at.pop() {
                    return None;
                }
            }
            Component::Normal(name) => {
                at.push(name);
                if let Some(next) = links.get(&at) {
                    *hops += 1;
                    if *hops > MAX_SYMLINK_HOPS {
                        return None;
                    }
                    let from = parent_of(&at).to_path_buf();
                    at = resolve_within(links, &from, next, hops)?;
                }
            }
        }
    }
    Some(at)
}

enum ReadFailure {
    /// The file was shorter than when it was listed.
    Short,
    Io(io::Error),
}

/// Exactly `left` bytes of a file, or an error that says why not.
struct Exact<'a, R> {
    inner: R,
    left: u64,
    failed: &'a Cell<Option<ReadFailure>>,
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) if self.left > 0 && !buf.is_empty() => {
                self.failed.set(Some(ReadFailure::Short));
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being packed"))
            }
            Ok(n) => {
                self.left -= n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.failed.set(Some(ReadFailure::Io(e)));
                Err(copy)
            }
        }
    }
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing { inner, hasher: Sha256::new(), written: 0 }
    }

    fn finish(self) -> (String, u64) {
        (format!("sha256:{:x}", self.hasher.finalize()), self.written)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The rules of an `.enjinignore` (see the module's documentation).
#[derive(Debug, Default)]
struct IgnoreRules {
    rules: Vec<IgnoreRule>,
}

#[derive(Debug)]
struct IgnoreRule {
    /// Matched against the whole relative path, component by component; otherwise against
    /// the last component only.
    anchored: bool,
    components: Vec<Vec<u8>>,
    dirs_only: bool,
}

impl IgnoreRules {
    fn load(root: &Path) -> Result<Self, PackError> {
        let path = root.join(IGNORE_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                Self::parse(&bytes).map_err(|(line, message)| PackError::Ignore { path, line, message })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(IgnoreRules::default()),
            Err(source) => Err(PackError::Read { path, source }),
        }
    }

    fn parse(text: &[u8]) -> Result<Self, (usize, String)> {
        let mut rules = Vec::new();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.trim_ascii();
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            let fail = |m: &str| Err((i + 1, m.to_string()));
            if line.starts_with(b"!") {
                return fail("negated patterns ('!') are not supported");
            }
            let (line, dirs_only) = match line.strip_suffix(b"/") {
                Some(l) => (l, true),
                None => (line, false),
            };
            let (line, rooted) = match line.strip_prefix(b"/") {
                Some(l) => (l, true),
                None => (line, false),
            };
            let components: Vec<Vec<u8>> = line
                .split(|&b| b == b'/')
                .filter(|c| !c.is_empty() && *c != b".")
                .map(<[u8]>::to_vec)
                .collect();
            if components.is_empty() {
                return fail("matches nothing");
            }
            if components.iter().any(|c| c.as_slice() == b"**") {
                return fail("'**' is not supported: use a name to match at any depth");
            }
            if components.iter().any(|c| c.as_slice() == b"..") {
                return fail("'..' cannot match anything inside the app directory");
            }
            let anchored = rooted || components.len() > 1;
            rules.push(IgnoreRule { anchored, components, dirs_only });
        }
        Ok(IgnoreRules { rules })
    }

    /// Whether `path` (relative, as found by the walk) is ignored. Only the path itself needs
    /// checking: a directory that matched was never walked into.
    fn ignores(&self, path: &Path, is_dir: bool) -> bool {
        let parts: Vec<&[u8]> = path.iter().map(OsStr::as_bytes).collect();
        let Some(name) = parts.last() else { return false };
        self.rules.iter().any(|r| {
            if r.dirs_only && !is_dir {
                return false;
            }
            if r.anchored {
                r.components.len() == parts.len() && r.components.iter().zip(&parts).all(|(p, c)| glob(p, c))
            } else {
                r.components.first().is_some_and(|p| glob(p, name))
            }
        })
    }
}

/// Whether `name` matches `pattern`, where `*` is any run of bytes and `?` any one byte.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was and how much of `name` it had swallowed, to backtrack to.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// Where unpacking stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of file content (default 1 GiB).
    pub max_unpacked_bytes: u64,
    /// Entries of any kind (default 100 000).
    pub max_entries: u64,
    /// How many times larger than the package its decompressed stream may be (default
    /// 1000)...
    pub max_ratio: u64,
    /// ...once the stream is past this many bytes (default 64 MiB), so that small packages
    /// of very compressible files are not refused.
    pub ratio_grace_bytes: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_unpacked_bytes: 1024 * 1024 * 1024,
            max_entries: 100_000,
            max_ratio: 1000,
            ratio_grace_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What an unpack wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Regular files, hard links included.
    pub files: u64,
    /// Directories, the parents that entries implied included (the top is not counted).
    pub directories: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Bytes of file content written.
    pub unpacked_bytes: u64,
}

/// Why a package was not unpacked. Whatever the variant, nothing is left at the destination:
/// the work happens in a temporary directory beside it, removed on failure. Every variant but
/// `DestExists` and `Io` is about the package's bytes (they come from a user): retrying the
/// same package gives the same error.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The destination exists (as anything, a dangling symlink included); it is never
    /// overwritten or merged into.
    #[error("{} already exists; a package is unpacked only into a new directory", dest.display())]
    DestExists {
        /// The destination asked for.
        dest: PathBuf,
    },
    /// The bytes do not start with a zstd frame's magic number.
    #[error("the package is not zstd-compressed")]
    NotZstd,
    /// The zstd stream or the tar archive in it is malformed or cut short.
    #[error("the package is corrupt: {message}")]
    Corrupt {
        /// What the decompressor or the tar reader found wrong.
        message: String,
    },
    /// An entry's path is empty, absolute, has a `..` component or a NUL byte, is too long for
    /// Linux, or goes through a symlink or a file unpacked before it.
    #[error("package entry {path:?}: {reason}")]
    UnsafePath {
        /// The entry's path as the package spells it (lossily decoded for display).
        path: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A symlink resolves outside the package (following its other symlinks), or loops.
    #[error("package entry {path:?} is a symlink to {target:?}, which leaves the package or loops")]
    SymlinkEscapes {
        /// The symlink's path in the package.
        path: String,
        /// Where it points, as stored.
        target: String,
    },
    /// A hard link names something other than a regular file unpacked earlier.
    #[error("package entry {path:?} is a hard link to {target:?}, which is not a file unpacked before it")]
    BadHardLink {
        /// The link's path in the package.
        path: String,
        /// What it links to, as stored.
        target: String,
    },
    /// A character device, block device or fifo.
    #[error("package entry {path:?} is a {kind}, which packages may not contain")]
    SpecialFile {
        /// The entry's path in the package.
        path: String,
        /// `character device`, `block device` or `fifo`.
        kind: &'static str,
    },
    /// An entry of a tar type that is neither a file, a directory, a link nor a special file
    /// refused above.
    #[error("package entry {path:?} has an entry type ({entry_type:?}) that is not supported")]
    Unsupported {
        /// The entry's path in the package.
        path: String,
        /// The tar type flag byte.
        entry_type: u8,
    },
    /// Two entries have the same path; the second would overwrite the first.
    #[error("package entry {path:?} appears twice")]
    Duplicate {
        /// The path in the package.
        path: String,
    },
    /// More entries than [`UnpackLimits::max_entries`].
    #[error("the package has more than {limit} entries")]
    TooManyEntries {
        /// The limit passed.
        limit: u64,
    },
    /// More bytes of file content than [`UnpackLimits::max_unpacked_bytes`].
    #[error("the package holds more than {limit} bytes of files")]
    TooLarge {
        /// The limit passed, in bytes.
        limit: u64,
    },
    /// The decompressed stream grew past [`UnpackLimits::max_ratio`] times the compressed
    /// bytes read (beyond the grace): a likely decompression bomb.
    #[error("the package decompresses to more than {limit} times its size")]
    RatioExceeded {
        /// The ratio passed.
        limit: u64,
    },
    /// Writing under the destination (or making the temporary directory beside it) failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// Where the write failed.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// Unpack a package into `dest`, which must not exist yet.
pub fn unpack(bytes: &[u8], dest: &Path, limits: &UnpackLimits) -> Result<UnpackStats, UnpackError> {
    unpack_reader(bytes, dest, limits)
}

/// Unpack a package read from `package` (a file in the store, say) into `dest`, which must
/// not exist yet.
pub fn unpack_reader<R: Read>(
    package: R,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    if dest.symlink_metadata().is_ok() {
        return Err(UnpackError::DestExists { dest: dest.to_path_buf() });
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".enjin-unpack-")
        .tempdir_in(parent)
        .map_err(|source| UnpackError::Io { path: parent.to_path_buf(), source })?;
    // On any error `tmp` is dropped here, and with it all that was unpacked.
    let stats = extract(package, tmp.path(), limits)?;
    let io_err = |source| UnpackError::Io { path: dest.to_path_buf(), source };
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).map_err(io_err)?;
    fs::rename(tmp.path(), dest).map_err(io_err)?;
    // Renamed away: nothing is left for the guard to remove.
    let _renamed = tmp.keep();
    Ok(stats)
}

/// Counts shared between the readers of the two ends of the decompressor, and which limit
/// stopped it, so that an I/O error from deep inside the tar reader can be told apart.
#[derive(Debug)]
struct Meter {
    compressed: Cell<u64>,
    decompressed: Cell<u64>,
    tripped: Cell<Option<Tripped>>,
    limits: UnpackLimits,
}

#[derive(Debug, Clone, Copy)]
enum Tripped {
    TooLarge,
    Ratio,
}

struct Compressed<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Compressed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.compressed.set(self.meter.compressed.get().saturating_add(n as u64));
        Ok(n)
    }
}

struct Decompressed<R> {
    inner: R,
    meter: Rc<Meter>,
    /// The most the tar stream may be: file bytes plus generous room for headers.
    max_stream: u64,
}

impl<R: Read> Read for Decompressed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.meter.decompressed.get().saturating_add(n as u64);
        self.meter.decompressed.set(total);
        let limits = &self.meter.limits;
        let ratio_cap = self.meter.compressed.get().saturating_mul(limits.max_ratio);
        let tripped = if total > self.max_stream {
            Some(Tripped::TooLarge)
        } else if total > limits.ratio_grace_bytes && total > ratio_cap {
            Some(Tripped::Ratio)
        } else {
            None
        };
        if let Some(kind) = tripped {
            self.meter.tripped.set(Some(kind));
            return Err(io::Error::other("package limit reached"));
        }
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Dir,
    File,
    Symlink,
}

struct Extractor<'a> {
    root: &'a Path,
    limits: &'a UnpackLimits,
    meter: Rc<Meter>,
    nodes: HashMap<PathBuf, Node>,
    symlinks: Vec<(PathBuf, PathBuf)>,
    dir_modes: HashMap<PathBuf, u32>,
    stats: UnpackStats,
    buf: Vec<u8>,
}

/// GNU long names and pax records waiting for the entry they describe.
#[derive(Debug, Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
    pax_link: Option<Vec<u8>>,
    pax_size: Option<u64>,
    headers: u32,
}

fn extract<R: Read>(package: R, root: &Path, limits: &UnpackLimits) -> Result<UnpackStats, UnpackError> {
    let meter = Rc::new(Meter {
        compressed: Cell::new(0),
        decompressed: Cell::new(0),
        tripped: Cell::new(None),
        limits: *limits,
    });
    let mut compressed = BufReader::new(Compressed { inner: package, meter: meter.clone() });
    let head = compressed.fill_buf().map_err(|e| corrupt(&meter, &e))?;
    if !head.starts_with(&ZSTD_MAGIC) {
        return Err(UnpackError::NotZstd);
    }
    let mut decoder =
        zstd::stream::read::Decoder::with_buffer(compressed).map_err(|e| corrupt(&meter, &e))?;
    decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(|e| corrupt(&meter, &e))?;
    let max_stream = limits.max_unpacked_bytes.saturating_add(limits.max_entries.saturating_mul(8 * 1024));
    let stream = Decompressed { inner: decoder, meter: meter.clone(), max_stream };
    let mut archive = tar::Archive::new(stream);
    let mut ex = Extractor {
        root,
        limits,
        meter: meter.clone(),
        nodes: HashMap::new(),
        symlinks: Vec::new(),
        dir_modes: HashMap::new(),
        stats: UnpackStats::default(),
        buf: vec![0; 64 * 1024],
    };
    // Raw entries: this code, not the tar reader, decides how much of a long name or pax
    // header it is willing to hold in memory.
    let entries = archive.entries().map_err(|e| corrupt(&meter, &e))?.raw(true);
    let mut pending = Pending::default();
    let mut seen: u64 = 0;
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(&meter, &e))?;
        seen += 1;
        if seen > limits.max_entries.saturating_mul(4) {
            return Err(UnpackError::TooManyEntries { limit: limits.max_entries });
        }
        ex.entry(&mut entry, &mut pending)?;
    }
    if pending.headers > 0 {
        return Err(UnpackError::Corrupt {
            message: "extension headers at the end describe no entry".into(),
        });
    }
    ex.finish()
}

fn corrupt(meter: &Meter, e: &io::Error) -> UnpackError {
    match meter.tripped.get() {
        Some(Tripped::TooLarge) => UnpackError::TooLarge { limit: meter.limits.max_unpacked_bytes },
        Some(Tripped::Ratio) => UnpackError::RatioExceeded { limit: meter.limits.max_ratio },
        None => UnpackError::Corrupt { message: e.to_string() },
    }
}

/// Read all of a small metadata entry, refusing one larger than `max`.
fn read_small<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    max: u64,
    meter: &Meter,
) -> Result<Vec<u8>, UnpackError> {
    if entry.size() > max {
        return Err(UnpackError::Corrupt { message: format!("an extension header is over {max} bytes") });
    }
    let mut data = Vec::new();
    entry.read_to_end(&mut data).map_err(|e| corrupt(meter, &e))?;
    Ok(data)
}

/// A GNU long name: the bytes up to the first NUL.
fn until_nul(mut data: Vec<u8>) -> Vec<u8> {
    if let Some(i) = data.iter().position(|&b| b == 0) {
        data.truncate(i);
    }
    data
}

fn show(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.len() > 200 { format!("{}…", s.chars().take(200).collect::<String>()) } else { s.into_owned() }
}

/// A package path as a relative path of plain components, or why it cannot be one.
fn safe_relative(raw: &[u8]) -> Result<PathBuf, &'static str> {
    if raw.is_empty() {
        return Err("has an empty path");
    }
    if raw.contains(&0) {
        return Err("has a NUL byte in its path");
    }
    if raw.starts_with(b"/") {
        return Err("has an absolute path");
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err("has a path longer than 4096 bytes");
    }
    let mut path = PathBuf::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("has a '..' component"),
            name if name.len() > MAX_NAME_BYTES => return Err("has a name longer than 255 bytes"),
            name => path.push(OsStr::from_bytes(name)),
        }
    }
    Ok(path)
}

impl Extractor<'_> {
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        pending: &mut Pending,
    ) -> Result<(), UnpackError> {
        let entry_type = entry.header().entry_type();
        let header_path = entry.header().path_bytes().into_owned();
        let meta_err =
            |what: &str| UnpackError::Corrupt { message: format!("two {what} headers for one entry") };
        match entry_type {
            EntryType::GNULongName | EntryType::GNULongLink | EntryType::XHeader => {
                pending.headers += 1;
                if pending.headers > 3 {
                    return Err(UnpackError::Corrupt {
                        message: "too many extension headers for one entry".into(),
                    });
                }
            }
            _ => {}
        }
        match entry_type {
            EntryType::GNULongName => {
                let name = until_nul(read_small(entry, MAX_PATH_BYTES as u64 + 1, &self.meter)?);
                if pending.long_name.replace(name).is_some() {
                    return Err(meta_err("long name"));
                }
                return Ok(());
            }
            EntryType::GNULongLink => {
                let name = until_nul(read_small(entry, MAX_PATH_BYTES as u64 + 1, &self.meter)?);
                if pending.long_link.replace(name).is_some() {
                    return Err(meta_err("long link"));
                }
                return Ok(());
            }
            EntryType::XHeader => {
                let data = read_small(entry, MAX_PAX_BYTES, &self.meter)?;
                if pending.pax_path.is_some() || pending.pax_link.is_some() || pending.pax_size.is_some() {
                    return Err(meta_err("pax"));
                }
                for record in tar::PaxExtensions::new(&data) {
                    let record = record.map_err(|e| UnpackError::Corrupt { message: e.to_string() })?;
                    match record.key_bytes() {
                        b"path" => pending.pax_path = Some(record.value_bytes().to_vec()),
                        b"linkpath" => pending.pax_link = Some(record.value_bytes().to_vec()),
                        b"size" => {
                            let size = record.value().ok().and_then(|v| v.parse::<u64>().ok());
                            let size =
                                size.ok_or_else(|| UnpackError::Corrupt { message: "bad pax size".into() })?;
                            pending.pax_size = Some(size);
                        }
                        // Times, owners and the like: packages keep none of them.
                        _ => {}
                    }
                }
                return Ok(());
            }
            // Global pax headers set defaults (times, owners) that packages do not keep.
            EntryType::XGlobalHeader => return Ok(()),
            _ => {}
        }

        let taken = std::mem::take(pending);
        let raw_path = taken.pax_path.or(taken.long_name).unwrap_or(header_path);
        let shown = show(&raw_path);
        if let Some(size) = taken.pax_size {
            // Raw entries are read with the header's size; a pax size that disagrees would
            // make this reader and another see different files.
            if size != entry.size() {
                return Err(UnpackError::Corrupt {
                    message: format!("entry {shown:?} has two different sizes"),
                });
            }
        }
        let link = taken
            .pax_link
            .or(taken.long_link)
            .or_else(|| entry.header().link_name_bytes().map(|l| l.into_owned()));
        self.stats_entry_count()?;
        let rel = safe_relative(&raw_path)
            .map_err(|reason| UnpackError::UnsafePath { path: shown.clone(), reason })?;
        if rel.as_os_str().is_empty() {
            // `./`, the package's top, as `tar -C dir .` writes it.
            return if entry_type == EntryType::Directory {
                Ok(())
            } else {
                Err(UnpackError::UnsafePath {
                    path: shown,
                    reason: "is the package's top but not a directory",
                })
            };
        }
        let mode =
            entry.header().mode().map_err(|e| UnpackError::Corrupt { message: e.to_string() })? & 0o777;
        match entry_type {
            EntryType::Directory => self.directory(&rel, &shown, mode),
            EntryType::Regular | EntryType::Continuous => self.file(entry, &rel, &shown, mode),
            EntryType::Symlink => {
                let target = link.unwrap_or_default();
                self.symlink(&rel, &shown, &target)
            }
            EntryType::Link => {
                let target = link.unwrap_or_default();
                self.hard_link(&rel, &shown, &target)
            }
            EntryType::Char => Err(UnpackError::SpecialFile { path: shown, kind: "character device" }),
            EntryType::Block => Err(UnpackError::SpecialFile { path: shown, kind: "block device" }),
            EntryType::Fifo => Err(UnpackError::SpecialFile { path: shown, kind: "fifo" }),
            other => Err(UnpackError::Unsupported { path: shown, entry_type: other.as_byte() }),
        }
    }

    fn stats_entry_count(&self) -> Result<(), UnpackError> {
        let s = &self.stats;
        if s.files + s.directories + s.symlinks >= self.limits.max_entries {
            return Err(UnpackError::TooManyEntries { limit: self.limits.max_entries });
        }
        Ok(())
    }

    fn io_err(&self, rel: &Path) -> impl FnOnce(io::Error) -> UnpackError {
        let path = self.root.join(rel);
        move |source| UnpackError::Io { path, source }
    }

    /// Make sure every ancestor of `rel` is a directory this unpack made (creating missing
    /// ones), so that nothing is ever written through a symlink, and `rel` itself is new.
    fn prepare(&mut self, rel: &Path, shown: &str) -> Result<(), UnpackError> {
        let mut ancestor = PathBuf::new();
        let parts: Vec<_> = rel.iter().collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            ancestor.push(part);
            match self.nodes.get(&ancestor) {
                Some(Node::Dir) => {}
                Some(_) => {
                    let reason = "goes through a symlink or a file";
                    return Err(UnpackError::UnsafePath { path: shown.to_string(), reason });
                }
                None => {
                    self.stats_entry_count()?;
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(self.root.join(&ancestor))
                        .map_err(self.io_err(&ancestor))?;
                    self.nodes.insert(ancestor.clone(), Node::Dir);
                    self.dir_modes.insert(ancestor.clone(), 0o755);
                    self.stats.directories += 1;
                }
            }
        }
        if self.nodes.contains_key(rel) {
            return Err(UnpackError::Duplicate { path: shown.to_string() });
        }
        Ok(())
    }

    fn directory(&mut self, rel: &Path, shown: &str, mode: u32) -> Result<(), UnpackError> {
        if self.nodes.get(rel) == Some(&Node::Dir) {
            // Made earlier as the parent of an entry listed before it: take its mode now.
            self.dir_modes.insert(rel.to_path_buf(), mode);
            return Ok(());
        }
        self.prepare(rel, shown)?;
        fs::DirBuilder::new().mode(0o700).create(self.root.join(rel)).map_err(self.io_err(rel))?;
        self.nodes.insert(rel.to_path_buf(), Node::Dir);
        self.dir_modes.insert(rel.to_path_buf(), mode);
        self.stats.directories += 1;
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        shown: &str,
        mode: u32,
    ) -> Result<(), UnpackError> {
        self.prepare(rel, shown)?;
        let size = entry.size();
        let total = self.stats.unpacked_bytes.saturating_add(size);
        if total > self.limits.max_unpacked_bytes {
            return Err(UnpackError::TooLarge { limit: self.limits.max_unpacked_bytes });
        }
        let path = self.root.join(rel);
        // `create_new` never follows a symlink, and the parent was checked to be a real
        // directory this unpack made.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(self.io_err(rel))?;
        self.nodes.insert(rel.to_path_buf(), Node::File);
        let mut written: u64 = 0;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(corrupt(&self.meter, &e)),
            };
            file.write_all(&self.buf[..n]).map_err(self.io_err(rel))?;
            written += n as u64;
        }
        if written != size {
            return Err(UnpackError::Corrupt { message: format!("entry {shown:?} is cut short") });
        }
        // Set on the open file, not through the path, and after writing so that a read-only
        // mode does not get in the way; only the permission bits, never setuid, setgid or
        // sticky.
        file.set_permissions(fs::Permissions::from_mode(mode)).map_err(self.io_err(rel))?;
        self.stats.files += 1;
        self.stats.unpacked_bytes = total;
        Ok(())
    }

    fn symlink(&mut self, rel: &Path, shown: &str, target: &[u8]) -> Result<(), UnpackError> {
        let escapes = || UnpackError::SymlinkEscapes { path: shown.to_string(), target: show(target) };
        if target.is_empty()
            || target.contains(&0)
            || target.starts_with(b"/")
            || target.len() > MAX_PATH_BYTES
        {
            return Err(escapes());
        }
        self.prepare(rel, shown)?;
        self.nodes.insert(rel.to_path_buf(), Node::Symlink);
        // Made at the end, once every symlink is known: whether one escapes depends on the
        // others.
        self.symlinks.push((rel.to_path_buf(), PathBuf::from(OsString::from(OsStr::from_bytes(target)))));
        self.stats.symlinks += 1;
        Ok(())
    }

    fn hard_link(&mut self, rel: &Path, shown: &str, target: &[u8]) -> Result<(), UnpackError> {
        let bad = || UnpackError::BadHardLink { path: shown.to_string(), target: show(target) };
        let target_rel = safe_relative(target).map_err(|_| bad())?;
        if self.nodes.get(&target_rel) != Some(&Node::File) {
            return Err(bad());
        }
        self.prepare(rel, shown)?;
        fs::hard_link(self.root.join(&target_rel), self.root.join(rel)).map_err(self.io_err(rel))?;
        self.nodes.insert(rel.to_path_buf(), Node::File);
        self.stats.files += 1;
        Ok(())
    }

    fn finish(self) -> Result<UnpackStats, UnpackError> {
        let links: HashMap<PathBuf, PathBuf> = self.symlinks.iter().cloned().collect();
        for (rel, target) in &self.symlinks {
            if resolve_within(&links, parent_of(rel), target, &mut 0).is_none() {
                return Err(UnpackError::SymlinkEscapes {
                    path: rel.display().to_string(),
                    target: target.display().to_string(),
                });
            }
            std::os::unix::fs::symlink(target, self.root.join(rel)).map_err(self.io_err(rel))?;
        }
        // Deepest first, so that a read-only directory is made so only once all of its
        // contents are in; the owner always keeps rwx, so the tree can be removed again.
        let mut dirs: Vec<_> = self.dir_modes.iter().collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (rel, mode) in dirs {
            fs::set_permissions(self.root.join(rel), fs::Permissions::from_mode(mode | 0o700))
                .map_err(self.io_err(rel))?;
        }
        Ok(self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob(b"*.log", b"a.log"));
        assert!(glob(b"*.log", b".log"));
        assert!(!glob(b"*.log", b"a.logx"));
        assert!(glob(b"a*b*c", b"aXXbYYc"));
        assert!(glob(b"a*b*c", b"abbc"));
        assert!(!glob(b"a*b*c", b"acb"));
        assert!(glob(b"?", b"x"));
        assert!(!glob(b"?", b""));
        assert!(glob(b"*", b""));
        assert!(glob(b"exact", b"exact"));
        assert!(!glob(b"exact", b"exac"));
    }

    #[test]
    fn ignore_rules() {
        let rules = IgnoreRules::parse(b"# comment\n\nnode_modules\n/build\n*.log\ndocs/site\ncache/\n")
            .expect("parses");
        let ig = |p: &str, d: bool| rules.ignores(Path::new(p), d);
        assert!(ig("node_modules", true));
        assert!(ig("web/node_modules", true));
        assert!(ig("build", true));
        assert!(!ig("src/build", true));
        assert!(ig("x/y/debug.log", false));
        assert!(ig("docs/site", true));
        assert!(!ig("other/docs/site", true));
        assert!(ig("cache", true));
        assert!(!ig("cache", false));
        assert!(!ig("src/main.rs", false));
        assert_eq!(IgnoreRules::parse(b"ok\n!keep\n").map(|_| ()).map_err(|e| e.0), Err(2));
        assert!(IgnoreRules::parse(b"a/**/b\n").is_err());
    }

    #[test]
    fn paths() {
        assert_eq!(safe_relative(b"a/./b//c"), Ok(PathBuf::from("a/b/c")));
        assert_eq!(safe_relative(b"./"), Ok(PathBuf::new()));
        assert!(safe_relative(b"/etc/passwd").is_err());
        assert!(safe_relative(b"a/../../b").is_err());
        assert!(safe_relative(b"").is_err());
        assert!(safe_relative(b"a\0b").is_err());
    }

    #[test]
    fn symlink_resolution_follows_other_links() {
        let links: HashMap<PathBuf, PathBuf> =
            [("t", "."), ("r", "t/.."), ("ok", "t/sub"), ("loop1", "loop2"), ("loop2", "loop1")]
                .into_iter()
                .map(|(a, b)| (PathBuf::from(a), PathBuf::from(b)))
                .collect();
        let resolve = |from: &str, to: &str| resolve_within(&links, Path::new(from), Path::new(to), &mut 0);
        assert_eq!(resolve("", "."), Some(PathBuf::new()));
        assert_eq!(resolve("", "t/.."), None);
        assert_eq!(resolve("", "t/sub"), Some(PathBuf::from("sub")));
        assert_eq!(resolve("a/b", "../c"), Some(PathBuf::from("a/c")));
        assert_eq!(resolve("a", "../.."), None);
        assert_eq!(resolve("", "/etc"), None);
        assert_eq!(resolve("", "loop1"), None);
    }

    #[test]
    fn digests_are_sha256_hex() {
        assert_eq!(digest_of(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
