//! Capture addresses on loopback, without any NAT rule (the real captures,
//! through nftables in network namespaces, are in their own file): a
//! client that dials a pass-through route (`original_destination: true`)
//! directly would make sluice connect to itself, so it is reset and counted
//! as a `loop`, on a plain and on a `transparent` listener; `destinations:`
//! routing by the original destination (here the listener's own address)
//! with a default route, and `no_route` without one; `dst=` in the access log.

use std::io::{self, Read, Write};

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::backends;
use crate::harness::{Sluice, is_root, run};
use crate::observability::{get, with_admin};

/// The value of the metric line that starts with `series` (`-1` if absent).
fn metric(m: &str, series: &str) -> i64 {
    m.lines().find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok()).map_or(-1, |v| v as i64)
}

/// `n` clients in a row, each reset without a byte.
fn each_is_reset(s: &Sluice, n: usize) {
    for i in 0..n {
        match outcome(s.addr()) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "client {i}: {e}"),
            Ok(got) => panic!("client {i} was not reset: got {got:?}\n{}", s.log()),
        }
    }
}

/// Connects and reads to the end: the error the client saw, if any.
fn outcome(addr: SocketAddr) -> io::Result<Vec<u8>> {
    let mut c = backends::connect_maybe_reset(addr)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut got = Vec::new();
    c.read_to_end(&mut got)?;
    Ok(got)
}

