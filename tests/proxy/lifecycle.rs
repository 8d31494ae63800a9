//! Starting and stopping: SIGTERM drains (in-flight transfers finish, new
//! connects are refused, exit 0), an idle SIGTERM exits promptly, and the
//! shipped `proxy.yaml` starts.

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::backends::{self, Stream, connect, read_digest};
use crate::harness::{Sluice, one_route};

both_modes! {
    sigterm_lets_running_transfers_finish => sigterm_drain;
}

fn sigterm_drain(mode: &str) {
    let len = 64u64 << 20;
    let up = backends::source(41, len);
    let mut s = Sluice::with_config(&format!("drain_timeout: 20s\n{}", one_route(mode, &[up], "")), &[]);
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
    let mut s = Sluice::start(&["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--workers", "2"], 1);
    s.signal(Signal::SIGTERM);
    let status = s.wait_exit(Duration::from_secs(5)).expect("exit within 5 s");
    assert_eq!(status.code(), Some(0));
    assert!(s.log().contains("stopped:"), "no summary line at exit");
}

#[test]
fn drain_timeout_cuts_a_busy_session_with_a_reset() {
    let len = 256u64 << 20;
    let up = backends::source(51, len);
    let mut s = Sluice::with_config(&format!("drain_timeout: 1s\n{}", one_route("splice", &[up], "")), &[]);
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

#[test]
fn drain_closes_idle_sessions_early() {
    let up = backends::echo();
    let mut s = Sluice::with_config(&format!("drain_timeout: 30s\n{}", one_route("splice", &[up], "")), &[]);
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
