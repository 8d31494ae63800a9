//! One client↔upstream pair: its stage (connecting, relaying), its two
//! pumps, and what a failure of either side means for the other.
//!
//! The session decides; the worker acts. Methods here take readiness and
//! time and return what should happen (keep going, try the next upstream,
//! close for this reason, reset that side); the worker owns the poll
//! registry, the timers and the pools.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::metrics::CloseReason;
use crate::proxy_protocol;
use crate::relay::{DstFailed, Pump, Resources, SrcEnd};
use crate::route::Route;
use crate::sockets::{self, ConnectState};
use crate::timer::Deadline;

/// While draining, a session with no byte either way for this long is
/// closed (cleanly) rather than kept until `drain_timeout`.
pub const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// Which socket of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The accepted connection.
    Client,
    /// The connection we opened.
    Upstream,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        })
    }
}

/// What an event said about one socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Bytes to read.
    pub readable: bool,
    /// Room to write (or an error the next write will report).
    pub writable: bool,
    /// The peer half-closed or the socket failed (EPOLLRDHUP/HUP/ERR).
    pub hup: bool,
}

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for the client's PROXY protocol header (`accept_proxy_protocol`).
    Header {
        /// When the client was accepted (for the header timeout).
        since: Instant,
    },
    /// Waiting for an upstream connect to finish.
    Connecting {
        /// Attempts made before this one.
        attempt: u32,
        /// When this attempt started (for its timeout).
        since: Instant,
    },
    /// Both sockets connected; the pumps run.
    Relaying,
    /// Closed; the worker frees the slot at the end of its event batch.
    Closed,
}

/// What the worker should do after the session handled something.
#[derive(Debug)]
pub enum Verdict {
    /// Nothing more now; `more` asks to be run again before the next poll.
    Continue {
        /// A pump hit its round cap with work left.
        more: bool,
    },
    /// The connect attempt failed: try the next upstream (or give up).
    ConnectFailed(io::Error),
    /// The upstream is connected: start relaying.
    Connected,
    /// End the session.
    Close {
        /// Why (for counters and logs).
        reason: CloseReason,
        /// Reset this side instead of closing it quietly (an abort passed on).
        reset: Option<Side>,
    },
}

/// One session.
#[derive(Debug)]
pub struct Session {
    /// Unique within the process, for logs.
    pub id: u64,
    /// The route it came in on.
    pub route: Arc<Route>,
    /// The client's socket.
    pub client: TcpStream,
    /// Who the client is: the PROXY header's source when the route accepts
    /// one, else the peer. ACLs, hashing, per-client limits and logs use it.
    pub client_addr: SocketAddr,
    /// Who connected to us.
    pub peer_addr: SocketAddr,
    /// The address the client connected to, from its PROXY header (else the socket's own).
    pub local_addr: Option<SocketAddr>,
    /// The worker's listener it came from (whose balancer retries use).
    pub listener: usize,
    /// The upstream socket: `None` only between a failed attempt and the next.
    pub upstream: Option<TcpStream>,
    /// Index of the current upstream in `route.upstreams`.
    pub upstream_index: usize,
    /// Upstreams tried so far (one per attempt).
    pub tried: Tried,
    /// This session is counted in the current upstream's active sessions.
    pub counted: bool,
    /// This session is the one half-open try of an ejected upstream.
    pub probing: bool,
    /// Counted in the route's per-client sessions (to release at close).
    pub client_admitted: bool,
    /// A PROXY header still to be written to the upstream before any relayed byte.
    header_out: Option<Box<PendingHeader>>,
    /// Where it is in its life.
    pub stage: Stage,
    /// Client → upstream.
    pub c2u: Pump,
    /// Upstream → client.
    pub u2c: Pump,
    /// The side that failed first, once one has.
    failed: Option<Side>,
    /// The armed timer, to cancel it.
    /// The armed timer (to cancel it) and when it fires.
    pub timer: Option<(Deadline, Instant)>,
    /// Last time a byte moved (idle timeout).
    last_active: Instant,
    /// When the client was accepted.
    pub started: Instant,
    /// How long the successful upstream connect took.
    pub connect_time: Option<Duration>,
    /// From the upstream connection to its first byte.
    pub first_byte_time: Option<Duration>,
    connected_at: Option<Instant>,
    /// Queued on the worker's ready list.
    pub ready: bool,
}

