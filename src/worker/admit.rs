//! What happens to an accepted client before its upstream is chosen: the
//! session is made, the client's PROXY header read (`accept_proxy_protocol`),
//! and the client admitted by its route (access list, per-client limit) or
//! refused with a reset and counted. On an address routed by name the route
//! is only known after the ClientHello (`hello.rs`); until then the client
//! counts against the address's limit of unrouted clients. On a capture
//! address the route is chosen by the client's original destination first
//! (`capture.rs`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use mio::Interest;
use mio::net::TcpStream;

use super::{Worker, token};
use crate::metrics::{CloseReason, Refusal, WorkerCounters};
use crate::process::ProcessState;
use crate::ratelimit::Admit;
use crate::route::Route;
use crate::session::{Accepted, End, Ending, HeaderRead, Session, Side, Stage};
use crate::sys::sockets;

impl Worker {
    /// A client was accepted on listener `li`: check it, make its session,
    /// and start reading its header or hello, or connecting.
    pub(super) fn start_session(&mut self, li: usize, client: TcpStream, peer: SocketAddr, now: Instant) {
        WorkerCounters::inc(&self.metrics.counters.accepted);
        let frontend = Arc::clone(&self.listeners[li].frontend);
        let mut original_dst = None;
        let route = if frontend.captures {
            match self.capture(&frontend, &client, peer) {
                Ok(c) => {
                    original_dst = Some(c.dst);
                    Arc::clone(&frontend.routes[c.route])
                }
                Err((close, counted_in)) => {
                    sockets::reset_on_close(&client);
                    if let Some(r) = counted_in.map(|i| &frontend.routes[i]) {
                        let mut st = self.metrics.stats();
                        st.route(r.metric_id).accepted += 1;
                        st.route(r.metric_id).closed[close as usize] += 1;
                    }
                    return;
                }
            }
        } else {
            Arc::clone(frontend.first())
        };
        let accept_header = route.pool().accept_proxy_protocol;
        let inspect = frontend.inspects();
        if !inspect {
            // (A client of an address routed by name counts in its route once its hello chose it.)
            self.metrics.stats().route(route.metric_id).accepted += 1;
        }
        let shedding =
            self.shared.overload.refuse(self.shared.active.load(Ordering::Relaxed), self.shared.pipes.held());
        // Without a PROXY header the peer is the client: check it before anything is allocated.
        if shedding || !accept_header {
            let refused = if shedding {
                Some(self.refuse(&route, peer, Refused::Overload))
            } else if frontend.destinations.is_some() && route.at_limit() {
                // Several routes by destination: the listener can't pause for one of them.
                Some(self.refuse(&route, peer, Refused::RouteLimit))
            } else if inspect {
                (!frontend.admit_hello(peer.ip())).then(|| self.refuse_unrouted(&frontend, peer))
            } else {
                admission(&self.shared, &route, peer, now).map(|reason| self.refuse(&route, peer, reason))
            };
            if let Some(close) = refused {
                // A reset tells the client at once and leaves no TIME_WAIT here.
                sockets::reset_on_close(&client);
                if !inspect {
                    // No session was made: its close is counted here.
                    self.metrics.stats().route(route.metric_id).closed[close as usize] += 1;
                }
                return; // dropping the socket closes it
            }
        }
        self.shared.active.fetch_add(1, Ordering::Relaxed);
        if !inspect {
            route.socket.client(&client);
            route.state.active.fetch_add(1, Ordering::Relaxed);
        }
        let id = self.next_id;
        self.next_id += self.id_stride;
        let relay = self.relay_mode(&route);
        let accepted = Accepted { client, peer_addr: peer, listener: li, original_dst };
        let session = Session::new(id, route, accepted, relay, inspect.then(|| Arc::clone(&frontend)), now);
        let entry = self.sessions.vacant_entry();
        let key = entry.key();
        let s = entry.insert(session);
        let per_client = s.route().max_connections_per_client.is_some();
        s.admitted(
            !accept_header && !inspect && per_client,
            !accept_header && inspect && frontend.hello_limit().is_some(),
        );
        let registered = match token::session(key, Side::Client, 0) {
            Some(tok) => self.poll.registry().register(s.client_mut(), tok, Interest::READABLE | Interest::WRITABLE),
            None => Err(io::Error::other("too many sessions in this worker")),
        };
        if let Err(e) = registered {
            // The poll is this host's (epoll watches, memory): a local error, no upstream involved.
            if let Some(cause) = crate::local_error::classify(&e) {
                self.metrics.count_local_error(self.sessions[key].route().metric_id, cause);
            }
            self.warn(format!("cannot register client {peer}: {e}; resetting it"));
            self.close(key, End { reason: CloseReason::LocalError, ending: Ending::RESET_CLIENT }, now);
            return;
        }
        log::trace!("session {}: client {peer} on {}", self.sessions[key].id(), self.sessions[key].route().listen);
        match self.sessions[key].stage() {
            // The header's (or hello's) timeout runs from now; it is read when the client is readable.
            Stage::Header { .. } | Stage::Hello(_) => {
                let (deadline, _) = self.sessions[key].due(self.draining);
                self.arm(key, deadline);
            }
            _ => self.connect(key, String::new(), now),
        }
    }

