//! One direction of a session: the pump state machine.
//!
//! A pump owns its sticky readiness flags (set by events, cleared only by
//! `WouldBlock`), the bytes in flight (a pipe for splice, a buffer for copy,
//! never both; how its reads fill the pipe, for `grow.rs` to decide when it
//! doubles; under `relay: uring` its operations on the worker's ring,
//! `pump/uring.rs`), under `relay: auto` the stage each run chose by
//! measured cost (`auto.rs`, `cost.rs`), the destination's default
//! `notsent_lowat` by stage (`pump/lowat.rs`), and the end-of-stream bookkeeping. Its step drains before it
//! fills, fills only while there is room (backpressure), and passes a
//! half-close on only once everything before it has been delivered. What a
//! failure means for the session is the session's business.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

use super::Resources;
use super::auto::Auto;
use super::copy::CopyStage;
use super::cost::Way;
use super::grow::{Growth, full_hint};
use super::splice;
use crate::relay::pipe::Pipe;

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
    Uring(uring::UringStage),
}

impl Stage {
    /// The stage as `relay: auto` knows it (it never chooses `Uring`).
    fn way(&self) -> Option<Way> {
        match self {
            Stage::Splice { .. } => Some(Way::Splice),
            Stage::Copy(_) => Some(Way::Copy),
            Stage::Uring(_) => None,
        }
    }
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
    /// `relay: auto` while the stage may still change: the flow's message
    /// size (see [`Auto`]), whose measured costs pick the stage of each run.
    auto: Option<Auto>,
    /// The most a splice pipe of this pump may grow to (see [`Growth`]).
    pipe_limit: Option<u32>,
    /// The route's default `notsent_lowat`, which only some stages set on
    /// the destination (`lowat.rs`).
    stage_lowat: Option<lowat::StageLowat>,
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
    /// Bytes delivered through the worker's io_uring.
    pub uring: u64,
}

impl Pump {
    /// A pump for a relay mode (`auto` starts copying) whose pipe may grow to
    /// `pipe_limit` bytes (`None`: `fs.pipe-max-size`); see [`super::grow`].
    pub fn for_mode(mode: crate::config::RelayMode, pipe_limit: Option<u32>) -> Pump {
        use crate::config::RelayMode;
        let mut p = Pump::new(mode == RelayMode::Splice);
        p.pipe_limit = pipe_limit;
        if mode == RelayMode::Auto {
            p.auto = Some(Auto::default());
        }
        p
    }

    /// A pump that splices (`splice == true`) or copies.
    pub fn new(splice: bool) -> Pump {
        Pump {
            auto: None,
            pipe_limit: None,
            stage_lowat: None,
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
            uring: 0,
        }
    }

    /// A new pump in the same relay mode reading from a new source into the
    /// same destination (a session that starts over with another upstream).
    /// The destination's writability is kept: edge-triggered, it is known only
    /// from past events, and no new edge would say it again.
    pub fn for_new_source(&self) -> Pump {
        let mut p = Pump::new(matches!(self.stage, Stage::Splice { .. }));
        p.pipe_limit = self.pipe_limit;
        p.stage_lowat = self.stage_lowat;
        p.auto = self.auto.map(|_| Auto::default());
        p.dst_writable = self.dst_writable;
        p
    }

    /// Runs on the worker's io_uring (`relay: uring`).
    pub fn is_uring(&self) -> bool {
        matches!(self.stage, Stage::Uring(_))
    }

