//! Building a `Snapshot`: every worker's stats summed and its histograms
//! merged (each worker's mutex held only while its numbers are copied),
//! summarised into percentiles and bucket counts. Upstream numbers count
//! only for the generation the registry listed; an upstream reclaimed while
//! the snapshot is taken is left out.

use std::collections::BTreeMap;
use std::sync::Arc;

use hdrhistogram::Histogram;

use super::snapshot::{
    AcceptSnapshot, AutoClass, AutoSnapshot, Bytes, Latency, PROMETHEUS_BOUNDS_US, PipeSnapshot, RouteSnapshot,
    SessionCounts, Snapshot, UpstreamSnapshot, UpstreamState,
};
use super::stats::{RouteStats, UpstreamStats, UpstreamTimes, WorkerMetrics};
use super::{CloseReason, Pause, Refusal, Registry, WorkerCounters};
use crate::local_error::LocalCause;
use crate::relay::cost::{CLASSES as AUTO_CLASSES, class_floor};
use crate::upstream::UpstreamHealth;

/// What a snapshot is built from.
pub struct Sources<'a> {
    /// Every worker's metrics.
    pub workers: &'a [Arc<WorkerMetrics>],
    /// Route and upstream names.
    pub registry: &'a Registry,
    /// Process-wide facts the caller knows (version, uptime, readiness,
    /// reloads, pipe cap, kernel counters); routes, pipes and accept are filled here.
    pub base: Snapshot,
}

/// Sums and merges everything into one snapshot.
pub fn collect(src: Sources<'_>) -> Snapshot {
    let (route_info, upstream_info) = src.registry.list();
    let mut routes: Vec<RouteStats> = route_info.iter().map(|_| RouteStats::default()).collect();
    let mut upstreams: Vec<UpstreamStats> = upstream_info.iter().map(|_| UpstreamStats::default()).collect();
    // Slot id → index in `upstream_info`.
    let mut by_slot: Vec<Option<usize>> = Vec::new();
    for (i, u) in upstream_info.iter().enumerate() {
        if by_slot.len() <= u.key.id {
            by_slot.resize(u.key.id + 1, None);
        }
        by_slot[u.key.id] = Some(i);
    }
    // Reclaimed since the registry was listed (a worker has forgotten it).
    let mut gone = vec![false; upstream_info.len()];
    let mut snap = src.base;
    for w in src.workers {
        {
            let st = w.stats();
            for (into, from) in routes.iter_mut().zip(&st.routes) {
                merge_route(into, from);
            }
            for (key, from) in st.upstream_slots() {
                let Some(i) = by_slot.get(key.id).copied().flatten() else {
                    continue;
                };
                match key.generation.cmp(&upstream_info[i].key.generation) {
                    std::cmp::Ordering::Equal => merge_upstream(&mut upstreams[i], from),
                    std::cmp::Ordering::Greater => gone[i] = true,
                    // This worker has not recorded for the listed occupant.
                    std::cmp::Ordering::Less => {}
                }
            }
        }
        add_counters(&mut snap, &w.counters);
    }
    snap.auto = auto_costs(src.workers);
    add_route_totals(&mut snap, &routes);
    snap.routes = route_info
        .iter()
        .zip(&routes)
        .enumerate()
        .filter_map(|(id, (info, r))| {
            let closed: u64 = r.closed.iter().sum();
            let active = r.accepted.saturating_sub(closed);
            (info.configured || active > 0).then(|| RouteSnapshot {
                name: info.name.clone(),
                listen: info.listen.clone(),
                sessions: SessionCounts {
                    accepted: r.accepted,
                    active,
                    closed: CloseReason::ALL
                        .iter()
                        .map(|&c| (c.as_str().to_owned(), r.closed[c as usize]))
                        .filter(|(_, n)| *n > 0)
                        .collect(),
                },
                client_to_upstream: Bytes {
                    spliced: r.bytes[0][0],
                    copied: r.bytes[0][1],
                    uring: r.bytes[0][2],
                    sockmap: r.bytes[0][3],
                },
                upstream_to_client: Bytes {
                    spliced: r.bytes[1][0],
                    copied: r.bytes[1][1],
                    uring: r.bytes[1][2],
                    sockmap: r.bytes[1][3],
                },
                connect_attempts: r.connect_attempts,
                connect_failures: r.connect_failures,
                retries: r.retries,
                connect_time: summarise(&r.connect_time),
                first_byte_time: summarise(&r.first_byte_time),
                duration: summarise(&r.duration),
                refused: labelled(&Refusal::ALL, Refusal::as_str, &r.refused),
                accept_paused: labelled(&Pause::ALL, Pause::as_str, &r.paused),
                local_errors: labelled(&LocalCause::ALL, LocalCause::as_str, &r.local_errors),
                upstreams: upstream_info
                    .iter()
                    .zip(&upstreams)
                    .zip(&gone)
                    .filter(|((u, _), gone)| u.route == id && !**gone)
                    .map(|((u, s), _)| {
                        let times = s.times.as_deref();
                        let summary = |h: fn(&UpstreamTimes) -> &Histogram<u32>| times.map(h).map(summarise);
                        UpstreamSnapshot {
                            address: u.address.clone(),
                            current: u.current,
                            health: state(&u.health),
                            sessions: s.sessions,
                            connect_attempts: s.connect_attempts,
                            connect_failures: s.connect_failures,
                            connect_time: summary(|t| &t.connect_time).unwrap_or_else(empty),
                            rtt: summary(|t| &t.rtt).unwrap_or_else(empty),
                            retransmits: summary(|t| &t.retransmits).unwrap_or_else(empty),
                        }
                    })
                    .collect(),
            })
        })
        .collect();
    snap
}

