//! Every stage change of a session, written in one place: the PROXY
//! header read, the ClientHello's route, connect attempts, relaying, the
//! wait before a reset, the close. Each takes readiness and time and says
//! what should happen; the worker acts on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::{
    Attempt, Due, End, Ending, HeaderRead, HelloWait, Linger, LingerCheck, Readiness, Relay, Session, Side, Stage,
    Step, TlsInfo, Verdict, header,
};
use crate::metrics::CloseReason;
use crate::relay::Resources;
use crate::route::Route;
use crate::sys::sockets::{self, ConnectState};

impl Session {
    /// The ClientHello parser needs `need` bytes before its next step.
    pub fn need_hello_bytes(&mut self, need: usize) {
        if let Stage::Hello(h) = &mut self.stage {
            h.need = need;
        }
    }

    /// Records what its ClientHello said.
    pub fn set_tls(&mut self, info: TlsInfo) {
        self.tls = Some(Box::new(info));
    }

    /// Its ClientHello chose route `i` of its frontend: the wait ends (the
    /// hello count given back), the route becomes its own, and the hello,
    /// still queued in the socket, is for the relay to read first. `None`
    /// outside the hello wait.
    pub fn choose_route(&mut self, i: usize) -> Option<Arc<Route>> {
        if !matches!(self.stage, Stage::Hello(_)) {
            return None;
        }
        let Stage::Hello(h) = std::mem::replace(&mut self.stage, Stage::Unconnected) else {
            return None;
        };
        if std::mem::take(&mut self.hello_admitted) {
            h.frontend.release_hello(self.client_addr.ip());
        }
        let route = Arc::clone(&h.frontend.routes[i]);
        self.mark_client_readable();
        self.route = Arc::clone(&route);
        self.routed = true;
        Some(route)
    }

    /// One side failed while relaying: the relay gives back what it holds
    /// and the survivor lingers until it has the last bytes. False (and
    /// nothing changed) unless relaying.
    pub fn linger(&mut self, survivor: Side, reason: CloseReason, res: &mut Resources, now: Instant) -> bool {
        if !matches!(self.stage, Stage::Relaying(_)) {
            return false;
        }
        let Stage::Relaying(mut relay) = std::mem::replace(&mut self.stage, Stage::Closed) else {
            return false;
        };
        // The failed side's bytes are all in the survivor's socket; what the
        // survivor sent the other way can no longer be delivered.
        relay.release(res);
        self.stage = Stage::Lingering(Linger::new(relay, survivor, reason, now));
        true
    }

    /// Looks at a lingering survivor's send queue: what to do, who the
    /// survivor is and why it lingers. `None` unless lingering.
    pub fn check_linger(&mut self, now: Instant) -> Option<(LingerCheck, Side, CloseReason)> {
        let Stage::Lingering(l) = &mut self.stage else {
            return None;
        };
        let socket = match l.survivor {
            Side::Client => &self.client,
            Side::Upstream => &l.relay.upstream,
        };
        let check = l.check(crate::sys::socket_queue::unacknowledged(socket), now);
        Some((check, l.survivor, l.reason))
    }

    /// Closes it: the stage it was in comes back with what that stage held
    /// (to release and close), the ClientHello count is given back, and the
    /// session is `Closed` from now on.
    pub fn close(&mut self) -> Stage {
        let stage = std::mem::replace(&mut self.stage, Stage::Closed);
        if let Stage::Hello(h) = &stage {
            if std::mem::take(&mut self.hello_admitted) {
                h.frontend.release_hello(self.client_addr.ip());
            }
        }
        stage
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
        if side == Side::Upstream && generation != self.claim.generation {
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
        self.claim.index = index;
        self.claim.generation = generation;
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
}
