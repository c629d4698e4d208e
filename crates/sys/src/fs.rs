//! File helpers: writing a whole file atomically and durably ([`write_atomic`]), and giving back
//! the disk blocks of a range of a file without changing its size or any byte outside the range
//! ([`punch_hole`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};

/// Tells apart the temporary files of concurrent writes in one process; the pid in the name
/// tells processes apart.
static WRITES: AtomicU64 = AtomicU64::new(0);

/// The marker in every temporary file name [`write_atomic`] makes: `.<name>.enjin-tmp.<pid>.<n>`.
const TEMPORARY: &str = ".enjin-tmp.";

/// Whether `name` (a file name, not a path) is one of [`write_atomic`]'s temporary files, left
/// behind by a crash: directory scanners skip them, and cleaners may remove them.
pub fn is_temporary(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with('.') && n.contains(TEMPORARY))
}

/// Replaces the file at `path` with `bytes`, so that a reader or a crash sees either the old
/// file whole or the new one whole, never a mix or a truncated file:
///
/// 1. a new temporary file beside `path` (same directory, so the rename cannot cross
///    filesystems), created exclusively with `mode` — a secret is never briefly readable by
///    others, whatever the umask — and set to exactly `mode` after creation, as the umask may
///    have cleared bits of it (0644 for a file an instance reads);
/// 2. the bytes written and the file fsynced;
/// 3. renamed over `path` (a link at `path` is replaced, never followed);
/// 4. the directory fsynced, so the rename itself survives a crash.
///
/// Each write has a temporary file of its own, so concurrent writes of one path, or of two
/// paths in one directory, never share one; the last rename wins. On an error the temporary
/// file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut attempts = 0;
    let (file, tmp) = loop {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(
            "{TEMPORARY}{}.{}",
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = dir.join(tmp_name);
        match OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp) {
            Ok(f) => break (f, tmp),
            // Left by a crashed process that had our pid (or planted): take the next number,
            // a bounded number of times.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 64 => attempts += 1,
            Err(e) => return Err(e),
        }
    };
    let written = (|| {
        let mut file = file;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// [`write_atomic`] with mode 0600: a file only its owner may read or write (keys, tokens,
/// state that names other tenants).
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// Renames `from` to `to` (replacing it) and fsyncs the directory of `to`, so the rename
/// survives a crash.
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    match to.parent() {
        Some(d) if !d.as_os_str().is_empty() => sync_dir(d),
        _ => sync_dir(Path::new(".")),
    }
}

/// Fsyncs a directory, making the renames and removals in it durable. Filesystems that cannot
/// sync a directory (`EINVAL`) are not an error: the entries are in place all the same.
fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir)?.sync_all() {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        other => other,
    }
}

/// What [`punch_hole`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Punched {
    /// The range now reads as zeros and its whole blocks are freed.
    Freed,
    /// The filesystem cannot punch holes (or not in this file); nothing changed. Callers fall
    /// back to keeping the data.
    Unsupported,
}

/// Why a hole could not be punched.
#[derive(Debug, thiserror::Error)]
pub enum PunchHoleError {
    /// `offset`, `len` or their sum does not fit in an `i64` file offset; nothing was done.
    #[error("invalid range {offset}+{len}: it does not fit in a file offset")]
    Range {
        /// Start of the range, in bytes from the start of the file.
        offset: u64,
        /// Length of the range, in bytes.
        len: u64,
    },
    /// `fallocate(2)` failed for another reason than lack of support (`EBADF` on a file not
    /// open for writing, `EIO`, …).
    #[error("failed to punch a hole at {offset}+{len}: {source}")]
    Fallocate {
        /// Start of the range, in bytes.
        offset: u64,
        /// Length of the range, in bytes.
        len: u64,
        /// What the kernel said.
        source: Errno,
    },
}

