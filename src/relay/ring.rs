//! `relay: uring`: one io_uring instance per worker, the buffers its
//! receives land in (`ring/buffers.rs`), the table of operations in
//! flight (what its users see of one: `ring/op.rs`), getting their entries
//! to the kernel (`ring/submission.rs`) and their completions back
//! (`ring/completion.rs`). This is the one module with the `unsafe` the
//! ring needs; everything else sees safe calls.
//!
//! Receives use a provided-buffer ring: the kernel picks a buffer only when
//! bytes arrive, so an idle session holds none (10,000 quiet clients cost no
//! buffer memory). A buffer leaves the ring with a receive's completion, is
//! sent from, and goes back (`recycle`) once all of it is sent. The worker
//! grows the buffer set on demand up to a cap; past it a receive that finds
//! none waits (`starved`) until one comes back. The last buffers are kept
//! for pumps that hold none (`may_take_another`, `roomy`).
//!
//! Completions wake the worker's mio loop through an eventfd (`eventfd()`),
//! enabled only while the worker sleeps (`sleep`), so completions it reaps
//! while awake cost no wake-up. An operation whose session went away is
//! cancelled and its completion only returns its buffer (`abandon`,
//! `settle`): what a cancelled receive had already taken is reported, so the
//! session that sent it is reset rather than closed as if all had arrived.

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use io_uring::{IoUring, opcode, squeue, types};
use slab::Slab;

mod buffers;
mod completion;
mod op;
mod submission;
use buffers::{BUF_RING_SLOTS, Buffers, GROUP};
pub use op::{Completion, Done, Held, OpId, Owner, Receive, RingCounts};

/// Entries in the submission queue (the completion queue gets eight times as many).
const SQ_ENTRIES: u32 = 256;
/// `user_data` of cancel requests, whose completions say nothing we need.
const CANCEL: u64 = u64::MAX;

/// A multishot receive may take this many buffers in one go (the
/// kernel's `MULTISHOT_MAX_RETRY`) before a stop lands.
const MULTISHOT_BURST: usize = 32;

#[derive(Debug)]
enum Kind {
    /// `another`: a `Receive::Another`, counted in `Buffers::claimed`.
    Recv {
        another: bool,
    },
    Send {
        bid: u16,
    },
}

#[derive(Debug)]
struct Op {
    owner: Owner,
    kind: Kind,
    /// The owner gave up on it: its completion only frees what it holds.
    abandoned: bool,
    /// Tells this operation from earlier ones in the same slot (see `OpId`).
    generation: u32,
}

/// One worker's io_uring.
pub struct Ring {
    uring: IoUring,
    eventfd: OwnedFd,
    bufs: Buffers,
    ops: Slab<Op>,
    /// The generation of the next operation (see `OpId`).
    generation: u32,
    /// Completions reaped before their turn (settling a closing session,
    /// making room on `EBUSY`), for the worker's next pass.
    backlog: VecDeque<Completion>,
    /// Entries that found the submission queue full, oldest first (see `submission.rs`).
    held_back: VecDeque<squeue::Entry>,
    /// Owners whose receive found no buffer, to be run again when one comes back.
    starved: Vec<Owner>,
    starved_count: u64,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("ops", &self.ops.len()).field("buffers", &self.bufs.made).finish()
    }
}

/// Whether this process may use io_uring here, and if not why (the
/// `io_uring_disabled` sysctl, a seccomp filter, an old kernel).
pub fn probe() -> Result<(), String> {
    match Ring::new(4096, 1) {
        Ok(_) => Ok(()),
        Err(e) => Err(match e.raw_os_error() {
            Some(nix::libc::ENOSYS) => {
                format!("io_uring_setup is not available ({e}): kernel too old or blocked by seccomp")
            }
            Some(nix::libc::EPERM) => format!(
                "io_uring_setup was refused ({e}): kernel.io_uring_disabled forbids it, or a seccomp filter (Docker's default) does"
            ),
            _ => format!("io_uring cannot be set up: {e}"),
        }),
    }
}

