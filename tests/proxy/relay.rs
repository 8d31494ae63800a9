//! Byte-exact relaying in both directions and both modes: echo of payloads
//! from 0 B to 64 MiB, 256 MiB uploads and downloads checked by digest,
//! both directions at once, half-close both ways, slow readers, and 2,000
//! concurrent sessions without leaking a socket.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::backends::{self, Stream, connect, read_digest, write_stream};
use crate::harness::{Sluice, one_route, raise_fd_limit};

both_modes! {
    echo_is_byte_exact_for_every_size => echo_sizes;
    upload_of_256_mib_arrives_whole => upload_256_mib;
    download_of_256_mib_arrives_whole => download_256_mib;
    both_directions_at_once => both_directions;
    client_half_close_reaches_upstream => client_half_close;
    upstream_half_close_reaches_client => upstream_half_close;
    slow_reader_bounds_proxy_memory => slow_reader;
    two_thousand_concurrent_sessions_leak_nothing => many_sessions;
}

/// Sends `data` and reads the same number of bytes back, concurrently (big
/// payloads would deadlock a write-then-read client).
fn echo_roundtrip(addr: std::net::SocketAddr, data: Arc<Vec<u8>>) -> Vec<u8> {
    let mut c = connect(addr);
    let mut w = c.try_clone().expect("clone");
    let d = Arc::clone(&data);
    let writer = std::thread::spawn(move || {
        w.write_all(&d).expect("write payload");
        w.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut got = Vec::with_capacity(data.len());
    c.read_to_end(&mut got).expect("read echo");
    writer.join().expect("writer");
    got
}

fn echo_sizes(mode: &str) {
    let up = backends::echo();
    let s = Sluice::with_config(&one_route(mode, &[up], ""), &[]);
    let sizes = [0, 1, 4096, 65_535, 65_536, 65_537, 1 << 20, 64 << 20];
    for (i, &len) in sizes.iter().enumerate() {
        let data = Arc::new(Stream::bytes(i as u64 + 1, len));
        let got = echo_roundtrip(s.addr(), Arc::clone(&data));
        assert_eq!(got.len(), len, "{mode}: echo of {len} bytes came back with {} bytes", got.len());
        assert!(got == *data, "{mode}: echo of {len} bytes differs");
    }
}

fn upload_256_mib(mode: &str) {
    let up = backends::sink();
    let s = Sluice::with_config(&one_route(mode, &[up], ""), &[]);
    let len = 256u64 << 20;
    let mut c = connect(s.addr());
    write_stream(&mut c, 7, len).expect("upload");
    c.shutdown(Shutdown::Write).expect("half-close");
    let mut reply = [0u8; 16];
    c.read_exact(&mut reply).expect("sink reply after our EOF");
    let count = u64::from_be_bytes(reply[..8].try_into().expect("8 bytes"));
    let digest = u64::from_be_bytes(reply[8..].try_into().expect("8 bytes"));
    assert_eq!(count, len, "{mode}: the sink got {count} of {len} bytes");
    assert_eq!(digest, Stream::digest(7, len), "{mode}: upload digest differs");
}

fn download_256_mib(mode: &str) {
    let len = 256u64 << 20;
    let up = backends::source(11, len);
    let s = Sluice::with_config(&one_route(mode, &[up], ""), &[]);
    let mut c = connect(s.addr());
    let (count, digest) = read_digest(&mut c, None).expect("download");
    assert_eq!(count, len, "{mode}: got {count} of {len} bytes");
    assert_eq!(digest, Stream::digest(11, len), "{mode}: download digest differs");
}

fn both_directions(mode: &str) {
    let up = backends::echo();
    let s = Sluice::with_config(&one_route(mode, &[up], ""), &[]);
    let data = Arc::new(Stream::bytes(3, 32 << 20));
    let got = echo_roundtrip(s.addr(), Arc::clone(&data));
    assert!(got == *data, "{mode}: 32 MiB echoed while sending differs (got {} bytes)", got.len());
}

fn client_half_close(mode: &str) {
    let (up, received) = backends::reply_after_eof(5, 2 << 20);
    let s = Sluice::with_config(&one_route(mode, &[up], ""), &[]);
    let mut c = connect(s.addr());
    write_stream(&mut c, 4, 1 << 20).expect("request");
    c.shutdown(Shutdown::Write).expect("half-close");
    // The upstream answers only after it has seen our EOF.
    let (count, digest) = read_digest(&mut c, None).expect("answer");
    assert_eq!(count, 2 << 20, "{mode}: answer cut short");
    assert_eq!(digest, Stream::digest(5, 2 << 20), "{mode}: answer differs");
    let (n, d) = received.recv_timeout(Duration::from_secs(10)).expect("upstream saw EOF");
    assert_eq!((n, d), (1 << 20, Stream::digest(4, 1 << 20)), "{mode}: request differs at the upstream");
}

fn upstream_half_close(mode: &str) {
    let (up, received) = backends::speak_first_then_listen(8, 3 << 20);
    let s = Sluice::with_config(&one_route(mode, &[up], ""), &[]);
    let mut c = connect(s.addr());
    let (count, digest) = read_digest(&mut c, None).expect("greeting");
    assert_eq!((count, digest), (3 << 20, Stream::digest(8, 3 << 20)), "{mode}: greeting differs");
    // The upstream's FIN reached us; our direction still works.
    write_stream(&mut c, 9, 1 << 20).expect("write after the upstream's FIN");
    c.shutdown(Shutdown::Write).expect("half-close");
    let (n, d) = received.recv_timeout(Duration::from_secs(10)).expect("upstream got our bytes");
    assert_eq!((n, d), (1 << 20, Stream::digest(9, 1 << 20)), "{mode}: bytes after the half-close differ");
    let mut rest = Vec::new();
    assert_eq!(c.read_to_end(&mut rest).expect("clean end"), 0);
}

fn slow_reader(mode: &str) {
    let len = 256u64 << 20;
    let up = backends::source(21, len);
    let s = Sluice::with_config(&one_route(mode, &[up], ""), &[]);
    // Warm up (pools, first allocations) before the baseline: 4 MiB, then hang up.
    {
        let mut warm = connect(s.addr());
        let mut buf = vec![0; 4 << 20];
        warm.read_exact(&mut buf).expect("warm-up read");
    }
    let baseline = s.rss_kib();
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let pid = s.pid();
    let sampler = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut c = connect(s.addr());
    // A small receive buffer, so the backpressure really reaches the proxy.
    socket2::SockRef::from(&c).set_recv_buffer_size(64 << 10).expect("SO_RCVBUF");
    let (count, digest) = read_digest(&mut c, Some(Duration::from_micros(500))).expect("slow download");
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    assert_eq!((count, digest), (len, Stream::digest(21, len)), "{mode}: slow download differs");
    let grew = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    assert!(grew < 32 << 10, "{mode}: proxy RSS grew by {grew} KiB (baseline {baseline} KiB) for a slow reader");
}

/// One mode at a time: each holds 4,000 sockets in this process (clients and
/// echo backend), and four at once came near the open-file limit.
static MANY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn many_sessions(mode: &str) {
    let _one_at_a_time = MANY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    raise_fd_limit();
    let up = backends::echo();
    let s = Sluice::with_config(&one_route(mode, &[up], ""), &[]);
    let listening_sockets = s.fds().0;
    // One session first, so lazily created things (worker fds, pools) exist
    // before the baseline; wait until its own sockets are closed.
    let warm = Arc::new(Stream::bytes(1, 4096));
    assert!(echo_roundtrip(s.addr(), Arc::clone(&warm)) == *warm);
    let settle = Instant::now() + Duration::from_secs(10);
    while s.fds().0 != listening_sockets {
        assert!(Instant::now() < settle, "{mode}: the warm-up session's sockets stay open");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (sockets_before, pipes_before, other_before) = s.fds();
    let targets_before = s.fd_targets();
    let n = 2000;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(connect(s.addr()));
    }
    let payloads: Vec<Vec<u8>> = (0..n).map(|i| Stream::bytes(1000 + i as u64, 2048 + i % 1024)).collect();
    for (c, p) in conns.iter_mut().zip(&payloads) {
        c.write_all(p).expect("write");
    }
    for (i, (c, p)) in conns.iter_mut().zip(&payloads).enumerate() {
        let mut got = vec![0; p.len()];
        c.read_exact(&mut got).unwrap_or_else(|e| panic!("{mode}: session {i}: {e}"));
        assert!(got == *p, "{mode}: session {i} echoed different bytes");
        assert!(Instant::now() < deadline, "{mode}: 2000 sessions took too long");
    }
    let (peak_sockets, pipes, _) = s.fds();
    assert!(peak_sockets >= sockets_before + 2 * n, "{mode}: expected 2 sockets per session, saw {peak_sockets}");
    drop(conns);
    // Every session's two sockets must be closed; pooled pipes are bounded.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (sockets, pipes_now, other) = s.fds();
        if sockets == sockets_before && other == other_before {
            assert!(
                pipes_now <= pipes_before + 2 * 128,
                "{mode}: {pipes_now} pipe fds left (was {pipes_before}; the pool keeps at most 128 pipes)"
            );
            if mode == "copy" {
                assert_eq!(pipes_now, pipes_before, "copy mode must not make pipes");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{mode}: fds did not return to the baseline: sockets {sockets} (was {sockets_before}), other {other} \
             (was {other_before}), pipes {pipes_now} (peak {pipes}); open: {:?}, before: {targets_before:?}",
            s.fd_targets()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
