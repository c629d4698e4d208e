//! The package store: packages kept by the digest of their bytes, `<dir>/sha256/<hex>`.
//!
//! Identical content is stored once. A package is written to a temporary file in the same
//! directory, synced and renamed into place, so a reader sees either nothing or all of it, and
//! a crash leaves at most a temporary file that the next `open` removes. Every digest is
//! checked to be `sha256:` and 64 lowercase hex digits before it touches the filesystem, so a
//! digest can never name a path outside the store. One store owns its directory.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use enjin_model::kinds::PackageRef;

use crate::package::digest_of;

const ALGORITHM: &str = "sha256";
const TMP_PREFIX: &str = ".tmp-";
/// Temporary files older than this when the store opens were left by a crash.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// A content-addressed directory of packages.
#[derive(Debug, Clone)]
pub struct PackageStore {
    root: PathBuf,
    blobs: PathBuf,
}

/// What [`PackageStore::put`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    /// The package's digest and size, to put in a release or a node's run spec.
    pub package: PackageRef,
    /// The package was already there; nothing was written.
    pub existed: bool,
}

/// Why a package store operation failed. `InvalidDigest`, `NotFound` and `DigestMismatch` are
/// the caller's fault (a bad or unknown digest, bytes that are not what was announced); `Io`
/// is the store's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The digest is not `sha256:` and 64 lowercase hex digits; checked before any path is
    /// made from it.
    #[error("{digest:?} is not a package digest (sha256: and 64 lowercase hex digits)")]
    InvalidDigest {
        /// The digest as given.
        digest: String,
    },
    /// No package with this digest is stored.
    #[error("package {digest} is not in the store")]
    NotFound {
        /// The digest asked for.
        digest: String,
    },
    /// The bytes given to [`PackageStore::put_verified`] do not hash to the digest announced;
    /// nothing was stored.
    #[error("package bytes have digest {actual}, not the expected {expected}")]
    DigestMismatch {
        /// The digest announced.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// A filesystem operation on the store failed.
    #[error("package store {}: {source}", path.display())]
    Io {
        /// The file or directory operated on.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

impl PackageStore {
    /// Open (creating, mode 0700) the store at `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let root = dir.as_ref().to_path_buf();
        let blobs = root.join(ALGORITHM);
        for d in [&root, &blobs] {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(d).map_err(io_at(d))?;
        }
        let store = PackageStore { root, blobs };
        store.remove_stale_temporaries()?;
        Ok(store)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Store `bytes` under their digest.
    pub fn put(&self, bytes: &[u8]) -> Result<PutOutcome, StoreError> {
        let digest = digest_of(bytes);
        self.write(&digest, bytes)
    }

    /// Store `bytes`, refusing them unless their digest is `expected` (an upload whose
    /// digest the client announced).
    pub fn put_verified(&self, bytes: &[u8], expected: &str) -> Result<PutOutcome, StoreError> {
        check(expected)?;
        let actual = digest_of(bytes);
        if actual != expected {
            return Err(StoreError::DigestMismatch { expected: expected.to_string(), actual });
        }
        self.write(&actual, bytes)
    }

    fn write(&self, digest: &str, bytes: &[u8]) -> Result<PutOutcome, StoreError> {
        let path = self.path(digest)?;
        let package = PackageRef { digest: digest.to_string(), size: bytes.len() as u64 };
        // Same digest and same size: the same bytes. A file of another size is a torn or
        // damaged copy, and is replaced.
        if fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == package.size) {
            return Ok(PutOutcome { package, existed: true });
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(&self.blobs)
            .map_err(io_at(&self.blobs))?;
        tmp.write_all(bytes).map_err(io_at(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io_at(tmp.path()))?;
        tmp.persist(&path).map_err(|e| StoreError::Io { path: path.clone(), source: e.error })?;
        self.sync_dir()?;
        tracing::debug!(digest, size = package.size, "stored package");
        Ok(PutOutcome { package, existed: false })
    }

    /// Whether the package is in the store.
    pub fn has(&self, digest: &str) -> Result<bool, StoreError> {
        let path = self.path(digest)?;
        match fs::metadata(&path) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    /// The package's size in bytes.
    pub fn size(&self, digest: &str) -> Result<u64, StoreError> {
        let path = self.path(digest)?;
        fs::metadata(&path).map(|m| m.len()).map_err(|e| self.not_found(digest, path, e))
    }

    /// Up to `max` bytes of the package from `offset`; empty at or past its end.
    pub fn read_chunk(&self, digest: &str, offset: u64, max: usize) -> Result<Vec<u8>, StoreError> {
        let path = self.path(digest)?;
        let mut file = fs::File::open(&path).map_err(|e| self.not_found(digest, path.clone(), e))?;
        let len = file.metadata().map_err(io_at(&path))?.len();
        if offset >= len || max == 0 {
            return Ok(Vec::new());
        }
        let want = usize::try_from(len - offset).map_or(max, |left| left.min(max));
        file.seek(SeekFrom::Start(offset)).map_err(io_at(&path))?;
        let mut chunk = Vec::with_capacity(want);
        file.take(want as u64).read_to_end(&mut chunk).map_err(io_at(&path))?;
        Ok(chunk)
    }

    /// Where the package is (or would be) kept.
    pub fn path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let hex = check(digest)?;
        Ok(self.blobs.join(hex))
    }

    /// Every package in the store, by digest.
    pub fn list(&self) -> Result<Vec<PackageRef>, StoreError> {
        let mut packages = Vec::new();
        for entry in fs::read_dir(&self.blobs).map_err(io_at(&self.blobs))? {
            let entry = entry.map_err(io_at(&self.blobs))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            let digest = format!("{ALGORITHM}:{name}");
            if !PackageRef::valid_digest(&digest) {
                continue;
            }
            match entry.metadata() {
                Ok(m) if m.is_file() => packages.push(PackageRef { digest, size: m.len() }),
                Ok(_) => {}
                // Deleted since the listing was read.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Io { path: entry.path(), source: e }),
            }
        }
        packages.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(packages)
    }

    /// Remove the package; `false` if it was not there.
    pub fn delete(&self, digest: &str) -> Result<bool, StoreError> {
        let path = self.path(digest)?;
        match fs::remove_file(&path) {
            Ok(()) => {
                self.sync_dir()?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    fn not_found(&self, digest: &str, path: PathBuf, e: io::Error) -> StoreError {
        if e.kind() == io::ErrorKind::NotFound {
            StoreError::NotFound { digest: digest.to_string() }
        } else {
            StoreError::Io { path, source: e }
        }
    }

    /// Make a rename or removal in the blob directory durable.
    fn sync_dir(&self) -> Result<(), StoreError> {
        fs::File::open(&self.blobs).and_then(|d| d.sync_all()).map_err(io_at(&self.blobs))
    }

    fn remove_stale_temporaries(&self) -> Result<(), StoreError> {
        let now = SystemTime::now();
        for entry in fs::read_dir(&self.blobs).map_err(io_at(&self.blobs))? {
            let entry = entry.map_err(io_at(&self.blobs))?;
            if !entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                continue;
            }
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > STALE_TMP));
            if stale {
                // Another pass will try again; a leftover is only wasted space.
                if let Err(e) = fs::remove_file(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale temporary file");
                }
            }
        }
        Ok(())
    }
}

/// The hex part of a valid digest.
fn check(digest: &str) -> Result<&str, StoreError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if PackageRef::valid_digest(digest) => Ok(hex),
        _ => Err(StoreError::InvalidDigest { digest: digest.chars().take(100).collect() }),
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_before_any_path_is_made() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = PackageStore::open(dir.path().join("store")).expect("open");
        for bad in ["sha256:../../etc/passwd", "sha256:", "md5:abc", &format!("sha256:{}", "A".repeat(64))] {
            assert!(matches!(store.path(bad), Err(StoreError::InvalidDigest { .. })), "{bad}");
            assert!(matches!(store.has(bad), Err(StoreError::InvalidDigest { .. })), "{bad}");
        }
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(store.path(&good).expect("valid"), dir.path().join("store/sha256").join("a".repeat(64)));
    }

    #[test]
    fn the_store_directory_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = PackageStore::open(dir.path().join("store")).expect("open");
        for d in [store.dir().to_path_buf(), store.dir().join("sha256")] {
            let mode = fs::metadata(&d).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        let put = store.put(b"x").expect("put");
        let mode =
            fs::metadata(store.path(&put.package.digest).expect("path")).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn stale_temporaries_are_removed_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = PackageStore::open(dir.path()).expect("open");
        let stale = store.dir().join("sha256/.tmp-old");
        let fresh = store.dir().join("sha256/.tmp-new");
        fs::write(&stale, b"x").expect("write");
        fs::write(&fresh, b"x").expect("write");
        let old = SystemTime::now() - Duration::from_secs(2 * 3600);
        fs::File::options().write(true).open(&stale).and_then(|f| f.set_modified(old)).expect("set mtime");
        PackageStore::open(dir.path()).expect("reopen");
        assert!(!stale.exists());
        assert!(fresh.exists());
        assert!(store.list().expect("list").is_empty());
    }
}
