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
    for (k, v) in [("max_connections", r.max_connections), ("max_connections_per_client", r.max_connections_per_client)]
    {
        let _ = match v {
            Some(n) => writeln!(s, "    {k}: {n}"),
            None => writeln!(s, "    # {k}: no limit"),
        };
    }
    describe_socket(s, &r.socket);
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
        ("notsent_lowat", o.notsent_lowat.map(|b| fmt_size(b.get())), "kernel default"),
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
                    \x20   max_connections_per_client: 4\n    socket: { congestion: bbr, send_buffer: 1MiB }\n";
        let c = parse_str(text, "t").unwrap();
        let again = parse_str(&c.describe(2), "t").unwrap_or_else(|e| panic!("{e}\n{}", c.describe(2)));
        assert_eq!(again, c);
    }
}
