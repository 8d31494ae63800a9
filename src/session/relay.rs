//! The relaying stage of a session: the upstream socket, the two pumps, the
//! PROXY header still to send, and what a failure of either side means for
//! the other. Owning the upstream socket here makes "relaying implies an
//! upstream" a fact of the types. Under `relay: sockmap` the kernel may
//! hold either direction instead of its pump (`kernel.rs`).

use std::io;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::ending::{Due, End, Ending};
use super::header::Outgoing;
use super::kernel::Kernel;
use super::{ByteCounts, Readiness, Side};
use crate::config::{RelayMode, SocketOptions};
use crate::metrics::CloseReason;
use crate::relay::ring::Owner;
use crate::relay::{DstFailed, Pump, Resources, SrcEnd};
use crate::sys::socket_queue;

/// Both sockets connected; the pumps run.
#[derive(Debug)]
pub struct Relay {
    /// The upstream socket.
    pub upstream: TcpStream,
    /// Client → upstream.
    pub c2u: Pump,
    /// Upstream → client.
    pub u2c: Pump,
    /// The side that failed first, once one has.
    pub(super) failed: Option<Side>,
    /// Our PROXY header, while some of it is still to be written (before any relayed byte).
    pub(super) header_out: Option<Box<Outgoing>>,
    /// Last time a byte moved (idle timeouts).
    pub(super) last_active: Instant,
    /// `relay: sockmap`: the kernel's part (`None` in other modes, or after the kernel refused this session).
    pub(super) kernel: Option<Box<Kernel>>,
    /// An event came for a socket the kernel relays from (a FIN, a reset, an error).
    pub(super) kernel_ending: bool,
    /// Sockets registered for their endings only, `[client, upstream]`.
    pub(super) watched: [bool; 2],
    /// The kernel held more than its bound: the session ends with resets.
    pub(super) kernel_overflow: bool,
    /// When the upstream connected (first-byte time).
    pub(super) connected_at: Instant,
    /// How long the successful connect took.
    pub connect_time: Duration,
    /// From the upstream connection to its first byte.
    pub first_byte_time: Option<Duration>,
}

/// What a run of the pumps leads to.
#[derive(Debug)]
pub enum Step {
    /// Nothing more now; `more` asks to be run again before the next poll.
    Continue {
        /// A pump hit its round cap with work left.
        more: bool,
    },
    /// The upstream died before a byte moved either way (killed with
    /// connections in its accept queue, say): as good as a failed connect,
    /// the session may try another upstream without the client knowing.
    Lost(io::Error),
    /// The session is over.
    End(End),
}

impl Relay {
    /// Relaying over a just-connected `upstream` with pumps `[c2u, u2c]`
    /// (see `pumps`), with what the events of each socket said so far
    /// (edge-triggered: they would not say it again).
    pub fn new(
        upstream: TcpStream,
        [mut c2u, mut u2c]: [Pump; 2],
        client: Readiness,
        up: Readiness,
        header: Option<Outgoing>,
        now: Instant,
    ) -> Relay {
        (c2u.src.readable, c2u.src.hup, u2c.dst.writable) = (client.readable, client.hup, client.writable);
        (u2c.src.readable, u2c.src.hup, c2u.dst.writable) = (up.readable, up.hup, up.writable);
        Relay {
            upstream,
            c2u,
            u2c,
            failed: None,
            header_out: header.map(Box::new),
            last_active: now,
            kernel: None,
            kernel_ending: false,
            watched: [false; 2],
            kernel_overflow: false,
            connected_at: now,
            connect_time: Duration::ZERO,
            first_byte_time: None,
        }
    }

