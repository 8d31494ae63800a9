//! One direction of a session: the pump state machine of DESIGN.md.
//!
//! A pump owns its sticky readiness flags (set by events, cleared only by
//! `WouldBlock`), the bytes in flight (a pipe for splice, a buffer for copy,
//! never both), and the end-of-stream bookkeeping. Its step drains before it
//! fills, fills only while there is room (backpressure), and passes a
//! half-close on only once everything before it has been delivered. What a
//! failure means for the session is the session's business.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

use super::Resources;
use super::auto::OneWay;
use super::copy::CopyStage;
use super::grow::{Growth, full_hint};
use super::splice;
use crate::pipe::Pipe;

/// At most this many drain+fill rounds per call, so one fast session can't
/// starve the others of its worker; the caller re-runs a pump that says `more`.
const MAX_ROUNDS: usize = 16;

/// How the source side of a pump ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrcEnd {
    /// Still open.
    Open,
    /// Read returned 0: the peer half-closed.
    Eof,
    /// Read failed (reset, timeout): nothing more will come.
    Failed(io::ErrorKind),
}

/// Where the bytes in flight are.
#[derive(Debug)]
enum Stage {
    Splice { pipe: Option<Pipe>, len: usize, growth: Growth },
    Copy(CopyStage),
}

/// What one call to [`Pump::run`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// At least one byte moved (or an end was reached).
    pub progressed: bool,
    /// The round cap was hit while work remained: run again soon.
    pub more: bool,
    /// At least one byte was read from the source.
    pub took_in: bool,
}

/// Writing to the destination failed: that side is gone.
#[derive(Debug)]
pub struct DstFailed(pub io::Error);

/// One direction of a session.
#[derive(Debug)]
pub struct Pump {
    /// `relay: auto` while still copying: the flow so far (see [`OneWay`]).
    one_way: Option<OneWay>,
    /// The most a splice pipe of this pump may grow to (see [`Growth`]).
    pipe_limit: Option<u32>,
    /// The source had readiness we haven't consumed (sticky).
    pub src_readable: bool,
    /// The destination had write space we haven't used up (sticky).
    pub dst_writable: bool,
    /// An event said the source half-closed or failed (EPOLLRDHUP/ERR/HUP).
    /// From then on a short read is no proof the socket is empty: the FIN may
    /// already be queued behind the bytes and will raise no further edge.
    pub src_hup: bool,
    src: SrcEnd,
    dst_shut: bool,
    /// Don't pass EOF on as a FIN: the session will reset the destination instead.
    hold_fin: bool,
    /// The other direction has finished, so this one finishing closes the
    /// session and `close` sends the FIN: no `shutdown` call for it.
    fin_by_close: bool,
    /// The source is known to have been reset (its error already consumed):
    /// its EOF is really this failure.
    eof_is_failure: Option<io::ErrorKind>,
    stage: Stage,
    /// Bytes delivered through a pipe.
    pub spliced: u64,
    /// Bytes delivered through a buffer.
    pub copied: u64,
}

impl Pump {
    /// A pump for a relay mode (`auto` starts copying) whose pipe may grow to
    /// `pipe_limit` bytes (`None`: `fs.pipe-max-size`); see [`super::grow`].
    pub fn for_mode(mode: crate::config::RelayMode, pipe_limit: Option<u32>) -> Pump {
        use crate::config::RelayMode;
        let mut p = Pump::new(mode == RelayMode::Splice);
        p.pipe_limit = pipe_limit;
        if let Stage::Splice { growth, .. } = &mut p.stage {
            *growth = Growth::up_to(pipe_limit);
        }
        if mode == RelayMode::Auto {
            p.one_way = Some(OneWay::default());
        }
        p
    }

    /// A pump that splices (`splice == true`) or copies.
    pub fn new(splice: bool) -> Pump {
        Pump {
            one_way: None,
            pipe_limit: None,
            src_readable: false,
            dst_writable: false,
            src_hup: false,
            src: SrcEnd::Open,
            dst_shut: false,
            hold_fin: false,
            fin_by_close: false,
            eof_is_failure: None,
            stage: if splice {
                Stage::Splice { pipe: None, len: 0, growth: Growth::default() }
            } else {
                Stage::Copy(CopyStage::default())
            },
            spliced: 0,
            copied: 0,
        }
    }

