//! Files that hold a secret (a node's key, the NATS operator's seeds): written atomically and
//! private to their owner from the moment they exist, and read only when group and others have
//! no access to them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Why a private file was not read.
#[derive(Debug)]
pub(crate) enum ReadPrivateError {
    /// Opening, examining or reading it failed.
    Io(io::Error),
    /// The path names a directory, FIFO, device or socket.
    NotAFile,
    /// Group or others have some access to it; it holds the file's permission bits.
    Permissions(u32),
}

/// Writes `contents` to `path` atomically: into a new temporary file beside it, created with
/// mode 0600 (never briefly readable by others, whatever the umask), fsynced, renamed over
/// `path`, and the directory fsynced so the rename survives a crash. An existing file at `path`
/// is replaced; on failure the temporary file is removed and `path` is left as it was.
/// `path` must have a file name (the caller checks).
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| io::Error::other("the path has no file name"))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| io::Error::other(e.to_string()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", u64::from_be_bytes(suffix)));
    let tmp = dir.join(tmp_name);
    if let Err(e) = write_new_private(&tmp, contents).and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir).and_then(|d| d.sync_all())
}

/// Creates `path` (it must not exist) with mode 0600 and writes `contents` to it.
pub(crate) fn write_new_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Reads at most `max_len + 1` bytes of `path` (so that a caller sees a file longer than it
/// accepts), refusing a file that group or others can read, write or execute: a secret others
/// could read may already be someone else's, and one others could write may be someone else's
/// key put there for us to use.
pub(crate) fn read_private(path: &Path, max_len: u64) -> Result<Vec<u8>, ReadPrivateError> {
    // Checked before opening too, because opening a FIFO would block.
    if !fs::metadata(path).map_err(ReadPrivateError::Io)?.is_file() {
        return Err(ReadPrivateError::NotAFile);
    }
    let file = File::open(path).map_err(ReadPrivateError::Io)?;
    // The checks use the opened file's metadata, not the path's, so the file cannot be swapped
    // between the check and the read.
    let meta = file.metadata().map_err(ReadPrivateError::Io)?;
    if !meta.is_file() {
        return Err(ReadPrivateError::NotAFile);
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ReadPrivateError::Permissions(mode));
    }
    let mut buf = Vec::new();
    file.take(max_len + 1).read_to_end(&mut buf).map_err(ReadPrivateError::Io)?;
    Ok(buf)
}

/// Best-effort erasure of a copy of secret material. `black_box` keeps the compiler from
/// dropping the writes as dead stores in practice, though (unlike the `zeroize` crate that
/// `SigningKey` itself uses) it is not a guarantee; we avoid an extra dependency for buffers
/// that live for microseconds.
pub(crate) fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}
