//! Sockets as sluice makes them: `SO_REUSEPORT` listeners, non-blocking
//! upstream connects and how their outcome is read, and the abortive close
//! that passes a reset on. The options each socket gets come from
//! `sockopt.rs`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::local_error::SourceError;
use crate::sockopt::Applied;

/// Binds a non-blocking `SO_REUSEPORT` listener, one per worker per route:
/// the kernel spreads new connections over the workers' sockets. `opts`
/// are the route's socket options (buffers before `listen`, so accepted
/// sockets inherit them and the window scale fits; fast open and deferred
/// accept after).
pub fn reuseport_listener(addr: SocketAddr, backlog: u32, opts: &Applied) -> io::Result<TcpListener> {
    listen_bound(reuseport_bound(addr, opts)?, backlog, opts)
}

/// The first half of [`reuseport_listener`]: a non-blocking `SO_REUSEPORT`
/// socket bound to `addr`, with the options that go before `listen`, not
/// listening yet. No client can queue on it (the kernel joins a socket to
/// its address's `SO_REUSEPORT` group when it listens), so binding every
/// new address first and listening only once all are bound lets a failure
/// leave nobody queued.
pub fn reuseport_bound(addr: SocketAddr, opts: &Applied) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // `[::]` means IPv6 only; a route for IPv4 too lists `0.0.0.0` as well.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    opts.before_listen(&socket);
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// The second half: `socket` (from [`reuseport_bound`]) listens, with the
/// options that go after `listen`.
pub fn listen_bound(socket: Socket, backlog: u32, opts: &Applied) -> io::Result<TcpListener> {
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    opts.after_listen(&socket);
    Ok(TcpListener::from_std(socket.into()))
}

/// How the workers beyond the sockets handed over (by systemd or a
/// predecessor) got theirs.
#[derive(Debug, PartialEq, Eq)]
pub enum Filled {
    /// One socket per worker was handed over: nothing to add.
    Nothing,
    /// This many were bound into the handed-over socket's `SO_REUSEPORT`
    /// group: the kernel spreads clients over every worker's own queue.
    Joined(usize),
    /// This many workers got a duplicate of a handed-over socket: they share
    /// its one queue (each is woken for each client, and one accept wins).
    /// `why` says why the group could not be joined (after `joined` could).
    Shared {
        /// Duplicates made.
        count: usize,
        /// Sockets that did join before the group refused one.
        joined: usize,
        /// Why not (all) joined.
        why: String,
    },
}

/// Gives `workers` workers a socket each for `addr`, where `sockets` (at
/// least one, at most `workers`) were handed over: the missing ones join
/// the first socket's `SO_REUSEPORT` group (`join` binds one) when it has
/// one sluice could join, else are duplicates (`dup`) of the handed-over
/// ones in turn. Joining needs `SO_REUSEPORT` on the socket, the same
/// `IPV6_V6ONLY` as sluice's own (on, for IPv6), and the same effective
/// user that made it (the kernel's rule: systemd's sockets are root's).
pub fn fill_workers(
    addr: SocketAddr,
    sockets: &mut Vec<TcpListener>,
    workers: usize,
    mut join: impl FnMut() -> io::Result<TcpListener>,
) -> io::Result<Filled> {
    let given = sockets.len();
    debug_assert!(given > 0, "fill_workers needs a socket to join or share");
    if given >= workers {
        return Ok(Filled::Nothing);
    }
    let first = SockRef::from(&sockets[0]);
    let mut why = if !first.reuse_port()? {
        Some("it has no SO_REUSEPORT (ReusePort=yes in a .socket unit sets it)".to_owned())
    } else if addr.is_ipv6() && !first.only_v6()? {
        Some("it takes IPv4 too (IPV6_V6ONLY off), and sluice's own [::] sockets are IPv6 only".to_owned())
    } else {
        None
    };
    let mut joined = 0;
    while why.is_none() && sockets.len() < workers {
        match join() {
            Ok(l) => {
                joined += 1;
                sockets.push(l);
            }
            Err(e) => {
                why = Some(format!(
                    "joining its SO_REUSEPORT group failed ({e}; the group takes sockets of the user that made it only)"
                ))
            }
        }
    }
    let Some(why) = why else { return Ok(Filled::Joined(joined)) };
    let mut count = 0;
    while sockets.len() < workers {
        let copy = SockRef::from(&sockets[count % given]).try_clone()?;
        sockets.push(TcpListener::from_std(copy.into()));
        count += 1;
    }
    Ok(Filled::Shared { count, joined, why })
}

