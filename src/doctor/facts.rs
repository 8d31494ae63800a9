//! What `sluice doctor` reads from the machine: kernel settings under
//! `/proc/sys`, this process's limits and capabilities, whether it may set
//! up an io_uring, and what a transparent sidecar needs (connection
//! tracking, `nft`, and the policy routing `routing.rs` asks `ip` for). Read
//! once (`Facts::read`), under a `/proc` root that tests point at a
//! directory of their own; judging the facts is `checks.rs`'s and `capture.rs`'s.

use std::path::{Path, PathBuf};

use super::routing::{self, PolicyRouting};

use crate::config::RelayMode;
use crate::sys::local_ports;

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
    /// Why this process cannot make a BPF sockhash (`relay: sockmap`); `None`: it can.
    pub sockmap_refused: Option<String>,
    /// net.mptcp.enabled (`None`: unreadable, or a kernel without MPTCP)
    pub mptcp_enabled: Option<u64>,
    /// This process's effective capabilities (`CapEff` of /proc/self/status).
    pub cap_eff: Option<u64>,
    /// The kernel's version (major, minor), from kernel.osrelease.
    pub kernel: Option<(u32, u32)>,
    /// Connection tracking is loaded (what `SO_ORIGINAL_DST` reads after a `redirect`).
    pub conntrack: bool,
    /// Where `nft` is, if this process can run it.
    pub nft: Option<PathBuf>,
    /// Marks routed to a table where every address is local (TPROXY); `None`: `ip` could not tell.
    pub policy_routing: Option<PolicyRouting>,
}

impl Facts {
    /// Reads everything under `proc_root` (normally `/proc`).
    pub fn read(proc_root: &Path) -> Facts {
        let text = |rel: &str| std::fs::read_to_string(proc_root.join(rel)).ok();
        let num = |rel: &str| text(rel).and_then(|t| t.trim().parse::<u64>().ok());
        let nums = |rel: &str| -> Option<Vec<u64>> { text(rel)?.split_whitespace().map(|n| n.parse().ok()).collect() };
        let triple = |rel: &str| nums(rel).and_then(|v| <[u64; 3]>::try_from(v).ok());
        let status = text("self/status").unwrap_or_default();
        let caps =
            status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
        let cap_eff = caps.unwrap_or(0);
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
            io_uring_refused: relay_refused(RelayMode::Uring),
            sockmap_refused: relay_refused(RelayMode::Sockmap),
            mptcp_enabled: num("sys/net/mptcp/enabled"),
            cap_eff: caps,
            kernel: text("sys/kernel/osrelease").and_then(|t| kernel_version(&t)),
            conntrack: proc_root.join("sys/net/netfilter/nf_conntrack_max").exists()
                || proc_root.join("net/nf_conntrack").exists(),
            nft: find_in_path("nft"),
            policy_routing: routing::read(),
        }
    }
}

/// "6.18.44-fc-v1300" → (6, 18).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// `name` in `$PATH`, or in the sbin directories a non-root `$PATH` lacks.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Why this process cannot have what relay `mode` needs of the kernel
/// (`uring`: seccomp, `kernel.io_uring_disabled`, an old kernel; `sockmap`:
/// no CAP_BPF, seccomp, a kernel without sockmap); `None`: it can, or the
/// mode needs nothing. `sluice check` asks it too, to say where a mode falls back.
pub fn relay_refused(mode: RelayMode) -> Option<String> {
    crate::relay::modes::refused(mode)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_versions_are_read_from_the_release() {
        use super::kernel_version;
        assert_eq!(kernel_version("6.18.44-fc-v1300\n"), Some((6, 18)));
        assert_eq!(kernel_version("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(kernel_version("4.19-rc1"), Some((4, 19)));
        assert_eq!(kernel_version("garbage"), None);
    }
}
