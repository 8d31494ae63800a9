//! Reloading: SIGHUP under continuous verified traffic (routes added,
//! upstreams changed, invalid files, routes removed) loses no byte and no
//! connection; a removed route serves the clients waiting in its queue,
//! and those whose handshake is under way, before it closes; `watch: true` follows a Kubernetes-style symlink swap
//! and reloads exactly once.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::backends::{self, Stream, connect};
use crate::harness::{BIN, Sluice};

fn route(name: &str, upstream: SocketAddr) -> String {
    format!("  - name: {name}\n    listen: 127.0.0.1:0\n    upstreams: [\"{upstream}\"]\n")
}

/// Clients that echo random chunks through `addr` until stopped, each
/// reconnecting every 20 exchanges; every byte is checked.
struct Load {
    stop: Arc<AtomicBool>,
    exchanges: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Result<(), String>>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let exchanges = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|i| {
                let (stop, exchanges) = (Arc::clone(&stop), Arc::clone(&exchanges));
                std::thread::spawn(move || -> Result<(), String> {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let mut c = connect(addr);
                        for _ in 0..20 {
                            n += 1;
                            let msg = Stream::bytes(i as u64 * 1_000_000 + n, 1 + (n as usize * 7919) % 16_384);
                            c.write_all(&msg).map_err(|e| format!("client {i} exchange {n}: write: {e}"))?;
                            let mut got = vec![0; msg.len()];
                            c.read_exact(&mut got).map_err(|e| format!("client {i} exchange {n}: read: {e}"))?;
                            if got != msg {
                                return Err(format!("client {i} exchange {n}: different bytes came back"));
                            }
                            exchanges.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        Load { stop, exchanges, threads }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            if let Err(e) = t.join().expect("client thread") {
                panic!("traffic failed during reloads: {e}");
            }
        }
        self.exchanges.load(Ordering::Relaxed)
    }
}

fn answers(addr: SocketAddr) -> bool {
    let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut b = [0; 4];
    c.write_all(b"ping").is_ok() && c.read_exact(&mut b).is_ok() && &b == b"ping"
}

fn refused(addr: SocketAddr) -> bool {
    matches!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)), Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
}

