//! Starting and stopping: SIGTERM keeps accepting through `drain_grace`
//! (with /readyz at 503), then serves whoever is queued, refuses new
//! clients and lets in-flight transfers finish (exit 0); SIGINT skips the
//! grace; an idle SIGTERM exits promptly; the shipped `proxy.yaml` starts.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::backends::{self, Stream, connect, read_digest};
use crate::harness::{Sluice, one_route};
use crate::observability::{get, with_admin};

both_modes! {
    sigterm_lets_running_transfers_finish => sigterm_drain;
}

fn sigterm_drain(mode: &str) {
    let len = 64u64 << 20;
    let up = backends::source(41, len);
    let yaml = format!("drain_grace: 0s\ndrain_timeout: 20s\n{}", one_route(mode, &[up], ""));
    let mut s = Sluice::with_config(&yaml, &[]);
    let mut c = connect(s.addr());
    let mut first = vec![0; 1 << 20];
    c.read_exact(&mut first).expect("transfer started");
    assert!(first == Stream::bytes(41, 1 << 20));
    s.signal(Signal::SIGTERM);
    // New clients are refused soon after the signal.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect_timeout(&s.addr(), Duration::from_secs(1)) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
            _ => {
                assert!(Instant::now() < deadline, "{mode}: still accepting 5 s after SIGTERM");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    // The running transfer completes, at a moderate pace.
    let (count, _) = read_digest(&mut c, Some(Duration::from_micros(200))).expect("rest of the transfer");
    assert_eq!(count + (1 << 20), len, "{mode}: transfer cut by the drain");
    // Our side closes too; the session is complete and the drain can end.
    drop(c);
    let status = s.wait_exit(Duration::from_secs(10)).expect("exited after the drain");
    assert_eq!(status.code(), Some(0), "{mode}: exit status after drain");
    assert!(s.log().contains("SIGTERM received"));
}

#[test]
fn sigterm_without_sessions_exits_zero_promptly() {
    let args = ["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--workers", "2", "--drain-grace", "0s"];
    let mut s = Sluice::start(&args, 1);
    s.signal(Signal::SIGTERM);
    let status = s.wait_exit(Duration::from_secs(5)).expect("exit within 5 s");
    assert_eq!(status.code(), Some(0));
    assert!(s.log().contains("stopped:"), "no summary line at exit");
}

#[test]
fn drain_timeout_cuts_a_busy_session_with_a_reset() {
    let len = 256u64 << 20;
    let up = backends::source(51, len);
    let yaml = format!("drain_grace: 0s\ndrain_timeout: 1s\n{}", one_route("splice", &[up], ""));
    let mut s = Sluice::with_config(&yaml, &[]);
    let mut c = connect(s.addr());
    let mut first = vec![0; 1 << 20];
    c.read_exact(&mut first).expect("transfer started");
    let t = Instant::now();
    s.signal(Signal::SIGTERM);
    // Keep reading slowly: the session stays busy, so only the drain timeout ends it.
    let outcome = read_digest(&mut c, Some(Duration::from_millis(2)));
    let status = s.wait_exit(Duration::from_secs(5)).expect("exit after drain_timeout");
    assert_eq!(status.code(), Some(0));
    assert!(t.elapsed() >= Duration::from_millis(900), "exited before drain_timeout: {:?}", t.elapsed());
    match outcome {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected a reset for a transfer cut by the drain, got {other:?}"),
    }
}

/// With `drain_close_idle_after` (off by default: see endings.rs), an idle
/// session does not hold the drain until its deadline.
#[test]
fn drain_close_idle_after_lets_idle_sessions_end_the_drain_early() {
    let up = backends::echo();
    let route = one_route("splice", &[up], "    drain_close_idle_after: 1s\n");
    let yaml = format!("drain_grace: 0s\ndrain_timeout: 30s\n{route}");
    let mut s = Sluice::with_config(&yaml, &[]);
    let mut c = connect(s.addr());
    std::io::Write::write_all(&mut c, b"ping").expect("write");
    let mut b = [0; 4];
    c.read_exact(&mut b).expect("echo");
    let t = Instant::now();
    s.signal(Signal::SIGTERM);
    let status = s.wait_exit(Duration::from_secs(10)).expect("an idle session must not hold the drain for 30 s");
    assert_eq!(status.code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    // Closed cleanly: the idle client sees an EOF, not a reset.
    assert_eq!(c.read(&mut b).expect("clean close"), 0);
}

#[test]
fn two_workers_serve_many_connections() {
    let up = backends::echo();
    let s = Sluice::start(&["--listen", "127.0.0.1:0", "--upstream", &up.to_string(), "--workers", "2"], 1);
    for i in 0..200 {
        let mut c = connect(s.addr());
        let msg = Stream::bytes(i, 3000);
        std::io::Write::write_all(&mut c, &msg).expect("write");
        let mut got = vec![0; msg.len()];
        c.read_exact(&mut got).expect("echo");
        assert!(got == msg);
    }
}

#[test]
fn shipped_proxy_yaml_starts_and_serves() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.yaml");
    let text = std::fs::read_to_string(path).expect("proxy.yaml at the repository root");
    // Same file, but on free ports: the shipped addresses may be taken on a CI machine.
    let up = backends::echo();
    let text = text
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace("127.0.0.1:8000", &up.to_string());
    let s = Sluice::with_config(&text, &[]);
    let mut c = connect(s.addr());
    std::io::Write::write_all(&mut c, b"hello").expect("write");
    let mut b = [0; 5];
    c.read_exact(&mut b).expect("echo through the shipped config");
    assert_eq!(&b, b"hello");
}

#[test]
fn a_second_sigterm_during_the_drain_stops_at_once() {
    let len = 256u64 << 20;
    let up = backends::source(61, len);
    let mut s = Sluice::with_config(&format!("drain_timeout: 60s\n{}", one_route("copy", &[up], "")), &[]);
    let mut c = connect(s.addr());
    let mut first = vec![0; 1 << 20];
    c.read_exact(&mut first).expect("transfer started");
    s.signal(Signal::SIGTERM);
    assert!(s.wait_log("SIGTERM received", Duration::from_secs(5)));
    let t = Instant::now();
    s.signal(Signal::SIGTERM);
    let status = s.wait_exit(Duration::from_secs(5)).expect("the second signal must not wait for the drain");
    assert_eq!(status.code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
}

/// What one connection of `client_loop` met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Connected, and its message came back whole.
    Served,
    /// connect() was refused: nobody listens any more.
    Refused,
    /// Connected, then reset or cut before its echo.
    Cut,
}

/// Opens connections to `addr` one after another, each sending a message and
/// reading its echo, until a connect is refused or `stop` is set; returns
/// when each one started (relative to `t0`, set when the signal is sent)
/// and what it met.
fn client_loop(
    addr: SocketAddr,
    t0: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
) -> Vec<(Option<Duration>, Outcome, String)> {
    let mut log = Vec::new();
    let msg = Stream::bytes(9, 1000);
    while !stop.load(Ordering::SeqCst) {
        let at = t0.lock().expect("t0").map(|t| t.elapsed());
        let (outcome, why) = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => (Outcome::Refused, e.to_string()),
            Err(e) => (Outcome::Cut, format!("connect: {e}")),
            Ok(mut c) => {
                backends::timeouts(&c);
                match backends::exchange(&mut c, &msg) {
                    Ok(got) if got == msg => (Outcome::Served, String::new()),
                    Ok(got) => (Outcome::Cut, format!("{} of {} bytes echoed", got.len(), msg.len())),
                    Err(e) => (Outcome::Cut, e.to_string()),
                }
            }
        };
        log.push((at, outcome, why));
        if outcome == Outcome::Refused {
            break;
        }
    }
    log
}

