use super::*;
use socket2::{Domain, Socket, Type};

fn tcp() -> Socket {
    Socket::new(Domain::IPV4, Type::STREAM, None).unwrap()
}

fn listening() -> Socket {
    let s = tcp();
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    s.listen(8).unwrap();
    s
}

#[test]
fn nodelay_round_trips() {
    let s = tcp();
    set_nodelay(&s, true).unwrap();
    assert!(s.tcp_nodelay().unwrap());
    set_nodelay(&s, false).unwrap();
    assert!(!s.tcp_nodelay().unwrap());
}

#[test]
fn keepalive_round_trips() {
    let s = tcp();
    let k = Keepalive::On { idle: Duration::from_secs(45), interval: Duration::from_secs(7), count: 4 };
    set_keepalive(&s, k).unwrap();
    assert!(s.keepalive().unwrap());
    assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(45));
    assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(7));
    assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
    set_keepalive(&s, Keepalive::Off).unwrap();
    assert!(!s.keepalive().unwrap());
}

#[test]
fn user_timeout_round_trips() {
    let s = tcp();
    set_user_timeout(&s, Duration::from_millis(30_000)).unwrap();
    assert_eq!(s.tcp_user_timeout().unwrap(), Some(Duration::from_secs(30)));
    set_user_timeout(&s, Duration::ZERO).unwrap();
    assert_eq!(s.tcp_user_timeout().unwrap(), None);
}

#[test]
fn buffers_round_trip_at_least_as_asked() {
    let s = tcp();
    set_send_buffer(&s, 96 << 10).unwrap();
    set_recv_buffer(&s, 80 << 10).unwrap();
    // The kernel doubles what it is given (bookkeeping) unless capped by {w,r}mem_max.
    assert!(s.send_buffer_size().unwrap() >= 96 << 10);
    assert!(s.recv_buffer_size().unwrap() >= 80 << 10);
}

#[test]
fn congestion_round_trips_for_every_available_algorithm() {
    let s = tcp();
    for name in available_congestion().unwrap_or_default() {
        set_congestion(&s, &name).unwrap();
        assert_eq!(congestion(&s).unwrap(), name);
    }
    assert!(set_congestion(&s, "no-such-cc").is_err());
}

#[test]
fn fastopen_round_trips_on_a_listener() {
    let s = listening();
    set_fastopen(&s, 256).unwrap();
    assert_eq!(fastopen(&s).unwrap(), 256);
}

#[test]
fn notsent_lowat_round_trips() {
    let s = tcp();
    set_notsent_lowat(&s, 16 << 10).unwrap();
    assert_eq!(s.tcp_notsent_lowat().unwrap(), 16 << 10);
}

#[test]
fn defer_accept_round_trips_rounded_up() {
    let s = listening();
    assert_eq!(defer_accept(&s).unwrap(), 0);
    set_defer_accept(&s, Duration::from_secs(5)).unwrap();
    assert!(defer_accept(&s).unwrap() >= 5, "the kernel rounds up to its retransmission schedule");
    set_defer_accept(&s, Duration::ZERO).unwrap();
    assert_eq!(defer_accept(&s).unwrap(), 0);
}

#[test]
fn mark_round_trips_where_permitted() {
    let s = tcp();
    match set_mark(&s, 0x2a) {
        Ok(()) => assert_eq!(s.mark().unwrap(), 0x2a),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            eprintln!("skipped: SO_MARK needs CAP_NET_ADMIN here ({e})");
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn tcp_info_reads_rtt_of_a_connected_socket() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let _server = l.accept().unwrap();
    let (rtt, retrans) = tcp_info(&c).unwrap();
    assert!(rtt > 0 && rtt < 1_000_000, "a loopback handshake gives a small non-zero RTT: {rtt}µs");
    assert_eq!(retrans, 0);
}

#[test]
fn reuse_address_round_trips() {
    let s = tcp();
    set_reuse_address(&s, true).unwrap();
    assert!(s.reuse_address().unwrap());
    set_reuse_address(&s, false).unwrap();
    assert!(!s.reuse_address().unwrap());
}

#[test]
fn bind_address_no_port_round_trips_on_both_families() {
    for domain in [Domain::IPV4, Domain::IPV6] {
        let s = Socket::new(domain, Type::STREAM, None).unwrap();
        set_bind_address_no_port(&s, true).unwrap();
        assert!(bind_address_no_port(&s).unwrap());
        set_bind_address_no_port(&s, false).unwrap();
        assert!(!bind_address_no_port(&s).unwrap());
    }
}

#[test]
fn a_source_puts_bind_address_no_port_on_upstream_sockets_only() {
    let plain = Applied::new("web", SocketOptions::default(), None);
    let s = tcp();
    plain.upstream(&s);
    assert!(!bind_address_no_port(&s).unwrap());
    let sourced = Applied::new("web", SocketOptions::default(), None).with_source(Some([127, 0, 0, 2].into()));
    sourced.upstream(&s);
    assert!(bind_address_no_port(&s).unwrap());
    assert_eq!(sourced.refused(), 0);
}

#[test]
fn an_unavailable_algorithm_is_dropped_at_start() {
    let opts = SocketOptions { congestion: Some("vegas".parse().unwrap()), ..Default::default() };
    let a = Applied::new("web", opts, Some(&["reno".to_owned(), "cubic".to_owned()]));
    assert_eq!(a.options().congestion, None);
}

#[test]
fn a_refused_option_is_not_asked_again() {
    let opts = SocketOptions { congestion: Some("nocc".parse().unwrap()), ..Default::default() };
    let a = Applied::new("web", opts, None);
    let s = tcp();
    a.upstream(&s);
    assert_eq!(a.refused(), Opt::Congestion.bit(), "the refusal is remembered");
    a.upstream(&s);
    assert_eq!(a.refused(), Opt::Congestion.bit());
    assert!(s.tcp_nodelay().unwrap(), "the other options still went on");
}
