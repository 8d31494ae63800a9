//! Opening a session's upstream connection: the balancer's pick among the
//! upstreams that are available (primaries first, then backups; up by
//! active checks, not ejected, not tried yet by this session), a
//! non-blocking connect, and on a failure or timeout a retry on another
//! upstream, up to the route's `retries`. No client byte has been sent at
//! that point, so a retry is invisible to the client. Failures feed outlier
//! ejection; when nothing is available the client is closed at once (or,
//! with `when_all_down: try_anyway`, health is ignored). A failure of this
//! host's own (out of fds, memory or ports; see `local_error`) is never the
//! upstream's: the client is reset and the upstream left alone.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mio::Interest;

use super::{Worker, token};
use crate::config::{Balance, WhenAllDown};
use crate::local_error::{self, LocalCause};
use crate::metrics::CloseReason;
use crate::session::{Claim, End, Ending, Side, Stage};
use crate::sys::sockets;
use crate::upstream::health::{FailureOutcome, now_ms};
use crate::upstream::{Availability, Balancer, client_hash};

impl Worker {
    /// Starts the session's next connect attempt, skipping upstreams that
    /// fail at once. `last` says why the previous attempt failed, for the
    /// warning if no attempt is left.
    pub(super) fn connect(&mut self, key: usize, mut last: String, now: Instant) {
        let route = Arc::clone(self.sessions[key].route());
        loop {
            let tried = self.sessions[key].tried().len();
            if tried > route.pool().retries as usize {
                break;
            }
            let Some((index, probe)) = self.pick(key) else {
                if tried == 0 {
                    let client = self.sessions[key].client_addr();
                    self.warn(format!(
                        "route {}: no upstream available for client {client} (every one is down or ejected; \
                         when_all_down: reject); closing it",
                        route.name
                    ));
                    self.close(key, End { reason: CloseReason::NoUpstream, ending: Ending::RESET_CLIENT }, now);
                    return;
                }
                break;
            };
            let upstream = &route.upstreams.upstreams[index];
            // A pass-through route's one member stands for the session's own destination.
            let addr = if route.config.original_destination {
                let Some(dst) = self.sessions[key].original_dst() else {
                    debug_assert!(false, "a pass-through route's listener reads original destinations");
                    let end = End { reason: CloseReason::NoRoute, ending: Ending::RESET_CLIENT };
                    return self.close(key, end, now);
                };
                dst
            } else {
                upstream.addr
            };
            {
                let mut st = self.metrics.stats();
                st.route(route.metric_id).connect_attempts += 1;
                st.upstream(upstream.metric_id).connect_attempts += 1;
                if tried > 0 {
                    st.route(route.metric_id).retries += 1;
                }
            }
            let s = &mut self.sessions[key];
            let claim = s.claim(index, probe);
            // A new generation: events of an earlier attempt's socket still in this batch are told apart.
            let generation = token::next_generation(s.upstream_generation());
            let tok = token::session(key, Side::Upstream, generation).expect("a session's key has a token");
            let client_ip = s.client_addr().ip();
            let started = if route.config.original_destination {
                self.start_pass_through(key, addr, &route, client_ip)
            } else {
                sockets::start_connect(addr, &route.socket, Some(client_ip))
            };
            let started = started.and_then(|mut stream| {
                let interest = Interest::READABLE | Interest::WRITABLE;
                self.poll.registry().register(&mut stream, tok, interest)?;
                Ok(stream)
            });
            match started {
                Ok(stream) => {
                    let s = &mut self.sessions[key];
                    s.attempt(claim, stream, generation, now);
                    let (deadline, _) = s.due(self.draining);
                    self.arm(key, deadline);
                    return;
                }
                Err(e) => {
                    log::debug!("session {}: connect to {addr} failed at once: {e}", self.sessions[key].id());
                    if let Some(cause) = local_error::classify(&e) {
                        // This host's failure, not the upstream's, and no retry: fds and
                        // memory are the process's and the machine's, so any other upstream
                        // needs the same; balanced load runs short of local ports toward every
                        // upstream address at about the same time; an unusable `source:` is
                        // configuration. Resetting at once lets the client back off and retry
                        // while this host is short, rather than spending more on other attempts.
                        self.local_error(key, claim, &e, cause, addr, now);
                        return;
                    }
                    last = format!("{addr}: {e}");
                    self.attempt_failed(key, claim);
                }
            }
        }
        let (client, tried) = (self.sessions[key].client_addr(), self.sessions[key].tried().len());
        self.warn(format!(
            "route {}: no upstream reachable for client {client} after {tried} attempt(s), last {last}; closing it",
            route.name
        ));
        self.close(key, End { reason: CloseReason::ConnectFailed, ending: Ending::RESET_CLIENT }, now);
    }

