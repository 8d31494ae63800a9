//! The checks of `sluice doctor`, one function each: a fact of the machine
//! (`facts.rs`) against what the config needs from it, as a `Finding` with
//! its fix. The local-port check, which needs the routes' arithmetic, is
//! `ports.rs`'s; the order they run in is `audit`'s (`mod.rs`).

use super::{Facts, Finding, Level, bad, ok, unknown};
use crate::config::{Config, RelayMode};

/// Fds sluice keeps for itself besides sessions (listeners, pollers, logs).
const FD_OVERHEAD: u64 = 64;
/// Pipes the per-user pipe memory check plans for (busy sessions at once).
const PLANNED_PIPES: u64 = 1024;

/// The listen queue caps: `somaxconn` and `tcp_max_syn_backlog` against the largest route backlog.
pub(super) fn listen_backlog(config: &Config, f: &Facts) -> Vec<Finding> {
    let backlog = config.routes.iter().map(|r| u64::from(r.backlog)).max().unwrap_or(0);
    [("net.core.somaxconn", f.somaxconn), ("net.ipv4.tcp_max_syn_backlog", f.tcp_max_syn_backlog)]
        .into_iter()
        .map(|(check, value)| match value {
            None => unknown(check),
            Some(v) if v >= backlog => ok(check, format!("{v} >= the largest route backlog {backlog}")),
            Some(v) => bad(
                Level::Warn,
                check,
                format!("{v} < the largest route backlog {backlog}: listen queues are capped at {v}"),
                // Both are per network namespace: a container's own value is what counts, and
                // its /proc/sys is read-only, so the fix goes to the container's runtime.
                format!(
                    "sysctl -w {check}={backlog}   (in a container: --sysctl {check}={backlog}; Kubernetes: the pod's \
                     securityContext.sysctls)"
                ),
            ),
        })
        .collect()
}

/// The hard open-file limit against two fds per session.
pub(super) fn nofile(config: &Config, f: &Facts) -> Finding {
    let max_conn = config.max_connections as u64;
    let needed = max_conn * 2 + FD_OVERHEAD;
    match f.nofile {
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
    }
}

/// The largest pipe the kernel allows against `pipe_size`.
pub(super) fn pipe_max_size(config: &Config, f: &Facts) -> Finding {
    let pipe = config.pipe_size as u64;
    match f.pipe_max_size {
        None => unknown("fs.pipe-max-size"),
        Some(v) if v >= pipe => ok("fs.pipe-max-size", format!("{v} >= pipe_size {pipe}")),
        Some(v) => bad(
            Level::Warn,
            "fs.pipe-max-size",
            format!("{v} < pipe_size {pipe}: pipes are capped at {v}"),
            format!("sysctl -w fs.pipe-max-size={pipe}"),
        ),
    }
}

/// The per-user pipe memory limit, where it applies, against `PLANNED_PIPES` busy pipes.
pub(super) fn pipe_user_pages(config: &Config, f: &Facts) -> Finding {
    if !f.pipe_limits_apply {
        return ok(
            "fs.pipe-user-pages-soft",
            "not limited: the process has CAP_SYS_RESOURCE or CAP_SYS_ADMIN".to_owned(),
        );
    }
    let pipe = config.pipe_size as u64;
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
}

