//! Connection rates and overload shedding, end to end: a route's rate holds
//! exactly with 1 and with 4 workers (one shared cell), a per-client rate
//! groups clients by prefix (IPv4 source addresses on 127/8, IPv6 through
//! PROXY headers), refused clients are reset and counted, the state survives
//! a reload, and overload shedding trips near the fd limit and recovers.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::backends;
use crate::harness::{BIN, Sluice, one_route, raise_fd_limit, temp_config};
use crate::observability::{admin_addr, get, with_admin};

/// One connection from `source` (any local address; `None`: the kernel's
/// choice) with `prefix` sent first: true if its echo came back (admitted),
/// false if it was reset or closed right after accept (refused).
fn try_once(addr: SocketAddr, source: Option<IpAddr>, prefix: &[u8]) -> bool {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    if let Some(ip) = source {
        socket.bind(&SocketAddr::new(ip, 0).into()).expect("bind the source address");
    }
    match socket.connect_timeout(&addr.into(), Duration::from_secs(5)) {
        Ok(()) => {}
        // Refused so fast that the reset came back before connect() looked.
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return false,
        Err(e) => panic!("connect: {e}"),
    }
    let mut c: TcpStream = socket.into();
    backends::timeouts(&c);
    let mut msg = prefix.to_vec();
    msg.extend_from_slice(b"ping");
    if c.write_all(&msg).is_err() {
        return false;
    }
    let mut got = [0u8; 4];
    match c.read_exact(&mut got) {
        Ok(()) => &got == b"ping",
        Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof) => false,
        Err(e) => panic!("neither admitted nor refused: {e}"),
    }
}

/// A sink for the PROXY tests: reads the header and what follows, echoes the payload after the header.
fn proxy_echo() -> SocketAddr {
    backends::serve(|mut s| {
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"ping") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s.write_all(b"ping");
    })
}

/// A connection whose `msg` came back, or `None` if it was refused (reset or closed).
fn echoed(addr: SocketAddr, msg: &[u8]) -> Option<TcpStream> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    backends::timeouts(&c);
    backends::exchange(&mut c, msg).ok().filter(|g| g == msg).map(|_| c)
}

