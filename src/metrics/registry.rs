//! Names for metric series. Routes and upstreams get small integer ids
//! here, on the control thread, once per name: workers index their stats
//! by id (no hashing per session), and a route keeps its series across
//! reloads because its name keeps its id.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::upstream::UpstreamHealth;

/// A route's metric identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteInfo {
    /// The `route` label.
    pub name: String,
    /// Its bound address, as configured now.
    pub listen: String,
    /// In the running configuration (a removed route stays listed while it has sessions).
    pub configured: bool,
}

/// An upstream's metric identity, and its shared health.
#[derive(Clone, Debug)]
pub struct UpstreamInfo {
    /// Id of its route.
    pub route: usize,
    /// The `upstream` label: `IP:port`.
    pub address: String,
    /// Health, ejection and load, shared with the workers and the health checker.
    pub health: Arc<UpstreamHealth>,
    /// In the route's current set (false once DNS or a reload dropped it).
    pub current: bool,
}

/// The ids handed out so far.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<(Vec<RouteInfo>, Vec<UpstreamInfo>)>,
}

impl Registry {
    /// The id of route `name`, new or existing.
    pub fn route_id(&self, name: &str) -> usize {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = g.0.iter().position(|r| r.name == name) {
            return i;
        }
        g.0.push(RouteInfo { name: name.to_owned(), listen: String::new(), configured: false });
        g.0.len() - 1
    }

    /// The id and the shared health of upstream `addr` of route `route`, new or existing.
    pub fn upstream(&self, route: usize, addr: SocketAddr) -> (usize, Arc<UpstreamHealth>) {
        let address = addr.to_string();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = g.1.iter().position(|u| u.route == route && u.address == address) {
            return (i, Arc::clone(&g.1[i].health));
        }
        let health = Arc::new(UpstreamHealth::default());
        g.1.push(UpstreamInfo { route, address, health: Arc::clone(&health), current: false });
        (g.1.len() - 1, health)
    }

    /// The id of upstream `addr` of route `route`, new or existing.
    pub fn upstream_id(&self, route: usize, addr: SocketAddr) -> usize {
        self.upstream(route, addr).0
    }

    /// Marks exactly `addrs` as the current upstreams of route `route`.
    pub fn set_current_upstreams(&self, route: usize, addrs: &[SocketAddr]) {
        let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for u in g.1.iter_mut().filter(|u| u.route == route) {
            u.current = addrs.contains(&u.address);
        }
    }

    /// Marks exactly `routes` (id, bound address) as the configured ones.
    pub fn set_configured(&self, routes: &[(usize, SocketAddr)]) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (i, r) in g.0.iter_mut().enumerate() {
            match routes.iter().find(|(id, _)| *id == i) {
                Some((_, addr)) => {
                    r.configured = true;
                    r.listen = addr.to_string();
                }
                None => r.configured = false,
            }
        }
    }

    /// A copy of every route and upstream known.
    pub fn list(&self) -> (Vec<RouteInfo>, Vec<UpstreamInfo>) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_per_name() {
        let r = Registry::default();
        let a = r.route_id("web");
        let b = r.route_id("db");
        assert_eq!(r.route_id("web"), a);
        assert_ne!(a, b);
        let addr: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let u = r.upstream_id(a, addr);
        assert_eq!(r.upstream_id(a, addr), u);
        assert_ne!(r.upstream_id(b, addr), u, "the same address under another route is another series");
        r.set_configured(&[(b, "127.0.0.1:5433".parse().unwrap())]);
        let (routes, _) = r.list();
        assert!(!routes[a].configured && routes[b].configured);
        assert_eq!(routes[b].listen, "127.0.0.1:5433");
    }
}