impl Ring {
    /// A ring whose receives use buffers of `buf_size` bytes, at most `max_buffers` of them.
    pub fn new(buf_size: usize, max_buffers: usize) -> io::Result<Ring> {
        // Default task running: a completion interrupts the worker's wait
        // (measured cheaper here than COOP_TASKRUN or DEFER_TASKRUN, see
        // docs/performance.md).
        let uring = IoUring::builder().setup_cqsize(SQ_ENTRIES * 8).build(SQ_ENTRIES)?;
        let eventfd = nix::sys::eventfd::EventFd::from_flags(
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
        )
        .map_err(io::Error::from)?;
        let eventfd: OwnedFd = eventfd.into();
        // Completions run as task work in the worker's own thread interrupt
        // its epoll_wait; the eventfd is for those posted by io_uring's
        // worker threads (which no interruption announces). Signalling it
        // for every completion cost one spurious wake-up per loop turn.
        uring.submitter().register_eventfd_async(eventfd.as_raw_fd())?;
        // Multishot receives and synchronous cancellation are Linux 6.0:
        // an older kernel fails here (EINVAL), so the probe says no.
        match uring.submitter().register_sync_cancel(None, types::CancelBuilder::user_data(CANCEL)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        let bufs = Buffers::new(&uring, buf_size, max_buffers.clamp(1, BUF_RING_SLOTS as usize))?;
        let mut ring = Ring {
            uring,
            eventfd,
            bufs,
            ops: Slab::new(),
            generation: 0,
            backlog: VecDeque::new(),
            held_back: VecDeque::new(),
            starved: Vec::new(),
            starved_count: 0,
        };
        ring.bufs.grow();
        Ok(ring)
    }

    /// The eventfd that becomes readable when completions arrive while the worker sleeps.
    pub fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Arms a receive on `fd` into a buffer the kernel picks when bytes
    /// arrive. A multishot one completes once per arrival, each with its
    /// own buffer, until it is stopped (`stop`), reads EOF or an error, or
    /// finds no buffer; the others complete once.
    pub fn recv(&mut self, fd: RawFd, owner: Owner, how: Receive) -> OpId {
        let another = how == Receive::Another;
        let op = self.insert(owner, Kind::Recv { another });
        self.bufs.claimed += usize::from(another);
        let sqe = if how == Receive::Multishot {
            opcode::RecvMulti::new(types::Fd(fd), GROUP).build()
        } else {
            opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), self.bufs.size as u32)
                .buf_group(GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        }
        .user_data(op.user_data());
        self.push(sqe);
        op
    }

    /// A pump that already holds a buffer may receive another: more than
    /// the reserve is left unclaimed (see `Buffers::reserve`).
    pub fn may_take_another(&self) -> bool {
        self.bufs.unclaimed() > self.bufs.reserve()
    }

    /// Buffers are plentiful: a multishot receive, which may take a burst
    /// of them before a stop lands, cannot reach the reserve.
    pub fn roomy(&self) -> bool {
        self.bufs.unclaimed() > self.bufs.reserve() + MULTISHOT_BURST
    }

    /// Sends the unsent bytes of `held` on `fd` (no SIGPIPE).
    pub fn send(&mut self, fd: RawFd, held: &Held, owner: Owner) -> OpId {
        let op = self.insert(owner, Kind::Send { bid: held.bid });
        let ptr = self.bufs.ptr(held.bid);
        // SAFETY (buffer lifetime): `held.start..held.end` lies inside buffer
        // `held.bid` (a receive's completion said so), which stays allocated
        // until the ring is dropped and is not given back to the kernel for
        // new receives until this send's completion has been reaped (the op
        // records the bid; `recycle` of a held buffer happens only after).
        let data = unsafe { ptr.as_ptr().add(held.start as usize) };
        let sqe = opcode::Send::new(types::Fd(fd), data, held.len() as u32)
            .flags(nix::libc::MSG_NOSIGNAL)
            .build()
            .user_data(op.user_data());
        self.push(sqe);
        op
    }

