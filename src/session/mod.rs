//! One client↔upstream pair through its stages: waiting for the client's
//! PROXY header, then (on an address routed by name) for its TLS
//! ClientHello, choosing and connecting an upstream, relaying, and — when
//! one side failed — waiting for the survivor to receive the last bytes
//! before its reset. Each stage owns its data (`Connecting` the attempt's
//! socket, `Relaying` the upstream socket and both pumps), so relaying
//! without an upstream cannot be written down.
//!
//! The session decides; the worker acts. Methods here take readiness and
//! time and return what should happen (keep going, try the next upstream,
//! end this way for this reason); the worker owns the poll registry, the
//! timers, the pools and the metrics. `relay.rs` is the relaying stage,
//! `ending.rs` the rules for how a session ends, `linger.rs` the wait before
//! a reset, `header.rs` PROXY header I/O, `tried.rs` the upstreams tried,
//! `uring.rs` what a session does with its io_uring completions.

mod ending;
pub mod header;
mod linger;
mod relay;
mod tried;
mod uring;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

pub use ending::{Due, End, Ending};
pub use header::HeaderRead;
pub use linger::{Linger, LingerCheck};
pub use relay::{Relay, Step};
pub use tried::{MAX_ATTEMPTS, Tried};

use crate::config::RelayMode;
use crate::frontend::Frontend;
use crate::metrics::CloseReason;
use crate::relay::Resources;
use crate::route::Route;
use crate::sockets::{self, ConnectState};
use crate::timer::Deadline;

/// Which socket of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    /// The accepted connection.
    Client,
    /// The connection we opened.
    Upstream,
}

impl Side {
    /// The other socket.
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        })
    }
}

/// What events said about one socket. Edge-triggered, so kept sticky: set
/// by events, cleared only when a syscall says `WouldBlock`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Bytes to read.
    pub readable: bool,
    /// Room to write (or an error the next write will report).
    pub writable: bool,
    /// The peer half-closed or the socket failed (EPOLLRDHUP/HUP/ERR).
    pub hup: bool,
}

impl Readiness {
    /// Adds what a new event says.
    pub fn absorb(&mut self, ev: Readiness) {
        self.readable |= ev.readable || ev.hup;
        self.writable |= ev.writable;
        self.hup |= ev.hup;
    }
}

/// A connect attempt in progress.
#[derive(Debug)]
pub struct Attempt {
    /// The connecting socket.
    pub upstream: TcpStream,
    /// Attempts made before this one.
    pub number: u32,
    /// When it started (for its timeout).
    pub since: Instant,
    /// What its events said so far (handed to the relay once connected).
    ready: Readiness,
}

/// Waiting for a client's TLS ClientHello, on an address whose routes
/// choose by it.
#[derive(Debug)]
pub struct HelloWait {
    /// When the wait started (for `client_hello_timeout`).
    pub since: Instant,
    /// Bytes the parser needs before it can take its next step.
    pub need: usize,
    /// The routes to choose from.
    pub frontend: Arc<Frontend>,
}

impl HelloWait {
    /// Starts waiting at `now`.
    pub fn new(frontend: Arc<Frontend>, now: Instant) -> HelloWait {
        HelloWait { since: now, need: 1, frontend }
    }
}

/// What a client's ClientHello said, for the access log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The server name (SNI), normalised.
    pub sni: Option<String>,
    /// The ALPN protocols offered, comma-separated, escaped.
    pub alpn: Option<String>,
    /// An `encrypted_client_hello` extension was present (the name is the outer one).
    pub ech: bool,
}

