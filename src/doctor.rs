//! `sluice doctor`: audits this machine's kernel settings and limits for a
//! config and prints OK/WARN/FAIL lines, each problem with the exact fix
//! (`sysctl -w …`, `ulimit -n …`). It only reads; it never writes a sysctl.
//!
//! `Facts` is everything read from the machine, under a `/proc` root that
//! tests point at a directory of their own.

use std::fmt;
use std::path::Path;

use crate::config::Config;
use crate::local_ports;

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Fine for this config.
    Ok,
    /// Works, but worse than it could (a cap, a fallback).
    Warn,
    /// The config cannot work as written on this machine.
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        })
    }
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// How serious.
    pub level: Level,
    /// What was checked (a sysctl name, a limit).
    pub check: String,
    /// What was found, against what the config needs.
    pub detail: String,
    /// The command that fixes it.
    pub fix: Option<String>,
}

/// What the machine says; `None` where it could not be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// net.core.somaxconn
    pub somaxconn: Option<u64>,
    /// net.ipv4.tcp_max_syn_backlog
    pub tcp_max_syn_backlog: Option<u64>,
    /// fs.pipe-max-size
    pub pipe_max_size: Option<u64>,
    /// fs.pipe-user-pages-soft (0 = no limit)
    pub pipe_user_pages_soft: Option<u64>,
    /// The per-user pipe limits apply (no CAP_SYS_RESOURCE / CAP_SYS_ADMIN).
    pub pipe_limits_apply: bool,
    /// net.ipv4.tcp_rmem (min, default, max)
    pub tcp_rmem: Option<[u64; 3]>,
    /// net.ipv4.tcp_wmem (min, default, max)
    pub tcp_wmem: Option<[u64; 3]>,
    /// net.core.rmem_max
    pub rmem_max: Option<u64>,
    /// net.core.wmem_max
    pub wmem_max: Option<u64>,
    /// net.ipv4.tcp_fastopen
    pub tcp_fastopen: Option<u64>,
    /// net.ipv4.tcp_available_congestion_control
    pub congestion_available: Option<Vec<String>>,
    /// net.ipv4.tcp_tw_reuse
    pub tcp_tw_reuse: Option<u64>,
    /// net.ipv4.ip_local_port_range (low, high)
    pub port_range: Option<(u64, u64)>,
    /// net.ipv4.ip_local_reserved_ports, as ranges (empty: none, or unreadable)
    pub reserved_ports: Vec<(u64, u64)>,
    /// fs.file-max
    pub file_max: Option<u64>,
    /// net.ipv4.tcp_migrate_req
    pub tcp_migrate_req: Option<u64>,
    /// Open-file limit (soft, hard) of this process.
    pub nofile: Option<(u64, u64)>,
    /// Why this process cannot set up an io_uring (`relay: uring`); `None`: it can.
    pub io_uring_refused: Option<String>,
}

