//! Which listener a listening socket belongs to: the key a route keeps its
//! sockets by across reloads, that names a socket in a takeover's offer and
//! matches a socket systemd passed to its route. A listener made with an
//! option fixed at its creation (IP_TRANSPARENT for `transparent: true`,
//! the MPTCP protocol for `mptcp: true`) has a key of its own: a route that
//! turns one on or off gets new sockets, a successor never takes one kind
//! for another, and a passed socket serves only a route of its protocol
//! (`SO_PROTOCOL`).

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
    /// A listener of a special kind (`Fixed` and `Ephemeral` stay the plain
    /// ones, so an older process's offer still reads).
    Special {
        /// The configured address (port 0 for an ephemeral one).
        addr: SocketAddr,
        /// The route's name for port 0, `None` for a fixed address.
        name: Option<String>,
        /// What the socket was made with.
        kind: ListenKind,
    },
}

/// What a listening socket was made with that cannot change afterwards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ListenKind {
    /// IP_TRANSPARENT / IPV6_TRANSPARENT (`transparent: true`).
    pub transparent: bool,
    /// An `IPPROTO_MPTCP` socket (`mptcp: true`).
    pub mptcp: bool,
}

impl ListenKey {
    /// The key of a configured route that has its address to itself.
    pub fn of(r: &config::Route) -> ListenKey {
        let kind = ListenKind { transparent: r.transparent, mptcp: r.mptcp };
        let name = (r.listen.port() == 0).then(|| r.name.clone());
        match (name, kind == ListenKind::default()) {
            (None, _) => ListenKey::fixed(r.listen, kind),
            (Some(name), true) => ListenKey::Ephemeral(name, r.listen),
            (Some(name), false) => ListenKey::Special { addr: r.listen, name: Some(name), kind },
        }
    }

    /// The key of a listener on the fixed address `addr`.
    pub fn fixed(addr: SocketAddr, kind: ListenKind) -> ListenKey {
        if kind == ListenKind::default() {
            ListenKey::Fixed(addr)
        } else {
            ListenKey::Special { addr, name: None, kind }
        }
    }

    /// The configured address (port 0 for an ephemeral one).
    pub fn addr(&self) -> SocketAddr {
        match self {
            ListenKey::Fixed(a) | ListenKey::Ephemeral(_, a) | ListenKey::Special { addr: a, .. } => *a,
        }
    }

    /// A fixed address, not port 0 (one systemd can pass a socket for).
    pub fn is_fixed(&self) -> bool {
        matches!(self, ListenKey::Fixed(_) | ListenKey::Special { name: None, .. })
    }

    /// What the listener's sockets are made with.
    pub fn kind(&self) -> ListenKind {
        match self {
            ListenKey::Special { kind, .. } => *kind,
            _ => ListenKind::default(),
        }
    }

    /// An MPTCP listener's key.
    pub fn is_mptcp(&self) -> bool {
        self.kind().mptcp
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

    fn route(extra: &str) -> config::Route {
        let yaml = format!("routes:\n  - name: a\n    listen: 127.0.0.1:8080\n    upstreams: [127.0.0.1:1]\n{extra}");
        crate::config::parse_str(&yaml, "t").unwrap().routes.remove(0)
    }

    #[test]
    fn keys_keep_fixed_addresses_across_renames() {
        let mut r = route("");
        let k = ListenKey::of(&r);
        r.name = "b".to_owned();
        assert_eq!(ListenKey::of(&r), k);
        r.listen = "127.0.0.1:0".parse().unwrap();
        let k0 = ListenKey::of(&r);
        r.name = "c".to_owned();
        assert_ne!(ListenKey::of(&r), k0, "port-0 routes are told apart by name");
    }

    #[test]
    fn a_transparent_or_mptcp_listener_is_not_the_plain_one_of_its_address() {
        let plain = ListenKey::of(&route(""));
        let tproxy = ListenKey::of(&route("    transparent: true\n"));
        let mptcp = ListenKey::of(&route("    mptcp: true\n"));
        let both = ListenKey::of(&route("    transparent: true\n    mptcp: true\n"));
        for (i, a) in [&plain, &tproxy, &mptcp, &both].into_iter().enumerate() {
            assert!(a.is_fixed() && a.addr() == plain.addr(), "{a:?}");
            for b in [&plain, &tproxy, &mptcp, &both].into_iter().skip(i + 1) {
                assert_ne!(a, b, "turning an option on or off needs new sockets");
            }
        }
        assert!(mptcp.is_mptcp() && both.is_mptcp() && !tproxy.is_mptcp());
        assert!(tproxy.kind().transparent);
        let mut r = route("    mptcp: true\n");
        r.listen = "127.0.0.1:0".parse().unwrap();
        let k = ListenKey::of(&r);
        assert!(!k.is_fixed() && k.is_mptcp());
        r.name = "b".to_owned();
        assert_ne!(ListenKey::of(&r), k, "port-0 routes are told apart by name");
    }

    #[test]
    fn keys_cross_to_a_successor_as_json_and_an_older_process_keys_still_read() {
        for k in [ListenKey::of(&route("")), ListenKey::of(&route("    transparent: true\n    mptcp: true\n"))] {
            let wire = serde_json::to_string(&k).unwrap();
            assert_eq!(serde_json::from_str::<ListenKey>(&wire).unwrap(), k);
        }
        let old: ListenKey = serde_json::from_str(r#"{"Fixed":"127.0.0.1:80"}"#).unwrap();
        assert_eq!(old, ListenKey::fixed("127.0.0.1:80".parse().unwrap(), ListenKind::default()));
    }
}
