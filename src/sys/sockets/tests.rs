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
    let s = start_connect(SocketAddr::from(([127, 0, 0, 1], port)), &Applied::default(), None).unwrap();
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
    let mut s = start_connect(l.local_addr().unwrap(), &Applied::default(), None).unwrap();
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
        let mut s = start_connect(addr, &Applied::default(), None).unwrap();
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
    let s = start_connect(l.local_addr().unwrap(), &opts, None).unwrap();
    let (_server, peer) = l.accept().unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::from([127, 0, 0, 2]));
    assert_ne!(peer.port(), 0);
    assert!(crate::sys::sockopt::bind_address_no_port(&s).unwrap());
}

#[test]
fn an_unusable_source_is_a_local_error() {
    use crate::local_error::{LocalCause, classify};
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    // TEST-NET-1: never an address of this host.
    let e = start_connect(up, &Applied::default().with_source(Some([192, 0, 2, 1].into())), None).unwrap_err();
    assert_eq!(classify(&e), Some(LocalCause::Source), "{e}");
    assert!(e.to_string().starts_with("cannot bind source address 192.0.2.1"), "{e}");
    let e = start_connect(up, &Applied::default().with_source(Some("::1".parse().unwrap())), None).unwrap_err();
    assert_eq!(classify(&e), Some(LocalCause::Source), "{e}");
    assert!(e.to_string().contains("is IPv6 and upstream 127.0.0.1:9 is IPv4"), "{e}");
}

#[test]
fn connect_to_a_listener_succeeds_with_nodelay() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let s = start_connect(l.local_addr().unwrap(), &Applied::default(), None).unwrap();
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

#[test]
fn source_client_binds_the_clients_own_address_with_ip_transparent() {
    let opts = Applied::default().with_capture(false, true);
    let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let client: std::net::IpAddr = [192, 0, 2, 77].into();
    match upstream_socket(upstream, &opts, Some(client)) {
        // Root: IP_TRANSPARENT lets the socket take an address this host does not have.
        Ok(socket) => assert_eq!(socket.local_addr().unwrap().as_socket().unwrap().ip(), client),
        Err(e) => {
            assert!(!nix::unistd::geteuid().is_root(), "root may bind a foreign address: {e}");
            assert!(crate::local_error::classify(&e).is_some(), "a local error: {e}");
        }
    }
    // Another family than the upstream's is a per-session error, before any socket.
    let e = start_connect(upstream, &opts, Some("2001:db8::7".parse().unwrap())).unwrap_err();
    assert!(e.to_string().contains("IPv6"), "{e}");
}
