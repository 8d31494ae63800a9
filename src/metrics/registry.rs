//! Names for metric series. Routes and upstreams get small integer ids
//! here, on the control thread, once per name: workers index their stats
//! by id (no hashing per session), and a route keeps its series across
//! reloads because its name keeps its id.
//!
//! Route ids are never reused (there are only as many as names ever
//! configured). Upstream addresses come and go with DNS, so their slots are
//! reclaimed: an upstream that has not been current for `RETENTION` and has
//! had no sessions all that time loses its series, and its slot goes to a
//! later address with the next generation (`UpstreamKey`). A session that
//! still holds the old key (its route is an older version) records into a
//! generation that is gone; `WorkerStats` drops such records. The control
//! thread says what is current (`set_current`) and runs `reclaim`; freeing
//! the workers' memory for a freed key is `WorkerStats::forget`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::upstream::{UpstreamHealth, UpstreamKey};

/// How long the series of an upstream that left its route's set (and has no
/// sessions) are kept. Long enough for several scrapes at any usual interval
/// (15 s to 1 min) to see its last counts, so its final sessions are not
/// lost to the time series; short enough that even a fast DNS churn (a new
/// address every second) holds a few hundred slots, not one per address
/// ever seen.
pub const RETENTION: Duration = Duration::from_secs(5 * 60);

/// The `upstream` label of a route's pass-through connections
/// (`original_destination: true`): one series for every destination.
pub const PASS_THROUGH: &str = "original_destination";

/// How often an upstream that left but still has sessions is looked at again.
pub const RECHECK: Duration = Duration::from_secs(10);

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
    /// Its slot and generation.
    pub key: UpstreamKey,
    /// Id of its route.
    pub route: usize,
    /// The `upstream` label: `IP:port`.
    pub address: String,
    /// Health, ejection and load, shared with the workers and the health checker.
    pub health: Arc<UpstreamHealth>,
    /// In its route's running set (false once DNS or a reload dropped it).
    pub current: bool,
}

/// One upstream slot: its generation, and the occupant if any.
#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    occupant: Option<Occupant>,
}

#[derive(Debug)]
struct Occupant {
    info: UpstreamInfo,
    /// Since when it has been seen not current and without sessions.
    idle_since: Option<Instant>,
}

#[derive(Debug, Default)]
struct Inner {
    routes: Vec<RouteInfo>,
    upstreams: Vec<Slot>,
}

/// What a `reclaim` pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// The keys whose series are gone: workers free their stats (`WorkerStats::forget`).
    pub freed: Vec<UpstreamKey>,
    /// When a pass may free more; `None` while every upstream is current.
    pub next: Option<Instant>,
}