#[test]
fn twenty_reloads_under_load_lose_nothing() {
    let (a, b) = (backends::echo(), backends::echo());
    let head = "workers: 2\nroutes:\n";
    let v1 = format!("{head}{}", route("main", a));
    let added = format!("{v1}{}", route("extra", a));
    let changed = format!("{head}{}", route("main", b));
    let invalid = "workers: 2\nroutes: [\n".to_owned();
    let mut s = Sluice::with_config(&v1, &[]);
    let path = s.config_path().expect("config file");
    let main = s.addr();
    let load = Load::start(main, 50);
    let (mut ok, mut failed) = (0, 0);
    for i in 0..20 {
        let (text, good) = match i % 4 {
            0 => (&added, true),
            1 => (&changed, true),
            2 => (&invalid, false),
            _ => (&v1, true),
        };
        std::fs::write(&path, text).expect("write config");
        s.signal(Signal::SIGHUP);
        if good {
            ok += 1;
            assert!(s.wait_log_count("reloaded ", ok, Duration::from_secs(10)), "reload {i} did not happen");
        } else {
            failed += 1;
            assert!(s.wait_log_count("reload failed", failed, Duration::from_secs(10)), "reload {i} was not refused");
        }
        match i % 4 {
            0 => {
                let extra = s.route_addr("extra").expect("the added route logs its address");
                assert!(answers(extra), "reload {i}: the added route does not answer");
            }
            1 => {
                // The workers close the listener when they get the update: poll.
                let extra = s.route_addr("extra").expect("address");
                let deadline = Instant::now() + Duration::from_secs(5);
                while !refused(extra) {
                    assert!(Instant::now() < deadline, "reload {i}: the removed route still accepts");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            _ => {}
        }
        assert!(answers(main), "reload {i}: the unchanged route stopped answering");
    }
    let exchanges = load.finish();
    assert!(exchanges > 1000, "only {exchanges} exchanges ran during the reloads");
    assert!(s.log().contains("YAML syntax error"), "the invalid file's error was not logged");
    assert!(s.alive());
}

#[test]
fn watch_follows_a_symlink_swap_and_reloads_once() {
    let up = backends::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = dir.path().join("v1.yaml");
    let v2 = dir.path().join("v2.yaml");
    let link = dir.path().join("proxy.yaml");
    std::fs::write(&v1, format!("watch: true\nworkers: 1\nroutes:\n{}", route("main", up))).expect("v1");
    std::os::unix::fs::symlink(&v1, &link).expect("link");
    let mut cmd = Command::new(BIN);
    cmd.arg("-c").arg(&link);
    let s = Sluice::spawn(cmd, 1, None);
    std::fs::write(&v2, format!("watch: true\nworkers: 1\nroutes:\n{}{}", route("main", up), route("new", up)))
        .expect("v2");
    // What Kubernetes does to a mounted ConfigMap: point a new link at the
    // new file and rename it over the old one.
    let tmp = dir.path().join("..tmp");
    std::os::unix::fs::symlink(&v2, &tmp).expect("tmp link");
    std::fs::rename(&tmp, &link).expect("swap");
    assert!(s.wait_log_count("reloaded ", 1, Duration::from_secs(10)), "the swap was not noticed");
    let new = s.route_addr("new").expect("the new route listens");
    assert!(answers(new));
    // Two more watch intervals: no second reload for the same change.
    let quiet = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < quiet {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.log_count("reloaded "), 1, "one swap, one reload:\n{}", s.log());
    drop(dir);
}

#[test]
fn sighup_with_an_unchanged_file_keeps_every_socket() {
    let up = backends::echo();
    let s = Sluice::with_config(&format!("workers: 1\nroutes:\n{}", route("main", up)), &[]);
    let mut c = connect(s.addr());
    c.write_all(b"one").expect("write");
    let mut b = [0; 3];
    c.read_exact(&mut b).expect("echo");
    s.signal(Signal::SIGHUP);
    assert!(s.wait_log_count("reloaded ", 1, Duration::from_secs(10)));
    assert!(s.log().contains("1 unchanged"), "{}", s.log());
    // The running session and the listener are untouched.
    c.write_all(b"two").expect("write after reload");
    c.read_exact(&mut b).expect("echo after reload");
    assert_eq!(&b, b"two");
    assert!(answers(s.addr()));
}

/// A route removed by a reload serves the clients already waiting in its
/// listen queue (here held there by the route's `max_connections: 1`)
/// before its listener closes: their connect succeeded, so a reset would
/// cut them. New clients are refused after.
#[test]
fn a_removed_route_serves_its_queued_clients_before_closing() {
    let up = backends::echo();
    let head = "workers: 1\nroutes:\n";
    let gone = format!("{}    max_connections: 1\n", route("gone", up));
    let s = Sluice::with_config(&format!("{head}{}{gone}", route("main", up)), &[]);
    let path = s.config_path().expect("config file");
    let addr = s.route_addr("gone").expect("the route logs its address");
    let mut first = connect(addr);
    assert_eq!(backends::exchange(&mut first, b"first").expect("the first client is served"), b"first");
    // The route is at its limit: this one completes its handshake and waits in the queue.
    let mut queued = connect(addr);
    queued.write_all(b"queued").expect("write while queued");
    std::fs::write(&path, format!("{head}{}", route("main", up))).expect("write config");
    s.signal(Signal::SIGHUP);
    assert!(s.wait_log_count("reloaded ", 1, Duration::from_secs(10)), "no reload");
    let mut b = [0; 6];
    queued.read_exact(&mut b).expect("the queued client was cut by the reload");
    assert_eq!(&b, b"queued");
    assert_eq!(backends::exchange(&mut first, b"still").expect("the running session goes on"), b"still");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !refused(addr) {
        assert!(Instant::now() < deadline, "the removed route still accepts");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A route removed by a reload closes its listener the way the drain does:
/// it first stops answering new handshakes and goes on accepting for a
/// moment, so a client whose handshake is under way when the reload lands
/// is served, not reset. The route's `defer_accept` holds the handshake
/// open here: the client's connect has succeeded, but the kernel completes
/// it on the server's side only when the first bytes arrive, which the
/// client sends just after the reload.
#[test]
fn a_removed_route_serves_a_client_whose_handshake_is_under_way() {
    let up = backends::echo();
    let head = "workers: 1\nroutes:\n";
    let gone = format!("{}    socket: {{ defer_accept: 5s }}\n", route("gone", up));
    let s = Sluice::with_config(&format!("{head}{}{gone}", route("main", up)), &[]);
    let path = s.config_path().expect("config file");
    let addr = s.route_addr("gone").expect("the route logs its address");
    // Connected as far as the client can tell; the server holds a request, not yet a connection.
    let mut under_way = connect(addr);
    std::fs::write(&path, format!("{head}{}", route("main", up))).expect("write config");
    s.signal(Signal::SIGHUP);
    assert!(s.wait_log_count("reloaded ", 1, Duration::from_secs(10)), "no reload");
    // Bounded; not found, the bytes below go anyway (and meet a closed listener).
    s.wait_log("answers no new handshakes", Duration::from_secs(2));
    let got = backends::exchange(&mut under_way, b"under way");
    assert!(
        matches!(&got, Ok(b) if b == b"under way"),
        "a client whose handshake was under way was not served: {got:?}\n{}",
        s.log()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !refused(addr) {
        assert!(Instant::now() < deadline, "the removed route still accepts");
        std::thread::sleep(Duration::from_millis(20));
    }
}
