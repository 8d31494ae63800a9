//! What upstream pools need from the control thread: health-check targets
//! and DNS watches for the running routes, new route versions when DNS
//! changes, and the reclaiming of metric series of upstreams that left.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::ControlThread;
use super::plan;
use super::start::settings;
use crate::upstream::UpstreamKey;
use crate::upstream::checker::Target;
use crate::upstream::discovery::{self, Resolved, Watch};
use crate::worker::ListenerUpdate;
use crate::worker::Order;

impl ControlThread {
    /// Tells the health checker and the resolver what the running routes
    /// need, and the metrics registry which upstreams are current.
    pub(super) fn publish_pools(&self) {
        let mut targets = Vec::new();
        let mut watches = Vec::new();
        let mut current: Vec<UpstreamKey> = Vec::new();
        for (_, r) in &self.running {
            current.extend(r.upstreams.upstreams.iter().map(|u| u.metric_id));
            let pool = r.pool();
            if let Some(check) = &pool.health_check {
                targets.extend(r.upstreams.upstreams.iter().map(|u| Target {
                    route: r.name.clone(),
                    addr: u.addr,
                    display: u.to_string(),
                    health: Arc::clone(&u.health),
                    check: check.clone(),
                    socket: Arc::clone(&r.socket),
                }));
            }
            if !pool.resolve_interval.is_zero() && discovery::has_names(&r.config.upstreams) {
                watches.push(Watch {
                    route: r.name.clone(),
                    specs: r.config.upstreams.clone(),
                    interval: pool.resolve_interval,
                    current: r.resolved.clone(),
                });
            }
        }
        self.checker.set_targets(targets);
        self.resolver.set_watches(watches);
        self.registry.set_current(&current);
    }

    /// Drops the metric series of upstreams that left their route and have
    /// been quiet for `metrics::registry::RETENTION`, in the registry and in
    /// every worker (each worker's stats locked once, briefly).
    pub(super) fn reclaim(&mut self, now: Instant) {
        let done = self.registry.reclaim(now);
        if !done.freed.is_empty() {
            for h in &self.handles {
                let mut st = h.metrics.stats();
                done.freed.iter().for_each(|&key| st.forget(key));
            }
            log::debug!("metrics: dropped the series of {} upstream(s) that left with no sessions", done.freed.len());
        }
        self.reclaim_at = done.next;
    }

    /// A route's host names resolve to new addresses: new sessions get a
    /// new version of the route, running ones keep theirs.
    pub(super) fn on_resolved(&mut self, r: Resolved) {
        if self.draining {
            return;
        }
        let Some(pos) =
            self.running.iter().position(|(_, route)| route.name == r.route && route.config.upstreams == r.specs)
        else {
            return; // a reload changed the route since the lookup
        };
        let old = &self.running[pos].1;
        if old.resolved == r.addrs {
            return;
        }
        let before: Vec<SocketAddr> = old.upstreams.upstreams.iter().map(|u| u.addr).collect();
        let route = Arc::new(old.with_addresses(r.addrs, &self.registry));
        let after: Vec<SocketAddr> = route.upstreams.upstreams.iter().map(|u| u.addr).collect();
        let added: Vec<String> = after.iter().filter(|a| !before.contains(a)).map(ToString::to_string).collect();
        let removed: Vec<String> = before.iter().filter(|a| !after.contains(a)).map(ToString::to_string).collect();
        log::info!(
            "route {}: DNS changed its upstreams: {} now (added [{}], removed [{}]); running sessions are kept",
            route.name,
            after.len(),
            added.join(", "),
            removed.join(", ")
        );
        self.running[pos].1 = route;
        let settings = settings(&self.config);
        let frontends = plan::frontends(&self.running, &mut self.hello);
        for h in &self.handles {
            let routes = frontends
                .iter()
                .map(|(key, frontend)| ListenerUpdate {
                    key: key.clone(),
                    frontend: Arc::clone(frontend),
                    listener: None,
                    changed: false,
                })
                .collect();
            h.send(Order::Routes { routes, settings });
        }
        self.publish_pools();
    }
}