fn refused_total(admin: SocketAddr, reason: &str) -> u64 {
    let (_, m) = get(admin, "/metrics");
    // Summed over the routes.
    let label = format!(",reason=\"{reason}\"}} ");
    m.lines()
        .filter(|l| l.starts_with("sluice_refused_total{route="))
        .filter_map(|l| l.split_once(label.as_str())?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn a_routes_rate_holds_exactly_with_one_worker_and_with_four() {
    for workers in [1, 4] {
        let yaml = one_route("auto", &[backends::echo()], "    max_connection_rate: { per_second: 2, burst: 40 }\n")
            .replace("workers: 1", &format!("workers: {workers}"));
        let (s, admin) = with_admin(&yaml);
        let started = Instant::now();
        let admitted = (0..150).filter(|_| try_once(s.addr(), None, b"")).count() as u64;
        let secs = started.elapsed().as_secs_f64().ceil() as u64;
        // The burst, plus what the average rate adds while the burst ran (2 per second).
        assert!(
            (40..=40 + 2 * secs).contains(&admitted),
            "{workers} workers: {admitted} of 150 admitted in {secs} s with a burst of 40 at 2/s"
        );
        assert_eq!(refused_total(admin, "rate_limited"), 150 - admitted, "{workers} workers: every refusal counted");
        assert!(s.wait_log("client(s) refused over max_connection_rate", Duration::from_secs(5)), "{}", s.log());
        eprintln!("rate: {workers} worker(s): {admitted} of 150 admitted (burst 40, 2/s, {secs} s)");
    }
}

#[test]
fn a_per_client_rate_groups_ipv4_clients_by_prefix() {
    let yaml = one_route(
        "auto",
        &[backends::echo()],
        "    max_connection_rate_per_client: { per_second: 1, burst: 5, prefix_v4: 24 }\n",
    );
    let (s, admin) = with_admin(&yaml);
    let from = |ip: &str| -> usize { (0..8).filter(|_| try_once(s.addr(), Some(ip.parse().unwrap()), b"")).count() };
    let a = from("127.0.0.1");
    assert!((5..=6).contains(&a), "127.0.0.1: {a} of 8 admitted, burst 5");
    let b = from("127.0.0.2");
    assert!(b <= 1, "127.0.0.2 shares 127.0.0.0/24's budget: {b} admitted");
    let c = from("127.0.1.1");
    assert!((5..=6).contains(&c), "127.0.1.0/24 has its own: {c} admitted");
    assert_eq!(refused_total(admin, "rate_limited"), 24 - (a + b + c) as u64);
}

#[test]
fn a_per_client_rate_uses_the_proxy_headers_client_and_groups_ipv6_by_64() {
    let yaml = one_route(
        "auto",
        &[proxy_echo()],
        "    accept_proxy_protocol: true\n    max_connection_rate_per_client: { per_second: 1, burst: 3 }\n",
    );
    let s = Sluice::with_config(&yaml, &[]);
    let header = |src: &str| format!("PROXY TCP6 {src} 2001:db8::ffff 5555 443\r\n").into_bytes();
    let from = |src: &str| -> usize { (0..5).filter(|_| try_once(s.addr(), None, &header(src))).count() };
    let a = from("2001:db8:0:1::1");
    assert!((3..=4).contains(&a), "{a}");
    assert!(from("2001:db8:0:1::2") <= 1, "the same /64");
    let c = from("2001:db8:0:2::1");
    assert!((3..=4).contains(&c), "another /64: {c}");
}

#[test]
fn a_reload_keeps_a_routes_rate_state() {
    let yaml = one_route("auto", &[backends::echo()], "    max_connection_rate: { per_second: 1, burst: 5 }\n");
    let s = Sluice::with_config(&yaml, &[]);
    let admitted = (0..8).filter(|_| try_once(s.addr(), None, b"")).count();
    assert!((5..=6).contains(&admitted));
    // A reload that changes the route (its idle timeout): the rate's state stays.
    let path = s.config_path().expect("config file");
    std::fs::write(&path, format!("{yaml}    idle_timeout: 1m\n")).expect("rewrite");
    s.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(s.wait_log("reloaded", Duration::from_secs(10)), "{}", s.log());
    assert!(!try_once(s.addr(), None, b""), "a reload must not hand out a new burst");
}

#[test]
fn overload_shedding_trips_near_the_fd_limit_and_recovers() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    raise_fd_limit();
    let admin = admin_addr();
    let yaml = format!(
        "admin: {{ listen: \"{admin}\" }}\noverload: {{ max_fd_use: 50%, resume_fd_use: 40% }}\n{}",
        one_route("copy", &[backends::echo()], "")
    );
    let (dir, path) = temp_config(&yaml);
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=200:200", "--", BIN, "-c"]).arg(&path);
    let s = Sluice::spawn(cmd, 1, Some(dir));
    assert_eq!(get(admin, "/readyz").0, 200);
    // Hold sessions until new ones are refused: about (100 - what was open at start) / 2.
    let mut held = Vec::new();
    let mut refused_at = None;
    for i in 0..100 {
        match echoed(s.addr(), b"hold") {
            Some(c) => held.push(c),
            None => {
                refused_at = Some(i);
                break;
            }
        }
    }
    let n = refused_at.expect("never shed load at 50% of 200 fds");
    assert!(n > 10 && n < 50, "shed after {n} sessions");
    assert_eq!(get(admin, "/readyz"), (503, "overloaded\n".to_owned()));
    assert!(refused_total(admin, "overload") >= 1);
    let (_, m) = get(admin, "/metrics");
    assert!(m.contains("\nsluice_overload_episodes_total 1\n") && m.contains("\nsluice_overloaded 1\n"), "{m}");
    assert!(s.wait_log("overload: about", Duration::from_secs(5)), "{}", s.log());
    // Below 40 %: accepting again.
    held.truncate(n / 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if echoed(s.addr(), b"back").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered after sessions closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(admin, "/readyz").0, 200);
    assert!(s.wait_log("overload over", Duration::from_secs(5)), "{}", s.log());
    eprintln!("overload: shed after {n} sessions at 50% of 200 fds, recovered with {} held", held.len());
}
