//! The last applied route table on disk, so that a restarted router serves it without the
//! control plane. Written whole to a temporary file beside it, then renamed over it, so a crash
//! leaves either the old table or the new one, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use enjin_model::api::RouteTable;

#[derive(Debug, thiserror::Error)]
pub enum SaveSnapshotError {
    #[error("failed to encode route table {version}: {source}")]
    Encode { version: i64, source: serde_json::Error },
    #[error("failed to write route snapshot {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("failed to replace route snapshot {path}: {source}")]
    Rename { path: PathBuf, source: io::Error },
}

#[derive(Debug, thiserror::Error)]
pub enum LoadSnapshotError {
    #[error("failed to read route snapshot {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("route snapshot {path} is not a route table: {source}")]
    Decode { path: PathBuf, source: serde_json::Error },
}

/// Writes `table` to `path` atomically, readable and writable by the owner only (0600): the
/// table names every app's instances.
pub fn save(path: &Path, table: &RouteTable) -> Result<(), SaveSnapshotError> {
    let json = serde_json::to_vec(table)
        .map_err(|source| SaveSnapshotError::Encode { version: table.version, source })?;
    let temp = temp_path(path);
    let write = |temp: &Path| -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(temp)?;
        // `mode` applies only when the file is created; a temporary file left by a crash keeps
        // whatever mode it had.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(&json)?;
        file.sync_all()
    };
    if let Err(source) = write(&temp) {
        let _ = fs::remove_file(&temp);
        return Err(SaveSnapshotError::Write { path: temp, source });
    }
    if let Err(source) = fs::rename(&temp, path) {
        let _ = fs::remove_file(&temp);
        return Err(SaveSnapshotError::Rename { path: path.to_path_buf(), source });
    }
    // The rename is durable only once the directory is synced. Some filesystems refuse to
    // sync a directory; the table is still in place, so that is not worth failing for.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dir) = File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// The table saved at `path`, or `None` if there is none.
pub fn load(path: &Path) -> Result<Option<RouteTable>, LoadSnapshotError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LoadSnapshotError::Read { path: path.to_path_buf(), source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| LoadSnapshotError::Decode { path: path.to_path_buf(), source })
}

/// `.<name>.tmp` beside `path`: same directory, so the rename cannot cross filesystems.
fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}
