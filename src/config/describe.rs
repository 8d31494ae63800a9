//! Renders a validated `Config` back as YAML for `sluice check`: every
//! setting with its effective value, defaults merged, so what a route will
//! really do is one command away.

use std::fmt::Write as _;

use super::units::{fmt_duration, fmt_size};
use super::{Config, Route, SocketOptions, Workers};

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
        line("drain_timeout", fmt_duration(self.drain_timeout));
        line("watch", self.watch.to_string());
        s.push_str("routes:\n");
        for r in &self.routes {
            describe_route(&mut s, r);
        }
        s
    }
}

fn describe_route(s: &mut String, r: &Route) {
    let _ = writeln!(s, "  - name: {}", r.name);
    let _ = writeln!(s, "    listen: {}", r.listen);
    let _ = writeln!(s, "    upstreams:");
    for u in &r.upstreams {
        let _ = writeln!(s, "      - {{ address: \"{}\", weight: {} }}", u.address, u.weight);
    }
    let _ = writeln!(s, "    connect_timeout: {}", fmt_duration(r.connect_timeout));
    let _ = writeln!(s, "    idle_timeout: {}", fmt_duration(r.idle_timeout));
    let _ = writeln!(s, "    half_close_timeout: {}", fmt_duration(r.half_close_timeout));
    let _ = writeln!(s, "    backlog: {}", r.backlog);
    let limit = |n: Option<usize>| n.map_or_else(|| "none  # default".to_owned(), |n| n.to_string());
    let _ = writeln!(s, "    max_connections: {}", limit(r.max_connections));
    let _ = writeln!(s, "    max_connections_per_client: {}", limit(r.max_connections_per_client));
    describe_socket(s, &r.socket);
}

fn describe_socket(s: &mut String, o: &SocketOptions) {
    let show = |v: Option<String>, default: &str| v.unwrap_or_else(|| format!("{default}  # default"));
    let lines = [
        ("nodelay", o.nodelay().to_string()),
        ("keepalive", show(o.keepalive.map(|k| k.to_string()), "false")),
        ("user_timeout", show(o.user_timeout.map(|d| fmt_duration(d.get())), "0s")),
        ("send_buffer", show(o.send_buffer.map(|b| fmt_size(b.get())), "kernel")),
        ("recv_buffer", show(o.recv_buffer.map(|b| fmt_size(b.get())), "kernel")),
        ("congestion", show(o.congestion.as_ref().map(ToString::to_string), "kernel")),
        ("fastopen", show(o.fastopen.map(|n| n.to_string()), "0")),
        ("notsent_lowat", show(o.notsent_lowat.map(|b| fmt_size(b.get())), "kernel")),
        ("defer_accept", show(o.defer_accept.map(|d| fmt_duration(d.get())), "0s")),
        ("mark", show(o.mark.map(|m| format!("{:#x}", m.get())), "none")),
        ("reuse_address", o.reuse_address().to_string()),
    ];
    s.push_str("    socket:\n");
    for (k, v) in lines {
        let _ = writeln!(s, "      {k}: {v}");
    }
}
