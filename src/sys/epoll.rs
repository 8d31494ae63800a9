//! The one registration mio cannot express: a socket watched for its
//! endings only. Under `relay: sockmap` the kernel moves a socket's bytes
//! to its peer itself and still wakes the socket's readers after each
//! copy; registered for `EPOLLRDHUP` alone (epoll always adds `EPOLLERR`
//! and `EPOLLHUP`), the worker sleeps through the copies and wakes for a
//! FIN, a reset or an error. Going back is mio's own `reregister`, which
//! also reports whatever is ready by then.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

/// Changes `fd`'s registration in the epoll instance `epoll` (mio's
/// `Poll`) to endings only, edge-triggered, keeping its mio `token`.
#[allow(unsafe_code)]
pub fn watch_endings_only(epoll: RawFd, fd: &impl AsFd, token: mio::Token) -> io::Result<()> {
    let mut event = nix::libc::epoll_event {
        events: (nix::libc::EPOLLRDHUP | nix::libc::EPOLLET) as u32,
        // mio reads the token back from the event's data.
        u64: token.0 as u64,
    };
    // SAFETY: `epoll` is the worker's live mio Poll fd and `fd` is open for
    // the borrow's lifetime and already registered there (so MOD, not ADD);
    // `event` is a live local the kernel only reads.
    let rc = unsafe {
        nix::libc::epoll_ctl(epoll, nix::libc::EPOLL_CTL_MOD, fd.as_fd().as_raw_fd(), std::ptr::from_mut(&mut event))
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::net::TcpStream;
    use mio::{Events, Interest, Poll, Token};
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    #[test]
    fn bytes_do_not_wake_an_endings_only_socket_and_a_fin_does() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        let mut s = TcpStream::from_std(s);
        let mut poll = Poll::new().unwrap();
        poll.registry().register(&mut s, Token(7), Interest::READABLE).unwrap();
        watch_endings_only(poll.as_raw_fd(), &s, Token(7)).unwrap();
        let mut events = Events::with_capacity(4);
        peer.write_all(b"some bytes").unwrap();
        poll.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
        assert!(events.is_empty(), "bytes woke it: {events:?}");
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        poll.poll(&mut events, Some(Duration::from_secs(5))).unwrap();
        let tokens: Vec<_> = events.iter().map(|e| e.token()).collect();
        assert_eq!(tokens, [Token(7)], "the FIN wakes it");
        // Back to mio's registration: what is ready is reported at once.
        poll.registry().reregister(&mut s, Token(7), Interest::READABLE).unwrap();
        poll.poll(&mut events, Some(Duration::from_secs(5))).unwrap();
        assert!(events.iter().any(|e| e.token() == Token(7) && e.is_readable()));
    }
}
