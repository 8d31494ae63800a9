//! Connection limits and the half-close timeout: at `max_connections`
//! clients wait in the kernel's queue (not reset) and are served as soon as
//! a session ends; `max_connections_per_client` refuses the excess at once;
//! a session left half-open is closed after `half_close_timeout`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::backends::{self, connect};
use crate::harness::{Sluice, one_route};

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