/// The ids handed out so far.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id of route `name`, new or existing.
    pub fn route_id(&self, name: &str) -> usize {
        let mut g = self.lock();
        if let Some(i) = g.routes.iter().position(|r| r.name == name) {
            return i;
        }
        g.routes.push(RouteInfo { name: name.to_owned(), listen: String::new(), configured: false });
        g.routes.len() - 1
    }

    /// The key and the shared health of upstream `addr` of route `route`,
    /// existing, or new in the first free slot. A new one is not current
    /// until `set_current` says so.
    pub fn upstream(&self, route: usize, addr: SocketAddr) -> (UpstreamKey, Arc<UpstreamHealth>) {
        self.upstream_labelled(route, addr.to_string())
    }

    /// [`Registry::upstream`] by its `upstream` label: an address, or
    /// [`PASS_THROUGH`] for the one series of a route's pass-through
    /// connections (`original_destination`: no label per destination).
    pub fn upstream_labelled(&self, route: usize, address: String) -> (UpstreamKey, Arc<UpstreamHealth>) {
        let mut g = self.lock();
        let mut held = g.upstreams.iter().filter_map(|s| s.occupant.as_ref());
        if let Some(o) = held.find(|o| o.info.route == route && o.info.address == address) {
            return (o.info.key, Arc::clone(&o.info.health));
        }
        let id = match g.upstreams.iter().position(|s| s.occupant.is_none()) {
            Some(free) => free,
            None => {
                g.upstreams.push(Slot::default());
                g.upstreams.len() - 1
            }
        };
        let slot = &mut g.upstreams[id];
        let key = UpstreamKey { id, generation: slot.generation };
        let health = Arc::new(UpstreamHealth::default());
        let info = UpstreamInfo { key, route, address, health: Arc::clone(&health), current: false };
        slot.occupant = Some(Occupant { info, idle_since: None });
        (key, health)
    }

    /// The key of upstream `addr` of route `route`, new or existing.
    pub fn upstream_key(&self, route: usize, addr: SocketAddr) -> UpstreamKey {
        self.upstream(route, addr).0
    }

    /// Marks exactly `keys` (the upstreams of every running route) as current.
    pub fn set_current(&self, keys: &[UpstreamKey]) {
        let mut g = self.lock();
        for o in g.upstreams.iter_mut().filter_map(|s| s.occupant.as_mut()) {
            o.info.current = keys.contains(&o.info.key);
        }
    }

    /// Frees the slots of upstreams that have been neither current nor busy
    /// (`active() == 0`) for `RETENTION` up to `now`. Idleness is sampled
    /// at each pass: a pass must come at least every `RECHECK` while an
    /// upstream that left has sessions (`next` says when).
    pub fn reclaim(&self, now: Instant) -> Reclaimed {
        let mut g = self.lock();
        let mut done = Reclaimed::default();
        let mut soon = |t: Instant| done.next = Some(done.next.map_or(t, |n| n.min(t)));
        let mut freed = Vec::new();
        for slot in &mut g.upstreams {
            let Some(o) = slot.occupant.as_mut() else {
                continue;
            };
            if o.info.current {
                o.idle_since = None;
                continue;
            }
            if o.info.health.active() > 0 {
                o.idle_since = None;
                soon(now + RECHECK);
                continue;
            }
            let since = *o.idle_since.get_or_insert(now);
            let due = since + RETENTION;
            if now < due {
                soon(due);
                continue;
            }
            freed.push(o.info.key);
            slot.occupant = None;
            slot.generation = slot.generation.wrapping_add(1);
        }
        done.freed = freed;
        done
    }

    /// Marks exactly `routes` (id, bound address) as the configured ones.
    pub fn set_configured(&self, routes: &[(usize, SocketAddr)]) {
        let mut g = self.lock();
        for (i, r) in g.routes.iter_mut().enumerate() {
            match routes.iter().find(|(id, _)| *id == i) {
                Some((_, addr)) => {
                    r.configured = true;
                    r.listen = addr.to_string();
                }
                None => r.configured = false,
            }
        }
    }

    /// A copy of every route (by id) and every upstream that holds a slot (by slot).
    pub fn list(&self) -> (Vec<RouteInfo>, Vec<UpstreamInfo>) {
        let g = self.lock();
        (g.routes.clone(), g.upstreams.iter().filter_map(|s| s.occupant.as_ref().map(|o| o.info.clone())).collect())
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
        let u = r.upstream_key(a, addr);
        assert_eq!(r.upstream_key(a, addr), u);
        assert_ne!(r.upstream_key(b, addr), u, "the same address under another route is another series");
        r.set_configured(&[(b, "127.0.0.1:5433".parse().unwrap())]);
        let (routes, _) = r.list();
        assert!(!routes[a].configured && routes[b].configured);
        assert_eq!(routes[b].listen, "127.0.0.1:5433");
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A registry with route 0 whose upstream `old` was current and now
    /// isn't (DNS moved it to `new`), and when that happened.
    fn moved() -> (Registry, UpstreamKey, UpstreamKey, Instant) {
        let r = Registry::default();
        let route = r.route_id("web");
        let old = r.upstream_key(route, addr("10.0.0.1:80"));
        r.set_current(&[old]);
        let new = r.upstream_key(route, addr("10.0.0.2:80"));
        r.set_current(&[new]);
        (r, old, new, Instant::now())
    }

    #[test]
    fn a_current_upstream_is_never_reclaimed() {
        let (r, _, new, t0) = moved();
        for later in [RETENTION, RETENTION * 10] {
            r.reclaim(t0);
            assert!(!r.reclaim(t0 + later).freed.contains(&new));
        }
        assert!(r.list().1.iter().any(|u| u.key == new && u.current));
    }

    #[test]
    fn an_upstream_that_left_is_reclaimed_after_the_retention_not_before() {
        let (r, old, _, t0) = moved();
        assert_eq!(r.reclaim(t0), Reclaimed { freed: vec![], next: Some(t0 + RETENTION) });
        let just_before = t0 + RETENTION - Duration::from_millis(1);
        assert_eq!(r.reclaim(just_before).freed, [], "kept for the whole retention");
        assert_eq!(r.reclaim(t0 + RETENTION), Reclaimed { freed: vec![old], next: None });
        assert!(r.list().1.iter().all(|u| u.key.id != old.id), "its series are no longer listed");
    }

    #[test]
    fn sessions_keep_an_upstream_that_left_and_restart_the_retention() {
        let (r, old, _, t0) = moved();
        let (_, upstreams) = r.list();
        let health = &upstreams.iter().find(|u| u.key == old).unwrap().health;
        health.session_started();
        assert_eq!(r.reclaim(t0).next, Some(t0 + RECHECK), "looked at again while it has sessions");
        let t1 = t0 + RETENTION * 2;
        assert_eq!(r.reclaim(t1).freed, [], "a session is still on it");
        health.session_ended();
        assert_eq!(r.reclaim(t1 + RECHECK).freed, [], "quiet only since the last look");
        assert_eq!(r.reclaim(t1 + RECHECK + RETENTION).freed, [old]);
    }

    #[test]
    fn an_upstream_that_comes_back_before_the_retention_keeps_its_key_and_health() {
        let (r, old, new, t0) = moved();
        r.reclaim(t0);
        let (again, health) = r.upstream(0, addr("10.0.0.1:80"));
        assert_eq!(again, old);
        r.set_current(&[old, new]);
        assert_eq!(r.reclaim(t0 + RETENTION).freed, [], "current again");
        r.set_current(&[new]);
        r.reclaim(t0 + RETENTION);
        assert_eq!(r.reclaim(t0 + RETENTION * 2).freed, [old], "the retention starts over when it leaves again");
        assert!(Arc::strong_count(&health) == 1, "the registry let go of its health");
    }

    #[test]
    fn a_reclaimed_slot_goes_to_a_later_address_with_the_next_generation() {
        let (r, old, new, t0) = moved();
        r.reclaim(t0);
        r.reclaim(t0 + RETENTION);
        let third = r.upstream_key(0, addr("10.0.0.3:80"));
        assert_eq!(third, UpstreamKey { id: old.id, generation: old.generation + 1 }, "the slot is reused");
        let fourth = r.upstream_key(0, addr("10.0.0.4:80"));
        assert!(fourth.id != old.id && fourth.id != new.id, "a new slot only when none is free");
        let (back, health) = r.upstream(0, addr("10.0.0.1:80"));
        assert_ne!(back, old, "a reclaimed address that returns is a new series");
        assert_eq!(health.active(), 0, "with fresh health");
    }

    #[test]
    fn a_new_upstream_is_current_only_once_running() {
        let r = Registry::default();
        let k = r.upstream_key(0, addr("10.0.0.1:80"));
        assert!(!r.list().1[0].current, "built for a plan that may still fail");
        r.set_current(&[k]);
        assert!(r.list().1[0].current);
        r.set_current(&[]);
        assert!(!r.list().1[0].current, "its route was removed");
    }
}