/// What tells one socket from another whatever fd refers to it (its inode
/// in the kernel's socket filesystem: every duplicate, in this process or
/// another, has the same). `None` if it cannot be read.
pub fn identity(socket: &impl std::os::fd::AsFd) -> Option<u64> {
    nix::sys::stat::fstat(socket.as_fd()).ok().map(|st| st.st_ino)
}

/// Starts a non-blocking connect to `addr` with the route's options, from
/// its `source:` address if it has one. The result arrives later as a
/// writable event; read it with [`connect_result`]. A source that cannot be
/// used (other family, not on this host) fails with a
/// [`SourceError`] inside the `io::Error`.
pub fn start_connect(addr: SocketAddr, opts: &Applied) -> io::Result<TcpStream> {
    let source = opts.source();
    if let Some(ip) = source.filter(|ip| ip.is_ipv4() != addr.is_ipv4()) {
        return Err(SourceError::Family { source: ip, upstream: addr }.into());
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    opts.upstream(&socket);
    if let Some(ip) = source {
        // Port 0 with IP_BIND_ADDRESS_NO_PORT (set by `upstream`): connect picks
        // the port, unique per destination, instead of bind, unique overall.
        socket.bind(&SocketAddr::new(ip, 0).into()).map_err(|error| SourceError::Bind { source: ip, error })?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// What a connecting socket's first event means.
#[derive(Debug)]
pub enum ConnectState {
    /// Connected: relay.
    Connected,
    /// Connected, and already reset by the peer: relay what it sent, then
    /// pass the reset on (the error has been consumed; reads will end in EOF).
    ConnectedThenReset,
    /// Spurious wake-up: keep waiting.
    Pending,
    /// The connect failed.
    Failed(io::Error),
}

/// Reads the outcome of a non-blocking connect. `clean_writable`: the event
/// that woke us was writable with no error and no hang-up, which already says
/// connected (a socket in SYN-SENT never polls writable; a failed one polls
/// EPOLLERR), so no syscall is needed; that saves two per proxied connection.
/// Otherwise writable does not mean connected: `SO_ERROR` first (set means
/// failed), then `getpeername` (`ENOTCONN` means still in progress).
pub fn connect_result(stream: &TcpStream, clean_writable: bool) -> ConnectState {
    if clean_writable {
        return ConnectState::Connected;
    }
    match stream.take_error() {
        // A refused handshake is ECONNREFUSED; a reset means the handshake
        // completed and the peer reset afterwards (say, a server that writes
        // "too many connections" and aborts). Its bytes are still queued.
        Ok(Some(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
            return ConnectState::ConnectedThenReset;
        }
        Ok(Some(e)) | Err(e) => return ConnectState::Failed(e),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => ConnectState::Connected,
        Err(e) if e.kind() == io::ErrorKind::NotConnected => ConnectState::Pending,
        Err(e) => ConnectState::Failed(e),
    }
}

/// Makes the coming close send a reset instead of a FIN (`SO_LINGER` 0).
/// Only for passing an abort on: on a normal close it would truncate data.
pub fn reset_on_close(stream: &TcpStream) {
    // Best effort: if it fails the peer sees a FIN, which still ends the stream.
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// The kernel's `net.core.somaxconn`, if readable.
pub fn somaxconn() -> Option<i32> {
    crate::sysctl::read("net/core/somaxconn")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_reuseport_listeners_share_a_port() {
        let a = reuseport_listener("127.0.0.1:0".parse().unwrap(), 16, &Applied::default()).unwrap();
        let addr = a.local_addr().unwrap();
        let b = reuseport_listener(addr, 16, &Applied::default()).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
    }

    #[test]
    fn a_socket_bound_into_a_live_group_takes_no_client_until_it_listens() {
        let live = reuseport_listener("127.0.0.1:0".parse().unwrap(), 128, &Applied::default()).unwrap();
        let addr = live.local_addr().unwrap();
        let bound = reuseport_bound(addr, &Applied::default()).unwrap();
        let clients: Vec<_> = (0..32).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        let mut on_live = 0;
        while live.accept().is_ok() {
            on_live += 1;
        }
        assert_eq!(on_live, clients.len(), "every client queued on the listening socket");
        // Dropping the bound socket now would have reset nobody; once it listens it takes its share.
        let joined = listen_bound(bound, 128, &Applied::default()).unwrap();
        let more: Vec<_> = (0..64).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        let mut on_joined = 0;
        while joined.accept().is_ok() {
            on_joined += 1;
        }
        assert!(on_joined > 0 && on_joined < more.len(), "{on_joined} of {}", more.len());
    }

    #[test]
    fn connect_to_a_closed_port_fails() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let s = start_connect(SocketAddr::from(([127, 0, 0, 1], port)), &Applied::default()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match connect_result(&s, false) {
                ConnectState::Failed(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
                    break;
                }
                ConnectState::Connected | ConnectState::ConnectedThenReset => {
                    panic!("connected to a closed port")
                }
                ConnectState::Pending => {
                    assert!(std::time::Instant::now() < deadline, "connect never finished");
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    #[test]
    fn a_reset_right_after_the_handshake_is_not_a_connect_failure() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = start_connect(l.local_addr().unwrap(), &Applied::default()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        server.write_all(b"too many connections").unwrap();
        SockRef::from(&server).set_linger(Some(Duration::ZERO)).unwrap();
        drop(server);
        // Wait until the reset has arrived (EPOLLERR/HUP) before looking.
        let mut poll = mio::Poll::new().unwrap();
        poll.registry().register(&mut s, mio::Token(0), mio::Interest::READABLE).unwrap();
        let mut events = mio::Events::with_capacity(4);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !events.iter().any(|e| e.is_error() || (e.is_read_closed() && e.is_write_closed())) {
            assert!(std::time::Instant::now() < deadline, "the reset never arrived");
            poll.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
        }
        assert!(matches!(connect_result(&s, false), ConnectState::ConnectedThenReset));
        // What the server sent before its reset is still there to relay.
        let mut got = Vec::new();
        let _ = (&s).read_to_end(&mut got);
        assert_eq!(got, b"too many connections");
    }

    /// What `clean_writable` relies on: the first event of a connect that
    /// succeeds is writable without error or hang-up, and the socket is then
    /// connected; the first event of one that is refused carries the error.
    #[test]
    fn the_first_connect_event_tells_success_from_failure() {
        let first_event = |addr: SocketAddr| {
            let mut s = start_connect(addr, &Applied::default()).unwrap();
            let mut poll = mio::Poll::new().unwrap();
            let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
            poll.registry().register(&mut s, mio::Token(0), interest).unwrap();
            let mut events = mio::Events::with_capacity(4);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                poll.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
                if let Some(e) = events.iter().next() {
                    let clean = e.is_writable() && !e.is_error() && !e.is_read_closed() && !e.is_write_closed();
                    return (s, clean);
                }
                assert!(std::time::Instant::now() < deadline, "no event for the connect");
            }
        };
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (s, clean) = first_event(l.local_addr().unwrap());
        assert!(clean, "a successful connect's first event was not a clean writable");
        assert!(s.peer_addr().is_ok(), "clean writable, yet not connected");
        let closed = l.local_addr().unwrap();
        drop(l);
        let (s, clean) = first_event(closed);
        assert!(!clean, "a refused connect looked clean");
        assert!(matches!(connect_result(&s, false), ConnectState::Failed(_)));
    }

    #[test]
    fn a_source_address_is_the_local_address_and_its_port_is_chosen_at_connect() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let opts = Applied::default().with_source(Some([127, 0, 0, 2].into()));
        let s = start_connect(l.local_addr().unwrap(), &opts).unwrap();
        let (_server, peer) = l.accept().unwrap();
        assert_eq!(peer.ip(), std::net::IpAddr::from([127, 0, 0, 2]));
        assert_ne!(peer.port(), 0);
        assert!(crate::sockopt::bind_address_no_port(&s).unwrap());
    }

    #[test]
    fn an_unusable_source_is_a_local_error() {
        use crate::local_error::{LocalCause, classify};
        let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
        // TEST-NET-1: never an address of this host.
        let e = start_connect(up, &Applied::default().with_source(Some([192, 0, 2, 1].into()))).unwrap_err();
        assert_eq!(classify(&e), Some(LocalCause::Source), "{e}");
        assert!(e.to_string().starts_with("cannot bind source address 192.0.2.1"), "{e}");
        let e = start_connect(up, &Applied::default().with_source(Some("::1".parse().unwrap()))).unwrap_err();
        assert_eq!(classify(&e), Some(LocalCause::Source), "{e}");
        assert!(e.to_string().contains("is IPv6 and upstream 127.0.0.1:9 is IPv4"), "{e}");
    }

    #[test]
    fn connect_to_a_listener_succeeds_with_nodelay() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = start_connect(l.local_addr().unwrap(), &Applied::default()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !matches!(connect_result(&s, false), ConnectState::Connected) {
            assert!(std::time::Instant::now() < deadline, "connect never finished");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(s.nodelay().unwrap());
    }

    fn std_listener(reuse_port: bool) -> TcpListener {
        let s = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), None).unwrap();
        s.set_reuse_port(reuse_port).unwrap();
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        s.listen(16).unwrap();
        TcpListener::from_std(s.into())
    }

    /// Accepts on `l` within 5 s (the listeners are non-blocking).
    fn accepts(l: &TcpListener) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if l.accept().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn workers_join_a_reuseport_socket_handed_over() {
        let mut sockets = vec![std_listener(true)];
        let addr = sockets[0].local_addr().unwrap();
        let filled = fill_workers(addr, &mut sockets, 3, || reuseport_listener(addr, 16, &Applied::default())).unwrap();
        assert_eq!(filled, Filled::Joined(2));
        assert_eq!(sockets.len(), 3);
        for s in &sockets {
            assert_eq!(s.local_addr().unwrap(), addr);
            assert!(SockRef::from(s).reuse_port().unwrap());
        }
        assert_eq!(fill_workers(addr, &mut sockets, 3, || unreachable!()).unwrap(), Filled::Nothing);
    }

    #[test]
    fn workers_share_duplicates_of_a_socket_without_reuseport() {
        let mut sockets = vec![std_listener(false)];
        let addr = sockets[0].local_addr().unwrap();
        let filled = fill_workers(addr, &mut sockets, 3, || panic!("no SO_REUSEPORT: nothing to join")).unwrap();
        let Filled::Shared { count: 2, joined: 0, why } = filled else { panic!("{filled:?}") };
        assert!(why.contains("no SO_REUSEPORT"), "{why}");
        // One socket, three fds: a client queued on it is accepted on any of them.
        let _c = std::net::TcpStream::connect(addr).unwrap();
        assert!(accepts(&sockets[2]), "the duplicate accepts what the original queued");
        assert!(sockets[0].accept().is_err(), "and it was the same queue");
    }

    #[test]
    fn workers_share_duplicates_when_the_group_refuses_them() {
        let mut sockets = vec![std_listener(true)];
        let addr = sockets[0].local_addr().unwrap();
        let mut tries = 0;
        let filled = fill_workers(addr, &mut sockets, 4, || {
            tries += 1;
            if tries == 1 {
                reuseport_listener(addr, 16, &Applied::default())
            } else {
                Err(io::Error::from(io::ErrorKind::AddrInUse))
            }
        })
        .unwrap();
        let Filled::Shared { count: 2, joined: 1, why } = filled else { panic!("{filled:?}") };
        assert!(why.contains("joining its SO_REUSEPORT group failed"), "{why}");
        assert_eq!(sockets.len(), 4);
        assert!(sockets.iter().all(|s| s.local_addr().unwrap() == addr));
    }

    #[test]
    fn a_dual_stack_socket_is_shared_not_joined() {
        // Only a wildcard address can be dual-stack (binding ::1 turns IPV6_V6ONLY
        // on); bound but never listening, it takes no connection from anywhere.
        let Ok(s) = Socket::new(Domain::IPV6, Type::STREAM.nonblocking(), None) else {
            eprintln!("skipped: no IPv6");
            return;
        };
        s.set_reuse_port(true).unwrap();
        s.set_only_v6(false).unwrap();
        s.bind(&"[::]:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        let mut sockets = vec![TcpListener::from_std(s.into())];
        let addr = sockets[0].local_addr().unwrap();
        let filled = fill_workers(addr, &mut sockets, 2, || panic!("dual-stack: not joined")).unwrap();
        assert!(matches!(&filled, Filled::Shared { count: 1, why, .. } if why.contains("IPV6_V6ONLY")), "{filled:?}");
    }
}
