//! Chaos: sluice when the world misbehaves. A lossy, rate-capped path to
//! the upstream (a network namespace this test creates: 1% loss by an
//! nftables rule, 100 Mbit/s by `tc tbf`); an upstream that resets right
//! after its last bytes while the client sits behind a slow link (they must
//! all arrive before the reset); an upstream killed with SIGKILL
//! mid-transfer and restarted; an upstream that accepts and never reads; a
//! client that opens 5,000 connections and sends nothing; 100 reloads under
//! traffic; a 60 s soak. Each test prints its figures (run with
//! `--nocapture` to see them) and skips, saying why, where the machine
//! forbids what it needs (namespaces need root, `ip` and `nft`).
//!
//! Upstreams that must die with SIGKILL or live in another namespace are
//! this test binary run again as a helper process (`helper_*` below, which
//! do nothing unless `netns::HELPER_ENV` names an address; the pattern and
//! the namespaces live in `tests/support/netns.rs`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::backends::{self, Stream, timeouts, verified_upload, write_stream};
use crate::harness::{Sluice, raise_fd_limit, temp_config};
use crate::netns::{Helper, Netns, RootLink, can_run, sh};

/// This test binary again, running helper test `chaos::NAME` on `addr` (inside `ns` if given).
fn helper(name: &str, addr: SocketAddr, ns: Option<&Netns>) -> Helper {
    Helper::spawn(&format!("chaos::{name}"), addr, ns)
}

/// A namespace with a veth to the root namespace, where `tc` is there too (`None`, with a message, if not).
fn chaos_netns() -> Option<(Netns, RootLink)> {
    if !can_run("tc", &["-V"]) {
        eprintln!("SKIP: `tc` is not installed (apt-get install iproute2)");
        return None;
    }
    let mut ns = Netns::new("chaos")?;
    let link = ns.link_to_root();
    Some((ns, link))
}

/// Helper: reads each connection to EOF, answers `count ‖ digest` (as `backends::sink`).
#[test]
fn helper_sink() {
    let Some(addr) = Helper::addr() else { return };
    let l = TcpListener::bind(addr).expect("bind");
    for mut conn in l.incoming().flatten() {
        std::thread::spawn(move || backends::answer_digest(&mut conn));
    }
}

/// Helper: sends 1 GiB of stream 5 to each connection, never reading what the client sends.
#[test]
fn helper_source() {
    let Some(addr) = Helper::addr() else { return };
    let l = TcpListener::bind(addr).expect("bind");
    for conn in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut s = conn;
            let _ = write_stream(&mut s, 5, 1 << 30);
        });
    }
}

/// Helper: writes 2 MiB of stream 6 to each connection, waits until the
/// peer (sluice) has acknowledged every byte — so none is lost in our own
/// send queue — then resets the connection.
#[test]
fn helper_write_then_reset() {
    let Some(addr) = Helper::addr() else { return };
    let l = TcpListener::bind(addr).expect("bind");
    for conn in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut s = conn;
            if write_stream(&mut s, 6, 2 << 20).is_ok() {
                let deadline = Instant::now() + Duration::from_secs(30);
                while sluice::sys::socket_queue::unacknowledged(&s).is_ok_and(|n| n > 0) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
        });
    }
}

#[test]
fn a_lossy_rate_capped_path_loses_no_byte_and_fires_no_timeout() {
    a_lossy_rate_capped_path_loses_no_byte_and_fires_no_timeout_in("auto");
}

/// The same under `relay: uring`.
#[test]
fn a_lossy_rate_capped_path_loses_no_byte_and_fires_no_timeout_under_relay_uring() {
    a_lossy_rate_capped_path_loses_no_byte_and_fires_no_timeout_in("uring");
}

