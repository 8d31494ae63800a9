//! The checks of `sluice doctor` for a transparent sidecar
//! (docs/transparent.md): the capability that `transparent: true`,
//! `source: client` and `socket.mark` need, the policy routing that TPROXY
//! and `source: client` need for their packets to reach sluice, and the
//! connection tracking that `original_destination` reads after a `redirect`.
//! Each check speaks only when a route uses what it checks: a config that
//! captures nothing gets no line from here. The facts are `facts.rs`'s and
//! `routing.rs`'s.

use std::net::SocketAddr;

use super::routing::LocalMark;
use super::{Facts, Finding, Level, bad, ok, unknown};
use crate::config::{Config, Route, Source};

/// `CAP_NET_ADMIN`'s bit in `CapEff`.
const CAP_NET_ADMIN: u32 = 12;
/// `CAP_NET_RAW`'s bit: the kernel takes it for `IP_TRANSPARENT` too, and for
/// `SO_MARK` since Linux 5.17.
const CAP_NET_RAW: u32 = 13;
/// Where the capture rules are, in sluice's repository.
const RULES: &str = "examples/nftables";
/// How to give the process the capability, wherever it runs.
const GRANT: &str = "run sluice as root, or give it the capability: setcap cap_net_admin+ep \"$(command -v sluice)\" \
                     (systemd: AmbientCapabilities=CAP_NET_ADMIN; Kubernetes: runAsUser: 0 with capabilities.add: \
                     [NET_ADMIN], see docs/transparent.md#capabilities)";

/// The findings, in the order the report lists them.
pub(super) fn findings(config: &Config, f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    out.extend(transparent_capability(config, f));
    out.extend(mark_capability(config, f));
    out.extend(policy_routing(config, f));
    out.extend(conntrack(config, f));
    out
}

/// Why a route needs `IP_TRANSPARENT`, if it does.
fn transparent_use(r: &Route) -> Option<&'static str> {
    if r.transparent {
        Some("transparent: true")
    } else if r.source == Some(Source::Client) {
        Some("source: client")
    } else {
        None
    }
}

/// "route a (why), route b (why)" for the routes `pick` says something of.
fn routes_saying(config: &Config, pick: impl Fn(&Route) -> Option<String>) -> Vec<String> {
    config.routes.iter().filter_map(|r| pick(r).map(|why| format!("route {} ({why})", r.name))).collect()
}

fn has(f: &Facts, cap: u32) -> Option<bool> {
    f.cap_eff.map(|eff| eff & (1 << cap) != 0)
}

/// `IP_TRANSPARENT` (a transparent listener, `source: client`) needs
/// `CAP_NET_ADMIN` or `CAP_NET_RAW`: without either the config cannot work.
fn transparent_capability(config: &Config, f: &Facts) -> Option<Finding> {
    const CHECK: &str = "CAP_NET_ADMIN";
    let users = routes_saying(config, |r| transparent_use(r).map(str::to_owned));
    if users.is_empty() {
        return None;
    }
    let users = users.join(", ");
    Some(match (has(f, CAP_NET_ADMIN), has(f, CAP_NET_RAW)) {
        (None, _) | (_, None) => unknown(CHECK),
        (Some(true), _) => ok(CHECK, format!("in the effective set: {users} may use IP_TRANSPARENT")),
        (Some(false), Some(true)) => {
            ok(CHECK, format!("not held, but CAP_NET_RAW is, which the kernel accepts for IP_TRANSPARENT: {users}"))
        }
        (Some(false), Some(false)) => bad(
            Level::Fail,
            CHECK,
            format!(
                "not in the effective set (nor CAP_NET_RAW): IP_TRANSPARENT is refused, so {users} cannot work (a \
                 transparent listener stops sluice from starting; source: client fails every upstream connect)"
            ),
            GRANT.to_owned(),
        ),
    })
}

/// `SO_MARK` needs `CAP_NET_ADMIN` (or `CAP_NET_RAW` on Linux 5.17+); a
/// refused mark leaves upstream connections unmarked, which a capture rule
/// that exempts the mark then catches.
fn mark_capability(config: &Config, f: &Facts) -> Option<Finding> {
    const CHECK: &str = "SO_MARK";
    let users = routes_saying(config, |r| r.socket.mark.map(|m| format!("mark {:#x}", m.get())));
    if users.is_empty() {
        return None;
    }
    let users = users.join(", ");
    let raw_counts = f.kernel.is_some_and(|v| v >= (5, 17));
    Some(match (has(f, CAP_NET_ADMIN), has(f, CAP_NET_RAW)) {
        (None, _) | (_, None) => unknown(CHECK),
        (Some(true), _) => ok(CHECK, format!("CAP_NET_ADMIN is held: {users} can mark upstream connections")),
        (Some(false), Some(true)) if raw_counts => {
            ok(CHECK, format!("CAP_NET_RAW is held, which Linux 5.17+ accepts for SO_MARK: {users}"))
        }
        _ => bad(
            Level::Warn,
            CHECK,
            format!(
                "no CAP_NET_ADMIN{}: the kernel refuses the mark of {users}, whose upstream connections then go \
                 unmarked (a capture rule that exempts the mark catches them again: refused as loop)",
                if raw_counts { " nor CAP_NET_RAW" } else { "" }
            ),
            format!("{GRANT}; or exempt sluice's uid in the capture rules instead (meta skuid, {RULES}/outbound.nft)"),
        ),
    })
}

