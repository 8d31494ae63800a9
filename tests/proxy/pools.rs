//! Upstream pools against the real binary: weighted shares per balancing
//! algorithm, least_conn with long sessions, consistent hashing across a
//! reload that removes an upstream, an upstream killed under load (health
//! checks + retries: no client sees a failure), outlier ejection and its
//! half-open retry, backups, `when_all_down`, and DNS changes through the
//! hosts-file seam (and what /stats says of an address DNS dropped).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::backends::timeouts;
use crate::harness::{BIN, Sluice, one_route, temp_config};
use crate::observability::{admin_addr, stats, with_admin};

/// A backend that says which one it is (one byte) and then echoes; it can
/// be killed (its listener closes: connects are refused) and restarted on
/// the same address.
pub(crate) struct Tagged {
    pub addr: SocketAddr,
    tag: u8,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
}

impl Tagged {
    pub fn start(addr: SocketAddr, tag: u8) -> Tagged {
        Tagged::spawn(addr, tag, Arc::new(AtomicUsize::new(0)))
    }

    fn spawn(addr: SocketAddr, tag: u8, accepted: Arc<AtomicUsize>) -> Tagged {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind backend {addr}: {e}"));
        let addr = l.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let (st, acc) = (Arc::clone(&stop), Arc::clone(&accepted));
        let thread = std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { continue };
                if st.load(Ordering::SeqCst) {
                    // Killed: like a process that dies, reset what it had not served
                    // (queued connections are reset when the listener closes here).
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    return;
                }
                acc.fetch_add(1, Ordering::SeqCst);
                timeouts(&s);
                std::thread::Builder::new()
                    .stack_size(128 << 10)
                    .spawn(move || {
                        if s.write_all(&[tag]).is_err() {
                            return;
                        }
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 || s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = s.shutdown(Shutdown::Write);
                    })
                    .expect("thread");
            }
        });
        Tagged { addr, tag, stop, thread: Some(thread), accepted }
    }

    pub fn on_loopback(tag: u8) -> Tagged {
        Tagged::start("127.0.0.1:0".parse().expect("addr"), tag)
    }

    /// Closes the listener: new connects are refused.
    pub fn kill(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            t.join().expect("backend thread");
        }
    }

    /// Listens again on the same address.
    pub fn restart(&mut self) {
        let mut again = Tagged::spawn(self.addr, self.tag, Arc::clone(&self.accepted));
        std::mem::swap(self, &mut again); // `again` is the killed one now: dropping it does nothing
    }
}

impl Drop for Tagged {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.kill();
        }
    }
}

/// One short session: connect (from `from` if given), read the tag, echo a
/// ping, close. Any failure is an error.
pub(crate) fn ask_from(addr: SocketAddr, from: Option<IpAddr>) -> std::io::Result<u8> {
    let s = match from {
        Some(ip) => {
            let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
            sock.bind(&SocketAddr::new(ip, 0).into())?;
            sock.connect_timeout(&addr.into(), Duration::from_secs(5))?;
            TcpStream::from(sock)
        }
        None => TcpStream::connect_timeout(&addr, Duration::from_secs(5))?,
    };
    timeouts(&s);
    let mut s = s;
    let mut tag = [0u8; 1];
    s.read_exact(&mut tag)?;
    s.write_all(b"ping")?;
    // A clean close both ways: once the client sees EOF, sluice has closed the session
    // (so the next session's pick sees the loads as they really are).
    s.shutdown(Shutdown::Write)?;
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    if back != b"ping" {
        return Err(std::io::Error::other(format!("echo mismatch: {back:?}")));
    }
    Ok(tag[0])
}

pub(crate) fn ask(addr: SocketAddr) -> std::io::Result<u8> {
    ask_from(addr, None)
}

fn weighted(ups: &[&Tagged], weights: &[u32], extra: &str) -> String {
    let list: Vec<String> =
        ups.iter().zip(weights).map(|(u, w)| format!("      - {{ address: \"{}\", weight: {w} }}\n", u.addr)).collect();
    format!("workers: 1\nroutes:\n  - name: pool\n    listen: 127.0.0.1:0\n    upstreams:\n{}{extra}", list.concat())
}

fn shares(addr: SocketAddr, n: usize) -> [usize; 3] {
    let mut counts = [0; 3];
    for _ in 0..n {
        counts[usize::from(ask(addr).expect("session"))] += 1;
    }
    counts
}

