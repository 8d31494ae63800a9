//! Routes that share a listen address: which do, and what they must agree
//! on. Routes share an address when they name the same one and choose by
//! the client's ClientHello (`server_names`) or by the connection's original
//! destination (`destinations`, a capture address), never both on one
//! address; on one address at most one route leaves the key out (the
//! default), no name is claimed twice for the same ALPN protocols nor a
//! destination twice, and everything the listener does before a route is
//! known is the same for all (backlog, PROXY header, ClientHello timeout,
//! `transparent`, listener socket options). Everything else stays each
//! route's. Two routes on the same `IP:0` share the port the kernel picks
//! only when one of them sets `server_names` or `destinations`; otherwise
//! each gets its own, as before.

use super::Route;
use super::field::{FieldError, FieldPath, Seg};
use crate::tls::names::{NameTable, RouteNames};

/// The route chooses its clients among others on its address: by TLS
/// server name or by original destination.
pub(super) fn chooses(r: &Route) -> bool {
    !r.server_names.is_empty() || !r.destinations.is_empty()
}

/// Indices of the routes on each listen address, in config order (every
/// route is in exactly one group; most groups have one route).
pub fn listen_groups(routes: &[Route]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let joins = groups.iter_mut().find(|g| {
            let first = &routes[g[0]];
            first.listen == r.listen && (r.listen.port() != 0 || g.iter().chain([&i]).any(|&k| chooses(&routes[k])))
        });
        match joins {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    // An ephemeral-port group is decided by all its members: a route without
    // server_names that came first must join the ones after it that set them.
    let mut merged: Vec<Vec<usize>> = Vec::new();
    for g in groups {
        let shares = g.iter().any(|&k| chooses(&routes[k]));
        match merged.iter_mut().find(|m| {
            routes[m[0]].listen == routes[g[0]].listen
                && routes[g[0]].listen.port() == 0
                && (shares || m.iter().any(|&k| chooses(&routes[k])))
        }) {
            Some(m) => {
                m.extend(g);
                m.sort_unstable();
            }
            None => merged.push(g),
        }
    }
    merged
}

/// Checks every group of routes that share an address: a name table without
/// conflicts, and one set of listener settings.
pub fn check_shared(routes: &[Route]) -> Result<(), FieldError> {
    for g in listen_groups(routes) {
        if g.len() == 1 && !chooses(&routes[g[0]]) {
            continue;
        }
        if g.iter().any(|&i| !routes[i].destinations.is_empty()) {
            check_destinations(routes, &g)?;
        } else {
            check_names(routes, &g)?;
        }
        let first = &routes[g[0]];
        for &i in &g[1..] {
            if let Some((key, mine, theirs)) = disagreement(first, &routes[i]) {
                let mut path = FieldPath(vec![Seg::Key("routes"), Seg::Index(i)]);
                for k in key.split('.') {
                    path.0.push(Seg::Key(k));
                }
                let message = format!(
                    "routes on {} share one listener, so they must agree on {key}: route {:?} has {mine}, \
                     route {:?} has {theirs}",
                    first.listen, routes[i].name, first.name
                );
                return Err(FieldError { field: path.to_string(), path, message });
            }
        }
    }
    Ok(())
}

/// The name table of a group that routes by TLS server name.
fn check_names(routes: &[Route], g: &[usize]) -> Result<(), FieldError> {
    let claims: Vec<RouteNames<'_>> = g
        .iter()
        .map(|&i| RouteNames { route: &routes[i].name, names: &routes[i].server_names, alpn: &routes[i].alpn })
        .collect();
    if let Err(c) = NameTable::build(&claims) {
        let at = g[c.route];
        // A name claimed twice points at the name; a second default at its route.
        let mut path = FieldPath(vec![Seg::Key("routes"), Seg::Index(at)]);
        if let Some(j) = c.name {
            path.0.extend([Seg::Key("server_names"), Seg::Index(j)]);
        }
        return Err(FieldError { field: path.to_string(), path, message: c.message });
    }
    Ok(())
}

/// A group that routes by original destination: no route of it routes by
/// name, one default at most, no destination claimed twice.
fn check_destinations(routes: &[Route], g: &[usize]) -> Result<(), FieldError> {
    let at = |i: usize, rest: &[Seg]| {
        let mut path = FieldPath(vec![Seg::Key("routes"), Seg::Index(i)]);
        path.0.extend_from_slice(rest);
        path
    };
    let listen = routes[g[0]].listen;
    let mut default: Option<usize> = None;
    let mut seen: Vec<(crate::destination::Destination, usize)> = Vec::new();
    for &i in g {
        let r = &routes[i];
        if !r.server_names.is_empty() {
            let path = at(i, &[Seg::Key("server_names")]);
            let message = format!(
                "routes on {listen} choose by original destination (destinations:), so route {:?} cannot choose \
                 by TLS server name too: give it a listen address of its own",
                r.name
            );
            return Err(FieldError { field: path.to_string(), path, message });
        }
        if r.destinations.is_empty() {
            if let Some(d) = default {
                let path = at(i, &[]);
                let message = format!(
                    "routes {:?} and {:?} on {listen} both leave destinations out: only one route of an address \
                     that routes by destination may be its default; list this one's destinations",
                    routes[d].name, r.name
                );
                return Err(FieldError { field: path.to_string(), path, message });
            }
            default = Some(i);
        }
        for (j, d) in r.destinations.iter().enumerate() {
            if let Some((_, k)) = seen.iter().find(|(x, _)| x == d) {
                let path = at(i, &[Seg::Key("destinations"), Seg::Index(j)]);
                let message = if *k == i {
                    format!("destination {d} is listed twice in route {:?}", r.name)
                } else {
                    format!("destination {d} is already claimed by route {:?} on {listen}", routes[*k].name)
                };
                return Err(FieldError { field: path.to_string(), path, message });
            }
            seen.push((*d, i));
        }
    }
    Ok(())
}

/// The first listener setting on which `r` differs from `first`: (key, r's value, first's value).
fn disagreement(first: &Route, r: &Route) -> Option<(&'static str, String, String)> {
    let (a, b) = (&r.socket, &first.socket);
    let dbg = |v: &dyn std::fmt::Debug| format!("{v:?}");
    let pa = &r.pool;
    let pb = &first.pool;
    let checks: [(&'static str, String, String); 11] = [
        ("backlog", r.backlog.to_string(), first.backlog.to_string()),
        ("transparent", r.transparent.to_string(), first.transparent.to_string()),
        ("accept_proxy_protocol", pa.accept_proxy_protocol.to_string(), pb.accept_proxy_protocol.to_string()),
        ("proxy_protocol_timeout", dbg(&pa.proxy_protocol_timeout), dbg(&pb.proxy_protocol_timeout)),
        ("client_hello_timeout", dbg(&r.client_hello_timeout), dbg(&first.client_hello_timeout)),
        ("socket.reuse_address", a.reuse_address().to_string(), b.reuse_address().to_string()),
        ("socket.send_buffer", dbg(&a.send_buffer), dbg(&b.send_buffer)),
        ("socket.recv_buffer", dbg(&a.recv_buffer), dbg(&b.recv_buffer)),
        ("socket.congestion", dbg(&a.congestion), dbg(&b.congestion)),
        ("socket.fastopen", dbg(&a.fastopen), dbg(&b.fastopen)),
        ("socket.defer_accept", dbg(&a.defer_accept), dbg(&b.defer_accept)),
    ];
    checks.into_iter().find(|(_, x, y)| x != y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    fn groups(yaml: &str) -> Vec<Vec<usize>> {
        listen_groups(&parse_str(yaml, "t").unwrap().routes)
    }

    #[test]
    fn routes_share_an_address_only_when_they_route_by_name() {
        let r = |name: &str, listen: &str, names: &str| {
            format!("  - name: {name}\n    listen: \"{listen}\"\n    upstreams: [\"127.0.0.1:1\"]\n{names}")
        };
        let sni = |n: &str| format!("    server_names: [\"{n}\"]\n");
        // Fixed ports: same address, one group.
        let y = format!(
            "routes:\n{}{}{}",
            r("a", "127.0.0.1:443", &sni("a.example.com")),
            r("b", "127.0.0.1:8080", ""),
            r("c", "127.0.0.1:443", "")
        );
        assert_eq!(groups(&y), vec![vec![0, 2], vec![1]]);
        // Port 0: plain routes each get their own port; a name-routed group shares one.
        let y = format!("routes:\n{}{}", r("a", "127.0.0.1:0", ""), r("b", "127.0.0.1:0", ""));
        assert_eq!(groups(&y), vec![vec![0], vec![1]]);
        let y = format!(
            "routes:\n{}{}{}",
            r("default", "127.0.0.1:0", ""),
            r("a", "127.0.0.1:0", &sni("a.example.com")),
            r("b", "127.0.0.1:0", &sni("b.example.com"))
        );
        assert_eq!(groups(&y), vec![vec![0, 1, 2]]);
    }
}
