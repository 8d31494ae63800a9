//! A client of a capture address (a transparent sidecar's listener: see
//! `frontend.rs`) before its session is made: where it was really going,
//! which route takes that, and whether it is a loop.
//!
//! The original destination is read once per connection: on a transparent
//! listener (TPROXY) it is the accepted socket's local address; otherwise
//! conntrack's `SO_ORIGINAL_DST` (`IP6T_SO_ORIGINAL_DST`), and a connection
//! nothing translated (ENOENT) dialled the listener itself (a route with
//! upstreams serves such a client as any other). Refused with a reset and
//! counted, never connected:
//! - `loop`: the original destination is the listener's own address and
//!   its route passes through (no capture rule brought it: passing it on
//!   would connect sluice to itself), or the client is one of sluice's own
//!   pass-through upstream connections come back through a capture rule
//!   (`upstream::loop_guard`; one accepted in the microseconds before its
//!   entry is in is found when its own connect completes, and reset then);
//! - `no_route`: no route of the address takes the destination and none
//!   is its default.

use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;

use super::Worker;
use crate::frontend::Frontend;
use crate::metrics::{self, CloseReason};
use crate::session::{End, Ending};
use crate::sys::capture;

/// Why a capture address's client was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// It dialled the listener itself (`dst`), and its route (`usize`) passes through.
    Itself(SocketAddr, usize),
    /// It is one of sluice's own pass-through connections.
    OwnConnection,
    /// No route takes `dst`.
    NoRoute(SocketAddr),
}

/// A capture address's client, admitted: its route's index in the frontend
/// and its original destination.
#[derive(Clone, Copy, Debug)]
pub(super) struct Captured {
    /// Index of its route in the frontend.
    pub route: usize,
    /// Where it was really going.
    pub dst: SocketAddr,
}

impl Worker {
    /// Reads the original destination of `client` (from `peer`) on a
    /// capture address and picks its route; a refusal is counted and
    /// logged here, and its close reason returned (with the route it
    /// counts in, if one is known) for the caller to reset the client.
    pub(super) fn capture(
        &self,
        frontend: &Frontend,
        client: &TcpStream,
        peer: SocketAddr,
    ) -> Result<Captured, (CloseReason, Option<usize>)> {
        let listen = frontend.first().listen;
        let refusal = if self.shared.loop_guard.is_ours(peer) {
            Err(Refusal::OwnConnection)
        } else {
            let dst = original_destination(frontend.transparent(), client, listen, peer);
            match frontend.route_for(dst) {
                None => Err(Refusal::NoRoute(dst)),
                // Passing it on would connect sluice to itself.
                Some(i) if frontend.routes[i].config.original_destination && is_listener(dst, listen) => {
                    Err(Refusal::Itself(dst, i))
                }
                Some(route) => Ok(Captured { route, dst }),
            }
        };
        refusal.map_err(|why| {
            let (counted, close) = match why {
                Refusal::NoRoute(_) => (metrics::Refusal::NoRoute, CloseReason::NoRoute),
                Refusal::Itself(..) | Refusal::OwnConnection => (metrics::Refusal::Loop, CloseReason::Loop),
            };
            let route = match why {
                Refusal::Itself(_, i) => Some(i),
                _ if frontend.destinations.is_none() => Some(0),
                _ => None,
            };
            // No route known: the address's first route counts the refusal.
            self.metrics.count_refusal(frontend.routes[route.unwrap_or(0)].metric_id, counted);
            match why {
                Refusal::Itself(dst, _) => log::debug!(
                    "listener {listen}: refused {peer}: loop: its original destination {dst} is this listener (no \
                     capture rule brought it), and passing it on would connect sluice to itself"
                ),
                Refusal::OwnConnection => log::debug!(
                    "listener {listen}: refused {peer}: loop: it is one of sluice's own upstream connections, \
                     captured again (exempt sluice's traffic from the capture rule: socket.mark or meta skuid)"
                ),
                Refusal::NoRoute(dst) => log::debug!(
                    "listener {listen}: refused {peer}: no_route: no route takes original destination {dst} and \
                     none is the default"
                ),
            }
            (close, route)
        })
    }
}

impl Worker {
    /// Pass-through session `key` turned out, once connected, to be one of
    /// sluice's own connections come back (the loop guard had no entry for
    /// it yet when it was accepted): both sides are reset, which ends the
    /// loop's every hop, and it counts as a `loop` refusal.
    pub(super) fn loop_found_late(&mut self, key: usize, now: Instant) {
        let s = &self.sessions[key];
        self.metrics.count_refusal(s.route().metric_id, metrics::Refusal::Loop);
        log::debug!(
            "session {}: loop: client {} is one of sluice's own upstream connections, captured again (found once \
             connected; exempt sluice's traffic from the capture rule: socket.mark or meta skuid)",
            s.id(),
            s.peer_addr()
        );
        self.close(key, End { reason: CloseReason::Loop, ending: Ending::RESET_BOTH }, now);
    }
}

/// Where the client of `client` (from `peer`) was going: the local address
/// on a transparent listener, else what conntrack says a `redirect`/`dnat`
/// rewrote, else (nothing translated it) the listener it dialled. The
/// client's family picks the question: an IPv4 client of a dual-stack `[::]`
/// listener (`::ffff:a.b.c.d`) has an IPv4 conntrack entry, which
/// `SO_ORIGINAL_DST` answers on the IPv6 socket too.
fn original_destination(transparent: bool, client: &TcpStream, listen: SocketAddr, peer: SocketAddr) -> SocketAddr {
    if transparent {
        return client.local_addr().unwrap_or(listen);
    }
    match capture::original_destination(client, crate::acl::canonical(peer.ip()).is_ipv6()) {
        Ok(Some(dst)) => return dst,
        Ok(None) => {}
        // ENOPROTOOPT: conntrack is not loaded, so nothing was translated either.
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOPROTOOPT) => {}
        Err(e) => log::debug!("listener {listen}: cannot read a client's original destination: {e}"),
    }
    // Not translated: the client dialled the listener (a wildcard's local address says which of its own).
    if listen.ip().is_unspecified() { client.local_addr().unwrap_or(listen) } else { listen }
}

/// `dst` is the listener's own address (`listen`, which may be a wildcard).
fn is_listener(dst: SocketAddr, listen: SocketAddr) -> bool {
    dst == listen || (listen.ip().is_unspecified() && dst.port() == listen.port() && dst.ip().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_is_its_address_or_loopback_on_its_wildcard_port() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(is_listener(a("127.0.0.1:15001"), a("127.0.0.1:15001")));
        assert!(is_listener(a("127.0.0.1:15001"), a("0.0.0.0:15001")));
        assert!(is_listener(a("[::1]:15001"), a("[::]:15001")));
        assert!(!is_listener(a("192.0.2.10:15001"), a("0.0.0.0:15001")), "a service on the same port elsewhere");
        assert!(!is_listener(a("127.0.0.1:80"), a("0.0.0.0:15001")));
        assert!(!is_listener(a("127.0.0.2:15001"), a("127.0.0.1:15001")));
    }
}