fn merge_route(into: &mut RouteStats, from: &RouteStats) {
    into.accepted += from.accepted;
    for (a, b) in into.closed.iter_mut().zip(from.closed) {
        *a += b;
    }
    for (into, from) in into.bytes.iter_mut().flatten().zip(from.bytes.iter().flatten()) {
        *into += from;
    }
    into.connect_attempts += from.connect_attempts;
    into.connect_failures += from.connect_failures;
    into.retries += from.retries;
    for (into, from) in into.refused.iter_mut().zip(from.refused) {
        *into += from;
    }
    for (into, from) in into.paused.iter_mut().zip(from.paused) {
        *into += from;
    }
    for (into, from) in into.local_errors.iter_mut().zip(from.local_errors) {
        *into += from;
    }
    merge(&mut into.connect_time, &from.connect_time);
    merge(&mut into.first_byte_time, &from.first_byte_time);
    merge(&mut into.duration, &from.duration);
}

fn merge_upstream(into: &mut UpstreamStats, from: &UpstreamStats) {
    into.sessions += from.sessions;
    into.connect_attempts += from.connect_attempts;
    into.connect_failures += from.connect_failures;
    if let Some(from) = &from.times {
        let into = into.times();
        merge(&mut into.connect_time, &from.connect_time);
        merge(&mut into.rtt, &from.rtt);
        merge(&mut into.retransmits, &from.retransmits);
    }
}

fn merge(into: &mut Histogram<u32>, from: &Histogram<u32>) {
    if !from.is_empty() {
        // Same bounds on both sides, so this cannot fail; saturate rather than panic anyway.
        let _ = into.add(from);
    }
}

fn add_counters(snap: &mut Snapshot, c: &WorkerCounters) {
    let g = WorkerCounters::get;
    let p: &mut PipeSnapshot = &mut snap.pipes;
    p.in_use += g(&c.pipes_in_use);
    p.pooled += g(&c.pipes_pooled);
    p.created += g(&c.pipes_created);
    p.lent += g(&c.pipes_lent);
    p.refused += g(&c.pipes_refused);
    p.grown += g(&c.pipes_grown);
    p.copy_fallbacks += g(&c.copy_fallbacks);
    p.splice_refused += g(&c.splice_refused);
    snap.busy_ms += g(&c.busy_ms);
    snap.uring.buffers += g(&c.uring_buffers);
    snap.uring.lent += g(&c.uring_lent);
    snap.uring.starved += g(&c.uring_starved);
    let a: &mut AcceptSnapshot = &mut snap.accept;
    a.fd_exhausted += g(&c.accept_fd_exhausted);
}

