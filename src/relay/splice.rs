//! The two splice(2) calls of a splice pump: socket → pipe and pipe → socket.
//!
//! Flags are `SPLICE_F_MOVE | SPLICE_F_NONBLOCK`, never `SPLICE_F_MORE`: it
//! would hold back the tail of a message (seen as ~1 s stalls on loopback).

use std::io;
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::fcntl::{SpliceFFlags, splice};

use super::pipe::Pipe;

const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

/// Moves up to the pipe's capacity from `src` into the pipe.
/// `Ok(0)` is end of stream; `WouldBlock` is ambiguous when the pipe is not empty.
pub fn socket_to_pipe(src: impl AsFd, pipe: &Pipe) -> io::Result<usize> {
    // The length must fit the pipe: a huge length is EINVAL on some kernels.
    Ok(splice(src, None, &pipe.write, None, pipe.capacity, FLAGS)?)
}

/// Moves up to `len` bytes from the pipe to `dst`.
pub fn pipe_to_socket(pipe: &Pipe, dst: impl AsFd, len: usize) -> io::Result<usize> {
    Ok(splice(&pipe.read, None, dst, None, len, FLAGS)?)
}

/// True for the errors that mean "splice can't do this pair of fds": the pump
/// should copy instead (only valid before it has moved a byte).
pub fn is_unsupported(e: &io::Error) -> bool {
    let code = e.raw_os_error();
    code == Some(Errno::EINVAL as i32) || code == Some(Errno::ENOSYS as i32)
}
