//! What a `relay: uring` session holds while it cannot deliver: a client
//! that keeps sending while its session is between upstreams, or after its
//! upstream was reset, takes only a few of the worker's buffers, and when
//! the session ends it is reset (its socket really closes: no receive on
//! the ring keeps it, acknowledging and dropping what it sends).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crate::backends::{self, connect, serve};
use crate::harness::{Sluice, admin_get, one_route};

/// Buffers the worker's ring has lent out now (`sluice_uring_buffers_lent`).
fn lent(admin: SocketAddr) -> u64 {
    let (code, m) = admin_get(admin, "/metrics");
    assert_eq!(code, 200);
    m.lines()
        .find_map(|l| l.strip_prefix("sluice_uring_buffers_lent "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sluice_uring_buffers_lent in\n{m}"))
}

/// `lent` once it has held still for two readings 50 ms apart (at most 5 s):
/// what the worker holds after the traffic in flight has landed.
fn settled_lent(admin: SocketAddr) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = lent(admin);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = lent(admin);
        if now == last || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

/// An upstream that resets every connection as soon as it accepts it.
fn reset_at_once() -> SocketAddr {
    serve(|s| {
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    })
}

/// Reads until EOF or an error, at most `wait` in all.
fn read_to_end_within(c: &mut TcpStream, wait: Duration) -> (u64, io::Result<()>) {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0; 64 << 10];
    let mut total = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        c.set_read_timeout(Some(left)).expect("read timeout");
        match c.read(&mut buf) {
            Ok(0) => return (total, Ok(())),
            Ok(n) => total += n as u64,
            Err(e) => return (total, Err(e)),
        }
    }
}

/// Writes `chunk`-sized pieces every `pause` until `total` bytes are sent,
/// a write fails or blocks for `stall`: returns the bytes written.
fn trickle(mut c: TcpStream, chunk: usize, pause: Duration, total: u64, stall: Duration) -> u64 {
    c.set_write_timeout(Some(stall)).expect("write timeout");
    let piece = vec![0x5a; chunk];
    let mut sent = 0;
    while sent < total {
        if c.write_all(&piece).is_err() {
            break;
        }
        sent += chunk as u64;
        std::thread::sleep(pause);
    }
    sent
}

