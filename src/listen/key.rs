//! Which listener a listening socket belongs to: the key a route keeps its
//! sockets by across reloads, that names a socket in a takeover's offer and
//! matches a socket systemd passed to its route. An MPTCP listener
//! (`mptcp: true`) has keys of its own: a socket's protocol is fixed when
//! it is made, so a route that turns MPTCP on or off gets new sockets, and
//! a passed socket serves only a route of its protocol (`SO_PROTOCOL`).

use std::net::SocketAddr;

use crate::config::{self, Config};

/// What must stay the same for a route to keep its listening sockets (and
/// what names a listener in a handoff to a successor).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ListenKey {
    /// A fixed address: whatever the route is called.
    Fixed(SocketAddr),
    /// Port 0 (the kernel picks): the name tells routes apart.
    Ephemeral(String, SocketAddr),
    /// `Fixed`, for an MPTCP listener.
    MptcpFixed(SocketAddr),
    /// `Ephemeral`, for an MPTCP listener.
    MptcpEphemeral(String, SocketAddr),
}

impl ListenKey {
    /// The key of a configured route that has its address to itself.
    pub fn of(r: &config::Route) -> ListenKey {
        match (r.listen.port(), r.mptcp) {
            (0, false) => ListenKey::Ephemeral(r.name.clone(), r.listen),
            (0, true) => ListenKey::MptcpEphemeral(r.name.clone(), r.listen),
            _ => ListenKey::fixed(r.listen, r.mptcp),
        }
    }

    /// The key of a listener on the fixed address `addr`, MPTCP or TCP.
    pub fn fixed(addr: SocketAddr, mptcp: bool) -> ListenKey {
        if mptcp { ListenKey::MptcpFixed(addr) } else { ListenKey::Fixed(addr) }
    }

    /// The configured address (port 0 for an ephemeral one).
    pub fn addr(&self) -> SocketAddr {
        match self {
            ListenKey::Fixed(a)
            | ListenKey::Ephemeral(_, a)
            | ListenKey::MptcpFixed(a)
            | ListenKey::MptcpEphemeral(_, a) => *a,
        }
    }

    /// A fixed address, not port 0.
    pub fn is_fixed(&self) -> bool {
        matches!(self, ListenKey::Fixed(_) | ListenKey::MptcpFixed(_))
    }

    /// An MPTCP listener's key.
    pub fn is_mptcp(&self) -> bool {
        matches!(self, ListenKey::MptcpFixed(_) | ListenKey::MptcpEphemeral(..))
    }

    /// The key of each route of `config`, in order: routes sharing an address
    /// share their group's key (its first route's, for port 0).
    pub fn of_all(config: &Config) -> Vec<ListenKey> {
        let mut keys = vec![None; config.routes.len()];
        for g in config::listen_groups(&config.routes) {
            let key = ListenKey::of(&config.routes[g[0]]);
            for i in g {
                keys[i] = Some(key.clone());
            }
        }
        keys.into_iter().zip(&config.routes).map(|(k, r)| k.unwrap_or_else(|| ListenKey::of(r))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_fixed_addresses_across_renames() {
        let mut r = crate::config::parse_str(
            "routes:\n  - name: a\n    listen: 127.0.0.1:8080\n    upstreams: [127.0.0.1:1]\n",
            "t",
        )
        .unwrap()
        .routes
        .remove(0);
        let k = ListenKey::of(&r);
        r.name = "b".to_owned();
        assert_eq!(ListenKey::of(&r), k);
        r.listen = "127.0.0.1:0".parse().unwrap();
        let k0 = ListenKey::of(&r);
        r.name = "c".to_owned();
        assert_ne!(ListenKey::of(&r), k0, "port-0 routes are told apart by name");
    }

    #[test]
    fn an_mptcp_listener_is_not_a_tcp_one() {
        let mut r = crate::config::parse_str(
            "routes:\n  - name: a\n    listen: 127.0.0.1:8080\n    upstreams: [127.0.0.1:1]\n    mptcp: true\n",
            "t",
        )
        .unwrap()
        .routes
        .remove(0);
        let k = ListenKey::of(&r);
        assert_eq!(k, ListenKey::MptcpFixed(r.listen));
        assert!(k.is_mptcp() && k.is_fixed());
        r.mptcp = false;
        assert_ne!(ListenKey::of(&r), k, "turning MPTCP off needs new sockets");
        r.listen = "127.0.0.1:0".parse().unwrap();
        r.mptcp = true;
        assert_eq!(ListenKey::of(&r), ListenKey::MptcpEphemeral("a".into(), r.listen));
        // A handoff's offer names keys in JSON: an older process's keys still read.
        let old: ListenKey = serde_json::from_str(r#"{"Fixed":"127.0.0.1:80"}"#).unwrap();
        assert_eq!(old, ListenKey::fixed("127.0.0.1:80".parse().unwrap(), false));
    }
}
