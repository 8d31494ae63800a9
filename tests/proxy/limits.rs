//! Connection limits and the half-close timeout: at `max_connections`
//! clients wait in the kernel's queue (not reset) and are served as soon as
//! a session ends; `max_connections_per_client` refuses the excess at once;
//! a session left half-open is closed after `half_close_timeout`; running
//! out of fds for upstream sockets resets the client and blames no upstream.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::backends::{self, connect};
use crate::harness::{Sluice, one_route, raise_fd_limit};
use crate::observability::{get, stats, with_admin};

fn echo_once(c: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    c.write_all(msg)?;
    let mut got = vec![0; msg.len()];
    c.read_exact(&mut got)?;
    assert_eq!(got, msg);
    Ok(())
}

/// Holds `n` verified sessions, then checks that one more is kept waiting
/// (not refused, not reset) until one of them closes, and is served then.
fn next_client_waits_for_a_free_slot(s: &Sluice, n: usize) {
    let mut held: Vec<TcpStream> = (0..n).map(|_| connect(s.addr())).collect();
    for (i, c) in held.iter_mut().enumerate() {
        echo_once(c, format!("hello {i}").as_bytes()).unwrap_or_else(|e| panic!("session {i}: {e}"));
    }
    let mut extra = connect(s.addr());
    extra.write_all(b"waiting").expect("the kernel queues the extra client");
    extra.set_read_timeout(Some(Duration::from_millis(1500))).expect("timeout");
    let mut got = [0; 7];
    match extra.read(&mut got) {
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
        other => panic!("the client past the limit should wait, got {other:?}"),
    }
    let t = Instant::now();
    drop(held.pop());
    extra.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    extra.read_exact(&mut got).expect("served once a slot came free");
    assert_eq!(&got, b"waiting");
    assert!(t.elapsed() < Duration::from_secs(2), "served {:?} after a slot came free", t.elapsed());
}

#[test]
fn at_the_global_limit_the_next_client_waits_and_is_served_when_one_closes() {
    let up = backends::echo();
    let s = Sluice::with_config(&format!("max_connections: 100\n{}", one_route("splice", &[up], "")), &[]);
    next_client_waits_for_a_free_slot(&s, 100);
}

#[test]
fn at_the_route_limit_the_next_client_waits_and_is_served_when_one_closes() {
    let up = backends::echo();
    let s = Sluice::with_config(&one_route("copy", &[up], "    max_connections: 20\n"), &[]);
    next_client_waits_for_a_free_slot(&s, 20);
}

#[test]
fn the_per_client_limit_refuses_the_excess_at_once() {
    let up = backends::echo();
    let s = Sluice::with_config(&one_route("splice", &[up], "    max_connections_per_client: 3\n"), &[]);
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect(s.addr())).collect();
    for c in &mut held {
        echo_once(c, b"ok").expect("within the limit");
    }
    let t = Instant::now();
    // Refused with a reset: connect() itself may already report it.
    match TcpStream::connect_timeout(&s.addr(), Duration::from_secs(5)) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("connect: {e}"),
        Ok(mut fourth) => {
            fourth.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let _ = fourth.write_all(b"no");
            let mut b = [0; 2];
            match fourth.read(&mut b) {
                Ok(0) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                other => panic!("the 4th session from one client should be refused, got {other:?}"),
            }
        }
    }
    assert!(t.elapsed() < Duration::from_secs(1), "refused only after {:?}", t.elapsed());
    assert!(s.wait_log("max_connections_per_client", Duration::from_secs(5)), "the refusal was not logged");
    drop(held.pop());
    // A slot came free (allow the proxy a moment to see the close).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // A refused client is reset, which a fast refusal can report from connect() itself.
        let served = TcpStream::connect_timeout(&s.addr(), Duration::from_secs(5)).and_then(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            echo_once(&mut c, b"again")
        });
        if served.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "a freed per-client slot was never reusable");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_half_closed_session_ends_after_half_close_timeout() {
    // An upstream that reads to EOF and then neither answers nor closes.
    let up = backends::serve(|mut s| {
        let _ = backends::read_digest(&mut s, None);
        std::thread::sleep(Duration::from_secs(30));
    });
    let s = Sluice::with_config(&one_route("splice", &[up], "    half_close_timeout: 1s\n"), &[]);
    let mut c = connect(s.addr());
    c.write_all(b"request").expect("write");
    c.shutdown(Shutdown::Write).expect("half-close");
    let t = Instant::now();
    let mut b = [0; 1];
    let n = c.read(&mut b).expect("a clean close");
    assert_eq!(n, 0);
    assert!(t.elapsed() >= Duration::from_millis(900), "closed after {:?}, before the timeout", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(3), "closed after {:?}, not half_close_timeout + 1 s", t.elapsed());
}

