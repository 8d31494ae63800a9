//! The kernel's behaviour the module doc states, each shown here. They need
//! root (CAP_BPF, CAP_NET_ADMIN); without it each says "skipped" and passes.

use super::*;
use crate::sys::socket_queue;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(5);

fn sockmap(capacity: u32) -> Option<Sockmap> {
    match Sockmap::new(capacity) {
        Ok(m) => Some(m),
        Err(e @ Unavailable::NotPermitted { .. }) => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// A connected loopback pair: (the side that connected, the accepted side).
fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    for s in [&a, &b] {
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
    }
    (a, b)
}

/// A session as sluice holds one: client ↔ `down` (accepted by us), `up`
/// (our connection) ↔ upstream.
struct Session {
    client: TcpStream,
    down: TcpStream,
    up: TcpStream,
    upstream: TcpStream,
}

fn session() -> Session {
    let (client, down) = pair();
    let (up, upstream) = pair();
    Session { client, down, up, upstream }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

/// Whether `s` has bytes to read within `d`.
fn readable_within(s: &TcpStream, d: Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(d.as_millis() as i32).unwrap();
    poll(&mut fds, ms).unwrap() > 0
}

#[test]
fn bytes_arriving_after_arm_reach_the_peer_without_userspace() {
    let Some(map) = sockmap(16) else { return };
    let mut s = session();
    let cookie = Sockmap::cookie(&s.down).unwrap();
    map.arm(&s.down, cookie, &s.up).unwrap();
    assert!(map.is_armed(cookie).unwrap() && map.has_target(cookie).unwrap());
    s.client.write_all(b"hello upstream").unwrap();
    assert_eq!(read_n(&mut s.upstream, 14), b"hello upstream");
    assert_eq!(socket_queue::unread(&s.down).unwrap(), 0);
}