    /// A new pump in the same relay mode reading from a new source into the
    /// same destination (a session that starts over with another upstream).
    /// The destination's writability is kept: edge-triggered, it is known only
    /// from past events, and no new edge would say it again.
    pub fn for_new_source(&self) -> Pump {
        let mut p = Pump::new(matches!(self.stage, Stage::Splice { .. }));
        p.pipe_limit = self.pipe_limit;
        if let Stage::Splice { growth, .. } = &mut p.stage {
            *growth = Growth::up_to(self.pipe_limit);
        }
        p.one_way = self.one_way.map(|_| OneWay::default());
        p.dst_writable = self.dst_writable;
        p
    }

    /// Bytes taken from the source and not yet delivered.
    pub fn pending(&self) -> usize {
        match &self.stage {
            Stage::Splice { len, .. } => *len,
            Stage::Copy(c) => c.pending(),
        }
    }

    /// How the source ended, if it did.
    pub fn src_end(&self) -> SrcEnd {
        self.src
    }

    /// The source ended and everything it sent has been delivered.
    pub fn all_delivered(&self) -> bool {
        self.src != SrcEnd::Open && self.pending() == 0
    }

    /// Finished cleanly: EOF read, all bytes delivered, FIN passed on.
    pub fn finished(&self) -> bool {
        self.all_delivered() && self.dst_shut
    }

    /// Bytes delivered so far, both modes.
    pub fn delivered(&self) -> u64 {
        self.spliced + self.copied
    }

    /// The source was reset before we read from it (the reset was reported
    /// while connecting): deliver what it sent, then end as `kind`, not EOF.
    pub fn fail_at_eof(&mut self, kind: io::ErrorKind) {
        self.eof_is_failure = Some(kind);
    }

    /// The other direction moved bytes: this one's flow is not one-way (yet).
    pub fn other_way_moved(&mut self) {
        if let Some(w) = self.one_way.as_mut() {
            *w = OneWay::default();
        }
    }

    /// Never pass a FIN on: the session will end with a reset once this pump
    /// has delivered what its (failed) source still had for it.
    pub fn hold_fin(&mut self) {
        self.hold_fin = true;
    }

    /// The other direction has finished cleanly: once this one has delivered
    /// its EOF too the session closes both sockets at once, and `close` (with
    /// nothing left unread) sends the FIN a `shutdown` would. Saves one
    /// syscall per connection.
    pub fn fin_by_close(&mut self) {
        self.fin_by_close = true;
    }

    /// Moves bytes from `src` to `dst` until neither side can make progress,
    /// the round cap is hit, or `dst` fails.
    pub fn run(&mut self, src: &TcpStream, dst: &TcpStream, res: &mut Resources) -> Result<Activity, DstFailed> {
        let mut act = Activity::default();
        let taken_before = self.delivered() + self.pending() as u64;
        let mut rounds = 0;
        loop {
            let mut progress = self.drain(dst)?;
            progress |= self.fill(src, res);
            if !progress {
                break;
            }
            act.progressed = true;
            rounds += 1;
            if rounds == MAX_ROUNDS {
                act.more = self.can_work();
                break;
            }
        }
        if self.all_delivered() && !self.dst_shut && !self.hold_fin && self.src == SrcEnd::Eof {
            // Half-close: every byte before the FIN has been delivered.
            if !self.fin_by_close {
                dst.shutdown(Shutdown::Write).map_err(DstFailed)?;
            }
            self.dst_shut = true;
            act.progressed = true;
        }
        act.took_in = self.delivered() + self.pending() as u64 > taken_before;
        self.release_if_empty(res);
        Ok(act)
    }

    /// True if a run would try a syscall: used after hitting the round cap.
    fn can_work(&self) -> bool {
        (self.pending() > 0 && self.dst_writable) || (self.src == SrcEnd::Open && self.src_readable)
    }

    /// Writes in-flight bytes to `dst`. Returns whether any moved.
    fn drain(&mut self, dst: &TcpStream) -> Result<bool, DstFailed> {
        if self.pending() == 0 || !self.dst_writable {
            return Ok(false);
        }
        let r = match &mut self.stage {
            Stage::Splice { pipe: Some(pipe), len, .. } => splice::pipe_to_socket(pipe, dst, *len).inspect(|&n| {
                *len -= n.min(*len);
                self.spliced += n as u64;
            }),
            Stage::Splice { pipe: None, .. } => unreachable!("bytes in flight without a pipe"),
            Stage::Copy(c) => (&*dst).write(c.data()).inspect(|&n| {
                c.written(n);
                self.copied += n as u64;
            }),
        };
        match r {
            Ok(0) => Err(DstFailed(io::Error::from(io::ErrorKind::WriteZero))),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.dst_writable = false;
                if let Stage::Splice { growth, .. } = &mut self.stage {
                    growth.dst_blocked();
                }
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(DstFailed(e)),
        }
    }

