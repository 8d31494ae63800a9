//! Per-worker statistics by route and upstream: counters and hdrhistogram
//! latency histograms, recorded by the worker and merged by the admin
//! thread when asked.
//!
//! Each worker owns one `WorkerMetrics`. Its route/upstream stats sit
//! behind a mutex that only that worker takes per *session* (accept,
//! connect attempt, refusal, close: never per event or per byte), per
//! listener pause at a limit, and once a second
//! to add the bytes running sessions moved, and the admin thread takes
//! briefly per scrape, so it is uncontended in practice.
//! Worker-wide counters that change per event stay lock-free atomics in
//! `WorkerCounters`.
//!
//! Upstream stats are indexed by the registry's `UpstreamKey`: a slot the
//! registry reclaimed is emptied here by `forget`, and a late record for a
//! generation that is gone is dropped, never counted for the slot's next
//! occupant. An upstream's histograms are made on its first connected
//! session, so one that never connected costs none.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::counters::{Pause, Refusal};
use super::{CloseReason, WorkerCounters};
use crate::local_error::LocalCause;
use crate::upstream::UpstreamKey;

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
    /// `[client→upstream, upstream→client][spliced, copied, uring, sockmap]` bytes.
    pub bytes: [[u64; 4]; 2],
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
    /// Clients refused, indexed like `Refusal::ALL` (before a route was
    /// chosen: on their listener's first route).
    pub refused: [u64; Refusal::ALL.len()],
    /// Times its listener paused, indexed like `Pause::ALL`.
    pub paused: [u64; Pause::ALL.len()],
    /// Upstream connections this host could not open, indexed like `LocalCause::ALL`.
    pub local_errors: [u64; LocalCause::ALL.len()],
}

impl Default for RouteStats {
    fn default() -> Self {
        RouteStats {
            accepted: 0,
            closed: [0; CloseReason::ALL.len()],
            bytes: [[0; 4]; 2],
            connect_attempts: 0,
            connect_failures: 0,
            retries: 0,
            connect_time: time_histogram(),
            first_byte_time: time_histogram(),
            duration: time_histogram(),
            refused: [0; Refusal::ALL.len()],
            paused: [0; Pause::ALL.len()],
            local_errors: [0; LocalCause::ALL.len()],
        }
    }
}

/// One upstream's numbers in one worker.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// Sessions relayed to it.
    pub sessions: u64,
    /// Connect attempts.
    pub connect_attempts: u64,
    /// Connect failures.
    pub connect_failures: u64,
    /// Its histograms, made by the first session that connected (a time
    /// histogram is ~100 KiB; an address that never answers needs none).
    pub times: Option<Box<UpstreamTimes>>,
}

/// The histograms of one upstream in one worker.
#[derive(Debug)]
pub struct UpstreamTimes {
    /// Connect time (µs).
    pub connect_time: Histogram<u32>,
    /// Smoothed RTT at close (µs).
    pub rtt: Histogram<u32>,
    /// Retransmitted segments per session.
    pub retransmits: Histogram<u32>,
}

impl Default for UpstreamTimes {
    fn default() -> Self {
        UpstreamTimes { connect_time: time_histogram(), rtt: time_histogram(), retransmits: count_histogram() }
    }
}

impl UpstreamStats {
    /// Its histograms, made now if they don't exist yet.
    pub fn times(&mut self) -> &mut UpstreamTimes {
        self.times.get_or_insert_with(Box::default)
    }
}

/// One upstream slot in one worker: the generation it holds numbers for.
#[derive(Debug, Default)]
struct UpstreamSlot {
    generation: u32,
    stats: UpstreamStats,
}

/// Everything a worker records by route and upstream id.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// By route metric id (grown on first use).
    pub routes: Vec<RouteStats>,
    /// By upstream slot (grown on first use).
    upstreams: Vec<UpstreamSlot>,
    /// What `upstream` hands out for a key whose generation is gone: cleared
    /// on every such call, never read.
    discarded: UpstreamStats,
}

impl WorkerStats {
    /// The stats of route `id`.
    pub fn route(&mut self, id: usize) -> &mut RouteStats {
        if self.routes.len() <= id {
            self.routes.resize_with(id + 1, RouteStats::default);
        }
        &mut self.routes[id]
    }

    /// The stats of upstream `key` to record into. For a generation the
    /// registry has reclaimed since (a session on an old version of its
    /// route), a scratch record that is thrown away.
    pub fn upstream(&mut self, key: UpstreamKey) -> &mut UpstreamStats {
        if !self.admit(key) {
            self.discarded = UpstreamStats::default();
            return &mut self.discarded;
        }
        &mut self.upstreams[key.id].stats
    }

