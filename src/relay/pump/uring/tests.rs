//! The uring pump's tests: real loopback sockets, a real ring with a small
//! buffer cap, and a loop that does with completions what the worker does
//! (`worker/uring.rs`): hand each to its pump, wake starved receives, run
//! the session's pumps, submit.

use super::*;
use crate::relay::ring::{Owner, Ring};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream as StdStream};
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
    let budget = std::sync::Arc::new(crate::relay::pipe::PipeBudget::new(1 << 16, 64 << 10));
    let mut res = Resources::new(64 << 10, 4, budget);
    res.ring = Some(Ring::new(64 << 10, buffers).unwrap());
    res
}

fn ring(res: &mut Resources) -> &mut Ring {
    res.ring.as_mut().unwrap()
}

/// One session: its two sockets and pumps (client → upstream, back).
struct Session {
    client: TcpStream,
    upstream: TcpStream,
    pumps: [Pump; 2],
}

impl Session {
    fn new(key: usize, client: TcpStream, upstream: TcpStream) -> Session {
        let owner = |dir| Owner { key, id: key as u64, dir };
        Session { client, upstream, pumps: [Pump::uring(owner(0)), Pump::uring(owner(1))] }
    }

    fn run(&mut self, res: &mut Resources) {
        let [c2u, u2c] = &mut self.pumps;
        c2u.run(&self.client, &self.upstream, res).expect("the upstream takes bytes");
        u2c.run(&self.upstream, &self.client, res).expect("the client takes bytes");
    }

    fn finished(&self) -> bool {
        self.pumps.iter().all(Pump::finished)
    }
}

/// Runs `sessions` as the worker would until all are finished or `limit`
/// passes; false if they got stuck.
fn drive(sessions: &mut [Session], res: &mut Resources, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    for s in sessions.iter_mut() {
        s.run(res);
    }
    while !sessions.iter().all(Session::finished) {
        if Instant::now() > deadline {
            // What each direction holds, for the failure message.
            eprintln!("stuck: {:?}", ring(res).counts());
            for u in sessions.iter().flat_map(|s| &s.pumps).filter_map(|p| match &p.stage {
                Stage::Uring(u) => Some(u),
                _ => None,
            }) {
                eprintln!("  {:?}: {} held, send {:?}, starved {}", u.owner, u.held.len(), u.send, u.starved);
            }
            return false;
        }
        ring(res).submit().unwrap();
        let mut idle = true;
        while let Some(c) = ring(res).next_completion() {
            idle = false;
            let s = &mut sessions[c.owner.key];
            s.pumps[c.owner.dir as usize].complete(c, ring(res));
            s.run(res);
        }
        while let Some(o) = ring(res).take_unstarved() {
            idle = false;
            let s = &mut sessions[o.key];
            s.pumps[o.dir as usize].unstarve();
            s.run(res);
        }
        if idle {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    true
}

/// An upstream that echoes everything and passes the half-close back.
fn echo(mut s: StdStream) {
    let mut buf = vec![0; 64 << 10];
    loop {
        match s.read(&mut buf).unwrap() {
            0 => return s.shutdown(Shutdown::Write).unwrap(),
            n => s.write_all(&buf[..n]).unwrap(),
        }
    }
}

/// Two clients each send `len` bytes through their own session to an echo
/// and read the echo back at the same time, on one ring capped at `buffers`.
fn echo_flows(flows: usize, buffers: usize, len: usize) -> bool {
    let mut res = resources(buffers);
    let mut sessions = Vec::new();
    let mut threads = Vec::new();
    for key in 0..flows {
        let (mut client_peer, client) = pair();
        let (upstream_peer, upstream) = pair();
        // Small socket buffers: an echo blocks soon after its replies stop being read.
        for s in [socket2::SockRef::from(&upstream_peer), socket2::SockRef::from(&upstream)] {
            s.set_recv_buffer_size(32 << 10).unwrap();
            s.set_send_buffer_size(32 << 10).unwrap();
        }
        threads.push(std::thread::spawn(move || echo(upstream_peer)));
        let mut reader = client_peer.try_clone().unwrap();
        threads.push(std::thread::spawn(move || {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + i / 4093) as u8).collect();
            client_peer.write_all(&data).unwrap();
            client_peer.shutdown(Shutdown::Write).unwrap();
        }));
        threads.push(std::thread::spawn(move || {
            let mut got = Vec::with_capacity(len);
            let mut buf = vec![0; 64 << 10];
            loop {
                let n = reader.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                // A client that reads a little slower than it writes.
                std::thread::sleep(Duration::from_micros(200));
            }
            assert!(got.len() == len && got.iter().enumerate().all(|(i, b)| *b == (i * 31 + i / 4093) as u8));
        }));
        sessions.push(Session::new(key, client, upstream));
    }
    let done = drive(&mut sessions, &mut res, Duration::from_secs(10));
    if done {
        for t in threads {
            t.join().unwrap();
        }
    }
    for s in &mut sessions {
        for p in &mut s.pumps {
            p.release(&mut res);
        }
    }
    done
}

/// Pumps hold received buffers while their destination is blocked, and
/// every receive needs one from the same capped set. Two echo flows on four
/// buffers must not end with all four held by client→upstream directions
/// waiting for echoes that wait (their replies unread) for receives that
/// wait for a buffer. (On main this got stuck in most rounds.)
#[test]
fn two_echo_flows_on_a_small_buffer_set_do_not_deadlock() {
    for round in 0..3 {
        assert!(echo_flows(2, 4, 32 << 20), "round {round}: two echo flows on 4 buffers got stuck");
    }
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
    assert_eq!(crate::sys::socket_queue::unread(&client).unwrap(), 5, "nothing reads the socket any more");
    assert_eq!(ring(&mut res).counts().lent, 0, "every buffer went back");
}
