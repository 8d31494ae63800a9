//! The worker's side of `relay: uring`: making its ring (and registering the
//! ring's eventfd with the mio poll), handing completions to their
//! sessions, submitting what the sessions queued, and letting the ring
//! signal the eventfd only while the worker sleeps.
//!
//! Each pass over the ring dispatches every completion, wakes sessions
//! whose receive waited for a buffer, and submits (one `io_uring_enter` for
//! all the worker's sessions; also with nothing to submit when completions
//! overflowed and wait in the kernel, which the worker must not sleep on);
//! sends usually complete during that submit, so a few passes run before
//! the worker polls again.

use std::time::Instant;

use mio::Interest;
use mio::unix::SourceFd;

use super::{Worker, token};
use crate::config::RelayMode;
use crate::relay::ring::{Completion, Done, Ring};
use crate::route::Route;

/// Passes over the ring per loop turn, so one flow can't starve the rest of the loop.
const MAX_PASSES: usize = 8;
/// Receive buffers a worker may have: `pipe_size` bytes each, made on demand.
const MAX_BUFFERS: usize = 1024;

impl Worker {
    /// Makes the ring if the settings or a route ask for `relay: uring` and
    /// there is none yet. On failure new sessions use `auto` (see `relay_mode`).
    pub(super) fn ensure_ring(&mut self) {
        if !self.settings.ring || self.res.ring.is_some() {
            return;
        }
        let made = Ring::new(self.settings.pipe_size, MAX_BUFFERS).and_then(|ring| {
            let fd = ring.eventfd();
            self.poll.registry().register(&mut SourceFd(&fd), token::RING, Interest::READABLE)?;
            Ok(ring)
        });
        match made {
            Ok(ring) => self.res.ring = Some(ring),
            Err(e) => log::warn!("worker {}: cannot set up io_uring ({e}): new sessions relay: auto", self.id),
        }
    }

    /// The relay mode for a new session of `route`: the route's own or the
    /// settings', unless that asks for a ring this worker could not make.
    pub(super) fn relay_mode(&self, route: &Route) -> RelayMode {
        match route.relay.unwrap_or(self.settings.relay) {
            RelayMode::Uring if self.res.ring.is_none() => RelayMode::Auto,
            RelayMode::Sockmap if self.res.sockmap.is_none() => RelayMode::Auto,
            m => m,
        }
    }

    /// Dispatches completions and submits queued operations until the ring
    /// is quiet (or `MAX_PASSES`).
    pub(super) fn turn_ring(&mut self, now: Instant) {
        for _ in 0..MAX_PASSES {
            let mut busy = false;
            while let Some(c) = self.res.ring.as_mut().and_then(Ring::next_completion) {
                busy = true;
                self.on_completion(c, now);
            }
            while let Some(o) = self.res.ring.as_mut().and_then(Ring::take_unstarved) {
                if let Some(s) = self.sessions.get_mut(o.key).filter(|s| s.id() == o.id)
                    && s.unstarve(o.dir)
                {
                    self.relay(o.key, now);
                }
            }
            let Some(ring) = self.res.ring.as_mut() else {
                return;
            };
            if ring.needs_enter() {
                busy = true;
                if let Err(e) = ring.submit() {
                    log::debug!("worker {}: io_uring submit: {e}", self.id);
                }
            }
            if !busy {
                return;
            }
        }
    }

    /// About to poll: true if the ring has nothing for the worker, so it
    /// may sleep (the eventfd wakes it when that changes).
    pub(super) fn ring_may_sleep(&mut self) -> bool {
        self.res.ring.as_mut().is_none_or(|r| !r.needs_enter() && r.sleep())
    }

    /// Back from the poll: completions are reaped without the eventfd.
    pub(super) fn ring_awake(&mut self) {
        if let Some(r) = self.res.ring.as_mut() {
            r.wake();
        }
    }

    fn on_completion(&mut self, c: Completion, now: Instant) {
        let key = c.owner.key;
        let taken = match (self.sessions.get_mut(key).filter(|s| s.id() == c.owner.id), self.res.ring.as_mut()) {
            (Some(s), Some(ring)) => s.complete(c, ring),
            _ => Err(c),
        };
        match taken {
            Ok(true) => self.relay(key, now),
            Ok(false) => {}
            Err(c) => {
                // Nobody waits for it (cannot happen: ops are abandoned at
                // close); its buffer goes back.
                if let (Done::Received(Ok(Some(h))), Some(r)) = (c.done, self.res.ring.as_mut()) {
                    r.recycle(h.bid);
                }
            }
        }
    }

    /// Session `key`/`id` is closing: abandon its ring operations (done by
    /// the caller through `release`), submit the cancels and reap them
    /// before its sockets close. Returns, per direction, whether bytes
    /// its source sent were taken and will never be delivered.
    pub(super) fn settle_ring(&mut self, key: usize, id: u64) -> [bool; 2] {
        self.res.ring.as_mut().map_or([false; 2], |r| r.settle(key, id))
    }
}
