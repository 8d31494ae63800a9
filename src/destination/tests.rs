use std::net::SocketAddr;

use proptest::prelude::*;

use super::{Destination, DestinationTable};

fn d(s: &str) -> Destination {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn entries_parse_in_every_documented_form_and_print_back() {
    for (text, shown) in [
        ("192.0.2.0/24", "192.0.2.0/24"),
        ("192.0.2.10", "192.0.2.10/32"),
        ("192.0.2.10:80", "192.0.2.10/32:80"),
        ("192.0.2.0/24:80", "192.0.2.0/24:80"),
        (":80", ":80"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("[2001:db8::1]:80", "[2001:db8::1/128]:80"),
        ("[2001:db8::/32]:443", "[2001:db8::/32]:443"),
        ("::ffff:192.0.2.1", "192.0.2.1/32"),
    ] {
        assert_eq!(d(text).to_string(), shown, "{text}");
        assert_eq!(d(shown), d(text), "{shown} reads back");
    }
}

#[test]
fn bad_entries_say_what_is_wrong_and_what_is_expected() {
    for (text, says) in [
        (":0", "not a port"),
        (":http", "not a port"),
        ("192.0.2.1:99999", "not a port"),
        ("192.0.2.1/33", "prefix length"),
        ("192.0.2.1/24", "host bits"),
        ("[2001:db8::1", "closing"),
        ("[2001:db8::1]", "port must follow"),
        ("example.com:80", "address block"),
        ("", "address block"),
    ] {
        let e = text.parse::<Destination>().unwrap_err();
        assert!(e.contains(says), "{text}: {e}");
        assert!(e.contains("such as"), "{text}: {e}");
    }
}

#[test]
fn a_port_beats_a_prefix_and_the_longer_prefix_beats_the_shorter() {
    let t = DestinationTable::build(&[
        &[d("192.0.2.0/24")],
        &[d(":80")],
        &[d("192.0.2.10:80")],
        &[d("192.0.2.0/25")],
        &[d("[2001:db8::/32]:80")],
        &[],
    ])
    .unwrap();
    assert_eq!(t.pick(a("192.0.2.10:80")), Some(2), "address and port");
    assert_eq!(t.pick(a("192.0.2.11:80")), Some(1), "a port beats any prefix (Envoy's order)");
    assert_eq!(t.pick(a("192.0.2.11:443")), Some(3), "the /25 beats the /24");
    assert_eq!(t.pick(a("192.0.2.200:443")), Some(0));
    assert_eq!(t.pick(a("[2001:db8::5]:80")), Some(4));
    assert_eq!(t.pick(a("[2001:db8::5]:81")), Some(5), "the default");
    assert_eq!(t.pick(a("[::ffff:192.0.2.200]:443")), Some(0), "a mapped IPv4 address is IPv4");
    assert_eq!(t.pick(a("198.51.100.1:22")), Some(5), "the default");
}

#[test]
fn without_a_default_an_unmatched_destination_has_no_route() {
    let t = DestinationTable::build(&[&[d(":80")], &[d(":5432")]]).unwrap();
    assert_eq!(t.pick(a("203.0.113.1:5432")), Some(1));
    assert_eq!(t.pick(a("203.0.113.1:6379")), None);
}

#[test]
fn two_defaults_or_one_entry_claimed_twice_are_refused_with_the_routes_named() {
    let e = DestinationTable::build(&[&[], &[d(":80")], &[]]).unwrap_err();
    assert!(e.contains("routes 0 and 2"), "{e}");
    let e = DestinationTable::build(&[&[d("192.0.2.10:80")], &[d("192.0.2.10/32:80")]]).unwrap_err();
    assert!(e.contains("claimed twice") && e.contains("routes 0 and 1"), "{e}");
}

/// The entry's rank the slow way, to check the table's order against.
fn reference(routes: &[Vec<Destination>], dst: SocketAddr) -> Option<usize> {
    let mut best: Option<((bool, u8), usize)> = None;
    for (i, entries) in routes.iter().enumerate() {
        for e in entries.iter().filter(|e| e.matches(dst)) {
            let rank = e.rank();
            if best.is_none_or(|(r, _)| rank > r) {
                best = Some((rank, i));
            }
        }
    }
    best.map(|(_, i)| i).or_else(|| routes.iter().position(Vec::is_empty))
}

fn entry() -> impl Strategy<Value = Destination> {
    // A small space (192.0.2.x, ports 80/81), so entries overlap often.
    (prop::option::of((0u8..4, prop::sample::select(vec![24u8, 26, 30, 32]))), prop::option::of(80u16..82))
        .prop_filter("an entry names an address or a port", |(b, p)| b.is_some() || p.is_some())
        .prop_map(|(b, p)| {
            let block = b.map(|(host, len)| {
                let ip = u32::from(std::net::Ipv4Addr::new(192, 0, 2, host * 64)) & (u32::MAX << (32 - len));
                format!("{}/{len}", std::net::Ipv4Addr::from(ip)).parse().unwrap()
            });
            Destination { block, port: p }
        })
}

proptest! {
    #[test]
    fn the_table_picks_what_the_most_specific_rule_says(
        routes in prop::collection::vec(prop::collection::vec(entry(), 0..4), 1..5),
        host in 0u8..=255,
        port in 79u16..83,
    ) {
        let dst = SocketAddr::from(([192, 0, 2, host], port));
        let slices: Vec<&[Destination]> = routes.iter().map(Vec::as_slice).collect();
        match DestinationTable::build(&slices) {
            Ok(t) => prop_assert_eq!(t.pick(dst), reference(&routes, dst)),
            Err(e) => {
                let defaults = routes.iter().filter(|r| r.is_empty()).count();
                let all: Vec<Destination> = routes.iter().flatten().copied().collect();
                let dup = all.iter().enumerate().any(|(i, x)| all[..i].contains(x));
                prop_assert!(defaults > 1 || dup, "refused without cause: {}", e);
            }
        }
    }

    #[test]
    fn parsing_any_text_never_panics_and_what_parses_prints_back(s in "[0-9a-f:./\\[\\] ]{0,24}") {
        if let Ok(e) = s.parse::<Destination>() {
            prop_assert_eq!(e.to_string().parse::<Destination>(), Ok(e));
        }
    }
}
