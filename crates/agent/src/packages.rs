//! App packages on a host: fetched in chunks from the package store over the bus, checked
//! against their digest (they are content-addressed, so nothing else needs trusting) and
//! unpacked once into `<dir>/<hex>`. `<dir>` is root's alone (0700): a sandboxed instance sees
//! its package only as the read-only lower layer of its own `/app` overlay, never by a host
//! path. Inside, modes are opened up (directories 0777, files 0666 or 0777) because overlayfs
//! checks them against the instance's uid, which owns nothing here, and the instance may change
//! its own copy (the change lands in its upper layer). Packages no child of the host uses any
//! more are removed ([`PackageCache::retain`]).
//!
//! Plain-process children (hosts without root, so no other uid to protect) still get a copy
//! in a directory of their own ([`install`]).

use std::collections::HashSet;
use std::future::Future;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use enjin_model::kinds::PackageRef;
use sha2::{Digest, Sha256};

/// Where package bytes come from.
pub trait PackageSource: Send + Sync + 'static {
    /// Up to one chunk of `digest` from `offset`; empty past the end.
    fn chunk(
        &self,
        digest: &str,
        offset: u64,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, ChunkError>> + Send + '_>>;
}

/// Why a chunk of a package did not come.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The agent has not joined the bus yet.
    #[error("not on the bus yet")]
    NotOnBus,
    /// The request could not be encoded.
    #[error("failed to encode the chunk request: {0}")]
    Encode(#[from] serde_json::Error),
    /// The ring's package store did not answer in time, or the request could not be sent.
    #[error("no answer from the package store: {0}")]
    NoAnswer(#[from] enjin_bus::node::NodeError),
    /// An answer signed by a key that is not a parent key of the ring: ignored.
    #[error("a chunk came from a key that is not the ring's parent")]
    NotFromParent,
}

/// Why a package is not ready for a child. The child is left out of the supervisor's desired
/// set (or, for [`install`], fails to launch) and the next desired set tries again.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The digest is not `sha256:` and 64 lowercase hex digits, another fetch of it is in
    /// progress, or the store ended the package before its announced size.
    #[error("package {digest}: {message}")]
    Fetch {
        /// The package's digest as given.
        digest: String,
        /// What went wrong.
        message: String,
    },
    /// A chunk did not come.
    #[error("package {digest}: {source}")]
    Chunk {
        /// The package's digest.
        digest: String,
        /// Why the chunk did not come.
        source: ChunkError,
    },
    /// The bytes received hash to something else: corrupted or not the package asked for.
    /// Nothing was unpacked.
    #[error("package {digest} does not match its digest (got {got})")]
    Digest {
        /// The digest asked for.
        digest: String,
        /// `sha256:<hex>` of what arrived.
        got: String,
    },
    /// The package is not a valid archive, breaks the unpacker's limits, or the cache directory
    /// could not be written.
    #[error("package {digest}: failed to unpack into {}: {message}", path.display())]
    Unpack {
        /// The package's digest.
        digest: String,
        /// Where it was to be unpacked.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A plain-process child's copy of the package could not be made.
    #[error("failed to install the app into {}: {error}", path.display())]
    Install {
        /// The path being written or removed when it failed.
        path: PathBuf,
        /// The error from the filesystem.
        error: std::io::Error,
    },
}

/// The host's unpacked packages.
pub struct PackageCache {
    dir: PathBuf,
    source: Arc<dyn PackageSource>,
    /// Digests being fetched now, so two children of one release fetch it once.
    busy: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for PackageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackageCache").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

impl PackageCache {
    /// A cache unpacking into `dir` (created, 0700, on the first fetch) and fetching from
    /// `source`.
    pub fn new(dir: PathBuf, source: Arc<dyn PackageSource>) -> Self {
        PackageCache { dir, source, busy: Mutex::new(HashSet::new()) }
    }

    /// Where `digest` is unpacked (whether or not it is yet).
    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(hex_of(digest))
    }

    /// Whether `digest` is a valid sha256 digest already unpacked here.
    pub fn has(&self, digest: &str) -> bool {
        PackageRef::valid_digest(digest) && self.path(digest).is_dir()
    }

    /// Fetch and unpack `package` unless it is here already.
    pub async fn ensure(&self, package: &PackageRef) -> Result<PathBuf, PackageError> {
        let digest = package.digest.clone();
        let err = |message: String| PackageError::Fetch { digest: digest.clone(), message };
        if !PackageRef::valid_digest(&digest) {
            return Err(err("not a sha256 digest".into()));
        }
        if self.has(&digest) {
            return Ok(self.path(&digest));
        }
        if !self.busy.lock().map(|mut b| b.insert(digest.clone())).unwrap_or(false) {
            return Err(err("already being fetched".into()));
        }
        let out = self.fetch(package).await;
        if let Ok(mut b) = self.busy.lock() {
            b.remove(&digest);
        }
        out
    }

    async fn fetch(&self, package: &PackageRef) -> Result<PathBuf, PackageError> {
        let digest = package.digest.clone();
        let mut bytes = Vec::with_capacity(usize::try_from(package.size).unwrap_or(0).min(64 << 20));
        while (bytes.len() as u64) < package.size {
            let chunk = self
                .source
                .chunk(&digest, bytes.len() as u64)
                .await
                .map_err(|source| PackageError::Chunk { digest: digest.clone(), source })?;
            if chunk.is_empty() {
                return Err(PackageError::Fetch {
                    digest: digest.clone(),
                    message: format!("the store ended it at {} of {} bytes", bytes.len(), package.size),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        let got = format!("sha256:{:x}", Sha256::digest(&bytes));
        if got != digest {
            return Err(PackageError::Digest { digest, got });
        }
        let dest = self.path(&digest);
        let (d, dir) = (dest.clone(), self.dir.clone());
        let unpacked = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| e.to_string())?;
            enjin_app::package::unpack(&bytes, &d, &enjin_app::package::UnpackLimits::default())
                .map_err(|e| e.to_string())?;
            open_modes(&d).map_err(|e| format!("{}: {e}", d.display()))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match unpacked {
            Ok(_) => {
                tracing::info!(%digest, path = %dest.display(), "package unpacked");
                Ok(dest)
            }
            Err(message) => Err(PackageError::Unpack { digest, path: dest, message }),
        }
    }
}

/// Opens up the modes of a freshly unpacked tree (see the module doc). The tree is root's,
/// just written by the unpacker and reachable by nobody else; links are left alone.
fn open_modes(dir: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = std::fs::symlink_metadata(entry.path())?;
        if meta.is_dir() {
            open_modes(&entry.path())?;
        } else if meta.is_file() {
            let mode = if meta.mode() & 0o111 != 0 { 0o777 } else { 0o666 };
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

impl PackageCache {
    /// Removes unpacked packages whose digest is not in `keep`.
    pub fn retain(&self, keep: &HashSet<String>) {
        let keep: HashSet<&str> = keep.iter().map(|d| hex_of(d)).collect();
        let busy =
            self.busy.lock().map(|b| b.iter().map(|d| hex_of(d).to_string()).collect()).unwrap_or_default();
        let busy: HashSet<String> = busy;
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Dot names are the unpacker's temporary directories.
            if name.starts_with('.') || keep.contains(name.as_str()) || busy.contains(&name) {
                continue;
            }
            // Root's own tree (the unpacker wrote it; instances only ever see it read-only).
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => tracing::info!(package = %name, "removed a package no child uses"),
                Err(e) => tracing::warn!(package = %name, error = %e, "failed to remove an unused package"),
            }
        }
    }
}

/// Gives a plain-process child a fresh copy of the unpacked package at `to` (its directory),
/// reset at every start as a sandboxed child's `/app` is.
///
/// The child may have planted anything in its old directory — links to files or directories
/// outside, FIFOs, a link in place of the directory itself — so nothing is written through it:
/// the copy is made in a new directory beside it (created here, so nothing can be planted in
/// it), the old one is removed by `remove_dir_all`, which unlinks links rather than following
/// them, and the new one is renamed into its place.
pub fn install(from: &Path, to: &Path) -> Result<(), PackageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| PackageError::Install { path, error }
    };
    let parent = to.parent().ok_or_else(|| io(to)(std::io::Error::other("no parent directory")))?;
    let name = to.file_name().ok_or_else(|| io(to)(std::io::Error::other("no file name")))?;
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let fresh = parent.join(format!(".{}.new", name.to_string_lossy()));
    remove_any(&fresh).map_err(io(&fresh))?;
    std::fs::create_dir(&fresh).map_err(io(&fresh))?;
    copy_tree(from, &fresh).map_err(io(&fresh))?;
    remove_any(to).map_err(io(to))?;
    std::fs::rename(&fresh, to).map_err(io(to))?;
    Ok(())
}

/// Removes whatever is at `path` — a tree, a file, a link (never what it points to) — if
/// anything is.
fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Copies a tree the agent itself unpacked into `to`, a directory it just created.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&src)?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if kind.is_dir() {
            std::fs::create_dir(&dst)?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode() & 0o755 | 0o700))?;
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst)?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode() & 0o755 | 0o600))?;
        }
    }
    Ok(())
}