/// The numbers of the fds process `pid` has open.
fn open_fds(pid: i32) -> Vec<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc/PID/fd");
    dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

/// Sets the soft open-file limit of a running process (`prlimit --pid`).
fn set_soft_nofile(pid: i32, soft: u64) {
    let out = Command::new("prlimit").args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")]).output();
    let out = out.expect("run prlimit");
    assert!(out.status.success(), "prlimit: {}", String::from_utf8_lossy(&out.stderr));
}

/// The soft open-file limit of a running process.
fn soft_nofile(pid: i32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc/PID/limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files");
    line["Max open files".len()..].split_whitespace().next().and_then(|n| n.parse().ok()).expect("a number")
}

/// Regression test for issue 14: an EMFILE on the upstream socket used to
/// count as a failed connect of that upstream, so a proxy out of fds
/// ejected its healthy upstreams (outlier detection is on by default).
#[test]
fn out_of_fds_for_the_upstream_socket_resets_the_client_and_ejects_no_upstream() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    raise_fd_limit();
    let up = backends::echo();
    // Copy relay: a session holds exactly two fds, its two sockets (no pipes).
    let (s, admin) = with_admin(&one_route("copy", &[up], ""));
    let pid = s.pid();
    // Which of accept and socket() meets the limit first depends on the parity
    // of the free fds: each session takes two, accept's first. With an odd
    // number free, accept always gets the last fd and the upstream socket is
    // the one refused. So the limit is set on the running process (prlimit
    // --pid) from the fds it really has open, once one served session shows
    // the worker is up (its reserve fd open too).
    let mut held = vec![connect(s.addr())];
    echo_once(&mut held[0], b"first").expect("first session");
    const MORE: u64 = 3;
    let open = open_fds(pid);
    // New fds take the lowest free numbers below the limit (open ones above it stay, unusable).
    let free_below = |limit: u64| limit - open.iter().filter(|&&fd| fd < limit).count() as u64;
    let mut limit = 1;
    while free_below(limit) < 2 * MORE + 1 {
        limit += 1; // free_below grows by 0 or 1 a step: it stops at exactly 2 * MORE + 1
    }
    let before = soft_nofile(pid);
    set_soft_nofile(pid, limit);
    for i in 0..MORE {
        let mut c = connect(s.addr());
        echo_once(&mut c, format!("held {i}").as_bytes())
            .unwrap_or_else(|e| panic!("session {i} within the limit: {e}"));
        held.push(c);
    }
    // One fd is left: each further client is accepted with it, its upstream
    // socket fails with EMFILE, and it is reset. More of them than the five
    // consecutive failures that eject an upstream by default.
    let mut outcomes = Vec::new();
    for _ in 0..8 {
        // The reset can beat connect() back to the client: then connect reports it.
        let outcome = TcpStream::connect_timeout(&s.addr(), Duration::from_secs(10)).and_then(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(10)))?;
            c.read(&mut [0; 1])
        });
        outcomes.push(outcome.map_err(|e| e.kind()));
    }
    set_soft_nofile(pid, before);
    let st = stats(admin);
    let u = &st["routes"][0]["upstreams"][0];
    let (health, failures, attempts) = (&u["health"], &u["connect_failures"], &u["connect_attempts"]);
    assert_eq!(health["ejected"], false, "ejected for sluice's own fd shortage: {health}, {failures} failures");
    assert_eq!(*failures, 0, "the upstream was blamed");
    assert_eq!(*attempts, held.len(), "only attempts that reached it count");
    assert!(
        outcomes.iter().all(|o| *o == Err(io::ErrorKind::ConnectionReset)),
        "not every client was reset (Ok(0) is a clean close): {outcomes:?}"
    );
    assert_eq!(st["local_errors"]["fds"], 8, "{}", st["local_errors"]);
    assert_eq!(st["routes"][0]["sessions"]["closed"]["local_error"], 8, "{}", st["routes"][0]["sessions"]);
    let (_, metrics) = get(admin, "/metrics");
    assert!(metrics.lines().any(|l| l == "sluice_local_errors_total{route=\"test\",cause=\"fds\"} 8"), "{metrics}");
    // The log is written behind (every 50 ms): wait for the sessions' access lines.
    assert!(s.wait_log_count("reason=local_error", 8, Duration::from_secs(10)), "no access lines");
    let log = s.log();
    assert!(!log.contains("ejected"), "an upstream was ejected for sluice's own fd shortage");
    // The first refusal is the worker's first warning, so it is the one not rate-limited.
    let warning = log.lines().find(|l| l.contains("WARN") && l.contains("cannot open a connection to upstream"));
    let warning = warning.expect("a warning");
    assert!(warning.contains("out of file descriptors: raise the open-file limit"), "{warning}");
    // The upstream is still in rotation.
    let mut c = connect(s.addr());
    echo_once(&mut c, b"still here").expect("served once fds are back");
}
