//! Ending sessions, and what running ones report while they run.
//!
//! `end` carries out an `End` (see `session::ending` for the rules): a FIN,
//! resets at once, or — when a side failed — the wait until the survivor
//! has acknowledged the failed side's last bytes (`session::linger`), then
//! its reset. `close` is the one place a session is finally closed: sockets
//! reset or closed, pipes returned, limits released, the upstream's health
//! told, the record counted and the access line written.
//!
//! Bytes are counted while sessions run: once a second (while any runs)
//! the worker adds what each moved since its last report to the route's
//! counters, under one lock for all of them, and writes the periodic access
//! lines `log.flush_interval` asks for.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{TimerKey, Worker};
use crate::access::{self, Entry};
use crate::metrics::{CloseReason, SessionRecord};
use crate::session::{Claim, End, Ending, LingerCheck, Relay, Remains, Side};
use crate::sys::sockets;
use crate::upstream;

/// How often running sessions' bytes reach the metrics.
const REPORT_EVERY: Duration = Duration::from_secs(1);

impl Worker {
    /// Ends session `key` as `end` says.
    pub(super) fn end(&mut self, key: usize, end: End, now: Instant) {
        let Ending::ResetWhenDelivered { survivor } = end.ending else {
            return self.close(key, end, now);
        };
        let s = &mut self.sessions[key];
        if !s.linger(survivor, end.reason, &mut self.res, now) {
            // Only a relaying session has bytes on their way to a survivor.
            return self.close(key, End { ending: Ending::reset(survivor), ..end }, now);
        }
        log::debug!("session {}: {}; resetting the {survivor} once it has the last bytes", s.id(), end.reason);
        self.check_linger(key, now);
    }

    /// Looks at a lingering survivor's send queue: reset it now, or look again later.
    pub(super) fn check_linger(&mut self, key: usize, now: Instant) {
        let s = &mut self.sessions[key];
        let Some((check, survivor, reason)) = s.check_linger(now) else {
            return;
        };
        match check {
            LingerCheck::Wait(at) => self.arm(key, at),
            LingerCheck::Delivered => self.close(key, End { reason, ending: Ending::reset(survivor) }, now),
            LingerCheck::GaveUp { unacked } => {
                log::debug!(
                    "session {}: the {survivor} still holds {unacked} unacknowledged bytes: resetting it",
                    s.id()
                );
                self.close(key, End { reason, ending: Ending::reset(survivor) }, now);
            }
        }
    }

