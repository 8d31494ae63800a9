//! Turning a configuration into per-worker listener updates — at start
//! (from nothing) and on every reload (from the running routes).
//!
//! A listen address keeps its listening sockets when its key is unchanged
//! (the address; for port 0, the name of its first route too): closing a
//! `SO_REUSEPORT` socket would reset the connections waiting in its queue.
//! Routes that share an address (routed by TLS server name) share its
//! sockets, so adding or removing one, or a name, keeps them too. A changed
//! route gets a new `Arc<Route>` (new sessions use it; running ones keep
//! theirs) that shares the old one's live counts. New addresses are bound
//! here, on the control thread, before any worker hears of them: every
//! route is resolved and every new address bound before any of them
//! listens, so a resolve or bind error leaves everything as it was, with no
//! client queued on a socket that is then closed. How an address is bound
//! or adopted is `listen`'s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use mio::net::TcpListener;

use crate::config::Config;
use crate::frontend::Frontend;
use crate::listen::{self, Inherited, ListenError, ListenKey, Listener};
use crate::metrics::Registry;
use crate::route::{Route, RouteState};
use crate::sys::sockets;
use crate::sys::sockopt;
use crate::upstream::ResolveError;
use crate::worker::ListenerUpdate;

/// Why a configuration cannot be planned (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// An upstream host name did not resolve.
    #[error("route {route}: {source}")]
    Resolve {
        /// The route.
        route: String,
        /// The failure.
        #[source]
        source: ResolveError,
    },
    /// A listen address could not be bound or adopted.
    #[error(transparent)]
    Listen(#[from] ListenError),
}

/// The routes running now, in config order, with their listeners' keys
/// (repeated for routes that share an address).
pub type Running = Vec<(ListenKey, Arc<Route>)>;

/// Per shared address, its clients still sending a ClientHello (kept across reloads).
pub type HelloStates = HashMap<ListenKey, Arc<RouteState>>;

/// The frontends of the running routes, one per key in order of first
/// appearance; `hello` keeps each address's count of unrouted clients
/// (entries of addresses that are gone are dropped).
pub fn frontends(running: &Running, hello: &mut HelloStates) -> Vec<(ListenKey, Arc<Frontend>)> {
    let mut groups: Vec<(ListenKey, Vec<Arc<Route>>)> = Vec::new();
    for (k, r) in running {
        match groups.iter_mut().find(|(g, _)| g == k) {
            Some((_, rs)) => rs.push(Arc::clone(r)),
            None => groups.push((k.clone(), vec![Arc::clone(r)])),
        }
    }
    hello.retain(|k, _| groups.iter().any(|(g, _)| g == k));
    groups
        .into_iter()
        .map(|(k, routes)| {
            let state = Arc::clone(hello.entry(k.clone()).or_default());
            let first = Arc::clone(&routes[0]);
            let f = Frontend::new(routes, Arc::clone(&state)).unwrap_or_else(|e| {
                // Validation rules this out; serve the first route rather than nothing.
                log::error!("listener {}: {e}; serving route {} only", first.listen, first.name);
                Frontend::new(vec![Arc::clone(&first)], state).expect("one route without names never conflicts")
            });
            (k, Arc::new(f))
        })
        .collect()
}

/// What applying a configuration means.
#[derive(Debug)]
pub struct Plan {
    /// For each worker, every listen address it should serve (listeners not named are closed).
    pub per_worker: Vec<Vec<ListenerUpdate>>,
    /// The routes that will be running.
    pub running: Running,
    /// One line for the log: "2 routes: 1 added, 1 unchanged".
    pub summary: String,
    /// Listen keys whose sockets came from `inherited` (a predecessor stops accepting on these).
    pub taken: Vec<ListenKey>,
    /// Inherited sockets beyond one per worker: to be emptied (everything
    /// queued accepted and served) and closed.
    pub retire: Vec<(ListenKey, TcpListener)>,
}