impl Facts {
    /// Reads everything under `proc_root` (normally `/proc`).
    pub fn read(proc_root: &Path) -> Facts {
        let text = |rel: &str| std::fs::read_to_string(proc_root.join(rel)).ok();
        let num = |rel: &str| text(rel).and_then(|t| t.trim().parse::<u64>().ok());
        let nums = |rel: &str| -> Option<Vec<u64>> { text(rel)?.split_whitespace().map(|n| n.parse().ok()).collect() };
        let triple = |rel: &str| nums(rel).and_then(|v| <[u64; 3]>::try_from(v).ok());
        let status = text("self/status").unwrap_or_default();
        let cap_eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        let nofile = text("self/limits").and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("Max open files"))?;
            let mut it = line["Max open files".len()..].split_whitespace();
            let parse =
                |s: Option<&str>| s.and_then(|s| if s == "unlimited" { Some(u64::MAX) } else { s.parse().ok() });
            Some((parse(it.next())?, parse(it.next())?))
        });
        Facts {
            somaxconn: num("sys/net/core/somaxconn"),
            tcp_max_syn_backlog: num("sys/net/ipv4/tcp_max_syn_backlog"),
            pipe_max_size: num("sys/fs/pipe-max-size"),
            pipe_user_pages_soft: num("sys/fs/pipe-user-pages-soft"),
            pipe_limits_apply: cap_eff & (1 << 21) == 0 && cap_eff & (1 << 24) == 0,
            tcp_rmem: triple("sys/net/ipv4/tcp_rmem"),
            tcp_wmem: triple("sys/net/ipv4/tcp_wmem"),
            rmem_max: num("sys/net/core/rmem_max"),
            wmem_max: num("sys/net/core/wmem_max"),
            tcp_fastopen: num("sys/net/ipv4/tcp_fastopen"),
            congestion_available: text("sys/net/ipv4/tcp_available_congestion_control")
                .map(|t| t.split_whitespace().map(str::to_owned).collect()),
            tcp_tw_reuse: num("sys/net/ipv4/tcp_tw_reuse"),
            port_range: nums("sys/net/ipv4/ip_local_port_range").and_then(|v| Some((*v.first()?, *v.get(1)?))),
            reserved_ports: text("sys/net/ipv4/ip_local_reserved_ports")
                .and_then(|t| local_ports::parse_reserved(&t))
                .unwrap_or_default(),
            file_max: num("sys/fs/file-max"),
            tcp_migrate_req: num("sys/net/ipv4/tcp_migrate_req"),
            nofile,
            // Not a file: only trying tells (a seccomp filter leaves no trace in /proc).
            io_uring_refused: crate::relay::ring::probe().err(),
        }
    }
}

fn ok(check: &str, detail: String) -> Finding {
    Finding { level: Level::Ok, check: check.to_owned(), detail, fix: None }
}

fn bad(level: Level, check: &str, detail: String, fix: String) -> Finding {
    Finding { level, check: check.to_owned(), detail, fix: Some(fix) }
}

fn unknown(check: &str) -> Finding {
    Finding { level: Level::Warn, check: check.to_owned(), detail: "could not be read".to_owned(), fix: None }
}

/// Fds sluice keeps for itself besides sessions (listeners, pollers, logs).
const FD_OVERHEAD: u64 = 64;
/// Pipes the per-user pipe memory check plans for (busy sessions at once).
const PLANNED_PIPES: u64 = 1024;

