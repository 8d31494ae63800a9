//! Renders a validated `Config` back as YAML for `sluice check`: every
//! setting with its effective value, defaults merged, so what a route will
//! really do is one command away.

use std::fmt::Write as _;

use super::units::{fmt_duration, fmt_size};
use super::{Config, Pool, Route, SocketOptions, Workers};

impl Config {
    /// The effective configuration as YAML (defaults merged).
    /// `workers_now` is what `workers: auto` means on this machine.
    pub fn describe(&self, workers_now: usize) -> String {
        let mut s = format!("# {}: configuration is valid; effective settings with defaults merged\n", self.origin());
        let mut line = |k: &str, v: String| {
            let _ = writeln!(s, "{k}: {v}");
        };
        line(
            "workers",
            match self.workers {
                Workers::Auto => format!("auto  # {workers_now} on this machine"),
                Workers::Count(n) => n.to_string(),
            },
        );
        line("cpu_affinity", self.cpu_affinity.to_string());
        line("relay", self.relay.to_string());
        line("pipe_size", fmt_size(self.pipe_size as u64));
        line("max_pooled_pipes", self.max_pooled_pipes.to_string());
        line("max_connections", self.max_connections.to_string());
        line("drain_grace", fmt_duration(self.drain_grace));
        line("drain_timeout", fmt_duration(self.drain_timeout));
        line("watch", self.watch.to_string());
        match &self.overload {
            Some(o) => {
                let mem = match (o.max_memory, o.resume_memory) {
                    (Some(m), Some(r)) => format!(", max_memory: {}, resume_memory: {}", fmt_size(m), fmt_size(r)),
                    _ => String::new(),
                };
                line(
                    "overload",
                    format!("{{ max_fd_use: \"{}%\", resume_fd_use: \"{}%\"{mem} }}", o.max_fd_use, o.resume_fd_use),
                );
            }
            None => line("# overload", "off (no shedding before the fd limit)".to_owned()),
        }
        match &self.control_socket {
            Some(p) => line("control_socket", format!("{:?}", p.display().to_string())),
            None => line("# control_socket", "none (no upgrades in place: sluice --takeover needs one)".to_owned()),
        }
        match &self.admin {
            Some(a) => {
                s.push_str(&format!("admin:\n  listen: {}\n  allow_remote: {}\n", a.listen, a.allow_remote));
            }
            None => s.push_str("# admin: off\n"),
        }
        let format = match self.log.format {
            super::LogFormat::Text => "text",
            super::LogFormat::Json => "json",
        };
        s.push_str(&format!("log:\n  format: {format}\n  access: {}\n", self.log.access));
        match self.log.flush_interval {
            Some(d) => s.push_str(&format!("  flush_interval: {}\n", fmt_duration(d))),
            None => s.push_str("  # flush_interval: off\n"),
        }
        s.push_str("routes:\n");
        for r in &self.routes {
            describe_route(&mut s, r, self.relay);
        }
        describe_shared(&mut s, &self.routes);
        s
    }
}

fn describe_route(s: &mut String, r: &Route, relay: super::RelayMode) {
    let _ = writeln!(s, "  - name: {}", r.name);
    let _ = writeln!(s, "    listen: {}", r.listen);
    if r.original_destination {
        let _ = writeln!(s, "    original_destination: true  # each connection goes where its client meant it to");
    } else {
        let _ = writeln!(s, "    upstreams:");
        for u in &r.upstreams {
            let backup = if u.backup { ", backup: true" } else { "" };
            let _ = writeln!(s, "      - {{ address: \"{}\", weight: {}{backup} }}", u.address, u.weight);
        }
    }
    let _ = writeln!(s, "    transparent: {}", r.transparent);
    if !r.destinations.is_empty() {
        let list: Vec<String> = r.destinations.iter().map(|d| format!("\"{d}\"")).collect();
        let _ = writeln!(s, "    destinations: [{}]", list.join(", "));
    }
    let _ = writeln!(s, "    connect_timeout: {}", fmt_duration(r.connect_timeout));
    let _ = writeln!(s, "    idle_timeout: {}", fmt_duration(r.idle_timeout));
    let _ = writeln!(s, "    half_close_timeout: {}", fmt_duration(r.half_close_timeout));
    let _ = match r.drain_close_idle_after {
        Some(d) => writeln!(s, "    drain_close_idle_after: {}", fmt_duration(d)),
        None => {
            writeln!(s, "    # drain_close_idle_after: off (draining sessions run until they end or drain_timeout)")
        }
    };
    let _ = writeln!(s, "    backlog: {}", r.backlog);
    for (k, v) in [("max_connections", r.max_connections), ("max_connections_per_client", r.max_connections_per_client)]
    {
        let _ = match v {
            Some(n) => writeln!(s, "    {k}: {n}"),
            None => writeln!(s, "    # {k}: no limit"),
        };
    }
    let _ = match r.max_connection_rate {
        Some(rate) => {
            writeln!(s, "    max_connection_rate: {{ per_second: {}, burst: {} }}", rate.per_second, rate.burst)
        }
        None => writeln!(s, "    # max_connection_rate: no limit"),
    };
    let _ = match r.max_connection_rate_per_client {
        Some(c) => writeln!(
            s,
            "    max_connection_rate_per_client: {{ per_second: {}, burst: {}, prefix_v4: {}, prefix_v6: {} }}",
            c.rate.per_second, c.rate.burst, c.prefix_v4, c.prefix_v6
        ),
        None => writeln!(s, "    # max_connection_rate_per_client: no limit"),
    };
    let _ = match r.source {
        Some(super::Source::Client) => writeln!(s, "    source: client  # the client's own IP (IP_TRANSPARENT)"),
        Some(ip) => writeln!(s, "    source: \"{ip}\""),
        None => writeln!(s, "    # source: none (the kernel picks the local address)"),
    };
    let _ = match r.mptcp {
        true => writeln!(s, "    mptcp: true  # listeners and upstream connections are IPPROTO_MPTCP"),
        false => writeln!(s, "    mptcp: false"),
    };
    // Only where it differs from the global `relay` (the same mode written twice says nothing).
    if let Some(own) = r.relay.filter(|m| *m != relay) {
        let _ = writeln!(s, "    relay: {own}");
    }
    if !r.server_names.is_empty() {
        let names: Vec<String> = r.server_names.iter().map(|p| format!("\"{p}\"")).collect();
        let _ = writeln!(s, "    server_names: [{}]", names.join(", "));
    }
    if !r.alpn.is_empty() {
        let protos: Vec<String> = r.alpn.iter().map(|p| yaml_bytes(p.as_bytes())).collect();
        let _ = writeln!(s, "    alpn: [{}]", protos.join(", "));
    }
    let _ = writeln!(s, "    client_hello_timeout: {}", fmt_duration(r.client_hello_timeout));
    describe_socket(s, &r.socket);
    describe_pool(s, &r.pool, r.original_destination);
}