/// Plans the move from `old` to `config` for `workers` workers: sockets of
/// a new address come from `inherited` when it has them (a takeover,
/// socket activation), else are bound here.
pub fn plan(
    old: &Running,
    config: &Config,
    workers: usize,
    registry: &Registry,
    hello: &mut HelloStates,
    inherited: &mut Inherited,
) -> Result<Plan, PlanError> {
    let somaxconn = sockets::somaxconn();
    let available = sockopt::available_congestion();
    let keys = ListenKey::of_all(config);
    let mut running: Running = Vec::with_capacity(config.routes.len());
    let mut new_sockets: HashMap<ListenKey, std::vec::IntoIter<TcpListener>> = HashMap::new();
    let mut bound: HashMap<ListenKey, SocketAddr> = HashMap::new();
    let mut changed_keys: Vec<ListenKey> = Vec::new();
    // By index in `running`: sockets bound, not listening yet (see
    // `sockets::reuseport_bound`), and the routes to announce once all listen.
    let mut unheard: Vec<(usize, Vec<socket2::Socket>)> = Vec::new();
    let mut announce: Vec<usize> = Vec::new();
    let (mut taken, mut retire) = (Vec::new(), Vec::new());
    let (mut added, mut changed, mut kept) = (0, 0, 0);
    for (r, key) in config.routes.iter().zip(keys.iter().cloned()) {
        let alone = keys.iter().filter(|k| **k == key).count() == 1 && on_key(old, &key).count() == 1;
        // The same route: same address and name (or the one route of an address that keeps having one).
        let previous =
            on_key(old, &key).find(|p| p.name == r.name).or_else(|| on_key(old, &key).next().filter(|_| alone));
        if let Some(prev) = previous.filter(|p| p.config == *r) {
            kept += 1;
            running.push((key, Arc::clone(prev)));
            continue;
        }
        let state = previous.map(|p| Arc::clone(&p.state));
        let mut route = Route::prepare(r, somaxconn.map(|n| n as u32), available.as_deref(), state, registry)
            .map_err(|source| PlanError::Resolve { route: r.name.clone(), source })?;
        if previous.is_some() {
            changed += 1
        } else {
            added += 1
        }
        if let Some(existing) = on_key(old, &key).next() {
            route.listen = existing.listen;
            if !changed_keys.contains(&key) {
                changed_keys.push(key.clone());
            }
            if previous.is_none() {
                announce.push(running.len());
            }
        } else if let Some(&addr) = bound.get(&key) {
            route.listen = addr;
            announce.push(running.len());
        } else {
            let given = inherited.take(&key);
            let addr = if given.is_empty() {
                let (addr, sockets) = listen::bind(&listener_of(&route), workers)?;
                unheard.push((running.len(), sockets));
                addr
            } else {
                taken.push(key.clone());
                let (addr, sockets, surplus) = listen::adopt(&listener_of(&route), given, workers)?;
                retire.extend(surplus.into_iter().map(|s| (key.clone(), s)));
                new_sockets.insert(key.clone(), sockets.into_iter());
                addr
            };
            route.listen = addr;
            bound.insert(key.clone(), addr);
            announce.push(running.len());
        }
        running.push((key, Arc::new(route)));
    }
    // Everything resolved and bound: now the new sockets listen.
    for (i, sockets) in unheard {
        let (key, route) = &running[i];
        let listening = listen::listen_bound(&listener_of(route), sockets)?;
        new_sockets.insert(key.clone(), listening.into_iter());
    }
    for i in announce {
        let route = &running[i].1;
        log_listening(route, route.listen);
    }
    let mut per_worker: Vec<Vec<ListenerUpdate>> = (0..workers).map(|_| Vec::new()).collect();
    for (key, frontend) in frontends(&running, hello) {
        for w in &mut per_worker {
            let listener = new_sockets.get_mut(&key).and_then(Iterator::next);
            let changed = changed_keys.contains(&key);
            w.push(ListenerUpdate { key: key.clone(), frontend: Arc::clone(&frontend), listener, changed });
        }
    }
    let removed = old.iter().filter(|(k, o)| !running.iter().any(|(n, r)| n == k && r.name == o.name)).count();
    registry.set_configured(&running.iter().map(|(_, r)| (r.metric_id, r.listen)).collect::<Vec<_>>());
    let mut parts = Vec::new();
    for (n, what) in [(added, "added"), (changed, "changed"), (removed, "removed"), (kept, "unchanged")] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    let summary = format!("{} route(s): {}", running.len(), parts.join(", "));
    Ok(Plan { per_worker, running, summary, taken, retire })
}

/// How `listen` sees a route's address.
fn listener_of(route: &Route) -> Listener<'_> {
    Listener { name: &route.name, addr: route.listen, backlog: route.backlog, options: &route.socket }
}

/// The running routes on listener `key`.
fn on_key<'a>(old: &'a Running, key: &ListenKey) -> impl Iterator<Item = &'a Arc<Route>> + 'a {
    let key = key.clone();
    old.iter().filter(move |(k, _)| *k == key).map(|(_, route)| route)
}

/// The line that says a route serves an address (tests read the address from it).
fn log_listening(route: &Route, addr: SocketAddr) {
    let upstreams: Vec<String> = route.upstreams.upstreams.iter().map(ToString::to_string).collect();
    let names = if route.config.server_names.is_empty() {
        String::new()
    } else {
        let ns: Vec<String> = route.config.server_names.iter().map(ToString::to_string).collect();
        format!(" for server names {}", ns.join(", "))
    };
    log::info!("route {} listening on {addr}{names} -> {}", route.name, upstreams.join(", "));
}