/// Checks the machine against the config.
pub fn audit(config: &Config, f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    let max_conn = config.max_connections as u64;
    let backlog = config.routes.iter().map(|r| u64::from(r.backlog)).max().unwrap_or(0);

    for (check, value) in [("net.core.somaxconn", f.somaxconn), ("net.ipv4.tcp_max_syn_backlog", f.tcp_max_syn_backlog)]
    {
        out.push(match value {
            None => unknown(check),
            Some(v) if v >= backlog => ok(check, format!("{v} >= the largest route backlog {backlog}")),
            Some(v) => bad(
                Level::Warn,
                check,
                format!("{v} < the largest route backlog {backlog}: listen queues are capped at {v}"),
                format!("sysctl -w {check}={backlog}"),
            ),
        });
    }

    let needed = max_conn * 2 + FD_OVERHEAD;
    out.push(match f.nofile {
        None => unknown("RLIMIT_NOFILE"),
        Some((_, hard)) if hard >= needed => {
            ok("RLIMIT_NOFILE", format!("hard limit {hard} >= {needed} (max_connections × 2 + {FD_OVERHEAD})"))
        }
        Some((_, hard)) => {
            let sessions = hard.saturating_sub(FD_OVERHEAD) / 2;
            let level = if hard < needed / 4 { Level::Fail } else { Level::Warn };
            bad(
                level,
                "RLIMIT_NOFILE",
                format!(
                    "hard limit {hard} < {needed} for max_connections {max_conn}: it allows about {sessions} sessions \
                     (splice pipes then copy)"
                ),
                format!("ulimit -n {needed}   (systemd: LimitNOFILE={needed}; containers: --ulimit nofile={needed})"),
            )
        }
    });

    let pipe = config.pipe_size as u64;
    out.push(match f.pipe_max_size {
        None => unknown("fs.pipe-max-size"),
        Some(v) if v >= pipe => ok("fs.pipe-max-size", format!("{v} >= pipe_size {pipe}")),
        Some(v) => bad(
            Level::Warn,
            "fs.pipe-max-size",
            format!("{v} < pipe_size {pipe}: pipes are capped at {v}"),
            format!("sysctl -w fs.pipe-max-size={pipe}"),
        ),
    });

    out.push(if !f.pipe_limits_apply {
        ok("fs.pipe-user-pages-soft", "not limited: the process has CAP_SYS_RESOURCE or CAP_SYS_ADMIN".to_owned())
    } else {
        let wanted = PLANNED_PIPES * pipe.div_ceil(4096);
        match f.pipe_user_pages_soft {
            None => unknown("fs.pipe-user-pages-soft"),
            Some(0) => ok("fs.pipe-user-pages-soft", "0: no per-user limit".to_owned()),
            Some(v) if v >= wanted => {
                ok("fs.pipe-user-pages-soft", format!("{v} pages >= {wanted} for {PLANNED_PIPES} busy pipes"))
            }
            Some(v) => bad(
                Level::Warn,
                "fs.pipe-user-pages-soft",
                format!(
                    "{v} pages < {wanted} for {PLANNED_PIPES} busy {pipe}-byte pipes: past about {} pipes, pumps copy \
                     instead of splicing (never a failed connection)",
                    v / pipe.div_ceil(4096).max(1)
                ),
                format!("sysctl -w fs.pipe-user-pages-soft={wanted}"),
            ),
        }
    });

    let mut buffers_set = false;
    for r in &config.routes {
        for (kind, size, max, key) in [
            ("send_buffer", r.socket.send_buffer, f.wmem_max, "net.core.wmem_max"),
            ("recv_buffer", r.socket.recv_buffer, f.rmem_max, "net.core.rmem_max"),
        ] {
            let Some(size) = size.map(|s| s.get()) else { continue };
            buffers_set = true;
            let check = format!("{key} (route {})", r.name);
            out.push(match max {
                None => unknown(&check),
                Some(m) if m >= size => ok(&check, format!("{m} >= {kind} {size}")),
                Some(m) => bad(
                    Level::Warn,
                    &check,
                    format!("{m} < {kind} {size}: the kernel caps the buffer at {m}"),
                    format!("sysctl -w {key}={size}"),
                ),
            });
        }
    }
    if !buffers_set {
        let show = |t: Option<[u64; 3]>| t.map_or_else(|| "?".to_owned(), |[a, b, c]| format!("{a} {b} {c}"));
        out.push(ok(
            "socket buffers",
            format!(
                "not set: the kernel autotunes within tcp_rmem {} and tcp_wmem {}",
                show(f.tcp_rmem),
                show(f.tcp_wmem)
            ),
        ));
    }

    if let Some(r) = config.routes.iter().find(|r| r.socket.fastopen.is_some_and(|q| q.get() > 0)) {
        out.push(match f.tcp_fastopen {
            None => unknown("net.ipv4.tcp_fastopen"),
            Some(v) if v & 2 != 0 => ok("net.ipv4.tcp_fastopen", format!("{v}: server-side fast open is enabled")),
            Some(v) => bad(
                Level::Warn,
                "net.ipv4.tcp_fastopen",
                format!("{v}: route {} asks for fast open but the server side is off", r.name),
                format!("sysctl -w net.ipv4.tcp_fastopen={}", v | 3),
            ),
        });
    }

    for r in &config.routes {
        let Some(name) = &r.socket.congestion else { continue };
        let check = format!("congestion {} (route {})", name.0, r.name);
        out.push(match &f.congestion_available {
            None => unknown(&check),
            Some(list) if list.contains(&name.0) => ok(&check, "available".to_owned()),
            Some(list) => bad(
                Level::Warn,
                &check,
                format!("not available (the kernel has: {}); the kernel default is used", list.join(" ")),
                format!("modprobe tcp_{}", name.0),
            ),
        });
    }

    out.push(match f.tcp_tw_reuse {
        None => unknown("net.ipv4.tcp_tw_reuse"),
        Some(1) => ok("net.ipv4.tcp_tw_reuse", "1: TIME_WAIT ports are reused for new upstream connections".to_owned()),
        Some(2) => ok("net.ipv4.tcp_tw_reuse", "2: reused for loopback upstreams only (the default)".to_owned()),
        Some(v) => bad(
            Level::Warn,
            "net.ipv4.tcp_tw_reuse",
            format!("{v}: many short upstream connections can run out of ports in TIME_WAIT"),
            "sysctl -w net.ipv4.tcp_tw_reuse=1".to_owned(),
        ),
    });

    out.extend(local_port_findings(config, f));

    if config.control_socket.is_some() {
        out.push(match f.tcp_migrate_req {
            None => unknown("net.ipv4.tcp_migrate_req"),
            Some(1) => ok(
                "net.ipv4.tcp_migrate_req",
                "1: an upgrade to fewer workers closes the surplus listening sockets, the kernel moving their \
                 handshakes in flight to the others"
                    .to_owned(),
            ),
            Some(v) => bad(
                Level::Warn,
                "net.ipv4.tcp_migrate_req",
                format!(
                    "{v}: an upgrade to fewer workers must keep the surplus listening sockets open (closing one resets \
                     the clients whose handshake is in flight to it), so the new workers serve more than one each"
                ),
                "sysctl -w net.ipv4.tcp_migrate_req=1".to_owned(),
            ),
        });
    }

    out.push(match f.file_max {
        None => unknown("fs.file-max"),
        Some(v) if v >= max_conn * 2 => ok("fs.file-max", format!("{v} >= {}", max_conn * 2)),
        Some(v) => bad(
            Level::Warn,
            "fs.file-max",
            format!("{v} < max_connections × 2 = {}", max_conn * 2),
            format!("sysctl -w fs.file-max={}", max_conn * 4),
        ),
    });
    out.push(io_uring_finding(config, f));
    out
}