/// The families of a listen address: an unspecified IPv6 address is dual-stack.
fn families(listen: SocketAddr) -> (bool, bool) {
    match listen {
        SocketAddr::V4(_) => (true, false),
        SocketAddr::V6(a) => (a.ip().is_unspecified(), true),
    }
}

/// TPROXY's packets keep a foreign destination, and under `source: client`
/// so do the upstream's replies: a `fwmark` rule must send them to a table
/// where every address is local, or they are forwarded (or dropped) instead
/// of reaching sluice.
fn policy_routing(config: &Config, f: &Facts) -> Vec<Finding> {
    let users: Vec<&Route> = config.routes.iter().filter(|r| transparent_use(r).is_some()).collect();
    let (v4, v6) = users.iter().fold((false, false), |(a, b), r| {
        let (x, y) = families(r.listen);
        (a || x, b || y)
    });
    let mut out = Vec::new();
    for (wanted, name, ip, all) in [(v4, "IPv4", "ip", "0.0.0.0/0"), (v6, "IPv6", "ip -6", "::/0")] {
        if !wanted {
            continue;
        }
        let check = format!("policy routing ({name})");
        let fix = format!(
            "{ip} rule add fwmark 1 lookup 100; {ip} route add local {all} dev lo table 100; nft -f \
             {RULES}/tproxy.nft (its TPROXY_MARK is the fwmark)"
        );
        let names = users.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ");
        let marks: Option<&Vec<LocalMark>> =
            f.policy_routing.as_ref().map(|p| if name == "IPv4" { &p.v4 } else { &p.v6 });
        out.push(match marks {
            None => bad(
                Level::Warn,
                &check,
                format!(
                    "could not be read (no `ip` command here, or it failed); routes {names} need a fwmark rule to a \
                     table that routes every address locally"
                ),
                format!("check with `{ip} rule show` and `{ip} route show table 100`; the setup: {fix}"),
            ),
            Some(m) if m.is_empty() => bad(
                Level::Fail,
                &check,
                format!(
                    "no fwmark rule leads to a table with `local {all} dev lo`: packets steered to routes {names} \
                     (TPROXY, or replies to source: client) are forwarded or dropped instead of reaching sluice"
                ),
                fix,
            ),
            Some(m) => {
                let shown: Vec<String> = m
                    .iter()
                    .map(|l| {
                        let mask = if l.mask == u32::MAX { String::new() } else { format!("/{:#x}", l.mask) };
                        format!("fwmark {:#x}{mask} -> table {}", l.mark, l.table)
                    })
                    .collect();
                ok(&check, format!("{} routes every address locally (routes {names})", shown.join(", ")))
            }
        });
    }
    out
}

/// `SO_ORIGINAL_DST` answers from connection tracking, which a `redirect`
/// rule loads; and the rules are loaded with `nft`.
fn conntrack(config: &Config, f: &Facts) -> Vec<Finding> {
    let names: Vec<&str> =
        config.routes.iter().filter(|r| r.captures() && !r.transparent).map(|r| r.name.as_str()).collect();
    if names.is_empty() {
        return Vec::new();
    }
    let names = names.join(", ");
    let rules = format!("{RULES}/outbound.nft, {RULES}/inbound.nft");
    let tracking = if f.conntrack {
        ok(
            "nf_conntrack",
            format!(
                "loaded: routes {names} read each redirected connection's original destination from it (rules: {rules})"
            ),
        )
    } else {
        bad(
            Level::Warn,
            "nf_conntrack",
            format!(
                "not loaded: no redirect rule is in place yet, or the kernel lacks connection tracking; until one \
                 is, routes {names} see every connection as addressed to themselves (refused as loop)"
            ),
            format!("nft -f {RULES}/outbound.nft (a redirect rule loads nf_conntrack and nf_nat; or modprobe nf_nat)"),
        )
    };
    let nft = match (&f.nft, f.conntrack) {
        (Some(path), _) => ok("nft", format!("{} can load the capture rules ({rules})", path.display())),
        (None, true) => ok("nft", "not found here; the rules are loaded from elsewhere (tracking is on)".to_owned()),
        (None, false) => bad(
            Level::Warn,
            "nft",
            "not found in PATH: the capture rules cannot be loaded from here".to_owned(),
            "apt-get install nftables (or load the rules from another container: \
             examples/kubernetes/transparent-sidecar.yaml does it in an init container)"
                .to_owned(),
        ),
    };
    vec![tracking, nft]
}
