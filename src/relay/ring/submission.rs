//! Getting entries to the kernel: the submission queue, the entries held
//! back while it is full (`held_back`, in order, behind which every later
//! entry waits), and `io_uring_enter`, which also flushes completions the
//! kernel kept aside when the completion queue was full.
//!
//! A full submission queue is backpressure: an operation whose entry cannot
//! go in yet is still in flight as far as its owner knows, and goes in at
//! the next `submit`. An entry held back for an operation that is then
//! abandoned is dropped, so it never reaches the kernel after its socket
//! closed (`unqueue`).

#![allow(unsafe_code)]

use std::io;

use io_uring::squeue;

use super::{OpId, Ring};

/// `io_uring_enter` calls per `submit` at most: each takes a full queue.
const MAX_ENTERS: usize = 16;

impl Ring {
    /// Queues `sqe` for the kernel: into the submission queue, or (while
    /// that is full and the kernel will not take it) behind it.
    pub(super) fn push(&mut self, sqe: squeue::Entry) {
        if self.held_back.is_empty() {
            // SAFETY: see `push_sq`.
            if unsafe { self.push_sq(&sqe) } {
                return;
            }
            // Full: hand it to the kernel now if it takes it.
            let _ = self.uring.submit();
            // SAFETY: see `push_sq`.
            if unsafe { self.push_sq(&sqe) } {
                return;
            }
        }
        self.held_back.push_back(sqe);
    }

    /// Puts `sqe` into the submission queue; false if it is full.
    ///
    /// # Safety
    /// Every entry built by the ring points either at no memory of ours
    /// (receives select a provided buffer; cancels and no-ops carry only a
    /// user_data) or into a provided buffer that stays allocated for the
    /// ring's life and is not recycled while the send is in flight (see
    /// `Ring::send`). The file descriptor is the caller's open socket: an
    /// operation is abandoned before its socket closes, which drops an
    /// entry still held back (`unqueue`) and submits one already in the
    /// queue (`settle`); the kernel holds its own file reference from then on.
    unsafe fn push_sq(&mut self, sqe: &squeue::Entry) -> bool {
        // SAFETY: the caller's promise, above.
        unsafe { self.uring.submission().push(sqe) }.is_ok()
    }

    /// Drops the held-back entry of `op`, if it has one: it never reached the kernel.
    pub(super) fn unqueue(&mut self, op: OpId) -> bool {
        let before = self.held_back.len();
        self.held_back.retain(|e| e.get_user_data() != op.user_data());
        self.held_back.len() != before
    }

    /// Hands every queued entry to the kernel, held-back ones too, and
    /// flushes completions it kept aside when the completion queue was full.
    /// `EBUSY` (completions it could not post yet) reaps what is there into
    /// the backlog and enters again.
    pub fn submit(&mut self) -> io::Result<()> {
        let mut last = Ok(());
        for _ in 0..MAX_ENTERS {
            while let Some(sqe) = self.held_back.front() {
                let sqe = sqe.clone();
                // SAFETY: see `push_sq`.
                if !unsafe { self.push_sq(&sqe) } {
                    break;
                }
                self.held_back.pop_front();
            }
            if !self.needs_enter() {
                return Ok(());
            }
            last = match self.uring.submit() {
                Ok(_) if self.held_back.is_empty() => return Ok(()),
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
                Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                    self.reap(&mut |_, _| {});
                    Err(e)
                }
                Err(e) => return Err(e),
            };
        }
        last
    }

    /// The kernel has something to hear from us: entries it has not seen
    /// yet, or completions it kept aside (the completion queue overflowed)
    /// that only an `io_uring_enter` brings in. The worker must not sleep.
    pub fn needs_enter(&mut self) -> bool {
        let sq = self.uring.submission();
        !sq.is_empty() || sq.cq_overflow() || !self.held_back.is_empty()
    }
}