    /// Reads from `src` into the stage while there is room. Returns whether
    /// anything happened (bytes, EOF, or a source failure).
    fn fill(&mut self, src: &TcpStream, res: &mut Resources) -> bool {
        if self.src != SrcEnd::Open || !self.src_readable {
            return false;
        }
        if self.one_way.is_some_and(|w| w.is_bulk()) && self.pending() == 0 {
            // Bulk: splice from now on. The buffer is empty, so no byte is left behind in it.
            if let Stage::Copy(c) = &mut self.stage {
                c.release(&mut res.buffers);
            }
            self.stage = Stage::Splice { pipe: None, len: 0, growth: Growth::up_to(self.pipe_limit) };
            self.one_way = None;
        }
        let mut short_read = false;
        let r = match &mut self.stage {
            Stage::Splice { pipe, len, growth } => {
                if pipe.as_ref().is_some_and(|p| *len >= full_hint(p.capacity)) {
                    return false;
                }
                if pipe.is_none() {
                    match res.pipes.get(std::time::Instant::now) {
                        Some(p) => *pipe = Some(p),
                        None => {
                            // No pipe to be had: this pump copies from now on.
                            res.copy_fallbacks += 1;
                            self.stage = Stage::Copy(CopyStage::default());
                            return self.fill(src, res);
                        }
                    }
                }
                let p = pipe.as_ref().expect("a pipe was just taken");
                let r = match splice::socket_to_pipe(src, p) {
                    Err(e) if splice::is_unsupported(&e) && self.spliced == 0 && *len == 0 => {
                        // This socket pair can't splice: copy instead (counted).
                        if let Some(p) = pipe.take() {
                            res.pipes.put(p);
                        }
                        res.copy_fallbacks += 1;
                        self.stage = Stage::Copy(CopyStage::default());
                        return self.fill(src, res);
                    }
                    r => r.inspect(|&n| *len += n),
                };
                if let (Ok(1..), Some(p)) = (&r, pipe.as_mut())
                    && growth.after_read(*len, p.capacity, res.pipes.grow_limit())
                    && !res.pipes.grow(p)
                {
                    growth.refused();
                }
                r
            }
            Stage::Copy(c) => {
                if !c.has_room() {
                    return false;
                }
                let space = c.space(&mut res.buffers);
                let room = space.len();
                (&*src).read(space).inspect(|&n| {
                    c.filled(n);
                    // A short read emptied the socket's queue. Edge-triggered
                    // epoll reports any byte (or FIN, or reset) that arrives
                    // after it, so the EAGAIN read that would follow is a
                    // wasted syscall per message. Not once a FIN or error was
                    // reported: it may sit behind these bytes, already signalled.
                    short_read = n > 0 && n < room && !self.src_hup;
                })
            }
        };
        if short_read {
            self.src_readable = false;
        }
        if let (Some(w), Ok(n @ 1..)) = (self.one_way.as_mut(), &r) {
            w.read(*n);
        }
        match r {
            Ok(0) => {
                self.src = self.eof_is_failure.map_or(SrcEnd::Eof, SrcEnd::Failed);
                true
            }
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // From a socket into a pipe that already holds bytes, EAGAIN
                // usually means "pipe full", not "socket empty": keep the flag,
                // or the edge is lost and the tail of the stream stalls. The
                // next drain empties the pipe and the read is tried again.
                let ambiguous = matches!(self.stage, Stage::Splice { len, .. } if len > 0);
                if !ambiguous {
                    self.src_readable = false;
                }
                false
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(e) => {
                self.src = SrcEnd::Failed(e.kind());
                true
            }
        }
    }

    /// Returns an empty pipe or buffer to its pool.
    fn release_if_empty(&mut self, res: &mut Resources) {
        match &mut self.stage {
            Stage::Splice { pipe, len: 0, .. } => {
                if let Some(p) = pipe.take() {
                    res.pipes.put(p);
                }
            }
            Stage::Splice { .. } => {}
            Stage::Copy(c) => c.release_if_empty(&mut res.buffers),
        }
    }

