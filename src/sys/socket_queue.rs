//! What a TCP socket still holds in the kernel: bytes received and not yet
//! read (`SIOCINQ`), and bytes written and not yet acknowledged by the peer
//! (`SIOCOUTQ`: unsent plus in flight).
//!
//! Sessions ask only when they end, never per event: whether an idle
//! session is truly idle (nothing unread that a clean close would drop),
//! and when the last bytes before a reset have reached the survivor (a
//! reset, `SO_LINGER 0`, throws away whatever the send queue still holds).

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Bytes received on `s` that nobody has read yet.
pub fn unread(s: &impl AsFd) -> io::Result<usize> {
    queue_len(s, nix::libc::FIONREAD)
}

/// Bytes written to `s` that the peer has not acknowledged yet (unsent
/// ones included). Zero means everything written has arrived.
pub fn unacknowledged(s: &impl AsFd) -> io::Result<usize> {
    queue_len(s, nix::libc::TIOCOUTQ)
}

/// `ioctl(fd, request, &mut int)` for the two queue-length requests.
#[allow(unsafe_code)]
fn queue_len(s: &impl AsFd, request: nix::libc::Ioctl) -> io::Result<usize> {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: the fd is open for the borrow's lifetime; FIONREAD (SIOCINQ)
    // and TIOCOUTQ (SIOCOUTQ) write one int through the pointer, which
    // points at a live local int.
    let rc = unsafe { nix::libc::ioctl(s.as_fd().as_raw_fd(), request, std::ptr::from_mut(&mut n)) };
    if rc == 0 { Ok(usize::try_from(n).unwrap_or(0)) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    #[test]
    fn unread_counts_what_arrived_and_reading_empties_it() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut b, _) = l.accept().unwrap();
        assert_eq!(unread(&b).unwrap(), 0);
        a.write_all(b"12345").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while unread(&b).unwrap() < 5 {
            assert!(Instant::now() < deadline, "the bytes never arrived");
            std::thread::yield_now();
        }
        let mut got = [0; 5];
        b.read_exact(&mut got).unwrap();
        assert_eq!(unread(&b).unwrap(), 0);
    }

    #[test]
    fn unacknowledged_counts_what_a_peer_that_does_not_read_holds_back() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_b, _) = l.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        // Fill the peer's receive window and our send buffer: what is left is unacknowledged.
        let chunk = vec![1u8; 1 << 16];
        let mut written = 0usize;
        loop {
            match (&a).write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let q = unacknowledged(&a).unwrap();
        assert!(q > 0 && q <= written, "{q} unacknowledged of {written} written");
    }
}
