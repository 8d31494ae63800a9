//! The PROXY protocol and access lists end to end: headers an upstream
//! receives are byte-exact (v1 and v2, IPv4 and IPv6); a header accepted
//! from a client drives the access list, the access log and the onward
//! header; malformed and late headers are refused and counted; denied
//! clients are closed without an upstream connection; IPv6 listeners and
//! upstreams relay byte-exact.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::backends::{Stream, read_digest, timeouts, write_stream};
use crate::harness::Sluice;
use crate::observability::with_admin;
use crate::pools::{Tagged, ask_from, header_capture, proxy_header_len};

const SIG: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

fn route(listen: &str, upstream: SocketAddr, extra: &str) -> String {
    format!("workers: 1\nroutes:\n  - name: pp\n    listen: {listen}\n    upstreams: [\"{upstream}\"]\n{extra}")
}

/// Connects, sends `payload`, half-closes, and returns what came back.
fn exchange(addr: SocketAddr, payload: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    timeouts(&c);
    c.write_all(payload).expect("write");
    c.shutdown(Shutdown::Write).expect("shutdown");
    let mut back = Vec::new();
    c.read_to_end(&mut back).expect("read");
    (c, back)
}

fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = SIG.to_vec();
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.extend_from_slice(&[0x21, 0x11, 0, 12]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            h.extend_from_slice(&[0x21, 0x21, 0, 36]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        _ => panic!("one family"),
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

#[test]
fn upstreams_receive_byte_exact_headers_for_ipv4_and_ipv6() {
    for (listen, bind) in [("127.0.0.1:0", "127.0.0.1:0"), ("\"[::1]:0\"", "[::1]:0")] {
        for version in ["v1", "v2"] {
            let (up, seen) = header_capture(bind, proxy_header_len);
            let s = Sluice::with_config(&route(listen, up, &format!("    proxy_protocol: {version}\n")), &[]);
            let payload = Stream::bytes(7, 100_000);
            let (c, back) = exchange(s.addr(), &payload);
            assert!(
                back == payload,
                "{version} {listen}: the relayed bytes follow the header unchanged ({} of {} back, seen {:?})",
                back.len(),
                payload.len(),
                seen.lock().expect("lock")
            );
            let (client, server) = (c.local_addr().expect("local"), s.addr());
            let want = match version {
                "v1" => {
                    let fam = if client.is_ipv4() { "TCP4" } else { "TCP6" };
                    format!("PROXY {fam} {} {} {} {}\r\n", client.ip(), server.ip(), client.port(), server.port())
                        .into_bytes()
                }
                _ => v2(client, server),
            };
            let got = seen.lock().expect("lock").clone();
            assert_eq!(got, vec![want], "{version} over {listen}");
        }
    }
}

#[test]
fn an_accepted_header_drives_the_acl_the_access_log_and_the_onward_header() {
    let (up, seen) = header_capture("127.0.0.1:0", proxy_header_len);
    let extra = "    accept_proxy_protocol: true\n    proxy_protocol: v1\n    deny: [\"203.0.113.0/24\"]\n";
    let (s, admin) = with_admin(&route("127.0.0.1:0", up, extra));

    // v1 in, v1 out: the original client's addresses travel on.
    let mut msg = b"PROXY TCP4 198.51.100.7 192.0.2.1 4242 443\r\n".to_vec();
    msg.extend_from_slice(b"hello");
    let (_, back) = exchange(s.addr(), &msg);
    assert_eq!(back, b"hello");
    assert!(s.wait_log("client=198.51.100.7:4242", Duration::from_secs(5)), "the access log names the real client");
    // v2 in (IPv6), v1 out.
    let src: SocketAddr = "[2001:db8::5]:5555".parse().expect("addr");
    let dst: SocketAddr = "[2001:db8::1]:443".parse().expect("addr");
    let mut msg = v2(src, dst);
    msg.extend_from_slice(b"world");
    let (_, back) = exchange(s.addr(), &msg);
    assert_eq!(back, b"world");
    let got = seen.lock().expect("lock").clone();
    assert_eq!(
        got,
        vec![
            b"PROXY TCP4 198.51.100.7 192.0.2.1 4242 443\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::5 2001:db8::1 5555 443\r\n".to_vec()
        ]
    );

    // A denied source in the header: closed at once, no upstream connection.
    let before = seen.lock().expect("lock").len();
    let msg = v2("203.0.113.9:1000".parse().expect("addr"), "192.0.2.1:443".parse().expect("addr"));
    let started = Instant::now();
    let mut c = TcpStream::connect_timeout(&s.addr(), Duration::from_secs(5)).expect("connect");
    timeouts(&c);
    c.write_all(&msg).expect("write");
    let mut buf = [0u8; 16];
    assert!(!matches!(c.read(&mut buf), Ok(n) if n > 0), "a denied client gets nothing");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(s.wait_log("refused 203.0.113.9:1000: denied by 203.0.113.0/24", Duration::from_secs(5)));

    // Malformed, and late.
    let mut bad = TcpStream::connect_timeout(&s.addr(), Duration::from_secs(5)).expect("connect");
    timeouts(&bad);
    bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    assert!(!matches!(bad.read(&mut buf), Ok(n) if n > 0), "reset or closed, never answered");
    assert!(s.wait_log("bad PROXY header: not a PROXY protocol header", Duration::from_secs(5)));
    let late = TcpStream::connect_timeout(&s.addr(), Duration::from_secs(5)).expect("connect");
    timeouts(&late);
    let mut late = late;
    late.write_all(b"PROXY TCP4 1.2.3.4").expect("partial header");
    assert!(!matches!(late.read(&mut buf), Ok(n) if n > 0));
    assert!(s.wait_log("no complete PROXY header within 3s", Duration::from_secs(10)));
    assert_eq!(seen.lock().expect("lock").len(), before, "no refused client reached the upstream");

    let st = crate::observability::stats(admin);
    assert_eq!(st["accept"]["refused_acl"].as_u64(), Some(1));
    assert_eq!(st["accept"]["bad_proxy_header"].as_u64(), Some(2));
    let closed = &st["routes"][0]["sessions"]["closed"];
    assert_eq!((closed["denied"].as_u64(), closed["bad_proxy_header"].as_u64()), (Some(1), Some(2)));
}

#[test]
fn acls_close_denied_clients_without_an_upstream_connection() {
    let up = Tagged::on_loopback(0);
    let v6 = Tagged::start("[::1]:0".parse().expect("addr"), 6);
    let yaml = format!(
        "workers: 1\nroutes:\n  - name: v4\n    listen: 127.0.0.1:0\n    upstreams: [\"{}\"]\n    allow: [\"127.0.0.0/8\"]\n    deny: [\"127.0.0.2\"]\n\
         \x20 - name: v6\n    listen: \"[::1]:0\"\n    upstreams: [\"{}\"]\n    allow: [\"127.0.0.0/8\"]\n",
        up.addr, v6.addr
    );
    let s = Sluice::with_config(&yaml, &[]);
    let (v4_route, v6_route) = (s.addrs[0], s.addrs[1]);
    assert_eq!(ask_from(v4_route, Some("127.0.0.1".parse().expect("ip"))).expect("allowed"), 0);
    let before = up.accepted.load(Ordering::SeqCst);
    for _ in 0..5 {
        assert!(ask_from(v4_route, Some("127.0.0.2".parse().expect("ip"))).is_err(), "127.0.0.2 is denied");
        assert!(ask_from(v6_route, None).is_err(), "::1 is not in the allow list");
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), before, "no upstream connection for a denied client");
    assert_eq!(v6.accepted.load(Ordering::SeqCst), 0);
    assert!(s.wait_log("refused [::1]", Duration::from_secs(5)));
    assert!(s.wait_log("not in the allow list", Duration::from_secs(5)));
}

#[test]
fn ipv6_listeners_and_upstreams_relay_byte_exact() {
    let (up, _) = header_capture("[::1]:0", |_| Some(0));
    let s = Sluice::with_config(&route("\"[::1]:0\"", up, ""), &[]);
    assert!(s.addr().is_ipv6());
    let mut c = TcpStream::connect_timeout(&s.addr(), Duration::from_secs(5)).expect("connect");
    timeouts(&c);
    let writer = {
        let mut w = c.try_clone().expect("clone");
        std::thread::spawn(move || {
            write_stream(&mut w, 11, 8 << 20).expect("write");
            w.shutdown(Shutdown::Write).expect("shutdown");
        })
    };
    let got = read_digest(&mut c, None).expect("read");
    writer.join().expect("writer");
    assert_eq!(got, (8 << 20, Stream::digest(11, 8 << 20)));
}
