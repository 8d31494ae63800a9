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
//! A pass-through connect adds its local address as soon as `connect` has
//! chosen it (`worker::connect`); the session's close takes it out. Each
//! client of a capture address is looked up at accept, and a pass-through
//! session once more when its own connect completes (a looped connection
//! accepted by another worker before the entry was in). The set is split
//! over a few locks by port, so workers rarely wait on each other.

use std::collections::HashSet;
use std::net::SocketAddr;
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

    /// A client connecting from `peer` is one of sluice's own pass-through connections.
    pub fn is_ours(&self, peer: SocketAddr) -> bool {
        self.shard(peer).contains(&peer)
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
}