#[test]
fn sigterm_keeps_accepting_through_the_grace_with_readyz_503_then_refuses() {
    let grace = Duration::from_secs(2);
    let yaml = format!(
        "drain_grace: 2s\ndrain_timeout: 10s\nworkers: 2\n{}",
        one_route("auto", &[backends::echo()], "").replace("workers: 1\n", "")
    );
    let (mut s, admin) = with_admin(&yaml);
    let t0 = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (addr, t0, stop) = (s.addr(), Arc::clone(&t0), Arc::clone(&stop));
        std::thread::spawn(move || client_loop(addr, t0, stop))
    };
    // Let it run a little before the signal, so connections straddle it.
    let mut c = connect(s.addr());
    assert_eq!(backends::exchange(&mut c, b"warm").expect("served before"), b"warm");
    *t0.lock().expect("t0") = Some(Instant::now());
    s.signal(Signal::SIGTERM);
    // At once: /readyz says 503 while new clients are still served.
    let deadline = Instant::now() + Duration::from_secs(1);
    while get(admin, "/readyz").0 != 503 {
        assert!(Instant::now() < deadline, "/readyz still 200 a second after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut during = connect(s.addr());
    assert_eq!(backends::exchange(&mut during, b"still here").expect("served in the grace"), b"still here");
    let bounded = Instant::now() + Duration::from_secs(15);
    while !client.is_finished() {
        assert!(Instant::now() < bounded, "the listeners never closed after the grace");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    let log = client.join().expect("client loop");
    let in_grace: Vec<_> = log.iter().filter(|(at, _, _)| at.is_none_or(|t| t < grace)).collect();
    let bad: Vec<_> = in_grace.iter().filter(|(_, o, _)| *o != Outcome::Served).collect();
    assert!(bad.is_empty(), "refused or cut during the grace: {bad:?}");
    assert!(in_grace.len() >= 20, "only {} connections during the grace", in_grace.len());
    let (last_at, last, _) = log.last().expect("connections").clone();
    assert_eq!(last, Outcome::Refused, "the loop ended without a refusal");
    assert!(last_at.is_some_and(|t| t >= grace), "refused {last_at:?} after SIGTERM, before the {grace:?} grace");
    // Every connection that got through was served, after the grace too.
    let cut: Vec<_> = log.iter().filter(|(_, o, _)| *o == Outcome::Cut).collect();
    assert!(cut.is_empty(), "connections that got through but were not served: {cut:?}");
    eprintln!(
        "grace: {} connections served during the {grace:?} grace, {} in all before the first refusal at {last_at:?}",
        in_grace.len(),
        log.len() - 1
    );
    drop((c, during));
    let status = s.wait_exit(Duration::from_secs(10)).expect("exit after the drain");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn clients_queued_when_accepting_stops_are_served_not_reset() {
    // max_connections: 1 and one session holding it: later clients wait in
    // the kernel's queue (their connect succeeds, nobody accepts them).
    let yaml = format!(
        "max_connections: 1\ndrain_grace: 0s\ndrain_timeout: 10s\n{}",
        one_route("auto", &[backends::echo()], "")
    );
    let mut s = Sluice::with_config(&yaml, &[]);
    let mut holder = connect(s.addr());
    assert_eq!(backends::exchange(&mut holder, b"hold").expect("first"), b"hold");
    let mut queued: Vec<TcpStream> = (0..5).map(|_| connect(s.addr())).collect();
    for (i, c) in queued.iter_mut().enumerate() {
        c.write_all(format!("queued {i}").as_bytes()).expect("write while queued");
    }
    s.signal(Signal::SIGTERM);
    assert!(s.wait_log("no new connections", Duration::from_secs(5)), "the drain never started");
    for (i, c) in queued.iter_mut().enumerate() {
        let want = format!("queued {i}");
        let mut got = vec![0; want.len()];
        c.read_exact(&mut got).unwrap_or_else(|e| panic!("queued client {i} was not served: {e}"));
        assert_eq!(got, want.as_bytes());
    }
    assert!(s.wait_log("served 5 clients still queued", Duration::from_secs(5)), "{}", s.log());
    drop(queued);
    drop(holder);
    let status = s.wait_exit(Duration::from_secs(10)).expect("exit after the drain");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigint_skips_the_grace() {
    let mut s = Sluice::with_config(&one_route("auto", &[backends::echo()], ""), &[]);
    let t = Instant::now();
    s.signal(Signal::SIGINT);
    let status = s.wait_exit(Duration::from_secs(4)).expect("SIGINT must not wait for the 5 s default grace");
    assert_eq!(status.code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(4), "took {:?}", t.elapsed());
}
