//! Turns the raw file into a validated `Config`: fills defaults (in one
//! place, from the named constants in `mod.rs`) and checks the rules that
//! span several fields (route names, duplicate or overlapping listen
//! addresses, empty lists). Errors carry the field path; `load.rs` finds
//! its line and column. `pass_through.rs` has the keys a pass-through route
//! (`original_destination: true`) may not have.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::field::{FieldError, FieldPath, Seg};
use super::net::HostPort;
use super::pool::PoolErrorAt;
use super::schema::{RawConfig, RawRoute};
use super::units::Workers;
use super::{
    Config, DEFAULT_BACKLOG, DEFAULT_CLIENT_HELLO_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRAIN_GRACE,
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_POOLED_PIPES, DEFAULT_PIPE_SIZE,
    DEFAULT_RELAY, Route, UpstreamSpec,
};

fn fail<T>(path: FieldPath, message: String) -> Result<T, FieldError> {
    Err(FieldError { field: path.to_string(), path, message })
}

/// Checks the cross-field rules and fills in defaults.
pub fn validate(raw: RawConfig) -> Result<Config, FieldError> {
    let routes_raw = match raw.routes {
        Some(r) if !r.is_empty() => r,
        _ => {
            return fail(
                FieldPath(vec![Seg::Key("routes")]),
                "no routes: add at least one route with a name, a listen address and upstreams".to_owned(),
            );
        }
    };
    let defaults = raw.defaults;
    let mut routes = Vec::with_capacity(routes_raw.len());
    for (i, r) in routes_raw.into_iter().enumerate() {
        routes.push(route(i, r, &defaults)?);
    }
    check_names(&routes)?;
    check_listen(&routes)?;
    super::shared::check_shared(&routes)?;
    Ok(Config {
        source: None,
        source_digest: 0,
        workers: raw.workers.unwrap_or(Workers::Auto),
        cpu_affinity: raw.cpu_affinity.unwrap_or(false),
        relay: raw.relay.unwrap_or(DEFAULT_RELAY),
        pipe_size: raw.pipe_size.map_or(DEFAULT_PIPE_SIZE, |s| s.get() as usize),
        max_pooled_pipes: raw.max_pooled_pipes.map_or(DEFAULT_MAX_POOLED_PIPES, |n| n.get() as usize),
        max_connections: raw.max_connections.map_or(DEFAULT_MAX_CONNECTIONS, |n| n.get() as usize),
        drain_timeout: raw.drain_timeout.map_or(DEFAULT_DRAIN_TIMEOUT, |d| d.get()),
        drain_grace: raw.drain_grace.map_or(DEFAULT_DRAIN_GRACE, |d| d.get()),
        watch: raw.watch.unwrap_or(false),
        overload: match &raw.overload {
            Some(o) => Some(o.validate().map_err(|(key, message)| {
                let path = FieldPath(vec![Seg::Key("overload"), Seg::Key(key)]);
                FieldError { field: path.to_string(), path, message }
            })?),
            None => None,
        },
        control_socket: match raw.control_socket {
            Some(p) if p.as_os_str().is_empty() => {
                return fail(FieldPath(vec![Seg::Key("control_socket")]), "an empty path".to_owned());
            }
            // A Unix socket path is at most 107 bytes (sun_path).
            Some(p) if p.as_os_str().len() > 107 => {
                return fail(
                    FieldPath(vec![Seg::Key("control_socket")]),
                    format!("{} is longer than a Unix socket path may be (107 bytes)", p.display()),
                );
            }
            p => p,
        },
        admin: match raw.admin {
            None => None,
            Some(a) => {
                let allow_remote = a.allow_remote.unwrap_or(false);
                if !allow_remote && !a.listen.0.ip().is_loopback() {
                    return fail(
                        FieldPath(vec![Seg::Key("admin"), Seg::Key("listen")]),
                        format!(
                            "admin address {} is not loopback: the admin port has no authentication; \
                             set admin.allow_remote: true to expose it anyway",
                            a.listen.0
                        ),
                    );
                }
                Some(super::Admin { listen: a.listen.0, allow_remote })
            }
        },
        log: super::Log {
            format: raw.log.format.unwrap_or_default(),
            access: raw.log.access.unwrap_or(true),
            flush_interval: raw.log.flush_interval.map(|d| d.get()),
        },
        routes,
    })
}

