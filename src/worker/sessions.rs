//! Driving a worker's sessions: an event or a timer goes to its session,
//! and what the session says back (`Verdict`, `Due`) is carried out here —
//! run the relay, start relaying, try the next upstream, end it — along
//! with the session's timer (armed, moved earlier) and the queue of
//! sessions to run again before the next poll. What a stage change means
//! is the session's (`session/lifecycle.rs`); opening and closing
//! connections is `connect.rs`'s and `close.rs`'s.

use std::io;
use std::time::{Duration, Instant};

use super::{TimerKey, Worker};
use crate::session::{Due, Readiness, Side, Stage, Verdict};
use crate::upstream;

impl Worker {
    pub(super) fn on_session_event(&mut self, key: usize, side: Side, generation: u32, ready: Readiness, now: Instant) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if !s.on_event(side, generation, ready) {
            return; // an event of an upstream socket this session no longer has
        }
        match (s.stage(), side) {
            (Stage::Header { .. }, Side::Client) if ready.readable || ready.hup => self.on_header(key, now),
            (Stage::Hello(_), Side::Client) if ready.readable || ready.hup => self.on_hello(key, now),
            (Stage::Connecting(_), Side::Upstream) => {
                let verdict = s.check_connect(ready);
                self.apply(key, verdict, now);
            }
            // A relay on the io_uring hears from its completions, not from readiness.
            (Stage::Relaying(r, _), _) if !r.is_uring() => self.relay(key, now),
            _ => {}
        }
    }

    pub(super) fn relay(&mut self, key: usize, now: Instant) {
        let s = &mut self.sessions[key];
        let verdict = s.relay_step(&mut self.res, now);
        if matches!(verdict, Verdict::Continue { .. }) {
            self.sync_watch(key);
        }
        self.apply(key, verdict, now);
    }

    pub(super) fn apply(&mut self, key: usize, verdict: Verdict, now: Instant) {
        match verdict {
            Verdict::Continue { more } => {
                let s = &mut self.sessions[key];
                if more && s.queue() {
                    self.runnable.push((key, s.id()));
                }
                // A side just finished: the half-close timeout may be sooner.
                self.rearm_if_sooner(key);
            }
            Verdict::Connected { reset_already } => {
                if self.sessions[key].passes_through() && self.shared.loop_guard.is_ours(self.sessions[key].peer_addr())
                {
                    // A loop the accept missed (see `start_pass_through`).
                    return self.loop_found_late(key, now);
                }
                let s = &mut self.sessions[key];
                let probed = s.connected(reset_already, key, now);
                log::trace!("session {}: connected to {}", s.id(), s.upstream_addr());
                if probed && s.upstream().health.succeeded(upstream::health::now_ms()) {
                    log::warn!(
                        "route {}: upstream {} is back: its half-open try connected",
                        s.route().name,
                        s.upstream()
                    );
                }
                let (deadline, _) = s.due(self.draining);
                self.arm(key, deadline);
                self.ensure_reporting(now);
                // The client may have sent bytes while we were connecting.
                self.relay(key, now);
            }
            Verdict::ConnectFailed(e) => {
                let s = &mut self.sessions[key];
                let claim = if matches!(s.stage(), Stage::Relaying(..)) {
                    s.unconnect(&mut self.res)
                } else {
                    s.drop_attempt()
                };
                self.connect_failed(key, claim, &e, now);
            }
            Verdict::End(end) => self.end(key, end, now),
        }
    }

    pub(super) fn run_ready(&mut self, now: Instant) {
        self.accept_backlogs(now);
        if self.runnable.is_empty() {
            return;
        }
        let ready = std::mem::take(&mut self.runnable);
        for &(key, id) in &ready {
            let Some(s) = self.sessions.get_mut(key) else {
                continue;
            };
            if s.id() != id {
                continue;
            }
            // Cleared whatever the stage: a session back to connecting must be queued again later.
            s.unqueue();
            if matches!(s.stage(), Stage::Relaying(..)) {
                self.relay(key, now);
            }
        }
    }

    pub(super) fn arm(&mut self, key: usize, at: Instant) {
        if let Some(old) = self.sessions[key].take_timer() {
            self.timers.cancel(old, TimerKey::Session(key));
        }
        let deadline = self.timers.schedule(at, TimerKey::Session(key));
        self.sessions[key].set_timer(deadline, at);
    }

    /// Re-arms a session's timer if its deadline moved earlier (half-close,
    /// drain); later deadlines are picked up lazily when the timer fires.
    pub(super) fn rearm_if_sooner(&mut self, key: usize) {
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        if matches!(s.stage(), Stage::Closed) {
            return;
        }
        let (due, _) = s.due(self.draining);
        if s.timer_at().is_none_or(|at| due < at) {
            self.arm(key, due);
        }
    }

    pub(super) fn on_session_timer(&mut self, key: usize, now: Instant) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        s.take_timer();
        let (deadline, due) = s.due(self.draining);
        if now < deadline {
            // Bytes moved since the timer was armed: sleep until the new deadline.
            self.arm(key, deadline);
            return;
        }
        match due {
            Due::Linger => return self.check_linger(key, now),
            Due::Kernel => {
                s.kernel_look(&mut self.res, now);
                self.sync_watch(key);
                return self.relay(key, now);
            }
            Due::Connect => {
                let e = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", s.route().connect_timeout),
                );
                let claim = s.drop_attempt();
                return self.connect_failed(key, claim, &e, now);
            }
            Due::Hello => {
                let why = format!("no complete ClientHello within {:?}", s.route().config.client_hello_timeout);
                return self.refuse_hello(key, crate::metrics::CloseReason::ClientHelloTimeout, &why, now);
            }
            Due::Header => {
                log::debug!(
                    "route {}: client {}: no complete PROXY header within {:?}",
                    s.route().name,
                    s.peer_addr(),
                    s.route().pool().proxy_protocol_timeout
                );
                self.metrics.count_refusal(s.route().metric_id, crate::metrics::Refusal::BadProxyHeader);
            }
            Due::Idle | Due::HalfClose | Due::DrainIdle => {}
        }
        match s.on_timeout(due) {
            Some(end) => {
                let idle = s.relay().map(|r| now.saturating_duration_since(r.last_active()));
                log::debug!("session {}: {} after {idle:?} without a byte", s.id(), end.reason);
                self.end(key, end, now);
            }
            // Bytes still in flight while draining: not idle, only slow. Look again later.
            None => {
                let again = s.route().config.drain_close_idle_after.unwrap_or(Duration::from_secs(1));
                self.arm(key, now + again)
            }
        }
    }
}