#[test]
fn weights_1_2_3_hold_for_round_robin_exactly_and_random_within_tolerance() {
    let ups: Vec<Tagged> = (0..3).map(Tagged::on_loopback).collect();
    let refs: Vec<&Tagged> = ups.iter().collect();
    let rr = Sluice::with_config(&weighted(&refs, &[1, 2, 3], "    balance: round_robin\n"), &[]);
    assert_eq!(shares(rr.addr(), 3000), [500, 1000, 1500], "smooth weighted round robin is exact");
    drop(rr);
    for algo in ["random", "least_conn"] {
        let s = Sluice::with_config(&weighted(&refs, &[1, 2, 3], &format!("    balance: {algo}\n")), &[]);
        let got = shares(s.addr(), 3000);
        for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().enumerate() {
            let share = got[i] as f64 / 3000.0;
            // Within 5 percentage points of the weight's share (about 7 standard deviations for random).
            assert!((share - want).abs() <= 0.05, "{algo}: {got:?} is not 1:2:3");
        }
    }
}

#[test]
fn least_conn_sends_new_sessions_to_the_emptiest_upstream() {
    let ups: Vec<Tagged> = (0..3).map(Tagged::on_loopback).collect();
    let refs: Vec<&Tagged> = ups.iter().collect();
    let (s, admin) = with_admin(&weighted(&refs, &[1, 1, 1], "    balance: least_conn\n"));
    let open = |n: usize| -> Vec<(u8, TcpStream)> {
        (0..n)
            .map(|_| {
                let mut c = TcpStream::connect_timeout(&s.addr(), Duration::from_secs(5)).expect("connect");
                timeouts(&c);
                let mut tag = [0u8; 1];
                c.read_exact(&mut tag).expect("tag");
                (tag[0], c)
            })
            .collect()
    };
    let held = open(12);
    let per = |v: &[(u8, TcpStream)], t: u8| v.iter().filter(|(x, _)| *x == t).count();
    assert_eq!([per(&held, 0), per(&held, 1), per(&held, 2)], [4, 4, 4]);
    // Upstream 0's sessions end; the others stay open.
    let held: Vec<(u8, TcpStream)> = held.into_iter().filter(|(t, _)| *t != 0).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = stats(admin);
        let active0 = st["routes"][0]["upstreams"][0]["health"]["active"].as_u64();
        if active0 == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "upstream 0 still has sessions: {active0:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let new = open(4);
    assert_eq!(per(&new, 0), 4, "all four new long sessions go to the empty upstream");
    drop(held);
}

#[test]
fn consistent_hashing_keeps_clients_and_moves_only_the_removed_share() {
    let ups: Vec<Tagged> = (0..4).map(Tagged::on_loopback).collect();
    let refs: Vec<&Tagged> = ups.iter().collect();
    let s = Sluice::with_config(&weighted(&refs, &[1, 1, 1, 1], "    balance: hash_client_ip\n"), &[]);
    // 2,000 client addresses (127.0.1.1 ...): the share that moves is measured to ±1%.
    let clients: Vec<IpAddr> =
        (0..2000u32).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8))).collect();
    let before: Vec<u8> = clients.iter().map(|&ip| ask_from(s.addr(), Some(ip)).expect("session")).collect();
    let again: Vec<u8> = clients[..200].iter().map(|&ip| ask_from(s.addr(), Some(ip)).expect("session")).collect();
    assert_eq!(before[..200], again, "a client always lands on the same upstream");
    for t in 0..4 {
        assert!(before.iter().filter(|&&x| x == t).count() >= 200, "every upstream gets clients");
    }
    // Remove upstream 3 by reload.
    let path = s.config_path().expect("config file");
    std::fs::write(&path, weighted(&refs[..3], &[1, 1, 1], "    balance: hash_client_ip\n")).expect("rewrite");
    s.signal(Signal::SIGHUP);
    assert!(s.wait_log("reloaded", Duration::from_secs(10)), "no reload");
    let after: Vec<u8> = clients.iter().map(|&ip| ask_from(s.addr(), Some(ip)).expect("session")).collect();
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    for (b, a) in before.iter().zip(&after) {
        assert!(b == a || *b == 3, "only clients of the removed upstream move ({b} -> {a})");
    }
    assert_eq!(moved, before.iter().filter(|&&b| b == 3).count(), "every client of the removed one moved");
    assert!(moved as f64 / 2000.0 <= 0.25 + 0.05, "{moved} of 2000 clients moved (1/N + 5% allowed)");
}

/// What one load thread saw: sessions run, failures, tags.
type LoadResult = (usize, Vec<String>, Vec<u8>);

