//! Local ports, the arithmetic behind `sluice doctor`'s port check: how
//! many ports a connect may pick from, and how many connections each
//! upstream address may need at once.
//!
//! A TCP connection is unique by (local address, local port, upstream
//! address, upstream port), so connect picks a port unique per upstream
//! address: from one local address, each upstream `IP:port` can have at
//! most as many connections open at once as there are ports in
//! `net.ipv4.ip_local_port_range` (minus `ip_local_reserved_ports`). That
//! holds without `source:` (the kernel's address) and with it (sluice binds
//! with `IP_BIND_ADDRESS_NO_PORT`, leaving the port to connect); a route
//! with a source address of its own has its own ports toward the same
//! upstream. No I/O here: the facts are passed in.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::config::Config;

/// Ports a connect may pick from: `range` (`ip_local_port_range`, both
/// ends included) minus the `reserved` ranges (`ip_local_reserved_ports`)
/// that fall inside it.
pub fn usable(range: (u64, u64), reserved: &[(u64, u64)]) -> u64 {
    let (lo, hi) = range;
    if hi < lo {
        return 0;
    }
    let mut clipped: Vec<(u64, u64)> =
        reserved.iter().map(|&(a, b)| (a.max(lo), b.min(hi))).filter(|(a, b)| a <= b).collect();
    clipped.sort_unstable();
    // Reserved entries may overlap ("8000-9000,8080"): count each port once.
    let (mut taken, mut covered_to) = (0, None::<u64>);
    for (a, b) in clipped {
        let start = covered_to.map_or(a, |c| a.max(c + 1));
        if start <= b {
            taken += b - start + 1;
        }
        covered_to = Some(covered_to.map_or(b, |c| c.max(b)));
    }
    hi - lo + 1 - taken
}

/// `ip_local_reserved_ports` as ranges: `"8080,9000-9100"`; empty for an
/// empty file; `None` if it does not parse.
pub fn parse_reserved(text: &str) -> Option<Vec<(u64, u64)>> {
    let text = text.trim();
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|item| {
            let item = item.trim();
            match item.split_once('-') {
                Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
                None => item.parse().ok().map(|p| (p, p)),
            }
        })
        .collect()
}

/// How many sessions one (source address, upstream address) pair may have open at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Demand {
    /// The routes' `source:`; `None`: the kernel's choice.
    pub source: Option<IpAddr>,
    /// The upstream as configured (a host name counts as one address).
    pub upstream: String,
    /// The routes that connect to it from that source.
    pub routes: Vec<String>,
    /// Their sessions at once, each route's limit spread over its primaries
    /// by weight, summed, and capped at the global `max_connections`.
    pub sessions: u64,
}

/// The sessions each (source, upstream address) pair may need at once,
/// busiest first. A route may have `min(its max_connections, the global
/// one)` sessions, spread over its primaries by weight (backups carry none
/// while the primaries are up); routes to the same upstream from the same
/// source share its ports.
pub fn demand(config: &Config) -> Vec<Demand> {
    let global = config.max_connections as u64;
    let mut by_key: BTreeMap<(Option<IpAddr>, String), Demand> = BTreeMap::new();
    for r in &config.routes {
        let cap = r.max_connections.map_or(global, |n| (n as u64).min(global));
        let total_weight: u64 = r.upstreams.iter().filter(|u| !u.backup).map(|u| u64::from(u.weight)).sum();
        for u in r.upstreams.iter().filter(|u| !u.backup) {
            let share = (cap * u64::from(u.weight)).div_ceil(total_weight.max(1));
            let key = (r.source_ip(), u.address.to_string());
            let d = by_key.entry(key).or_insert_with(|| Demand {
                source: r.source_ip(),
                upstream: u.address.to_string(),
                routes: Vec::new(),
                sessions: 0,
            });
            if !d.routes.contains(&r.name) {
                d.routes.push(r.name.clone());
            }
            d.sessions = (d.sessions + share).min(global);
        }
    }
    let mut out: Vec<Demand> = by_key.into_values().collect();
    out.sort_by(|a, b| b.sessions.cmp(&a.sessions).then_with(|| a.upstream.cmp(&b.upstream)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    #[test]
    fn usable_ports_are_the_range_minus_reserved_ports_inside_it() {
        assert_eq!(usable((32768, 60999), &[]), 28_232);
        assert_eq!(usable((1024, 65535), &[]), 64_512);
        assert_eq!(usable((60000, 61000), &[(60000, 60009)]), 991);
        // Outside the range: no effect; overlapping entries count once.
        assert_eq!(usable((32768, 60999), &[(8080, 8080), (40000, 40099), (40050, 40149), (40100, 40100)]), 28_082);
        assert_eq!(usable((100, 50), &[]), 0, "an inverted range leaves nothing");
        assert_eq!(usable((100, 199), &[(0, 1000)]), 0);
    }

    #[test]
    fn reserved_ports_parse_as_ports_and_ranges() {
        assert_eq!(parse_reserved("\n"), Some(vec![]));
        assert_eq!(parse_reserved("8080,9000-9100\n"), Some(vec![(8080, 8080), (9000, 9100)]));
        assert_eq!(parse_reserved("x"), None);
    }

    fn config(routes: &str) -> Config {
        parse_str(&format!("max_connections: 50000\nroutes:\n{routes}"), "t").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_route_spreads_its_limit_over_its_primaries_by_weight() {
        let c = config(
            "  - name: web\n    listen: 127.0.0.1:1\n    max_connections: 40000\n    upstreams:\n\
             \x20     - 10.0.0.1:80\n      - { address: \"10.0.0.2:80\", weight: 3 }\n\
             \x20     - { address: \"10.0.0.3:80\", backup: true }\n",
        );
        let d = demand(&c);
        assert_eq!(d.len(), 2, "backups carry nothing while the primaries are up: {d:?}");
        assert_eq!((d[0].upstream.as_str(), d[0].sessions), ("10.0.0.2:80", 30_000));
        assert_eq!((d[1].upstream.as_str(), d[1].sessions), ("10.0.0.1:80", 10_000));
        assert_eq!(d[0].routes, vec!["web".to_owned()]);
    }

    #[test]
    fn routes_share_an_upstreams_ports_unless_their_sources_differ() {
        let two = |src_a: &str, src_b: &str| {
            demand(&config(&format!(
                "  - name: a\n    listen: 127.0.0.1:1\n    upstreams: [10.0.0.1:80]\n    max_connections: 30000\n{src_a}\
                 \x20 - name: b\n    listen: 127.0.0.1:2\n    upstreams: [10.0.0.1:80]\n    max_connections: 30000\n{src_b}"
            )))
        };
        let shared = two("", "");
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0].sessions, 50_000, "30,000 + 30,000, capped at the global max_connections");
        assert_eq!(shared[0].routes, vec!["a".to_owned(), "b".to_owned()]);
        let apart = two("    source: 10.0.0.7\n", "    source: 10.0.0.8\n");
        assert_eq!(apart.len(), 2);
        assert!(apart.iter().all(|d| d.sessions == 30_000), "{apart:?}");
        assert_eq!(apart.iter().filter(|d| d.source == Some([10, 0, 0, 7].into())).count(), 1);
    }
}