    /// A pass-through route's connect: its local address goes into the
    /// process's loop guard as soon as connect has chosen it (the session
    /// takes it out at its close), so a capture rule that brings this
    /// connection back is recognised by whichever worker accepts it. The
    /// port is chosen by connect, unique per destination, as for any
    /// upstream: binding it first (to know it before the SYN leaves) ran a
    /// busy sidecar out of ports, because bind needs a port unique overall
    /// (`bench/capture.py`: resets at 2,300 conn/s). Costs one `getsockname`.
    /// A worker that accepts the looped connection in the microseconds
    /// before the entry is in misses it at accept; it sees it when its own
    /// connect completes (`Worker::apply`), long after.
    fn start_pass_through(
        &mut self,
        key: usize,
        addr: SocketAddr,
        route: &crate::route::Route,
        client_ip: std::net::IpAddr,
    ) -> io::Result<mio::net::TcpStream> {
        let stream = sockets::start_connect(addr, &route.socket, Some(client_ip))?;
        if let Ok(local) = stream.local_addr() {
            self.shared.loop_guard.insert(local);
            self.sessions[key].guard(local);
        }
        Ok(stream)
    }

    /// The upstream for the session's next attempt, and whether it is the
    /// half-open try of an ejected one. Primaries first, then backups; with
    /// `when_all_down: try_anyway`, any untried one when none is available.
    fn pick(&mut self, key: usize) -> Option<(usize, bool)> {
        let s = &self.sessions[key];
        let route = s.route();
        let set = &route.upstreams;
        let pool = route.pool();
        let hash = if pool.balance == Balance::HashClientIp { client_hash(s.client_addr().ip()) } else { 0 };
        // The listener's balancer keeps the rotation; a session whose route
        // was replaced by a reload since it was accepted uses a fresh one.
        let mut spare;
        let own = self.listeners.get_mut(s.listener()).and_then(|l| {
            let i = l.frontend.routes.iter().position(|r| Arc::ptr_eq(r, route))?;
            l.balancers.get_mut(i)
        });
        let balancer = match own {
            Some(b) => b,
            None => {
                spare = Balancer::new(pool.balance, set.upstreams.iter().map(|u| u.weight));
                &mut spare
            }
        };
        let now = now_ms();
        let mut skip: Vec<usize> = Vec::new();
        for backup in [false, true] {
            loop {
                let candidate = |i: usize| {
                    let u = &set.upstreams[i];
                    u.backup == backup
                        && !s.tried().contains(i)
                        && !skip.contains(&i)
                        && u.health.availability(now) != Availability::Down
                };
                let Some(i) = balancer.pick(set, &set.ring, hash, candidate) else {
                    break;
                };
                match set.upstreams[i].health.availability(now) {
                    Availability::Probe if set.upstreams[i].health.try_probe() => return Some((i, true)),
                    // Another session claimed the half-open try between the two looks.
                    Availability::Probe | Availability::Down => skip.push(i),
                    Availability::Up => return Some((i, false)),
                }
            }
        }
        if pool.when_all_down == WhenAllDown::TryAnyway {
            for backup in [false, true] {
                let any = |i: usize| set.upstreams[i].backup == backup && !s.tried().contains(i);
                if let Some(i) = balancer.pick(set, &set.ring, hash, any) {
                    return Some((i, false));
                }
            }
        }
        None
    }