    /// A new entry in the table of operations.
    fn insert(&mut self, owner: Owner, kind: Kind) -> OpId {
        let generation = self.generation;
        self.generation = generation.wrapping_add(1);
        OpId::new(self.ops.insert(Op { owner, kind, abandoned: false, generation }), generation)
    }

    /// An operation of `kind` left the table: a buffer it spoke for is free again.
    fn unclaim(&mut self, kind: &Kind) {
        if let Kind::Recv { another: true } = kind {
            self.bufs.claimed -= 1;
        }
    }

    /// The operation `op` names, if it is still in flight.
    fn op_mut(&mut self, op: OpId) -> Option<&mut Op> {
        self.ops.get_mut(op.slot()).filter(|o| o.generation == op.generation())
    }

    /// The bytes of a held buffer (tests look at what arrived).
    #[cfg(test)]
    pub fn data(&self, held: &Held) -> &[u8] {
        // SAFETY: the buffer came with a receive's completion, so the kernel
        // is done writing to it, and it is not back in the ring (its holder
        // still has it): nothing writes to it while this borrow lives.
        unsafe { std::slice::from_raw_parts(self.bufs.ptr(held.bid).as_ptr().add(held.start as usize), held.len()) }
    }

    /// Gives buffer `bid` back to the kernel for new receives.
    pub fn recycle(&mut self, bid: u16) {
        self.bufs.put(bid);
    }

    /// Asks a multishot receive to stop; its owner still gets what it
    /// receives until the last completion (the one without `more`).
    pub fn stop(&mut self, op: OpId) {
        if self.op_mut(op).is_some() {
            // Behind the receive's own entry if that is still held back.
            self.push(opcode::AsyncCancel::new(op.user_data()).build().user_data(CANCEL));
        }
    }

    /// The owner no longer wants `op`: cancel it; its completion will only
    /// free what it holds. False if no completion of it will come: it
    /// already completed (its completion waits in the backlog: see
    /// `forget`), or its entry never reached the kernel (dropped now; a
    /// send's buffer is the owner's to recycle).
    pub fn abandon(&mut self, op: OpId) -> bool {
        if self.op_mut(op).is_none() {
            return false;
        }
        if self.unqueue(op) {
            let o = self.ops.remove(op.slot());
            self.unclaim(&o.kind);
            return false;
        }
        if let Some(o) = self.op_mut(op) {
            o.abandoned = true;
        }
        self.push(opcode::AsyncCancel::new(op.user_data()).build().user_data(CANCEL));
        true
    }

    /// Owners whose receive found no buffer, now that one is free.
    pub fn take_unstarved(&mut self) -> Option<Owner> {
        if self.bufs.available() == 0 && !self.bufs.can_grow() {
            return None;
        }
        self.starved.pop()
    }

    /// About to sleep in the mio poll: lets completions signal the eventfd.
    /// Returns false if one already arrived (don't sleep).
    pub fn sleep(&mut self) -> bool {
        let mut cq = self.uring.completion();
        cq.enable_eventfd();
        cq.sync();
        cq.is_empty() && self.backlog.is_empty()
    }

    /// Awake again: completions are reaped without a wake-up.
    pub fn wake(&mut self) {
        self.uring.completion().disable_eventfd();
    }

    /// Counters for `/metrics`.
    pub fn counts(&self) -> RingCounts {
        RingCounts {
            buffers: self.bufs.made,
            lent: self.bufs.made - self.bufs.available(),
            starved: self.starved_count,
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Entries held back never reached the kernel: nothing to wait for.
        for sqe in std::mem::take(&mut self.held_back) {
            self.ops.try_remove(OpId::from_user_data(sqe.get_user_data()).slot());
        }
        // Cancel everything still in flight and wait for it, so no
        // operation outlives the buffers it points into.
        let all = types::CancelBuilder::any();
        let _ = self.uring.submitter().register_sync_cancel(None, all);
        self.reap(&mut |_, _| {});
        if !self.ops.is_empty() {
            // Some could not be cancelled: keep their memory rather than risk
            // the kernel writing into freed buffers (the worker is exiting).
            self.bufs.leak = true;
        }
    }
}

#[cfg(test)]
mod tests;
