//! Per-worker statistics by route and upstream: counters and hdrhistogram
//! latency histograms, recorded by the worker and merged by the admin
//! thread when asked.
//!
//! Each worker owns one `WorkerMetrics`. Its route/upstream stats sit
//! behind a mutex that only that worker takes per *session* (accept,
//! connect attempt, close: never per event or per byte) and once a second
//! to add the bytes running sessions moved, and the admin thread takes
//! briefly per scrape, so it is uncontended in practice.
//! Worker-wide counters that change per event stay lock-free atomics in
//! `WorkerCounters`.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{CloseReason, WorkerCounters};

/// Largest time a histogram holds: 1 day in µs (longer values are clamped).
pub const MAX_TIME_US: u64 = 86_400_000_000;

/// A histogram of times in µs, 1 µs to a day, 3 significant digits.
pub fn time_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, MAX_TIME_US, 3).expect("the bounds are valid constants")
}

/// A histogram of small counts (retransmits per session).
pub fn count_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 1_000_000, 3).expect("the bounds are valid constants")
}

/// Records a value, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u32>, v: u64) {
    h.saturating_record(v.clamp(h.low(), h.high()));
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// One route's numbers in one worker.
#[derive(Debug)]
pub struct RouteStats {
    /// Clients accepted.
    pub accepted: u64,
    /// Sessions closed, indexed like `CloseReason::ALL`.
    pub closed: [u64; CloseReason::ALL.len()],
    /// `[client→upstream, upstream→client][spliced, copied]` bytes.
    pub bytes: [[u64; 2]; 2],
    /// Upstream connect attempts.
    pub connect_attempts: u64,
    /// Upstream connect failures.
    pub connect_failures: u64,
    /// Connect attempts that were retries (after a failed one).
    pub retries: u64,
    /// Connect time of sessions that connected (µs).
    pub connect_time: Histogram<u32>,
    /// Connected to first upstream byte (µs).
    pub first_byte_time: Histogram<u32>,
    /// Accept to close (µs).
    pub duration: Histogram<u32>,
}

impl Default for RouteStats {
    fn default() -> Self {
        RouteStats {
            accepted: 0,
            closed: [0; CloseReason::ALL.len()],
            bytes: [[0; 2]; 2],
            connect_attempts: 0,
            connect_failures: 0,
            retries: 0,
            connect_time: time_histogram(),
            first_byte_time: time_histogram(),
            duration: time_histogram(),
        }
    }
}

/// One upstream's numbers in one worker.
#[derive(Debug)]
pub struct UpstreamStats {
    /// Sessions relayed to it.
    pub sessions: u64,
    /// Connect attempts.
    pub connect_attempts: u64,
    /// Connect failures.
    pub connect_failures: u64,
    /// Connect time (µs).
    pub connect_time: Histogram<u32>,
    /// Smoothed RTT at close (µs).
    pub rtt: Histogram<u32>,
    /// Retransmitted segments per session.
    pub retransmits: Histogram<u32>,
}

impl Default for UpstreamStats {
    fn default() -> Self {
        UpstreamStats {
            sessions: 0,
            connect_attempts: 0,
            connect_failures: 0,
            connect_time: time_histogram(),
            rtt: time_histogram(),
            retransmits: count_histogram(),
        }
    }
}

/// Everything a worker records by route and upstream id.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// By route metric id (grown on first use).
    pub routes: Vec<RouteStats>,
    /// By upstream metric id.
    pub upstreams: Vec<UpstreamStats>,
}

impl WorkerStats {
    /// The stats of route `id`.
    pub fn route(&mut self, id: usize) -> &mut RouteStats {
        if self.routes.len() <= id {
            self.routes.resize_with(id + 1, RouteStats::default);
        }
        &mut self.routes[id]
    }

    /// The stats of upstream `id`.
    pub fn upstream(&mut self, id: usize) -> &mut UpstreamStats {
        if self.upstreams.len() <= id {
            self.upstreams.resize_with(id + 1, UpstreamStats::default);
        }
        &mut self.upstreams[id]
    }

    /// Bytes a running session moved since it last reported (`[c2u, u2c][spliced, copied]`).
    pub fn bytes_moved(&mut self, route: usize, delta: [[u64; 2]; 2]) {
        let r = self.route(route);
        for (into, from) in r.bytes.iter_mut().flatten().zip(delta.iter().flatten()) {
            *into += from;
        }
    }