/// Where a session is in its life.
#[derive(Debug)]
pub enum Stage {
    /// Waiting for the client's PROXY protocol header (`accept_proxy_protocol`).
    Header {
        /// When the client was accepted (for the header timeout).
        since: Instant,
        /// The routes a ClientHello will choose from once the header is read
        /// (an address routed by name).
        then: Option<Arc<Frontend>>,
    },
    /// Waiting for the client's TLS ClientHello, which picks the route.
    Hello(HelloWait),
    /// No upstream socket: before the first attempt and between attempts
    /// (a transient state inside the worker's `connect`).
    Unconnected,
    /// Waiting for an upstream connect to finish.
    Connecting(Attempt),
    /// Both sockets connected; the pumps run.
    Relaying(Relay),
    /// One side failed and the survivor is receiving its last bytes; it is
    /// reset once they are acknowledged (or the wait gives up).
    Lingering(Linger),
    /// Closed; the worker frees the slot at the end of its event batch.
    Closed,
}

impl Stage {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Header { .. } => "header",
            Stage::Hello(_) => "hello",
            Stage::Unconnected => "unconnected",
            Stage::Connecting(_) => "connecting",
            Stage::Relaying(_) => "relaying",
            Stage::Lingering(_) => "lingering",
            Stage::Closed => "closed",
        }
    }
}

/// What the worker should do after the session handled something.
#[derive(Debug)]
pub enum Verdict {
    /// Nothing more now; `more` asks to be run again before the next poll.
    Continue {
        /// A pump hit its round cap with work left.
        more: bool,
    },
    /// The connect attempt failed, or the upstream was lost before a byte
    /// moved either way: try the next upstream (or give up).
    ConnectFailed(std::io::Error),
    /// The upstream is connected: start relaying.
    Connected {
        /// And its peer reset it right after (relay what it sent, then pass the reset on).
        reset_already: bool,
    },
    /// End the session.
    End(End),
}

/// Bytes delivered, `[client→upstream, upstream→client][spliced, copied, uring]`.
pub type ByteCounts = [[u64; 3]; 2];

/// One session.
#[derive(Debug)]
pub struct Session {
    /// Unique within the process, for logs.
    pub id: u64,
    /// The route it came in on (on an address routed by name, until its
    /// ClientHello chose one: the address's first route, and `routed` false).
    pub route: Arc<Route>,
    /// `route` is really this session's: it counts in the route's sessions
    /// and metrics (false while a ClientHello is still to choose it).
    pub routed: bool,
    /// Counted among the clients still sending a ClientHello (to release).
    pub hello_admitted: bool,
    /// What its ClientHello said (addresses routed by name).
    pub tls: Option<Box<TlsInfo>>,
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
    /// How its pumps move bytes.
    relay_mode: RelayMode,
    /// Where it is in its life, with that stage's data.
    pub stage: Stage,
    /// What the client's events said while no relay held its pumps.
    client_ready: Readiness,
    /// Index in `route.upstreams` of the current (or last tried) upstream.
    pub upstream_index: usize,
    /// Generation of the current upstream socket (see `worker::token`).
    pub upstream_generation: u32,
    /// Upstreams tried so far (one per attempt).
    pub tried: Tried,
    /// This session is counted in the current upstream's active sessions.
    pub counted: bool,
    /// This session is the one half-open try of an ejected upstream.
    pub probing: bool,
    /// Counted in the route's per-client sessions (to release at close).
    pub client_admitted: bool,
    /// The armed timer (to cancel it) and when it fires.
    pub timer: Option<(Deadline, Instant)>,
    /// When the client was accepted.
    pub started: Instant,
    /// Bytes already added to the route's metrics while it ran.
    pub reported: ByteCounts,
    /// When the last periodic access line was written (or the session started).
    pub last_access_line: Instant,
    /// Queued on the worker's ready list.
    pub ready: bool,
    /// `relay: uring`, between upstreams: the client→upstream pump of the
    /// relay whose upstream was lost before any byte moved. Its receive on
    /// the client is stopped (its completions still come here); the next
    /// relay goes on with it and what it took.
    kept: Option<crate::relay::Pump>,
}

/// A client as accepted: its socket, its address, the worker's listener.
#[derive(Debug)]
pub struct Accepted {
    /// The accepted socket.
    pub client: TcpStream,
    /// Who connected.
    pub peer_addr: SocketAddr,
    /// The worker's listener it came from.
    pub listener: usize,
}

