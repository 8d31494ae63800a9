//! The Prometheus text exposition format (0.0.4) of a `Snapshot`: counters,
//! gauges, and histograms as cumulative `_bucket`/`_sum`/`_count` in
//! seconds. Names are `sluice_*`; labels `route`, `upstream`, `direction`,
//! `mode`, `reason`, `result`, `cause`. The families about the process as a
//! whole (build, start, reload state, limits) are `operations.rs`'s.

use std::collections::BTreeMap;

use super::exposition::{Labels, Out, flag};
use super::snapshot::Snapshot;

/// `Content-Type` of the output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders `snap` for `/metrics`.
pub fn render(snap: &Snapshot) -> String {
    let mut out = Out(String::with_capacity(16 << 10));
    out.gauge("sluice_up", "1 while the process runs.", &[(vec![], 1.0)]);
    out.gauge(
        "sluice_ready",
        "1 when listeners are up and the process is not draining.",
        &[(vec![], flag(snap.ready))],
    );
    out.gauge("sluice_draining", "1 while a drain is under way.", &[(vec![], flag(snap.draining))]);
    out.gauge(
        "sluice_overloaded",
        "1 while new clients are refused for overload (overload: thresholds).",
        &[(vec![], flag(snap.overloaded))],
    );
    out.counter(
        "sluice_overload_episodes_total",
        "Times overload shedding started (overload: thresholds crossed upwards).",
        &[(vec![], snap.overload_episodes as f64)],
    );
    out.gauge(
        "sluice_generation",
        "1 for a process started afresh, one more than its predecessor's after each takeover (upgrade).",
        &[(vec![], snap.generation as f64)],
    );
    out.gauge("sluice_uptime_seconds", "Seconds since the process started.", &[(vec![], snap.uptime_secs)]);
    out.gauge("sluice_workers", "Worker threads.", &[(vec![], snap.workers as f64)]);
    super::operations::render(&mut out, snap);
    out.counter(
        "sluice_worker_busy_seconds_total",
        "Seconds workers spent working rather than waiting for events (wall time), summed over workers.",
        &[(vec![], snap.busy_ms as f64 / 1000.0)],
    );

    let per_route = |f: &dyn Fn(&super::snapshot::RouteSnapshot) -> f64| -> Vec<(Vec<(&str, String)>, f64)> {
        snap.routes.iter().map(|r| (vec![("route", r.name.clone())], f(r))).collect()
    };
    out.counter(
        "sluice_sessions_accepted_total",
        "Client connections accepted.",
        &per_route(&|r| r.sessions.accepted as f64),
    );
    out.gauge("sluice_sessions_active", "Sessions open now.", &per_route(&|r| r.sessions.active as f64));
    let closed: Vec<_> = snap
        .routes
        .iter()
        .flat_map(|r| {
            r.sessions
                .closed
                .iter()
                .map(|(reason, n)| (vec![("route", r.name.clone()), ("reason", reason.clone())], *n as f64))
        })
        .collect();
    out.counter("sluice_sessions_closed_total", "Sessions closed, by reason.", &closed);
    let mut bytes = Vec::new();
    for r in &snap.routes {
        for (dir, b) in [("client_to_upstream", r.client_to_upstream), ("upstream_to_client", r.upstream_to_client)] {
            for (mode, n) in [("spliced", b.spliced), ("copied", b.copied), ("uring", b.uring), ("sockmap", b.sockmap)]
            {
                let labels = vec![("route", r.name.clone()), ("direction", dir.to_owned()), ("mode", mode.to_owned())];
                bytes.push((labels, n as f64));
            }
        }
    }
    out.counter("sluice_bytes_total", "Bytes delivered, by direction and relay mode.", &bytes);
    out.counter(
        "sluice_connect_retries_total",
        "Upstream connect attempts that retried on another upstream after a failure.",
        &per_route(&|r| r.retries as f64),
    );
    out.histogram(
        "sluice_connect_duration_seconds",
        "Upstream connect time.",
        snap.routes.iter().map(|r| (vec![("route", r.name.clone())], &r.connect_time)),
    );
    out.histogram(
        "sluice_first_byte_duration_seconds",
        "Time from the upstream connection to its first byte.",
        snap.routes.iter().map(|r| (vec![("route", r.name.clone())], &r.first_byte_time)),
    );
    out.histogram(
        "sluice_session_duration_seconds",
        "Session duration, accept to close.",
        snap.routes.iter().map(|r| (vec![("route", r.name.clone())], &r.duration)),
    );

    let ups: Vec<_> = snap.routes.iter().flat_map(|r| r.upstreams.iter().map(move |u| (r, u))).collect();
    let up_labels = |r: &super::snapshot::RouteSnapshot, u: &super::snapshot::UpstreamSnapshot| {
        vec![("route", r.name.clone()), ("upstream", u.address.clone())]
    };
    out.counter(
        "sluice_upstream_sessions_total",
        "Sessions relayed to an upstream.",
        &ups.iter().map(|(r, u)| (up_labels(r, u), u.sessions as f64)).collect::<Vec<_>>(),
    );
    out.counter(
        "sluice_upstream_connect_attempts_total",
        "Upstream connect attempts.",
        &ups.iter().map(|(r, u)| (up_labels(r, u), u.connect_attempts as f64)).collect::<Vec<_>>(),
    );
    out.counter(
        "sluice_upstream_connect_failures_total",
        "Upstream connects refused, timed out or failed.",
        &ups.iter().map(|(r, u)| (up_labels(r, u), u.connect_failures as f64)).collect::<Vec<_>>(),
    );
    out.gauge(
        "sluice_upstream_up",
        "1 if active health checks say the upstream is up (always 1 without checks).",
        &ups.iter().map(|(r, u)| (up_labels(r, u), flag(u.health.up))).collect::<Vec<_>>(),
    );
    out.gauge(
        "sluice_upstream_ejected",
        "1 while outlier detection has the upstream ejected.",
        &ups.iter().map(|(r, u)| (up_labels(r, u), flag(u.health.ejected))).collect::<Vec<_>>(),
    );
    out.gauge(
        "sluice_upstream_active_sessions",
        "Sessions on the upstream now (connecting included).",
        &ups.iter().map(|(r, u)| (up_labels(r, u), u.health.active as f64)).collect::<Vec<_>>(),
    );
    out.gauge(
        "sluice_upstream_current",
        "1 if the upstream is in its route's current set (0: dropped by DNS or a reload).",
        &ups.iter().map(|(r, u)| (up_labels(r, u), flag(u.current))).collect::<Vec<_>>(),
    );
    // One series per upstream and value of `key`.
    let split = |key: &'static str, f: &dyn Fn(&super::snapshot::UpstreamState) -> [(&'static str, u64); 2]| {
        ups.iter()
            .flat_map(|(r, u)| {
                f(&u.health).map(|(v, n)| {
                    let mut l = up_labels(r, u);
                    l.push((key, v.to_owned()));
                    (l, n as f64)
                })
            })
            .collect::<Vec<_>>()
    };
    let checks = split("result", &|h| [("ok", h.checks_ok), ("failed", h.checks_failed)]);
    out.counter("sluice_upstream_health_checks_total", "Active health checks, by result.", &checks);
    let changes = split("to", &|h| [("down", h.went_down), ("up", h.went_up)]);
    out.counter("sluice_upstream_state_changes_total", "Times active checks changed an upstream's state.", &changes);
    out.counter(
        "sluice_upstream_ejections_total",
        "Times outlier detection ejected the upstream.",
        &ups.iter().map(|(r, u)| (up_labels(r, u), u.health.ejections as f64)).collect::<Vec<_>>(),
    );
    out.counter(
        "sluice_upstream_retransmits_total",
        "Segments retransmitted on upstream connections (TCP_INFO at close).",
        &ups.iter().map(|(r, u)| (up_labels(r, u), u.retransmits.sum as f64)).collect::<Vec<_>>(),
    );
    out.histogram(
        "sluice_upstream_connect_duration_seconds",
        "Upstream connect time, per upstream.",
        ups.iter().map(|(r, u)| (up_labels(r, u), &u.connect_time)),
    );
    out.histogram(
        "sluice_upstream_rtt_seconds",
        "Smoothed RTT of upstream connections at close (TCP_INFO).",
        ups.iter().map(|(r, u)| (up_labels(r, u), &u.rtt)),
    );

    let p = &snap.pipes;
    out.gauge("sluice_pipes_in_use", "Splice pipes lent to pumps now.", &[(vec![], p.in_use as f64)]);
    out.gauge("sluice_pipes_pooled", "Spare splice pipes in the pools now.", &[(vec![], p.pooled as f64)]);
    out.gauge("sluice_pipes_cap", "Splice pipes the process may hold.", &[(vec![], p.cap as f64)]);
    out.gauge(
        "sluice_pipes_bytes",
        "Capacity of the splice pipes held now, in use and pooled (what fs.pipe-user-pages-soft counts).",
        &[(vec![], p.bytes as f64)],
    );
    out.counter("sluice_pipes_created_total", "Splice pipes created.", &[(vec![], p.created as f64)]);
    out.counter(
        "sluice_pipes_lent_total",
        "Splice pipes handed to pumps, from the pool or new (pool hit rate: 1 - created / lent).",
        &[(vec![], p.lent as f64)],
    );
    out.counter(
        "sluice_pipes_refused_total",
        "Times a pipe was wanted and none could be had.",
        &[(vec![], p.refused as f64)],
    );
    out.counter(
        "sluice_pipes_grown_total",
        "Splice pipes doubled because their flow kept filling them while its destination kept up.",
        &[(vec![], p.grown as f64)],
    );
    out.counter(
        "sluice_copy_fallbacks_total",
        "Times a pump that was to splice copied instead, by reason: no_pipe (none to be had), splice_refused (the sockets refused splice; that pump copies for good); under relay: auto once per big message.",
        &[
            (vec![("reason", "no_pipe".to_owned())], p.copy_fallbacks.saturating_sub(p.splice_refused) as f64),
            (vec![("reason", "splice_refused".to_owned())], p.splice_refused as f64),
        ],
    );

    let a = &snap.auto;
    out.counter(
        "sluice_relay_auto_explored_total",
        "relay: auto runs that tried the stage that had measured dearer, to keep its estimate fresh (one run in 32 of a size class).",
        &[(vec![], a.explored as f64)],
    );
    let costs: Vec<(Labels<'_>, f64)> = a
        .classes
        .iter()
        .flat_map(|c| {
            [("copy", c.copy_ns_per_kib), ("splice", c.splice_ns_per_kib)].into_iter().filter_map(move |(stage, ns)| {
                ns.map(|ns| {
                    (
                        vec![("size_class", c.from_bytes.to_string()), ("stage", stage.to_owned())],
                        ns as f64 * 1e-9 / 1024.0,
                    )
                })
            })
        })
        .collect();
    out.gauge(
        "sluice_relay_auto_cost_seconds_per_byte",
        "What relay: auto measured each stage to cost per byte delivered, by message size class (its smallest message, bytes), mean over workers; the cheaper is used.",
        &costs,
    );

    let u = &snap.uring;
    out.gauge(
        "sluice_uring_buffers",
        "io_uring receive buffers made (relay: uring; pipe_size bytes each, kept for the process's life).",
        &[(vec![], u.buffers as f64)],
    );
    out.gauge(
        "sluice_uring_buffers_lent",
        "io_uring receive buffers holding bytes not yet sent, now.",
        &[(vec![], u.lent as f64)],
    );
    out.counter(
        "sluice_uring_starved_total",
        "io_uring receives that found no free buffer (they wait for one past the per-worker cap).",
        &[(vec![], u.starved as f64)],
    );

    let a = &snap.accept;
    out.counter(
        "sluice_accept_fd_exhausted_total",
        "Times accept hit the fd limit (one client shed each).",
        &[(vec![], a.fd_exhausted as f64)],
    );
    // One series per route and label of `map`: the route's refusals, pauses, local errors.
    let by_route = |key: &'static str, map: &dyn Fn(&super::snapshot::RouteSnapshot) -> &BTreeMap<String, u64>| {
        snap.routes
            .iter()
            .flat_map(|r| map(r).iter().map(|(v, n)| (vec![("route", r.name.clone()), (key, v.clone())], *n as f64)))
            .collect::<Vec<_>>()
    };
    out.counter(
        "sluice_accept_paused_total",
        "Times a listener stopped accepting at a connection limit, by reason (global, route); on its first route.",
        &by_route("reason", &|r| &r.accept_paused),
    );
    out.counter(
        "sluice_refused_total",
        "Clients refused right after accept (or after their PROXY header or ClientHello), by route and reason; \
         those refused before a route was chosen count on their listener's first route.",
        &by_route("reason", &|r| &r.refused),
    );
    out.counter(
        "sluice_local_errors_total",
        "Upstream connections this host could not open (fds, memory, ports, source), by route and cause; the \
         client was reset and no upstream blamed.",
        &by_route("cause", &|r| &r.local_errors),
    );
    out.counter(
        "sluice_reloads_total",
        "Configuration reloads, by result.",
        &[
            (vec![("result", "ok".to_owned())], snap.reloads.ok as f64),
            (vec![("result", "failed".to_owned())], snap.reloads.failed as f64),
        ],
    );
    out.counter(
        "sluice_control_refused_total",
        "Connections to the control socket refused because the peer's uid was neither sluice's nor root's.",
        &[(vec![], snap.control_refused as f64)],
    );
    let kernel: Vec<_> = snap.kernel.iter().map(|(k, v)| (vec![("stat", k.clone())], *v as f64)).collect();
    out.counter(
        "sluice_kernel_tcp_total",
        "Machine-wide TCP counters from /proc/net/snmp and /proc/net/netstat.",
        &kernel,
    );
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::snapshot::{Bytes, RouteSnapshot, SessionCounts};

    #[test]
    fn routes_render_as_labelled_series() {
        let mut snap = Snapshot { ready: true, workers: 2, ..Snapshot::default() };
        let mut r = RouteSnapshot {
            name: "web".into(),
            sessions: SessionCounts { accepted: 7, active: 1, ..Default::default() },
            client_to_upstream: Bytes { spliced: 1000, copied: 24, uring: 0, sockmap: 0 },
            ..Default::default()
        };
        r.sessions.closed.insert("clean".into(), 6);
        r.connect_time = crate::metrics::collect::summarise(&{
            let mut h = crate::metrics::stats::time_histogram();
            crate::metrics::stats::record(&mut h, 300);
            h
        });
        snap.routes.push(r);
        snap.routes[0].local_errors.insert("fds".into(), 3);
        snap.routes[0].refused.insert("no_route".into(), 2);
        snap.routes[0].accept_paused.insert("global".into(), 4);
        let text = render(&snap);
        for line in [
            "sluice_ready 1",
            "sluice_sessions_accepted_total{route=\"web\"} 7",
            "sluice_sessions_closed_total{route=\"web\",reason=\"clean\"} 6",
            "sluice_bytes_total{route=\"web\",direction=\"client_to_upstream\",mode=\"spliced\"} 1000",
            "sluice_connect_duration_seconds_bucket{route=\"web\",le=\"0.00025\"} 0",
            "sluice_connect_duration_seconds_bucket{route=\"web\",le=\"0.0005\"} 1",
            "sluice_connect_duration_seconds_bucket{route=\"web\",le=\"+Inf\"} 1",
            "sluice_connect_duration_seconds_count{route=\"web\"} 1",
            "# TYPE sluice_session_duration_seconds histogram",
            "sluice_local_errors_total{route=\"web\",cause=\"fds\"} 3",
            "sluice_refused_total{route=\"web\",reason=\"no_route\"} 2",
            "sluice_accept_paused_total{route=\"web\",reason=\"global\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(super::super::exposition::escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