fn a_lossy_rate_capped_path_loses_no_byte_and_fires_no_timeout_in(mode: &str) {
    let Some((ns, link)) = chaos_netns() else { return };
    // 1% of the packets into the upstream's namespace are dropped; sluice → upstream is capped at 100 Mbit/s.
    ns.exec(&["nft", "add", "table", "inet", "chaos"]);
    ns.exec(&["nft", "add chain inet chaos input { type filter hook input priority 0 ; }"]);
    ns.exec(&["nft", "add rule inet chaos input numgen random mod 100 0 drop"]);
    sh(
        "tc",
        &["qdisc", "add", "dev", &link.host_if, "root", "tbf", "rate", "100mbit", "burst", "64kb", "latency", "100ms"],
    );
    let up = SocketAddr::from((link.peer, 9000));
    let _sink = helper("helper_sink", up, Some(&ns));
    let yaml = format!(
        "workers: 1\nrelay: {mode}\nroutes:\n  - name: lossy\n    listen: 127.0.0.1:0\n    upstreams: [\"{up}\"]\n\
         \x20   idle_timeout: 5s\n    socket: {{ user_timeout: 10s, keepalive: {{ idle: 2s, interval: 1s, count: 3 }} }}\n"
    );
    let s = Sluice::with_config(&yaml, &["--log", "info"]);
    let (transfers, len) = (100u64, 8u64 << 20);
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (next, bad, addr) = (Arc::clone(&next), Arc::clone(&bad), s.addr());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= transfers {
                        return;
                    }
                    match verified_upload(addr, 1000 + i, len) {
                        Ok(true) => {}
                        Ok(false) => bad.lock().expect("lock").push(format!("transfer {i}: corrupted")),
                        Err(e) => bad.lock().expect("lock").push(format!("transfer {i}: {e}")),
                    }
                }
            })
        })
        .collect();
    let mut peak_rss = 0;
    while threads.iter().any(|t| !t.is_finished()) {
        peak_rss = peak_rss.max(s.rss_kib());
        std::thread::sleep(Duration::from_millis(200));
    }
    for t in threads {
        t.join().expect("transfer thread");
    }
    let bad = bad.lock().expect("lock").clone();
    eprintln!(
        "chaos lossy path: {transfers} transfers, {} MiB verified, {:.1} s, peak RSS {} KiB",
        (transfers * len) >> 20,
        started.elapsed().as_secs_f64(),
        peak_rss
    );
    assert!(bad.is_empty(), "{bad:?}");
    // Access lines reach the log within 50 ms of the session's end.
    assert!(
        s.wait_log_count("reason=clean", transfers as usize, Duration::from_secs(5)),
        "every transfer ended cleanly"
    );
    assert_eq!(s.log_count("reason="), transfers as usize, "and nothing else: {}", s.log());
}

#[test]
fn an_upstream_killed_mid_transfer_resets_its_clients_and_later_ones_succeed() {
    an_upstream_killed_mid_transfer_resets_its_clients_and_later_ones_succeed_in("auto");
}

/// The same under `relay: uring`.
#[test]
fn an_upstream_killed_mid_transfer_resets_its_clients_and_later_ones_succeed_under_relay_uring() {
    an_upstream_killed_mid_transfer_resets_its_clients_and_later_ones_succeed_in("uring");
}

fn an_upstream_killed_mid_transfer_resets_its_clients_and_later_ones_succeed_in(mode: &str) {
    let up = backends::refused(); // a free port for the helper
    let mut source = helper("helper_source", up, None);
    let s = Sluice::with_config(&crate::harness::one_route(mode, &[up], ""), &[]);
    let mut c = backends::connect(s.addr());
    // Bytes the source never reads: when it dies the kernel resets the connection (as for any
    // killed server with unread input) rather than closing it cleanly.
    c.write_all(b"request the source ignores").expect("write");
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    while got < 8 << 20 {
        got += c.read(&mut buf).expect("stream") as u64;
    }
    kill(Pid::from_raw(source.0.id() as i32), Signal::SIGKILL).expect("kill");
    let _ = source.0.wait();
    let end = loop {
        match c.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got += n as u64,
            Err(e) => break Err(e),
        }
    };
    assert!(
        matches!(&end, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "the client of the killed upstream must see a reset, got {end:?} after {got} bytes"
    );
    assert!(got < 1 << 30);
    let _source = helper("helper_source", up, None);
    let mut later = backends::connect(s.addr());
    let mut want = vec![0u8; 4 << 20];
    later.read_exact(&mut want).expect("a later client is served");
    assert_eq!(want, Stream::bytes(5, 4 << 20), "and gets the right bytes");
    eprintln!("chaos kill: first client reset after {} MiB; a later client read 4 MiB byte-exact", got >> 20);
}

#[test]
fn an_upstream_that_never_reads_throttles_the_client_and_the_idle_timeout_ends_it() {
    an_upstream_that_never_reads_throttles_the_client_and_the_idle_timeout_ends_it_in("splice");
}