    /// The two pumps of a relay in `mode` (`relay: uring`: their operations
    /// carry `owner`, the session's slot and id; a client→upstream pump
    /// kept from a lost upstream goes on with what its receive took).
    /// `socket` is the route's: how far pipes grow, and the default
    /// `notsent_lowat` the pumps' stages set.
    pub fn pumps(mode: RelayMode, socket: &SocketOptions, owner: (usize, u64), kept: Option<Pump>) -> [Pump; 2] {
        let lowat = socket.stage_notsent_lowat();
        // Under `relay: sockmap` the pumps relay what the kernel does not, as under `auto`.
        let mode = if mode == RelayMode::Sockmap { RelayMode::Auto } else { mode };
        if mode == RelayMode::Uring {
            let (key, id) = owner;
            let c2u = kept.unwrap_or_else(|| Pump::uring(Owner { key, id, dir: 0 }).with_stage_lowat(lowat));
            return [c2u, Pump::uring(Owner { key, id, dir: 1 }).with_stage_lowat(lowat)];
        }
        let pump = || Pump::for_mode(mode, socket.notsent_lowat()).with_stage_lowat(lowat);
        [pump(), pump()]
    }

    /// The relay runs on the worker's io_uring: readiness events mean nothing to it.
    pub fn is_uring(&self) -> bool {
        self.c2u.is_uring()
    }

    /// The pump a completion of direction `dir` belongs to.
    pub fn pump_mut(&mut self, dir: u8) -> &mut Pump {
        if dir == 0 { &mut self.c2u } else { &mut self.u2c }
    }

    /// The upstream was reset before we read from it (the reset was reported
    /// with the connect): relay what it sent, then end as a failure, not EOF.
    pub fn upstream_reset_before_read(&mut self) {
        self.u2c.fail_at_eof(io::ErrorKind::ConnectionReset);
    }

    /// Records readiness of `side`'s socket in the pumps that read and write it.
    pub fn on_event(&mut self, side: Side, ready: Readiness) {
        let (reader, writer) = match side {
            Side::Client => (&mut self.c2u, &mut self.u2c),
            Side::Upstream => (&mut self.u2c, &mut self.c2u),
        };
        reader.src.readable |= ready.readable || ready.hup;
        reader.src.hup |= ready.hup;
        writer.dst.writable |= ready.writable;
        if self.kernel.as_ref().is_some_and(|k| k.holds(side.index())) {
            self.kernel_ending = true;
        }
    }

    /// What is known of the client socket's readiness (for a session that
    /// goes back to connecting another upstream).
    pub fn client_readiness(&self) -> Readiness {
        Readiness { readable: self.c2u.src.readable, hup: self.c2u.src.hup, writable: self.u2c.dst.writable }
    }

    /// Bytes delivered each way, `[c2u, u2c][spliced, copied, uring, sockmap]`.
    pub fn bytes(&self) -> ByteCounts {
        let kernel = self.kernel_moved();
        let b = |p: &Pump, k: u64| [p.spliced, p.copied, p.uring, k];
        [b(&self.c2u, kernel[0]), b(&self.u2c, kernel[1])]
    }

    /// Last time a byte moved.
    pub fn last_active(&self) -> Instant {
        self.last_active
    }

