//! Workers and socket options as the kernel sees them: four workers share
//! the clients; congestion control and keepalive reach the sockets sluice
//! makes (read back with `ss`); an unavailable algorithm falls back with
//! one warning; the default TCP_NOTSENT_LOWAT bounds what waits unsent
//! toward a client that doesn't read; a route's `source:` is where its
//! upstream connections and health checks come from, and one that is not
//! on this host is a local error.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::backends::{self, Stream, connect};
use crate::harness::{Sluice, one_route, raise_fd_limit};

#[test]
fn four_workers_share_two_thousand_connections() {
    raise_fd_limit();
    let up = backends::echo();
    let mut s = Sluice::start(&["--listen", "127.0.0.1:0", "--upstream", &up.to_string(), "--workers", "4"], 1);
    let addr = s.addr();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..250u64 {
                    let mut c = connect(addr);
                    let msg = Stream::bytes(t * 1000 + i, 1000 + (i as usize % 3000));
                    c.write_all(&msg).expect("write");
                    let mut got = vec![0; msg.len()];
                    c.read_exact(&mut got).expect("read");
                    assert!(got == msg, "thread {t} connection {i}: different bytes");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    s.signal(Signal::SIGTERM);
    s.wait_exit(Duration::from_secs(10)).expect("exit");
    let log = s.log();
    let line = log.lines().find(|l| l.contains("accepted per worker: [")).expect("per-worker summary");
    let counts: Vec<u64> = line
        .split("accepted per worker: [")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .expect("list")
        .split(", ")
        .map(|n| n.parse().expect("number"))
        .collect();
    assert_eq!(counts.len(), 4);
    assert_eq!(counts.iter().sum::<u64>(), 2000, "{line}");
    assert!(counts.iter().filter(|&&n| n > 0).count() >= 2, "one worker took everything: {line}");
}

/// `ss -tino` lines for established sockets with port `port` on either end.
fn ss_lines(port: u16) -> Option<String> {
    let out = Command::new("ss")
        .args(["-tino", "state", "established", &format!("( sport = :{port} or dport = :{port} )")])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pick_congestion() -> Option<String> {
    let available = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control").ok()?;
    let default = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").ok()?;
    // One that is not the default, so seeing it proves sluice set it.
    available.split_whitespace().find(|a| *a != default.trim()).map(str::to_owned)
}

#[test]
fn congestion_and_keepalive_reach_the_sockets_sluice_makes() {
    if ss_lines(1).is_none() {
        eprintln!("skipped: `ss` (iproute2) is not available");
        return;
    }
    let Some(cc) = pick_congestion() else {
        eprintln!("skipped: this kernel offers a single congestion control algorithm");
        return;
    };
    let up = backends::echo();
    let opts = format!(
        "    socket:\n      congestion: {cc}\n      keepalive: {{ idle: 31s, interval: 5s, count: 3 }}\n      nodelay: true\n"
    );
    let s = Sluice::with_config(&one_route("splice", &[up], &opts), &[]);
    let mut c = connect(s.addr());
    c.write_all(b"hi").expect("write");
    let mut b = [0; 2];
    c.read_exact(&mut b).expect("echo");
    let upstream_side = ss_lines(up.port()).expect("ss");
    // Our own end of the upstream connection is the one whose peer is the upstream port.
    let ours: Vec<&str> = upstream_side.split('\n').collect();
    let joined = ours.join("\n");
    assert!(joined.contains(&cc), "TCP_CONGESTION {cc} not on the upstream socket:\n{joined}");
    assert!(joined.contains("timer:(keepalive"), "no keepalive timer on the upstream socket:\n{joined}");
    let client_side = ss_lines(s.addr().port()).expect("ss");
    assert!(client_side.contains(&cc), "the accepted socket did not inherit {cc}:\n{client_side}");
    assert!(client_side.contains("timer:(keepalive"), "no keepalive on the client socket:\n{client_side}");
}

#[test]
fn an_unavailable_congestion_control_falls_back_with_one_warning_and_the_backlog_is_capped() {
    let up: SocketAddr = backends::echo();
    let opts = "    backlog: 65535\n    socket:\n      congestion: nosuchcc\n";
    let s = Sluice::with_config(&one_route("splice", &[up], opts).replace("workers: 1", "workers: 2"), &[]);
    let mut c = connect(s.addr());
    c.write_all(b"hi").expect("write");
    let mut b = [0; 2];
    c.read_exact(&mut b).expect("served with the kernel's default");
    assert_eq!(s.log_count("congestion control nosuchcc is not available"), 1, "{}", s.log());
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
    if somaxconn < 65535 {
        assert!(s.log().contains("backlog 65535 capped at net.core.somaxconn"), "{}", s.log());
    }
}

/// The most unsent bytes (`notsent:`) queued on a socket of a connection to
/// `port` (the clients' ends send nothing, so this is sluice's); `None` without `ss`.
fn sluice_notsent(port: u16) -> Option<u64> {
    let text = ss_lines(port)?;
    Some(text.split_whitespace().filter_map(|w| w.strip_prefix("notsent:")?.parse().ok()).max().unwrap_or(0))
}

/// Waits (bounded) until sluice's end toward a client that never reads holds
/// at least `at_least` unsent bytes, then returns the most seen over 300 ms.
fn notsent_toward_a_stalled_client(relay: &str, extra: &str, at_least: u64) -> Option<u64> {
    sluice_notsent(1)?;
    let s = Sluice::with_config(&one_route(relay, &[backends::source(7, 256 << 20)], extra), &[]);
    let _client = connect(s.addr()); // never reads
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sluice_notsent(s.addr().port())? < at_least {
        assert!(std::time::Instant::now() < deadline, "sluice never queued {at_least} unsent bytes");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut most = 0;
    for _ in 0..15 {
        most = most.max(sluice_notsent(s.addr().port())?);
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(most)
}

#[test]
fn unsent_data_is_bounded_while_splicing_by_default_always_when_set_and_unbounded_with_notsent_lowat_0() {
    let Some(bounded) = notsent_toward_a_stalled_client("splice", "", 128 << 10) else {
        eprintln!("skipped: `ss` (iproute2) is not available");
        return;
    };
    // 1 MiB (the default TCP_NOTSENT_LOWAT) plus at most one write past it
    // (a bulk flow's pipe grows up to the bound).
    assert!(bounded <= 2 << 20, "{bounded} bytes unsent toward the client with the default notsent_lowat");
    let off = notsent_toward_a_stalled_client("splice", "    socket: { notsent_lowat: 0 }\n", 1 << 20).expect("ss");
    assert!(off > bounded, "notsent_lowat: 0 queued {off} bytes, the default {bounded}");
    // Copying, the default leaves the kernel's queue (it measured dearer
    // per byte bounded); a configured bound holds in every stage.
    let copying = notsent_toward_a_stalled_client("copy", "", 1 << 20).expect("ss");
    assert!(copying > bounded, "copying queued {copying} bytes, splicing {bounded}");
    let set =
        notsent_toward_a_stalled_client("copy", "    socket: { notsent_lowat: 256KiB }\n", 128 << 10).expect("ss");
    assert!(set <= 512 << 10, "{set} bytes unsent toward the client with notsent_lowat: 256KiB set, copying");
}

/// An echo upstream that records the address of every connection it gets.
fn recording_echo() -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&peers);
    let up = backends::serve(move |mut s| {
        if let Ok(p) = s.peer_addr() {
            seen.lock().expect("peers").push(p);
        }
        let mut buf = [0; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    (up, peers)
}

/// (local, peer) of each established TCP connection to port `port`, from `ss -tn`.
fn ss_connections_to(port: u16) -> Option<Vec<(SocketAddr, SocketAddr)>> {
    let out =
        Command::new("ss").args(["-tn", "state", "established", &format!("( dport = :{port} )")]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pairs = text
        .lines()
        .filter_map(|l| {
            let mut addrs = l.split_whitespace().filter_map(|w| w.parse::<SocketAddr>().ok());
            Some((addrs.next()?, addrs.next()?))
        })
        .collect();
    out.status.success().then_some(pairs)
}

#[test]
fn a_source_address_is_where_upstream_connections_and_health_checks_come_from() {
    if ss_connections_to(1).is_none() {
        eprintln!("skipped: `ss` (iproute2) is not available");
        return;
    }
    let source = IpAddr::from([127, 0, 0, 2]); // every 127/8 address is this host's on Linux loopback
    let (up, peers) = recording_echo();
    let extra = "    source: 127.0.0.2\n    health_check: { interval: 100ms, timeout: 100ms }\n";
    let s = Sluice::with_config(&one_route("copy", &[up], extra), &[]);
    let mut c = connect(s.addr());
    c.write_all(b"hi").expect("write");
    let mut b = [0; 2];
    c.read_exact(&mut b).expect("echo through the source address");
    let conns = ss_connections_to(up.port()).expect("ss");
    let session: Vec<_> = conns.iter().filter(|(_, peer)| *peer == up).collect();
    assert!(!session.is_empty(), "ss shows no connection to the upstream {up}: {conns:?}");
    assert!(session.iter().all(|(local, _)| local.ip() == source), "not from {source}: {session:?}");
    // Health checks too: every connection the upstream got (the session's and at least two checks').
    let deadline = Instant::now() + Duration::from_secs(10);
    while peers.lock().expect("peers").len() < 3 {
        assert!(Instant::now() < deadline, "no health checks reached the upstream");
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = peers.lock().expect("peers").clone();
    assert!(seen.iter().all(|p| p.ip() == source), "connections not from {source}: {seen:?}");
}

#[test]
fn a_source_address_not_on_this_host_resets_clients_and_blames_no_upstream() {
    let (up, peers) = recording_echo();
    // TEST-NET-1 is never an address of this host.
    let extra = "    source: 192.0.2.1\n    health_check: { interval: 100ms, timeout: 100ms, fall: 1 }\n";
    let s = Sluice::with_config(&one_route("copy", &[up], extra), &[]);
    for _ in 0..6 {
        let outcome = std::net::TcpStream::connect_timeout(&s.addr(), Duration::from_secs(10)).and_then(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(10)))?;
            c.read(&mut [0; 1])
        });
        assert_eq!(outcome.map_err(|e| e.kind()), Err(io::ErrorKind::ConnectionReset), "the client is reset");
    }
    assert!(s.wait_log("192.0.2.1 is not an address of this host", Duration::from_secs(10)), "no warning");
    assert!(s.wait_log("cannot health-check", Duration::from_secs(10)), "the checks did not say why they stopped");
    assert!(s.wait_log_count("reason=local_error", 6, Duration::from_secs(10)), "not closed as local errors");
    let log = s.log();
    assert!(!log.contains("ejected") && !log.contains("is DOWN"), "the upstream was blamed:\n{log}");
    assert!(peers.lock().expect("peers").is_empty(), "something reached the upstream");
}