    /// Readies slot `key.id` for `key`; false if `key` is of a gone generation.
    fn admit(&mut self, key: UpstreamKey) -> bool {
        if self.upstreams.len() <= key.id {
            self.upstreams.resize_with(key.id + 1, UpstreamSlot::default);
        }
        let slot = &mut self.upstreams[key.id];
        match slot.generation.cmp(&key.generation) {
            std::cmp::Ordering::Equal => true,
            // A new occupant this worker has not recorded for yet.
            std::cmp::Ordering::Less => {
                *slot = UpstreamSlot { generation: key.generation, stats: UpstreamStats::default() };
                true
            }
            std::cmp::Ordering::Greater => false,
        }
    }

    /// The registry reclaimed `key`: frees its numbers, and from now on drops
    /// records for it.
    pub fn forget(&mut self, key: UpstreamKey) {
        if let Some(slot) = self.upstreams.get_mut(key.id).filter(|s| s.generation <= key.generation) {
            *slot = UpstreamSlot { generation: key.generation.wrapping_add(1), stats: UpstreamStats::default() };
        }
    }

    /// The numbers of `key`, if this worker holds them for that generation.
    pub fn upstream_stats(&self, key: UpstreamKey) -> Option<&UpstreamStats> {
        self.upstreams.get(key.id).filter(|s| s.generation == key.generation).map(|s| &s.stats)
    }

    /// Every slot this worker has: its key (the generation it holds numbers
    /// for) and those numbers.
    pub fn upstream_slots(&self) -> impl Iterator<Item = (UpstreamKey, &UpstreamStats)> {
        self.upstreams.iter().enumerate().map(|(id, s)| (UpstreamKey { id, generation: s.generation }, &s.stats))
    }

    /// Bytes a running session moved since it last reported (`[c2u, u2c][spliced, copied, uring, sockmap]`).
    pub fn bytes_moved(&mut self, route: usize, delta: [[u64; 4]; 2]) {
        let r = self.route(route);
        for (into, from) in r.bytes.iter_mut().flatten().zip(delta.iter().flatten()) {
            *into += from;
        }
    }

    /// A finished session (its bytes minus what it reported while running).
    pub fn session_closed(&mut self, s: &SessionRecord) {
        let totals = [s.client_to_upstream, s.upstream_to_client];
        let mut rest = [[0; 4]; 2];
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
        if let Some(u) = s.upstream.filter(|&u| self.admit(u)) {
            let up = &mut self.upstreams[u.id].stats;
            up.sessions += 1;
            if let Some(t) = s.connect_time {
                record(&mut up.times().connect_time, us(t));
            }
            if let Some((rtt_us, retrans)) = s.tcp_info {
                let times = up.times();
                record(&mut times.rtt, u64::from(rtt_us));
                record(&mut times.retransmits, u64::from(retrans));
            }
        }
    }
}

/// What a worker reports about a session when it closes.
#[derive(Clone, Debug)]
pub struct SessionRecord {
    /// Route metric id.
    pub route: usize,
    /// Upstream metric key, if one was connected.
    pub upstream: Option<UpstreamKey>,
    /// Why it ended.
    pub reason: CloseReason,
    /// [spliced, copied, uring, sockmap] bytes client → upstream.
    pub client_to_upstream: [u64; 4],
    /// [spliced, copied, uring, sockmap] bytes upstream → client.
    pub upstream_to_client: [u64; 4],
    /// Of those, what was already counted while the session ran (`bytes_moved`).
    pub reported: [[u64; 4]; 2],
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

    /// Counts a client refused on route `route` (its metric id).
    pub fn count_refusal(&self, route: usize, why: Refusal) {
        self.stats().route(route).refused[why as usize] += 1;
    }

    /// Counts a pause of a listener of route `route`.
    pub fn count_pause(&self, route: usize, why: Pause) {
        self.stats().route(route).paused[why as usize] += 1;
    }

    /// Counts an upstream connection of route `route` this host could not open.
    pub fn count_local_error(&self, route: usize, cause: LocalCause) {
        self.stats().route(route).local_errors[cause as usize] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: usize, generation: u32) -> UpstreamKey {
        UpstreamKey { id, generation }
    }

    fn closed_on(upstream: UpstreamKey) -> SessionRecord {
        SessionRecord {
            route: 0,
            upstream: Some(upstream),
            reason: CloseReason::Clean,
            client_to_upstream: [1, 0, 0, 0],
            upstream_to_client: [1, 0, 0, 0],
            reported: [[0; 4]; 2],
            connect_time: Some(Duration::from_micros(100)),
            first_byte_time: None,
            duration: Duration::from_millis(1),
            tcp_info: Some((40, 0)),
        }
    }