    /// Bytes taken from the source and not yet delivered.
    pub fn pending(&self) -> usize {
        match &self.stage {
            Stage::Splice { len, .. } => *len,
            Stage::Copy(c) => c.pending(),
            Stage::Uring(u) => u.pending(),
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

    /// Bytes delivered so far, all modes.
    pub fn delivered(&self) -> u64 {
        self.spliced + self.copied + self.uring
    }

    /// The source was reset before we read from it (the reset was reported
    /// while connecting): deliver what it sent, then end as `kind`, not EOF.
    pub fn fail_at_eof(&mut self, kind: io::ErrorKind) {
        self.eof_is_failure = Some(kind);
    }

    /// The other direction moved bytes: this one's flow is not one-way (yet).
    pub fn other_way_moved(&mut self) {
        if let Some(a) = self.auto.as_mut() {
            a.other_way_moved();
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
        let taken_before = self.delivered() + self.pending() as u64;
        let delivered = self.delivered();
        if let (Some(a), Some(way)) = (self.auto.as_mut(), self.stage.way()) {
            a.start_run(&mut res.costs, way, delivered);
        }
        self.sync_lowat(dst);
        let mut act = if self.is_uring() { self.run_uring(src, dst, res)? } else { self.rounds(src, dst, res)? };
        let delivered = self.delivered();
        if self.auto.is_some() {
            // The run is over: its last stretch is charged.
            res.costs.finish(delivered);
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

    /// Drain+fill rounds by readiness (every stage but `Uring`), up to the cap.
    fn rounds(&mut self, src: &TcpStream, dst: &TcpStream, res: &mut Resources) -> Result<Activity, DstFailed> {
        let mut act = Activity::default();
        let rounds = if self.auto.is_some_and(|a| a.exploring()) { 1 } else { MAX_ROUNDS };
        for _ in 0..rounds {
            let mut progress = self.drain(dst)?;
            progress |= self.fill(src, res);
            self.sync_lowat(dst);
            if !progress {
                return Ok(act);
            }
            act.progressed = true;
        }
        act.more = self.can_work();
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
            Stage::Uring(_) => unreachable!("a uring pump does not drain by readiness"),
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
        if let Some(way) = self.auto.and_then(|a| a.wanted()) {
            if self.pending() > 0 {
                // `relay: auto` chose the other stage: drain this one first.
                return false;
            }
            let delivered = self.delivered();
            self.set_stage(way == Way::Splice, res);
            if let Some(a) = self.auto.as_mut() {
                a.switched(&mut res.costs, way, delivered);
            }
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
                        self.auto = None;
                        return self.fill(src, res);
                    }
                    r => r.inspect(|&n| *len += n),
                };
                let limit = self.pipe_limit.map_or(res.pipes.grow_limit(), |l| res.pipes.grow_limit().min(l as usize));
                if let (Ok(1..), Some(p)) = (&r, pipe.as_mut())
                    && growth.after_read(*len, p.capacity, limit)
                    && !res.pipes.grow(p)
                {
                    growth.refused();
                }
                r
            }
            Stage::Uring(_) => return false,
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
        if let (Some(a), Ok(n @ 1..)) = (self.auto.as_mut(), &r) {
            a.read(*n);
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

    /// `relay: auto`, with nothing in flight: splice (`true`) or copy from
    /// now on, giving the empty pipe or buffer of the other stage back.
    fn set_stage(&mut self, splice: bool, res: &mut Resources) {
        if splice == matches!(self.stage, Stage::Splice { .. }) {
            return;
        }
        self.release(res);
        self.stage = if splice {
            Stage::Splice { pipe: None, len: 0, growth: Growth::default() }
        } else {
            Stage::Copy(CopyStage::default())
        };
    }

    /// Returns an empty pipe or buffer to its pool.
    fn release_if_empty(&mut self, res: &mut Resources) {
        match &mut self.stage {
            Stage::Splice { pipe, len: 0, .. } => {
                if let Some(p) = pipe.take() {
                    res.pipes.put(p);
                }
            }
            Stage::Splice { .. } | Stage::Uring(_) => {}
            Stage::Copy(c) => c.release_if_empty(&mut res.buffers),
        }
    }

    /// Gives back whatever the pump holds; a pipe with bytes in it is
    /// dropped. Returns true if bytes a `relay: uring` pump had already
    /// taken from its source will now never be delivered (so that source
    /// must be reset, not closed as if all had arrived).
    pub fn release(&mut self, res: &mut Resources) -> bool {
        match &mut self.stage {
            Stage::Splice { pipe, len, .. } => {
                if let Some(p) = pipe.take() {
                    if *len == 0 { res.pipes.put(p) } else { res.pipes.discard(p) }
                }
                *len = 0;
            }
            Stage::Copy(c) => c.release(&mut res.buffers),
            Stage::Uring(_) => return res.ring.as_mut().is_some_and(|r| self.release_uring(r)),
        }
        false
    }
}

mod lowat;
#[cfg(test)]
mod tests;
mod uring;
