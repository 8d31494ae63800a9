//! The resolved upstreams of a route: every address a configured
//! `host:port` stands for, with its weight.
//!
//! Host names are resolved once, on the control thread, when the server
//! starts (never on a worker: a worker must not block). Re-resolution
//! arrives with DNS discovery.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

use crate::config::{HostPort, UpstreamSpec};

/// One address to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Where to connect.
    pub addr: SocketAddr,
    /// As configured, for messages (`app.internal:8000`).
    pub name: HostPort,
    /// Share of new sessions, 1..=256.
    pub weight: u32,
}

/// The upstreams of one route, in configuration order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamSet {
    /// At least one once resolved.
    pub upstreams: Vec<Upstream>,
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

impl UpstreamSet {
    /// Resolves every configured upstream (IP literals without a lookup).
    /// A name with several addresses gives one upstream per address.
    pub fn resolve(specs: &[UpstreamSpec]) -> Result<UpstreamSet, ResolveError> {
        let mut upstreams = Vec::new();
        for spec in specs {
            let addrs: Vec<SocketAddr> = match spec.address.as_socket_addr() {
                Some(a) => vec![a],
                None => (spec.address.host.as_str(), spec.address.port)
                    .to_socket_addrs()
                    .map_err(|source| ResolveError { name: spec.address.clone(), source })?
                    .collect(),
            };
            if addrs.is_empty() {
                return Err(ResolveError {
                    name: spec.address.clone(),
                    source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
                });
            }
            for addr in addrs {
                if !upstreams.iter().any(|u: &Upstream| u.addr == addr) {
                    upstreams.push(Upstream { addr, name: spec.address.clone(), weight: spec.weight });
                }
            }
        }
        Ok(UpstreamSet { upstreams })
    }

    /// Number of addresses.
    pub fn len(&self) -> usize {
        self.upstreams.len()
    }

    /// No addresses.
    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.as_socket_addr() == Some(self.addr) {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{} ({})", self.addr, self.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str, weight: u32) -> UpstreamSpec {
        UpstreamSpec { address: s.parse().unwrap(), weight }
    }

    #[test]
    fn literals_resolve_without_lookup() {
        let set = UpstreamSet::resolve(&[spec("127.0.0.1:80", 2), spec("[::1]:81", 1)]).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.upstreams[0].addr, "127.0.0.1:80".parse().unwrap());
        assert_eq!(set.upstreams[0].weight, 2);
        assert_eq!(set.upstreams[1].to_string(), "[::1]:81");
    }

    #[test]
    fn localhost_resolves_from_the_hosts_file() {
        let set = UpstreamSet::resolve(&[spec("localhost:8000", 1)]).unwrap();
        assert!(set.upstreams.iter().all(|u| u.addr.ip().is_loopback() && u.addr.port() == 8000));
    }

    #[test]
    fn unknown_names_fail_with_the_name() {
        let e = UpstreamSet::resolve(&[spec("no-such-host.invalid:80", 1)]).unwrap_err();
        assert!(e.to_string().starts_with("cannot resolve upstream no-such-host.invalid:80"), "{e}");
    }
}
