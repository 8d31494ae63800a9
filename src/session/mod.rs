//! One client↔upstream pair through its stages: waiting for the client's
//! PROXY header, then (on an address routed by name) for its TLS
//! ClientHello, choosing and connecting an upstream, relaying, and — when
//! one side failed — waiting for the survivor to receive the last bytes
//! before its reset. Each stage owns its data (`Connecting` the attempt's
//! socket, `Relaying` the upstream socket and both pumps, the stages
//! before relaying what the client's events said), so relaying without an
//! upstream cannot be written down; and the claim on an upstream is a value
//! the stages that have an upstream hand on and the last one gives back, so
//! it is given back exactly once.
//!
//! The session decides; the worker acts. Methods here take readiness and
//! time and return what should happen (keep going, try the next upstream,
//! end this way for this reason); the worker owns the poll registry, the
//! timers, the pools and the metrics. Its fields are private: the worker
//! reads them through methods and only the session changes its stage.
//!
//! # Files
//! - `mod.rs`: the `Session`, what it holds for its whole life and counts (its admissions, its
//!   bytes reported), and what the worker reads of it;
//! - `side.rs`: the words every file here uses (`Side`, `Readiness`);
//! - `stage.rs`: the stages and what each holds, the verdicts the worker gets, what a close gives back;
//! - `claim.rs`: the claim on an upstream, held by the stages that have one and given back once;
//! - `lifecycle.rs`: every stage change;
//! - `relay.rs`: the relaying stage;
//! - `kernel.rs`: `relay: sockmap`, the directions the kernel relays and how they come back;
//! - `relay_kernel.rs`: what the relay and the session do with that kernel part (arming, the timer's look, the sockets' registrations);
//! - `ending.rs`: the rules for how a session ends;
//! - `linger.rs`: the wait before a reset;
//! - `header.rs`: PROXY header I/O;
//! - `tried.rs`: the upstreams tried;
//! - `uring.rs`: what a session does with its io_uring completions.

mod claim;
mod ending;
pub mod header;
mod kernel;
mod lifecycle;
mod linger;
mod relay;
mod relay_kernel;
mod side;
mod stage;
mod tried;
mod uring;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

pub use claim::Claim;
pub use ending::{Due, End, Ending};
pub use header::HeaderRead;
pub use linger::{Linger, LingerCheck};
pub use relay::{Relay, Step};
pub use side::{Readiness, Side};
pub use stage::{Attempt, HelloWait, Remains, Stage, TlsInfo, Verdict};
pub use tried::Tried;

use crate::config::RelayMode;
use crate::frontend::Frontend;
use crate::route::Route;
use crate::timer::Deadline;

