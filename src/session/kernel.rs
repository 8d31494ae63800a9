//! `relay: sockmap`: a relaying session's directions handed to the kernel,
//! which moves each arriving segment from one socket to the other
//! (`sys::sockmap`) while the worker sleeps, and taken back for endings.
//!
//! A direction is relayed by its pump (`User`), by the kernel (`Armed`), is
//! on its way back after its source ended (`Draining`: bytes the kernel
//! took may not have reached the destination yet), or is the pump's for
//! good because the map refused it (`Refused`). Its pump runs only when it
//! is the pump's, so no byte the pump writes can overtake one the kernel
//! still holds. The rules, and why:
//!
//! - **Arm a direction only when its pump holds nothing and has just moved
//!   bytes**, so the kernel's first byte comes after the pump's last, and a
//!   session that sends nothing costs nothing (nor loses the retry of an
//!   upstream that dies before a byte moved).
//! - **What moved is counted, exactly.** `TCP_INFO` and the queue ioctls say
//!   how much the kernel took from the source (`consumed`) and put into the
//!   destination (`written`) since the arm; the latter is the direction's
//!   `sockmap` byte count, and their difference is what the kernel holds
//!   between the sockets (`in_flight`).
//! - **A source stays in the kernel's relay for the session's life.** On
//!   this kernel (6.18) a source taken out of the maps while segments
//!   arrive loses or repeats bytes (`sys::sockmap`, "What this kernel
//!   does", 3), and so does pausing it with the verdict program ("Pausing
//!   a direction"). So a direction goes back to its pump only once its
//!   source has ended (its FIN or reset has come: nothing more arrives) and
//!   the kernel has written out what it took (`Draining`); the pump then
//!   reads the end of the stream and passes it on by the rules every mode
//!   follows (`ending.rs`): a FIN only after every byte. Closing the
//!   sockets takes them out of the maps.
//! - **The kernel has no backpressure**: a redirected segment's
//!   receive-buffer charge is released at once, and the destination's queue
//!   has no bound, so a sender faster than the reader fills the kernel. With
//!   no safe way to hold the sender back, sluice bounds what the kernel
//!   holds by ending the session: above `OVERFLOW` for a direction, or
//!   `WORKER_CAP` for all of a worker's sessions, both sides are reset
//!   (`sockmap_overflow`), never closed as if complete. The relay looks at
//!   `in_flight` on a timer (`next_check`), closer together the faster
//!   bytes move (`MIN_CHECK`..`MAX_CHECK`; `IDLE_CHECK` while quiet); the
//!   bound is `OVERFLOW` plus what arrives between two looks.
//! - **Endings wake the worker**: the sockets the kernel relays from are
//!   watched for endings only (`sys::epoll`), and an ending makes the relay
//!   look at once.

use std::io;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::sys::sockmap::Sockmap;
use crate::sys::tcp_counters;

/// Above this many bytes held by the kernel between a direction's
/// sockets, the session is reset.
pub const OVERFLOW: u64 = 64 << 20;
/// Above this many bytes held by the kernel for all of a worker's
/// sessions together, the session a look finds holding any is reset, and
/// no session arms.
pub const WORKER_CAP: u64 = 256 << 20;
/// The soonest look after a look that saw bytes move.
const MIN_CHECK: Duration = Duration::from_millis(1);
/// The longest gap between looks while bytes move.
const MAX_CHECK: Duration = Duration::from_millis(20);
/// The longest gap between looks while nothing moves: each look costs a
/// session six syscalls, so 10,000 quiet armed sessions cost 60,000 a second.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Who relays one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// The pump.
    User,
    /// The kernel, since `Base`.
    Armed(Base),
    /// Its source ended; waiting until the kernel holds none of the direction's bytes.
    Draining(Base),
    /// The pump's for the rest of the session: the map refused the socket.
    Refused,
}

/// A direction's counters when it was armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Base {
    /// The source's `consumed()`.
    consumed: u64,
    /// The destination's `written()`.
    written: u64,
    /// The direction's `moved` then.
    moved: u64,
    /// The source's `consumed()` at the last look (a drained direction's source has stopped).
    seen: u64,
    /// The destination's `written()` at the last look (a drained direction's destination has settled).
    seen_written: u64,
}

/// What changed at a look.
#[derive(Debug, Default)]
pub struct Look {
    /// Bytes moved since the last look.
    pub moved: bool,
    /// Directions that came back to their pumps at this look, `[c2u, u2c]`.
    pub returned: [bool; 2],
    /// The kernel holds more than its bound: the session is to be reset.
    pub overflow: bool,
}

