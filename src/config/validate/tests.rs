//! The capture keys of a route (`original_destination`, `transparent`,
//! `destinations`, `source: client`) and what routes sharing a capture
//! address must agree on.

use crate::config::{Source, parse_str};

fn err(text: &str) -> String {
    parse_str(text, "proxy.yaml").unwrap_err().to_string()
}

/// A config of `routes` (each a list of `key: value` lines after name and listen).
fn routes(list: &[(&str, &str, &str)]) -> String {
    let mut y = String::from("routes:\n");
    for (name, listen, extra) in list {
        y.push_str(&format!("  - name: {name}\n    listen: \"{listen}\"\n"));
        for line in extra.lines() {
            y.push_str(&format!("    {line}\n"));
        }
    }
    y
}

const PASS: &str = "original_destination: true";

#[test]
fn a_pass_through_route_has_no_upstreams_and_no_retries_or_checks() {
    let c = parse_str(&routes(&[("out", "127.0.0.1:15001", PASS)]), "t").unwrap();
    let r = &c.routes[0];
    assert!(r.original_destination && r.upstreams.is_empty() && r.captures());
    assert_eq!((r.pool.retries, r.pool.health_check.is_none(), r.pool.outlier.is_none()), (0, true, true));
    // Defaults meant for other routes do not reach it.
    let text = format!(
        "defaults:\n  retries: 3\n  health_check: true\n  outlier_detection: true\n{}",
        routes(&[("out", "127.0.0.1:15001", PASS), ("web", "127.0.0.1:8080", "upstreams: [\"127.0.0.1:9\"]")])
    );
    let c = parse_str(&text, "t").unwrap();
    assert_eq!(c.routes[0].pool.retries, 0);
    assert!(c.routes[0].pool.health_check.is_none());
    assert_eq!(c.routes[1].pool.retries, 3);
    assert!(c.routes[1].pool.health_check.is_some());
}

#[test]
fn a_pass_through_route_that_lists_upstreams_or_their_keys_is_refused_at_the_key() {
    let e = err(&routes(&[("out", "127.0.0.1:15001", "original_destination: true\nupstreams: [\"127.0.0.1:9\"]")]));
    assert!(e.starts_with("proxy.yaml:5:16: routes[0].upstreams: route \"out\" sends each connection"), "{e}");
    for key in ["balance: least_conn", "retries: 2", "health_check: true", "outlier_detection: true"] {
        let e = err(&routes(&[("out", "127.0.0.1:15001", &format!("{PASS}\n{key}"))]));
        let name = key.split(':').next().unwrap();
        assert!(e.starts_with("proxy.yaml:5:") && e.contains(&format!(": routes[0].{name}: ")), "{e}");
        assert!(e.contains(&format!("so {name} has nothing to do")), "{e}");
    }
}

#[test]
fn a_route_without_upstreams_is_told_about_original_destination() {
    let e = err(&routes(&[("web", "127.0.0.1:8080", "idle_timeout: 1m")]));
    assert!(e.starts_with("proxy.yaml"), "{e}");
    assert!(e.contains("routes[0].upstreams: route \"web\" has no upstreams"), "{e}");
    assert!(e.contains("original_destination: true"), "{e}");
}