    /// Closes session `key` for good; the slot is freed at the end of the batch.
    pub(super) fn close(&mut self, key: usize, end: End, now: Instant) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(remains) = s.close() else {
            return;
        };
        if let Some(t) = s.take_timer() {
            self.timers.cancel(t, TimerKey::Session(key));
        }
        let (reset_client, reset_upstream) = match end.ending {
            Ending::Fin => (false, false),
            Ending::Reset { client, upstream } => (client, upstream),
            Ending::ResetWhenDelivered { survivor } => (survivor == Side::Client, survivor == Side::Upstream),
        };
        if reset_client {
            sockets::reset_on_close(s.client());
        }
        // What the stage held: the relay of a connected session or the socket
        // of an attempt, the claim on its upstream, a pump kept between upstreams.
        let Remains { mut relay, attempt, claim, kept } = remains;
        let mut lost = relay.as_mut().map_or([false; 2], |r| r.release(&mut self.res));
        // A session between upstreams (`relay: uring`) gives up its kept pump:
        // bytes its receive took will never be delivered.
        lost[0] |= kept.is_some_and(|mut p| p.release(&mut self.res));
        if s.on_ring() {
            // Cancel its io_uring operations before its sockets close. A
            // receive that had taken bytes now never delivered means its
            // source must be reset, not closed as if everything arrived.
            let id = s.id();
            let settled = self.settle_ring(key, id);
            lost = [lost[0] | settled[0], lost[1] | settled[1]];
        }
        let s = &mut self.sessions[key];
        if lost[0] && !reset_client {
            log::debug!("session {}: bytes the client sent were taken but not delivered: resetting it", s.id());
            sockets::reset_on_close(s.client());
        }
        let reset_upstream = reset_upstream || lost[1];
        if let Some(u) = relay.as_ref().map(|r| &r.upstream).or(attempt.as_ref()).filter(|_| reset_upstream) {
            sockets::reset_on_close(u);
        }
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(local) = s.take_guarded() {
            self.shared.loop_guard.remove(local);
        }
        if s.routed() {
            s.route().state.active.fetch_sub(1, Ordering::Relaxed);
        }
        if s.client_admitted() {
            s.route().state.release_client(s.client_addr().ip());
        }
        if let Some(claim) = claim {
            self.upstream_verdict(key, claim, end.reason, relay.as_ref());
        }
        let s = &self.sessions[key];
        let [up, down] = relay.as_ref().map_or([[0; 4]; 2], Relay::bytes);
        let record = SessionRecord {
            route: s.route().metric_id,
            upstream: relay.as_ref().map(|_| s.upstream().metric_id),
            reason: end.reason,
            client_to_upstream: up,
            upstream_to_client: down,
            reported: s.reported(),
            connect_time: relay.as_ref().map(|r| r.connect_time),
            first_byte_time: relay.as_ref().and_then(|r| r.first_byte_time),
            duration: s.age(now),
            tcp_info: relay.as_ref().and_then(|r| crate::sys::sockopt::tcp_info(&r.upstream).ok()),
        };
        if s.routed() {
            // A client whose ClientHello chose no route is counted by the worker (`refuse_hello`), in no route.
            self.metrics.stats().session_closed(&record);
        }
        if let Some(format) = self.settings.access_log {
            access::log(format, s, &Entry::closed(&record));
        }
        // The upstream socket closes here; the client's when the slot is freed.
        drop(relay);
        drop(attempt);
        self.closed.push(key);
    }

    /// What a closing session that held an upstream tells its health (the
    /// claim is given back here): its load drops; a reset before the
    /// upstream's first byte counts as a connect failure (outlier
    /// detection), anything else that got connected as a success.
    fn upstream_verdict(&mut self, key: usize, claim: Claim, reason: CloseReason, relay: Option<&Relay>) {
        let route = Arc::clone(self.sessions[key].route());
        let (index, probing) = claim.release(&route);
        let health = &route.upstreams.upstreams[index].health;
        let Some(relay) = relay else {
            if probing {
                health.probe_abandoned(); // the client left before the try had a verdict
            }
            return;
        };
        if reason == CloseReason::UpstreamReset && relay.u2c.delivered() == 0 {
            self.outlier_failure(&route, index, probing);
        } else if health.succeeded(upstream::health::now_ms()) {
            log::warn!("route {}: upstream {} is back", route.name, route.upstreams.upstreams[index]);
        }
    }

    /// Arms the report timer if it isn't (a session started relaying).
    pub(super) fn ensure_reporting(&mut self, now: Instant) {
        if !self.reporting {
            self.reporting = true;
            self.timers.schedule(now + REPORT_EVERY, TimerKey::Report);
        }
    }

    /// Adds what running sessions moved since their last report to the
    /// route counters (one lock for all), writes periodic access lines, and
    /// comes back in a second while any session has bytes to report.
    pub(super) fn report(&mut self, now: Instant) {
        self.reporting = false;
        let mut running = false;
        {
            let mut stats = self.metrics.stats();
            for (_, s) in self.sessions.iter_mut() {
                if s.relay().is_none() {
                    continue;
                }
                running = true;
                let bytes = s.bytes();
                if bytes != s.reported() {
                    let mut delta = [[0; 4]; 2];
                    for ((d, b), r) in
                        delta.iter_mut().flatten().zip(bytes.iter().flatten()).zip(s.reported().iter().flatten())
                    {
                        *d = b.saturating_sub(*r);
                    }
                    stats.bytes_moved(s.route().metric_id, delta);
                    s.set_reported(bytes);
                }
            }
        }
        if let (Some(format), Some(every)) = (self.settings.access_log, self.settings.access_flush) {
            for (_, s) in self.sessions.iter_mut() {
                if s.relay().is_some() && now.saturating_duration_since(s.last_access_line()) >= every {
                    access::log(format, s, &Entry::running(s, now));
                    s.access_line_written(now);
                }
            }
        }
        if running {
            self.ensure_reporting(now);
        }
    }
}
