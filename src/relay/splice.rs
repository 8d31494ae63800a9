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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};

    use socket2::{Domain, Protocol, Socket, Type};

    /// A connected pair of MPTCP sockets on loopback (client, accepted),
    /// or `None` where this kernel makes none.
    fn mptcp_pair() -> Option<(TcpStream, TcpStream)> {
        let mptcp = || Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::MPTCP));
        let listener = mptcp().ok()?;
        listener.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        listener.listen(4).unwrap();
        let client = mptcp().unwrap();
        client.connect(&listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        for s in [&client, &accepted] {
            assert_eq!(s.protocol().unwrap(), Some(Protocol::MPTCP), "both ends are MPTCP, not a fallback");
            s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        }
        Some((client.into(), accepted.into()))
    }

    /// The probe behind `relay: splice`/`auto` on `mptcp: true` routes:
    /// splice(2) takes bytes from an MPTCP socket into a pipe and from a
    /// pipe into an MPTCP socket (Linux 6.18 does both; a kernel that
    /// refused would make the pump copy, counted as `splice_refused`).
    #[test]
    fn splice_moves_bytes_out_of_and_into_mptcp_sockets() {
        let Some((client, accepted)) = mptcp_pair() else {
            eprintln!("skipped: this kernel makes no MPTCP sockets (net.mptcp.enabled = 0, or no CONFIG_MPTCP)");
            return;
        };
        let pipe = Pipe::new(64 << 10).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let mut w = client.try_clone().unwrap();
            let d = data.clone();
            std::thread::spawn(move || w.write_all(&d).unwrap())
        };
        let reader = {
            let (mut r, len) = (client, data.len());
            std::thread::spawn(move || {
                let mut got = vec![0; len];
                r.read_exact(&mut got).map(|()| got)
            })
        };
        // Out of the accepted socket and back into it: the client reads its own bytes back.
        accepted.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut moved = 0;
        while moved < data.len() {
            assert!(std::time::Instant::now() < deadline, "splice stalled after {moved} bytes");
            match socket_to_pipe(&accepted, &pipe) {
                Ok(0) => panic!("EOF after {moved} bytes"),
                Ok(n) => {
                    let mut left = n;
                    while left > 0 {
                        assert!(std::time::Instant::now() < deadline, "splice into the socket stalled");
                        match pipe_to_socket(&pipe, &accepted, left) {
                            Ok(m) => left -= m,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                            Err(e) => panic!("splice from a pipe into an MPTCP socket: {e}"),
                        }
                    }
                    moved += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("splice from an MPTCP socket into a pipe: {e}"),
            }
        }
        writer.join().unwrap();
        let echoed = reader.join().unwrap().expect("the client reads its bytes back");
        assert!(echoed == data, "the bytes spliced through the MPTCP sockets differ");
    }
}