/// Waits (bounded) until `/metrics` has `series` at `want`.
fn wait_metric(admin: SocketAddr, series: &str, want: i64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = get(admin, "/metrics");
        if metric(&m, series) == want || Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pass-through route's client that dialled the listener itself is reset
/// and counted as a loop; sluice makes no connection for it.
fn a_direct_client_is_a_loop(extra: &str) {
    let yaml =
        format!("workers: 2\nroutes:\n  - name: out\n    listen: 127.0.0.1:0\n    original_destination: true\n{extra}");
    let (s, admin) = with_admin(&yaml);
    each_is_reset(&s, 3);
    let m = wait_metric(admin, "sluice_refused_total{route=\"out\",reason=\"loop\"}", 3);
    assert_eq!(metric(&m, "sluice_refused_total{route=\"out\",reason=\"loop\"}"), 3, "{m}");
    assert_eq!(metric(&m, "sluice_sessions_closed_total{route=\"out\",reason=\"loop\"}"), 3, "{m}");
    // It never connected to itself: no attempt, and sluice accepted only the three.
    let attempts = "sluice_upstream_connect_attempts_total{route=\"out\",upstream=\"original_destination\"}";
    assert!(metric(&m, attempts) <= 0, "{m}");
    assert_eq!(metric(&m, "sluice_sessions_accepted_total{route=\"out\"}"), 3, "{m}");
    assert!(s.wait_log("loop: its original destination", Duration::from_secs(5)), "{}", s.log());
    let (code, out, err) = run(&["stats", "--admin", &admin.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("loop 3"), "`sluice stats` does not show the loops:\n{out}");
}

#[test]
fn a_pass_through_route_dialled_directly_is_refused_as_a_loop() {
    a_direct_client_is_a_loop("");
}

#[test]
fn a_transparent_pass_through_listener_dialled_directly_is_refused_as_a_loop() {
    if !is_root() {
        eprintln!("SKIP: transparent: true (IP_TRANSPARENT) needs CAP_NET_ADMIN");
        return;
    }
    a_direct_client_is_a_loop("    transparent: true\n");
}

#[test]
fn a_transparent_listener_without_the_privilege_names_the_route_and_what_it_needs() {
    let Some(nobody) = crate::nonroot::as_nobody() else { return };
    let yaml =
        "routes:\n  - name: tproxy\n    listen: 127.0.0.1:0\n    transparent: true\n    upstreams: [\"127.0.0.1:9\"]\n";
    let (_dir, path) = crate::harness::temp_config(yaml);
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(&nobody).arg(crate::harness::BIN).arg("-c").arg(&path);
    let (code, _, err) = crate::harness::run_command(cmd);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("route tproxy") && err.contains("IP_TRANSPARENT"), "{err}");
    assert!(err.contains("CAP_NET_ADMIN"), "{err}");
}

/// Routes on one address by destination, the listener's own address being
/// the destination of a client that dials it: `block` (when given) is the
/// first route's entry, the second route's is elsewhere; `default` adds a
/// route without `destinations:` to `fallback`.
fn by_destination(block: Option<&str>, default: bool) -> (Sluice, SocketAddr, [SocketAddr; 3]) {
    let ups = [backends::serve(answer("first")), backends::serve(answer("second")), backends::serve(answer("rest"))];
    let mut yaml = String::from("workers: 1\nroutes:\n");
    if let Some(b) = block {
        yaml.push_str(&format!(
            "  - name: first\n    listen: 127.0.0.1:0\n    destinations: [\"{b}\"]\n    upstreams: [\"{}\"]\n",
            ups[0]
        ));
    }
    yaml.push_str(
        "  - name: second\n    listen: 127.0.0.1:0\n    destinations: [\"192.0.2.0/24\", \":9\"]\n    \
         original_destination: true\n",
    );
    if default {
        yaml.push_str(&format!("  - name: rest\n    listen: 127.0.0.1:0\n    upstreams: [\"{}\"]\n", ups[2]));
    }
    let (s, admin) = with_admin(&yaml);
    (s, admin, ups)
}

/// A backend that says `name` and closes.
fn answer(name: &'static str) -> impl Fn(TcpStream) + Send + Sync + Clone + 'static {
    move |mut c: TcpStream| {
        let _ = c.write_all(name.as_bytes());
    }
}

#[test]
fn the_most_specific_destination_takes_a_client_and_the_default_the_rest() {
    // The client dials the listener: its destination is 127.0.0.1:<port>, which the first route's block takes.
    let (s, _admin, _) = by_destination(Some("127.0.0.0/8"), true);
    assert_eq!(outcome(s.addr()).expect("answer"), b"first");
    let dst = format!("dst={} ", s.addr());
    assert!(s.wait_log("route=first client=", Duration::from_secs(5)), "{}", s.log());
    assert!(s.log().contains(&dst), "no {dst} in the access log:\n{}", s.log());
    drop(s);
    // No entry takes it: the default route does.
    let (s, _admin, _) = by_destination(None, true);
    assert_eq!(outcome(s.addr()).expect("answer"), b"rest");
    assert!(s.wait_log("route=rest client=", Duration::from_secs(5)), "{}", s.log());
    assert!(s.log().contains(&format!("dst={} ", s.addr())), "{}", s.log());
}

#[test]
fn without_a_default_route_an_unclaimed_destination_is_reset_as_no_route() {
    let (s, admin, _) = by_destination(Some("10.0.0.0/8"), false);
    each_is_reset(&s, 2);
    // No route took them: counted on the address's first route.
    let m = wait_metric(admin, "sluice_refused_total{route=\"first\",reason=\"no_route\"}", 2);
    assert_eq!(metric(&m, "sluice_refused_total{route=\"first\",reason=\"no_route\"}"), 2, "{m}");
    assert!(s.wait_log("no_route: no route takes original destination", Duration::from_secs(5)), "{}", s.log());
}

#[test]
fn a_route_that_does_not_capture_logs_no_destination() {
    let up = backends::serve(answer("plain"));
    let s = Sluice::with_config(
        &format!("workers: 1\nroutes:\n  - name: plain\n    listen: 127.0.0.1:0\n    upstreams: [\"{up}\"]\n"),
        &[],
    );
    assert_eq!(outcome(s.addr()).expect("answer"), b"plain");
    assert!(s.wait_log("route=plain client=", Duration::from_secs(5)), "{}", s.log());
    assert!(s.log().contains(&format!("upstream={up} dst=- ")), "{}", s.log());
}
