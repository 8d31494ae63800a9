//! Connection-rate limits: per route (`max_connection_rate`, one GCRA cell
//! in the route's state, `gcra.rs`) and per client prefix
//! (`max_connection_rate_per_client`, one table for the whole process in
//! fixed memory, `clients.rs`). Both are shared by every worker, so the
//! limits hold exactly whatever the worker count. A refused client is reset
//! right after accept: it never gets an upstream connection or a pipe.

pub mod clients;
pub mod gcra;

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::time::Instant;

pub use clients::{Admit, ClientRates};
pub use gcra::{Gcra, Rate};

/// A per-client rate and how clients are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientRate {
    /// The rate each group gets.
    pub rate: Rate,
    /// IPv4 clients are grouped by this prefix length (32: each address alone).
    pub prefix_v4: u8,
    /// IPv6 clients are grouped by this prefix length (64: a typical site).
    pub prefix_v6: u8,
}

/// The address `ip` is grouped under with these prefix lengths (the host bits zeroed).
pub fn group(ip: IpAddr, prefix_v4: u8, prefix_v6: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = if prefix_v4 == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix_v4.min(32))) };
            IpAddr::from((bits & mask).to_be_bytes())
        }
        IpAddr::V6(v6) => {
            // An IPv4 client on a dual-stack socket (::ffff:a.b.c.d) is an IPv4 client.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return group(IpAddr::V4(v4), prefix_v4, prefix_v6);
            }
            let bits = u128::from(v6);
            let mask = if prefix_v6 == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix_v6.min(128))) };
            IpAddr::from((bits & mask).to_be_bytes())
        }
    }
}

/// What a worker checks a new client against: the process-wide client
/// table, its hash key (random per process, so no one can aim clients at
/// one set of the table), and the clock.
#[derive(Debug)]
pub struct Limiter {
    clients: ClientRates,
    keys: std::hash::RandomState,
    epoch: Instant,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter { clients: ClientRates::default(), keys: std::hash::RandomState::new(), epoch: Instant::now() }
    }
}

impl Limiter {
    /// Nanoseconds since this limiter was made.
    pub fn now_ns(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Admits a connection of `client` on route `route_id` under `limit` at
    /// `now`, if `also` admits it too (see `ClientRates::allow`: the client
    /// is charged only then).
    pub fn allow_client(
        &self,
        route_id: usize,
        client: IpAddr,
        limit: ClientRate,
        now: Instant,
        also: impl FnOnce() -> bool,
    ) -> Admit {
        let mut h = self.keys.build_hasher();
        h.write_usize(route_id);
        match group(client, limit.prefix_v4, limit.prefix_v6) {
            IpAddr::V4(v4) => h.write(&v4.octets()),
            IpAddr::V6(v6) => h.write(&v6.octets()),
        }
        self.clients.allow(h.finish(), limit.rate, self.now_ns(now), also)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_grouped_by_prefix() {
        let g = |ip: &str, v4: u8, v6: u8| group(ip.parse().unwrap(), v4, v6).to_string();
        assert_eq!(g("10.1.2.3", 32, 64), "10.1.2.3");
        assert_eq!(g("10.1.2.3", 24, 64), "10.1.2.0");
        assert_eq!(g("10.1.2.3", 0, 64), "0.0.0.0");
        assert_eq!(g("2001:db8:1:2:3:4:5:6", 32, 64), "2001:db8:1:2::");
        assert_eq!(g("2001:db8:1:2:3:4:5:6", 32, 48), "2001:db8:1::");
        assert_eq!(g("::ffff:10.1.2.3", 24, 64), "10.1.2.0", "an IPv4 client on a dual-stack socket");
    }

    #[test]
    fn one_prefix_shares_a_budget_and_another_has_its_own() {
        let l = Limiter::default();
        let limit = ClientRate { rate: Rate { per_second: 1, burst: 3 }, prefix_v4: 24, prefix_v6: 64 };
        let now = Instant::now();
        let from = |ip: &str| l.allow_client(0, ip.parse().unwrap(), limit, now, || true) == Admit::Yes;
        assert!(from("10.0.0.1") && from("10.0.0.2") && from("10.0.0.3"));
        assert!(!from("10.0.0.4"), "the fourth of 10.0.0.0/24 in the same instant");
        assert!(from("10.0.1.1"), "another /24");
        assert!(!from("10.0.0.5"), "still the same /24");
        assert_eq!(
            l.allow_client(1, "10.0.0.5".parse().unwrap(), limit, now, || true),
            Admit::Yes,
            "another route counts on its own"
        );
        let v6 = from;
        assert!(v6("2001:db8::1") && v6("2001:db8::2") && v6("2001:db8::ffff"));
        assert!(!v6("2001:db8::3:4"), "the same /64");
        assert!(v6("2001:db8:0:1::1"), "another /64");
    }
}