    /// Runs both pumps and decides what follows.
    pub fn run(&mut self, client: &TcpStream, res: &mut Resources, now: Instant) -> Step {
        if self.kernel_ending {
            self.kernel_look(client, res, now);
        }
        if self.kernel_overflow {
            return Step::End(End { reason: CloseReason::SockmapOverflow, ending: Ending::RESET_BOTH });
        }
        let held = self.kernel.as_ref().map_or([false; 2], |k| [k.holds(0), k.holds(1)]);
        let mut more = false;
        let mut progressed = false;
        let mut dst_failed = [None, None];
        // The PROXY header goes first; client bytes wait until it is out.
        let header_out = match self.header_out.as_mut().map(|h| h.write_to(&self.upstream)) {
            None => true,
            Some(Ok(true)) => {
                self.header_out = None;
                true
            }
            Some(Ok(false)) => {
                self.c2u.dst.writable = false;
                false
            }
            Some(Err(e)) => {
                dst_failed[0] = Some(e);
                false
            }
        };
        // The second direction to finish leaves its FIN to close() (see Pump::fin_by_close).
        if self.failed.is_none() && self.u2c.finished() {
            self.c2u.fin_by_close();
        }
        // A pump whose destination failed is dead: don't run it again.
        if header_out && self.failed != Some(Side::Upstream) && !held[0] {
            match self.c2u.run(client, &self.upstream, res) {
                Ok(a) => {
                    (more, progressed) = (more | a.more, progressed | a.progressed);
                    if a.took_in {
                        self.u2c.other_way_moved();
                    }
                }
                Err(DstFailed(e)) => dst_failed[0] = Some(e),
            }
        }
        // After c2u's run, so a c2u that finished just now counts too.
        if self.failed.is_none() && self.c2u.finished() {
            self.u2c.fin_by_close();
        }
        if self.failed != Some(Side::Client) && !held[1] {
            match self.u2c.run(&self.upstream, client, res) {
                Ok(a) => {
                    (more, progressed) = (more | a.more, progressed | a.progressed);
                    if a.took_in {
                        self.c2u.other_way_moved();
                    }
                }
                Err(DstFailed(e)) => dst_failed[1] = Some(e),
            }
        }
        if progressed {
            self.last_active = now;
            if self.first_byte_time.is_none() && self.u2c.delivered() > 0 {
                self.first_byte_time = Some(now.saturating_duration_since(self.connected_at));
            }
        }
        for (side, e) in [(Side::Upstream, &dst_failed[0]), (Side::Client, &dst_failed[1])] {
            if let Some(e) = e {
                if self.note_failure(side, e.kind()) {
                    return Step::End(End::both_failed(self.failed.unwrap_or(side)));
                }
            }
        }
        if let SrcEnd::Failed(kind) = self.u2c.src_end() {
            if self.retryable_loss() {
                return Step::Lost(io::Error::new(kind, "reset before any byte moved either way"));
            }
        }
        for (side, end) in [(Side::Client, self.c2u.src_end()), (Side::Upstream, self.u2c.src_end())] {
            if let SrcEnd::Failed(kind) = end {
                if self.note_failure(side, kind) {
                    return Step::End(End::both_failed(self.failed.unwrap_or(side)));
                }
            }
        }
        // The pump writing to the failed side is never run again: under
        // `relay: uring` its receive would take a buffer per arrival for
        // bytes that can't be delivered. Its source is reset at the end.
        match self.failed {
            Some(Side::Upstream) if self.c2u.is_uring() => _ = self.c2u.release(res),
            Some(Side::Client) if self.u2c.is_uring() => _ = self.u2c.release(res),
            _ => {}
        }
        if !more {
            self.maybe_arm(client, res, progressed, now);
        }
        match self.failed {
            // Pass the failure on once the failed side's last bytes are delivered.
            Some(failed) if self.from(failed).all_delivered() => Step::End(End::failed(failed)),
            Some(_) => Step::Continue { more },
            None if self.c2u.finished() && self.u2c.finished() => Step::End(End::CLEAN),
            None => Step::Continue { more },
        }
    }

    /// The pump that reads from `side`.
    fn from(&self, side: Side) -> &Pump {
        match side {
            Side::Client => &self.c2u,
            Side::Upstream => &self.u2c,
        }
    }

    /// True while nothing has moved either way and the client is still
    /// there: the upstream can be swapped without the client knowing.
    fn retryable_loss(&self) -> bool {
        self.failed.is_none()
            && self.first_byte_time.is_none()
            && self.kernel_moved() == [0; 2]
            && self.u2c.delivered() == 0
            && self.u2c.pending() == 0
            && self.c2u.delivered() == 0
            && self.c2u.pending() == 0
            && self.c2u.src_end() == SrcEnd::Open
            && self.header_out.as_ref().is_none_or(|h| !h.started())
    }

