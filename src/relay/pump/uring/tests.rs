//! The uring pump's tests: real loopback sockets, a real ring, and
//! completions handed to the pump as the worker does (`worker/uring.rs`).

use super::*;
use crate::relay::ring::{Owner, Ring};
use std::io::Write;
use std::net::{TcpListener, TcpStream as StdStream};
use std::time::{Duration, Instant};

/// A connected loopback pair: (the test's blocking end, the pump's non-blocking end).
fn pair() -> (StdStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = StdStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    peer.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    (peer, TcpStream::from_std(ours))
}

/// Worker resources with a ring of at most `buffers` buffers of 64 KiB.
fn resources(buffers: usize) -> Resources {
    let budget = std::sync::Arc::new(crate::pipe::PipeBudget::new(1 << 16, 64 << 10));
    let mut res = Resources::new(64 << 10, 4, budget);
    res.ring = Some(Ring::new(64 << 10, buffers).unwrap());
    res
}

fn ring(res: &mut Resources) -> &mut Ring {
    res.ring.as_mut().unwrap()
}

/// A pump that is not run (its session waits for a PROXY header to go out,
/// or for another upstream) still gets its receive's completions: past its
/// cap it must stop receiving, or every arrival takes a buffer.
#[test]
fn a_pump_that_is_not_run_stops_receiving_at_its_cap() {
    let mut res = resources(64);
    let (mut client_peer, client) = pair();
    let (_upstream_peer, upstream) = pair();
    let mut pump = Pump::uring(Owner { key: 0, id: 0, dir: 0 });
    pump.run(&client, &upstream, &mut res).unwrap();
    ring(&mut res).submit().unwrap();
    for _ in 0..40 {
        client_peer.write_all(&[1; 1000]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        while let Some(c) = ring(&mut res).next_completion() {
            pump.complete(c, ring(&mut res));
        }
        ring(&mut res).submit().unwrap();
    }
    let lent = ring(&mut res).counts().lent;
    assert!(lent <= MAX_HELD + 1, "a pump that is not run took {lent} buffers for 40 arrivals");
    pump.release(&mut res);
}

/// A pump released with a multishot receive's completion queued (one with
/// `more`: the receive is still armed) cancels that receive: only a final
/// completion ends one. On main the queued completion counted as the end,
/// the receive stayed armed, and the socket kept being read (its bytes
/// acknowledged and dropped, no reset possible) after the session ended.
#[test]
fn a_released_pump_cancels_a_multishot_receive_still_armed() {
    let mut res = resources(64);
    let (mut client_peer, client) = pair();
    let (_upstream_peer, upstream) = pair();
    let owner = Owner { key: 3, id: 3, dir: 0 };
    let mut pump = Pump::uring(owner);
    pump.run(&client, &upstream, &mut res).unwrap();
    ring(&mut res).submit().unwrap();
    client_peer.write_all(b"first").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let c = loop {
        ring(&mut res).submit().unwrap();
        if let Some(c) = ring(&mut res).next_completion() {
            break c;
        }
        assert!(Instant::now() < deadline, "no completion");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(c.more, "a multishot receive goes on after an arrival: {c:?}");
    pump.complete(c, ring(&mut res));
    assert!(pump.release(&mut res), "the bytes it took are lost");
    let _ = ring(&mut res).settle(3, 3);
    client_peer.write_all(b"later").unwrap();
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        ring(&mut res).submit().unwrap();
        assert!(ring(&mut res).next_completion().is_none(), "a released pump's receive still completes");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(crate::socket_queue::unread(&client).unwrap(), 5, "nothing reads the socket any more");
    assert_eq!(ring(&mut res).counts().lent, 0, "every buffer went back");
}