/// The totals over every route (removed ones too) of what is counted per
/// route: refusals and pauses (`accept`) and local errors.
fn add_route_totals(snap: &mut Snapshot, routes: &[RouteStats]) {
    let sum = |f: &dyn Fn(&RouteStats) -> u64| routes.iter().map(f).sum::<u64>();
    let refused = |why: Refusal| sum(&|r| r.refused[why as usize]);
    let a: &mut AcceptSnapshot = &mut snap.accept;
    a.paused_global = sum(&|r| r.paused[Pause::Global as usize]);
    a.paused_route = sum(&|r| r.paused[Pause::Route as usize]);
    a.refused_client_limit = refused(Refusal::ClientLimit);
    a.refused_acl = refused(Refusal::Acl);
    a.bad_proxy_header = refused(Refusal::BadProxyHeader);
    a.bad_client_hello = refused(Refusal::BadClientHello);
    a.no_route = refused(Refusal::NoRoute);
    a.refused_loop = refused(Refusal::Loop);
    a.client_hello_timeout = refused(Refusal::ClientHelloTimeout);
    a.refused_route_limit = refused(Refusal::RouteLimit);
    a.rate_limited = refused(Refusal::RateLimited);
    a.overload = refused(Refusal::Overload);
    for cause in LocalCause::ALL {
        snap.local_errors.insert(cause.as_str().to_owned(), sum(&|r| r.local_errors[cause as usize]));
    }
}

/// Every label of `names` with its count in `counts` (indexed alike), zeros too.
fn labelled<T: Copy>(names: &[T], label: fn(T) -> &'static str, counts: &[u64]) -> BTreeMap<String, u64> {
    names.iter().zip(counts).map(|(&n, &c)| (label(n).to_owned(), c)).collect()
}

/// `relay: auto`'s estimates: per class and stage, the mean over the
/// workers that measured it.
fn auto_costs(workers: &[Arc<WorkerMetrics>]) -> AutoSnapshot {
    let g = WorkerCounters::get;
    let mean = |class: usize, stage: usize| {
        let (sum, n) = workers
            .iter()
            .map(|w| g(&w.counters.auto_cost[class][stage]))
            .filter(|&ns| ns > 0)
            .fold((0u64, 0u64), |(sum, n), ns| (sum.saturating_add(ns), n + 1));
        (n > 0).then(|| sum / n)
    };
    let classes = (0..AUTO_CLASSES)
        .filter_map(|class| {
            let (copy, splice) = (mean(class, 0), mean(class, 1));
            (copy.is_some() || splice.is_some()).then_some(AutoClass {
                from_bytes: class_floor(class),
                copy_ns_per_kib: copy,
                splice_ns_per_kib: splice,
            })
        })
        .collect();
    AutoSnapshot { explored: workers.iter().map(|w| g(&w.counters.auto_explored)).sum(), classes }
}

fn state(h: &UpstreamHealth) -> UpstreamState {
    let c = &h.counters;
    let g = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    UpstreamState {
        up: h.is_up(),
        ejected: h.is_ejected(),
        active: h.active() as u64,
        checks_ok: g(&c.checks_ok),
        checks_failed: g(&c.checks_failed),
        went_down: g(&c.went_down),
        went_up: g(&c.went_up),
        ejections: g(&c.ejections),
    }
}

/// The summary of an empty histogram.
fn empty() -> Latency {
    Latency { buckets: PROMETHEUS_BOUNDS_US.iter().map(|&b| [b, 0]).collect(), ..Latency::default() }
}

