//! The resolved upstreams of a route: every address a configured
//! `host:port` stands for, with its weight, tier, metric series and shared
//! health, plus the hash ring over them.
//!
//! Host names are resolved on the control thread at start and reload, and
//! again every `resolve_interval` on the resolver thread (never on a
//! worker: a worker must not block). A new set means a new `Route`;
//! running sessions keep the one they started with.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use super::balance::{Loads, Ring};
use super::health::UpstreamHealth;
use super::resolve;
use crate::config::{HostPort, UpstreamSpec};

/// Where an upstream's numbers go: its slot in the metric registry
/// (`metrics::Registry`), and which occupant of the slot.
/// The generation goes up each time the slot is reclaimed; at most one
/// reclaim per `RETENTION`, a `u32` does not wrap in practice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UpstreamKey {
    /// Index into the workers' upstream stats.
    pub id: usize,
    /// Occupant of that slot.
    pub generation: u32,
}

/// One address to connect to.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Where to connect.
    pub addr: SocketAddr,
    /// As configured, for messages (`app.internal:8000`).
    pub name: HostPort,
    /// Share of new sessions, 1..=256.
    pub weight: u32,
    /// Used only when no primary is available.
    pub backup: bool,
    /// Its metric series (slot and generation: a session that outlives the
    /// series records nowhere).
    pub metric_id: UpstreamKey,
    /// Health, ejection and load, shared by every thread.
    pub health: Arc<UpstreamHealth>,
}

/// The upstreams of one route, in configuration order.
#[derive(Clone, Debug, Default)]
pub struct UpstreamSet {
    /// At least one once resolved.
    pub upstreams: Vec<Upstream>,
    /// The consistent-hash ring over them (for `hash_client_ip`).
    pub ring: Ring,
}

/// A host name that did not resolve.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve upstream {name}: {source}")]
pub struct ResolveError {
    /// The configured name.
    pub name: HostPort,
    /// What the resolver said.
    #[source]
    pub source: io::Error,
}

/// The addresses of one configured upstream (an IP literal without a lookup).
pub fn resolve_spec(spec: &UpstreamSpec) -> Result<Vec<SocketAddr>, ResolveError> {
    match spec.address.as_socket_addr() {
        Some(a) => Ok(vec![a]),
        None => resolve::lookup(&spec.address.host, spec.address.port)
            .map_err(|source| ResolveError { name: spec.address.clone(), source }),
    }
}

impl UpstreamSet {
    /// Resolves every configured upstream: one list of addresses per spec.
    pub fn resolve(specs: &[UpstreamSpec]) -> Result<Vec<Vec<SocketAddr>>, ResolveError> {
        specs.iter().map(resolve_spec).collect()
    }

    /// The set for `specs` whose addresses are `addrs` (parallel to `specs`).
    /// An address that two names share is listed once, with the first.
    /// `identity` gives each address its metric series and shared health
    /// (the route's `metrics::Registry::upstream`).
    pub fn build(
        specs: &[UpstreamSpec],
        addrs: &[Vec<SocketAddr>],
        mut identity: impl FnMut(SocketAddr) -> (UpstreamKey, Arc<UpstreamHealth>),
    ) -> UpstreamSet {
        let mut upstreams: Vec<Upstream> = Vec::new();
        for (spec, list) in specs.iter().zip(addrs) {
            for &addr in list {
                if upstreams.iter().any(|u| u.addr == addr) {
                    continue;
                }
                let (metric_id, health) = identity(addr);
                upstreams.push(Upstream {
                    addr,
                    name: spec.address.clone(),
                    weight: spec.weight,
                    backup: spec.backup,
                    metric_id,
                    health,
                });
            }
        }
        let ring = Ring::new(upstreams.iter().map(|u| (u.addr.to_string(), u.weight)));
        UpstreamSet { upstreams, ring }
    }

