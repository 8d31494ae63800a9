//! What one listen address serves: its routes and, when they choose by the
//! client's TLS ClientHello (`server_names`, `alpn`), the name table and the
//! limits that apply before a route is known.
//!
//! Most addresses have one route and no table: every client is that
//! route's. An address shared by several routes (or one route that sets
//! `server_names`) reads each client's ClientHello first (`tls::hello`),
//! picks the route with `tls::names`, and only then does the route's own
//! work (access lists, limits, balancing). The routes of one address agree
//! on what the listener does before that (validated with the config), so
//! listener settings are read from the first.
//!
//! A capture address (a transparent sidecar's: a route with
//! `original_destination`, `transparent` or `destinations`) reads each
//! connection's original destination at accept, and its routes choose by
//! that (`destination::DestinationTable`), with no byte of the client's needed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::destination::DestinationTable;
use crate::route::{Route, RouteState};
use crate::tls::names::{NameTable, RouteNames};

/// The routes of one listen address.
#[derive(Debug)]
pub struct Frontend {
    /// In config order; at least one.
    pub routes: Vec<Arc<Route>>,
    /// How a ClientHello picks among them; `None`: every client is `routes[0]`'s.
    pub names: Option<NameTable>,
    /// How an original destination picks among them (routes that list
    /// `destinations:`); `None`: every client is `routes[0]`'s.
    pub destinations: Option<DestinationTable>,
    /// Each client's original destination is read at accept (see the module doc).
    pub captures: bool,
    /// Clients still sending their ClientHello, per IP (shared across reloads
    /// of the address, like a route's counts).
    pub hello: Arc<RouteState>,
}

impl Frontend {
    /// The frontend of `routes` (one address, config order). Fails only if
    /// their names conflict, which config validation has already ruled out.
    pub fn new(routes: Vec<Arc<Route>>, hello: Arc<RouteState>) -> Result<Frontend, String> {
        let by_destination = routes.iter().any(|r| !r.config.destinations.is_empty());
        let destinations = if by_destination {
            let lists: Vec<&[crate::destination::Destination]> =
                routes.iter().map(|r| r.config.destinations.as_slice()).collect();
            Some(DestinationTable::build(&lists)?)
        } else {
            None
        };
        let captures = routes.iter().any(|r| r.config.captures());
        let inspect = !by_destination && (routes.len() > 1 || routes.iter().any(|r| !r.config.server_names.is_empty()));
        let names = if inspect {
            let claims: Vec<RouteNames<'_>> = routes
                .iter()
                .map(|r| RouteNames { route: &r.name, names: &r.config.server_names, alpn: &r.config.alpn })
                .collect();
            Some(NameTable::build(&claims).map_err(|c| c.message)?)
        } else {
            None
        };
        Ok(Frontend { routes, names, destinations, captures, hello })
    }

    /// The route whose settings the listener follows (they all agree).
    pub fn first(&self) -> &Arc<Route> {
        &self.routes[0]
    }

    /// The listener is transparent (IP_TRANSPARENT, TPROXY capture): a
    /// connection's local address is its original destination.
    pub fn transparent(&self) -> bool {
        self.first().config.transparent
    }

    /// The index of the route that serves a client whose original
    /// destination is `dst`; `None`: no route takes it (`no_route`).
    pub fn route_for(&self, dst: SocketAddr) -> Option<usize> {
        match &self.destinations {
            Some(table) => table.pick(dst),
            None => Some(0),
        }
    }

    /// Clients send a ClientHello that picks their route.
    pub fn inspects(&self) -> bool {
        self.names.is_some()
    }

    /// Time a client has to send its ClientHello.
    pub fn hello_timeout(&self) -> Duration {
        self.first().config.client_hello_timeout
    }

    /// The most unrouted connections one client may hold: as many as the
    /// most generous route would let it have, when every route sets
    /// `max_connections_per_client`; otherwise no limit.
    pub fn hello_limit(&self) -> Option<usize> {
        self.routes.iter().map(|r| r.max_connections_per_client).collect::<Option<Vec<_>>>()?.into_iter().max()
    }

    /// Counts a client that starts its ClientHello; false if it is at the limit.
    pub fn admit_hello(&self, ip: IpAddr) -> bool {
        self.hello_limit().is_none_or(|limit| self.hello.admit_client(ip, limit))
    }

    /// The client's ClientHello is over (routed or refused).
    pub fn release_hello(&self, ip: IpAddr) {
        if self.hello_limit().is_some() {
            self.hello.release_client(ip);
        }
    }

    /// The listener may stop accepting because its route is full: only an
    /// address with one route and no ClientHello to read (a full route among
    /// several refuses its clients once they are routed instead).
    pub fn at_limit(&self) -> bool {
        !self.inspects() && self.destinations.is_none() && self.first().at_limit()
    }
}