/// Percentiles, Prometheus buckets and power-of-two buckets of a histogram.
pub fn summarise(h: &Histogram<u32>) -> Latency {
    if h.is_empty() {
        return empty();
    }
    // One pass over the recorded values fills both bucket sets: cheaper than
    // a count_between per bucket, which walks the whole counts array each time.
    let top = (64 - h.max().leading_zeros()) as usize; // bit length of max
    let mut pow2: Vec<[u64; 2]> = (0..=top).map(|i| [1u64 << i, 0]).collect();
    let mut buckets: Vec<[u64; 2]> = PROMETHEUS_BOUNDS_US.iter().map(|&b| [b, 0]).collect();
    for v in h.iter_recorded() {
        let (value, n) = (h.highest_equivalent(v.value_iterated_to()), u64::from(v.count_at_value()));
        // Power-of-two bucket [2^(i-1), 2^i) has index i = bit length of the value.
        let i = (64 - value.leading_zeros()) as usize;
        if let Some(b) = pow2.get_mut(i) {
            b[1] += n;
        }
        if let Some(first) = buckets.iter().position(|[le, _]| value <= *le) {
            buckets[first][1] += n;
        }
    }
    // Prometheus buckets are cumulative.
    for i in 1..buckets.len() {
        buckets[i][1] += buckets[i - 1][1];
    }
    let q = |p: f64| h.value_at_quantile(p);
    Latency {
        count: h.len(),
        sum: (h.mean() * h.len() as f64).round() as u64,
        min: h.min(),
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        max: h.max(),
        buckets,
        pow2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::stats::{SessionRecord, record, time_histogram};
    use std::time::Duration;

    #[test]
    fn summaries_have_percentiles_and_buckets() {
        let mut h = time_histogram();
        for v in [100, 200, 300, 1_500, 3_000] {
            record(&mut h, v);
        }
        let s = summarise(&h);
        assert_eq!(s.count, 5);
        assert_eq!(s.min, 100);
        assert!(h.equivalent(s.max, 3_000));
        assert!(h.equivalent(s.p50, 300));
        assert_eq!(s.buckets.iter().find(|[b, _]| *b == 250).map(|[_, n]| *n), Some(2), "cumulative at 250µs");
        assert_eq!(s.buckets.last().map(|[_, n]| *n), Some(5));
        let in_pow2: u64 = s.pow2.iter().map(|[_, n]| n).sum();
        assert_eq!(in_pow2, 5, "every value in exactly one power-of-two bucket");
        let bucket = |upper: u64| s.pow2.iter().find(|[u, _]| *u == upper).map(|[_, n]| *n);
        assert_eq!((bucket(128), bucket(256), bucket(512)), (Some(1), Some(1), Some(1)), "100, 200, 300: one each");
    }

    #[test]
    fn workers_are_summed_and_merged() {
        let reg = Registry::default();
        let r = reg.route_id("web");
        let u = reg.upstream_key(r, "127.0.0.1:1".parse().unwrap());
        reg.set_configured(&[(r, "127.0.0.1:80".parse().unwrap())]);
        let workers: Vec<Arc<WorkerMetrics>> = (0..2).map(|_| Arc::new(WorkerMetrics::default())).collect();
        for (i, w) in workers.iter().enumerate() {
            let mut st = w.stats();
            st.route(r).accepted += 2;
            st.session_closed(&SessionRecord {
                route: r,
                upstream: Some(u),
                reason: CloseReason::Clean,
                client_to_upstream: [10, 1, 0, 0],
                upstream_to_client: [20, 2, 0, 0],
                reported: [[0; 4]; 2],
                connect_time: Some(Duration::from_micros(100 * (i as u64 + 1))),
                first_byte_time: None,
                duration: Duration::from_millis(5),
                tcp_info: None,
            });
        }
        WorkerCounters::inc(&workers[1].counters.pipes_created);
        workers[0].count_local_error(r, LocalCause::Fds);
        workers[1].count_local_error(r, LocalCause::Fds);
        workers[1].count_refusal(r, Refusal::NoRoute);
        workers[0].count_pause(r, Pause::Route);
        let snap = collect(Sources { workers: &workers, registry: &reg, base: Snapshot::default() });
        let web = &snap.routes[0];
        assert_eq!((web.sessions.accepted, web.sessions.active), (4, 2));
        assert_eq!(web.sessions.closed.get("clean"), Some(&2));
        assert_eq!(web.client_to_upstream, Bytes { spliced: 20, copied: 2, uring: 0, sockmap: 0 });
        assert_eq!(web.upstream_to_client.total(), 44);
        assert_eq!(web.connect_time.count, 2);
        assert_eq!(web.upstreams[0].sessions, 2);
        assert_eq!(web.listen, "127.0.0.1:80");
        assert_eq!(snap.pipes.created, 1);
        assert_eq!(snap.local_errors.get("fds"), Some(&2));
        assert_eq!(snap.local_errors.get("ports"), Some(&0), "every cause is there, zeros too");
        assert_eq!(web.local_errors.get("fds"), Some(&2), "and per route");
        assert_eq!(web.refused.get("no_route"), Some(&1));
        assert_eq!(web.refused.get("acl"), Some(&0), "every reason, zeros too");
        assert_eq!(web.accept_paused.get("route"), Some(&1));
        assert_eq!((snap.accept.no_route, snap.accept.paused_route, snap.accept.paused_global), (1, 1, 0), "totals");
    }

    fn closed_on(route: usize, upstream: crate::upstream::UpstreamKey) -> SessionRecord {
        SessionRecord {
            route,
            upstream: Some(upstream),
            reason: CloseReason::Clean,
            client_to_upstream: [10, 0, 0, 0],
            upstream_to_client: [10, 0, 0, 0],
            reported: [[0; 4]; 2],
            connect_time: Some(Duration::from_micros(100)),
            first_byte_time: None,
            duration: Duration::from_millis(5),
            tcp_info: Some((50, 0)),
        }
    }

    #[test]
    fn a_reclaimed_upstream_leaves_the_snapshot_and_its_slot_starts_clean() {
        use crate::metrics::registry::RETENTION;
        let reg = Registry::default();
        let r = reg.route_id("web");
        reg.set_configured(&[(r, "127.0.0.1:80".parse().unwrap())]);
        let old = reg.upstream_key(r, "10.0.0.1:80".parse().unwrap());
        reg.set_current(&[old]);
        let workers: Vec<Arc<WorkerMetrics>> = (0..2).map(|_| Arc::new(WorkerMetrics::default())).collect();
        for w in &workers {
            w.stats().session_closed(&closed_on(r, old));
        }
        // DNS moves the route on; the old address is quiet for the retention.
        let new = reg.upstream_key(r, "10.0.0.2:80".parse().unwrap());
        reg.set_current(&[new]);
        let t0 = std::time::Instant::now();
        reg.reclaim(t0);
        let snap = collect(Sources { workers: &workers, registry: &reg, base: Snapshot::default() });
        assert_eq!(snap.routes[0].upstreams.len(), 2, "kept during the retention");
        assert_eq!(snap.routes[0].upstreams[0].sessions, 2);
        let freed = reg.reclaim(t0 + RETENTION).freed;
        assert_eq!(freed, [old]);
        for w in &workers {
            let mut st = w.stats();
            freed.iter().for_each(|&k| st.forget(k));
        }
        let snap = collect(Sources { workers: &workers, registry: &reg, base: Snapshot::default() });
        let addresses: Vec<&str> = snap.routes[0].upstreams.iter().map(|u| u.address.as_str()).collect();
        assert_eq!(addresses, ["10.0.0.2:80"], "its series are gone");
        assert_eq!(snap.routes[0].sessions.closed.get("clean"), Some(&2), "the route's own counts stay");
        // A later address gets the slot; a session on an old route version still closes on the old key.
        let third = reg.upstream_key(r, "10.0.0.3:80".parse().unwrap());
        assert_eq!(third.id, old.id);
        reg.set_current(&[new, third]);
        workers[0].stats().upstream(third).connect_attempts += 1;
        workers[0].stats().session_closed(&closed_on(r, old));
        workers[1].stats().session_closed(&closed_on(r, old));
        let snap = collect(Sources { workers: &workers, registry: &reg, base: Snapshot::default() });
        let got = snap.routes[0].upstreams.iter().find(|u| u.address == "10.0.0.3:80").unwrap();
        assert_eq!((got.connect_attempts, got.sessions, got.rtt.count), (1, 0, 0), "none of the old numbers");
        // Reclaimed between listing the registry and reading a worker: left out, not shown as zeros.
        workers[1].stats().forget(third);
        let snap = collect(Sources { workers: &workers, registry: &reg, base: Snapshot::default() });
        assert!(snap.routes[0].upstreams.iter().all(|u| u.address != "10.0.0.3:80"));
    }
}
