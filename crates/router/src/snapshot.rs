//! The last applied route table on disk, so that a restarted router serves it without the
//! control plane. Written atomically ([`enjin_sys::fs::write_private`]), so a crash leaves either
//! the old table or the new one, never half of one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use enjin_model::api::RouteTable;

/// Why [`save`] failed. The table in memory is unaffected: the router keeps serving it, and only
/// a restart before the next successful save would fall back to an older snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SaveSnapshotError {
    /// The table could not be serialized to JSON; a route table always can, so this is a bug.
    #[error("failed to encode route table {version}: {source}")]
    Encode {
        /// The version of the table that failed to encode.
        version: i64,
        /// serde_json's reason.
        source: serde_json::Error,
    },
    /// The file could not be written (disk full, missing directory, permissions); it still holds
    /// either the old table or the new one, never part of one.
    #[error("failed to write route snapshot {path}: {source}")]
    Write {
        /// The snapshot file that was being replaced.
        path: PathBuf,
        /// The I/O error from writing or renaming it.
        source: io::Error,
    },
}

/// Why [`load`] failed. A missing file is not an error (it is `Ok(None)`); these mean a file is
/// there but cannot be used, and the router must wait for the control plane's table.
#[derive(Debug, thiserror::Error)]
pub enum LoadSnapshotError {
    /// The file exists but could not be read (permissions, I/O error).
    #[error("failed to read route snapshot {path}: {source}")]
    Read {
        /// The snapshot file.
        path: PathBuf,
        /// The I/O error from reading it.
        source: io::Error,
    },
    /// The file was read but does not hold a route table as JSON: written by another version,
    /// or by something else; deleting it is safe.
    #[error("route snapshot {path} is not a route table: {source}")]
    Decode {
        /// The snapshot file.
        path: PathBuf,
        /// serde_json's reason, with the line and column.
        source: serde_json::Error,
    },
}

/// Writes `table` to `path` atomically, readable and writable by the owner only (0600): the
/// table names every app's instances.
pub fn save(path: &Path, table: &RouteTable) -> Result<(), SaveSnapshotError> {
    let json = serde_json::to_vec(table)
        .map_err(|source| SaveSnapshotError::Encode { version: table.version, source })?;
    enjin_sys::fs::write_private(path, &json)
        .map_err(|source| SaveSnapshotError::Write { path: path.to_path_buf(), source })?;
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