/// Frees the disk blocks of `[offset, offset + len)` in `file`, keeping the file's size
/// (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`): the range reads back as zeros, everything
/// else is untouched, so another process may keep appending to the file meanwhile. Partial
/// blocks at the edges are zeroed rather than freed. A zero `len` does nothing.
///
/// Filesystems that cannot do it (`EOPNOTSUPP`; `ENOSYS` on old kernels) give
/// [`Punched::Unsupported`] rather than an error.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> Result<Punched, PunchHoleError> {
    if len == 0 {
        return Ok(Punched::Freed);
    }
    let range = || PunchHoleError::Range { offset, len };
    let end = offset.checked_add(len).ok_or_else(range)?;
    let (Ok(off), Ok(n), Ok(_)) = (i64::try_from(offset), i64::try_from(len), i64::try_from(end)) else {
        return Err(range());
    };
    match fallocate(file, FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE, off, n)
    {
        Ok(()) => Ok(Punched::Freed),
        Err(Errno::EOPNOTSUPP | Errno::ENOSYS) => Ok(Punched::Unsupported),
        Err(source) => Err(PunchHoleError::Fallocate { offset, len, source }),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn a_punched_range_frees_its_blocks_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raw.log");
        let mut file =
            std::fs::OpenOptions::new().create(true).append(true).read(true).open(&path).expect("open");
        let head = vec![b'a'; 4 * MIB];
        let tail = b"the tail survives\n";
        file.write_all(&head).expect("write");
        file.write_all(tail).expect("write");
        file.sync_all().expect("sync");
        let before = file.metadata().expect("stat");

        let punched = punch_hole(&file, 0, head.len() as u64).expect("punch");
        if punched == Punched::Unsupported {
            eprintln!("the filesystem of the temporary directory cannot punch holes; nothing to check");
            return;
        }
        file.sync_all().expect("sync");
        let after = file.metadata().expect("stat");
        assert_eq!(after.len(), before.len(), "the size is kept");
        // 512-byte units: 4 MiB of data is 8192 of them; at least most must be gone.
        assert!(
            after.blocks() + 4096 < before.blocks(),
            "blocks {} -> {}: the range was not freed",
            before.blocks(),
            after.blocks()
        );

        let mut reader = std::fs::File::open(&path).expect("open");
        let mut zeros = vec![1u8; 4096];
        reader.read_exact(&mut zeros).expect("read the hole");
        assert!(zeros.iter().all(|&b| b == 0), "the hole reads as zeros");
        reader.seek(SeekFrom::Start(head.len() as u64)).expect("seek");
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).expect("read");
        assert_eq!(rest, tail);

        // An appender goes on writing after the hole as if nothing happened.
        file.write_all(b"more\n").expect("append");
        assert_eq!(file.metadata().expect("stat").len(), before.len() + 5);
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn an_atomic_write_replaces_the_file_with_exactly_the_mode_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tls.key");
        write_private(&path, b"first").expect("write");
        write_atomic(&path, b"second", 0o644).expect("rewrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644, "the mode asked, whatever the umask and the old file's mode");
        write_private(&path, b"third").expect("rewrite");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(names(dir.path()), ["tls.key"], "no temporary file is left behind");
    }

    #[test]
    fn a_link_in_place_is_replaced_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").expect("write");
        let path = dir.path().join("state.json");
        std::os::unix::fs::symlink(&victim, &path).expect("symlink");
        write_private(&path, b"{}").expect("write");
        assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
        assert!(!std::fs::symlink_metadata(&path).expect("lstat").file_type().is_symlink());
        assert_eq!(std::fs::read(&path).expect("read"), b"{}");
    }

    #[test]
    fn concurrent_writes_of_one_directory_never_share_a_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let dir = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        // Two files whose names differ only in the extension, as tls.key and
                        // tls.crt do, and one file every thread writes.
                        let body = format!("{t}:{i};").repeat(100);
                        write_private(&dir.join(format!("tls.{}", t % 2)), body.as_bytes()).expect("write");
                        write_private(&dir.join("shared"), body.as_bytes()).expect("write");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        for name in ["tls.0", "tls.1", "shared"] {
            let text = std::fs::read_to_string(dir.path().join(name)).expect("read");
            let unit = &text[..=text.find(';').expect("one write's unit")];
            assert_eq!(text, unit.repeat(100), "{name} holds one whole write");
        }
        assert_eq!(names(dir.path()), ["shared", "tls.0", "tls.1"]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).expect("a directory where the file would go");
        assert!(write_private(&path, b"x").is_err(), "a rename over a directory fails");
        assert_eq!(names(dir.path()), ["taken"]);
        assert!(write_private(Path::new("/"), b"x").is_err(), "no file name");
    }

    #[test]
    fn temporary_names_are_recognised() {
        let name = |s: &str| std::ffi::OsString::from(s);
        assert!(is_temporary(&name(".state.json.enjin-tmp.42.7")));
        assert!(!is_temporary(&name("state.json")));
        assert!(!is_temporary(&name("enjin-tmp.1")));
    }

    #[test]
    fn empty_and_impossible_ranges() {
        let file = tempfile::tempfile().expect("tempfile");
        assert_eq!(punch_hole(&file, 10, 0).expect("no-op"), Punched::Freed);
        assert!(matches!(punch_hole(&file, u64::MAX, 2), Err(PunchHoleError::Range { .. })));
        assert!(matches!(punch_hole(&file, 1 << 63, 1), Err(PunchHoleError::Range { .. })));
    }

    #[test]
    fn a_read_only_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ro");
        std::fs::write(&path, vec![b'x'; 8192]).expect("write");
        let file = std::fs::File::open(&path).expect("open read-only");
        assert!(matches!(
            punch_hole(&file, 0, 4096),
            Err(PunchHoleError::Fallocate { source: Errno::EBADF, .. })
        ));
    }
}