/// Each route's `send_buffer`/`recv_buffer` against the kernel's caps, or
/// one line on autotuning when no route sets them.
pub(super) fn socket_buffers(config: &Config, f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    for r in &config.routes {
        for (kind, size, max, key) in [
            ("send_buffer", r.socket.send_buffer, f.wmem_max, "net.core.wmem_max"),
            ("recv_buffer", r.socket.recv_buffer, f.rmem_max, "net.core.rmem_max"),
        ] {
            let Some(size) = size.map(|s| s.get()) else { continue };
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
    if out.is_empty() {
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
    out
}

/// Server-side TCP fast open, if any route asks for it.
pub(super) fn fastopen(config: &Config, f: &Facts) -> Option<Finding> {
    let r = config.routes.iter().find(|r| r.socket.fastopen.is_some_and(|q| q.get() > 0))?;
    Some(match f.tcp_fastopen {
        None => unknown("net.ipv4.tcp_fastopen"),
        Some(v) if v & 2 != 0 => ok("net.ipv4.tcp_fastopen", format!("{v}: server-side fast open is enabled")),
        Some(v) => bad(
            Level::Warn,
            "net.ipv4.tcp_fastopen",
            format!("{v}: route {} asks for fast open but the server side is off", r.name),
            format!("sysctl -w net.ipv4.tcp_fastopen={}", v | 3),
        ),
    })
}

/// Each route's `congestion` algorithm against those the kernel has loaded.
pub(super) fn congestion(config: &Config, f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
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
    out
}

/// Whether upstream connects may reuse ports in TIME_WAIT.
pub(super) fn tw_reuse(f: &Facts) -> Finding {
    match f.tcp_tw_reuse {
        None => unknown("net.ipv4.tcp_tw_reuse"),
        Some(1) => ok("net.ipv4.tcp_tw_reuse", "1: TIME_WAIT ports are reused for new upstream connections".to_owned()),
        Some(2) => ok("net.ipv4.tcp_tw_reuse", "2: reused for loopback upstreams only (the default)".to_owned()),
        Some(v) => bad(
            Level::Warn,
            "net.ipv4.tcp_tw_reuse",
            format!("{v}: many short upstream connections can run out of ports in TIME_WAIT"),
            "sysctl -w net.ipv4.tcp_tw_reuse=1".to_owned(),
        ),
    }
}

/// Whether an upgrade to fewer workers may close the surplus listening
/// sockets; asked only when a control socket makes upgrades possible.
pub(super) fn migrate_req(config: &Config, f: &Facts) -> Option<Finding> {
    config.control_socket.as_ref()?;
    Some(match f.tcp_migrate_req {
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
    })
}

/// The system-wide file limit against two fds per session.
pub(super) fn file_max(config: &Config, f: &Facts) -> Finding {
    let max_conn = config.max_connections as u64;
    match f.file_max {
        None => unknown("fs.file-max"),
        Some(v) if v >= max_conn * 2 => ok("fs.file-max", format!("{v} >= {}", max_conn * 2)),
        Some(v) => bad(
            Level::Warn,
            "fs.file-max",
            format!("{v} < max_connections × 2 = {}", max_conn * 2),
            format!("sysctl -w fs.file-max={}", max_conn * 4),
        ),
    }
}

/// Whether `relay: uring` can have its ring here: a warning (it falls back
/// to `auto`) only when the config asks for it.
pub(super) fn io_uring(config: &Config, f: &Facts) -> Finding {
    const CHECK: &str = "io_uring";
    match (&f.io_uring_refused, config.asks(RelayMode::Uring)) {
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

/// Whether `relay: sockmap` can have its sockhash here: a warning (it falls
/// back to `auto`) only when the config or a route asks for it.
pub(super) fn sockmap(config: &Config, f: &Facts) -> Finding {
    const CHECK: &str = "sockmap";
    match (&f.sockmap_refused, config.asks(RelayMode::Sockmap)) {
        (None, true) => ok(CHECK, "available: relay: sockmap uses it".to_owned()),
        (None, false) => {
            ok(CHECK, "available (relay: sockmap could use it; this config does not ask for it)".to_owned())
        }
        (Some(why), false) => ok(CHECK, format!("refused ({why}); this config does not ask for it")),
        (Some(why), true) => bad(
            Level::Warn,
            CHECK,
            format!("refused ({why}): relay: sockmap falls back to auto"),
            "run as root or grant CAP_BPF and CAP_NET_ADMIN (AmbientCapabilities= in the unit), in a container \
             allow the bpf syscall in its seccomp profile; the kernel needs CONFIG_BPF_STREAM_PARSER and \
             CONFIG_NET_SOCK_MSG"
                .to_owned(),
        ),
    }
}

/// Whether the kernel makes the MPTCP sockets of the routes with
/// `mptcp: true`; asked only when a route has it.
pub(super) fn mptcp(config: &Config, f: &Facts) -> Option<Finding> {
    const CHECK: &str = "net.mptcp.enabled";
    let routes: Vec<&str> = config.routes.iter().filter(|r| r.mptcp).map(|r| r.name.as_str()).collect();
    if routes.is_empty() {
        return None;
    }
    let routes = routes.join(", ");
    Some(match f.mptcp_enabled {
        Some(1) => ok(
            CHECK,
            format!(
                "1: route(s) {routes} listen and connect with MPTCP; clients open more paths with their own `ip \
                 mptcp endpoint add ADDR dev DEV subflow`, this host accepts as many as `ip mptcp limits` allows"
            ),
        ),
        Some(v) => bad(
            Level::Fail,
            CHECK,
            format!("{v}: MPTCP is off, so route(s) {routes} with mptcp: true cannot listen"),
            "sysctl -w net.mptcp.enabled=1   (persist it in /etc/sysctl.d/)".to_owned(),
        ),
        None => bad(
            Level::Fail,
            CHECK,
            format!("not found: this kernel has no MPTCP, so route(s) {routes} with mptcp: true cannot listen"),
            "a kernel built with CONFIG_MPTCP=y (Linux 5.6 or later; every major distribution's is), or drop \
             mptcp: true"
                .to_owned(),
        ),
    })
}
