//! A pump under `relay: uring`: its operations on the worker's ring
//! (`relay::ring`) instead of readiness and syscalls.
//!
//! At most one receive and one send are in flight per direction, and at
//! most two received buffers are held (one being sent, one waiting): a
//! destination that does not read stops the receives, so a slow reader
//! throttles its source without memory growth. Completions reach the pump
//! through the worker (`complete`) and are applied on its next run, which
//! then submits what follows: the send of what came in, the next receive.
//! The end-of-stream rules are the pump's usual ones (`Pump::run`).

use std::io;
use std::os::fd::AsRawFd;

use mio::net::TcpStream;

use super::{Activity, DstFailed, Pump, SrcEnd, Stage};
use crate::relay::Resources;
use crate::relay::ring::{Completion, Done, Held, OpId, Owner, Ring};

/// Received buffers a direction may hold: one being sent, one next.
const MAX_HELD: usize = 2;

/// The bytes and operations of one direction on the ring.
#[derive(Debug)]
pub(super) struct UringStage {
    owner: Owner,
    /// Received and not yet all sent, oldest first.
    held: Vec<Held>,
    recv: Option<OpId>,
    send: Option<OpId>,
    /// Completions handed over by the worker, applied on the next run.
    done: Vec<Completion>,
    /// The last receive found no buffer: wait until the worker says one is free.
    starved: bool,
    /// The destination has fallen behind once: the multishot receive was
    /// stopped, and receives take one buffer at a time from now on. (A
    /// multishot receive takes a buffer per arrival, up to 32 per wake-up
    /// while bytes are queued, before a stop takes effect: a bulk flow on
    /// multishot grew the buffer set to its cap.) Single receives are never
    /// stopped, so an ECANCELED receive of such a pump is that stop's.
    single: bool,
}

impl UringStage {
    pub(super) fn new(owner: Owner) -> UringStage {
        UringStage {
            owner,
            held: Vec::with_capacity(MAX_HELD),
            recv: None,
            send: None,
            done: Vec::new(),
            starved: false,
            single: false,
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

    /// A completion of one of this pump's operations (applied on the next run).
    pub fn complete(&mut self, c: Completion) {
        if let Stage::Uring(u) = &mut self.stage {
            u.done.push(c);
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
        for c in done.drain(..) {
            match c.done {
                Done::Received(r) => {
                    if !c.more {
                        u.recv = None;
                    }
                    act.progressed = true;
                    match r {
                        Ok(Some(h)) => {
                            u.held.push(h);
                            act.took_in = true;
                        }
                        Ok(None) => self.src = self.eof_is_failure.map_or(SrcEnd::Eof, SrcEnd::Failed),
                        Err(nix::libc::ENOBUFS) => u.starved = true,
                        Err(nix::libc::EINTR | nix::libc::EAGAIN) => {}
                        // Stopped because enough is held: received again once it is sent.
                        Err(nix::libc::ECANCELED) if u.single => {}
                        Err(e) => self.src = SrcEnd::Failed(io::Error::from_raw_os_error(e).kind()),
                    }
                }
                Done::Sent(r) => {
                    u.send = None;
                    match r {
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
                    }
                }
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
        if let Some(op) = u.recv.filter(|_| !u.single && u.held.len() >= MAX_HELD) {
            // Enough held: stop receiving until the destination takes it.
            ring.stop(op);
            u.single = true;
        }
        if u.recv.is_none() && !u.starved && u.held.len() < MAX_HELD && self.src == SrcEnd::Open {
            u.recv = Some(ring.recv(src.as_raw_fd(), u.owner, !u.single));
        }
        Ok(act)
    }

    /// Gives up this pump's operations and buffers (the session is over or
    /// starts again with another upstream). Returns true if bytes it had
    /// received will now never be delivered.
    pub(super) fn release_uring(&mut self, ring: &mut Ring) -> bool {
        let Stage::Uring(u) = &mut self.stage else {
            return false;
        };
        let mut lost = u.pending() > 0;
        for c in std::mem::take(&mut u.done) {
            match c.done {
                Done::Received(Ok(Some(h))) => {
                    lost = true;
                    ring.recycle(h.bid);
                }
                Done::Sent(_) => u.send = None,
                Done::Received(_) => {}
            }
            if Some(c.op) == u.recv {
                u.recv = None;
            }
        }
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
        lost
    }
}
