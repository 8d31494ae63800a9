//! A route as the workers run it: the config's route with its listen
//! address bound and its upstream host names resolved. Built on the control
//! thread, shared read-only (`Arc`) by every worker and session.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config;
use crate::upstream::{ResolveError, UpstreamSet};

/// One route, ready to serve.
#[derive(Debug)]
pub struct Route {
    /// As configured; in logs.
    pub name: String,
    /// The address actually bound (a configured port 0 is replaced by the real one).
    pub listen: SocketAddr,
    /// Resolved upstreams, at least one.
    pub upstreams: UpstreamSet,
    /// Time allowed for one upstream connect attempt.
    pub connect_timeout: Duration,
    /// A session with no byte either way for this long is closed.
    pub idle_timeout: Duration,
}

impl Route {
    /// Resolves a configured route's upstreams.
    pub fn resolve(r: &config::Route) -> Result<Route, ResolveError> {
        Ok(Route {
            name: r.name.clone(),
            listen: r.listen,
            upstreams: UpstreamSet::resolve(&r.upstreams)?,
            connect_timeout: r.connect_timeout,
            idle_timeout: r.idle_timeout,
        })
    }
}
