//! Every stage change of a session, written in one place: the PROXY
//! header read, the ClientHello's route, connect attempts, relaying, the
//! wait before a reset, the close. Each takes readiness and time and says
//! what should happen; the worker acts on it. A change consumes the old
//! stage and moves what the new one keeps of it (the client's readiness,
//! the claim, a kept pump) into it; what no stage keeps comes back to the
//! worker (a claim to give back, a closed session's `Remains`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::{
    Attempt, Claim, Due, End, Ending, HeaderRead, HelloWait, Linger, LingerCheck, Readiness, Relay, Remains, Session,
    Side, Stage, Step, TlsInfo, Verdict, header,
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
        let Stage::Hello(h) = std::mem::replace(&mut self.stage, Stage::Closed) else {
            return None;
        };
        if h.admitted {
            h.frontend.release_hello(self.client_addr.ip());
        }
        let route = Arc::clone(&h.frontend.routes[i]);
        // The ClientHello was only peeked at: no new event will announce it.
        let client_ready = Readiness { readable: true, ..h.client_ready };
        self.stage = Stage::Unconnected { client_ready, kept: None };
        self.route = Arc::clone(&route);
        self.routed = true;
        Some(route)
    }

    /// One side failed while relaying: the relay gives back what it holds
    /// and the survivor lingers until it has the last bytes. False (and
    /// nothing changed) unless relaying.
    pub fn linger(&mut self, survivor: Side, reason: CloseReason, res: &mut Resources, now: Instant) -> bool {
        if !matches!(self.stage, Stage::Relaying(..)) {
            return false;
        }
        let Stage::Relaying(mut relay, claim) = std::mem::replace(&mut self.stage, Stage::Closed) else {
            return false;
        };
        // The failed side's bytes are all in the survivor's socket; what the
        // survivor sent the other way can no longer be delivered.
        relay.release(res);
        self.stage = Stage::Lingering(Linger::new(relay, survivor, reason, now), claim);
        true
    }

    /// Looks at a lingering survivor's send queue: what to do, who the
    /// survivor is and why it lingers. `None` unless lingering.
    pub fn check_linger(&mut self, now: Instant) -> Option<(LingerCheck, Side, CloseReason)> {
        let Stage::Lingering(l, _) = &mut self.stage else {
            return None;
        };
        let socket = match l.survivor {
            Side::Client => &self.client,
            Side::Upstream => &l.relay.upstream,
        };
        let check = l.check(crate::sys::socket_queue::unacknowledged(socket), now);
        Some((check, l.survivor, l.reason))
    }

    /// Closes it: what its stage held comes back (to give back and close),
    /// the ClientHello count is given back, and the session is `Closed`
    /// from now on. `None` if it was closed already.
    pub fn close(&mut self) -> Option<Remains> {
        let remains = match std::mem::replace(&mut self.stage, Stage::Closed) {
            Stage::Closed => return None,
            Stage::Hello(h) => {
                if h.admitted {
                    h.frontend.release_hello(self.client_addr.ip());
                }
                Remains::default()
            }
            Stage::Header { .. } => Remains::default(),
            Stage::Unconnected { kept, .. } => Remains { kept, ..Remains::default() },
            Stage::Connecting(a) => {
                Remains { attempt: Some(a.upstream), claim: Some(a.claim), kept: a.kept, ..Remains::default() }
            }
            Stage::Relaying(r, claim) => Remains { relay: Some(r), claim: Some(claim), ..Remains::default() },
            Stage::Lingering(l, claim) => Remains { relay: Some(l.relay), claim: Some(claim), ..Remains::default() },
        };
        Some(remains)
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
            let (then, client_ready) = match std::mem::replace(&mut self.stage, Stage::Closed) {
                Stage::Header { then, client_ready, .. } => (then, client_ready),
                other => {
                    debug_assert!(false, "a PROXY header is read only while waiting for one");
                    self.stage = other;
                    return read;
                }
            };
            // Payload may follow in the same segment: the next stage must look.
            let client_ready = Readiness { readable: true, ..client_ready };
            self.stage = match then {
                Some(f) => Stage::Hello(HelloWait::new(f, now, client_ready)),
                None => Stage::Unconnected { client_ready, kept: None },
            };
        }
        read
    }

    /// The client half-closed or failed, as far as its events said (before relaying).
    pub fn client_hup(&self) -> bool {
        self.stage.client_ready().is_some_and(|r| r.hup)
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
            (Stage::Relaying(r, _), _) => r.on_event(side, ready),
            (Stage::Connecting(a), Side::Upstream) => a.ready.absorb(ready),
            (Stage::Lingering(..) | Stage::Closed, _) => {}
            (stage, Side::Client) => {
                if let Some(client_ready) = stage.client_ready_mut() {
                    client_ready.absorb(ready);
                }
            }
            (_, Side::Upstream) => return false, // no upstream socket in this stage
        }
        true
    }

    /// Starts an attempt on `claim`'s upstream with a freshly
    /// connecting socket (registered by the worker with `generation`). Only
    /// from unconnected, whose client readiness and kept pump it takes on.
    pub fn attempt(&mut self, claim: Claim, upstream: TcpStream, generation: u32, now: Instant) {
        let (client_ready, kept) = match std::mem::replace(&mut self.stage, Stage::Closed) {
            Stage::Unconnected { client_ready, kept } => (client_ready, kept),
            other => {
                debug_assert!(false, "an attempt starts from unconnected, not {}", other.name());
                (Readiness::default(), None)
            }
        };
        self.upstream_generation = generation;
        let ready = Readiness::default();
        self.stage = Stage::Connecting(Attempt { upstream, since: now, ready, claim, client_ready, kept });
    }

    /// Drops the current attempt's socket (it failed): the session is
    /// unconnected until the next attempt, and the attempt's claim comes
    /// back to be given back. `None` (and nothing changed) unless connecting.
    #[must_use = "the attempt's claim is to be given back"]
    pub fn drop_attempt(&mut self) -> Option<Claim> {
        if !matches!(self.stage, Stage::Connecting(_)) {
            return None;
        }
        let Stage::Connecting(a) = std::mem::replace(&mut self.stage, Stage::Closed) else {
            return None;
        };
        self.stage = Stage::Unconnected { client_ready: a.client_ready, kept: a.kept };
        Some(a.claim)
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
    /// its operations with it). True if the attempt was the half-open try
    /// of an ejected upstream (its success is the caller's to report).
    pub fn connected(&mut self, reset_already: bool, key: usize, now: Instant) -> bool {
        if !matches!(self.stage, Stage::Connecting(_)) {
            return false;
        }
        let Stage::Connecting(a) = std::mem::replace(&mut self.stage, Stage::Closed) else {
            return false;
        };
        let header = self.route.pool().proxy_protocol.map(|v| {
            // A captured client's header names where it was really going.
            let local = self
                .original_dst
                .or(self.local_addr)
                .or_else(|| self.client.local_addr().ok())
                .unwrap_or(self.peer_addr);
            header::Outgoing::new(v, self.client_addr, local)
        });
        let connect_time = now.saturating_duration_since(a.since);
        let pumps = Relay::pumps(self.relay_mode, self.route.socket.options(), (key, self.id), a.kept);
        let mut relay = Relay::new(a.upstream, pumps, a.client_ready, a.ready, header, now);
        relay.connect_time = connect_time;
        if self.relay_mode == crate::config::RelayMode::Sockmap {
            relay.with_kernel(&self.client, now);
        }
        if reset_already {
            relay.upstream_reset_before_read();
        }
        let (claim, probed) = a.claim.connected();
        self.stage = Stage::Relaying(relay, claim);
        probed
    }

    /// Goes back to unconnected after the upstream was lost before any byte
    /// moved (see `Relay::retryable_loss`): the next attempt starts from
    /// scratch, with what is known of the client's readiness; the relay's
    /// claim comes back to be given back. `None` (and nothing changed)
    /// unless relaying.
    #[must_use = "the relay's claim is to be given back"]
    pub fn unconnect(&mut self, res: &mut Resources) -> Option<Claim> {
        if !matches!(self.stage, Stage::Relaying(..)) {
            return None;
        }
        let Stage::Relaying(mut r, claim) = std::mem::replace(&mut self.stage, Stage::Closed) else {
            return None;
        };
        let client_ready = r.client_readiness();
        let kept = if r.is_uring() {
            Some(r.into_client_pump(res))
        } else {
            r.release(res);
            None
        };
        self.stage = Stage::Unconnected { client_ready, kept };
        Some(claim)
    }

    /// When the timer should fire, and which rule that is.
    pub fn due(&self, draining: bool) -> (Instant, Due) {
        let route = &self.route;
        match &self.stage {
            Stage::Header { since, .. } => (*since + route.pool().proxy_protocol_timeout, Due::Header),
            Stage::Hello(h) => (h.since + h.frontend.hello_timeout(), Due::Hello),
            Stage::Connecting(a) => (a.since + route.connect_timeout, Due::Connect),
            Stage::Relaying(r, _) => {
                let drain_idle = route.config.drain_close_idle_after.filter(|_| draining);
                r.due(route.idle_timeout, route.half_close_timeout, drain_idle)
            }
            Stage::Lingering(l, _) => (l.next_check(), Due::Linger),
            // No timer in these stages: far enough never to fire.
            Stage::Unconnected { .. } | Stage::Closed => (self.started + Duration::from_secs(365 * 86_400), Due::Idle),
        }
    }

    /// Runs both pumps and decides what follows (relaying only).
    pub fn relay_step(&mut self, res: &mut Resources, now: Instant) -> Verdict {
        let Stage::Relaying(r, _) = &mut self.stage else {
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
            (Stage::Relaying(r, _), due) => r.on_timeout(due, &self.client),
            _ => None,
        }
    }
}