    #[test]
    fn a_closed_session_lands_in_its_route_and_upstream() {
        let mut st = WorkerStats::default();
        st.route(2).accepted += 1;
        st.session_closed(&SessionRecord {
            route: 2,
            upstream: Some(key(1, 0)),
            reason: CloseReason::Clean,
            client_to_upstream: [100, 5, 0, 0],
            upstream_to_client: [0, 7, 3, 0],
            reported: [[0; 4]; 2],
            connect_time: Some(Duration::from_micros(250)),
            first_byte_time: Some(Duration::from_millis(100)),
            duration: Duration::from_secs(2),
            tcp_info: Some((40, 3)),
        });
        let r = &st.routes[2];
        assert_eq!(r.closed[CloseReason::Clean as usize], 1);
        assert_eq!(r.bytes, [[100, 5, 0, 0], [0, 7, 3, 0]]);
        assert_eq!(r.connect_time.len(), 1);
        assert!(r.first_byte_time.equivalent(r.first_byte_time.value_at_quantile(0.5), 100_000));
        let up = st.upstream_stats(key(1, 0)).unwrap();
        assert_eq!(up.sessions, 1);
        assert_eq!(up.times.as_ref().unwrap().retransmits.max(), 3);
        assert_eq!(st.routes.len(), 3, "grown to the id");
    }

    #[test]
    fn bytes_reported_while_running_are_not_counted_again_at_close() {
        let mut st = WorkerStats::default();
        st.bytes_moved(0, [[100, 0, 0, 0], [0, 50, 0, 0]]);
        assert_eq!(st.routes[0].bytes, [[100, 0, 0, 0], [0, 50, 0, 0]], "visible while the session runs");
        st.session_closed(&SessionRecord {
            route: 0,
            upstream: None,
            reason: CloseReason::Clean,
            client_to_upstream: [150, 0, 0, 0],
            upstream_to_client: [0, 50, 0, 0],
            reported: [[100, 0, 0, 0], [0, 50, 0, 0]],
            connect_time: None,
            first_byte_time: None,
            duration: Duration::from_secs(1),
            tcp_info: None,
        });
        assert_eq!(st.routes[0].bytes, [[150, 0, 0, 0], [0, 50, 0, 0]], "the total, once");
    }

    #[test]
    fn an_upstream_that_never_connected_has_no_histograms() {
        let mut st = WorkerStats::default();
        st.upstream(key(3, 0)).connect_attempts += 1;
        st.upstream(key(3, 0)).connect_failures += 1;
        let up = st.upstream_stats(key(3, 0)).unwrap();
        assert_eq!((up.connect_attempts, up.connect_failures), (1, 1));
        assert!(up.times.is_none(), "failed connects make no histograms");
        assert!(st.upstream_stats(key(0, 0)).unwrap().times.is_none(), "nor do the slots below it");
        st.session_closed(&closed_on(key(3, 0)));
        assert_eq!(st.upstream_stats(key(3, 0)).unwrap().times.as_ref().unwrap().rtt.len(), 1);
    }

    #[test]
    fn a_forgotten_generation_is_freed_and_its_late_records_dropped() {
        let mut st = WorkerStats::default();
        let old = key(0, 4);
        st.upstream(old).connect_attempts += 1;
        st.session_closed(&closed_on(old));
        st.forget(old);
        assert!(st.upstream_stats(old).is_none(), "its numbers are gone");
        assert!(st.upstream_slots().all(|(_, s)| s.times.is_none() && s.sessions == 0), "and its histograms freed");
        // A session on an old version of the route still records for it.
        st.upstream(old).connect_attempts += 1;
        st.session_closed(&closed_on(old));
        let new = key(0, 5);
        st.upstream(new).connect_attempts += 1;
        let up = st.upstream_stats(new).unwrap();
        assert_eq!((up.connect_attempts, up.sessions), (1, 0), "nothing of the old occupant lands in the new one");
        assert!(up.times.is_none());
        st.session_closed(&closed_on(old));
        assert_eq!(st.upstream_stats(new).unwrap().sessions, 0, "not even after the new one recorded");
        assert_eq!(st.routes[0].closed[CloseReason::Clean as usize], 3, "the route still counts every session");
    }

    #[test]
    fn a_new_generation_replaces_an_old_one_this_worker_was_not_told_of() {
        let mut st = WorkerStats::default();
        st.session_closed(&closed_on(key(2, 0)));
        // The registry reclaimed and reused slot 2 while this worker held generation 0.
        st.upstream(key(2, 1)).connect_attempts += 1;
        let up = st.upstream_stats(key(2, 1)).unwrap();
        assert_eq!((up.connect_attempts, up.sessions), (1, 0), "the new occupant starts from zero");
        assert!(up.times.is_none(), "and the old histograms are freed");
        st.upstream(key(2, 0)).connect_attempts += 1;
        assert_eq!(st.upstream_stats(key(2, 1)).unwrap().connect_attempts, 1, "the old generation is dropped");
        st.forget(key(2, 0));
        assert!(st.upstream_stats(key(2, 1)).is_some(), "forgetting an older generation keeps the newer one");
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut h = time_histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
    }
}
