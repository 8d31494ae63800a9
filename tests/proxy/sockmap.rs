//! What only `relay: sockmap` has to show (the relay, endings and
//! resilience tests run in this mode too, through `both_modes!`): the
//! kernel really relays, the bytes it moves are counted live and exactly,
//! and a reader that stops cannot make the kernel hold without bound (it
//! has no backpressure of its own: sluice takes the direction back).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::Xxh3;

use crate::backends::{self, CHUNK, Stream, connect, read_digest};
use crate::harness::{Sluice, admin_get, one_route};
use crate::observability::with_admin;
use crate::relay_modes::bytes_of;

/// Bytes of `mode` in `sluice_bytes_total`, both directions.
fn bytes_by(admin: std::net::SocketAddr, mode: &str) -> u64 {
    let (_, metrics) = admin_get(admin, "/metrics");
    ["client_to_upstream", "upstream_to_client"].iter().map(|dir| bytes_of(&metrics, "test", dir, mode)).sum()
}

/// A backend that writes stream 5 as fast as the connection takes it and counts what it wrote.
fn counting_source(len: u64) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let written = Arc::new(AtomicU64::new(0));
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let w = Arc::clone(&written);
    std::thread::spawn(move || {
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
    (addr, written)
}

#[test]
fn the_kernel_relays_a_stream_and_its_bytes_are_counted_exactly() {
    let len = 256u64 << 20;
    let (s, admin) = with_admin(&one_route("sockmap", &[backends::source(5, len)], ""));
    assert!(s.wait_log("relay sockmap", Duration::from_secs(5)), "not running in sockmap: {}", s.log());
    let mut c = connect(s.addr());
    let (n, digest) = read_digest(&mut c, None).expect("download");
    assert_eq!((n, digest), (len, Stream::digest(5, len)), "the download differs");
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(5);
    let total = loop {
        let all: u64 = ["spliced", "copied", "uring", "sockmap"].iter().map(|m| bytes_by(admin, m)).sum();
        if all == len || Instant::now() > deadline {
            break all;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(total, len, "every byte counted once, in one mode or another");
    let kernel = bytes_by(admin, "sockmap");
    assert!(kernel > len / 2, "the kernel moved only {kernel} of {len} bytes");
}

#[test]
fn bytes_the_kernel_moves_are_counted_while_the_stream_runs() {
    let len = 2u64 << 30;
    let (s, admin) = with_admin(&one_route("sockmap", &[backends::source(5, len)], ""));
    let mut c = connect(s.addr());
    // Read a little, then look at the counter while the rest flows.
    let mut buf = vec![0; 8 << 20];
    c.read_exact(&mut buf).expect("first bytes");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while seen.len() < 3 && Instant::now() < deadline {
        let now = bytes_by(admin, "sockmap");
        if seen.last().is_none_or(|&l| now > l) {
            seen.push(now);
        }
        let _ = c.read(&mut buf).expect("more bytes");
    }
    assert!(seen.len() >= 3, "the sockmap count did not grow while the stream ran: {seen:?}");
    c.shutdown(Shutdown::Both).ok();
}

#[test]
fn a_reader_that_stops_holds_the_kernel_to_a_bound() {
    let len = 1u64 << 30;
    let (up, written) = counting_source(len);
    let s = Sluice::with_config(&one_route("sockmap", &[up], ""), &[]);
    let mut c = connect(s.addr());
    // Start the flow so the direction is armed, then stop reading for 3 s.
    let mut buf = vec![0; 1 << 20];
    c.read_exact(&mut buf).expect("first MiB");
    let stalled = written.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    let held = written.load(Ordering::Relaxed) - stalled;
    // Socket buffers on the way (the client's and sluice's receive buffers up to
    // tcp_rmem's maximum, the two send buffers) take some tens of MiB as with any
    // relay; without a bound the kernel would hold everything the backend can
    // write in 3 s, gigabytes on loopback.
    assert!(held < 160 << 20, "the backend wrote {held} bytes while nobody read");
    // Everything still arrives, in order.
    let mut h = Xxh3::new();
    h.update(&buf);
    let mut total = buf.len() as u64;
    loop {
        let n = c.read(&mut buf).expect("the rest");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    assert_eq!((total, h.digest()), (len, Stream::digest(5, len)), "the stream differs after the stall");
}