    /// A finished session (its bytes minus what it reported while running).
    pub fn session_closed(&mut self, s: &SessionRecord) {
        let totals =
            [[s.client_to_upstream.0, s.client_to_upstream.1], [s.upstream_to_client.0, s.upstream_to_client.1]];
        let mut rest = [[0; 2]; 2];
        for ((out, total), reported) in
            rest.iter_mut().flatten().zip(totals.iter().flatten()).zip(s.reported.iter().flatten())
        {
            *out = total.saturating_sub(*reported);
        }
        self.bytes_moved(s.route, rest);
        let r = self.route(s.route);
        r.closed[s.reason as usize] += 1;
        if let Some(t) = s.connect_time {
            record(&mut r.connect_time, us(t));
        }
        if let Some(t) = s.first_byte_time {
            record(&mut r.first_byte_time, us(t));
        }
        record(&mut r.duration, us(s.duration));
        if let Some(u) = s.upstream {
            let up = self.upstream(u);
            up.sessions += 1;
            if let Some(t) = s.connect_time {
                record(&mut up.connect_time, us(t));
            }
            if let Some((rtt_us, retrans)) = s.tcp_info {
                record(&mut up.rtt, u64::from(rtt_us));
                record(&mut up.retransmits, u64::from(retrans));
            }
        }
    }
}

/// What a worker reports about a session when it closes.
#[derive(Clone, Debug)]
pub struct SessionRecord {
    /// Route metric id.
    pub route: usize,
    /// Upstream metric id, if one was connected.
    pub upstream: Option<usize>,
    /// Why it ended.
    pub reason: CloseReason,
    /// (spliced, copied) bytes client → upstream.
    pub client_to_upstream: (u64, u64),
    /// (spliced, copied) bytes upstream → client.
    pub upstream_to_client: (u64, u64),
    /// Of those, what was already counted while the session ran (`bytes_moved`).
    pub reported: [[u64; 2]; 2],
    /// Time the successful connect took.
    pub connect_time: Option<Duration>,
    /// Connected to first upstream byte.
    pub first_byte_time: Option<Duration>,
    /// Accept to close.
    pub duration: Duration,
    /// `TCP_INFO` of the upstream socket: (smoothed RTT µs, total retransmits).
    pub tcp_info: Option<(u32, u32)>,
}

/// One worker's metrics: route/upstream stats under a per-worker mutex, and
/// lock-free worker-wide counters.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    stats: Mutex<WorkerStats>,
    /// Worker-wide counters (accept events, pipes).
    pub counters: WorkerCounters,
}

impl WorkerMetrics {
    /// The stats, locked (briefly: once per session event, or per scrape).
    pub fn stats(&self) -> MutexGuard<'_, WorkerStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_session_lands_in_its_route_and_upstream() {
        let mut st = WorkerStats::default();
        st.route(2).accepted += 1;
        st.session_closed(&SessionRecord {
            route: 2,
            upstream: Some(1),
            reason: CloseReason::Clean,
            client_to_upstream: (100, 5),
            upstream_to_client: (0, 7),
            reported: [[0; 2]; 2],
            connect_time: Some(Duration::from_micros(250)),
            first_byte_time: Some(Duration::from_millis(100)),
            duration: Duration::from_secs(2),
            tcp_info: Some((40, 3)),
        });
        let r = &st.routes[2];
        assert_eq!(r.closed[CloseReason::Clean as usize], 1);
        assert_eq!(r.bytes, [[100, 5], [0, 7]]);
        assert_eq!(r.connect_time.len(), 1);
        assert!(r.first_byte_time.equivalent(r.first_byte_time.value_at_quantile(0.5), 100_000));
        assert_eq!(st.upstreams[1].sessions, 1);
        assert_eq!(st.upstreams[1].retransmits.max(), 3);
        assert_eq!(st.routes.len(), 3, "grown to the id");
    }

    #[test]
    fn bytes_reported_while_running_are_not_counted_again_at_close() {
        let mut st = WorkerStats::default();
        st.bytes_moved(0, [[100, 0], [0, 50]]);
        assert_eq!(st.routes[0].bytes, [[100, 0], [0, 50]], "visible while the session runs");
        st.session_closed(&SessionRecord {
            route: 0,
            upstream: None,
            reason: CloseReason::Clean,
            client_to_upstream: (150, 0),
            upstream_to_client: (0, 50),
            reported: [[100, 0], [0, 50]],
            connect_time: None,
            first_byte_time: None,
            duration: Duration::from_secs(1),
            tcp_info: None,
        });
        assert_eq!(st.routes[0].bytes, [[150, 0], [0, 50]], "the total, once");
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut h = time_histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
    }
}