/// The kernel's part of a relay under `relay: sockmap`.
#[derive(Debug)]
pub struct Kernel {
    /// Socket cookies, `[client, upstream]`.
    cookies: [u64; 2],
    /// `[c2u, u2c]`.
    dirs: [Dir; 2],
    /// Bytes the kernel put into each direction's destination, `[c2u, u2c]`.
    moved: [u64; 2],
    /// What the kernel held of this session's bytes at the last look (counted in the worker's total).
    held: u64,
    /// When to look next (only while a direction is not the pump's).
    next_check: Instant,
    /// The gap before `next_check`.
    interval: Duration,
}

impl Kernel {
    /// The kernel part of a relay between `client` and `upstream`, nothing armed yet.
    pub fn new(client: &TcpStream, upstream: &TcpStream, now: Instant) -> io::Result<Kernel> {
        Ok(Kernel {
            cookies: [Sockmap::cookie(client)?, Sockmap::cookie(upstream)?],
            dirs: [Dir::User; 2],
            moved: [0; 2],
            held: 0,
            next_check: now,
            interval: MIN_CHECK,
        })
    }

    /// Bytes the kernel has moved, `[c2u, u2c]`, as of the last look.
    pub fn moved(&self) -> [u64; 2] {
        self.moved
    }

    /// Whether direction `d` (0: c2u, 1: u2c) is the kernel's: its pump must not run.
    pub fn holds(&self, d: usize) -> bool {
        matches!(self.dirs[d], Dir::Armed(_) | Dir::Draining(_))
    }

    /// Whether any direction is the kernel's.
    pub fn holds_any(&self) -> bool {
        self.holds(0) || self.holds(1)
    }

    /// Whether direction `d` may be armed (the map did not refuse it).
    pub fn may_arm(&self, d: usize) -> bool {
        self.dirs[d] == Dir::User
    }

    /// When to look next, while the kernel holds a direction.
    pub fn next_check(&self) -> Option<Instant> {
        self.holds_any().then_some(self.next_check)
    }