/// The same under `relay: uring`.
#[test]
fn an_upstream_that_never_reads_throttles_the_client_and_the_idle_timeout_ends_it_under_relay_uring() {
    an_upstream_that_never_reads_throttles_the_client_and_the_idle_timeout_ends_it_in("uring");
}

fn an_upstream_that_never_reads_throttles_the_client_and_the_idle_timeout_ends_it_in(mode: &str) {
    // Accepts and holds connections, never reading.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let up = l.local_addr().expect("addr");
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = Arc::clone(&held);
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            h.lock().expect("lock").push(c);
        }
    });
    let yaml = crate::harness::one_route(mode, &[up], "    idle_timeout: 2s\n");
    let s = Sluice::with_config(&yaml, &[]);
    let rss0 = s.rss_kib();
    let c = backends::connect(s.addr());
    let written = Arc::new(AtomicU64::new(0));
    let (w, mut cw) = (Arc::clone(&written), c.try_clone().expect("clone"));
    let writer = std::thread::spawn(move || {
        let chunk = vec![7u8; 64 << 10];
        loop {
            match cw.write(&chunk) {
                Ok(n) => {
                    w.fetch_add(n as u64, Ordering::SeqCst);
                }
                Err(e) => return e,
            }
        }
    });
    // Wait for the writer to stall (backpressure) instead of sluice buffering more: no
    // progress for half a second. Bounded well inside the 2 s idle timeout's reach.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stalled_at = written.load(Ordering::SeqCst);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = written.load(Ordering::SeqCst);
        if now == stalled_at && now > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the writer never stalled ({now} bytes written)");
        stalled_at = now;
    }
    let rss_full = s.rss_kib();
    assert!(s.wait_log("reason=idle_timeout", Duration::from_secs(10)), "the idle timeout never ended it");
    let e = writer.join().expect("writer");
    eprintln!(
        "chaos black hole: client stalled after {} KiB; sluice RSS {rss0} -> {rss_full} KiB; writer ended with: {e}",
        stalled_at >> 10
    );
    assert!(stalled_at < 64 << 20, "the client was not throttled: {stalled_at} bytes accepted");
    assert!(rss_full < rss0 + 8 * 1024, "sluice's memory grew with the stuck bytes: {rss0} -> {rss_full} KiB");
    assert!(
        matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::TimedOut
                | io::ErrorKind::WouldBlock
        ),
        "{e}"
    );
}

/// A single-threaded non-blocking echo backend (thousands of connections, one thread).
fn mio_echo() -> SocketAddr {
    use mio::net::TcpListener as MioListener;
    use mio::{Events, Interest, Poll, Token};
    let mut l = MioListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut poll = Poll::new().expect("poll");
        poll.registry().register(&mut l, Token(usize::MAX), Interest::READABLE).expect("register");
        let mut conns = slab::Slab::new();
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let _ = poll.poll(&mut events, None);
            for ev in events.iter() {
                if ev.token() == Token(usize::MAX) {
                    while let Ok((mut c, _)) = l.accept() {
                        let e = conns.vacant_entry();
                        let _ = poll.registry().register(&mut c, Token(e.key()), Interest::READABLE);
                        e.insert(c);
                    }
                    continue;
                }
                let k = ev.token().0;
                let Some(c) = conns.get_mut(k) else { continue };
                let mut dead = false;
                loop {
                    match c.read(&mut buf) {
                        // Small echoes: the write fits the socket buffer.
                        Ok(0) => dead = true,
                        Ok(n) => dead = c.write_all(&buf[..n]).is_err(),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => dead = true,
                    }
                    if dead {
                        break;
                    }
                }
                if dead {
                    conns.remove(k);
                }
            }
        }
    });
    addr
}

fn echo_ok(addr: SocketAddr) -> bool {
    let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else { return false };
    timeouts(&c);
    let mut back = [0u8; 5];
    c.write_all(b"hello").is_ok() && c.read_exact(&mut back).is_ok() && &back == b"hello"
}

#[test]
fn five_thousand_silent_connections_stay_bounded_and_are_reaped() {
    five_thousand_silent_connections_stay_bounded_and_are_reaped_in("auto");
}

