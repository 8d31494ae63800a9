//! When things go wrong: refused and resetting upstreams, failover to the
//! next upstream, connect and idle timeouts, and a connection storm under a
//! 128-fd limit.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::backends::{self, Stream, connect};
use crate::harness::{BIN, Sluice, one_route, raise_fd_limit};

both_modes! {
    refused_upstream_closes_the_client_within_a_second => refused_upstream;
    upstream_reset_reaches_the_client_after_its_bytes => upstream_reset;
    second_upstream_serves_when_the_first_refuses => failover;
    connect_timeout_closes_the_client => connect_timeout;
    idle_timeout_closes_a_silent_session => idle_timeout;
    idle_timeout_spares_a_trickling_session => idle_trickle;
}

/// Reads until EOF or an error; returns (bytes read, how it ended, elapsed).
fn read_until_closed(c: &mut TcpStream) -> (Vec<u8>, io::Result<()>, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0; 65536];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return (got, Ok(()), start.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Err(e), start.elapsed()),
        }
    }
}

fn refused_upstream(mode: &str) {
    let s = Sluice::with_config(&one_route(mode, &[backends::refused()], ""), &[]);
    let start = Instant::now();
    let (got, end, took) = match backends::connect_maybe_reset(s.addr()) {
        Ok(mut c) => read_until_closed(&mut c),
        Err(e) => (Vec::new(), Err(e), start.elapsed()),
    };
    assert!(got.is_empty(), "{mode}: bytes from nowhere");
    // A reset, not a FIN: an empty answer must not look complete.
    assert!(
        matches!(end.as_ref().map_err(|e| e.kind()), Err(io::ErrorKind::ConnectionReset)),
        "{mode}: unexpected end {end:?}"
    );
    assert!(took < Duration::from_secs(1), "{mode}: the client waited {took:?} for a refused upstream");
    assert!(s.wait_log("no upstream reachable", Duration::from_secs(5)), "{mode}: the refusal was not logged");
}

fn upstream_reset(mode: &str) {
    let len = 48 << 10;
    let up = backends::reset_after(31, len);
    let s = Sluice::with_config(&one_route(mode, &[up], ""), &[]);
    let mut c = connect(s.addr());
    let (got, end, _) = read_until_closed(&mut c);
    assert_eq!(got.len(), len as usize, "{mode}: expected the {len} bytes sent before the reset");
    assert!(got == Stream::bytes(31, len as usize), "{mode}: bytes before the reset differ");
    match end {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("{mode}: expected a reset after the bytes, got {other:?}"),
    }
}

fn failover(mode: &str) {
    let s = Sluice::with_config(&one_route(mode, &[backends::refused(), backends::echo()], ""), &[]);
    for i in 0..10 {
        let mut c = connect(s.addr());
        let msg = Stream::bytes(i, 1000);
        c.write_all(&msg).expect("write");
        let mut got = vec![0; msg.len()];
        c.read_exact(&mut got).unwrap_or_else(|e| panic!("{mode}: connection {i} not served: {e}"));
        assert!(got == msg, "{mode}: connection {i} echoed different bytes");
    }
}

fn connect_timeout(mode: &str) {
    let Some((hole, _keep)) = backends::black_hole() else {
        eprintln!("skipped: this kernel completes handshakes on a full accept queue, no black hole to test with");
        return;
    };
    let s = Sluice::with_config(&one_route(mode, &[hole], "    connect_timeout: 1s\n"), &[]);
    let mut c = connect(s.addr());
    let (got, _, took) = read_until_closed(&mut c);
    assert!(got.is_empty());
    assert!(took >= Duration::from_millis(900), "{mode}: closed after {took:?}, before the connect timeout");
    assert!(took < Duration::from_secs(2), "{mode}: closed after {took:?}, more than timeout + 1 s");
}

fn idle_timeout(mode: &str) {
    let s = Sluice::with_config(&one_route(mode, &[backends::echo()], "    idle_timeout: 1s\n"), &[]);
    let mut c = connect(s.addr());
    c.write_all(b"hello").expect("write");
    let mut got = [0; 5];
    c.read_exact(&mut got).expect("echo");
    let (rest, end, took) = read_until_closed(&mut c);
    assert!(rest.is_empty());
    assert!(end.is_ok(), "{mode}: a quiet session must end with a FIN, got {end:?}");
    assert!(took >= Duration::from_millis(900), "{mode}: closed after {took:?}, before the idle timeout");
    assert!(took < Duration::from_secs(2), "{mode}: closed after {took:?}, more than idle timeout + 1 s");
}

fn idle_trickle(mode: &str) {
    let s = Sluice::with_config(&one_route(mode, &[backends::echo()], "    idle_timeout: 1s\n"), &[]);
    let mut c = connect(s.addr());
    let start = Instant::now();
    let mut i = 0u8;
    while start.elapsed() < Duration::from_secs(3) {
        c.write_all(&[i]).expect("trickle write");
        let mut b = [0];
        c.read_exact(&mut b).unwrap_or_else(|e| panic!("{mode}: closed after {:?}: {e}", start.elapsed()));
        assert_eq!(b[0], i);
        i = i.wrapping_add(1);
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn storm_under_a_128_fd_limit_neither_spins_nor_dies() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    raise_fd_limit();
    let up = backends::echo();
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=128:128", "--", BIN, "--listen", "127.0.0.1:0", "--upstream", &up.to_string()]);
    cmd.args(["--workers", "1"]);
    let mut s = Sluice::spawn(cmd, 1, None);
    // 300 clients at once: far more than 128 fds allow (2 per session).
    // Those sluice sheds at the limit may be reset before `connect`
    // returns: that reset is what is under test, not a failure.
    let storm: Vec<TcpStream> = (0..300).filter_map(|_| backends::connect_maybe_reset(s.addr()).ok()).collect();
    for mut c in storm.iter() {
        let _ = c.write_all(b"x");
    }
    assert!(s.wait_log("out of file descriptors", Duration::from_secs(10)), "the fd limit was never reached");
    // While it sits at the limit it must not burn CPU.
    let tick = 100; // USER_HZ: clock ticks per second in /proc/PID/stat on Linux
    let before = s.cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    let used = s.cpu_ticks() - before;
    assert!(used * 100 < tick * 2 * 20, "sluice used {used} ticks ({tick}/s) in 2 s at the fd limit: spinning");
    assert!(s.alive(), "sluice died at the fd limit");
    drop(storm);
    // Afterwards it serves normally again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ok = (|| -> io::Result<bool> {
            let mut c = TcpStream::connect_timeout(&s.addr(), Duration::from_secs(2))?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            let msg = Stream::bytes(77, 10_000);
            c.write_all(&msg)?;
            let mut got = vec![0; msg.len()];
            c.read_exact(&mut got)?;
            Ok(got == msg)
        })();
        if matches!(ok, Ok(true)) {
            break;
        }
        assert!(Instant::now() < deadline, "not serving again after the storm: {ok:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(s.alive());
}
