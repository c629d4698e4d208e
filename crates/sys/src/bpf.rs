//! The little of eBPF the host's fast path needs, through `bpf(2)` directly: hash maps (create,
//! update, delete), loading a `sched_cls` program from instructions the caller assembled, and
//! attaching it to an interface's ingress as a tcx link (Linux 6.6 and later).
//!
//! Everything is held by file descriptors: a map, a program or a link lives as long as its
//! [`OwnedFd`] (and whatever the kernel holds: an attached link keeps its program, a loaded
//! program its maps). Nothing is pinned, so when the process that made them exits, its links
//! detach and traffic takes the kernel's ordinary path again.

use std::ffi::c_void;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One eBPF instruction, in the kernel's encoding (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// Destination register (low nibble) and source register (high nibble).
    pub regs: u8,
    /// Signed offset.
    pub off: i16,
    /// Signed immediate.
    pub imm: i32,
}

/// Why a `bpf(2)` call failed.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The kernel refused the call (no eBPF, not permitted, a bad argument).
    #[error("bpf({what}) failed: {errno}")]
    Call {
        /// The command that failed.
        what: &'static str,
        /// The kernel's error.
        errno: nix::errno::Errno,
    },
    /// The verifier refused the program; its log says why.
    #[error("the kernel's verifier refused program {name}: {errno}: {log}")]
    Verifier {
        /// The program's name.
        name: String,
        /// The kernel's error.
        errno: nix::errno::Errno,
        /// The verifier log's last lines.
        log: String,
    },
}

const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_int = 4;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_LINK_CREATE: libc::c_int = 28;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;

/// The attribute union is 144 bytes on current kernels; a larger, zeroed buffer is accepted
/// by every kernel that knows the commands used here.
#[repr(C, align(8))]
struct Attr([u8; 160]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 160])
    }
    fn u32(&mut self, at: usize, v: u32) -> &mut Self {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, at: usize, v: u64) -> &mut Self {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn name(&mut self, at: usize, name: &str) -> &mut Self {
        // BPF_OBJ_NAME_LEN is 16 with the terminating NUL; the kernel allows [A-Za-z0-9_.].
        let clean: Vec<u8> =
            name.bytes().filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.').take(15).collect();
        self.0[at..at + clean.len()].copy_from_slice(&clean);
        self
    }
}

fn bpf(cmd: libc::c_int, attr: &mut Attr) -> Result<libc::c_long, nix::errno::Errno> {
    // SAFETY: `attr` is a zero-initialised buffer at least as large as `union bpf_attr` for the
    // commands used here, and every pointer stored in it points to memory the caller keeps
    // alive for the duration of the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr() as *mut c_void, attr.0.len() as libc::c_uint)
    };
    if ret < 0 { Err(nix::errno::Errno::last()) } else { Ok(ret) }
}

fn fd(ret: libc::c_long) -> OwnedFd {
    // SAFETY: the commands that return a file descriptor return a new one, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(ret as i32) }
}

/// A hash map with fixed-size keys and values.
#[derive(Debug)]
pub struct HashMap {
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
}

impl HashMap {
    /// Create a map of at most `max_entries` entries.
    pub fn create(name: &str, key_size: u32, value_size: u32, max_entries: u32) -> Result<HashMap, BpfError> {
        let mut attr = Attr::new();
        attr.u32(0, BPF_MAP_TYPE_HASH)
            .u32(4, key_size)
            .u32(8, value_size)
            .u32(12, max_entries)
            .name(28, name);
        let ret =
            bpf(BPF_MAP_CREATE, &mut attr).map_err(|errno| BpfError::Call { what: "map create", errno })?;
        Ok(HashMap { fd: fd(ret), key_size: key_size as usize, value_size: value_size as usize })
    }