/// Runs `threads` loops of short sessions until `stop`.
fn load(addr: SocketAddr, threads: usize, stop: &Arc<AtomicBool>) -> Vec<JoinHandle<LoadResult>> {
    (0..threads)
        .map(|_| {
            let stop = Arc::clone(stop);
            std::thread::spawn(move || {
                let (mut n, mut failures, mut tags) = (0, Vec::new(), Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    match ask(addr) {
                        Ok(t) => tags.push(t),
                        Err(e) => failures.push(e.to_string()),
                    }
                    n += 1;
                }
                (n, failures, tags)
            })
        })
        .collect()
}

fn attempts(admin: SocketAddr, upstream: usize) -> u64 {
    stats(admin)["routes"][0]["upstreams"][upstream]["connect_attempts"].as_u64().expect("connect_attempts")
}

#[test]
fn killing_an_upstream_under_load_fails_no_client_and_checks_take_it_out_and_back() {
    kill_under_load("");
}

/// Under `relay: uring` a session whose upstream is lost before any byte
/// moved keeps its receive on the client in flight while it tries the
/// next upstream: nothing the client sends meanwhile may be lost.
#[test]
fn killing_an_upstream_under_load_fails_no_client_under_relay_uring() {
    kill_under_load("relay: uring\n");
}