/// The configuration for `--listen ADDR --upstream ADDR...`: one route named
/// `default`, every other setting at its default.
pub fn single_route(listen: SocketAddr, upstreams: Vec<HostPort>) -> Result<Config, FieldError> {
    let route = RawRoute {
        name: "default".to_owned(),
        listen: super::net::ListenAddr(listen),
        upstreams: Some(
            upstreams
                .into_iter()
                .map(|address| super::schema::RawUpstream { address, weight: None, backup: false })
                .collect(),
        ),
        original_destination: None,
        transparent: None,
        destinations: None,
        connect_timeout: None,
        idle_timeout: None,
        half_close_timeout: None,
        drain_close_idle_after: None,
        backlog: None,
        max_connections: None,
        max_connections_per_client: None,
        max_connection_rate: None,
        max_connection_rate_per_client: None,
        source: None,
        mptcp: None,
        relay: None,
        server_names: None,
        alpn: None,
        client_hello_timeout: None,
        socket: Default::default(),
        balance: None,
        retries: None,
        health_check: None,
        outlier_detection: None,
        when_all_down: None,
        resolve_interval: None,
        proxy_protocol: None,
        accept_proxy_protocol: None,
        proxy_protocol_timeout: None,
        allow: None,
        deny: None,
    };
    validate(RawConfig { routes: Some(vec![route]), ..Default::default() }).map_err(|mut e| {
        e.field = "--upstream".to_owned();
        e
    })
}