    /// The map's descriptor, for [`Asm::load_map`]-style references in a program.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Insert or replace `key`'s value.
    ///
    /// # Panics
    /// When `key` or `value` is not the map's size (a caller's bug, never input).
    pub fn update(&self, key: &[u8], value: &[u8]) -> Result<(), BpfError> {
        assert_eq!((key.len(), value.len()), (self.key_size, self.value_size), "map entry size");
        let mut attr = Attr::new();
        attr.u32(0, self.fd.as_raw_fd() as u32)
            .u64(8, key.as_ptr() as u64)
            .u64(16, value.as_ptr() as u64)
            .u64(24, 0);
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map_err(|errno| BpfError::Call { what: "map update", errno })?;
        Ok(())
    }

    /// Remove `key`; no error when it is not there.
    ///
    /// # Panics
    /// When `key` is not the map's key size.
    pub fn delete(&self, key: &[u8]) -> Result<(), BpfError> {
        assert_eq!(key.len(), self.key_size, "map key size");
        let mut attr = Attr::new();
        attr.u32(0, self.fd.as_raw_fd() as u32).u64(8, key.as_ptr() as u64);
        match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
            Ok(_) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(errno) => Err(BpfError::Call { what: "map delete", errno }),
        }
    }

    /// Every key in the map.
    pub fn keys(&self) -> Result<Vec<Vec<u8>>, BpfError> {
        let mut keys = Vec::new();
        let mut next = vec![0u8; self.key_size];
        let mut prev: Option<Vec<u8>> = None;
        loop {
            let mut attr = Attr::new();
            attr.u32(0, self.fd.as_raw_fd() as u32)
                .u64(8, prev.as_ref().map_or(0, |p| p.as_ptr() as u64))
                .u64(16, next.as_mut_ptr() as u64);
            match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
                Ok(_) => {
                    keys.push(next.clone());
                    prev = Some(next.clone());
                }
                Err(nix::errno::Errno::ENOENT) => return Ok(keys),
                Err(errno) => return Err(BpfError::Call { what: "map next key", errno }),
            }
        }
    }
}

/// Load a `sched_cls` (tc) program. `license` must be one the kernel counts as GPL-compatible
/// for the GPL-only helpers the program calls.
pub fn load_sched_cls(name: &str, insns: &[Insn], license: &str) -> Result<OwnedFd, BpfError> {
    let license = std::ffi::CString::new(license).map_err(|_| BpfError::Call {
        what: "prog load (license with a NUL)",
        errno: nix::errno::Errno::EINVAL,
    })?;
    let mut log = vec![0u8; 1 << 20];
    let mut attr = Attr::new();
    attr.u32(0, BPF_PROG_TYPE_SCHED_CLS)
        .u32(4, insns.len() as u32)
        .u64(8, insns.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .name(48, name);
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(ret) => Ok(fd(ret)),
        Err(first) => {
            // Again with the verifier's log, to say why.
            let mut attr = Attr::new();
            attr.u32(0, BPF_PROG_TYPE_SCHED_CLS)
                .u32(4, insns.len() as u32)
                .u64(8, insns.as_ptr() as u64)
                .u64(16, license.as_ptr() as u64)
                .u32(24, 1)
                .u32(28, log.len() as u32)
                .u64(32, log.as_mut_ptr() as u64)
                .name(48, name);
            let errno = bpf(BPF_PROG_LOAD, &mut attr).err().unwrap_or(first);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(12).collect();
            let log = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
            Err(BpfError::Verifier { name: name.to_string(), errno, log })
        }
    }
}

/// Attach `prog` to the ingress of interface `ifindex` (of the calling thread's network
/// namespace) as a tcx link, after the programs already there. Dropping the link detaches it.
pub fn attach_tcx_ingress(prog: &OwnedFd, ifindex: u32) -> Result<OwnedFd, BpfError> {
    let mut attr = Attr::new();
    attr.u32(0, prog.as_raw_fd() as u32).u32(4, ifindex).u32(8, BPF_TCX_INGRESS);
    let ret =
        bpf(BPF_LINK_CREATE, &mut attr).map_err(|errno| BpfError::Call { what: "tcx attach", errno })?;
    Ok(fd(ret))
}