fn kill_under_load(top: &str) {
    let mut ups: Vec<Tagged> = (0..3).map(Tagged::on_loopback).collect();
    let refs: Vec<&Tagged> = ups.iter().collect();
    let check =
        "    health_check: { interval: 200ms, timeout: 100ms, rise: 2, fall: 2 }\n    outlier_detection: false\n";
    let (s, admin) = with_admin(&format!("{top}{}", weighted(&refs, &[1, 1, 1], check)));
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(s.addr(), 4, &stop);
    std::thread::sleep(Duration::from_millis(300));
    ups[1].kill();
    assert!(s.wait_log("is DOWN after 2 failed checks", Duration::from_secs(10)), "checks never took it out");
    // From now on no session may even try it.
    let frozen = attempts(admin, 1);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(attempts(admin, 1), frozen, "sessions still go to the dead upstream");
    ups[1].restart();
    assert!(s.wait_log("is UP after 2 good checks", Duration::from_secs(10)), "it never came back");
    let back_from = ups[1].accepted.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ups[1].accepted.load(Ordering::SeqCst) <= back_from {
        assert!(Instant::now() < deadline, "it never got a session after rejoining");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for w in workers {
        let (n, failures, _) = w.join().expect("load thread");
        assert!(failures.is_empty(), "clients saw failures: {failures:?}");
        total += n;
    }
    assert!(total > 100, "only {total} sessions ran");
    let st = stats(admin);
    assert!(st["routes"][0]["retries"].as_u64().unwrap_or(0) > 0, "the failures were hidden by retries");
    assert_eq!(st["routes"][0]["upstreams"][1]["health"]["went_down"].as_u64(), Some(1));
}

#[test]
fn outlier_detection_ejects_a_refusing_upstream_and_retries_it_half_open() {
    let good = Tagged::on_loopback(0);
    let mut bad = Tagged::on_loopback(1);
    bad.kill();
    let extra = "    outlier_detection: { consecutive_failures: 3, base_ejection: 1s, max_ejection: 10s }\n";
    let (s, admin) = with_admin(&weighted(&[&good, &bad], &[1, 1], extra));
    for _ in 0..12 {
        assert_eq!(ask(s.addr()).expect("retries hide the refusals"), 0);
    }
    assert!(s.wait_log("ejected for 1s after 3 consecutive connect failures", Duration::from_secs(5)));
    assert_eq!(attempts(admin, 1), 3, "ejected after exactly 3 failures; not tried while ejected");
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..6 {
        assert_eq!(ask(s.addr()).expect("session"), 0);
    }
    assert!(s.wait_log("ejected for 2s after its half-open try failed", Duration::from_secs(5)));
    assert_eq!(attempts(admin, 1), 4, "one half-open try, then ejected again for twice as long");
    bad.restart();
    std::thread::sleep(Duration::from_millis(2100));
    let tags: Vec<u8> = (0..10).map(|_| ask(s.addr()).expect("session")).collect();
    assert!(s.wait_log("is back", Duration::from_secs(5)), "the half-open try should succeed");
    assert!(tags.contains(&1), "it serves again: {tags:?}");
    assert_eq!(stats(admin)["routes"][0]["upstreams"][1]["health"]["ejections"].as_u64(), Some(2));
}

#[test]
fn backups_serve_only_while_every_primary_is_down() {
    let mut primary = Tagged::on_loopback(0);
    let backup = Tagged::on_loopback(1);
    let yaml = format!(
        "workers: 1\nroutes:\n  - name: pool\n    listen: 127.0.0.1:0\n    upstreams:\n      - {}\n      - {{ address: \"{}\", backup: true }}\n\
         \x20   health_check: {{ interval: 200ms, timeout: 100ms, rise: 1, fall: 1 }}\n",
        primary.addr, backup.addr
    );
    let s = Sluice::with_config(&yaml, &[]);
    assert!((0..20).all(|_| ask(s.addr()).expect("session") == 0), "the backup idles while the primary is up");
    primary.kill();
    // Until the check notices, the retry goes to the backup: no failure either way.
    assert!((0..5).all(|_| ask(s.addr()).expect("retried onto the backup") == 1));
    assert!(s.wait_log("is DOWN", Duration::from_secs(10)));
    assert!((0..20).all(|_| ask(s.addr()).expect("session") == 1));
    primary.restart();
    assert!(s.wait_log("is UP", Duration::from_secs(10)));
    assert!((0..20).all(|_| ask(s.addr()).expect("session") == 0), "the primary takes over again");
}

#[test]
fn when_all_down_rejects_at_once_or_tries_anyway() {
    // The first client's attempt fails and ejects the only upstream; the second meets the policy.
    for (policy, expect, n) in [("reject", "reason=no_upstream", 1), ("try_anyway", "reason=connect_failed", 2)] {
        let mut dead = Tagged::on_loopback(0);
        dead.kill();
        let extra = format!(
            "    outlier_detection: {{ consecutive_failures: 1, base_ejection: 1m }}\n    when_all_down: {policy}\n"
        );
        let s = Sluice::with_config(&weighted(&[&dead], &[1], &extra), &[]);
        assert!(ask(s.addr()).is_err(), "nothing listens");
        assert!(s.wait_log("ejected for 1m", Duration::from_secs(5)));
        let started = Instant::now();
        assert!(ask(s.addr()).is_err());
        assert!(started.elapsed() < Duration::from_secs(2), "the client learns at once");
        assert!(s.wait_log_count(expect, n, Duration::from_secs(5)), "{policy}: not {n} × {expect} in\n{}", s.log());
    }
}

#[test]
fn dns_changes_add_and_remove_upstreams_without_touching_running_sessions() {
    // Two backends on one port at two loopback addresses, named `app` in a hosts file.
    let a = Tagged::start("127.0.0.2:0".parse().expect("addr"), 2);
    let port = a.addr.port();
    let b = Tagged::start(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)), port), 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts_file = dir.path().join("hosts");
    std::fs::write(&hosts_file, "127.0.0.2 app\n").expect("hosts");
    let yaml = format!(
        "workers: 1\nroutes:\n  - name: dns\n    listen: 127.0.0.1:0\n    upstreams: [\"app:{port}\"]\n    resolve_interval: 200ms\n"
    );
    let (cfg_dir, cfg) = temp_config(&yaml);
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("-c").arg(&cfg).env("SLUICE_HOSTS_FILE", &hosts_file);
    let s = Sluice::spawn(cmd, 1, Some(cfg_dir));
    assert!((0..10).all(|_| ask(s.addr()).expect("session") == 2));
    // A long session on the first address.
    let mut held = TcpStream::connect_timeout(&s.addr(), Duration::from_secs(5)).expect("connect");
    timeouts(&held);
    let mut tag = [0u8; 1];
    held.read_exact(&mut tag).expect("tag");
    assert_eq!(tag[0], 2);

    std::fs::write(&hosts_file, "127.0.0.2 app\n127.0.0.3 app\n").expect("hosts");
    assert!(s.wait_log("added [127.0.0.3", Duration::from_secs(10)), "the new record was not picked up");
    let tags: Vec<u8> = (0..10).map(|_| ask(s.addr()).expect("session")).collect();
    assert_eq!(tags.iter().filter(|&&t| t == 3).count(), 5, "round robin over both: {tags:?}");

    std::fs::write(&hosts_file, "127.0.0.3 app\n").expect("hosts");
    assert!(s.wait_log("removed [127.0.0.2", Duration::from_secs(10)), "the vanished record was not dropped");
    assert!((0..10).all(|_| ask(s.addr()).expect("session") == 3), "new sessions avoid the vanished address");
    // A failing lookup keeps the last good set.
    std::fs::write(&hosts_file, "# nothing\n").expect("hosts");
    assert!(s.wait_log("keeping its last addresses", Duration::from_secs(10)));
    assert!((0..5).all(|_| ask(s.addr()).expect("session") == 3));
    // The session opened before any change still relays.
    held.write_all(b"still here").expect("write");
    let mut back = [0u8; 10];
    held.read_exact(&mut back).expect("read");
    assert_eq!(&back, b"still here");
    drop((a, b));
}