/// Bytes delivered, `[client→upstream, upstream→client][spliced, copied, uring]`.
pub type ByteCounts = [[u64; 4]; 2];

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
    /// and metrics (false while a ClientHello is still to choose it). Not
    /// stage data: the close and the access line after it read it.
    routed: bool,
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
    /// Where the client was really going (a capture address: see
    /// `worker::capture`): where a pass-through route connects, what the
    /// access log's `dst` and our PROXY header's destination say.
    original_dst: Option<SocketAddr>,
    /// The local address of its pass-through upstream connection, while the
    /// process's loop guard holds it (taken out at the close).
    guarded: Option<SocketAddr>,
    /// The worker's listener it came from (whose balancer retries use).
    listener: usize,
    /// How its pumps move bytes.
    relay_mode: RelayMode,
    /// Where it is in its life, with that stage's data (the client's
    /// readiness before relaying, the claim on an upstream, the pump kept
    /// between upstreams, the ClientHello count).
    stage: Stage,
    /// Generation of the newest upstream socket's token (see
    /// `worker::token`): not the claim's, since the next attempt's follows
    /// it after the claim was given back.
    upstream_generation: u32,
    /// Upstreams tried so far (one per attempt; the last is the current or last one).
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
    /// Where it was really going, read at accept on a capture address.
    pub original_dst: Option<SocketAddr>,
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
        let Accepted { client, peer_addr, listener, original_dst } = accepted;
        let routed = inspect.is_none();
        let client_ready = Readiness::default();
        let stage = if route.pool().accept_proxy_protocol {
            Stage::Header { since: now, then: inspect, client_ready }
        } else if let Some(f) = inspect {
            Stage::Hello(HelloWait::new(f, now, client_ready))
        } else {
            Stage::Unconnected { client_ready, kept: None }
        };
        Session {
            id,
            route,
            routed,
            tls: None,
            client,
            client_addr: peer_addr,
            peer_addr,
            local_addr: None,
            original_dst,
            guarded: None,
            listener,
            relay_mode,
            stage,
            upstream_generation: 0,
            tried: Tried::default(),
            client_admitted: false,
            timer: None,
            started: now,
            reported: [[0; 4]; 2],
            last_access_line: now,
            queued: false,
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

    /// Where the client was really going (a capture address), if known.
    pub fn original_dst(&self) -> Option<SocketAddr> {
        self.original_dst
    }

    /// Its route sends it to its original destination (`original_destination: true`).
    pub fn passes_through(&self) -> bool {
        self.route.config.original_destination
    }

    /// Its pass-through connection leaves from `local`, now in the loop
    /// guard (the bound address first, then the full one once connect chose it).
    pub fn guard(&mut self, local: SocketAddr) {
        self.guarded = Some(local);
    }

    /// The local address to take out of the loop guard (once).
    pub fn take_guarded(&mut self) -> Option<SocketAddr> {
        self.guarded.take()
    }

    /// The worker's listener it came from.
    pub fn listener(&self) -> usize {
        self.listener
    }

    /// Where it is in its life.
    pub fn stage(&self) -> &Stage {
        &self.stage
    }

    /// Generation of the newest upstream socket's token.
    pub fn upstream_generation(&self) -> u32 {
        self.upstream_generation
    }

    /// Upstreams tried so far.
    pub fn tried(&self) -> &Tried {
        &self.tried
    }

    /// When the armed timer fires.
    pub fn timer_at(&self) -> Option<Instant> {
        self.timer.map(|(_, at)| at)
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
        self.admit_hello(hello);
    }

    /// Counted (or not) in the route's per-client sessions, once its route is known.
    pub fn admit_client(&mut self, counted: bool) {
        self.client_admitted = counted;
    }

    /// Counted (or not) among the clients still sending a ClientHello (its
    /// ClientHello wait holds the count; no other stage has one).
    pub fn admit_hello(&mut self, counted: bool) {
        match &mut self.stage {
            Stage::Hello(h) => h.admitted = counted,
            _ => debug_assert!(!counted, "only a session waiting for its ClientHello counts among those"),
        }
    }

    /// Takes upstream `index` for the next attempt: tried, counted in its
    /// active sessions, and the half-open try of an ejected one if
    /// `probing`. The claim goes to `attempt` (or, if the attempt cannot
    /// start, is given back by the caller).
    pub fn claim(&mut self, index: usize, probing: bool) -> Claim {
        self.tried.push(index);
        Claim::take(&self.route, index, probing)
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

    /// The address of the current upstream (a pass-through route's: the
    /// original destination).
    pub fn upstream_addr(&self) -> SocketAddr {
        match self.original_dst {
            Some(dst) if self.passes_through() => dst,
            _ => self.upstream().addr,
        }
    }

    /// The current upstream (the last tried; also after the close).
    pub fn upstream(&self) -> &crate::upstream::Upstream {
        &self.route.upstreams.upstreams[self.tried.last().unwrap_or(0)]
    }

    /// How its pumps will move bytes, set again when its ClientHello chose
    /// a route (before relaying: a relay keeps the pumps it started with).
    pub fn set_relay_mode(&mut self, mode: RelayMode) {
        debug_assert!(self.relay().is_none(), "the relay mode changes only before relaying");
        self.relay_mode = mode;
    }

    /// The relay, while relaying or lingering.
    pub fn relay(&self) -> Option<&Relay> {
        match &self.stage {
            Stage::Relaying(r, _) => Some(r),
            Stage::Lingering(l, _) => Some(&l.relay),
            _ => None,
        }
    }

    /// Bytes delivered so far each way.
    pub fn bytes(&self) -> ByteCounts {
        self.relay().map_or([[0; 4]; 2], Relay::bytes)
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
        let accepted =
            Accepted { client: TcpStream::from_std(client), peer_addr: peer, listener: 0, original_dst: None };
        (Session::new(1, route, accepted, RelayMode::Auto, None, now), l)
    }

    fn connecting_socket(l: &TcpListener) -> TcpStream {
        TcpStream::from_std(std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap())
    }

    #[test]
    fn an_event_of_a_replaced_upstream_socket_is_not_read_as_the_new_ones() {
        let (mut s, l) = session();
        let now = Instant::now();
        let claim = s.claim(0, false);
        s.attempt(claim, connecting_socket(&l), 1, now);
        // The first attempt fails; the second gets generation 2 and the same slot.
        let _given_back = s.drop_attempt();
        let claim = s.claim(0, false);
        s.attempt(claim, connecting_socket(&l), 2, now);
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
        let claim = s.claim(0, false);
        s.attempt(claim, connecting_socket(&l), 1, now);
        s.connected(false, 0, now);
        assert!(matches!(s.stage, Stage::Relaying(..)));
        assert!(s.relay().unwrap().c2u.src.readable, "the relay learned the client had bytes");
        let mut res = Resources::new(64 << 10, 4, Arc::new(crate::relay::pipe::PipeBudget::new(1 << 16, 64 << 10)));
        let _given_back = s.unconnect(&mut res);
        assert!(matches!(s.stage, Stage::Unconnected { .. }));
        let Stage::Unconnected { client_ready, .. } = &s.stage else { panic!("not unconnected") };
        assert!(client_ready.readable, "and keeps knowing it for the next upstream");
    }
}