    /// Ends a session whose attempt failed for a reason of this host's own
    /// (`local_error`): the attempt is un-counted and the upstream's load
    /// released, but nothing is held against the upstream (no connect
    /// failure, no outlier verdict, a half-open try given back); the client
    /// is reset, the cause counted, and the operator told the fix.
    fn local_error(
        &mut self,
        key: usize,
        claim: Claim,
        e: &io::Error,
        cause: LocalCause,
        addr: SocketAddr,
        now: Instant,
    ) {
        let s = &mut self.sessions[key];
        let route = Arc::clone(s.route());
        let (index, probing) = claim.release(&route);
        let upstream = &route.upstreams.upstreams[index];
        if probing {
            upstream.health.probe_abandoned();
        }
        let retry = s.tried().len() > 1;
        {
            // The attempt never reached the upstream.
            let mut st = self.metrics.stats();
            st.route(route.metric_id).connect_attempts -= 1;
            st.upstream(upstream.metric_id).connect_attempts -= 1;
            if retry {
                st.route(route.metric_id).retries -= 1;
            }
        }
        self.metrics.count_local_error(route.metric_id, cause);
        let client = s.client_addr();
        let advice = local_error::advice(e, cause, addr, route.socket.source());
        self.warn(format!(
            "route {}: cannot open a connection to upstream {upstream} for client {client}: {e}: {advice}; \
             resetting the client (a local error: the upstream is not blamed)",
            route.name
        ));
        self.close(key, End { reason: CloseReason::LocalError, ending: Ending::RESET_CLIENT }, now);
    }

    /// Books a failed attempt and gives its claim back: counters, the
    /// upstream's load, outlier detection. Its socket is gone already
    /// (`Session::drop_attempt`, `unconnect`) or never was.
    fn attempt_failed(&mut self, key: usize, claim: Claim) {
        let route = Arc::clone(self.sessions[key].route());
        let (index, probing) = claim.release(&route);
        let upstream = &route.upstreams.upstreams[index];
        {
            let mut st = self.metrics.stats();
            st.route(route.metric_id).connect_failures += 1;
            st.upstream(upstream.metric_id).connect_failures += 1;
        }
        self.outlier_failure(&route, index, probing);
    }

    /// Feeds a failure of upstream `index` to outlier detection and says what it did.
    pub(super) fn outlier_failure(&mut self, route: &crate::route::Route, index: usize, probing: bool) {
        let Some(cfg) = route.pool().outlier else {
            return;
        };
        let set = &route.upstreams;
        let upstream = &set.upstreams[index];
        let others = set.ejected_except(index);
        match upstream.health.connect_failed(&cfg, others, set.len(), now_ms()) {
            FailureOutcome::Ejected { period, nth, failures } => {
                let why = if failures == 0 && probing {
                    "its half-open try failed".to_owned()
                } else {
                    format!("{failures} consecutive connect failures")
                };
                log::warn!(
                    "route {}: upstream {upstream} ejected for {} after {why} (ejection {nth} in a row)",
                    route.name,
                    crate::config::units::fmt_duration(period)
                );
            }
            FailureOutcome::Spared(n) => log::debug!(
                "route {}: upstream {upstream} has {n} consecutive failures but max_ejected_percent ({}%) of the route is out already",
                route.name,
                cfg.max_ejected_percent
            ),
            FailureOutcome::Counted(_) => {}
        }
    }

    /// The connect in progress failed (refused, timed out, or the upstream
    /// was lost before a byte moved): its socket is dropped and its claim
    /// (from `Session::drop_attempt` or `unconnect`) is given back here; try another upstream.
    pub(super) fn connect_failed(&mut self, key: usize, claim: Option<Claim>, e: &io::Error, now: Instant) {
        let Some(claim) = claim else {
            return; // no attempt was in progress
        };
        let s = &self.sessions[key];
        debug_assert!(
            matches!(s.stage(), Stage::Unconnected { .. }),
            "a claim comes back with the session unconnected"
        );
        let upstream = s.upstream_addr();
        log::debug!("session {}: upstream {upstream} failed: {e}", s.id());
        let last = format!("{upstream}: {e}");
        self.attempt_failed(key, claim);
        self.connect(key, last, now);
    }
}
