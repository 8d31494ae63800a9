//! Turning a configuration into per-worker listener updates — at start
//! (from nothing) and on every reload (from the running routes) — and
//! noticing that the config file changed.
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
//! client queued on a socket that is then closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use mio::net::TcpListener;

use crate::config::{self, Config};
use crate::frontend::Frontend;
use crate::metrics::Registry;
use crate::route::{Route, RouteState};
use crate::server::ServerError;
use crate::sockets;
use crate::sockopt;

/// What must stay the same for a route to keep its listening sockets (and
/// what names a listener in a handoff to a successor).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ListenKey {
    /// A fixed address: whatever the route is called.
    Fixed(SocketAddr),
    /// Port 0 (the kernel picks): the name tells routes apart.
    Ephemeral(String, SocketAddr),
}

impl ListenKey {
    /// The key of a configured route that has its address to itself.
    pub fn of(r: &config::Route) -> ListenKey {
        if r.listen.port() == 0 { ListenKey::Ephemeral(r.name.clone(), r.listen) } else { ListenKey::Fixed(r.listen) }
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

/// One listen address as a worker should serve it after an update.
#[derive(Debug)]
pub struct ListenerUpdate {
    /// Which listener.
    pub key: ListenKey,
    /// The routes new clients get.
    pub frontend: Arc<Frontend>,
    /// This worker's socket for an address that is new; `None` keeps the one it has.
    pub listener: Option<TcpListener>,
    /// A route of the address changed: re-apply the listener's options.
    pub changed: bool,
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
    inherited: &mut crate::handoff::Inherited,
) -> Result<Plan, ServerError> {
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
            .map_err(|source| ServerError::Resolve { route: r.name.clone(), source })?;
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
                let (addr, sockets) = bind(&route, workers)?;
                unheard.push((running.len(), sockets));
                addr
            } else {
                taken.push(key.clone());
                let (addr, sockets, surplus) = adopt(&route, given, workers)?;
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
        let listening = sockets
            .into_iter()
            .map(|s| sockets::listen_bound(s, route.backlog, &route.socket))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| {
                let addr = route.listen;
                ServerError::Bind { route: route.name.clone(), addr, hint: bind_hint(&source, addr), source }
            })?;
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

/// Adopts sockets a predecessor (or systemd) bound for `route`: one per
/// worker, cleared of any socket filter an earlier process's drain left on
/// it, with this configuration's listener options applied again; the
/// missing ones bound into the same `SO_REUSEPORT` group, or duplicates of
/// the given ones where the group cannot be joined
/// (`sockets::fill_workers`); the surplus returned to be emptied and closed.
#[allow(clippy::type_complexity)]
fn adopt(
    route: &Route,
    given: Vec<(SocketAddr, std::net::TcpListener)>,
    workers: usize,
) -> Result<(SocketAddr, Vec<TcpListener>, Vec<TcpListener>), ServerError> {
    let addr = given[0].0;
    let mut sockets = Vec::with_capacity(workers);
    let mut surplus = Vec::new();
    for (i, (_, s)) in given.into_iter().enumerate() {
        if let Err(source) = s.set_nonblocking(true) {
            return Err(ServerError::Io { what: "adopting a listening socket", source });
        }
        let s = TcpListener::from_std(s);
        // A filter an earlier process left on it (a drain) would drop every SYN.
        if let Err(e) = crate::handshakes::accept_new_handshakes(&s) {
            log::warn!("route {}: cannot take a socket filter off an adopted socket: {e}", route.name);
        }
        if i < workers {
            route.socket.before_listen(&s);
            // listen() again on a listening socket just sets its backlog.
            let backlog = i32::try_from(route.backlog).unwrap_or(i32::MAX);
            if let Err(e) = socket2::SockRef::from(&s).listen(backlog) {
                log::warn!("route {}: cannot set the backlog of an adopted socket: {e}", route.name);
            }
            route.socket.after_listen(&s);
            sockets.push(s);
        } else {
            surplus.push(s);
        }
    }
    let given = sockets.len();
    let join = || sockets::reuseport_listener(addr, route.backlog, &route.socket);
    match sockets::fill_workers(addr, &mut sockets, workers, join) {
        Ok(sockets::Filled::Nothing) => {}
        Ok(sockets::Filled::Joined(n)) => {
            log::info!(
                "route {}: {given} socket(s) handed over, {n} more bound into their SO_REUSEPORT group",
                route.name
            )
        }
        Ok(sockets::Filled::Shared { count, joined, why }) => log::info!(
            "route {}: {given} socket(s) handed over{}; {count} worker(s) share a duplicate of one, as {why}",
            route.name,
            if joined > 0 { format!(", {joined} more bound into their SO_REUSEPORT group") } else { String::new() }
        ),
        Err(source) => return Err(ServerError::Io { what: "sharing an adopted listening socket", source }),
    }
    Ok((addr, sockets, surplus))
}

/// The running routes on listener `key`.
fn on_key<'a>(old: &'a Running, key: &ListenKey) -> impl Iterator<Item = &'a Arc<Route>> + 'a {
    let key = key.clone();
    old.iter().filter(move |(k, _)| *k == key).map(|(_, route)| route)
}

/// Binds one `SO_REUSEPORT` socket per worker for a new route, not
/// listening yet. Port 0: the first socket gets a port, the others join it.
/// Returns the bound address.
fn bind(route: &Route, workers: usize) -> Result<(SocketAddr, Vec<socket2::Socket>), ServerError> {
    let mut addr = route.listen;
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let s = sockets::reuseport_bound(addr, &route.socket).map_err(|source| ServerError::Bind {
            route: route.name.clone(),
            addr,
            hint: bind_hint(&source, addr),
            source,
        })?;
        addr = s.local_addr().ok().and_then(|a| a.as_socket()).ok_or_else(|| ServerError::Io {
            what: "reading a listener's address",
            source: std::io::Error::other("not an IP socket"),
        })?;
        sockets.push(s);
    }
    Ok((addr, sockets))
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

fn bind_hint(e: &std::io::Error, addr: SocketAddr) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE: setcap cap_net_bind_service=+ep on the binary, \
             or listen on a port >= 1024)"
        }
        std::io::ErrorKind::AddrInUse => " (another process holds this address; `ss -ltnp` shows which)",
        std::io::ErrorKind::AddrNotAvailable => " (no interface on this machine has that address)",
        _ => "",
    }
}

