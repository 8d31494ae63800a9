//! A pump under `relay: uring`: its operations on the worker's ring
//! (`relay::ring`) instead of readiness and syscalls.
//!
//! At most one receive and one send are in flight per direction, and at
//! most two received buffers are held (one being sent, one waiting),
//! counting those whose completions wait to be applied: a destination that
//! does not read stops the receives, so a slow reader throttles its source
//! without memory growth. Completions reach the pump through the worker
//! (`complete`), which applies the cap at once (a pump that is not run,
//! its PROXY header still going out or its session between upstreams,
//! still gets them); the next run applies them and submits what follows:
//! the send of what came in, the next receive. When the worker's buffers
//! run low, a pump that holds one receives no other (the reserve is for
//! pumps that hold none, see `Ring::may_take_another`). A pump that will
//! not run again gives everything up (`release_uring`); a multishot
//! receive ends only with its final completion. The end-of-stream rules
//! are the pump's usual ones (`Pump::run`).

use std::io;
use std::os::fd::AsRawFd;

use mio::net::TcpStream;

use super::{Activity, DstFailed, Pump, SrcEnd, Stage};
use crate::relay::Resources;
use crate::relay::ring::{Completion, Done, Held, OpId, Owner, Receive, Ring};

/// Received buffers a direction may hold: one being sent, one next.
const MAX_HELD: usize = 2;

/// The bytes and operations of one direction on the ring.
#[derive(Debug)]
pub(super) struct UringStage {
    owner: Owner,
    /// Received and not yet all sent, oldest first.
    held: Vec<Held>,
    recv: Option<OpId>,
    /// `recv` is a multishot receive.
    multishot: bool,
    send: Option<OpId>,
    /// Completions handed over by the worker, applied on the next run.
    done: Vec<Completion>,
    /// Received buffers among `done` (they count towards `MAX_HELD`).
    queued: usize,
    /// The last receive found no buffer: wait until the worker says one is free.
    starved: bool,
    /// The multishot receive was stopped (the destination fell behind,
    /// the worker's buffers ran low, or the pump was paused), and receives
    /// take one buffer at a time from now on. (A multishot receive takes a
    /// buffer per arrival, up to 32 per wake-up while bytes are queued,
    /// before a stop takes effect: a bulk flow on multishot grew the buffer
    /// set to its cap.) Single receives are never stopped, so an ECANCELED
    /// receive of such a pump is that stop's.
    single: bool,
    /// Bytes it had taken were given up undelivered (`release_uring`).
    /// Kept, as a pump that will not run again is released at once and
    /// again when its session closes.
    lost: bool,
}

impl UringStage {
    pub(super) fn new(owner: Owner) -> UringStage {
        UringStage {
            owner,
            held: Vec::with_capacity(MAX_HELD),
            recv: None,
            multishot: false,
            send: None,
            done: Vec::new(),
            queued: 0,
            starved: false,
            single: false,
            lost: false,
        }
    }

    /// Buffers it holds, counting those whose completions wait in `done`.
    fn holds(&self) -> usize {
        self.held.len() + self.queued
    }

    /// Stops a multishot receive once enough is held (or, with the
    /// worker's buffers running low, once any is). Applied when a
    /// completion is queued, not when the pump runs, as a pump that is not
    /// run still receives.
    fn cap(&mut self, ring: &mut Ring) {
        let holds = self.holds();
        if holds >= MAX_HELD || (holds > 0 && !ring.roomy()) {
            self.stop_multishot(ring);
        }
    }

    /// Stops a multishot receive: one buffer per receive from now on.
    fn stop_multishot(&mut self, ring: &mut Ring) {
        if let Some(op) = self.recv.filter(|_| self.multishot) {
            ring.stop(op);
            self.multishot = false;
            self.single = true;
        }
    }

    /// Bytes received and not yet sent.
    pub(super) fn pending(&self) -> usize {
        self.held.iter().map(Held::len).sum()
    }
}

impl Pump {
    /// A pump for `relay: uring`, whose operations carry `owner`.
    pub fn uring(owner: Owner) -> Pump {
        let mut p = Pump::new(false);
        p.stage = Stage::Uring(UringStage::new(owner));
        p
    }

    /// A completion of one of this pump's operations: applied on the next
    /// run, but its bookkeeping now (a final completion ends its operation,
    /// a buffer counts towards the cap, no buffer means starved).
    pub fn complete(&mut self, c: Completion, ring: &mut Ring) {
        let Stage::Uring(u) = &mut self.stage else {
            return;
        };
        if !c.more && u.recv == Some(c.op) {
            u.recv = None;
        }
        if u.send == Some(c.op) {
            u.send = None;
        }
        match c.done {
            Done::Received(Ok(Some(_))) => u.queued += 1,
            // Now, not when applied: an `unstarve` in between must not be undone.
            Done::Received(Err(nix::libc::ENOBUFS)) => u.starved = true,
            _ => {}
        }
        u.done.push(c);
        u.cap(ring);
    }

