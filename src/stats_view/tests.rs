use super::*;
use crate::metrics::snapshot::{Bytes, SessionCounts, UpstreamSnapshot, UpstreamState};

fn latency(values_us: &[(u64, u64)]) -> Latency {
    // (pow2 upper bound, count)
    let pow2: Vec<[u64; 2]> = (0..24)
        .map(|i| 1u64 << i)
        .map(|u| [u, values_us.iter().find(|(b, _)| *b == u).map_or(0, |(_, n)| *n)])
        .collect();
    let count = values_us.iter().map(|(_, n)| n).sum();
    Latency { count, p50: 1_500, p99: 3_800, max: 3_900, pow2, ..Latency::default() }
}

fn route(name: &str, accepted: u64, active: u64, up: u64, down: u64, spliced: u64) -> RouteSnapshot {
    let mut r = RouteSnapshot {
        name: name.into(),
        listen: "127.0.0.1:8080".into(),
        sessions: SessionCounts { accepted, active, ..Default::default() },
        client_to_upstream: Bytes { spliced: spliced.min(up), copied: up - spliced.min(up), uring: 0, sockmap: 0 },
        upstream_to_client: Bytes { spliced: 0, copied: down, uring: 0, sockmap: 0 },
        ..Default::default()
    };
    r.sessions.closed.insert("clean".into(), accepted - active);
    r
}

fn snapshot(scale: u64) -> Snapshot {
    let mut web = route("web", 100 * scale, 3, 1_000_000 * scale, 4_000_000 * scale, 1_000_000 * scale);
    web.connect_time = latency(&[(1024, 5), (2048, 20), (4096, 10)]);
    let up = |address: &str, up: bool, ejected: bool| UpstreamSnapshot {
        address: address.into(),
        current: true,
        health: UpstreamState { up, ejected, active: 1, checks_ok: 9, checks_failed: 1, ..Default::default() },
        sessions: 50 * scale,
        ..Default::default()
    };
    web.upstreams =
        vec![up("10.0.0.1:80", true, false), up("10.0.0.2:80", false, false), up("10.0.0.3:80", true, true)];
    Snapshot {
        version: "0.1.0".into(),
        uptime_secs: 3725.0,
        ready: true,
        workers: 2,
        routes: vec![
            web,
            RouteSnapshot {
                listen: "127.0.0.1:5432".into(),
                ..route("db", 10 * scale, 1, 500 * scale, 500 * scale, 0)
            },
        ],
        ..Snapshot::default()
    }
}

#[test]
fn refusals_are_shown_per_second_by_reason() {
    let mut a = snapshot(1);
    assert!(!render(&a, None, None, 100).contains("refused"), "none yet");
    a.accept.rate_limited = 100;
    let mut b = snapshot(1);
    b.accept.rate_limited = 400;
    b.accept.overload = 20;
    b.overloaded = true;
    let v = render(&b, Some((&a, Duration::from_secs(2))), None, 100);
    assert!(v.contains("refused/s: rate_limited 150.0, overload 10.0, client_limit 0.0"), "{v}");
    assert!(v.contains("OVERLOADED"), "{v}");
    assert!(render(&a, None, None, 100).contains("refused: rate_limited 100"));
}

#[test]
fn routes_sharing_an_address_and_clients_no_route_took_are_shown() {
    let mut snap = snapshot(1);
    assert!(!render(&snap, None, None, 100).contains("shared"), "no shared address yet");
    let mut api = route("api", 5, 0, 10, 10, 0);
    api.listen = "127.0.0.1:5432".into();
    snap.routes.push(api);
    snap.accept.no_route = 3;
    snap.accept.bad_client_hello = 2;
    let v = render(&snap, None, None, 100);
    assert!(v.contains("shared 127.0.0.1:5432 (routed by TLS server name or original destination): db, api"), "{v}");
    assert!(
        v.contains("refused before a route: bad_client_hello 2, no_route 3, client_hello_timeout 0, route_limit 0"),
        "{v}"
    );
}

#[test]
fn first_view_has_no_rates() {
    let v = render(&snapshot(1), None, Some("db"), 100);
    let lines: Vec<&str> = v.lines().collect();
    assert_eq!(lines[0], "sluice 0.1.0  up 1h02m  2 workers  ready  reloads 0 ok / 0 failed");
    assert_eq!(lines[3], "route  active  sess/s  Mbit/s up  Mbit/s down  spliced  conn p50  conn p99  1st p99");
    assert_eq!(lines[5], "web         3       -          -            -      20%     1.5ms     3.8ms        -");
    assert_eq!(lines[6], "db          1       -          -            -       0%         -         -        -");
    assert!(v.contains("closed: web") || v.contains("closed: clean 106"), "{v}");
    assert!(v.contains("route db: upstream connect time: no samples"), "{v}");
}

