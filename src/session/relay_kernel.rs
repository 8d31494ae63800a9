//! The relay's and the session's side of `relay: sockmap` (the kernel's
//! part itself, and the rules it keeps, are `kernel.rs`'s): giving a relay
//! its kernel part, arming after a run of the pumps, the timer's look and
//! what it hands back to the pumps, and keeping the sockets' registrations
//! in line with what the kernel relays (the registering is the worker's).

use std::io;
use std::time::Instant;

use mio::net::TcpStream;

use super::kernel::{Kernel, WORKER_CAP};
use crate::relay::Resources;

/// What the relay does with its kernel part.
impl super::Relay {
    /// Gives this relay a kernel part (`relay: sockmap`); without one it relays with its pumps alone.
    pub fn with_kernel(&mut self, client: &TcpStream, now: Instant) {
        match Kernel::new(client, &self.upstream, now) {
            Ok(k) => self.kernel = Some(Box::new(k)),
            Err(e) => log::debug!("sockmap: no socket cookie ({e}): this session relays with its pumps"),
        }
    }

    /// Bytes the kernel moved, `[c2u, u2c]`.
    pub fn kernel_moved(&self) -> [u64; 2] {
        self.kernel.as_ref().map_or([0; 2], |k| k.moved())
    }

    /// After a run of the pumps that moved bytes: arms each direction whose
    /// pump holds nothing and whose source has not ended, while no side
    /// failed and no PROXY header is on its way.
    pub(super) fn maybe_arm(&mut self, client: &TcpStream, res: &Resources, pumps_moved: bool, now: Instant) {
        let (Some(k), Some(map)) = (self.kernel.as_mut(), res.sockmap.as_ref()) else { return };
        if !pumps_moved || self.failed.is_some() || self.header_out.is_some() || res.sockmap_held > WORKER_CAP {
            return;
        }
        let ready = |p: &crate::relay::Pump| {
            p.pending() == 0 && p.src_end() == crate::relay::SrcEnd::Open && !p.finished() && !p.src.hup
        };
        let which = [ready(&self.c2u) && k.may_arm(0), ready(&self.u2c) && k.may_arm(1)];
        if which == [false; 2] {
            return;
        }
        if let Err(e) = k.arm(map, which, client, &self.upstream, now) {
            // The counters moved at every read (a busy pair: the flows worth arming)
            // or could not be read: nothing was armed; a later run tries again. (A
            // socket the map refuses is `arm`'s to note, per direction.)
            log::debug!("sockmap: not armed this time ({e})");
        }
    }

    /// The kernel part's timer, or an ending on a socket the kernel relays
    /// from: counts what moved (bytes, last activity, the first byte back),
    /// marks an overflow for the next run to end the session, and hands
    /// drained directions back to their pumps, which then read whatever
    /// their sources hold.
    pub fn kernel_look(&mut self, client: &TcpStream, res: &mut Resources, now: Instant) {
        self.kernel_ending = false;
        let Some(k) = self.kernel.as_mut() else { return };
        let look = k.look(client, &self.upstream, &mut res.sockmap_held, now);
        self.kernel_overflow |= look.overflow;
        if look.moved {
            self.last_active = now;
            if self.first_byte_time.is_none() && k.moved()[1] > 0 {
                // Known to the look's precision (a millisecond or a few).
                self.first_byte_time = Some(now.saturating_duration_since(self.connected_at));
            }
        }
        for d in 0..2 {
            if look.returned[d] {
                let p = if d == 0 { &mut self.c2u } else { &mut self.u2c };
                // Its source may hold bytes, or its end, that no event will report again.
                p.src.readable = true;
                p.dst.writable = true;
            }
        }
    }

    /// The relay is closing: nothing stays with the kernel, and what it
    /// held leaves the worker's total.
    pub(super) fn release_kernel(&mut self, res: &mut Resources) {
        if let (Some(k), Some(map)) = (self.kernel.as_mut(), res.sockmap.as_ref()) {
            res.sockmap_held = res.sockmap_held.saturating_sub(k.held());
            k.release(map);
        }
    }

    /// Sockets whose registration should change: `Some(true)` to be watched
    /// for endings only (the kernel relays from it), `Some(false)` back to
    /// readable and writable; `[client, upstream]`. The caller registers and
    /// then calls `watching`.
    pub fn watch_changes(&self) -> [Option<bool>; 2] {
        let want = self.kernel.as_ref().map_or([false; 2], |k| [k.holds(0), k.holds(1)]);
        [0, 1].map(|i| (want[i] != self.watched[i]).then_some(want[i]))
    }

    /// Socket `side` is now registered for endings only (`true`) or normally.
    pub fn watching(&mut self, side: super::Side, endings_only: bool) {
        self.watched[side.index()] = endings_only;
    }
}

/// The session's side of its relay's kernel part, for the worker.
impl super::Session {
    /// The kernel part's timer fired (`Due::Kernel`).
    pub fn kernel_look(&mut self, res: &mut Resources, now: Instant) {
        if let super::Stage::Relaying(r, _) = &mut self.stage {
            r.kernel_look(&self.client, res, now);
        }
    }

    /// Brings the sockets' registrations in line with what the kernel
    /// relays: `register(side, socket, endings_only)` is the worker's.
    pub fn sync_watch(
        &mut self,
        mut register: impl FnMut(super::Side, &mut TcpStream, bool) -> io::Result<()>,
    ) -> io::Result<()> {
        let super::Stage::Relaying(r, _) = &mut self.stage else { return Ok(()) };
        for (side, change) in [super::Side::Client, super::Side::Upstream].into_iter().zip(r.watch_changes()) {
            let Some(endings_only) = change else { continue };
            let socket = if side == super::Side::Client { &mut self.client } else { &mut r.upstream };
            register(side, socket, endings_only)?;
            r.watching(side, endings_only);
        }
        Ok(())
    }
}