    /// Records that `side` failed. The pump reading from it keeps going until
    /// it has delivered what that side sent before failing; then the session
    /// ends with the survivor reset. Returns true if both sides have now failed.
    fn note_failure(&mut self, side: Side, kind: io::ErrorKind) -> bool {
        match self.failed {
            Some(s) if s == side => false,
            Some(_) => true,
            None => {
                log::trace!("{side} failed: {kind}");
                self.failed = Some(side);
                let from_failed = match side {
                    Side::Client => &mut self.c2u,
                    Side::Upstream => &mut self.u2c,
                };
                from_failed.hold_fin();
                // Read what the failed side still has queued (data that came
                // before its reset); the read also surfaces the error.
                from_failed.src.readable = true;
                false
            }
        }
    }

    /// Nothing is in flight that we can see without a syscall: no side
    /// failed, no byte in a pipe or buffer, no PROXY header half-written.
    pub(super) fn nothing_pending(&self) -> bool {
        self.nothing_pending_but_kernel() && self.kernel.as_ref().is_none_or(|k| !k.holds_any())
    }

    /// `nothing_pending`, leaving out what the kernel may hold.
    fn nothing_pending_but_kernel(&self) -> bool {
        self.failed.is_none() && self.header_out.is_none() && self.c2u.pending() == 0 && self.u2c.pending() == 0
    }

    /// Truly quiet, so a FIN to both sides tells the truth: nothing pending,
    /// no source failed, and nothing received and unread in either socket
    /// (closing a socket with unread bytes would reset it anyway).
    pub fn is_quiet(&self, client: &TcpStream) -> bool {
        let failed = |p: &Pump| matches!(p.src_end(), SrcEnd::Failed(_));
        let kernel_quiet = self.kernel.as_ref().is_none_or(|k| k.holds_nothing_now(client, &self.upstream));
        self.nothing_pending_but_kernel()
            && kernel_quiet
            && !failed(&self.c2u)
            && !failed(&self.u2c)
            && socket_queue::unread(client).is_ok_and(|n| n == 0)
            && socket_queue::unread(&self.upstream).is_ok_and(|n| n == 0)
    }

    /// When the timer should fire and which rule it is: `idle_timeout` after
    /// the last byte; `half_close_timeout` instead once a direction has
    /// finished (if it is shorter or equal); `drain_idle` (the route's
    /// `drain_close_idle_after`, while draining) for a session with nothing
    /// pending, if it is sooner.
    pub fn due(&self, idle: Duration, half_close: Duration, drain_idle: Option<Duration>) -> (Instant, Due) {
        let mut due = (idle, Due::Idle);
        if (self.c2u.finished() || self.u2c.finished()) && half_close <= idle {
            due = (half_close, Due::HalfClose);
        }
        if let Some(after) = drain_idle.filter(|a| *a < due.0 && self.nothing_pending()) {
            due = (after, Due::DrainIdle);
        }
        let at = self.last_active + due.0;
        match self.kernel.as_ref().and_then(|k| k.next_check()) {
            Some(check) if check < at => (check, Due::Kernel),
            _ => (at, due.1),
        }
    }

    /// How the timer of rule `due` ends this session (see `End::timeout`).
    pub fn on_timeout(&self, due: Due, client: &TcpStream) -> Option<End> {
        End::timeout(due, self.is_quiet(client))
    }

    /// Returns the pumps' pipes and buffers to the pools (`relay: uring`:
    /// abandons their operations). Returns, per direction, whether bytes
    /// already taken from that direction's source will never be delivered.
    pub fn release(&mut self, res: &mut Resources) -> [bool; 2] {
        self.release_kernel(res);
        [self.c2u.release(res), self.u2c.release(res)]
    }

    /// Gives up the upstream side for another try, keeping the
    /// client→upstream pump (under `relay: uring` its receive on the client
    /// was in flight and must not lose what it took: it is stopped, and
    /// what it took waits for the next upstream).
    pub fn into_client_pump(mut self, res: &mut Resources) -> Pump {
        self.u2c.release(res);
        self.c2u.pause(res);
        self.c2u
    }
}