/// Packages from the package store of the ring's parent, over the bus; until the agent has
/// joined the bus, fetches fail (and are tried again with the next desired set).
#[derive(Debug, Default)]
pub struct BusPackageSource {
    node: std::sync::OnceLock<Arc<enjin_bus::node::BusNode>>,
}

/// How long one chunk may take.
const CHUNK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

impl BusPackageSource {
    /// Fetch over `node` from now on; only the first call counts.
    pub fn attach(&self, node: Arc<enjin_bus::node::BusNode>) {
        let _ = self.node.set(node);
    }
}

impl PackageSource for BusPackageSource {
    fn chunk(
        &self,
        digest: &str,
        offset: u64,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, ChunkError>> + Send + '_>> {
        let req = enjin_model::api::PackageChunkRequest { digest: digest.to_string(), offset };
        Box::pin(async move {
            let node = self.node.get().ok_or(ChunkError::NotOnBus)?;
            let payload = serde_json::to_vec(&req)?;
            let reply = node.request(enjin_model::api::PACKAGES_TOPIC, payload, CHUNK_TIMEOUT).await?;
            // Only the parent's store is asked; any other answer is ignored.
            if !node.is_from_parent(&reply) {
                return Err(ChunkError::NotFromParent);
            }
            Ok(reply.into_payload())
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn install_copies_modes_and_links_and_resets_every_start() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("pkg");
        std::fs::create_dir_all(from.join("bin")).unwrap();
        std::fs::write(from.join("bin/run"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(from.join("bin/run"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("bin/run", from.join("run")).unwrap();
        let to = dir.path().join("work/child");
        install(&from, &to).unwrap();
        let mode = std::fs::metadata(to.join("bin/run")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o755);
        assert_eq!(std::fs::read_link(to.join("run")).unwrap(), Path::new("bin/run"));
        // A restart starts from the package again, as a sandboxed child's /app does.
        std::fs::write(to.join("bin/run"), "changed").unwrap();
        std::fs::write(to.join("extra"), "left behind").unwrap();
        install(&from, &to).unwrap();
        assert_eq!(std::fs::read_to_string(to.join("bin/run")).unwrap(), "#!/bin/sh\n");
        assert!(!to.join("extra").exists());
    }

    /// What a hostile child can leave in its directory before a restart: a packaged file
    /// replaced by a link to a file outside, a directory replaced by a link to a directory
    /// outside, a FIFO, a hard link to a file outside, and the directory itself replaced by a
    /// link. Nothing outside may change, and the child gets a clean copy.
    #[test]
    fn install_never_writes_through_what_the_child_planted() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("pkg");
        std::fs::create_dir_all(from.join("lib")).unwrap();
        std::fs::write(from.join("app.py"), "print('hi')\n").unwrap();
        std::fs::write(from.join("lib/mod.py"), "x = 1\n").unwrap();
        std::fs::write(from.join("fifo"), "not a fifo\n").unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(outside.join("etc")).unwrap();
        std::fs::write(outside.join("etc/passwd"), "root:x:0:0\n").unwrap();
        std::fs::write(outside.join("hard"), "precious\n").unwrap();
        let to = dir.path().join("work/child");
        install(&from, &to).unwrap();

        // The child's work, between two starts.
        std::fs::remove_file(to.join("app.py")).unwrap();
        std::os::unix::fs::symlink(outside.join("etc/passwd"), to.join("app.py")).unwrap();
        std::fs::remove_dir_all(to.join("lib")).unwrap();
        std::os::unix::fs::symlink(outside.join("etc"), to.join("lib")).unwrap();
        std::fs::remove_file(to.join("fifo")).unwrap();
        nix_mkfifo(&to.join("fifo"));
        std::fs::hard_link(outside.join("hard"), to.join("hard")).unwrap();
        install(&from, &to).unwrap();
        assert_eq!(std::fs::read_to_string(outside.join("etc/passwd")).unwrap(), "root:x:0:0\n");
        assert_eq!(std::fs::read_dir(outside.join("etc")).unwrap().count(), 1, "nothing written into etc");
        assert_eq!(std::fs::read_to_string(outside.join("hard")).unwrap(), "precious\n");
        assert_eq!(
            std::fs::metadata(outside.join("hard")).unwrap().nlink(),
            1,
            "the hard link went, not the file"
        );
        assert_eq!(std::fs::read_to_string(to.join("app.py")).unwrap(), "print('hi')\n");
        assert!(std::fs::symlink_metadata(to.join("lib")).unwrap().is_dir());
        assert_eq!(std::fs::read_to_string(to.join("fifo")).unwrap(), "not a fifo\n");

        // The directory itself replaced by a link to a directory outside.
        std::fs::remove_dir_all(&to).unwrap();
        std::os::unix::fs::symlink(outside.join("etc"), &to).unwrap();
        install(&from, &to).unwrap();
        assert!(std::fs::symlink_metadata(&to).unwrap().is_dir(), "a real directory again");
        assert_eq!(std::fs::read_dir(outside.join("etc")).unwrap().count(), 1);
        assert_eq!(std::fs::read_to_string(outside.join("etc/passwd")).unwrap(), "root:x:0:0\n");
    }

    fn nix_mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo").arg(path).status().unwrap();
        assert!(status.success());
    }
}