/// A session whose first upstream is lost before any byte moved goes on
/// connecting the next one, keeping what its receive on the client took.
/// If it ends there, that receive must be gone: on main a completion the
/// pump had queued (a multishot one, still armed) counted as its end, the
/// receive was never cancelled, the client socket lived on in the ring,
/// and the client waited for an end that never came.
#[test]
fn a_client_that_sent_between_upstreams_is_reset_when_its_session_ends() {
    let Some((hole, _keep)) = backends::black_hole() else {
        eprintln!("skipped: this kernel completes handshakes on a full accept queue, no black hole to test with");
        return;
    };
    let s = Sluice::with_config(&one_route("uring", &[reset_at_once(), hole], "    connect_timeout: 1s\n"), &[]);
    let mut c = connect(s.addr());
    assert!(s.wait_log("reset before any byte moved", Duration::from_secs(10)), "the first upstream was not lost");
    // Taken by the receive the session kept, never delivered.
    c.write_all(&[7; 1000]).expect("write");
    let (_, end) = read_to_end_within(&mut c, Duration::from_secs(8));
    assert!(
        matches!(&end, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "the client whose bytes were taken must be reset when the session gives up, got {end:?}"
    );
}

/// The same session, with a client that keeps sending while the next
/// upstream does not answer: the kept receive is stopped (nothing it takes
/// could go anywhere yet), instead of taking a buffer per arrival until the
/// connect times out (on main: every free buffer, 16 of 16 in this test).
#[test]
fn a_client_sending_between_upstreams_takes_few_buffers() {
    let Some((hole, _keep)) = backends::black_hole() else {
        eprintln!("skipped: this kernel completes handshakes on a full accept queue, no black hole to test with");
        return;
    };
    let yaml = one_route("uring", &[reset_at_once(), hole], "    connect_timeout: 4s\n");
    let (s, admin) = crate::observability::with_admin(&yaml);
    let mut c = connect(s.addr());
    assert!(s.wait_log("reset before any byte moved", Duration::from_secs(10)), "the first upstream was not lost");
    let w = c.try_clone().expect("clone");
    let sent = trickle(w, 16 << 10, Duration::from_micros(200), 16 << 20, Duration::from_millis(500));
    let held = lent(admin);
    eprintln!("sent {sent} bytes between upstreams; {held} buffers lent");
    assert!(held <= 4, "a session between upstreams holds {held} buffers after {sent} bytes");
    let (_, end) = read_to_end_within(&mut c, Duration::from_secs(10));
    assert!(matches!(&end, Err(e) if e.kind() == io::ErrorKind::ConnectionReset), "got {end:?}");
}

/// An upstream that answers what it reads with a stream it writes until
/// the client (not reading) pushes back, then resets. Says on `tx` when it
/// has reset.
fn fill_then_reset(tx: mpsc::Sender<u64>) -> SocketAddr {
    let tx = Arc::new(std::sync::Mutex::new(tx));
    serve(move |mut s| {
        s.set_nonblocking(true).expect("nonblocking");
        let chunk = vec![0xa5; 64 << 10];
        let mut buf = vec![0; 64 << 10];
        let (mut written, mut blocked_since) = (0u64, None::<Instant>);
        let start = Instant::now();
        while blocked_since.is_none_or(|t| t.elapsed() < Duration::from_millis(300)) {
            if start.elapsed() > Duration::from_secs(20) {
                return;
            }
            while matches!(s.read(&mut buf), Ok(1..)) {}
            match s.write(&chunk) {
                Ok(n) => {
                    written += n as u64;
                    blocked_since = None;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked_since.get_or_insert_with(Instant::now);
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        drop(s);
        let _ = tx.lock().expect("tx").send(written);
    })
}

/// The upstream is reset while the client (which is not reading) keeps
/// sending: the client→upstream direction is dead, its receive must go,
/// or every arrival takes a buffer until the idle timeout (on main a
/// second of it took every free buffer). Once the client reads what the
/// upstream sent before its reset, it is reset, as the upstream was.
#[test]
fn a_client_still_sending_to_a_reset_upstream_takes_no_more_buffers_and_is_reset() {
    let (tx, rx) = mpsc::channel();
    let (s, admin) = crate::observability::with_admin(&one_route("uring", &[fill_then_reset(tx)], ""));
    let mut c = connect(s.addr());
    let (paused, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let writer = {
        let (mut w, paused, stop) = (c.try_clone().expect("clone"), Arc::clone(&paused), Arc::clone(&stop));
        // 1 KiB a millisecond: slow enough for the upstream to read it all
        // before its reset (the receive stays multishot); after the reset,
        // one arrival per write.
        std::thread::spawn(move || {
            w.set_write_timeout(Some(Duration::from_millis(500))).expect("write timeout");
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if !paused.load(Ordering::Relaxed) {
                    if w.write_all(&[0x5a; 1024]).is_err() {
                        break;
                    }
                    sent += 1024;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            sent
        })
    };
    let written = rx.recv_timeout(Duration::from_secs(30)).expect("the upstream never filled and reset");
    paused.store(true, Ordering::Relaxed);
    let held_before = settled_lent(admin);
    // The first write now finds the upstream gone; the rest arrive for a dead direction.
    paused.store(false, Ordering::Relaxed);
    // The stimulus, not a synchronisation: a second of writes for a dead direction.
    std::thread::sleep(Duration::from_secs(1));
    let held_after = lent(admin);
    stop.store(true, Ordering::Relaxed);
    let sent = writer.join().expect("writer");
    eprintln!("upstream wrote {written} bytes; {held_before} buffers lent, {held_after} a second later ({sent} sent)");
    assert!(
        held_after <= held_before + 2,
        "a client sending to a reset upstream grew the lent buffers from {held_before} to {held_after}"
    );
    let (got, end) = read_to_end_within(&mut c, Duration::from_secs(10));
    assert!(
        matches!(&end, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "after {got} of the upstream's {written} bytes the client must be reset, got {end:?}"
    );
}