    /// The client's PROXY header may have arrived: read it, then admit the
    /// client it names (access list, per-client limit) and connect — or,
    /// on an address routed by name, go on to its ClientHello.
    pub(super) fn on_header(&mut self, key: usize, now: Instant) {
        let s = &mut self.sessions[key];
        match s.read_proxy_header(now) {
            HeaderRead::Wait => {}
            HeaderRead::Invalid(why) => {
                self.metrics.count_refusal(s.route().metric_id, Refusal::BadProxyHeader);
                log::debug!("listener {}: client {}: bad PROXY header: {why}", s.route().listen, s.peer_addr());
                self.close(key, End { reason: CloseReason::BadProxyHeader, ending: Ending::RESET_CLIENT }, now);
            }
            HeaderRead::Done(_) => {
                let client = s.client_addr();
                log::trace!("session {}: PROXY header from {} says client {client}", s.id(), s.peer_addr());
                if let Stage::Hello(h) = s.stage() {
                    let frontend = Arc::clone(&h.frontend);
                    if !frontend.admit_hello(client.ip()) {
                        let close = self.refuse_unrouted(&frontend, client);
                        return self.close(key, End { reason: close, ending: Ending::RESET_CLIENT }, now);
                    }
                    let s = &mut self.sessions[key];
                    s.admit_hello(frontend.hello_limit().is_some());
                    let (deadline, _) = s.due(self.draining);
                    self.arm(key, deadline);
                    // The hello may have come with the header: no new event would say so.
                    return self.on_hello(key, now);
                }
                let route = Arc::clone(s.route());
                if let Some(reason) = admission(&self.shared, &route, client, now) {
                    let close = self.refuse(&route, client, reason);
                    self.close(key, End { reason: close, ending: Ending::RESET_CLIENT }, now);
                    return;
                }
                self.sessions[key].admit_client(route.max_connections_per_client.is_some());
                self.connect(key, String::new(), now);
            }
        }
    }

    /// Counts (on its route) and logs a refused client, and says which close
    /// reason it is (the caller resets it: a reset tells the client at once
    /// and leaves no TIME_WAIT here).
    pub(super) fn refuse(&self, route: &Route, client: SocketAddr, reason: Refused) -> CloseReason {
        let (counted, close) = match reason {
            Refused::Acl(_) => (Refusal::Acl, CloseReason::Denied),
            Refused::ClientLimit(_) => (Refusal::ClientLimit, CloseReason::Refused),
            Refused::Rate(_) => (Refusal::RateLimited, CloseReason::RateLimited),
            Refused::Overload => (Refusal::Overload, CloseReason::Overloaded),
            Refused::RouteLimit => (Refusal::RouteLimit, CloseReason::Refused),
        };
        self.metrics.count_refusal(route.metric_id, counted);
        match reason {
            Refused::Acl(why) => log::debug!("route {}: refused {client}: {why}", route.name),
            Refused::ClientLimit(limit) => log::debug!(
                "route {}: refused {client}: it already has {limit} sessions (max_connections_per_client)",
                route.name
            ),
            Refused::Rate(key) => {
                log::debug!("route {}: refused {client}: over {key}", route.name);
                rate_warning(&self.shared, route, key);
            }
            Refused::Overload => log::debug!("route {}: refused {client}: shedding load (overload)", route.name),
            Refused::RouteLimit => log::debug!("route {}: refused {client}: at max_connections", route.name),
        }
        close
    }

