//! Opening a session's upstream connection: non-blocking connects rotating
//! through the route's upstreams from the balancer's pick, the next one on
//! a refusal or a timeout, and a prompt close of the client (with one
//! rate-limited warning saying why) when none is left.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use mio::Interest;

use super::{Worker, is_fd_exhaustion, session_token};
use crate::metrics::CloseReason;
use crate::session::{Side, Stage};
use crate::sockets;

impl Worker {
    /// Starts connect attempt `attempt`, skipping upstreams that fail at once.
    /// `last` says why the previous attempt failed, for the warning if none is left.
    pub(super) fn connect(&mut self, key: usize, mut attempt: u32, mut last: String, now: Instant) {
        let (route, first, id) = {
            let s = &self.sessions[key];
            (Arc::clone(&s.route), s.first_upstream, s.id)
        };
        let n = route.upstreams.len();
        while (attempt as usize) < n {
            let index = (first + attempt as usize) % n;
            let addr = route.upstreams.upstreams[index].addr;
            {
                let mut st = self.metrics.stats();
                st.route(route.metric_id).connect_attempts += 1;
                st.upstream(route.upstream_metric_ids[index]).connect_attempts += 1;
            }
            let started = sockets::start_connect(addr, &route.socket).and_then(|mut stream| {
                let interest = Interest::READABLE | Interest::WRITABLE;
                self.poll.registry().register(&mut stream, session_token(key, Side::Upstream), interest)?;
                Ok(stream)
            });
            match started {
                Ok(stream) => {
                    let s = &mut self.sessions[key];
                    s.attempt(attempt, index, stream, now);
                    let deadline = s.deadline(self.draining);
                    self.arm(key, deadline);
                    return;
                }
                Err(e) => {
                    self.count_connect_failure(route.metric_id, route.upstream_metric_ids[index]);
                    log::debug!("session {id}: connect to {addr} failed at once: {e}");
                    last = format!("{addr}: {e}");
                    attempt += 1;
                    if is_fd_exhaustion(&e) {
                        // No fd for an upstream socket: other upstreams won't do better.
                        break;
                    }
                }
            }
        }
        let client = self.sessions[key].client_addr;
        self.warn(format!(
            "route {}: no upstream reachable for client {client} after {attempt} attempt(s), last {last}; closing it",
            route.name
        ));
        self.close(key, CloseReason::ConnectFailed, None, now);
    }

    fn count_connect_failure(&self, route: usize, upstream: usize) {
        let mut st = self.metrics.stats();
        st.route(route).connect_failures += 1;
        st.upstream(upstream).connect_failures += 1;
    }

    /// The connect in progress failed (refused, timed out): try the next upstream.
    pub(super) fn connect_failed(&mut self, key: usize, e: &io::Error, now: Instant) {
        let s = &self.sessions[key];
        let Stage::Connecting { attempt, .. } = s.stage else {
            return;
        };
        let (route_id, upstream_id) = (s.route.metric_id, s.route.upstream_metric_ids[s.upstream_index]);
        self.count_connect_failure(route_id, upstream_id);
        let s = &mut self.sessions[key];
        let upstream = &s.route.upstreams.upstreams[s.upstream_index];
        log::debug!("session {}: upstream {upstream} failed: {e}", s.id);
        let last = format!("{upstream}: {e}");
        // Dropping the socket also removes it from the poll.
        s.upstream = None;
        self.connect(key, attempt + 1, last, now);
    }
}
