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
//! timers, the pools and the metrics. Its fields are private: the worker
//! reads them through methods and only the session changes its stage.
//!
//! # Files
//! - `mod.rs`: the `Session`, what it holds and counts (its upstream claim, its admissions), and
//!   the words every file here uses (`Side`, `Readiness`);
//! - `stage.rs`: the stages and what each holds, and the verdicts the worker gets;
//! - `lifecycle.rs`: every stage change;
//! - `relay.rs`: the relaying stage;
//! - `ending.rs`: the rules for how a session ends;
//! - `linger.rs`: the wait before a reset;
//! - `header.rs`: PROXY header I/O;
//! - `tried.rs`: the upstreams tried;
//! - `uring.rs`: what a session does with its io_uring completions.

mod ending;
pub mod header;
mod lifecycle;
mod linger;
mod relay;
mod stage;
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
pub use stage::{Attempt, HelloWait, Stage, TlsInfo, Verdict};
pub use tried::{MAX_ATTEMPTS, Tried};

use crate::config::RelayMode;
use crate::frontend::Frontend;
use crate::route::Route;
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

/// Bytes delivered, `[client→upstream, upstream→client][spliced, copied, uring]`.
pub type ByteCounts = [[u64; 3]; 2];

/// The upstream a session holds while it tries one and relays to it:
/// which of the route's upstreams, the generation of its socket's token,
/// and what the session counts in that upstream's health. Each count is
/// given back once: `Session::release_count` and `release_probe` take it.
#[derive(Debug, Default)]
struct Claim {
    /// Index in `route.upstreams` of the current (or last tried) upstream.
    index: usize,
    /// Generation of the current upstream socket (see `worker::token`).
    generation: u32,
    /// Counted in the upstream's active sessions.
    counted: bool,
    /// The one half-open try of an ejected upstream.
    probing: bool,
}

