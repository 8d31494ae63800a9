//! Which listener a listening socket belongs to: the key a route keeps its
//! sockets by across reloads, that names a socket in a takeover's offer and
//! matches a socket systemd passed to its route.

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
    /// A fixed address with IP_TRANSPARENT (`transparent: true`): not the
    /// plain listener of the same address (a reload that turns the option on
    /// or off binds anew, and a successor never takes one for the other).
    Transparent(SocketAddr),
    /// Port 0 with IP_TRANSPARENT.
    TransparentEphemeral(String, SocketAddr),
}

impl ListenKey {
    /// The key of a configured route that has its address to itself.
    pub fn of(r: &config::Route) -> ListenKey {
        match (r.transparent, r.listen.port() == 0) {
            (false, false) => ListenKey::Fixed(r.listen),
            (false, true) => ListenKey::Ephemeral(r.name.clone(), r.listen),
            (true, false) => ListenKey::Transparent(r.listen),
            (true, true) => ListenKey::TransparentEphemeral(r.name.clone(), r.listen),
        }
    }

    /// The address it names (port 0 for a port the kernel picks).
    pub fn addr(&self) -> SocketAddr {
        match self {
            ListenKey::Fixed(a)
            | ListenKey::Ephemeral(_, a)
            | ListenKey::Transparent(a)
            | ListenKey::TransparentEphemeral(_, a) => *a,
        }
    }

    /// A fixed address (one systemd can pass a socket for).
    pub fn is_fixed(&self) -> bool {
        matches!(self, ListenKey::Fixed(_) | ListenKey::Transparent(_))
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
    fn a_transparent_listener_is_not_the_plain_one_of_its_address() {
        let yaml = |extra: &str| {
            format!("routes:\n  - name: a\n    listen: 127.0.0.1:8080\n    upstreams: [127.0.0.1:1]\n{extra}")
        };
        let plain = crate::config::parse_str(&yaml(""), "t").unwrap().routes.remove(0);
        let tproxy = crate::config::parse_str(&yaml("    transparent: true\n"), "t").unwrap().routes.remove(0);
        assert_ne!(ListenKey::of(&plain), ListenKey::of(&tproxy));
        assert_eq!(ListenKey::of(&tproxy).addr(), plain.listen);
        assert!(ListenKey::of(&tproxy).is_fixed());
        // The key crosses to a successor as JSON: an old predecessor's keys still read.
        let wire = serde_json::to_string(&ListenKey::of(&plain)).unwrap();
        assert_eq!(serde_json::from_str::<ListenKey>(&wire).unwrap(), ListenKey::of(&plain));
    }
}
