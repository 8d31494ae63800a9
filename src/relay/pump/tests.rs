//! The pump's tests: real loopback sockets, readiness from real
//! edge-triggered events or scripted by hand.

use super::super::cost::{EXPLORE_EVERY, Way};
use super::*;
use mio::{Events, Interest, Poll, Token};
use std::cell::Cell;
use std::io::Read;
use std::net::{TcpListener, TcpStream as StdStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A connected loopback pair: (the test's blocking end, the pump's non-blocking end).
fn pair() -> (StdStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = StdStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    (peer, TcpStream::from_std(ours))
}

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Drives one pump from real edge-triggered events until the source's
/// EOF has been passed on, while threads write `data` in uneven chunks
/// and read it back (slowly if asked). A lost edge shows up as a timeout.
fn test_resources() -> Resources {
    Resources::new(64 << 10, 4, std::sync::Arc::new(crate::relay::pipe::PipeBudget::new(1 << 16, 64 << 10)))
}

fn relay_through_pump(splice: bool, data: Vec<u8>, slow_reader: bool) -> (Vec<u8>, Pump) {
    relay_with(test_resources(), Pump::new(splice), data, slow_reader).0
}

fn relay_with(mut res: Resources, mut pump: Pump, data: Vec<u8>, slow_reader: bool) -> ((Vec<u8>, Pump), Resources) {
    let (mut src_peer, mut src) = pair();
    let (mut dst_peer, mut dst) = pair();
    let mut poll = Poll::new().unwrap();
    poll.registry().register(&mut src, Token(0), Interest::READABLE).unwrap();
    poll.registry().register(&mut dst, Token(1), Interest::WRITABLE).unwrap();
    let expected_len = data.len();
    let writer = std::thread::spawn(move || {
        let mut off = 0;
        let mut step = 1;
        while off < data.len() {
            let n = step.min(data.len() - off);
            src_peer.write_all(&data[off..off + n]).unwrap();
            off += n;
            step = (step * 7 + 13) % 200_000 + 1;
        }
        src_peer.shutdown(std::net::Shutdown::Write).unwrap();
        src_peer
    });
    let reader = std::thread::spawn(move || {
        dst_peer.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut out = Vec::with_capacity(expected_len);
        let mut buf = vec![0; 7919];
        loop {
            let n = dst_peer.read(&mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
            if slow_reader {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    });
    let mut events = Events::with_capacity(8);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pump.finished() {
        assert!(Instant::now() < deadline, "pump stalled with {} bytes pending", pump.pending());
        poll.poll(&mut events, Some(Duration::from_secs(5))).unwrap();
        for ev in events.iter() {
            match ev.token() {
                Token(0) => {
                    pump.src.readable = true;
                    pump.src.hup |= ev.is_read_closed() || ev.is_error();
                }
                _ => pump.dst.writable = true,
            }
        }
        loop {
            let act = pump.run(&src, &dst, &mut res).unwrap();
            if !act.more {
                break;
            }
        }
    }
    pump.release(&mut res);
    assert_eq!(res.pipes.counts().in_use, 0, "every pipe went back to the pool");
    let _src_peer = writer.join().unwrap();
    ((reader.join().unwrap(), pump), res)
}

#[test]
fn a_source_reset_before_we_read_ends_in_failure_after_its_bytes() {
    for splice in [true, false] {
        let (mut src_peer, src) = pair();
        let (mut dst_peer, dst) = pair();
        src_peer.write_all(b"bye").unwrap();
        drop(src_peer);
        let mut res = test_resources();
        let mut pump = Pump::new(splice);
        pump.fail_at_eof(io::ErrorKind::ConnectionReset);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pump.all_delivered() {
            assert!(Instant::now() < deadline, "splice={splice}: never drained");
            pump.src.readable = true;
            pump.dst.writable = true;
            pump.run(&src, &dst, &mut res).unwrap();
        }
        assert_eq!(pump.src_end(), SrcEnd::Failed(io::ErrorKind::ConnectionReset));
        assert!(!pump.finished(), "splice={splice}: a failed source must not pass a FIN on");
        let mut got = [0; 3];
        dst_peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"bye");
    }
}

#[test]
fn without_a_pipe_the_splice_pump_copies_and_counts_it() {
    let res = Resources {
        // no such pipe can be made
        pipes: crate::relay::pipe::PipePool::new(
            1 << 30,
            4,
            std::sync::Arc::new(crate::relay::pipe::PipeBudget::new(1 << 16, 64 << 10)),
        ),
        buffers: super::super::copy::BufferPool::new(64 << 10, 4),
        copy_fallbacks: 0,
        splice_refused: 0,
        costs: Default::default(),
        load: super::super::load::LoadMeter::new(Instant::now()),
        ring: None,
        sockmap: None,
        sockmap_held: 0,
    };
    let data = payload(1 << 20, 17);
    let ((got, pump), res) = relay_with(res, Pump::new(true), data.clone(), false);
    assert!(got == data, "fallback copy differs");
    assert_eq!((pump.spliced, pump.copied), (0, 1 << 20));
    assert_eq!(res.copy_fallbacks, 1);
    assert_eq!(res.splice_refused, 0, "counted as no pipe, not as refused");
    assert_eq!(res.pipes.counts().refused, 1);
}

#[test]
fn fin_by_close_finishes_without_shutdown_and_close_sends_the_fin() {
    for splice in [true, false] {
        let (mut src_peer, src) = pair();
        let (mut dst_peer, dst) = pair();
        let mut res = test_resources();
        let mut pump = Pump::new(splice);
        pump.fin_by_close();
        src_peer.write_all(b"last words").unwrap();
        src_peer.shutdown(Shutdown::Write).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pump.finished() {
            assert!(Instant::now() < deadline, "splice {splice}: the pump never finished");
            (pump.src.readable, pump.dst.writable) = (true, true);
            pump.run(&src, &dst, &mut res).unwrap();
        }
        let mut got = [0; 10];
        dst_peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"last words");
        // No shutdown was sent: the peer's read waits...
        dst_peer.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let e = dst_peer.read(&mut got).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "splice {splice}: {e}");
        // ...until the session closes the socket, which sends the FIN.
        pump.release(&mut res);
        drop(dst);
        dst_peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(dst_peer.read(&mut got).unwrap(), 0, "splice {splice}: no EOF after close");
    }
}

#[test]
fn pump_is_byte_exact_and_passes_eof_on_in_both_modes() {
    for splice in [true, false] {
        for (len, seed) in [(0, 1), (1, 2), (65_535, 3), (65_537, 4), (3 << 20, 5)] {
            let data = payload(len, seed);
            let (got, pump) = relay_through_pump(splice, data.clone(), false);
            assert!(got == data, "splice={splice}: {len} bytes in, {} out, contents differ", got.len());
            let expected = if splice { (len as u64, 0) } else { (0, len as u64) };
            assert_eq!((pump.spliced, pump.copied), expected, "splice={splice}, {len} bytes");
        }
    }
}

#[test]
fn slow_reader_gets_every_byte_in_both_modes() {
    for splice in [true, false] {
        let data = payload(2 << 20, 9);
        let (got, _) = relay_through_pump(splice, data.clone(), true);
        assert!(got == data, "splice={splice}: contents differ");
    }
}

/// Scripted costs: nanoseconds per byte of each stage, as a function of
/// the message the test is at (shared through `at`).
fn scripted(res: &mut Resources, at: Rc<Cell<u64>>, ns_per_byte: impl Fn(u64, Way) -> u64 + 'static) {
    res.costs.script = Some(Box::new(move |way, bytes| bytes * ns_per_byte(at.get(), way)));
}

#[test]
fn auto_relays_a_stream_exactly_while_it_tries_both_stages() {
    // The real clock: whichever stage measures cheaper, both are tried
    // (copy first), and every byte arrives in order.
    let data = payload(12 << 20, 11);
    let ((got, pump), res) =
        relay_with(test_resources(), Pump::for_mode(crate::config::RelayMode::Auto, None), data.clone(), false);
    assert!(got == data, "contents differ");
    assert!(pump.spliced > 0 && pump.copied > 0, "spliced {}, copied {}", pump.spliced, pump.copied);
    assert!(res.costs.explored >= 2);
}

#[test]
fn auto_streams_by_the_stage_that_costs_less() {
    for cheap in [Way::Splice, Way::Copy] {
        let mut res = test_resources();
        scripted(&mut res, Rc::new(Cell::new(0)), move |_, way| if way == cheap { 1 } else { 3 });
        let data = payload(12 << 20, 12);
        // The first stream meets every size class new: each tries both
        // stages once. The second finds them measured.
        let (_, res) = relay_with(res, Pump::for_mode(crate::config::RelayMode::Auto, None), data.clone(), false);
        let ((got, pump), _) =
            relay_with(res, Pump::for_mode(crate::config::RelayMode::Auto, None), data.clone(), false);
        assert!(got == data, "contents differ");
        let (mine, other) =
            if cheap == Way::Splice { (pump.spliced, pump.copied) } else { (pump.copied, pump.spliced) };
        assert!(other < mine / 8, "{cheap:?} costs less, yet it moved {mine} bytes and the other stage {other}");
    }
}

/// Relays `count` messages of `size` bytes one at a time through an auto
/// pump, each read on the far side before the next is written, with the
/// stages' costs scripted by message (scripted readiness: both flags set by
/// hand). Returns the bytes spliced of each message, and the resources.
fn auto_messages(size: usize, count: u64, ns_per_byte: impl Fn(u64, Way) -> u64 + 'static) -> (Vec<u64>, Resources) {
    let (mut src_peer, src) = pair();
    let (mut dst_peer, dst) = pair();
    let mut res = test_resources();
    let at = Rc::new(Cell::new(0));
    scripted(&mut res, at.clone(), ns_per_byte);
    let mut pump = Pump::for_mode(crate::config::RelayMode::Auto, None);
    dst_peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut spliced = Vec::new();
    for i in 0..count {
        at.set(i);
        let before = pump.spliced;
        let msg = payload(size, i);
        src_peer.write_all(&msg).unwrap();
        let mut got = vec![0; size];
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut off = 0;
        while off < size {
            assert!(Instant::now() < deadline, "message {i} never relayed");
            pump.src.readable = true;
            pump.dst.writable = true;
            pump.run(&src, &dst, &mut res).unwrap();
            // Read what arrived so a big message never fills the far side's window.
            dst_peer.set_nonblocking(true).unwrap();
            match dst_peer.read(&mut got[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("message {i}: {e}"),
            }
        }
        assert!(got == msg, "message {i} differs");
        assert_eq!(pump.delivered(), (i + 1) * size as u64, "message {i}: delivered exactly");
        spliced.push(pump.spliced - before);
        // The reply, as the session would report it.
        pump.other_way_moved();
    }
    (spliced, res)
}

#[test]
fn auto_follows_when_the_costs_of_the_two_stages_swap_mid_run() {
    // 64 KiB messages: splicing costs a third of copying for the first 100
    // messages, then three times as much, then a third again.
    let splice_cheap = |i: u64| !(100..200).contains(&i);
    let (spliced, res) =
        auto_messages(64 << 10, 300, move |i, way| if (way == Way::Splice) == splice_cheap(i) { 1 } else { 3 });
    let msg = 64 << 10;
    let count = |r: std::ops::Range<usize>| spliced[r].iter().filter(|&&b| b == msg).count();
    let copied = |r: std::ops::Range<usize>| spliced[r].iter().filter(|&&b| b == 0).count();
    // Each phase settles within its first 20 messages; from then on the
    // other stage is only tried, about once in EXPLORE_EVERY runs (a
    // message takes a few runs, so a few more messages are touched).
    let most = 80 - 4 * 80 / EXPLORE_EVERY as usize;
    assert!(count(20..100) >= most, "phase 1 (splice cheaper): {} of 80 spliced whole", count(20..100));
    assert!(copied(120..200) >= most, "phase 2 (copy cheaper): {} of 80 copied whole", copied(120..200));
    assert!(count(220..300) >= most, "phase 3 (splice cheaper again): {} of 80 spliced whole", count(220..300));
    assert!(res.costs.explored >= 6, "the dearer stage is tried now and then");
}

#[test]
fn auto_splices_small_messages_only_to_measure_them_when_copying_costs_less() {
    let (spliced, _) = auto_messages(1024, 320, |_, way| if way == Way::Copy { 1 } else { 2 });
    let tried = spliced.iter().filter(|&&b| b > 0).count();
    assert!((1..=320 / EXPLORE_EVERY as usize + 2).contains(&tried), "spliced {tried} of 320 small messages");
}

#[test]
fn a_bulk_flow_grows_its_pipe_up_to_its_limit() {
    let data = payload(16 << 20, 21);
    let limit = 256 << 10;
    let pump = Pump::for_mode(crate::config::RelayMode::Splice, Some(limit as u32));
    let ((got, _), res) = relay_with(test_resources(), pump, data.clone(), false);
    assert!(got == data, "contents differ");
    let grown = res.pipes.counts().grown;
    assert!((1..=2).contains(&grown), "64 KiB -> 256 KiB takes 1 or 2 doublings, not {grown}");
    assert!(res.pipes.budget_bytes() <= limit, "no pipe past the limit: {} bytes held", res.pipes.budget_bytes());
}

#[test]
fn request_response_never_grows_its_pipe() {
    // Scripted: each 1 KiB request is written, relayed with both flags
    // set by hand, and read on the far side before the next is sent.
    let (mut src_peer, src) = pair();
    let (mut dst_peer, dst) = pair();
    let mut res = test_resources();
    let mut pump = Pump::new(true);
    dst_peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for i in 0..200 {
        let msg = payload(1024, i);
        src_peer.write_all(&msg).unwrap();
        let mut got = vec![0; msg.len()];
        let deadline = Instant::now() + Duration::from_secs(10);
        while pump.delivered() < (i + 1) * 1024 {
            assert!(Instant::now() < deadline, "message {i} never relayed");
            pump.src.readable = true;
            pump.dst.writable = true;
            pump.run(&src, &dst, &mut res).unwrap();
        }
        dst_peer.read_exact(&mut got).unwrap();
        assert!(got == msg, "message {i} differs");
    }
    assert_eq!(res.pipes.counts().grown, 0, "1 KiB messages never fill a pipe");
}

#[test]
fn a_stuck_reader_stops_the_pump_without_spinning() {
    for splice in [true, false] {
        let (mut src_peer, src) = pair();
        let (_dst_peer, dst) = pair();
        let mut res = test_resources();
        let mut pump = Pump::new(splice);
        let chunk = payload(1 << 20, 3);
        src_peer.set_nonblocking(true).unwrap();
        let mut idle_runs = 0;
        // Keep offering bytes; the destination never reads.
        for _ in 0..2000 {
            let _ = src_peer.write(&chunk);
            pump.src.readable = true;
            pump.dst.writable = true;
            let act = pump.run(&src, &dst, &mut res).unwrap();
            if !act.progressed {
                idle_runs += 1;
                if idle_runs > 20 {
                    break;
                }
            }
        }
        assert!(idle_runs > 20, "splice={splice}: the pump kept making progress into a reader that never reads");
        assert!(!pump.dst.writable, "the full destination cleared its flag");
        assert!(pump.pending() > 0, "bytes wait in the pipe or buffer");
        pump.release(&mut res);
    }
}

#[test]
fn the_default_lowat_is_on_the_destination_only_while_splicing() {
    use socket2::SockRef;
    for splice in [true, false] {
        let (mut src_peer, src) = pair();
        let (_dst_peer, dst) = pair();
        let mut res = test_resources();
        let mut pump = Pump::new(splice).with_stage_lowat(Some(256 << 10));
        src_peer.write_all(b"x").unwrap();
        (pump.src.readable, pump.dst.writable) = (true, true);
        pump.run(&src, &dst, &mut res).unwrap();
        let lowat = SockRef::from(&dst).tcp_notsent_lowat().unwrap();
        assert_eq!(lowat, if splice { 256 << 10 } else { 0 }, "splice {splice}");
        pump.release(&mut res);
    }
    // An auto pump that changes stage changes the destination's bound with it.
    let (mut src_peer, src) = pair();
    let (mut dst_peer, dst) = pair();
    let mut res = test_resources();
    let at = Rc::new(Cell::new(0));
    scripted(&mut res, at.clone(), |_, way| if way == Way::Splice { 1 } else { 3 });
    let mut pump = Pump::for_mode(crate::config::RelayMode::Auto, None).with_stage_lowat(Some(256 << 10));
    let mut seen = std::collections::BTreeSet::new();
    let mut got = [0; 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 1..=8 {
        src_peer.write_all(&[7; 1024]).unwrap();
        while pump.delivered() < i * 1024 {
            assert!(Instant::now() < deadline, "message {i} never relayed");
            (pump.src.readable, pump.dst.writable) = (true, true);
            pump.run(&src, &dst, &mut res).unwrap();
        }
        dst_peer.read_exact(&mut got).unwrap();
        let lowat = SockRef::from(&dst).tcp_notsent_lowat().unwrap();
        seen.insert((matches!(pump.stage, Stage::Splice { .. }), lowat));
        pump.other_way_moved();
    }
    assert!(seen.contains(&(true, 256 << 10)) && seen.contains(&(false, 0)), "stage and bound seen: {seen:?}");
    assert!(seen.len() == 2, "a stage with the other's bound: {seen:?}");
}
