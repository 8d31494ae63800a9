//! `relay: sockmap`, where the kernel relays established sessions. What
//! it keeps of the relay's promises: every byte exact and counted (live,
//! from `TCP_INFO`), half-closes and resets passed on after the bytes
//! before them, a quiet session's timeout ending in a FIN. And what it
//! cannot keep on this kernel: holding a sender back. A reader that falls
//! `OVERFLOW` (64 MiB) behind gets a reset, counted as `sockmap_overflow`,
//! never a clean end of a cut stream, and the kernel's memory stays bounded.
//! (Where the kernel refuses BPF: `relay_modes.rs`.)

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::backends::{self, CHUNK, Stream, connect, read_digest, write_stream};
use crate::harness::{Sluice, admin_get, one_route};
use crate::observability::with_admin;
use crate::relay_modes::bytes_of;

/// Bytes of `mode` in `sluice_bytes_total`, both directions.
fn bytes_by(admin: SocketAddr, mode: &str) -> u64 {
    let (_, metrics) = admin_get(admin, "/metrics");
    ["client_to_upstream", "upstream_to_client"].iter().map(|dir| bytes_of(&metrics, "test", dir, mode)).sum()
}

/// Waits until `/metrics` has `line`.
fn wait_metric(admin: SocketAddr, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = admin_get(admin, "/metrics");
        if m.contains(line) {
            return;
        }
        assert!(Instant::now() < deadline, "no {line} in\n{m}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` exchanges of `size` bytes through `c` to an echo backend, each checked.
fn exchanges(c: &mut TcpStream, n: usize, size: usize, mut between: impl FnMut(usize)) {
    for i in 0..n {
        let msg = Stream::bytes(i as u64, size);
        c.write_all(&msg).expect("request");
        let mut got = vec![0; size];
        c.read_exact(&mut got).expect("echo");
        assert!(got == msg, "exchange {i} differs");
        between(i);
    }
}

#[test]
fn the_kernel_relays_exchanges_byte_exact_and_counts_every_byte() {
    let (s, admin) = with_admin(&one_route("sockmap", &[backends::echo()], ""));
    assert!(s.wait_log("relay sockmap", Duration::from_secs(5)), "not running in sockmap: {}", s.log());
    let (n, size) = (200, 256 << 10);
    let mut c = connect(s.addr());
    exchanges(&mut c, n, size, |_| {});
    c.shutdown(Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("the end");
    assert!(rest.is_empty());
    wait_metric(admin, "sluice_sessions_closed_total{route=\"test\",reason=\"clean\"} 1");
    let all: u64 = ["spliced", "copied", "uring", "sockmap"].iter().map(|m| bytes_by(admin, m)).sum();
    let total = (2 * n * size) as u64;
    assert_eq!(all, total, "every byte counted once, in one mode or another");
    let kernel = bytes_by(admin, "sockmap");
    assert!(kernel > total / 2, "the kernel moved only {kernel} of {total} bytes");
}

#[test]
fn bytes_the_kernel_moves_are_counted_while_the_session_runs() {
    let (s, admin) = with_admin(&one_route("sockmap", &[backends::echo()], ""));
    let mut c = connect(s.addr());
    let mut seen = vec![0u64];
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 4 && Instant::now() < deadline {
        exchanges(&mut c, 10, 64 << 10, |_| {});
        std::thread::sleep(Duration::from_millis(30)); // a look or two
        let now = bytes_by(admin, "sockmap");
        if now > *seen.last().expect("one") {
            seen.push(now);
        }
    }
    assert!(seen.len() >= 4, "the sockmap count did not grow while the session ran: {seen:?}");
    drop(s);
}

#[test]
fn a_half_close_in_the_kernel_reaches_the_upstream_and_its_answer_the_client() {
    let (up, rx) = backends::reply_after_eof(9, 3 << 20);
    let s = Sluice::with_config(&one_route("sockmap", &[up], ""), &[]);
    let mut c = connect(s.addr());
    let len = 8u64 << 20;
    write_stream(&mut c, 8, len).expect("upload");
    c.shutdown(Shutdown::Write).expect("half-close");
    let (n, digest) = read_digest(&mut c, None).expect("the answer");
    assert_eq!((n, digest), (3 << 20, Stream::digest(9, 3 << 20)), "the answer differs");
    let got = rx.recv_timeout(Duration::from_secs(10)).expect("the upstream's count");
    assert_eq!(got, (len, Stream::digest(8, len)), "the upload differs");
}

#[test]
fn an_upstream_reset_reaches_the_client_after_its_bytes() {
    let len = 4u64 << 20;
    let s = Sluice::with_config(&one_route("sockmap", &[backends::reset_after(6, len)], ""), &[]);
    let mut c = connect(s.addr());
    c.write_all(b"go").expect("first bytes");
    let (n, end) = read_stream(&mut c, 6, None);
    assert!(matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset), "{end:?} after {n}");
    assert_eq!(n, len, "the bytes before the reset");
}

#[test]
fn a_quiet_armed_session_ends_its_idle_timeout_with_a_fin() {
    let s = Sluice::with_config(&one_route("sockmap", &[backends::echo()], "    idle_timeout: 1s\n"), &[]);
    let mut c = connect(s.addr());
    exchanges(&mut c, 20, 64 << 10, |_| {});
    let start = Instant::now();
    let mut rest = Vec::new();
    let end = c.read_to_end(&mut rest);
    assert!(end.is_ok() && rest.is_empty(), "a quiet session must end with a FIN, got {end:?}");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "closed after {took:?}");
    assert!(s.wait_log("reason=idle_timeout ", Duration::from_secs(5)), "{}", s.log());
}

/// Reads `c` to its end, checking every byte against stream `seed`: the
/// count, and whether the end was clean (`Ok`) or an error.
fn read_stream(c: &mut TcpStream, seed: u64, pause: Option<Duration>) -> (u64, std::io::Result<()>) {
    let mut want = Stream::new(seed);
    let (mut got, mut expect) = (vec![0; CHUNK], vec![0; CHUNK]);
    let (mut total, mut left) = (0u64, 0usize); // left: bytes of `expect` not yet compared
    loop {
        let n = match c.read(&mut got) {
            Ok(0) => return (total, Ok(())),
            Ok(n) => n,
            Err(e) => return (total, Err(e)),
        };
        // The stream is made in CHUNKs of 8-byte words: compare against it byte by byte.
        for &b in &got[..n] {
            if left == 0 {
                want.fill(&mut expect);
                left = CHUNK;
            }
            assert_eq!(b, expect[CHUNK - left], "byte {total} differs");
            left -= 1;
            total += 1;
        }
        if let Some(p) = pause {
            std::thread::sleep(p);
        }
    }
}

#[test]
fn a_slow_reader_is_reset_at_the_bound_never_cut_clean() {
    let len = 256u64 << 20;
    let (s, admin) = with_admin(&one_route("sockmap", &[backends::source(5, len)], ""));
    let mut c = connect(s.addr());
    socket2::SockRef::from(&c).set_recv_buffer_size(64 << 10).expect("SO_RCVBUF");
    let (n, end) = read_stream(&mut c, 5, Some(Duration::from_micros(500)));
    match end {
        // A reader that kept up gets all of it.
        Ok(()) => assert_eq!(n, len, "a clean end after {n} of {len} bytes: a cut stream passed off as complete"),
        Err(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
            wait_metric(admin, "sluice_sessions_closed_total{route=\"test\",reason=\"sockmap_overflow\"} 1");
        }
    }
}

/// A backend that writes stream 5 as fast as the connection takes it and
/// counts what it wrote; the receiver hears when it stopped writing (the
/// stream done, or its connection reset).
fn counting_source(len: u64) -> (SocketAddr, Arc<AtomicU64>, std::sync::mpsc::Receiver<()>) {
    let written = Arc::new(AtomicU64::new(0));
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let w = Arc::clone(&written);
    let (done, stopped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _done = DropSends(done);
        let Ok((mut s, _)) = l.accept() else { return };
        let mut stream = Stream::new(5);
        let mut buf = vec![0; CHUNK];
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            stream.fill(&mut buf[..n]);
            if s.write_all(&buf[..n]).is_err() {
                return;
            }
            w.fetch_add(n as u64, Ordering::Relaxed);
            left -= n as u64;
        }
    });
    (addr, written, stopped)
}