/// The same under `relay: uring`.
#[test]
fn five_thousand_silent_connections_stay_bounded_and_are_reaped_under_relay_uring() {
    five_thousand_silent_connections_stay_bounded_and_are_reaped_in("uring");
}

fn five_thousand_silent_connections_stay_bounded_and_are_reaped_in(mode: &str) {
    raise_fd_limit();
    let up = mio_echo();
    let yaml = crate::harness::one_route(mode, &[up], "    idle_timeout: 3s\n");
    let s = Sluice::with_config(&yaml, &["--log", "info"]);
    let (rss0, fds0) = (s.rss_kib(), s.fds().0);
    let silent: Vec<TcpStream> =
        (0..5000).map(|_| TcpStream::connect_timeout(&s.addr(), Duration::from_secs(10)).expect("connect")).collect();
    // Other clients are served meanwhile.
    let served = (0..20).filter(|_| echo_ok(s.addr())).count();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut peak = (0, 0);
    while Instant::now() < deadline {
        peak = (peak.0.max(s.rss_kib()), peak.1.max(s.fds().0));
        if peak.1 >= 2 * 5000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The idle timeout reaps them all.
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.fds().0 > fds0 + 4 {
        assert!(Instant::now() < deadline, "silent sessions were not reaped: {} sockets", s.fds().0);
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "chaos slowloris: 5000 silent conns, sluice peak RSS {} KiB (from {rss0}), peak sockets {}, {served}/20 others served, all reaped",
        peak.0, peak.1
    );
    assert_eq!(served, 20, "other clients must be served");
    assert!(peak.0 < rss0 + 32 * 1024, "RSS grew by more than 32 MiB for 5000 idle sessions");
    drop(silent);
}

#[test]
fn a_hundred_reloads_in_ten_seconds_lose_no_byte() {
    let up = backends::sink();
    let config = |idle: u32| {
        format!(
            "workers: 2\nroutes:\n  - name: storm\n    listen: 127.0.0.1:0\n    upstreams: [\"{up}\"]\n    idle_timeout: {idle}s\n"
        )
    };
    let (dir, path) = temp_config(&config(60));
    let mut cmd = Command::new(crate::harness::BIN);
    cmd.arg("-c").arg(&path).args(["--log", "info"]);
    let s = Sluice::spawn(cmd, 1, Some(dir));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(Vec::new())));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (stop, ok, bad, addr) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&bad), s.addr());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    match verified_upload(addr, t * 1_000_000 + i, 1 << 20) {
                        Ok(true) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(false) => bad.lock().expect("lock").push(format!("{t}/{i}: corrupted")),
                        Err(e) => bad.lock().expect("lock").push(format!("{t}/{i}: {e}")),
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let started = Instant::now();
    for n in 0..100u32 {
        std::fs::write(&path, config(60 + n % 2)).expect("rewrite");
        s.signal(Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(s.wait_log_count("reloaded", 100, Duration::from_secs(10)), "not every reload was applied");
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("load thread");
    }
    let bad = bad.lock().expect("lock").clone();
    eprintln!(
        "chaos reload storm: 100 reloads in {:.1} s, {} verified 1 MiB transfers, {} failed",
        started.elapsed().as_secs_f64(),
        ok.load(Ordering::SeqCst),
        bad.len()
    );
    assert!(bad.is_empty(), "{bad:?}");
    assert!(ok.load(Ordering::SeqCst) > 100);
}

#[test]
fn a_sixty_second_soak_ends_where_it_started() {
    let echo = mio_echo();
    let sink = backends::sink();
    let yaml = format!(
        "workers: 2\nroutes:\n  - name: rr\n    listen: 127.0.0.1:0\n    upstreams: [\"{echo}\"]\n  - name: bulk\n    listen: 127.0.0.1:0\n    upstreams: [\"{sink}\"]\n"
    );
    let s = Sluice::with_config(&yaml, &["--log", "info", "--no-access-log"]);
    let (rr, bulk) = (s.addrs[0], s.addrs[1]);
    let run = Arc::new(AtomicBool::new(true));
    let pause = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let sessions = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for kind in 0..3u64 {
        let (run, pause, failures, sessions) =
            (Arc::clone(&run), Arc::clone(&pause), Arc::clone(&failures), Arc::clone(&sessions));
        threads.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while run.load(Ordering::SeqCst) {
                if pause.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                let ok = match kind {
                    2 => verified_upload(bulk, i, 4 << 20).unwrap_or(false),
                    _ => echo_ok(rr),
                };
                if !ok {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                sessions.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        }));
    }
    // 50 long-lived idle connections throughout.
    let _held: Vec<TcpStream> = (0..50).map(|_| backends::connect(rr)).collect();
    // Quiesce (load paused, sessions settled) and measure.
    let settle = |pause: &AtomicBool| -> (u64, usize) {
        pause.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(500));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = s.fds();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = s.fds();
            if now == last || Instant::now() > deadline {
                break;
            }
            last = now;
        }
        let m = (s.rss_kib(), last.0 + last.1);
        pause.store(false, Ordering::SeqCst);
        m
    };
    std::thread::sleep(Duration::from_secs(10));
    let (rss_warm, fds_warm) = settle(&pause);
    std::thread::sleep(Duration::from_secs(50));
    let (rss_end, fds_end) = settle(&pause);
    run.store(false, Ordering::SeqCst);
    for t in threads {
        t.join().expect("load thread");
    }
    eprintln!(
        "chaos soak: {} sessions in 60 s, {} failed; after warm-up RSS {rss_warm} KiB, {fds_warm} fds; at the end RSS {rss_end} KiB, {fds_end} fds",
        sessions.load(Ordering::SeqCst),
        failures.load(Ordering::SeqCst)
    );
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert!((rss_end as f64) <= rss_warm as f64 * 1.05, "RSS grew more than 5%: {rss_warm} -> {rss_end} KiB");
    assert!((fds_end as f64) <= fds_warm as f64 * 1.05, "fds grew more than 5%: {fds_warm} -> {fds_end}");
}