fn route(i: usize, r: RawRoute, defaults: &super::schema::RawDefaults) -> Result<Route, FieldError> {
    let here = FieldPath::route(i);
    if r.name.is_empty()
        || r.name.len() > 64
        || !r.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return fail(
            here.key("name"),
            format!("invalid route name {:?}: use 1 to 64 letters, digits, '_', '.' or '-'", r.name),
        );
    }
    let original_destination = r.original_destination.unwrap_or(false);
    if original_destination {
        pass_through::check(&here, &r)?;
    }
    let upstreams = r.upstreams.as_deref().unwrap_or_default();
    if upstreams.is_empty() && !original_destination {
        return fail(
            here.key("upstreams"),
            format!(
                "route {:?} has no upstreams: list at least one (or set original_destination: true to send each \
                 connection where its client meant it to go)",
                r.name
            ),
        );
    }
    if !upstreams.is_empty() && upstreams.iter().all(|u| u.backup) {
        return fail(
            here.key("upstreams"),
            format!("route {:?} has only backup upstreams: at least one must be a primary (no `backup: true`)", r.name),
        );
    }
    let mut pool = r.pool().resolve(&defaults.pool()).map_err(|e| {
        let path = match e.at {
            PoolErrorAt::Route => here.clone(),
            PoolErrorAt::Defaults => FieldPath(vec![Seg::Key("defaults")]),
        };
        let path = path.key(e.key).key(e.field);
        FieldError { field: path.to_string(), path, message: e.message }
    })?;
    if original_destination {
        // One address per connection, the client's choice: nothing to balance,
        // check, eject or retry (`defaults:` may set those for other routes).
        pool.health_check = None;
        pool.outlier = None;
        pool.retries = 0;
    }
    let mut seen: HashMap<&HostPort, usize> = HashMap::new();
    for (j, u) in upstreams.iter().enumerate() {
        if let Some(first) = seen.insert(&u.address, j) {
            return fail(
                here.key("upstreams").index(j),
                format!(
                    "upstream {} is listed twice in route {:?} (also upstreams[{first}]): give it a weight instead",
                    u.address, r.name
                ),
            );
        }
    }
    let idle_timeout = r.idle_timeout.or(defaults.idle_timeout).map_or(DEFAULT_IDLE_TIMEOUT, |d| d.get());
    let source = r.source.or(defaults.source);
    check_source_family(&here, &r, source.and_then(|s| s.ip()))?;
    let (server_names, alpn) = names(&here, &r)?;
    let destinations = match &r.destinations {
        Some(list) if list.is_empty() => {
            return fail(
                here.key("destinations"),
                "an empty list: name at least one destination, or leave destinations out for the address's \
                 default route"
                    .to_owned(),
            );
        }
        Some(list) => list.clone(),
        None => Vec::new(),
    };
    Ok(Route {
        listen: r.listen.0,
        original_destination,
        transparent: r.transparent.unwrap_or(false),
        destinations,
        upstreams: r
            .upstreams
            .unwrap_or_default()
            .into_iter()
            .map(|u| UpstreamSpec {
                address: u.address,
                weight: u.weight.map_or(1, |w| w.get() as u32),
                backup: u.backup,
            })
            .collect(),
        connect_timeout: r.connect_timeout.or(defaults.connect_timeout).map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.get()),
        idle_timeout,
        half_close_timeout: r.half_close_timeout.or(defaults.half_close_timeout).map_or(idle_timeout, |d| d.get()),
        drain_close_idle_after: r.drain_close_idle_after.or(defaults.drain_close_idle_after).map(|d| d.get()),
        backlog: r.backlog.or(defaults.backlog).map_or(DEFAULT_BACKLOG, |n| n.get() as u32),
        max_connections: r.max_connections.or(defaults.max_connections).map(|n| n.get() as usize),
        max_connections_per_client: r
            .max_connections_per_client
            .or(defaults.max_connections_per_client)
            .map(|n| n.get() as usize),
        max_connection_rate: r.max_connection_rate.as_ref().or(defaults.max_connection_rate.as_ref()).map(|r| r.rate()),
        max_connection_rate_per_client: r
            .max_connection_rate_per_client
            .as_ref()
            .or(defaults.max_connection_rate_per_client.as_ref())
            .map(|c| c.limit()),
        source,
        mptcp: r.mptcp.or(defaults.mptcp).unwrap_or(false),
        relay: r.relay,
        server_names,
        alpn,
        client_hello_timeout: r
            .client_hello_timeout
            .or(defaults.client_hello_timeout)
            .map_or(DEFAULT_CLIENT_HELLO_TIMEOUT, |d| d.get()),
        socket: {
            let mut o = r.socket.or(&defaults.socket);
            // The two options that are on unless turned off, spelled out.
            o.nodelay = Some(o.nodelay());
            o.reuse_address = Some(o.reuse_address());
            o
        },
        pool,
        name: r.name,
    })
}

/// A route's `server_names` (parsed) and `alpn` (which needs names: the
/// default route takes whatever no name claims).
fn names(here: &FieldPath, r: &RawRoute) -> Result<(Vec<crate::tls::names::Pattern>, Vec<String>), FieldError> {
    let mut patterns = Vec::new();
    if let Some(list) = &r.server_names {
        if list.is_empty() {
            return fail(
                here.clone().key("server_names"),
                "an empty list: name at least one server, or leave server_names out for the address's default route"
                    .to_owned(),
            );
        }
        for (j, n) in list.iter().enumerate() {
            let p = crate::tls::names::pattern(n).map_err(|m| FieldError {
                field: here.clone().key("server_names").index(j).to_string(),
                path: here.clone().key("server_names").index(j),
                message: m,
            })?;
            patterns.push(p);
        }
    }
    let alpn = r.alpn.clone().unwrap_or_default();
    if !alpn.is_empty() && patterns.is_empty() {
        return fail(
            here.clone().key("alpn"),
            "alpn needs server_names: it picks among the routes of one name (the default route takes the rest)"
                .to_owned(),
        );
    }
    if r.alpn.as_ref().is_some_and(Vec::is_empty) {
        return fail(
            here.clone().key("alpn"),
            "an empty list: name a protocol (h2, http/1.1) or leave alpn out".to_owned(),
        );
    }
    for (j, p) in alpn.iter().enumerate() {
        if p.is_empty() || p.len() > 255 {
            return fail(here.clone().key("alpn").index(j), format!("{p:?}: an ALPN protocol is 1 to 255 bytes"));
        }
    }
    Ok((patterns, alpn))
}

