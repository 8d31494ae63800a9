//! Turning a configuration into per-worker route updates — at start (from
//! nothing) and on every reload (from the running routes) — and noticing
//! that the config file changed.
//!
//! A route keeps its listening sockets when its key is unchanged (the listen
//! address; for port 0, the name too): closing a `SO_REUSEPORT` socket
//! would reset the connections waiting in its queue. A changed route gets a
//! new `Arc<Route>` (new sessions use it; running ones keep theirs) that
//! shares the old one's live counts. New routes are bound here, on the
//! control thread, before any worker hears of them, so a bind error leaves
//! everything as it was.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use mio::net::TcpListener;

use crate::config::{self, Config};
use crate::metrics::Registry;
use crate::route::Route;
use crate::server::ServerError;
use crate::sockets;
use crate::sockopt;

/// What must stay the same for a route to keep its listening sockets.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenKey {
    /// A fixed address: whatever the route is called.
    Fixed(SocketAddr),
    /// Port 0 (the kernel picks): the name tells routes apart.
    Ephemeral(String, SocketAddr),
}

impl ListenKey {
    /// The key of a configured route.
    pub fn of(r: &config::Route) -> ListenKey {
        if r.listen.port() == 0 { ListenKey::Ephemeral(r.name.clone(), r.listen) } else { ListenKey::Fixed(r.listen) }
    }
}

/// One route as a worker should run it after an update.
#[derive(Debug)]
pub struct RouteUpdate {
    /// Which listener.
    pub key: ListenKey,
    /// The route new sessions get.
    pub route: Arc<Route>,
    /// This worker's socket for a route that is new; `None` keeps the one it has.
    pub listener: Option<TcpListener>,
    /// The route's settings changed: re-apply the listener's options.
    pub changed: bool,
}

/// The routes running now, in config order, with their bound addresses.
pub type Running = Vec<(ListenKey, Arc<Route>)>;

/// What applying a configuration means.
#[derive(Debug)]
pub struct Plan {
    /// For each worker, every route it should serve (listeners not named are closed).
    pub per_worker: Vec<Vec<RouteUpdate>>,
    /// The routes that will be running.
    pub running: Running,
    /// One line for the log: "2 routes: 1 added, 1 unchanged".
    pub summary: String,
}

/// Plans the move from `old` to `config` for `workers` workers, binding
/// every new route's sockets.
pub fn plan(old: &Running, config: &Config, workers: usize, registry: &Registry) -> Result<Plan, ServerError> {
    let somaxconn = sockets::somaxconn();
    let available = sockopt::available_congestion();
    let mut per_worker: Vec<Vec<RouteUpdate>> = (0..workers).map(|_| Vec::new()).collect();
    let mut running = Vec::with_capacity(config.routes.len());
    let (mut added, mut changed, mut kept) = (0, 0, 0);
    for r in &config.routes {
        let key = ListenKey::of(r);
        let previous = old.iter().find(|(k, _)| *k == key).map(|(_, route)| route);
        if let Some(prev) = previous.filter(|p| p.config == *r) {
            kept += 1;
            for w in &mut per_worker {
                w.push(RouteUpdate { key: key.clone(), route: Arc::clone(prev), listener: None, changed: false });
            }
            running.push((key, Arc::clone(prev)));
            continue;
        }
        let state = previous.map(|p| Arc::clone(&p.state));
        let mut route = Route::prepare(r, somaxconn.map(|n| n as u32), available.as_deref(), state, registry)
            .map_err(|source| ServerError::Resolve { route: r.name.clone(), source })?;
        let sockets = match previous {
            Some(prev) => {
                changed += 1;
                route.listen = prev.listen;
                None
            }
            None => {
                added += 1;
                let (bound, sockets) = bind(&route, workers)?;
                route.listen = bound;
                Some(sockets)
            }
        };
        let route = Arc::new(route);
        let mut sockets = sockets.map(Vec::into_iter);
        for w in &mut per_worker {
            let listener = sockets.as_mut().and_then(Iterator::next);
            w.push(RouteUpdate { key: key.clone(), route: Arc::clone(&route), listener, changed: previous.is_some() });
        }
        running.push((key, route));
    }
    let removed = old.iter().filter(|(k, _)| !running.iter().any(|(n, _)| n == k)).count();
    registry.set_configured(&running.iter().map(|(_, r)| (r.metric_id, r.listen)).collect::<Vec<_>>());
    let mut parts = Vec::new();
    for (n, what) in [(added, "added"), (changed, "changed"), (removed, "removed"), (kept, "unchanged")] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    let summary = format!("{} route(s): {}", running.len(), parts.join(", "));
    Ok(Plan { per_worker, running, summary })
}

/// Binds one `SO_REUSEPORT` socket per worker for a new route. Port 0: the
/// first socket gets a port, the others join it. Returns the bound address.
fn bind(route: &Route, workers: usize) -> Result<(SocketAddr, Vec<TcpListener>), ServerError> {
    let mut addr = route.listen;
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let l = sockets::reuseport_listener(addr, route.backlog, &route.socket).map_err(|source| {
            ServerError::Bind { route: route.name.clone(), addr, hint: bind_hint(&source, addr), source }
        })?;
        addr = l.local_addr().map_err(|source| ServerError::Io { what: "reading a listener's address", source })?;
        sockets.push(l);
    }
    let upstreams: Vec<String> = route.upstreams.upstreams.iter().map(ToString::to_string).collect();
    log::info!("route {} listening on {addr} -> {}", route.name, upstreams.join(", "));
    Ok((addr, sockets))
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