#[test]
fn upstreams_show_their_state() {
    let v = render(&snapshot(1), None, Some("web"), 100);
    let rows: Vec<&str> = v.lines().skip_while(|l| *l != "route web: upstreams").skip(3).take(3).collect();
    assert_eq!(
        rows,
        [
            "10.0.0.1:80       up       1        50           0               9/1          0",
            "10.0.0.2:80     DOWN       1        50           0               9/1          0",
            "10.0.0.3:80  ejected       1        50           0               9/1          0"
        ],
        "{v}"
    );
}

#[test]
fn rates_come_from_two_snapshots() {
    let (a, b) = (snapshot(1), snapshot(3));
    let v = render(&b, Some((&a, Duration::from_secs(2))), None, 100);
    let web = v.lines().find(|l| l.starts_with("web")).unwrap();
    // 200 sessions and 2 MB up / 8 MB down in 2 s: 100/s, 8 and 32 Mbit/s.
    assert_eq!(web, "web         3   100.0       8.00        32.00      20%     1.5ms     3.8ms        -");
}

#[test]
fn bars_are_drawn_for_the_busiest_route() {
    let v = render(&snapshot(1), None, None, 60);
    let tail: Vec<&str> = v.lines().skip_while(|l| !l.starts_with("route web: upstream connect")).take(4).collect();
    assert_eq!(
        tail,
        [
            "route web: upstream connect time (35 samples, p50 1.5ms, p99",
            "512µs-1ms  5 ███████████▎",
            "    1-2ms 20 █████████████████████████████████████████████",
            "    2-4ms 10 ██████████████████████▌"
        ]
    );
}

#[test]
fn nothing_is_wider_than_the_terminal() {
    for w in [60, 120] {
        for l in render(&snapshot(1), Some((&snapshot(1), Duration::from_secs(1))), None, w).lines() {
            assert!(l.chars().count() <= w, "{w}: {l}");
        }
    }
}

#[test]
fn local_errors_are_shown_by_cause_once_there_are_any() {
    let mut snap = snapshot(1);
    assert!(!render(&snap, None, None, 100).contains("local errors"));
    snap.local_errors = [("fds", 8), ("memory", 0), ("ports", 2)].map(|(k, n)| (k.to_owned(), n)).into();
    let v = render(&snap, None, None, 100);
    assert!(v.lines().any(|l| l == "local errors (this host's, never an upstream's): fds 8, ports 2"), "{v}");
}

#[test]
fn auto_costs_are_shown_per_class_with_the_stage_in_use_marked() {
    use crate::metrics::snapshot::AutoClass;
    let mut snap = snapshot(1);
    assert!(!render(&snap, None, None, 200).contains("relay auto"), "nothing measured, nothing shown");
    let class = |from_bytes, copy, splice| AutoClass { from_bytes, copy_ns_per_kib: copy, splice_ns_per_kib: splice };
    snap.auto.classes =
        vec![class(1024, Some(410), Some(455)), class(64 << 10, Some(120), Some(95)), class(32 << 20, None, Some(60))];
    let v = render(&snap, None, None, 200);
    let line = "relay auto, ns per KiB copy|splice (* used): 1K 410*|455  64K 120|95*  32M+ -|60*";
    assert!(v.lines().any(|l| l == line), "{v}");
}

#[test]
fn unknown_routes_and_empty_snapshots_are_said_so() {
    assert!(render(&snapshot(1), None, Some("nope"), 80).contains("no route named \"nope\""));
    let empty = render(&Snapshot::default(), None, None, 80);
    assert!(empty.contains("(no routes)"), "{empty}");
}

#[test]
fn human_units() {
    assert_eq!(human_us(0), "0µs");
    assert_eq!(human_us(850), "850µs");
    assert_eq!(human_us(1_234), "1.2ms");
    assert_eq!(human_us(35_000), "35ms");
    assert_eq!(human_us(1_500_000), "1.5s");
    assert_eq!(human_us(125_000_000), "2m05s");
    assert_eq!(human_us(3_725_000_000), "1h02m");
}
