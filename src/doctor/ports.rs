//! The local-port check of `sluice doctor`: how many local ports each
//! upstream address may use (`sys::local_ports`) against how many sessions
//! the routes may have open to it at once.

use super::{Facts, Finding, Level, bad, ok, unknown};
use crate::config::Config;
use crate::sys::local_ports;

/// Local ports per upstream address against what the routes may need at
/// once (`local_ports`): one OK line that explains the limit, or a warning
/// per (source, upstream address) that may need more.
pub(super) fn findings(config: &Config, f: &Facts) -> Vec<Finding> {
    const CHECK: &str = "net.ipv4.ip_local_port_range";
    let Some((lo, hi)) = f.port_range else {
        return vec![unknown(CHECK)];
    };
    let ports = local_ports::usable((lo, hi), &f.reserved_ports);
    let in_range = (hi + 1).saturating_sub(lo);
    let range = match in_range - ports {
        0 => format!("{lo}-{hi} = {ports} ports"),
        reserved => format!("{lo}-{hi} less {reserved} in ip_local_reserved_ports = {ports} ports"),
    };
    let demand = local_ports::demand(config);
    let to = |d: &local_ports::Demand| match d.source {
        Some(s) => format!("{} from {s}", d.upstream),
        None => d.upstream.clone(),
    };
    let routes = |d: &local_ports::Demand| match d.routes.as_slice() {
        [one] => format!("route {one}"),
        many => format!("routes {}", many.join(", ")),
    };
    let over: Vec<&local_ports::Demand> = demand.iter().filter(|d| d.sessions > ports).collect();
    if over.is_empty() {
        let busiest = demand
            .first()
            .map_or(String::new(), |d| format!("; the most any needs is {} ({}: {})", d.sessions, routes(d), to(d)));
        return vec![ok(
            CHECK,
            format!(
                "{range}: from one local address each upstream address can have {ports} connections open at once \
                 (a route's source: address has {ports} of its own){busiest}"
            ),
        )];
    }
    let widest = local_ports::usable((1024, 65535), &f.reserved_ports);
    over.into_iter()
        .map(|d| {
            let fix = if d.sessions <= widest {
                "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"".to_owned()
            } else {
                format!(
                    "add upstream addresses, or split the traffic over routes or instances with different source: \
                     addresses (each has its own ports: {widest} with 1024-65535), or lower max_connections of {} \
                     until no upstream address needs more than {ports}",
                    routes(d)
                )
            };
            bad(
                Level::Warn,
                CHECK,
                format!(
                    "{range} per upstream address, but {} may have {} sessions open at once to {} (max_connections \
                     spread over the upstreams by weight): past {ports}, connects fail with EADDRNOTAVAIL (local \
                     errors: the client is reset, the upstream not blamed)",
                    routes(d),
                    d.sessions,
                    to(d)
                ),
                fix,
            )
        })
        .collect()
}