impl Session {
    /// A new session for an accepted client, before any connect attempt.
    pub fn new(
        id: u64,
        route: Arc<Route>,
        client: TcpStream,
        peer_addr: SocketAddr,
        listener: usize,
        relay: crate::config::RelayMode,
        now: Instant,
    ) -> Session {
        let stage = if route.pool().accept_proxy_protocol {
            Stage::Header { since: now }
        } else {
            Stage::Connecting { attempt: 0, since: now }
        };
        Session {
            id,
            route,
            client,
            client_addr: peer_addr,
            peer_addr,
            local_addr: None,
            listener,
            upstream: None,
            upstream_index: 0,
            tried: Tried::default(),
            counted: false,
            probing: false,
            client_admitted: false,
            header_out: None,
            stage,
            c2u: Pump::for_mode(relay),
            u2c: Pump::for_mode(relay),
            failed: None,
            timer: None,
            last_active: now,
            started: now,
            connect_time: None,
            first_byte_time: None,
            connected_at: None,
            ready: false,
        }
    }

    /// The address of the current upstream.
    pub fn upstream_addr(&self) -> SocketAddr {
        self.upstream().addr
    }

    /// The current upstream.
    pub fn upstream(&self) -> &crate::upstream::Upstream {
        &self.route.upstreams.upstreams[self.upstream_index]
    }