/// A connection cannot go from one address family to the other: an upstream
/// given as an IP literal must be of the source's family. (Names resolve
/// later; an address of the other family fails then, as a local error.)
fn check_source_family(here: &FieldPath, r: &RawRoute, source: Option<IpAddr>) -> Result<(), FieldError> {
    let Some(ip) = source else {
        return Ok(());
    };
    let family = |v4: bool| if v4 { "IPv4" } else { "IPv6" };
    for (j, u) in r.upstreams.iter().flatten().enumerate() {
        let Some(addr) = u.address.as_socket_addr().filter(|a| a.is_ipv4() != ip.is_ipv4()) else {
            continue;
        };
        return match r.source.and_then(|s| s.ip()) {
            Some(_) => fail(
                here.clone().key("source"),
                format!(
                    "source address {ip} is {} but upstreams[{j}] {addr} is {}: a connection cannot go from one \
                     address family to the other; use a source of the upstreams' family",
                    family(ip.is_ipv4()),
                    family(addr.is_ipv4())
                ),
            ),
            None => fail(
                here.clone().key("upstreams").index(j),
                format!(
                    "upstream {addr} is {} but the route's source {ip} (from defaults.source) is {}: a connection \
                     cannot go from one address family to the other; give route {:?} a source of its own",
                    family(addr.is_ipv4()),
                    family(ip.is_ipv4()),
                    r.name
                ),
            ),
        };
    }
    Ok(())
}

fn check_names(routes: &[Route]) -> Result<(), FieldError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        if let Some(first) = seen.insert(&r.name, i) {
            return fail(
                FieldPath::route(i).key("name"),
                format!("route name {:?} is already used by routes[{first}]: names must be unique", r.name),
            );
        }
    }
    Ok(())
}

/// Two routes may not listen on the same address, nor on the same port where
/// one of them is the wildcard of that family: with SO_REUSEPORT the kernel
/// would let both bind and quietly send each client to only one of them.
fn check_listen(routes: &[Route]) -> Result<(), FieldError> {
    for (i, r) in routes.iter().enumerate() {
        for (j, other) in routes[..i].iter().enumerate() {
            let (a, b) = (r.listen, other.listen);
            if a.port() == 0 || a.port() != b.port() || a.is_ipv4() != b.is_ipv4() {
                continue;
            }
            // An address routed by name or by destination is shared (config/shared.rs checks its group).
            let by_name = routes.iter().any(|x| x.listen == a && super::shared::chooses(x));
            let why = if a.ip() == b.ip() && by_name {
                continue;
            } else if a.ip() == b.ip() {
                "is the same address as"
            } else if a.ip().is_unspecified() || b.ip().is_unspecified() {
                "overlaps"
            } else {
                continue;
            };
            return fail(
                FieldPath::route(i).key("listen"),
                format!(
                    "listen address {a} {why} {b} of route {:?} (routes[{j}]): each route needs its own address (routes may share one only when they choose by TLS server name, server_names, or by original destination, destinations)",
                    other.name
                ),
            );
        }
    }
    Ok(())
}

mod pass_through;

#[cfg(test)]
mod tests;