/// Whether `relay: uring` can have its ring here: a warning (it falls back
/// to `auto`) only when the config asks for it.
fn io_uring_finding(config: &Config, f: &Facts) -> Finding {
    const CHECK: &str = "io_uring";
    match (&f.io_uring_refused, config.relay == crate::config::RelayMode::Uring) {
        (None, true) => ok(CHECK, "available: relay: uring uses it".to_owned()),
        (None, false) => {
            ok(CHECK, format!("available (relay: uring could use it; this config relays with {})", config.relay))
        }
        (Some(why), false) => ok(CHECK, format!("not available ({why}); this config does not ask for it")),
        (Some(why), true) => bad(
            Level::Warn,
            CHECK,
            format!("not available ({why}): relay: uring falls back to auto"),
            "sysctl -w kernel.io_uring_disabled=0, and in a container allow io_uring_setup, io_uring_enter and \
             io_uring_register in its seccomp profile"
                .to_owned(),
        ),
    }
}

/// Local ports per upstream address against what the routes may need at
/// once (`local_ports`): one OK line that explains the limit, or a warning
/// per (source, upstream address) that may need more.
fn local_port_findings(config: &Config, f: &Facts) -> Vec<Finding> {
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

/// The findings as text: one line each, fixes indented below, and a summary.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        s.push_str(&format!("{:<4} {}: {}\n", f.level, f.check, f.detail));
        if let Some(fix) = &f.fix {
            s.push_str(&format!("     fix: {fix}\n"));
        }
    }
    let count = |l| findings.iter().filter(|f| f.level == l).count();
    s.push_str(&format!("{} ok, {} warnings, {} failures\n", count(Level::Ok), count(Level::Warn), count(Level::Fail)));
    s
}