    /// This pump will not run until its session has another upstream:
    /// stop a multishot receive (what it took waits for that run).
    pub fn pause(&mut self, res: &mut Resources) {
        if let (Stage::Uring(u), Some(ring)) = (&mut self.stage, res.ring.as_mut()) {
            u.stop_multishot(ring);
        }
    }

    /// A buffer came free after a receive found none: receive again.
    pub fn unstarve(&mut self) {
        if let Stage::Uring(u) = &mut self.stage {
            u.starved = false;
        }
    }

    /// Applies completions, then submits the next send and receive.
    pub(super) fn run_uring(
        &mut self,
        src: &TcpStream,
        dst: &TcpStream,
        res: &mut Resources,
    ) -> Result<Activity, DstFailed> {
        let mut act = Activity::default();
        let Some(ring) = res.ring.as_mut() else {
            return Err(DstFailed(io::Error::other("relay: uring without a ring")));
        };
        let Stage::Uring(u) = &mut self.stage else {
            unreachable!("run_uring on another stage");
        };
        let mut failed = None;
        let mut done = std::mem::take(&mut u.done);
        u.queued = 0;
        for c in done.drain(..) {
            match c.done {
                Done::Received(r) => {
                    act.progressed = true;
                    match r {
                        Ok(Some(h)) => {
                            u.held.push(h);
                            act.took_in = true;
                        }
                        Ok(None) => self.src.end = self.src.eof_is_failure.map_or(SrcEnd::Eof, SrcEnd::Failed),
                        // Starved when queued (see `complete`).
                        Err(nix::libc::ENOBUFS | nix::libc::EINTR | nix::libc::EAGAIN) => {}
                        // Our stop (see `single`): received again in single receives.
                        Err(nix::libc::ECANCELED) if u.single => {}
                        Err(e) => self.src.end = SrcEnd::Failed(io::Error::from_raw_os_error(e).kind()),
                    }
                }
                Done::Sent(r) => match r {
                    Ok(0) => failed = Some(io::Error::from(io::ErrorKind::WriteZero)),
                    Ok(n) => {
                        act.progressed = true;
                        self.uring += u64::from(n);
                        let h = &mut u.held[0];
                        h.start += n.min(h.end - h.start);
                        if h.is_empty() {
                            ring.recycle(h.bid);
                            u.held.remove(0);
                        }
                    }
                    Err(nix::libc::EINTR | nix::libc::EAGAIN) => {}
                    Err(e) => failed = Some(io::Error::from_raw_os_error(e)),
                },
            }
        }
        u.done = done;
        if let Some(e) = failed {
            return Err(DstFailed(e));
        }
        if u.send.is_none()
            && let Some(h) = u.held.first()
        {
            u.send = Some(ring.send(dst.as_raw_fd(), h, u.owner));
        }
        u.cap(ring);
        let holds = u.held.len();
        if u.recv.is_none() && !u.starved && self.src.end == SrcEnd::Open && holds < MAX_HELD {
            let how = if holds > 0 {
                // Its send completing runs it again: receive then, if not now.
                ring.may_take_another().then_some(Receive::Another)
            } else if !u.single && ring.roomy() {
                Some(Receive::Multishot)
            } else {
                Some(Receive::Single)
            };
            if let Some(how) = how {
                u.recv = Some(ring.recv(src.as_raw_fd(), u.owner, how));
                u.multishot = how == Receive::Multishot;
            }
        }
        Ok(act)
    }

    /// Gives up this pump's operations and buffers (it will not run again:
    /// the session is over, its other side failed, or it starts again with
    /// another upstream). Returns true if bytes it had received will now
    /// never be delivered (also when that was found at an earlier release).
    pub(super) fn release_uring(&mut self, ring: &mut Ring) -> bool {
        let Stage::Uring(u) = &mut self.stage else {
            return false;
        };
        u.lost |= u.pending() > 0;
        u.queued = 0;
        for c in std::mem::take(&mut u.done) {
            if let Done::Received(Ok(Some(h))) = c.done {
                u.lost = true;
                ring.recycle(h.bid);
            }
        }
        // A receive still in flight (a multishot one whose completions came
        // with `more`) is cancelled; what it takes from now on is freed.
        if let Some(op) = u.recv.take() {
            ring.abandon(op);
        }
        // A buffer with a send in flight goes back with that send's completion.
        let in_flight = u.send.take().filter(|&op| ring.abandon(op)).is_some();
        for (i, h) in u.held.drain(..).enumerate() {
            if !(i == 0 && in_flight) {
                ring.recycle(h.bid);
            }
        }
        u.lost
    }
}

#[cfg(test)]
mod tests;
