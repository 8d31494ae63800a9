//! Per-route access lists: `allow:` and `deny:` lists of CIDR blocks
//! (IPv4 and IPv6), checked right after accept, or right after the PROXY
//! header when the route accepts one.
//!
//! The rule, as in nginx's `allow`/`deny` and HAProxy's `src` ACLs written
//! the usual way: a client that matches `deny` is refused; otherwise, if
//! `allow` is not empty, a client that matches none of it is refused;
//! everyone else is let in. An IPv4 client seen through an IPv6 socket
//! (`::ffff:10.0.0.1`) is matched as the IPv4 address it is.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address (`/32`, `/128` implied).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The prefix length (32 or 128 for one address).
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True for an IPv4 block.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// True if `ip` lies in the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u128::from(u32::from(net)) << 96, u128::from(u32::from(ip)) << 96, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(u128::from(net), u128::from(ip), self.prefix),
            _ => false,
        }
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`; everything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8) -> bool {
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
    a & mask == b & mask
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| {
            format!(
                "invalid address block {s:?}: expected an IP address or a CIDR such as \"10.0.0.0/8\" or \"fd00::/8\""
            )
        })?;
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("invalid prefix length in {s:?}: expected 0 to {max}")),
            },
        };
        let block = Cidr { addr, prefix };
        // `10.1.2.3/8` is almost always a typo for `10.0.0.0/8` or `10.1.2.3/32`: say so.
        let network = match addr {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4) & if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
                IpAddr::V4(bits.into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
                IpAddr::V6(bits.into())
            }
        };
        if network != addr {
            return Err(format!("{s:?} has host bits set: did you mean \"{network}/{prefix}\"?"));
        }
        Ok(block)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A route's access list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acl {
    /// If not empty, only these may connect.
    pub allow: Vec<Cidr>,
    /// These may never connect (checked first).
    pub deny: Vec<Cidr>,
}

impl Acl {
    /// No rule at all: everyone is let in without a lookup.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Why `ip` is refused, or `None` if it may connect.
    pub fn check(&self, ip: IpAddr) -> Option<Refusal> {
        if let Some(block) = self.deny.iter().find(|c| c.contains(ip)) {
            return Some(Refusal::Denied(*block));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|c| c.contains(ip)) {
            return Some(Refusal::NotAllowed);
        }
        None
    }
}

/// Why an access list refused a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It matched this `deny` block.
    Denied(Cidr),
    /// `allow` is set and it matched none of it.
    NotAllowed,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Denied(c) => write!(f, "denied by {c}"),
            Refusal::NotAllowed => f.write_str("not in the allow list"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn acl(allow: &[&str], deny: &[&str]) -> Acl {
        Acl {
            allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
            deny: deny.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn blocks_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.1.1")), "IPv4-mapped IPv6 counts as IPv4");
        assert!(!c.contains(ip("::1")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")) && !v6.contains(ip("10.0.0.1")));
        let one: Cidr = "127.0.0.2".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.2/32");
        assert!(one.contains(ip("127.0.0.2")) && !one.contains(ip("127.0.0.3")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("::2")));
        assert!("::/0".parse::<Cidr>().unwrap().contains(ip("2001:db8::1")));
    }

    #[test]
    fn bad_blocks_say_what_is_wrong() {
        assert!("10.0.0.0/33".parse::<Cidr>().unwrap_err().contains("0 to 32"));
        assert!("::/129".parse::<Cidr>().unwrap_err().contains("0 to 128"));
        assert!("10.1.2.3/8".parse::<Cidr>().unwrap_err().contains("did you mean \"10.0.0.0/8\""));
        assert!("example.com/8".parse::<Cidr>().unwrap_err().contains("invalid address block"));
        assert!("10.0.0.0/x".parse::<Cidr>().is_err());
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let a = acl(&["10.0.0.0/8", "::1"], &["10.9.0.0/16"]);
        assert_eq!(a.check(ip("10.1.2.3")), None);
        assert_eq!(a.check(ip("::1")), None);
        assert_eq!(a.check(ip("10.9.1.1")), Some(Refusal::Denied("10.9.0.0/16".parse().unwrap())));
        assert_eq!(a.check(ip("192.168.1.1")), Some(Refusal::NotAllowed));
        let deny_only = acl(&[], &["127.0.0.2"]);
        assert_eq!(deny_only.check(ip("127.0.0.1")), None);
        assert!(deny_only.check(ip("127.0.0.2")).is_some());
        assert!(Acl::default().is_open() && !deny_only.is_open());
    }
}