    /// The set of a pass-through route (`original_destination: true`): one
    /// member standing for every original destination, so the route's
    /// sessions claim, count and record like any other's, in one series
    /// (`identity` gives it; `label` names it). Its address is never
    /// connected to: each session connects to its own original destination.
    pub fn pass_through(label: &str, identity: impl FnOnce() -> (UpstreamKey, Arc<UpstreamHealth>)) -> UpstreamSet {
        let (metric_id, health) = identity();
        let upstream = Upstream {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            name: HostPort { host: label.to_owned(), port: 0 },
            weight: 1,
            backup: false,
            metric_id,
            health,
        };
        let ring = Ring::new([(upstream.name.host.clone(), 1)]);
        UpstreamSet { upstreams: vec![upstream], ring }
    }

    /// Number of addresses.
    pub fn len(&self) -> usize {
        self.upstreams.len()
    }

    /// How many upstreams other than `index` are ejected right now (for
    /// `max_ejected_percent`). One pass that skips `index`: subtracting its own
    /// state from a total read earlier could underflow when another worker
    /// ejects it between the two reads.
    pub fn ejected_except(&self, index: usize) -> usize {
        self.upstreams.iter().enumerate().filter(|&(i, u)| i != index && u.health.is_ejected()).count()
    }
}

impl Loads for UpstreamSet {
    fn count(&self) -> usize {
        self.upstreams.len()
    }

    fn weight(&self, i: usize) -> u32 {
        self.upstreams[i].weight
    }

    fn load(&self, i: usize) -> usize {
        self.upstreams[i].health.active()
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.port == 0 {
            f.write_str("the original destination") // a pass-through route's one member
        } else if self.name.as_socket_addr() == Some(self.addr) {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{} ({})", self.addr, self.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Registry;

    fn spec(s: &str, weight: u32) -> UpstreamSpec {
        UpstreamSpec { address: s.parse().unwrap(), weight, backup: false }
    }

    #[test]
    fn literals_resolve_without_lookup() {
        let specs = [spec("127.0.0.1:80", 2), spec("[::1]:81", 1)];
        let reg = Registry::default();
        let set = UpstreamSet::build(&specs, &UpstreamSet::resolve(&specs).unwrap(), |a| reg.upstream(0, a));
        assert_eq!(set.len(), 2);
        assert_eq!(set.upstreams[0].addr, "127.0.0.1:80".parse().unwrap());
        assert_eq!(set.upstreams[0].weight, 2);
        assert_eq!(set.upstreams[1].to_string(), "[::1]:81");
        let again = UpstreamSet::build(&specs, &UpstreamSet::resolve(&specs).unwrap(), |a| reg.upstream(0, a));
        assert!(Arc::ptr_eq(&set.upstreams[0].health, &again.upstreams[0].health), "health is kept per address");
    }

    #[test]
    fn the_others_ejected_count_cannot_underflow_when_another_worker_ejects_this_one() {
        let specs = [spec("127.0.0.1:80", 1), spec("127.0.0.1:81", 1)];
        let reg = Registry::default();
        let set = UpstreamSet::build(&specs, &UpstreamSet::resolve(&specs).unwrap(), |a| reg.upstream(0, a));
        let cfg = crate::config::Outlier {
            consecutive_failures: 1,
            base_ejection: std::time::Duration::from_secs(10),
            max_ejection: std::time::Duration::from_secs(60),
            max_ejected_percent: 50,
        };
        // The old expression, `set.ejected() - this.is_ejected()`, read as two steps
        // with another worker ejecting upstream 0 in between:
        let total = set.upstreams.iter().filter(|u| u.health.is_ejected()).count();
        set.upstreams[0].health.connect_failed(&cfg, 0, 2, 1);
        let old = total.wrapping_sub(usize::from(set.upstreams[0].health.is_ejected()));
        assert_eq!(old, usize::MAX, "release builds wrapped: max_ejected_percent let everything go");
        assert_eq!(set.ejected_except(0), 0, "no other upstream is ejected");
        assert_eq!(set.ejected_except(1), 1, "upstream 0 is, as seen from upstream 1");
    }

    #[test]
    fn localhost_resolves_from_the_hosts_file() {
        let addrs = resolve_spec(&spec("localhost:8000", 1)).unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 8000));
    }

    #[test]
    fn unknown_names_fail_with_the_name() {
        let e = resolve_spec(&spec("no-such-host.invalid:80", 1)).unwrap_err();
        assert!(e.to_string().starts_with("cannot resolve upstream no-such-host.invalid:80"), "{e}");
    }
}
