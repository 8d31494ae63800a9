//! The loop guard of pass-through routes (`original_destination: true`):
//! the local address of every upstream connection such a route has open,
//! so that a capture rule that catches sluice's own traffic (an nftables
//! `redirect` without the `socket.mark` or `meta skuid` exemption) is
//! recognised when that connection comes back to a capture listener: its
//! peer address is one sluice itself is using. Such a client is refused
//! (`loop`) instead of being connected once more, which would repeat
//! without end.
//!
//! Shared by every worker (the connection may come back to any of them).
//! A pass-through connect adds one entry before its SYN leaves (its port is
//! bound first, `sys::sockets::bind_pass_through`); without a `source:` the
//! bound address is the wildcard with that port until connect has chosen
//! the local IP, and a wildcard entry stands for its port on every address
//! (for those few microseconds: `replace` then puts the full address). The
//! session's close takes the entry out, and each client of a capture
//! address is looked up once. The set is split over a few locks by port (an
//! address and its wildcard share one), so workers rarely wait on each other.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

/// How many independently locked parts the set has.
const SHARDS: usize = 16;

/// Local addresses of the pass-through upstream connections open now.
#[derive(Debug, Default)]
pub struct LoopGuard {
    shards: [Mutex<HashSet<SocketAddr>>; SHARDS],
}

impl LoopGuard {
    fn shard(&self, addr: SocketAddr) -> std::sync::MutexGuard<'_, HashSet<SocketAddr>> {
        self.shards[usize::from(addr.port()) % SHARDS].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pass-through connection leaves from `local`.
    pub fn insert(&self, local: SocketAddr) {
        self.shard(local).insert(local);
    }

    /// The connection from `local` is closed.
    pub fn remove(&self, local: SocketAddr) {
        self.shard(local).remove(&local);
    }

    /// The connection bound to `bound` (a wildcard and a port) now has its
    /// full local address `local` (the same port).
    pub fn replace(&self, bound: SocketAddr, local: SocketAddr) {
        debug_assert_eq!(bound.port(), local.port(), "connect keeps the bound port");
        let mut shard = self.shard(local);
        shard.remove(&bound);
        shard.insert(local);
    }

    /// A client connecting from `peer` is one of sluice's own pass-through connections.
    pub fn is_ours(&self, peer: SocketAddr) -> bool {
        let shard = self.shard(peer);
        let any = if peer.is_ipv4() { IpAddr::from([0, 0, 0, 0]) } else { IpAddr::from([0u16; 8]) };
        shard.contains(&peer) || shard.contains(&SocketAddr::new(any, peer.port()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_ours_from_its_connect_to_its_close() {
        let g = LoopGuard::default();
        let a: SocketAddr = "10.0.0.5:40000".parse().unwrap();
        let b: SocketAddr = "10.0.0.5:40016".parse().unwrap(); // the same shard
        assert!(!g.is_ours(a));
        g.insert(a);
        assert!(g.is_ours(a));
        assert!(!g.is_ours(b), "another port of the same address is not ours");
        assert!(!g.is_ours("10.0.0.6:40000".parse().unwrap()), "nor the same port of another address");
        g.remove(a);
        assert!(!g.is_ours(a));
    }

    #[test]
    fn a_wildcard_entry_stands_for_its_port_until_connect_chose_the_address() {
        let g = LoopGuard::default();
        let bound: SocketAddr = "0.0.0.0:40000".parse().unwrap();
        let local: SocketAddr = "10.0.0.5:40000".parse().unwrap();
        g.insert(bound);
        assert!(g.is_ours(local) && g.is_ours("127.0.0.1:40000".parse().unwrap()));
        assert!(!g.is_ours("[::1]:40000".parse().unwrap()), "another family is another socket");
        g.replace(bound, local);
        assert!(g.is_ours(local));
        assert!(!g.is_ours("192.0.2.7:40000".parse().unwrap()), "a remote client with the same port is not ours");
        g.remove(local);
        assert!(!g.is_ours(local));
    }
}