    /// Gives back whatever the pump holds; a pipe with bytes in it is dropped.
    pub fn release(&mut self, res: &mut Resources) {
        match &mut self.stage {
            Stage::Splice { pipe, len, .. } => {
                if let Some(p) = pipe.take() {
                    if *len == 0 { res.pipes.put(p) } else { res.pipes.discard(p) }
                }
                *len = 0;
            }
            Stage::Copy(c) => c.release(&mut res.buffers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::auto::AUTO_SPLICE_AFTER;
    use super::*;
    use mio::{Events, Interest, Poll, Token};
    use std::net::{TcpListener, TcpStream as StdStream};
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
        Resources::new(64 << 10, 4, std::sync::Arc::new(crate::pipe::PipeBudget::new(1 << 16, 64 << 10)))
    }

    fn relay_through_pump(splice: bool, data: Vec<u8>, slow_reader: bool) -> (Vec<u8>, Pump) {
        relay_with(test_resources(), Pump::new(splice), data, slow_reader).0
    }

    fn relay_with(
        mut res: Resources,
        mut pump: Pump,
        data: Vec<u8>,
        slow_reader: bool,
    ) -> ((Vec<u8>, Pump), Resources) {
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
                        pump.src_readable = true;
                        pump.src_hup |= ev.is_read_closed() || ev.is_error();
                    }
                    _ => pump.dst_writable = true,
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
                pump.src_readable = true;
                pump.dst_writable = true;
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
            pipes: crate::pipe::PipePool::new(
                1 << 30,
                4,
                std::sync::Arc::new(crate::pipe::PipeBudget::new(1 << 16, 64 << 10)),
            ),
            buffers: super::super::copy::BufferPool::new(64 << 10, 4),
            copy_fallbacks: 0,
        };
        let data = payload(1 << 20, 17);
        let ((got, pump), res) = relay_with(res, Pump::new(true), data.clone(), false);
        assert!(got == data, "fallback copy differs");
        assert_eq!((pump.spliced, pump.copied), (0, 1 << 20));
        assert_eq!(res.copy_fallbacks, 1);
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
                (pump.src_readable, pump.dst_writable) = (true, true);
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
    fn splice_pump_is_byte_exact_and_passes_eof_on() {
        for (len, seed) in [(0, 1), (1, 2), (65_535, 3), (65_537, 4), (3 << 20, 5)] {
            let data = payload(len, seed);
            let (got, pump) = relay_through_pump(true, data.clone(), false);
            assert!(got == data, "splice: {len} bytes in, {} out, contents differ", got.len());
            assert_eq!(pump.spliced, len as u64);
            assert_eq!(pump.copied, 0);
        }
    }

    #[test]
    fn copy_pump_is_byte_exact_and_passes_eof_on() {
        for (len, seed) in [(0, 1), (1, 2), (65_535, 3), (65_537, 4), (3 << 20, 5)] {
            let data = payload(len, seed);
            let (got, pump) = relay_through_pump(false, data.clone(), false);
            assert!(got == data, "copy: {len} bytes in, {} out, contents differ", got.len());
            assert_eq!((pump.spliced, pump.copied), (0, len as u64));
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

    #[test]
    fn auto_splices_a_one_way_bulk_flow_past_the_threshold() {
        let data = payload(12 << 20, 11);
        let ((got, pump), _) =
            relay_with(test_resources(), Pump::for_mode(crate::config::RelayMode::Auto, None), data.clone(), false);
        assert!(got == data, "contents differ");
        assert!(pump.spliced > 0, "a 12 MiB one-way flow was never spliced");
        assert!(pump.copied >= AUTO_SPLICE_AFTER, "switched after {} bytes", pump.copied);
        assert!(pump.copied < AUTO_SPLICE_AFTER + (1 << 20), "switched late: after {} bytes", pump.copied);
    }

    #[test]
    fn auto_starts_counting_over_when_the_other_way_replies() {
        let mut p = Pump::for_mode(crate::config::RelayMode::Auto, None);
        let mut big = OneWay::default();
        for _ in 0..(AUTO_SPLICE_AFTER / (64 << 10)) {
            big.read(64 << 10);
        }
        assert!(big.is_bulk());
        p.one_way = Some(big);
        // A reply (1 MiB request/response, say) starts the count over.
        p.other_way_moved();
        assert_eq!(p.one_way, Some(OneWay::default()));
        // Splice and copy pumps have no count to reset.
        let mut s = Pump::new(true);
        s.other_way_moved();
        assert_eq!(s.one_way, None);
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
        assert!(res.pipes.budget_pages() <= limit / 4096, "no pipe past the limit: {} pages", res.pipes.budget_pages());
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
                pump.src_readable = true;
                pump.dst_writable = true;
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
                pump.src_readable = true;
                pump.dst_writable = true;
                let act = pump.run(&src, &dst, &mut res).unwrap();
                if !act.progressed {
                    idle_runs += 1;
                    if idle_runs > 20 {
                        break;
                    }
                }
            }
            assert!(idle_runs > 20, "splice={splice}: the pump kept making progress into a reader that never reads");
            assert!(!pump.dst_writable, "the full destination cleared its flag");
            assert!(pump.pending() > 0, "bytes wait in the pipe or buffer");
            pump.release(&mut res);
        }
    }
}