    /// Reads the client's PROXY header if it has all arrived: peeks, parses,
    /// and consumes exactly the header (what follows stays in the socket
    /// for the relay). On success the session's client and local addresses
    /// are the header's.
    pub fn read_proxy_header(&mut self) -> HeaderRead {
        let mut buf = [0u8; proxy_protocol::MAX_HEADER];
        let n = match self.client.peek(&mut buf) {
            Ok(0) => return HeaderRead::Invalid("closed before sending its PROXY header".to_owned()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HeaderRead::Wait,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return HeaderRead::Wait,
            Err(e) => return HeaderRead::Invalid(format!("failed before sending its PROXY header: {e}")),
        };
        let header = match proxy_protocol::parse(&buf[..n]) {
            proxy_protocol::Parse::Incomplete => return HeaderRead::Wait,
            proxy_protocol::Parse::Invalid(why) => return HeaderRead::Invalid(why),
            proxy_protocol::Parse::Done(h) => h,
        };
        // The bytes are queued (we just peeked them): one read takes them.
        let mut taken = 0;
        while taken < header.len {
            match (&self.client).read(&mut buf[taken..header.len]) {
                Ok(0) => return HeaderRead::Invalid("closed inside its PROXY header".to_owned()),
                Ok(k) => taken += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return HeaderRead::Invalid(format!("reading its PROXY header: {e}")),
            }
        }
        if let Some((src, dst)) = header.addrs {
            self.client_addr = src;
            self.local_addr = Some(dst);
        }
        // Payload may follow in the same segment: the relay must look.
        self.c2u.src_readable = true;
        HeaderRead::Done
    }

    /// Queues the PROXY header for the upstream (written before any relayed byte).
    pub fn queue_proxy_header(&mut self, version: proxy_protocol::Version) {
        let local = self.local_addr.or_else(|| self.client.local_addr().ok()).unwrap_or(self.peer_addr);
        let mut bytes = Vec::with_capacity(proxy_protocol::V1_MAX);
        proxy_protocol::encode(version, self.client_addr, local, &mut bytes);
        self.header_out = Some(Box::new(PendingHeader { bytes, written: 0 }));
    }

    /// Writes what is left of the PROXY header: true once it is all out.
    fn flush_header(&mut self, up: &TcpStream) -> io::Result<bool> {
        let Some(h) = self.header_out.as_mut() else {
            return Ok(true);
        };
        while h.written < h.bytes.len() {
            match (&*up).write(&h.bytes[h.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => h.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.c2u.dst_writable = false;
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.header_out = None;
        Ok(true)
    }

    /// Records readiness from an event. Edge-triggered: set here, cleared
    /// only by `WouldBlock` inside the pumps.
    pub fn on_event(&mut self, side: Side, ready: Readiness) {
        let (reader, writer) = match side {
            Side::Client => (&mut self.c2u, &mut self.u2c),
            Side::Upstream => (&mut self.u2c, &mut self.c2u),
        };
        reader.src_readable |= ready.readable || ready.hup;
        reader.src_hup |= ready.hup;
        writer.dst_writable |= ready.writable;
    }

    /// Starts attempt number `attempt` on a freshly connecting upstream socket.
    pub fn attempt(&mut self, attempt: u32, index: usize, upstream: TcpStream, now: Instant) {
        self.upstream_index = index;
        self.upstream = Some(upstream);
        self.stage = Stage::Connecting { attempt, since: now };
        // Readiness of an earlier upstream socket means nothing for this one.
        self.u2c.src_readable = false;
        self.u2c.src_hup = false;
        self.c2u.dst_writable = false;
    }

    /// Reads the result of the connect in progress from the upstream's event.
    pub fn check_connect(&mut self, ready: Readiness) -> Verdict {
        let Some(up) = &self.upstream else {
            return Verdict::Continue { more: false };
        };
        match sockets::connect_result(up, ready.writable && !ready.hup) {
            ConnectState::Connected => Verdict::Connected,
            ConnectState::ConnectedThenReset => {
                self.u2c.fail_at_eof(io::ErrorKind::ConnectionReset);
                Verdict::Connected
            }
            ConnectState::Pending => Verdict::Continue { more: false },
            ConnectState::Failed(e) => Verdict::ConnectFailed(e),
        }
    }

    /// The upstream connected: relaying starts now.
    pub fn connected(&mut self, now: Instant) {
        if let Stage::Connecting { since, .. } = self.stage {
            self.connect_time = Some(now.saturating_duration_since(since));
        }
        self.connected_at = Some(now);
        self.stage = Stage::Relaying;
        self.last_active = now;
    }

    /// When the timer should fire: the connect deadline while connecting;
    /// while relaying, `idle_timeout` after the last byte, or
    /// `half_close_timeout` once one side has finished (so nothing lingers
    /// in CLOSE-WAIT), or `DRAIN_IDLE` while the worker drains (an idle
    /// session is closed early instead of holding the drain up).
    pub fn deadline(&self, draining: bool) -> Instant {
        if let Stage::Header { since } = self.stage {
            return since + self.route.pool().proxy_protocol_timeout;
        }
        let Stage::Connecting { since, .. } = self.stage else {
            let mut idle = self.route.idle_timeout;
            if self.c2u.finished() || self.u2c.finished() {
                idle = idle.min(self.route.half_close_timeout);
            }
            if draining {
                idle = idle.min(DRAIN_IDLE);
            }
            return self.last_active + idle;
        };
        since + self.route.connect_timeout
    }

    /// Last time a byte moved.
    pub fn last_active(&self) -> Instant {
        self.last_active
    }

    /// Runs both pumps and decides what follows.
    pub fn relay(&mut self, res: &mut Resources, now: Instant) -> Verdict {
        let Some(up) = self.upstream.take() else {
            return Verdict::Close { reason: CloseReason::ConnectFailed, reset: None };
        };
        let verdict = self.relay_with(&up, res, now);
        self.upstream = Some(up);
        verdict
    }

    fn relay_with(&mut self, up: &TcpStream, res: &mut Resources, now: Instant) -> Verdict {
        let mut more = false;
        let mut progressed = false;
        let mut dst_failed = [None, None];
        // The PROXY header goes first; client bytes wait until it is out.
        let header_out = match self.flush_header(up) {
            Ok(done) => done,
            Err(e) => {
                dst_failed[0] = Some(e);
                false
            }
        };
        // The second direction to finish leaves its FIN to close() (see Pump::fin_by_close).
        if self.failed.is_none() && self.u2c.finished() {
            self.c2u.fin_by_close();
        }
        // A pump whose destination failed is dead: don't run it again.
        if header_out && self.failed != Some(Side::Upstream) {
            match self.c2u.run(&self.client, up, res) {
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
        if self.failed != Some(Side::Client) {
            match self.u2c.run(up, &self.client, res) {
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
                self.first_byte_time = self.connected_at.map(|t| now.saturating_duration_since(t));
            }
        }
        if let Some(e) = &dst_failed[0] {
            if self.note_failure(Side::Upstream, e.kind()) {
                return self.reset_both();
            }
        }
        if let Some(e) = &dst_failed[1] {
            if self.note_failure(Side::Client, e.kind()) {
                return self.reset_both();
            }
        }
        if let SrcEnd::Failed(kind) = self.u2c.src_end() {
            if self.retryable_loss() {
                // The upstream died before a byte moved either way (it was killed with
                // connections in its accept queue, say): as good as a failed connect.
                return Verdict::ConnectFailed(io::Error::new(kind, "reset before any byte moved either way"));
            }
        }
        if let SrcEnd::Failed(kind) = self.c2u.src_end() {
            self.note_failure(Side::Client, kind);
        }
        if let SrcEnd::Failed(kind) = self.u2c.src_end() {
            self.note_failure(Side::Upstream, kind);
        }
        match self.failed {
            // The failed side's last bytes are delivered: reset the other side.
            Some(failed) => {
                let survivor = other(failed);
                let from_failed = match failed {
                    Side::Client => &self.c2u,
                    Side::Upstream => &self.u2c,
                };
                if from_failed.drained() {
                    Verdict::Close { reason: failure_reason(failed), reset: Some(survivor) }
                } else {
                    Verdict::Continue { more }
                }
            }
            None if self.c2u.finished() && self.u2c.finished() => {
                Verdict::Close { reason: CloseReason::Clean, reset: None }
            }
            None => Verdict::Continue { more },
        }
    }

    /// True while nothing has moved either way and the client is still
    /// there: the upstream can be swapped without the client knowing.
    fn retryable_loss(&self) -> bool {
        self.failed.is_none()
            && self.first_byte_time.is_none()
            && self.u2c.delivered() == 0
            && self.u2c.pending() == 0
            && self.c2u.delivered() == 0
            && self.c2u.pending() == 0
            && self.c2u.src_end() == SrcEnd::Open
            && self.header_out.as_ref().is_none_or(|h| h.written == 0)
    }

    /// Goes back to connecting after the upstream was lost before any byte
    /// moved (see `retryable_loss`): the next attempt starts from scratch.
    pub fn unconnect(&mut self, res: &mut Resources, now: Instant) {
        self.u2c.release(res);
        self.u2c = self.u2c.for_new_source();
        self.stage = Stage::Connecting { attempt: self.tried.len() as u32, since: now };
        self.connect_time = None;
        self.connected_at = None;
        self.first_byte_time = None;
        self.header_out = None;
    }

    /// Records that `side` failed. The pump reading from it keeps going until
    /// it has delivered what that side sent before failing, then the other
    /// side is reset instead of seeing a clean end. Returns true if both
    /// sides have now failed.
    fn note_failure(&mut self, side: Side, kind: io::ErrorKind) -> bool {
        match self.failed {
            Some(s) if s == side => false,
            Some(_) => true,
            None => {
                log::debug!("session {}: {side} failed: {kind}", self.id);
                self.failed = Some(side);
                let from_failed = match side {
                    Side::Client => &mut self.c2u,
                    Side::Upstream => &mut self.u2c,
                };
                from_failed.hold_fin();
                // Read what the failed side still has queued (data that came
                // before its reset); the read also surfaces the error.
                from_failed.src_readable = true;
                false
            }
        }
    }

    fn reset_both(&self) -> Verdict {
        let failed = self.failed.unwrap_or(Side::Upstream);
        Verdict::Close { reason: failure_reason(failed), reset: Some(other(failed)) }
    }

    /// Returns the session's pipes and buffers to the pools.
    pub fn release(&mut self, res: &mut Resources) {
        self.c2u.release(res);
        self.u2c.release(res);
    }

    /// Time since the client was accepted.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
}

fn other(side: Side) -> Side {
    match side {
        Side::Client => Side::Upstream,
        Side::Upstream => Side::Client,
    }
}

fn failure_reason(side: Side) -> CloseReason {
    match side {
        Side::Client => CloseReason::ClientReset,
        Side::Upstream => CloseReason::UpstreamReset,
    }
}

/// The most connect attempts a session makes (`retries` is at most 10).
pub const MAX_ATTEMPTS: usize = 11;

/// The upstreams a session has tried, in order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tried {
    n: u8,
    list: [u32; MAX_ATTEMPTS],
}

impl Tried {
    /// Records an attempt on upstream `i` (beyond `MAX_ATTEMPTS`, the count still grows).
    pub fn push(&mut self, i: usize) {
        if let Some(slot) = self.list.get_mut(usize::from(self.n)) {
            *slot = i as u32;
        }
        self.n = self.n.saturating_add(1);
    }

    /// Attempts made.
    pub fn len(&self) -> usize {
        usize::from(self.n)
    }

    /// No attempt yet.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Upstream `i` was tried.
    pub fn contains(&self, i: usize) -> bool {
        self.list[..self.len().min(MAX_ATTEMPTS)].contains(&(i as u32))
    }
}

/// A PROXY header on its way to the upstream.
#[derive(Debug)]
struct PendingHeader {
    bytes: Vec<u8>,
    written: usize,
}

/// What reading the client's PROXY header gave.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderRead {
    /// Not all there yet.
    Wait,
    /// Read; the session's addresses are the header's.
    Done,
    /// Malformed, or the client left or failed: why.
    Invalid(String),
}
