//! Size-limited filesystems for sandboxes: a sparse file formatted as ext4 (`mkfs.ext4` from
//! e2fsprogs) and attached to a loop device. The kernel enforces the size: a write past it
//! fails with `ENOSPC` inside the sandbox and never touches the host's filesystem beyond the
//! image's own blocks.
//!
//! This module never mounts anything: the sandboxed child mounts the device in its own mount
//! namespace ([`crate::sandbox::Jail::writable`]). The loop device is attached with
//! `LO_FLAGS_AUTOCLEAR`, so it detaches itself when the last user lets go — the caller's
//! [`LoopDevice`] handle and the sandbox's mount, which dies with the sandbox's mount
//! namespace. Nothing is left to clean up but the image file.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a sandbox disk could not be made or attached.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image file could not be created or sized (something other than a regular file is
    /// in the way, no space, no permission).
    #[error("failed to create disk image {}: {source}", path.display())]
    Create {
        /// The image file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// `mkfs.ext4` could not be run, or exited with an error; the image is left unformatted.
    #[error("mkfs.ext4 failed on {}: {message}", path.display())]
    Format {
        /// The image file.
        path: PathBuf,
        /// Why it could not run, or its exit status and standard error.
        message: String,
    },
    /// Opening the image, `/dev/loop-control` or a loop device, or configuring one, failed;
    /// also after 16 tries when other processes kept taking the free device first.
    #[error("failed to attach {} to a loop device: {source}", path.display())]
    Attach {
        /// The image file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The size asked for, in bytes, which is below [`MIN_BYTES`].
    #[error("disk size {0} bytes is below the 4 MiB minimum")]
    TooSmall(u64),
}

/// The smallest disk worth formatting (ext4's own metadata needs about a megabyte).
pub const MIN_BYTES: u64 = 4 << 20;

/// Creates (or replaces) `image` as a sparse file of `bytes`, mode 0600, and formats it ext4
/// without a journal (the disk is thrown away at every start, so nothing needs replaying)
/// and without reserved blocks (nobody in the sandbox is root).
pub fn format_ext4(image: &Path, bytes: u64) -> Result<(), DiskError> {
    if bytes < MIN_BYTES {
        return Err(DiskError::TooSmall(bytes));
    }
    let create = |source| DiskError::Create { path: image.to_path_buf(), source };
    let _ = fs::remove_file(image);
    let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(image).map_err(create)?;
    file.set_len(bytes).map_err(create)?;
    drop(file);
    let out = Command::new(mkfs_ext4())
        .args(["-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "lazy_itable_init=1,nodiscard"])
        .arg(image)
        .output()
        .map_err(|e| DiskError::Format { path: image.to_path_buf(), message: e.to_string() })?;
    if !out.status.success() {
        return Err(DiskError::Format {
            path: image.to_path_buf(),
            message: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(())
}

/// Whether `mkfs.ext4` can be found.
pub fn available() -> bool {
    Path::new(&mkfs_ext4()).is_file() && Path::new("/dev/loop-control").exists()
}

fn mkfs_ext4() -> PathBuf {
    ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4", "/usr/bin/mkfs.ext4"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("mkfs.ext4"))
}

/// An attached loop device. Dropping it closes the caller's handle; the device detaches once
/// nothing else (a mount) holds it.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    _device: File,
}

impl LoopDevice {
    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Attaches `image` to a free loop device, autoclearing.
    pub fn attach(image: &Path) -> Result<LoopDevice, DiskError> {
        let fail = |source| DiskError::Attach { path: image.to_path_buf(), source };
        let backing = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(image)
            .map_err(fail)?;
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/loop-control")
            .map_err(fail)?;
        // Another process may take the free device between asking and configuring: retry.
        let mut last = io::Error::from(io::ErrorKind::WouldBlock);
        for _ in 0..16 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
            let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if n < 0 {
                return Err(fail(io::Error::last_os_error()));
            }
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let device =
                match OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(&path) {
                    Ok(d) => d,
                    Err(e) => {
                        last = e;
                        continue;
                    }
                };
            let mut config = LoopConfig {
                fd: u32::try_from(backing.as_raw_fd()).map_err(|_| fail(io::Error::other("bad fd")))?,
                block_size: 0,
                info: LoopInfo64::default(),
                reserved: [0; 8],
            };
            config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
            // SAFETY: LOOP_CONFIGURE reads one `struct loop_config` (matching layout below)
            // from a live local.
            let ret =
                unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config as *const LoopConfig) };
            if ret == 0 {
                return Ok(LoopDevice { path, _device: device });
            }
            last = io::Error::last_os_error();
            if last.raw_os_error() != Some(libc::EBUSY) {
                return Err(fail(last));
            }
        }
        Err(fail(last))
    }
}

/// Detaches every loop device whose backing file is below `dir` (as the kernel names it, which
/// may end in ` (deleted)`), returning the devices detached. A device still mounted somewhere
/// only loses its autoclear wait: the kernel detaches it once the mount goes.
pub fn detach_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let prefix = dir.to_string_lossy().trim_end_matches('/').to_string() + "/";
    for entry in fs::read_dir("/sys/block").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = fs::read_to_string(entry.path().join("loop/backing_file")) else { continue };
        if !backing.trim_end().starts_with(&prefix) {
            continue;
        }
        let path = PathBuf::from(format!("/dev/{name}"));
        let Ok(device) = OpenOptions::new().read(true).custom_flags(libc::O_CLOEXEC).open(&path) else {
            continue;
        };
        // SAFETY: LOOP_CLR_FD takes no argument; the fd is a live loop device.
        let ret = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CLR_FD, 0) };
        if ret == 0 {
            out.push(path);
        }
    }
    out
}

const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
#[derive(Debug)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

impl Default for LoopInfo64 {
    fn default() -> Self {
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        }
    }
}

/// `struct loop_config` of `<linux/loop.h>` (kernel ≥ 5.8).
#[repr(C)]
#[derive(Debug)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_struct_sizes_match() {
        assert_eq!(size_of::<super::LoopInfo64>(), 232);
        assert_eq!(size_of::<super::LoopConfig>(), 304);
    }
}