#[test]
fn routes_by_destination_share_an_address_with_one_default() {
    let text = routes(&[
        ("db", "127.0.0.1:15001", "destinations: [\":5432\"]\nupstreams: [\"127.0.0.1:5432\"]"),
        (
            "svc",
            "127.0.0.1:15001",
            "destinations: [\"192.0.2.0/24\", \"[2001:db8::/32]:443\"]\noriginal_destination: true",
        ),
        ("rest", "127.0.0.1:15001", PASS),
    ]);
    let c = parse_str(&text, "t").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(crate::config::listen_groups(&c.routes), vec![vec![0, 1, 2]]);
    assert_eq!(c.routes[1].destinations.len(), 2);
    assert_eq!(c.routes[1].destinations[1].to_string(), "[2001:db8::/32]:443");
    // Two defaults.
    let e = err(&routes(&[
        ("a", "127.0.0.1:15001", "destinations: [\":80\"]\noriginal_destination: true"),
        ("b", "127.0.0.1:15001", PASS),
        ("c", "127.0.0.1:15001", PASS),
    ]));
    assert!(e.contains("routes[2]: routes \"b\" and \"c\" on 127.0.0.1:15001 both leave destinations out"), "{e}");
    // The same destination twice.
    let e = err(&routes(&[
        ("a", "127.0.0.1:15001", "destinations: [\":80\"]\noriginal_destination: true"),
        ("b", "127.0.0.1:15001", "destinations: [\"192.0.2.1\", \":80\"]\noriginal_destination: true"),
    ]));
    assert!(e.contains("routes[1].destinations[1]: destination :80 is already claimed by route \"a\""), "{e}");
    // Not both ways of choosing on one address.
    let e = err(&routes(&[
        ("a", "127.0.0.1:15001", "destinations: [\":80\"]\noriginal_destination: true"),
        ("b", "127.0.0.1:15001", "server_names: [\"b.example\"]\nupstreams: [\"127.0.0.1:9\"]"),
    ]));
    assert!(e.contains("routes[1].server_names: routes on 127.0.0.1:15001 choose by original destination"), "{e}");
    // An empty list.
    let e = err(&routes(&[("a", "127.0.0.1:15001", "destinations: []\noriginal_destination: true")]));
    assert!(e.contains("routes[0].destinations: an empty list"), "{e}");
    // A bad entry names itself.
    let e = err(&routes(&[("a", "127.0.0.1:15001", "destinations: [\"192.0.2.0/40\"]\noriginal_destination: true")]));
    assert!(e.starts_with("proxy.yaml:4:19: routes[0].destinations[0]: invalid destination"), "{e}");
}

#[test]
fn two_plain_routes_on_one_address_are_still_refused() {
    let e = err(&routes(&[("a", "127.0.0.1:15001", PASS), ("b", "127.0.0.1:15001", "upstreams: [\"127.0.0.1:9\"]")]));
    assert!(e.contains("routes[1].listen: listen address 127.0.0.1:15001 is the same address as"), "{e}");
}

#[test]
fn routes_of_one_address_agree_on_transparent() {
    let e = err(&routes(&[
        ("a", "127.0.0.1:15001", "destinations: [\":80\"]\noriginal_destination: true\ntransparent: true"),
        ("b", "127.0.0.1:15001", PASS),
    ]));
    assert!(
        e.contains(
            "routes[1].transparent: routes on 127.0.0.1:15001 share one listener, so they must agree on transparent"
        ),
        "{e}"
    );
}

#[test]
fn source_client_is_a_source_and_describes_back() {
    let text = routes(&[
        ("in", "0.0.0.0:15006", "transparent: true\nsource: client\nupstreams: [\"127.0.0.1:8080\", \"[::1]:8080\"]"),
        ("out", "127.0.0.1:15001", "original_destination: true\nsocket: { mark: 0x539 }\nproxy_protocol: v2"),
        ("svc", "127.0.0.1:15002", "destinations: [\":443\"]\noriginal_destination: true"),
        ("dflt", "127.0.0.1:15002", "upstreams: [\"127.0.0.1:9\"]"),
    ]);
    let c = parse_str(&text, "t").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.routes[0].source, Some(Source::Client));
    assert_eq!(c.routes[0].source_ip(), None, "no fixed address: no family to check against the upstreams");
    assert!(c.routes[0].transparent);
    let described = c.describe(2);
    assert!(described.contains("    original_destination: true"), "{described}");
    assert!(described.contains("    source: client"), "{described}");
    assert!(described.contains("# 127.0.0.1:15002 routes by original destination"), "{described}");
    assert!(described.contains("#   :443 -> svc"), "{described}");
    assert!(described.contains("#   anything else -> dflt"), "{described}");
    let again = parse_str(&described, "again").unwrap_or_else(|e| panic!("{e}\n{described}"));
    assert_eq!(again, c);
}