/// 0 when nothing failed, 1 otherwise.
pub fn exit_code(findings: &[Finding]) -> i32 {
    i32::from(findings.iter().any(|f| f.level == Level::Fail))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    const CONFIG: &str = "max_connections: 10000\npipe_size: 64KiB\nroutes:\n  - name: web\n    listen: 127.0.0.1:0\n\
        \x20   upstreams: [127.0.0.1:1]\n    backlog: 4096\n    socket: { send_buffer: 4MiB, fastopen: 16, congestion: bbr }\n";

    fn good() -> Facts {
        Facts {
            somaxconn: Some(4096),
            tcp_max_syn_backlog: Some(4096),
            pipe_max_size: Some(1 << 20),
            pipe_user_pages_soft: Some(16384),
            pipe_limits_apply: true,
            tcp_rmem: Some([4096, 131072, 6291456]),
            tcp_wmem: Some([4096, 16384, 4194304]),
            rmem_max: Some(8 << 20),
            wmem_max: Some(8 << 20),
            tcp_fastopen: Some(3),
            congestion_available: Some(vec!["reno".into(), "cubic".into(), "bbr".into()]),
            tcp_tw_reuse: Some(2),
            port_range: Some((32768, 60999)),
            reserved_ports: Vec::new(),
            file_max: Some(1 << 20),
            tcp_migrate_req: Some(1),
            nofile: Some((20000, 20064)),
            io_uring_refused: None,
        }
    }

    #[test]
    fn upgrades_to_fewer_workers_want_tcp_migrate_req() {
        let mut config = crate::config::parse_str(CONFIG, "t").unwrap();
        let f = good();
        assert!(audit(&config, &f).iter().all(|x| x.check != "net.ipv4.tcp_migrate_req"), "no control socket");
        config.control_socket = Some("/run/sluice.sock".into());
        assert_eq!(find(&audit(&config, &f), "net.ipv4.tcp_migrate_req").level, Level::Ok);
        let off = Facts { tcp_migrate_req: Some(0), ..good() };
        let w = audit(&config, &off);
        let x = find(&w, "net.ipv4.tcp_migrate_req");
        assert_eq!(x.level, Level::Warn);
        assert_eq!(x.fix.as_deref(), Some("sysctl -w net.ipv4.tcp_migrate_req=1"));
    }

    fn find<'a>(fs: &'a [Finding], check: &str) -> &'a Finding {
        fs.iter().find(|f| f.check.starts_with(check)).unwrap_or_else(|| panic!("no {check} in {fs:#?}"))
    }

    #[test]
    fn a_good_machine_has_no_warnings() {
        let c = parse_str(CONFIG, "t").unwrap();
        let fs = audit(&c, &good());
        assert!(fs.iter().all(|f| f.level == Level::Ok), "{}", render(&fs));
        assert_eq!(exit_code(&fs), 0);
    }

    #[test]
    fn relay_uring_without_io_uring_is_a_warning_with_its_fix() {
        let c = parse_str(&format!("relay: uring\n{CONFIG}"), "t").unwrap();
        assert_eq!(find(&audit(&c, &good()), "io_uring").level, Level::Ok);
        let mut f = good();
        f.io_uring_refused = Some("io_uring_setup was refused (EPERM)".into());
        let fs = audit(&c, &f);
        let got = find(&fs, "io_uring");
        assert_eq!(got.level, Level::Warn, "{}", render(&fs));
        assert!(got.detail.contains("falls back to auto") && got.detail.contains("EPERM"), "{}", got.detail);
        assert!(got.fix.as_deref().is_some_and(|x| x.contains("kernel.io_uring_disabled=0")));
        assert_eq!(exit_code(&fs), 0, "a warning, not a failure: it still relays");
    }

    #[test]
    fn every_rule_has_its_warning_and_fix() {
        let c = parse_str(CONFIG, "t").unwrap();
        type Breaker = Box<dyn Fn(&mut Facts)>;
        let cases: Vec<(&str, Breaker, Level, &str)> = vec![
            (
                "net.core.somaxconn",
                Box::new(|f| f.somaxconn = Some(128)),
                Level::Warn,
                "sysctl -w net.core.somaxconn=4096",
            ),
            (
                "net.ipv4.tcp_max_syn_backlog",
                Box::new(|f| f.tcp_max_syn_backlog = Some(512)),
                Level::Warn,
                "sysctl -w net.ipv4.tcp_max_syn_backlog=4096",
            ),
            ("RLIMIT_NOFILE", Box::new(|f| f.nofile = Some((1024, 8000))), Level::Warn, "ulimit -n 20064"),
            ("RLIMIT_NOFILE", Box::new(|f| f.nofile = Some((1024, 1024))), Level::Fail, "ulimit -n 20064"),
            (
                "fs.pipe-max-size",
                Box::new(|f| f.pipe_max_size = Some(4096)),
                Level::Warn,
                "sysctl -w fs.pipe-max-size=65536",
            ),
            (
                "fs.pipe-user-pages-soft",
                Box::new(|f| f.pipe_user_pages_soft = Some(1000)),
                Level::Warn,
                "sysctl -w fs.pipe-user-pages-soft=16384",
            ),
            (
                "net.core.wmem_max",
                Box::new(|f| f.wmem_max = Some(212992)),
                Level::Warn,
                "sysctl -w net.core.wmem_max=4194304",
            ),
            (
                "net.ipv4.tcp_fastopen",
                Box::new(|f| f.tcp_fastopen = Some(1)),
                Level::Warn,
                "sysctl -w net.ipv4.tcp_fastopen=3",
            ),
            (
                "congestion bbr",
                Box::new(|f| f.congestion_available = Some(vec!["cubic".into()])),
                Level::Warn,
                "modprobe tcp_bbr",
            ),
            (
                "net.ipv4.tcp_tw_reuse",
                Box::new(|f| f.tcp_tw_reuse = Some(0)),
                Level::Warn,
                "sysctl -w net.ipv4.tcp_tw_reuse=1",
            ),
            (
                "net.ipv4.ip_local_port_range",
                Box::new(|f| f.port_range = Some((60000, 61000))),
                Level::Warn,
                "ip_local_port_range=\"1024 65535\"",
            ),
            ("fs.file-max", Box::new(|f| f.file_max = Some(1000)), Level::Warn, "sysctl -w fs.file-max=40000"),
        ];
        for (check, breakit, level, fix) in cases {
            let mut f = good();
            breakit(&mut f);
            let fs = audit(&c, &f);
            assert_eq!(find(&fs, "io_uring").level, Level::Ok, "not asked for, so not a problem");
            let got = find(&fs, check);
            assert_eq!(got.level, level, "{check}: {}", render(&fs));
            assert!(got.fix.as_deref().is_some_and(|x| x.contains(fix)), "{check}: fix {:?}", got.fix);
            assert_eq!(exit_code(&fs), i32::from(level == Level::Fail));
            assert!(render(&fs).contains(&format!("fix: {}", got.fix.as_deref().unwrap_or(""))));
        }
    }

    #[test]
    fn local_ports_are_counted_per_upstream_address_and_source() {
        let route = |name: &str, port: u16, extra: &str| {
            format!(
                "  - name: {name}\n    listen: 127.0.0.1:{port}\n    upstreams: [10.0.0.1:80, 10.0.0.2:80]\n{extra}"
            )
        };
        let ports = |c: &str, f: &Facts| {
            let c = parse_str(&format!("max_connections: 100000\nroutes:\n{c}"), "t").unwrap_or_else(|e| panic!("{e}"));
            audit(&c, f).into_iter().filter(|x| x.check == "net.ipv4.ip_local_port_range").collect::<Vec<_>>()
        };
        // 100,000 over two upstreams: 50,000 each > 28,232, within 64,512.
        let fs = ports(&route("web", 1, ""), &good());
        assert_eq!(fs.len(), 2, "one warning per upstream address: {fs:#?}");
        assert!(fs.iter().all(|x| x.level == Level::Warn));
        let want = "32768-60999 = 28232 ports per upstream address, but route web may have 50000 sessions open at \
                    once to 10.0.0.1:80 (";
        assert!(fs[0].detail.starts_with(want), "{}", fs[0].detail);
        assert_eq!(fs[0].fix.as_deref(), Some("sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\""));
        // Two routes to the same addresses share their ports: 100,000 each, past even 64,512.
        let fs = ports(&format!("{}{}", route("a", 1, ""), route("b", 2, "")), &good());
        assert!(fs[0].detail.contains("routes a, b may have 100000 sessions"), "{}", fs[0].detail);
        assert!(fs[0].fix.as_deref().is_some_and(|x| x.contains("different source: addresses")), "{:?}", fs[0].fix);
        // Route limits, reserved ports and sources.
        let limited = route("web", 1, "    max_connections: 40000\n");
        let f = Facts { reserved_ports: vec![(40000, 40099), (8080, 8080)], ..good() };
        let fs = ports(&limited, &f);
        assert_eq!(fs.len(), 1);
        assert_eq!(fs[0].level, Level::Ok, "{}", fs[0].detail);
        assert!(
            fs[0].detail.starts_with("32768-60999 less 100 in ip_local_reserved_ports = 28132 ports"),
            "{}",
            fs[0].detail
        );
        assert!(fs[0].detail.ends_with("the most any needs is 20000 (route web: 10.0.0.1:80)"), "{}", fs[0].detail);
        let sourced = |a: &str, b: &str| {
            format!("{}{}", route("a", 1, &format!("    source: {a}\n")), route("b", 2, &format!("    source: {b}\n")))
        };
        let fs = ports(&sourced("10.0.0.7", "10.0.0.8"), &Facts { port_range: Some((1024, 65535)), ..good() });
        assert!(fs.iter().all(|x| x.level == Level::Ok), "each source has ports of its own: {fs:#?}");
        let fs = ports(&sourced("10.0.0.7", "10.0.0.7"), &Facts { port_range: Some((1024, 65535)), ..good() });
        assert!(fs.iter().all(|x| x.level == Level::Warn) && fs.len() == 2, "one source, shared: {fs:#?}");
        let want = "routes a, b may have 100000 sessions open at once to 10.0.0.1:80 from 10.0.0.7 (";
        assert!(fs[0].detail.contains(want), "{}", fs[0].detail);
        assert_eq!(ports(&limited, &Facts { port_range: None, ..good() })[0].detail, "could not be read");
    }

    #[test]
    fn privileged_processes_are_not_limited_by_pipe_pages() {
        let c = parse_str(CONFIG, "t").unwrap();
        let f = Facts { pipe_limits_apply: false, pipe_user_pages_soft: Some(1), ..good() };
        assert_eq!(find(&audit(&c, &f), "fs.pipe-user-pages-soft").level, Level::Ok);
    }

    #[test]
    fn facts_are_read_from_a_proc_tree() {
        let dir = tempfile::tempdir().unwrap();
        let put = |rel: &str, v: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        put("sys/net/core/somaxconn", "128\n");
        put("sys/net/ipv4/tcp_rmem", "4096\t131072\t6291456\n");
        put("sys/net/ipv4/ip_local_port_range", "32768\t60999\n");
        put("sys/net/ipv4/ip_local_reserved_ports", "8080,40000-40009\n");
        put("sys/net/ipv4/tcp_available_congestion_control", "reno cubic\n");
        put("self/status", "Name:\tsluice\nCapEff:\t0000000000000000\n");
        put(
            "self/limits",
            "Limit  Soft Limit  Hard Limit  Units\nMax open files            1024                 4096                 files\n",
        );
        let f = Facts::read(dir.path());
        assert_eq!(f.somaxconn, Some(128));
        assert_eq!(f.tcp_rmem, Some([4096, 131072, 6291456]));
        assert_eq!(f.port_range, Some((32768, 60999)));
        assert_eq!(f.reserved_ports, vec![(8080, 8080), (40000, 40009)]);
        assert_eq!(f.congestion_available, Some(vec!["reno".to_owned(), "cubic".to_owned()]));
        assert!(f.pipe_limits_apply);
        assert_eq!(f.nofile, Some((1024, 4096)));
        assert_eq!(f.file_max, None);
        let fs = audit(&parse_str(CONFIG, "t").unwrap(), &f);
        assert_eq!(find(&fs, "net.core.somaxconn").level, Level::Warn);
        assert_eq!(find(&fs, "fs.file-max").level, Level::Warn, "unreadable facts are reported, not skipped");
    }

    #[test]
    fn this_machine_and_the_shipped_config() {
        let f = Facts::read(Path::new("/proc"));
        assert!(f.somaxconn.is_some() && f.nofile.is_some());
        let c = crate::config::load_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.yaml")).unwrap();
        let out = render(&audit(&c, &f));
        assert!(out.contains("net.core.somaxconn"), "{out}");
    }
}