    /// What this session counts in its worker's total (taken out at its close).
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Hands the chosen directions (`[c2u, u2c]`, each with its pump
    /// holding nothing) to the kernel. A direction the map refuses stays
    /// its pump's for the rest of the session; an error reading the
    /// counters arms nothing.
    pub fn arm(
        &mut self,
        map: &Sockmap,
        which: [bool; 2],
        client: &TcpStream,
        upstream: &TcpStream,
        now: Instant,
    ) -> io::Result<()> {
        let (c, u) = (tcp_counters::read_still(client)?, tcp_counters::read_still(upstream)?);
        let ends = [(client, upstream, &c, &u), (upstream, client, &u, &c)];
        for (d, (src, dst, src_n, dst_n)) in ends.into_iter().enumerate() {
            if !which[d] || self.dirs[d] != Dir::User {
                continue;
            }
            if let Err(e) = map.arm(src, self.cookies[d], dst) {
                // This direction stays its pump's (a socket the map does not take, the map
                // full); one armed a moment ago stays armed: taking a source out of the
                // kernel's relay is safe only once nothing more arrives on it.
                let _ = map.forget(self.cookies[d]);
                self.dirs[d] = Dir::Refused;
                log::debug!("sockmap: cannot arm direction {d} ({e}): its pump relays it");
                continue;
            }
            let (consumed, written) = (src_n.consumed(), dst_n.written());
            log::trace!("sockmap: direction {d} armed at {consumed} consumed");
            self.dirs[d] =
                Dir::Armed(Base { consumed, written, moved: self.moved[d], seen: consumed, seen_written: written });
            // Bytes that arrived before the attach are relayed once the kernel looks at the socket.
            if let Err(e) = Sockmap::kick(src) {
                log::debug!("sockmap: kick: {e}");
            }
        }
        (self.interval, self.next_check) = (MIN_CHECK, now + MIN_CHECK);
        Ok(())
    }

    /// Direction `d`'s base while the kernel holds it.
    fn base_of(&self, d: usize) -> Option<Base> {
        match self.dirs[d] {
            Dir::Armed(b) | Dir::Draining(b) => Some(b),
            Dir::User | Dir::Refused => None,
        }
    }

    /// Looks at the counters: what moved, what the kernel holds. A
    /// direction whose source has ended (a FIN or a reset: nothing more
    /// arrives) returns to its pump once the kernel holds none of its bytes
    /// (or its destination is gone). More than `OVERFLOW` held for a
    /// direction, or `WORKER_CAP` for the worker (`worker_held` is its
    /// total, kept up to date here), is an overflow. Returns what changed.
    pub fn look(&mut self, client: &TcpStream, upstream: &TcpStream, worker_held: &mut u64, now: Instant) -> Look {
        let mut look = Look::default();
        let (Ok(c), Ok(u)) = (tcp_counters::read(client), tcp_counters::read(upstream)) else {
            // A socket that cannot say (it never should; one that failed says so with an
            // event): look again soon. Nothing is taken back blind.
            self.next_check = now + MIN_CHECK;
            return look;
        };
        let mut held = 0u64;
        let mut fastest = 0u64;
        for (d, (src, dst)) in [(&c, &u), (&u, &c)].into_iter().enumerate() {
            let Some(mut b) = self.base_of(d) else { continue };
            let src_consumed = src.consumed();
            let consumed = src_consumed.saturating_sub(b.consumed);
            let written = dst.written().saturating_sub(b.written);
            // `written` is read in two calls (acknowledged, then queued): one look may
            // see less than the last did. The count only grows.
            if b.moved + written > self.moved[d] {
                look.moved = true;
                fastest = fastest.max(b.moved + written - self.moved[d]);
                self.moved[d] = b.moved + written;
            }
            let in_flight = consumed.saturating_sub(written);
            let stopped = src_consumed == b.seen;
            // A full socket that sent and then received a FIN is TCP_CLOSE, as is a
            // reset one, and its FIN counts one byte: so a closed source is drained
            // with one byte unaccounted for once the destination has stopped
            // taking any (`settled`). A reset source's pump then reads its error.
            let settled = dst.written() == b.seen_written && dst.unacked == 0;
            (b.seen, b.seen_written) = (src_consumed, dst.written());
            let drained = stopped && (in_flight == 0 || (in_flight == 1 && src.closed() && settled));
            self.dirs[d] = match self.dirs[d] {
                Dir::Armed(_) if src.fin_received() || src.closed() => {
                    // Nothing more arrives: the kernel has only to finish what it took. The
                    // source stays in its maps; its close takes it out.
                    log::trace!("sockmap: direction {d}'s source ended ({in_flight} in flight)");
                    Dir::Draining(b)
                }
                Dir::Armed(_) if in_flight > OVERFLOW => {
                    log::debug!("sockmap: direction {d}: the kernel holds {in_flight} bytes, over {OVERFLOW}");
                    look.overflow = true;
                    Dir::Armed(b)
                }
                // Drained, and the source is no longer consumed (a segment the redirect had in
                // hand at the take-back is counted by now); or a destination that is gone and
                // will never take the rest: its pump finds out by writing, and the session
                // ends with a reset.
                Dir::Draining(_) if drained || dst.closed() => {
                    log::trace!("sockmap: direction {d} is its pump's again ({} moved)", self.moved[d]);
                    look.returned[d] = true;
                    Dir::User
                }
                Dir::Armed(_) => Dir::Armed(b),
                Dir::Draining(_) => Dir::Draining(b),
                other => other,
            };
            if self.holds(d) {
                held += in_flight;
            }
        }
        *worker_held = worker_held.saturating_sub(self.held) + held;
        self.held = held;
        if *worker_held > WORKER_CAP && held > 0 {
            log::debug!("sockmap: the worker's sessions hold {worker_held} bytes, over {WORKER_CAP}");
            look.overflow = true;
        }
        self.interval = if self.dirs.iter().any(|d| matches!(d, Dir::Draining(_))) {
            MIN_CHECK
        } else if look.moved {
            // Closer looks the faster bytes move: about OVERFLOW / 16 between two.
            let per_ms = (fastest / (self.interval.as_millis().max(1) as u64)).max(1);
            Duration::from_millis((OVERFLOW / 16 / per_ms).clamp(1, MAX_CHECK.as_millis() as u64))
        } else {
            (self.interval * 2).min(IDLE_CHECK)
        };
        self.next_check = now + self.interval;
        look
    }

    /// Whether the kernel holds none of this session's bytes right now
    /// (a fresh look at the counters, changing nothing): a timeout may then
    /// end the session with a FIN.
    pub fn holds_nothing_now(&self, client: &TcpStream, upstream: &TcpStream) -> bool {
        let (Ok(c), Ok(u)) = (tcp_counters::read(client), tcp_counters::read(upstream)) else { return false };
        [(&c, &u), (&u, &c)].into_iter().enumerate().all(|(d, (src, dst))| {
            let Some(b) = self.base_of(d) else { return true };
            src.unread == 0 && src.consumed().saturating_sub(b.consumed) == dst.written().saturating_sub(b.written)
        })
    }

    /// The session is ending: nothing waits for the kernel any more (its
    /// sockets, closed next, leave the maps with their close).
    pub fn release(&mut self, map: &Sockmap) {
        for d in 0..2 {
            if self.holds(d) {
                let _ = map.disarm(self.cookies[d]);
                let _ = map.forget(self.cookies[d]);
                self.dirs[d] = Dir::User;
            }
        }
    }
}