/// The name table of every address that routes by TLS server name, as comments.
fn describe_shared(s: &mut String, routes: &[Route]) {
    for g in super::listen_groups(routes) {
        if g.iter().any(|&i| !routes[i].destinations.is_empty()) {
            let _ = writeln!(
                s,
                "# {} routes by original destination (an entry with a port wins, then the longest prefix):",
                routes[g[0]].listen
            );
            for &i in &g {
                for d in &routes[i].destinations {
                    let _ = writeln!(s, "#   {d} -> {}", routes[i].name);
                }
            }
            let default = g.iter().find(|&&i| routes[i].destinations.is_empty());
            let _ = match default {
                Some(&i) => writeln!(s, "#   anything else -> {}", routes[i].name),
                None => writeln!(s, "#   anything else -> reset (no_route)"),
            };
            continue;
        }
        if g.len() == 1 && routes[g[0]].server_names.is_empty() {
            continue;
        }
        let claims: Vec<crate::tls::names::RouteNames<'_>> = g
            .iter()
            .map(|&i| crate::tls::names::RouteNames {
                route: &routes[i].name,
                names: &routes[i].server_names,
                alpn: &routes[i].alpn,
            })
            .collect();
        let Ok(table) = crate::tls::names::NameTable::build(&claims) else {
            continue; // validation refuses conflicts before this is printed
        };
        let _ = writeln!(s, "# {} routes by TLS server name (ClientHello):", routes[g[0]].listen);
        for line in table.describe(|i| routes[g[i]].name.clone()) {
            let _ = writeln!(s, "#   {line}");
        }
    }
}

fn describe_pool(s: &mut String, p: &Pool, pass_through: bool) {
    if pass_through {
        let _ =
            writeln!(s, "    # balance, retries, health_check, outlier_detection: none (one address per connection)");
    } else {
        describe_upstream_choice(s, p);
    }
    let _ = writeln!(s, "    when_all_down: {}", p.when_all_down);
    let _ = writeln!(s, "    resolve_interval: {}", fmt_duration(p.resolve_interval));
    let _ = match p.proxy_protocol {
        Some(v) => writeln!(s, "    proxy_protocol: {v}"),
        None => writeln!(s, "    # proxy_protocol: off"),
    };
    let _ = writeln!(s, "    accept_proxy_protocol: {}", p.accept_proxy_protocol);
    let _ = writeln!(s, "    proxy_protocol_timeout: {}", fmt_duration(p.proxy_protocol_timeout));
    for (k, list) in [("allow", &p.acl.allow), ("deny", &p.acl.deny)] {
        let items: Vec<String> = list.iter().map(|c| format!("\"{c}\"")).collect();
        let _ = writeln!(s, "    {k}: [{}]", items.join(", "));
    }
}

