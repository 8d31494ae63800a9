//! The bpf(2) commands sluice's sockmap needs, one small function each:
//! create a `SOCKHASH`, load an `SK_SKB` program (with the verifier's log
//! when it refuses), attach it to a map, and put, delete and look up map
//! entries. Each command's argument is its own `#[repr(C)]` prefix of the
//! kernel's `union bpf_attr` (include/uapi/linux/bpf.h): the kernel takes
//! any size up to its own and treats the rest as zero.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::insn::Insn;

// `enum bpf_cmd`.
const BPF_MAP_CREATE: i32 = 0;
const BPF_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_MAP_UPDATE_ELEM: i32 = 2;
const BPF_MAP_DELETE_ELEM: i32 = 3;
const BPF_PROG_LOAD: i32 = 5;
const BPF_PROG_ATTACH: i32 = 8;

/// `enum bpf_map_type`: a hash of sockets keyed by any bytes.
const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
/// `enum bpf_prog_type`: runs on each skb arriving on a socket in a sockmap.
const BPF_PROG_TYPE_SK_SKB: u32 = 14;
/// `enum bpf_attach_type`: the verdict program of a map's sockets. Without
/// a parser program attached too, the kernel runs it on each skb as it
/// arrives (`sk_psock_start_verdict`), with no strparser in between.
pub const BPF_SK_SKB_STREAM_VERDICT: u32 = 5;
/// Update flag: insert or replace.
const BPF_ANY: u64 = 0;
/// `BPF_F_CLOEXEC` for `map_flags` / program fds: the fds of both are
/// close-on-exec by default since Linux 4.x; nothing to ask for.
const MAP_FLAGS: u32 = 0;

#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct Elem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

/// `bpf(cmd, attr, sizeof *attr)`, the return value as an fd-or-zero.
#[allow(unsafe_code)]
fn bpf<T>(cmd: i32, attr: &mut T) -> io::Result<i32> {
    // SAFETY: `attr` is a live, initialised `#[repr(C)]` prefix of `union
    // bpf_attr` for `cmd`, and its exact size is passed; the kernel reads
    // at most that many bytes and writes back only within them. Pointers
    // inside it (keys, values, instructions, log buffer) are set by the
    // callers below to live buffers of the sizes they declare.
    let rc = unsafe { nix::libc::syscall(nix::libc::SYS_bpf, cmd, std::ptr::from_mut(attr), std::mem::size_of::<T>()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(i32::try_from(rc).unwrap_or(i32::MAX)) }
}

/// Takes ownership of a new fd the kernel returned.
#[allow(unsafe_code)]
fn owned(fd: i32) -> OwnedFd {
    // SAFETY: `fd` was just returned by bpf(2) as a new descriptor that
    // nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A `SOCKHASH` with u64 keys and u64 values (an fd on update; the
/// socket's cookie on lookup, which only an 8-byte value allows).
pub fn sockhash(capacity: u32) -> io::Result<OwnedFd> {
    let mut attr = MapCreate {
        map_type: BPF_MAP_TYPE_SOCKHASH,
        key_size: 8,
        value_size: 8,
        max_entries: capacity,
        map_flags: MAP_FLAGS,
    };
    bpf(BPF_MAP_CREATE, &mut attr).map(owned)
}

/// An error from `load`: the kernel's reason, and the verifier's log if it wrote one.
#[derive(Debug)]
pub struct LoadError {
    pub error: io::Error,
    pub log: String,
}

/// Loads `insns` as an `SK_SKB` program. On failure it loads again with
/// the verifier's log on, so the error says which instruction it refused.
pub fn load_sk_skb(insns: &[Insn], license: &std::ffi::CStr) -> Result<OwnedFd, LoadError> {
    let attempt = |log: Option<&mut [u8]>| {
        let (log_level, log_size, log_buf) = match log {
            Some(buf) => (1, u32::try_from(buf.len()).unwrap_or(u32::MAX), buf.as_mut_ptr() as u64),
            None => (0, 0, 0),
        };
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_SK_SKB,
            insn_cnt: u32::try_from(insns.len()).unwrap_or(u32::MAX),
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level,
            log_size,
            log_buf,
            ..ProgLoad::default()
        };
        bpf(BPF_PROG_LOAD, &mut attr).map(owned)
    };
    attempt(None).or_else(|error| {
        let mut buf = vec![0u8; 64 * 1024];
        // The second load fails the same way (or ENOSPC if the log is
        // longer than the buffer, which still holds its start).
        match attempt(Some(&mut buf)) {
            Ok(fd) => Ok(fd),
            Err(_) => {
                let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                Err(LoadError { error, log: String::from_utf8_lossy(&buf[..end]).trim_end().to_string() })
            }
        }
    })
}

/// Attaches `prog` to `map` as `attach_type`: every socket put in the map
/// from now on runs it (sockets already there do not).
pub fn attach(prog: BorrowedFd<'_>, map: BorrowedFd<'_>, attach_type: u32) -> io::Result<()> {
    let mut attr = ProgAttach { target_fd: fd_u32(map), attach_bpf_fd: fd_u32(prog), attach_type, attach_flags: 0 };
    bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}

/// Puts socket `s` in `map` under `key` (inserting or replacing).
pub fn put(map: BorrowedFd<'_>, key: u64, s: BorrowedFd<'_>) -> io::Result<()> {
    let value = u64::from(fd_u32(s));
    let mut attr = Elem {
        map_fd: fd_u32(map),
        key: std::ptr::from_ref(&key) as u64,
        value: std::ptr::from_ref(&value) as u64,
        flags: BPF_ANY,
        ..Elem::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Removes `key` from `map` (`ENOENT` if it is not there).
pub fn delete(map: BorrowedFd<'_>, key: u64) -> io::Result<()> {
    let mut attr = Elem { map_fd: fd_u32(map), key: std::ptr::from_ref(&key) as u64, ..Elem::default() };
    bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(drop)
}

/// The cookie of the socket under `key` in `map`, `None` if there is none.
pub fn lookup(map: BorrowedFd<'_>, key: u64) -> io::Result<Option<u64>> {
    let mut value = 0u64;
    let mut attr = Elem {
        map_fd: fd_u32(map),
        key: std::ptr::from_ref(&key) as u64,
        value: std::ptr::from_mut(&mut value) as u64,
        ..Elem::default()
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn fd_u32(fd: impl AsFd) -> u32 {
    u32::try_from(fd.as_fd().as_raw_fd()).expect("an open fd is never negative")
}