/// Sends on its channel when dropped, however the thread holding it ends.
struct DropSends(std::sync::mpsc::Sender<()>);

impl Drop for DropSends {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[test]
fn a_reader_that_stops_holds_the_kernel_to_a_bound() {
    let len = 4u64 << 30;
    let (up, written, stopped) = counting_source(len);
    let s = Sluice::with_config(&one_route("sockmap", &[up], ""), &[]);
    let mut c = connect(s.addr());
    // Start the flow so the direction is armed, then stop reading.
    let mut buf = vec![0; 1 << 20];
    c.read_exact(&mut buf).expect("first MiB");
    // The session is reset once the kernel holds 64 MiB; the backend then
    // stops writing. Socket buffers on the way (the client's and sluice's
    // receive buffers up to tcp_rmem's maximum, the two send buffers) hold
    // some tens of MiB more, as with any relay; without the bound the
    // kernel would hold all the backend can write: gigabytes on loopback.
    assert!(s.wait_log("reason=sockmap_overflow", Duration::from_secs(10)), "no overflow: {}", s.log());
    // The reset reaches the backend, whose next write fails.
    stopped.recv_timeout(Duration::from_secs(10)).expect("the backend stopped writing after the reset");
    let wrote = written.load(Ordering::Relaxed);
    assert!(wrote < 200 << 20, "the backend wrote {wrote} bytes while nobody read");
    // The client gets a reset, not a clean end.
    let end = loop {
        match c.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(e),
        }
    };
    assert!(end.is_err(), "a clean end of a cut stream");
}