/// How a route with upstreams picks and watches them.
fn describe_upstream_choice(s: &mut String, p: &Pool) {
    let _ = writeln!(s, "    balance: {}", p.balance);
    let _ = writeln!(s, "    retries: {}", p.retries);
    let _ = match &p.health_check {
        Some(h) => writeln!(
            s,
            "    health_check: {{ interval: {}, timeout: {}, rise: {}, fall: {}, send: {}, expect: {} }}",
            fmt_duration(h.interval),
            fmt_duration(h.timeout),
            h.rise,
            h.fall,
            yaml_bytes(&h.send),
            yaml_bytes(&h.expect)
        ),
        None => writeln!(s, "    health_check: false"),
    };
    let _ = match &p.outlier {
        Some(o) => writeln!(
            s,
            "    outlier_detection: {{ consecutive_failures: {}, base_ejection: {}, max_ejection: {}, max_ejected_percent: {} }}",
            o.consecutive_failures,
            fmt_duration(o.base_ejection),
            fmt_duration(o.max_ejection),
            o.max_ejected_percent
        ),
        None => writeln!(s, "    outlier_detection: false"),
    };
}

/// Bytes as a double-quoted YAML string (escapes for anything not printable).
fn yaml_bytes(b: &[u8]) -> String {
    let mut out = String::from("\"");
    for c in String::from_utf8_lossy(b).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn describe_socket(s: &mut String, o: &SocketOptions) {
    // Unset options stay comments, so the output parses back to the same config.
    let lines = [
        ("nodelay", Some(o.nodelay().to_string()), ""),
        ("keepalive", o.keepalive.map(|k| k.to_string()), "off (kernel default)"),
        ("user_timeout", o.user_timeout.map(|d| fmt_duration(d.get())), "off (kernel default)"),
        ("send_buffer", o.send_buffer.map(|b| fmt_size(b.get())), "kernel default"),
        ("recv_buffer", o.recv_buffer.map(|b| fmt_size(b.get())), "kernel default"),
        ("congestion", o.congestion.as_ref().map(ToString::to_string), "kernel default"),
        ("fastopen", o.fastopen.map(|n| n.to_string()), "off"),
        ("notsent_lowat", o.notsent_lowat.map(|b| fmt_size(b.get())), "1MiB while splicing (default; 0 = off)"),
        ("defer_accept", o.defer_accept.map(|d| fmt_duration(d.get())), "off"),
        ("mark", o.mark.map(|m| format!("{:#x}", m.get())), "none"),
        ("reuse_address", Some(o.reuse_address().to_string()), ""),
    ];
    s.push_str("    socket:\n");
    for (k, v, unset) in lines {
        let _ = match v {
            Some(v) => writeln!(s, "      {k}: {v}"),
            None => writeln!(s, "      # {k}: {unset}"),
        };
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_str;

    #[test]
    fn the_description_parses_back_to_the_same_config() {
        let text = "workers: 3\nrelay: copy\nwatch: true\ndefaults:\n  socket:\n    keepalive: true\n    mark: 16\n\
                    routes:\n  - name: a\n    listen: 127.0.0.1:1\n    upstreams: [\"h:1\", {address: \"[::1]:2\", weight: 3}]\n\
                    \x20   max_connections_per_client: 4\n    socket: { congestion: bbr, send_buffer: 1MiB }\n\
                    \x20   balance: hash_client_ip\n    retries: 0\n    outlier_detection: false\n\
                    \x20   health_check: { interval: 5s, send: \"PING\\r\\n\", expect: \"+PONG\" }\n\
                    \x20   proxy_protocol: v2\n    accept_proxy_protocol: true\n    allow: [\"10.0.0.0/8\", \"::1\"]\n\
                    \x20 - name: b\n    listen: 127.0.0.1:2\n    upstreams: [\"h:1\", {address: \"h:2\", backup: true}]\n\
                    \x20   source: \"fd00::5\"\n    mptcp: true\n    relay: sockmap\n    max_connection_rate: { per_second: 500, burst: 100 }\n\
                    \x20   max_connection_rate_per_client: { per_second: 20, prefix_v6: 48 }\n\
                    overload: { max_fd_use: 85%, max_memory: 2GiB }\n";
        let c = parse_str(text, "t").unwrap();
        let again = parse_str(&c.describe(2), "t").unwrap_or_else(|e| panic!("{e}\n{}", c.describe(2)));
        assert_eq!(again, c);
        assert_eq!(c.routes[1].source_ip(), Some("fd00::5".parse().unwrap()));
        assert!(c.routes[1].mptcp && !c.routes[0].mptcp);
        assert_eq!(c.routes[1].relay, Some(crate::config::RelayMode::Sockmap));
        assert!(c.describe(2).contains("    relay: sockmap\n"), "a route's own relay is shown");
    }

    #[test]
    fn a_routes_relay_is_shown_only_where_it_differs_from_the_global_one() {
        let text = "relay: copy\nroutes:\n  - name: a\n    listen: 127.0.0.1:1\n    upstreams: [\"h:1\"]\n    relay: copy\n\
                    \x20 - name: b\n    listen: 127.0.0.1:2\n    upstreams: [\"h:1\"]\n    relay: uring\n";
        let d = parse_str(text, "t").unwrap().describe(1);
        assert_eq!(d.matches("    relay: ").count(), 1, "{d}");
        assert!(d.contains("  - name: b\n") && d.contains("    relay: uring\n"), "{d}");
    }
}