/// One session. Its fields are its own: the worker reads them through
/// methods and changes them only by asking (`claim`, `linger`, `close`,
/// `choose_route`…), so every stage change is written here.
#[derive(Debug)]
pub struct Session {
    /// Unique within the process, for logs.
    id: u64,
    /// The route it came in on (on an address routed by name, until its
    /// ClientHello chose one: the address's first route, and `routed` false).
    route: Arc<Route>,
    /// `route` is really this session's: it counts in the route's sessions
    /// and metrics (false while a ClientHello is still to choose it).
    routed: bool,
    /// Counted among the clients still sending a ClientHello (to release).
    hello_admitted: bool,
    /// What its ClientHello said (addresses routed by name).
    tls: Option<Box<TlsInfo>>,
    /// The client's socket.
    client: TcpStream,
    /// Who the client is: the PROXY header's source when the route accepts
    /// one, else the peer. ACLs, hashing, per-client limits and logs use it.
    client_addr: SocketAddr,
    /// Who connected to us.
    peer_addr: SocketAddr,
    /// The address the client connected to, from its PROXY header (else the socket's own).
    local_addr: Option<SocketAddr>,
    /// The worker's listener it came from (whose balancer retries use).
    listener: usize,
    /// How its pumps move bytes.
    relay_mode: RelayMode,
    /// Where it is in its life, with that stage's data.
    stage: Stage,
    /// What the client's events said while no relay held its pumps.
    client_ready: Readiness,
    /// The current (or last tried) upstream, and what is counted in it.
    claim: Claim,
    /// Upstreams tried so far (one per attempt).
    tried: Tried,
    /// Counted in the route's per-client sessions (to release at close).
    client_admitted: bool,
    /// The armed timer (to cancel it) and when it fires.
    timer: Option<(Deadline, Instant)>,
    /// When the client was accepted.
    started: Instant,
    /// Bytes already added to the route's metrics while it ran.
    reported: ByteCounts,
    /// When the last periodic access line was written (or the session started).
    last_access_line: Instant,
    /// Queued on the worker's list of sessions to run again before the next poll.
    queued: bool,
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
            claim: Claim::default(),
            tried: Tried::default(),
            client_admitted: false,
            timer: None,
            started: now,
            reported: [[0; 3]; 2],
            last_access_line: now,
            queued: false,
            kept: None,
        }
    }

    /// Unique within the process, for logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The route it came in on (see `routed`).
    pub fn route(&self) -> &Arc<Route> {
        &self.route
    }

    /// Its route is really its own: it counts in that route's sessions and
    /// metrics (false while a ClientHello is still to choose it).
    pub fn routed(&self) -> bool {
        self.routed
    }

    /// What its ClientHello said (addresses routed by name).
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_deref()
    }

    /// The client's socket.
    pub fn client(&self) -> &TcpStream {
        &self.client
    }

    /// The client's socket, to register with a poll.
    pub fn client_mut(&mut self) -> &mut TcpStream {
        &mut self.client
    }

    /// Who the client is: the PROXY header's source when the route accepts
    /// one, else the peer.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// Who connected to us.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The address the client connected to, from its PROXY header.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The worker's listener it came from.
    pub fn listener(&self) -> usize {
        self.listener
    }

    /// Where it is in its life.
    pub fn stage(&self) -> &Stage {
        &self.stage
    }

    /// Index in its route's upstreams of the current (or last tried) upstream.
    pub fn upstream_index(&self) -> usize {
        self.claim.index
    }

    /// Generation of the current upstream socket's token.
    pub fn upstream_generation(&self) -> u32 {
        self.claim.generation
    }

    /// Upstreams tried so far.
    pub fn tried(&self) -> &Tried {
        &self.tried
    }

    /// When the armed timer fires.
    pub fn timer_at(&self) -> Option<Instant> {
        self.timer.map(|(_, at)| at)
    }

    /// When the client was accepted.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Bytes already added to the route's metrics while it ran.
    pub fn reported(&self) -> ByteCounts {
        self.reported
    }

    /// When the last periodic access line was written (or the session started).
    pub fn last_access_line(&self) -> Instant {
        self.last_access_line
    }

    /// Counted in the route's per-client sessions.
    pub fn client_admitted(&self) -> bool {
        self.client_admitted
    }

    /// What the accept counted it in: the route's per-client sessions, the
    /// address's clients still sending a ClientHello.
    pub fn admitted(&mut self, client: bool, hello: bool) {
        self.client_admitted = client;
        self.hello_admitted = hello;
    }

    /// Counted (or not) in the route's per-client sessions, once its route is known.
    pub fn admit_client(&mut self, counted: bool) {
        self.client_admitted = counted;
    }

    /// Counted (or not) among the clients still sending a ClientHello, once its PROXY header was read.
    pub fn admit_hello(&mut self, counted: bool) {
        self.hello_admitted = counted;
    }

    /// Takes upstream `index` for the next attempt: tried, counted in its
    /// active sessions, and the half-open try of an ejected one if `probing`.
    pub fn claim(&mut self, index: usize, probing: bool) {
        self.tried.push(index);
        self.claim.index = index;
        self.claim.probing = probing;
        self.claim.counted = true;
    }

    /// Gives back the count in the upstream's active sessions: true the
    /// first time after a `claim`, false after.
    pub fn release_count(&mut self) -> bool {
        std::mem::take(&mut self.claim.counted)
    }

    /// Gives back the half-open try: true the first time after a probing `claim`.
    pub fn release_probe(&mut self) -> bool {
        std::mem::take(&mut self.claim.probing)
    }

    /// Arms its timer: `deadline` fires at `at` (the one it had is `take_timer`'s to cancel first).
    pub fn set_timer(&mut self, deadline: Deadline, at: Instant) {
        debug_assert!(self.timer.is_none(), "a session's timer is cancelled before another is armed");
        self.timer = Some((deadline, at));
    }

    /// Disarms its timer, returning the one it had.
    pub fn take_timer(&mut self) -> Option<Deadline> {
        self.timer.take().map(|(d, _)| d)
    }

    /// Records the bytes added to the route's metrics so far.
    pub fn set_reported(&mut self, bytes: ByteCounts) {
        self.reported = bytes;
    }

    /// Records that a periodic access line was written at `now`.
    pub fn access_line_written(&mut self, now: Instant) {
        self.last_access_line = now;
    }

    /// Queues it to run again before the next poll: true if it was not queued yet.
    pub fn queue(&mut self) -> bool {
        !std::mem::replace(&mut self.queued, true)
    }

    /// Takes it off the queue (whatever its stage).
    pub fn unqueue(&mut self) {
        self.queued = false;
    }

    /// The address of the current upstream.
    pub fn upstream_addr(&self) -> SocketAddr {
        self.upstream().addr
    }

    /// The current upstream.
    pub fn upstream(&self) -> &crate::upstream::Upstream {
        &self.route.upstreams.upstreams[self.claim.index]
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

    /// Time since the client was accepted.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::Resources;
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
        let mut res = Resources::new(64 << 10, 4, Arc::new(crate::relay::pipe::PipeBudget::new(1 << 16, 64 << 10)));
        s.unconnect(&mut res);
        assert!(matches!(s.stage, Stage::Unconnected));
        assert!(s.client_ready.readable, "and keeps knowing it for the next upstream");
    }
}
