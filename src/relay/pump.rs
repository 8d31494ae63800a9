//! One direction of a session: the pump state machine.
//!
//! A pump owns the state of its two ends (`pump/ends.rs`: the source's
//! sticky readiness and how it ended, the destination's write space and how
//! the end of the stream is passed on) and the bytes in flight (a pipe for
//! splice, a buffer for copy, never both; how its reads fill the pipe, for
//! `grow.rs` to decide when it doubles; under `relay: uring` its operations
//! on the worker's ring, `pump/uring.rs`), under `relay: auto` the stage
//! each run chose by measured cost (`auto.rs`, `cost.rs`), the
//! destination's default `notsent_lowat` by stage (`pump/lowat.rs`). Its
//! step drains (here) before it fills (`pump/fill.rs`), fills only while
//! there is room (backpressure), and passes a half-close on only once
//! everything before it has been delivered. What a failure means for the
//! session is the session's business.

use std::io::{self, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

use super::Resources;
use super::auto::Auto;
use super::copy::CopyStage;
use super::cost::Way;
use super::grow::Growth;
use super::splice;
use crate::relay::pipe::Pipe;
pub use ends::{Destination, Source, SrcEnd};

/// At most this many drain+fill rounds per call, so one fast session can't
/// starve the others of its worker; the caller re-runs a pump that says `more`.
const MAX_ROUNDS: usize = 16;

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
    /// The source: what its events said, how it ended.
    pub src: Source,
    /// The destination: what its events said, how the end is passed on.
    pub dst: Destination,
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
            src: Source::default(),
            dst: Destination::default(),
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
        self.src.end
    }

    /// The source ended and everything it sent has been delivered.
    pub fn all_delivered(&self) -> bool {
        self.src.end != SrcEnd::Open && self.pending() == 0
    }

    /// Finished cleanly: EOF read, all bytes delivered, FIN passed on.
    pub fn finished(&self) -> bool {
        self.all_delivered() && self.dst.shut
    }

    /// Bytes delivered so far, all modes.
    pub fn delivered(&self) -> u64 {
        self.spliced + self.copied + self.uring
    }

    /// The source was reset before we read from it (the reset was reported
    /// while connecting): deliver what it sent, then end as `kind`, not EOF.
    pub fn fail_at_eof(&mut self, kind: io::ErrorKind) {
        self.src.eof_is_failure = Some(kind);
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
        self.dst.hold_fin = true;
    }

    /// The other direction has finished cleanly: once this one has delivered
    /// its EOF too the session closes both sockets at once, and `close` (with
    /// nothing left unread) sends the FIN a `shutdown` would. Saves one
    /// syscall per connection.
    pub fn fin_by_close(&mut self) {
        self.dst.fin_by_close = true;
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
        if self.all_delivered() && !self.dst.shut && !self.dst.hold_fin && self.src.end == SrcEnd::Eof {
            // Half-close: every byte before the FIN has been delivered.
            if !self.dst.fin_by_close {
                dst.shutdown(Shutdown::Write).map_err(DstFailed)?;
            }
            self.dst.shut = true;
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
        (self.pending() > 0 && self.dst.writable) || (self.src.end == SrcEnd::Open && self.src.readable)
    }

    /// Writes in-flight bytes to `dst`. Returns whether any moved.
    fn drain(&mut self, dst: &TcpStream) -> Result<bool, DstFailed> {
        if self.pending() == 0 || !self.dst.writable {
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
                self.dst.writable = false;
                if let Stage::Splice { growth, .. } = &mut self.stage {
                    growth.dst_blocked();
                }
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(DstFailed(e)),
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

mod ends;
mod fill;
mod lowat;
#[cfg(test)]
mod tests;
mod uring;
