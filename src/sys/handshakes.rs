//! The socket filter that makes a listener stop answering new handshakes
//! while it still accepts the ones under way: the first step of closing a
//! listener (the drain, a route a reload removed, a surplus socket after an
//! upgrade; `worker/listeners.rs`), so that the close resets nobody whose
//! connect succeeded.
//!
//! A filter belongs to the socket, not to the fd: a socket that another
//! process holds too (systemd's, for socket activation) keeps it after this
//! process exits and would drop every SYN for whoever serves it next. So
//! such sockets are never filtered (closing this process's copy resets no
//! one: the socket lives on, its queue waits for the next process), and
//! every inherited listener is cleared of a filter when it is adopted
//! ([`accept_new_handshakes`]), whatever an earlier process left on it.

use std::io;
use std::os::fd::AsFd;

use mio::net::TcpListener;
use socket2::{SockFilter, SockRef};

/// A classic BPF socket filter for a listener that drops new handshakes and
/// keeps the rest: a socket filter sees the TCP header from offset 0, and
/// byte 13 holds the flags; SYN without ACK is dropped (return 0), anything
/// else kept whole. The ACKs that complete handshakes under way still pass.
/// Sessions accepted from the socket inherit the filter; it keeps all their
/// segments.
const DROP_NEW_HANDSHAKES: [SockFilter; 5] = [
    SockFilter::new(0x30, 0, 0, 13),       // ldb [13]: the TCP flags
    SockFilter::new(0x54, 0, 0, 0x12),     // and #(SYN|ACK)
    SockFilter::new(0x15, 0, 1, 0x02),     // jeq #SYN: next, else skip one
    SockFilter::new(0x06, 0, 0, 0),        // ret #0: drop
    SockFilter::new(0x06, 0, 0, u32::MAX), // ret #-1: keep all of it
];

/// Stops `socket` answering new handshakes (see [`DROP_NEW_HANDSHAKES`]):
/// their SYNs go unanswered, so clients retry a second later and find the
/// port closed (or a successor listening) rather than being reset after
/// their connect succeeded.
///
/// An MPTCP listener (`mptcp: true`) takes no socket filter: the kernel
/// refuses one with `EOPNOTSUPP` (the SYNs reach the TCP listener beneath
/// it, which a filter on the MPTCP socket would not see anyway). That is no
/// error: such a listener answers handshakes until it closes, so a client
/// whose SYN arrives in its last moment is reset, as with no filter.
pub fn refuse_new_handshakes(socket: &TcpListener) -> io::Result<()> {
    match SockRef::from(socket).attach_filter(&DROP_NEW_HANDSHAKES) {
        Err(e) if takes_no_filter(&e) => Ok(()),
        other => other,
    }
}

/// Takes any socket filter off `socket` (`SO_DETACH_FILTER`), so it answers
/// new handshakes again. Having none to take off, or being a socket that
/// takes none (MPTCP), is not an error.
pub fn accept_new_handshakes(socket: &impl AsFd) -> io::Result<()> {
    match SockRef::from(socket).detach_filter() {
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) || takes_no_filter(&e) => Ok(()),
        other => other,
    }
}

/// The error of a socket that takes no filter at all (an MPTCP one).
fn takes_no_filter(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::EOPNOTSUPP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::fd::OwnedFd;
    use std::time::Duration;

    #[test]
    fn a_listener_refusing_new_handshakes_leaves_them_unanswered_and_serves_its_queue() {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std_listener.local_addr().unwrap();
        let mut queued = TcpStream::connect(addr).unwrap();
        let listener = TcpListener::from_std(std_listener);
        refuse_new_handshakes(&listener).unwrap();
        // A new handshake gets no answer at all: not accepted, not refused.
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}"),
            Ok(_) => panic!("a new handshake completed on a listener refusing them"),
        }
        // The one that completed before is still queued, and its bytes pass
        // both ways (the accepted socket inherits the filter).
        let (server, _) = listener.accept().unwrap();
        let mut server: TcpStream = std::net::TcpStream::from(OwnedFd::from(server));
        server.set_nonblocking(false).unwrap();
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        queued.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let big = vec![7u8; 1 << 20];
        queued.write_all(&big).unwrap();
        let mut got = vec![0; big.len()];
        server.read_exact(&mut got).unwrap();
        assert!(got == big);
        server.write_all(b"pong").unwrap();
        let mut pong = [0; 4];
        queued.read_exact(&mut pong).unwrap();
        assert_eq!(&pong, b"pong");
    }

    #[test]
    fn an_mptcp_listener_takes_no_filter_and_that_is_no_error() {
        let Ok(s) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, Some(socket2::Protocol::MPTCP))
        else {
            eprintln!("skipped: this kernel makes no MPTCP sockets");
            return;
        };
        s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        s.listen(8).unwrap();
        let listener = TcpListener::from_std(s.into());
        refuse_new_handshakes(&listener).expect("an MPTCP listener is closed without a filter");
        accept_new_handshakes(&listener).expect("nor is there one to take off");
    }

    #[test]
    fn a_filter_left_on_a_socket_is_taken_off_and_none_is_no_error() {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std_listener.local_addr().unwrap();
        accept_new_handshakes(&std_listener).expect("no filter to take off is fine");
        let listener = TcpListener::from_std(std_listener);
        refuse_new_handshakes(&listener).unwrap();
        accept_new_handshakes(&listener).unwrap();
        let c = TcpStream::connect_timeout(&addr, Duration::from_secs(5));
        assert!(c.is_ok(), "a new handshake is answered again: {c:?}");
        assert!(listener.accept().is_ok());
    }
}