impl Session {
    /// A new session for an accepted client, before any connect attempt;
    /// `inspect`: the routes its ClientHello will choose from (an address
    /// routed by name).
    pub fn new(
        id: u64,
        route: Arc<Route>,
        accepted: Accepted,
        relay_mode: RelayMode,
        inspect: Option<Arc<Frontend>>,
        now: Instant,
    ) -> Session {
        let Accepted { client, peer_addr, listener } = accepted;
        let routed = inspect.is_none();
        let stage = if route.pool().accept_proxy_protocol {
            Stage::Header { since: now, then: inspect }
        } else if let Some(f) = inspect {
            Stage::Hello(HelloWait::new(f, now))
        } else {
            Stage::Unconnected
        };
        Session {
            id,
            route,
            routed,
            hello_admitted: false,
            tls: None,
            client,
            client_addr: peer_addr,
            peer_addr,
            local_addr: None,
            listener,
            relay_mode,
            stage,
            client_ready: Readiness::default(),
            upstream_index: 0,
            upstream_generation: 0,
            tried: Tried::default(),
            counted: false,
            probing: false,
            client_admitted: false,
            timer: None,
            started: now,
            reported: [[0; 3]; 2],
            last_access_line: now,
            ready: false,
            kept: None,
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

    /// The relay, while relaying or lingering.
    pub fn relay(&self) -> Option<&Relay> {
        match &self.stage {
            Stage::Relaying(r) => Some(r),
            Stage::Lingering(l) => Some(&l.relay),
            _ => None,
        }
    }

    /// The upstream socket, in the stages that have one.
    pub fn upstream_socket(&self) -> Option<&TcpStream> {
        match &self.stage {
            Stage::Connecting(a) => Some(&a.upstream),
            _ => self.relay().map(|r| &r.upstream),
        }
    }

    /// Bytes delivered so far each way.
    pub fn bytes(&self) -> ByteCounts {
        self.relay().map_or([[0; 3]; 2], Relay::bytes)
    }

    /// Reads the client's PROXY header if it has all arrived. On success the
    /// session's client and local addresses are the header's, and it waits
    /// for a ClientHello next (an address routed by name) or is unconnected.
    pub fn read_proxy_header(&mut self, now: Instant) -> HeaderRead {
        let read = header::read(&self.client);
        if let HeaderRead::Done(addrs) = &read {
            if let Some((src, dst)) = addrs {
                self.client_addr = *src;
                self.local_addr = Some(*dst);
            }
            // Payload may follow in the same segment: the next stage must look.
            self.client_ready.readable = true;
            let then = match &mut self.stage {
                Stage::Header { then, .. } => then.take(),
                _ => None,
            };
            self.stage = match then {
                Some(f) => Stage::Hello(HelloWait::new(f, now)),
                None => Stage::Unconnected,
            };
        }
        read
    }

    /// The client half-closed or failed, as far as its events said (before relaying).
    pub fn client_hup(&self) -> bool {
        self.client_ready.hup
    }

    /// The client has bytes to read that no new event will announce (a
    /// ClientHello that was only peeked at).
    pub fn mark_client_readable(&mut self) {
        self.client_ready.readable = true;
    }

    /// Records readiness from an event for the socket of `side` whose token
    /// carried `generation`. An event of an upstream socket this session no
    /// longer has (a failed attempt's, still in the batch) is ignored.
    /// Returns false if the event was stale.
    pub fn on_event(&mut self, side: Side, generation: u32, ready: Readiness) -> bool {
        if side == Side::Upstream && generation != self.upstream_generation {
            return false;
        }
        match (&mut self.stage, side) {
            (Stage::Relaying(r), _) => r.on_event(side, ready),
            (Stage::Connecting(a), Side::Upstream) => a.ready.absorb(ready),
            (Stage::Lingering(_) | Stage::Closed, _) => {}
            (_, Side::Client) => self.client_ready.absorb(ready),
            (_, Side::Upstream) => return false, // no upstream socket in this stage
        }
        true
    }

    /// Starts attempt number `number` on a freshly connecting upstream socket
    /// (registered by the worker with `generation`).
    pub fn attempt(&mut self, number: u32, index: usize, upstream: TcpStream, generation: u32, now: Instant) {
        self.upstream_index = index;
        self.upstream_generation = generation;
        self.stage = Stage::Connecting(Attempt { upstream, number, since: now, ready: Readiness::default() });
    }

    /// Drops the current attempt's socket (it failed): the session is
    /// unconnected until the next attempt.
    pub fn drop_attempt(&mut self) {
        if matches!(self.stage, Stage::Connecting(_)) {
            self.stage = Stage::Unconnected;
        }
    }

    /// Reads the result of the connect in progress after an upstream event.
    pub fn check_connect(&mut self, ready: Readiness) -> Verdict {
        let Stage::Connecting(a) = &self.stage else {
            return Verdict::Continue { more: false };
        };
        match sockets::connect_result(&a.upstream, ready.writable && !ready.hup) {
            ConnectState::Connected => Verdict::Connected { reset_already: false },
            ConnectState::ConnectedThenReset => Verdict::Connected { reset_already: true },
            ConnectState::Pending => Verdict::Continue { more: false },
            ConnectState::Failed(e) => Verdict::ConnectFailed(e),
        }
    }

    /// The upstream connected (`reset_already`: and was reset by its peer
    /// right after): relaying starts now, with a PROXY header first if the
    /// route sends one. `key` is the session's slot (`relay: uring` tags
    /// its operations with it).
    pub fn connected(&mut self, reset_already: bool, key: usize, now: Instant) {
        if !matches!(self.stage, Stage::Connecting(_)) {
            return;
        }
        let Stage::Connecting(a) = std::mem::replace(&mut self.stage, Stage::Closed) else {
            return;
        };
        let header = self.route.pool().proxy_protocol.map(|v| {
            let local = self.local_addr.or_else(|| self.client.local_addr().ok()).unwrap_or(self.peer_addr);
            header::Outgoing::new(v, self.client_addr, local)
        });
        let connect_time = now.saturating_duration_since(a.since);
        let pumps = Relay::pumps(self.relay_mode, self.route.socket.options(), (key, self.id), self.kept.take());
        let mut relay = Relay::new(a.upstream, pumps, std::mem::take(&mut self.client_ready), a.ready, header, now);
        relay.connect_time = connect_time;
        if reset_already {
            relay.upstream_reset_before_read();
        }
        self.stage = Stage::Relaying(relay);
    }

    /// Goes back to unconnected after the upstream was lost before any byte
    /// moved (see `Relay::retryable_loss`): the next attempt starts from
    /// scratch, with what is known of the client's readiness.
    pub fn unconnect(&mut self, res: &mut Resources) {
        if !matches!(self.stage, Stage::Relaying(_)) {
            return;
        }
        if let Stage::Relaying(mut r) = std::mem::replace(&mut self.stage, Stage::Unconnected) {
            self.client_ready = r.client_readiness();
            if r.is_uring() {
                self.kept = Some(r.into_client_pump(res));
            } else {
                r.release(res);
            }
        }
    }

    /// When the timer should fire, and which rule that is.
    pub fn due(&self, draining: bool) -> (Instant, Due) {
        let route = &self.route;
        match &self.stage {
            Stage::Header { since, .. } => (*since + route.pool().proxy_protocol_timeout, Due::Header),
            Stage::Hello(h) => (h.since + h.frontend.hello_timeout(), Due::Hello),
            Stage::Connecting(a) => (a.since + route.connect_timeout, Due::Connect),
            Stage::Relaying(r) => {
                let drain_idle = route.config.drain_close_idle_after.filter(|_| draining);
                r.due(route.idle_timeout, route.half_close_timeout, drain_idle)
            }
            Stage::Lingering(l) => (l.next_check(), Due::Linger),
            // No timer in these stages: far enough never to fire.
            Stage::Unconnected | Stage::Closed => (self.started + Duration::from_secs(365 * 86_400), Due::Idle),
        }
    }

    /// Runs both pumps and decides what follows (relaying only).
    pub fn relay_step(&mut self, res: &mut Resources, now: Instant) -> Verdict {
        let Stage::Relaying(r) = &mut self.stage else {
            return Verdict::Continue { more: false };
        };
        match r.run(&self.client, res, now) {
            Step::Continue { more } => Verdict::Continue { more },
            Step::Lost(e) => Verdict::ConnectFailed(e),
            Step::End(end) => Verdict::End(end),
        }
    }

    /// How a timer of rule `due` that fired at `now` ends the session, or
    /// `None` if it should not end it (yet).
    pub fn on_timeout(&self, due: Due) -> Option<End> {
        match (&self.stage, due) {
            (Stage::Header { .. }, _) => {
                Some(End { reason: CloseReason::BadProxyHeader, ending: Ending::RESET_CLIENT })
            }
            (Stage::Relaying(r), due) => r.on_timeout(due, &self.client),
            _ => None,
        }
    }

    /// Time since the client was accepted.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn session() -> (Session, TcpListener) {
        let config = crate::config::parse_str(
            "routes: [{ name: t, listen: \"127.0.0.1:0\", upstreams: [\"127.0.0.1:9\"] }]",
            "test",
        )
        .unwrap();
        let registry = crate::metrics::Registry::default();
        let route = Arc::new(Route::prepare(&config.routes[0], None, None, None, &registry).unwrap());
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let peer = client.local_addr().unwrap();
        let now = Instant::now();
        let accepted = Accepted { client: TcpStream::from_std(client), peer_addr: peer, listener: 0 };
        (Session::new(1, route, accepted, RelayMode::Auto, None, now), l)
    }

    fn connecting_socket(l: &TcpListener) -> TcpStream {
        TcpStream::from_std(std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap())
    }

    #[test]
    fn an_event_of_a_replaced_upstream_socket_is_not_read_as_the_new_ones() {
        let (mut s, l) = session();
        let now = Instant::now();
        s.attempt(0, 0, connecting_socket(&l), 1, now);
        // The first attempt fails; the second gets generation 2 and the same slot.
        s.drop_attempt();
        s.attempt(1, 0, connecting_socket(&l), 2, now);
        let writable = Readiness { writable: true, ..Readiness::default() };
        assert!(!s.on_event(Side::Upstream, 1, writable), "a stale event was taken");
        let Stage::Connecting(a) = &s.stage else { panic!("not connecting") };
        assert_eq!(a.ready, Readiness::default(), "the stale event left no trace on the new attempt");
        assert!(s.on_event(Side::Upstream, 2, writable));
        let Stage::Connecting(a) = &s.stage else { panic!("not connecting") };
        assert!(a.ready.writable);
        // Client events carry generation 0 and always count.
        assert!(s.on_event(Side::Client, 0, writable));
    }

    #[test]
    fn the_clients_readiness_survives_going_back_to_connecting() {
        let (mut s, l) = session();
        let now = Instant::now();
        assert!(s.on_event(Side::Client, 0, Readiness { readable: true, ..Readiness::default() }));
        s.attempt(0, 0, connecting_socket(&l), 1, now);
        s.connected(false, 0, now);
        assert!(matches!(s.stage, Stage::Relaying(_)));
        assert!(s.relay().unwrap().c2u.src_readable, "the relay learned the client had bytes");
        let mut res = Resources::new(64 << 10, 4, Arc::new(crate::pipe::PipeBudget::new(1 << 16, 64 << 10)));
        s.unconnect(&mut res);
        assert!(matches!(s.stage, Stage::Unconnected));
        assert!(s.client_ready.readable, "and keeps knowing it for the next upstream");
    }
}