#[test]
fn a_reset_reaches_a_client_behind_a_slow_link_after_every_byte_before_it() {
    a_reset_reaches_a_client_behind_a_slow_link_after_every_byte_before_it_in("auto");
}

/// The same under `relay: uring`.
#[test]
fn a_reset_reaches_a_client_behind_a_slow_link_after_every_byte_before_it_under_relay_uring() {
    a_reset_reaches_a_client_behind_a_slow_link_after_every_byte_before_it_in("uring");
}

fn a_reset_reaches_a_client_behind_a_slow_link_after_every_byte_before_it_in(mode: &str) {
    let Some((ns, link)) = chaos_netns() else { return };
    // sluice and the upstream live in the namespace (the upstream on the
    // namespace's own address: local delivery, fast); this test is the client,
    // across the veth, whose namespace end sends at 20 Mbit/s. When the
    // upstream resets, the last of its 2 MiB are still in sluice's pipe and
    // send queue toward the client.
    ns.exec(&[
        "tc",
        "qdisc",
        "add",
        "dev",
        &link.ns_if,
        "root",
        "tbf",
        "rate",
        "20mbit",
        "burst",
        "32kb",
        "latency",
        "200ms",
    ]);
    let up = SocketAddr::from((link.peer, 9000));
    let _upstream = helper("helper_write_then_reset", up, Some(&ns));
    let yaml = format!(
        "workers: 1\nrelay: {mode}\nroutes:\n  - name: slow\n    listen: {}:0\n    upstreams: [\"{up}\"]\n",
        link.peer
    );
    let (dir, path) = temp_config(&yaml);
    let mut cmd = ns.command(crate::harness::BIN);
    cmd.arg("-c").arg(&path);
    let s = Sluice::spawn(cmd, 1, Some(dir));
    let mut c = backends::connect(s.addr());
    let started = Instant::now();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0u64;
    let end = loop {
        match c.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                h.update(&buf[..n]);
                got += n as u64;
            }
            Err(e) => break Err(e),
        }
    };
    eprintln!("chaos slow link: {got} bytes in {:.2} s, then {end:?}", started.elapsed().as_secs_f64());
    assert_eq!(got, 2 << 20, "bytes sent before the reset were lost (then {end:?})");
    assert_eq!(h.digest(), Stream::digest(6, 2 << 20), "and they must be the right ones");
    assert!(
        matches!(&end, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "the upstream's reset must reach the client after its bytes, got {end:?}"
    );
    assert!(s.wait_log("reason=upstream_reset", Duration::from_secs(5)), "{}", s.log());
}