#[test]
fn an_address_dns_dropped_keeps_its_series_marked_not_current() {
    let a = Tagged::start("127.0.0.4:0".parse().expect("addr"), 4);
    let port = a.addr.port();
    let b = Tagged::start(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)), port), 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts_file = dir.path().join("hosts");
    std::fs::write(&hosts_file, "127.0.0.4 app\n").expect("hosts");
    let admin = admin_addr();
    let yaml = format!(
        "workers: 2\nadmin:\n  listen: {admin}\nroutes:\n  - name: dns\n    listen: 127.0.0.1:0\n    \
         upstreams: [\"app:{port}\"]\n    resolve_interval: 100ms\n"
    );
    let (cfg_dir, cfg) = temp_config(&yaml);
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("-c").arg(&cfg).env("SLUICE_HOSTS_FILE", &hosts_file);
    let s = Sluice::spawn(cmd, 1, Some(cfg_dir));
    assert!(s.wait_log("admin port listening", Duration::from_secs(10)), "no admin port");
    assert!((0..3).all(|_| ask(s.addr()).expect("session") == 4));
    std::fs::write(&hosts_file, "127.0.0.5 app\n").expect("hosts");
    assert!(s.wait_log("removed [127.0.0.4", Duration::from_secs(10)), "the change was not picked up");
    assert!((0..2).all(|_| ask(s.addr()).expect("session") == 5));
    // Sessions are counted when they close, a little after the client's last byte.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (old, new) = loop {
        let st = stats(admin);
        let ups = st["routes"][0]["upstreams"].as_array().expect("upstreams").clone();
        let find = |ip: &str| ups.iter().find(|u| u["address"] == format!("{ip}:{port}")).cloned();
        if let (Some(old), Some(new)) = (find("127.0.0.4"), find("127.0.0.5")) {
            if old["sessions"] == 3 && new["sessions"] == 2 {
                break (old, new);
            }
        }
        assert!(Instant::now() < deadline, "not 3 + 2 sessions in {st}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(old["current"], false, "the dropped address is kept for the retention, marked");
    assert_eq!(new["current"], true);
    drop((a, b));
}

/// Accepted connections' first `n` bytes (the PROXY header), reported per connection; then echo.
pub(crate) fn header_capture(
    bind: &str,
    header_len: impl Fn(&[u8]) -> Option<usize> + Send + Sync + 'static,
) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let l = TcpListener::bind(bind).expect("bind capture");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&seen);
    let header_len = Arc::new(header_len);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            timeouts(&s);
            let (out, header_len) = (Arc::clone(&out), Arc::clone(&header_len));
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut byte = [0u8; 1];
                // Byte by byte, so nothing after the header is taken.
                let len = loop {
                    match header_len(&got) {
                        Some(n) if got.len() >= n => break n,
                        _ => {}
                    }
                    match s.read(&mut byte) {
                        Ok(1) => got.push(byte[0]),
                        _ => return,
                    }
                };
                got.truncate(len);
                out.lock().expect("lock").push(got);
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    (addr, seen)
}

/// The header length of a v1 (up to CRLF) or v2 (16 + length) header seen so far.
pub(crate) fn proxy_header_len(b: &[u8]) -> Option<usize> {
    if b.starts_with(b"PROXY ") {
        return b.windows(2).position(|w| w == b"\r\n").map(|i| i + 2);
    }
    (b.len() >= 16 && b[0] == 0x0D).then(|| 16 + usize::from(u16::from_be_bytes([b[14], b[15]])))
}

#[test]
fn config_check_shows_the_pool_settings() {
    let (_d, path) = temp_config(&one_route(
        "splice",
        &["127.0.0.1:1".parse().expect("addr")],
        "    balance: least_conn\n    retries: 3\n    health_check: true\n    deny: [\"10.0.0.0/8\"]\n",
    ));
    let (code, out, err) = crate::harness::run(&["check", "-c", path.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "balance: least_conn",
        "retries: 3",
        "health_check: { interval: 2s, timeout: 1s, rise: 2, fall: 3",
        "outlier_detection: { consecutive_failures: 5",
        "deny: [\"10.0.0.0/8\"]",
    ] {
        assert!(out.contains(want), "no {want:?} in\n{out}");
    }
}
