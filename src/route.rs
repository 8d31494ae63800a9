//! A route as the workers run it: the config's route with its upstream host
//! names resolved and its socket options prepared, plus the live state that
//! must survive a reload (how many sessions it has, per client too).
//! Built on the control thread, shared read-only (`Arc`) by every worker
//! and session.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config;
use crate::metrics::Registry;
use crate::metrics::registry::PASS_THROUGH;
use crate::sys::sockopt::Applied;
use crate::upstream::{ResolveError, UpstreamSet};

/// One route, ready to serve.
#[derive(Debug)]
pub struct Route {
    /// As configured; in logs.
    pub name: String,
    /// The address actually bound (a configured port 0 is replaced by the real one).
    pub listen: SocketAddr,
    /// Resolved upstreams, at least one (a pass-through route's one stands
    /// for every original destination: `UpstreamSet::pass_through`).
    pub upstreams: UpstreamSet,
    /// Time allowed for one upstream connect attempt.
    pub connect_timeout: Duration,
    /// A session with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// Once one side has finished, the session is closed after this long without a byte.
    pub half_close_timeout: Duration,
    /// Listen queue length (already capped at `net.core.somaxconn`).
    pub backlog: u32,
    /// Sessions allowed at once on this route (all workers).
    pub max_connections: Option<usize>,
    /// Sessions allowed at once from one client IP on this route.
    pub max_connections_per_client: Option<usize>,
    /// New connections per second on this route.
    pub max_connection_rate: Option<crate::ratelimit::Rate>,
    /// New connections per second from one client prefix.
    pub max_connection_rate_per_client: Option<crate::ratelimit::ClientRate>,
    /// Its own relay mode after fallbacks (`relay/modes.rs`); `None`: the
    /// global one, which the workers' settings carry (a reload may change it
    /// and keep the route).
    pub relay: Option<config::RelayMode>,
    /// Socket options, ready to apply (shared with the versions of this route DNS updates make).
    pub socket: Arc<Applied>,
    /// Live counts, carried over when a reload keeps the route.
    pub state: Arc<RouteState>,
    /// The route as configured, to tell on reload whether it changed.
    pub config: config::Route,
    /// Id of its metric series (stable per name across reloads).
    pub metric_id: usize,
    /// The addresses of each configured upstream, as last resolved (parallel to `config.upstreams`).
    pub resolved: Vec<Vec<SocketAddr>>,
}

/// What a route counts while it runs; shared by every version of the route
/// across reloads, so limits stay exact while old and new sessions overlap.
#[derive(Debug, Default)]
pub struct RouteState {
    /// Sessions open right now on this route.
    pub active: AtomicUsize,
    /// Sessions open right now per client IP (kept only when the route limits them).
    per_client: Mutex<HashMap<IpAddr, usize>>,
    /// `max_connection_rate`: the route's one rate cell (kept across reloads).
    pub rate: crate::ratelimit::Gcra,
    /// Clients refused by a rate since the last warning.
    pub rate_refused: AtomicUsize,
    /// When the last rate warning was logged (seconds on the limiter's clock).
    pub rate_warned_at: std::sync::atomic::AtomicU64,
}

impl RouteState {
    /// Counts a session from `ip` unless that client already has `limit`.
    pub fn admit_client(&self, ip: IpAddr, limit: usize) -> bool {
        let mut m = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    /// Forgets a session counted by `admit_client`.
    pub fn release_client(&self, ip: IpAddr) {
        let mut m = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }

    /// Sessions open on the route.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

impl Route {
    /// Prepares a configured route: resolves its upstreams, caps its backlog
    /// at `somaxconn`, checks its congestion control against the kernel's
    /// list. `state` is the previous version's state when a reload keeps it.
    pub fn prepare(
        r: &config::Route,
        somaxconn: Option<u32>,
        congestion_available: Option<&[String]>,
        state: Option<Arc<RouteState>>,
        registry: &Registry,
    ) -> Result<Route, ResolveError> {
        let backlog = match somaxconn {
            Some(max) if r.backlog > max => {
                log::info!(
                    "route {}: backlog {} capped at net.core.somaxconn = {max} (raise it with sysctl -w net.core.somaxconn={})",
                    r.name,
                    r.backlog,
                    r.backlog
                );
                max
            }
            _ => r.backlog,
        };
        let resolved = UpstreamSet::resolve(&r.upstreams)?;
        let metric_id = registry.route_id(&r.name);
        let upstreams = if r.original_destination {
            UpstreamSet::pass_through(PASS_THROUGH, || registry.upstream_labelled(metric_id, PASS_THROUGH.to_owned()))
        } else {
            UpstreamSet::build(&r.upstreams, &resolved, |addr| registry.upstream(metric_id, addr))
        };
        let source_client = r.source == Some(config::Source::Client);
        Ok(Route {
            name: r.name.clone(),
            listen: r.listen,
            upstreams,
            metric_id,
            resolved,
            connect_timeout: r.connect_timeout,
            idle_timeout: r.idle_timeout,
            half_close_timeout: r.half_close_timeout,
            backlog,
            max_connections: r.max_connections,
            max_connections_per_client: r.max_connections_per_client,
            max_connection_rate: r.max_connection_rate,
            max_connection_rate_per_client: r.max_connection_rate_per_client,
            relay: r.relay.map(crate::relay::modes::effective),
            socket: Arc::new(
                Applied::new(&r.name, r.socket.clone(), congestion_available)
                    .with_source(r.source_ip())
                    .with_capture(r.transparent, source_client)
                    .with_mptcp(r.mptcp),
            ),
            state: state.unwrap_or_default(),
            config: r.clone(),
        })
    }

    /// The same route with its host names resolved to `resolved` (a DNS
    /// update): new sessions get it, running ones keep the old one.
    pub fn with_addresses(&self, resolved: Vec<Vec<SocketAddr>>, registry: &Registry) -> Route {
        Route {
            name: self.name.clone(),
            listen: self.listen,
            upstreams: UpstreamSet::build(&self.config.upstreams, &resolved, |addr| {
                registry.upstream(self.metric_id, addr)
            }),
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            half_close_timeout: self.half_close_timeout,
            backlog: self.backlog,
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
            max_connection_rate: self.max_connection_rate,
            max_connection_rate_per_client: self.max_connection_rate_per_client,
            relay: self.relay,
            socket: Arc::clone(&self.socket),
            state: Arc::clone(&self.state),
            config: self.config.clone(),
            metric_id: self.metric_id,
            resolved,
        }
    }

    /// Balancing, retries, health, PROXY protocol and access list settings.
    pub fn pool(&self) -> &config::Pool {
        &self.config.pool
    }

    /// True if the route has as many sessions as it may have.
    pub fn at_limit(&self) -> bool {
        self.max_connections.is_some_and(|max| self.state.active() >= max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_counts_admit_up_to_the_limit() {
        let st = RouteState::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(st.admit_client(a, 2));
        assert!(st.admit_client(a, 2));
        assert!(!st.admit_client(a, 2), "the third from one client is refused");
        assert!(st.admit_client(b, 2), "another client is not affected");
        st.release_client(a);
        assert!(st.admit_client(a, 2), "a slot came free");
        st.release_client(a);
        st.release_client(a);
        st.release_client(b);
        assert!(st.per_client.lock().unwrap().is_empty(), "no entry outlives its sessions");
    }
}
