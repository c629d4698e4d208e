//! The zone on disk, so that a restarted DNS server answers from its last zone before (or
//! without) hearing from the control plane. A save replaces the file atomically: a reader, or a
//! crash at any point, sees the old zone or the new one, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use enjin_model::api::DnsZone;

#[derive(Debug, thiserror::Error)]
pub enum SaveSnapshotError {
    #[error("failed to encode dns zone version {version}: {source}")]
    Encode {
        version: i64,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to write dns zone snapshot {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LoadSnapshotError {
    #[error("failed to read dns zone snapshot {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to decode dns zone snapshot {path}: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Tells apart temporary files of concurrent saves in one process.
static SAVES: AtomicU64 = AtomicU64::new(0);

/// Writes `zone` to `path` (JSON, mode 0600) through a temporary file in the same directory and
/// a rename, then syncs the directory so the rename itself survives a crash.
pub fn save(path: &Path, zone: &DnsZone) -> Result<(), SaveSnapshotError> {
    let bytes = serde_json::to_vec(zone)
        .map_err(|source| SaveSnapshotError::Encode { version: zone.version, source })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp =
        dir.join(format!(".{name}.tmp.{}.{}", std::process::id(), SAVES.fetch_add(1, Ordering::Relaxed)));
    let result = write_new(&tmp, &bytes)
        .and_then(|()| fs::rename(&tmp, path))
        .and_then(|()| File::open(dir)?.sync_all());
    if result.is_err() {
        // Best effort: a leftover temporary file is harmless, only untidy.
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|source| SaveSnapshotError::Write { path: path.to_owned(), source })?;
    tracing::debug!(path = %path.display(), version = zone.version, "dns zone snapshot saved");
    Ok(())
}

fn write_new(tmp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // The zone lists every address in the deployment; only its owner should read it.
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(tmp)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Reads the zone saved at `path`; `Ok(None)` if there is none yet.
pub fn load(path: &Path) -> Result<Option<DnsZone>, LoadSnapshotError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LoadSnapshotError::Read { path: path.to_owned(), source }),
    };
    let zone = serde_json::from_slice(&bytes)
        .map_err(|source| LoadSnapshotError::Decode { path: path.to_owned(), source })?;
    Ok(Some(zone))
}