/// Watches a config file for changes the way Kubernetes makes them: the
/// path may be a symlink whose target is swapped, so the file is followed,
/// and a change is its identity or timestamp or size moving *and* its
/// content differing from what was last loaded.
#[derive(Debug)]
pub struct FileWatch {
    path: PathBuf,
    identity: Option<(u64, u64, SystemTime, u64)>,
    content: u64,
}

impl FileWatch {
    /// Starts watching `path`, whose content with digest `loaded` is what runs.
    /// The file's identity is not taken here: if the file changed between
    /// loading and now, the first look sees it (the content check decides).
    pub fn new(path: &Path, loaded: u64) -> FileWatch {
        FileWatch { path: path.to_owned(), identity: None, content: loaded }
    }

    fn identity(&self) -> Option<(u64, u64, SystemTime, u64)> {
        let m = std::fs::metadata(&self.path).ok()?;
        Some((m.dev(), m.ino(), m.modified().ok()?, m.len()))
    }

    /// True once per change of content (a touch or a swap to identical content is not a change).
    pub fn changed(&mut self) -> bool {
        let id = self.identity();
        if id.is_none() || id == self.identity {
            return false;
        }
        self.identity = id;
        match std::fs::read(&self.path).map(|b| config::digest(&b)) {
            Ok(h) if h != self.content => {
                self.content = h;
                true
            }
            _ => false,
        }
    }

    /// Records what a reload triggered some other way (SIGHUP) loaded.
    pub fn loaded(&mut self, digest: u64) {
        self.identity = self.identity();
        self.content = digest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_sees_a_symlink_swap_once_and_ignores_touches() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("v1.yaml");
        let v2 = dir.path().join("v2.yaml");
        let link = dir.path().join("proxy.yaml");
        std::fs::write(&v1, "a: 1\n").unwrap();
        std::fs::write(&v2, "a: 2\n").unwrap();
        std::os::unix::fs::symlink(&v1, &link).unwrap();
        let mut w = FileWatch::new(&link, config::digest(b"a: 1\n"));
        assert!(!w.changed(), "the first look finds what was loaded");
        // The Kubernetes way: a new target, then the link swapped atomically.
        let tmp = dir.path().join("tmp-link");
        std::os::unix::fs::symlink(&v2, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        assert!(w.changed(), "the swap is a change");
        assert!(!w.changed(), "and only one");
        // Same content under a new identity: not a change.
        let v3 = dir.path().join("v3.yaml");
        std::fs::write(&v3, "a: 2\n").unwrap();
        std::os::unix::fs::symlink(&v3, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        assert!(!w.changed());
    }

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
}
