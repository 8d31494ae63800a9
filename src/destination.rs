//! Routing by original destination: the `destinations:` entries of the
//! routes that share one capture listener, and the choice among them.
//!
//! A transparent sidecar has one listener that every captured connection
//! reaches; what tells its connections apart is the address each client
//! dialled (read after accept, see `crate::sys::sockets`). Each route of
//! the address lists the destinations it serves; the route without
//! `destinations:` is the address's default. Pure logic: entries in, route
//! index out.
//!
//! The most specific entry wins, in the order of Envoy's filter-chain match
//! (destination port first, then destination IP address): an entry that
//! names a port beats one that does not, and among those the longest
//! address prefix wins. So for `192.0.2.10:80` an entry `:80` beats
//! `192.0.2.0/24`, and `192.0.2.10:80` beats both. Two routes cannot claim
//! the same entry (rejected when the table is built), so the winner is
//! always one route.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::acl::{Cidr, canonical};

/// One `destinations:` entry: an address block, a port, or both.
/// `192.0.2.0/24`, `192.0.2.10`, `192.0.2.10:80`, `192.0.2.0/24:80`, `:80`,
/// `2001:db8::/32`, `[2001:db8::1]:80`, `[2001:db8::/32]:80`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    /// `None`: any address (an entry of a port alone).
    block: Option<Cidr>,
    /// `None`: any port.
    port: Option<u16>,
}

impl Destination {
    /// True if a connection to `dst` is one of this entry's.
    pub fn matches(&self, dst: SocketAddr) -> bool {
        self.port.is_none_or(|p| p == dst.port()) && self.block.is_none_or(|b| b.contains(dst.ip()))
    }

    /// How specific the entry is: with a port first, then the prefix length
    /// (0 for a port alone). Larger wins.
    fn rank(&self) -> (bool, u8) {
        (self.port.is_some(), self.block.map_or(0, |b| b.prefix()))
    }
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Destination, String> {
        let s = s.trim();
        let bad = |why: String| {
            format!(
                "invalid destination {s:?}: {why} (expected an address block, a port or both, such as \
                 \"192.0.2.0/24\", \"192.0.2.10:80\", \":80\" or \"[2001:db8::/32]:443\")"
            )
        };
        let port = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad(format!("{p:?} is not a port (1 to 65535)"))),
            Ok(n) => Ok(n),
        };
        let block = |b: &str| b.parse::<Cidr>().map_err(bad);
        let (block, port) = if let Some(p) = s.strip_prefix(':').filter(|p| !p.starts_with(':')) {
            (None, Some(port(p)?))
        } else if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(|| bad("no closing \"]\"".into()))?;
            let p = after.strip_prefix(':').ok_or_else(|| bad("a port must follow \"]:\"".into()))?;
            (Some(block(inner)?), Some(port(p)?))
        } else if s.matches(':').count() == 1 {
            // One colon: IPv4 (or a block) with a port. IPv6 with a port is bracketed.
            let (b, p) = s.split_once(':').expect("one colon");
            (Some(block(b)?), Some(port(p)?))
        } else {
            (Some(block(s)?), None)
        };
        Ok(Destination { block, port })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.block, self.port) {
            (None, Some(p)) => write!(f, ":{p}"),
            (Some(b), None) => write!(f, "{b}"),
            (Some(b), Some(p)) if b.is_ipv4() => write!(f, "{b}:{p}"),
            (Some(b), Some(p)) => write!(f, "[{b}]:{p}"),
            (None, None) => write!(f, "*"),
        }
    }
}

/// The routes of one capture address, by destination.
#[derive(Clone, Debug, Default)]
pub struct DestinationTable {
    /// Every entry with its route's index, most specific first (a stable
    /// sort: ties are entries that can never both match).
    entries: Vec<(Destination, usize)>,
    /// The route without `destinations:`, if any.
    default: Option<usize>,
}

impl DestinationTable {
    /// The table of an address whose routes list `routes[i]` (config order;
    /// an empty list is the default route). Fails when two routes claim the
    /// same entry or two routes have none.
    pub fn build(routes: &[&[Destination]]) -> Result<DestinationTable, String> {
        let mut table = DestinationTable::default();
        for (i, entries) in routes.iter().enumerate() {
            if entries.is_empty() {
                if let Some(d) = table.default {
                    return Err(format!(
                        "routes {d} and {i} of the address both lack `destinations:`: only one route may be \
                         the default"
                    ));
                }
                table.default = Some(i);
            }
            for e in entries.iter() {
                if let Some((_, j)) = table.entries.iter().find(|(x, _)| x == e) {
                    return Err(if *j == i {
                        format!("destination {e} is listed twice in route {i}")
                    } else {
                        format!("destination {e} is claimed twice (routes {j} and {i})")
                    });
                }
                table.entries.push((*e, i));
            }
        }
        table.entries.sort_by_key(|(e, _)| std::cmp::Reverse(e.rank()));
        Ok(table)
    }

    /// The index of the route that serves connections to `dst`; `None`:
    /// no entry matches and the address has no default route.
    pub fn pick(&self, dst: SocketAddr) -> Option<usize> {
        let dst = SocketAddr::new(canonical(dst.ip()), dst.port());
        self.entries.iter().find(|(e, _)| e.matches(dst)).map(|&(_, i)| i).or(self.default)
    }
}

#[cfg(test)]
mod tests;