    /// A client refused before its ClientHello chose a route: it holds as
    /// many unrouted connections as any route of the address would let it
    /// have. Counted on the address's first route.
    fn refuse_unrouted(&self, frontend: &crate::frontend::Frontend, client: SocketAddr) -> CloseReason {
        self.metrics.count_refusal(frontend.first().metric_id, Refusal::ClientLimit);
        log::debug!(
            "listener {}: refused {client}: it already has {} connections sending their ClientHello",
            frontend.first().listen,
            frontend.hello_limit().unwrap_or(0)
        );
        CloseReason::Refused
    }
}

/// Why a client may not have a session.
#[derive(Clone, Copy, Debug)]
pub(super) enum Refused {
    Acl(crate::acl::Refusal),
    ClientLimit(usize),
    /// Over the named rate key.
    Rate(&'static str),
    Overload,
    /// The route (one of several on a capture address) is at `max_connections`.
    RouteLimit,
}

/// Checks, in this order, the route's access list, its per-client limit
/// and its connection rates for `client`, counting it in the limit and
/// charging the rates only if it is admitted: a client refused for one
/// reason spends nothing of the others (its own rate budget is not spent
/// when the route's rate or the per-client count refuses it, and the
/// route's is not spent when its own rate does).
pub(super) fn admission(shared: &ProcessState, route: &Route, client: SocketAddr, now: Instant) -> Option<Refused> {
    let acl = &route.pool().acl;
    if !acl.is_open() {
        if let Some(why) = acl.check(client.ip()) {
            return Some(Refused::Acl(why));
        }
    }
    let counted = match route.max_connections_per_client {
        Some(limit) if !route.state.admit_client(client.ip(), limit) => return Some(Refused::ClientLimit(limit)),
        Some(_) => true,
        None => false,
    };
    let refused = rates(shared, route, client, now);
    if refused.is_some() && counted {
        route.state.release_client(client.ip());
    }
    refused
}

/// The route's connection rates: the client's own (if set) and the route's,
/// each charged only if both admit.
fn rates(shared: &ProcessState, route: &Route, client: SocketAddr, now: Instant) -> Option<Refused> {
    if route.max_connection_rate.is_none() && route.max_connection_rate_per_client.is_none() {
        return None;
    }
    let limiter = shared.limiter.get_or_init(crate::ratelimit::Limiter::default);
    let route_rate = || route.max_connection_rate.is_none_or(|rate| route.state.rate.allow(rate, limiter.now_ns(now)));
    let Some(limit) = route.max_connection_rate_per_client else {
        return (!route_rate()).then_some(Refused::Rate("max_connection_rate"));
    };
    match limiter.allow_client(route.metric_id, client.ip(), limit, now, route_rate) {
        Admit::Yes => None,
        Admit::OverOwn => Some(Refused::Rate("max_connection_rate_per_client")),
        Admit::OverOther => Some(Refused::Rate("max_connection_rate")),
    }
}

/// How often a route says it refuses clients over a rate.
const RATE_WARN_EVERY_SECS: u64 = 10;

/// One warning per route per `RATE_WARN_EVERY_SECS` with the count of clients refused meanwhile.
fn rate_warning(shared: &ProcessState, route: &Route, key: &str) {
    let st = &route.state;
    let refused = st.rate_refused.fetch_add(1, Ordering::Relaxed) + 1;
    let now = shared.started.elapsed().as_secs() + RATE_WARN_EVERY_SECS;
    let last = st.rate_warned_at.load(Ordering::Relaxed);
    if now >= last + RATE_WARN_EVERY_SECS
        && st.rate_warned_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    {
        st.rate_refused.fetch_sub(refused, Ordering::Relaxed);
        log::warn!(
            "route {}: {refused} client(s) refused over {key} (or the other rate) in the last {RATE_WARN_EVERY_SECS} s",
            route.name
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn route(extra: &str) -> Route {
        let yaml = format!("routes:\n  - name: t\n    listen: 127.0.0.1:0\n    upstreams: [127.0.0.1:9]\n{extra}");
        let config = crate::config::parse_str(&yaml, "test").unwrap();
        let registry = crate::metrics::Registry::default();
        Route::prepare(&config.routes[0], None, None, None, &registry).unwrap()
    }

    fn shared() -> ProcessState {
        ProcessState::new(1000, crate::relay::pipe::PipeBudget::new(1 << 16, 64 << 10))
    }

    const A: &str = "10.0.0.1:1000";

    /// Route `t` with the keys in `extra`, the shared state, and a time
    /// later than the rate limiter's clock starts (it starts at first use).
    fn limits(extra: &str) -> (Route, ProcessState, Instant) {
        (route(extra), shared(), Instant::now() + Duration::from_secs(1))
    }

    /// What `admission` says of `client` at `at`: "admitted", or the limit that refused it.
    fn ask(sh: &ProcessState, r: &Route, client: &str, at: Instant) -> String {
        match admission(sh, r, client.parse().unwrap(), at) {
            None => "admitted".to_owned(),
            Some(Refused::Rate(key)) => key.to_owned(),
            Some(Refused::ClientLimit(_)) => "max_connections_per_client".to_owned(),
            Some(other) => format!("{other:?}"),
        }
    }

    #[test]
    fn a_refusal_by_the_routes_rate_spends_none_of_the_clients() {
        let (r, sh, t0) = limits(
            "    max_connection_rate: { per_second: 1, burst: 1 }\n    \
             max_connection_rate_per_client: { per_second: 1, burst: 2 }\n",
        );
        assert_eq!(ask(&sh, &r, A, t0), "admitted");
        for i in 0..5 {
            // The route's budget is spent; the client still has one of its two.
            assert_eq!(ask(&sh, &r, A, t0), "max_connection_rate", "attempt {i}");
        }
        // A second on, the route's budget is back, and so is the client's.
        assert_eq!(ask(&sh, &r, A, t0 + Duration::from_secs(1)), "admitted");
    }

    #[test]
    fn a_refusal_by_the_per_client_count_spends_no_rate() {
        let (r, sh, t0) = limits(
            "    max_connections_per_client: 1\n    max_connection_rate: { per_second: 1, burst: 2 }\n    \
             max_connection_rate_per_client: { per_second: 1, burst: 2 }\n",
        );
        assert_eq!(ask(&sh, &r, A, t0), "admitted");
        for i in 0..5 {
            assert_eq!(ask(&sh, &r, A, t0), "max_connections_per_client", "attempt {i}");
        }
        // The first session ends: the second of each burst is still there.
        r.state.release_client(A.parse::<SocketAddr>().unwrap().ip());
        assert_eq!(ask(&sh, &r, A, t0), "admitted");
    }

    #[test]
    fn a_client_over_its_own_rate_spends_none_of_the_routes_nor_its_count() {
        let (r, sh, t0) = limits(
            "    max_connections_per_client: 5\n    max_connection_rate: { per_second: 1, burst: 2 }\n    \
             max_connection_rate_per_client: { per_second: 1, burst: 1 }\n",
        );
        assert_eq!(ask(&sh, &r, A, t0), "admitted");
        for _ in 0..5 {
            assert_eq!(ask(&sh, &r, A, t0), "max_connection_rate_per_client");
        }
        assert_eq!(ask(&sh, &r, "10.0.0.2:1000", t0), "admitted", "the route's second is still there");
        // A's one session ends: nothing else of A's is counted.
        let a = A.parse::<SocketAddr>().unwrap().ip();
        r.state.release_client(a);
        assert!(r.state.admit_client(a, 1), "the refusals left counts behind");
    }
}
