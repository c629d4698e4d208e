//! File-space helpers: giving back the disk blocks of a range of a file without changing its
//! size or any byte outside the range.

use std::fs::File;

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};

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
    #[error("invalid range {offset}+{len}: it does not fit in a file offset")]
    Range { offset: u64, len: u64 },
    #[error("failed to punch a hole at {offset}+{len}: {source}")]
    Fallocate { offset: u64, len: u64, source: Errno },
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
