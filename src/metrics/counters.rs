//! Why sessions end (`CloseReason`, the label of `sluice_sessions_closed_total`),
//! why clients are refused (`Refusal`) and listeners pause (`Pause`), and
//! each worker's worker-wide counters: accepts at the fd limit, pipes, buffers.
//!
//! A worker is the only writer of its own `WorkerCounters` (relaxed atomic
//! adds, no contention); anyone may read them and sum over workers. Counts
//! by route and upstream (sessions, bytes, latencies, refusals, pauses,
//! local errors) live in `stats.rs`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::relay::cost::CLASSES as AUTO_CLASSES;

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Both sides finished and every byte was delivered.
    Clean,
    /// The client reset or failed; the upstream was reset after it.
    ClientReset,
    /// The upstream reset or failed; the client was reset after it.
    UpstreamReset,
    /// No byte either way for `idle_timeout`, nothing in flight: closed with a FIN.
    IdleTimeout,
    /// `idle_timeout` with bytes still in flight (a reader that stopped
    /// reading) or a side already failed: both sides reset.
    IdleTimeoutAborted,
    /// One direction finished and no byte for `half_close_timeout`, nothing in flight: FIN.
    HalfCloseTimeout,
    /// `half_close_timeout` with bytes still in flight: both sides reset.
    HalfCloseTimeoutAborted,
    /// Quiet for the route's `drain_close_idle_after` while draining: closed with a FIN.
    DrainIdle,
    /// No upstream of the route accepted the connection (refused or timed out).
    ConnectFailed,
    /// Cut with a reset at the end of `drain_timeout` (or by a second stop signal).
    Drained,
    /// Refused right after accept (per-client limit).
    Refused,
    /// Refused by the route's `allow`/`deny` list.
    Denied,
    /// The client's PROXY header was malformed, too long, or late.
    BadProxyHeader,
    /// Every upstream was down or ejected (`when_all_down: reject`).
    NoUpstream,
    /// This host could not open the upstream connection (out of fds, memory
    /// or local ports, an unusable `source:`); the client was reset and the
    /// upstream not blamed.
    LocalError,
    /// Not a TLS ClientHello, a malformed or oversized one, or a client that
    /// closed before finishing it, on an address routed by name (reset; no route).
    BadClientHello,
    /// A ClientHello no route takes, on an address without a default route (reset).
    NoRoute,
    /// No complete ClientHello within `client_hello_timeout` (reset; no route).
    ClientHelloTimeout,
    /// Over `max_connection_rate` or `max_connection_rate_per_client` (reset right after accept).
    RateLimited,
    /// Refused while shedding load (`overload:`; reset right after accept).
    Overloaded,
    /// A capture loop: the client's original destination is sluice's own
    /// listener, or the client is one of sluice's own pass-through
    /// connections come back (reset right after accept).
    Loop,
    /// `relay: sockmap`: the kernel held more of a direction's bytes than
    /// its bound (the reader fell that far behind; the kernel cannot push
    /// back on the sender): both sides reset.
    SockmapOverflow,
}

impl CloseReason {
    /// Every reason, in a fixed order (the counter index).
    pub const ALL: [CloseReason; 22] = [
        CloseReason::Clean,
        CloseReason::ClientReset,
        CloseReason::UpstreamReset,
        CloseReason::IdleTimeout,
        CloseReason::IdleTimeoutAborted,
        CloseReason::HalfCloseTimeout,
        CloseReason::HalfCloseTimeoutAborted,
        CloseReason::DrainIdle,
        CloseReason::ConnectFailed,
        CloseReason::Drained,
        CloseReason::Refused,
        CloseReason::Denied,
        CloseReason::BadProxyHeader,
        CloseReason::NoUpstream,
        CloseReason::LocalError,
        CloseReason::BadClientHello,
        CloseReason::NoRoute,
        CloseReason::ClientHelloTimeout,
        CloseReason::RateLimited,
        CloseReason::Overloaded,
        CloseReason::Loop,
        CloseReason::SockmapOverflow,
    ];

    /// A stable lowercase name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Clean => "clean",
            CloseReason::ClientReset => "client_reset",
            CloseReason::UpstreamReset => "upstream_reset",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::IdleTimeoutAborted => "idle_timeout_aborted",
            CloseReason::HalfCloseTimeout => "half_close_timeout",
            CloseReason::HalfCloseTimeoutAborted => "half_close_timeout_aborted",
            CloseReason::DrainIdle => "drain_idle",
            CloseReason::ConnectFailed => "connect_failed",
            CloseReason::Drained => "drained",
            CloseReason::Refused => "refused",
            CloseReason::Denied => "denied",
            CloseReason::BadProxyHeader => "bad_proxy_header",
            CloseReason::NoUpstream => "no_upstream",
            CloseReason::LocalError => "local_error",
            CloseReason::BadClientHello => "bad_client_hello",
            CloseReason::NoRoute => "no_route",
            CloseReason::ClientHelloTimeout => "client_hello_timeout",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::Overloaded => "overload",
            CloseReason::Loop => "loop",
            CloseReason::SockmapOverflow => "sockmap_overflow",
        }
    }
}

impl CloseReason {
    /// The session did not end with a FIN after everything was delivered:
    /// a side was reset, refused, or never connected (the access log's `aborted`).
    pub fn aborted(self) -> bool {
        !matches!(
            self,
            CloseReason::Clean | CloseReason::IdleTimeout | CloseReason::HalfCloseTimeout | CloseReason::DrainIdle
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a client was refused right after accept (or after its PROXY header
/// or ClientHello): the `reason` of `sluice_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections_per_client`.
    ClientLimit,
    /// An `allow`/`deny` list.
    Acl,
    /// A malformed, oversized or late PROXY header.
    BadProxyHeader,
    /// Bytes that are not a well-formed ClientHello (addresses routed by name).
    BadClientHello,
    /// No route takes the ClientHello's name and ALPN, or the original destination.
    NoRoute,
    /// A capture loop (see `CloseReason::Loop`).
    Loop,
    /// No complete ClientHello within `client_hello_timeout`.
    ClientHelloTimeout,
    /// Routed by name to a route already at its `max_connections`.
    RouteLimit,
    /// Over a connection rate (route or client prefix).
    RateLimited,
    /// Shedding load (`overload:`).
    Overload,
}

impl Refusal {
    /// Every reason, in a fixed order (the counter index).
    pub const ALL: [Refusal; 10] = [
        Refusal::ClientLimit,
        Refusal::Acl,
        Refusal::BadProxyHeader,
        Refusal::BadClientHello,
        Refusal::NoRoute,
        Refusal::Loop,
        Refusal::ClientHelloTimeout,
        Refusal::RouteLimit,
        Refusal::RateLimited,
        Refusal::Overload,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ClientLimit => "client_limit",
            Refusal::Acl => "acl",
            Refusal::BadProxyHeader => "bad_proxy_header",
            Refusal::BadClientHello => "bad_client_hello",
            Refusal::NoRoute => "no_route",
            Refusal::Loop => "loop",
            Refusal::ClientHelloTimeout => "client_hello_timeout",
            Refusal::RouteLimit => "route_limit",
            Refusal::RateLimited => "rate_limited",
            Refusal::Overload => "overload",
        }
    }
}

/// Why a listener stopped accepting for a while: the `reason` of `sluice_accept_paused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pause {
    /// The global `max_connections`.
    Global,
    /// Its route's `max_connections`.
    Route,
}

impl Pause {
    /// Both, in a fixed order (the counter index).
    pub const ALL: [Pause; 2] = [Pause::Global, Pause::Route];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Pause::Global => "global",
            Pause::Route => "route",
        }
    }
}

/// One worker's worker-wide counters: lock-free, written only by that
/// worker, read by anyone. Route and upstream numbers live in `stats.rs`.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Client connections accepted (all routes).
    pub accepted: AtomicU64,
    /// Times accept hit the fd limit (EMFILE/ENFILE); each sheds one client.
    pub accept_fd_exhausted: AtomicU64,
    /// Splice pipes created.
    pub pipes_created: AtomicU64,
    /// Splice pipes handed to pumps (from the pool or new).
    pub pipes_lent: AtomicU64,
    /// Times a pipe was wanted and could not be had.
    pub pipes_refused: AtomicU64,
    /// Pipes doubled because their flow kept filling them.
    pub pipes_grown: AtomicU64,
    /// Pipes lent to pumps right now.
    pub pipes_in_use: AtomicU64,
    /// Spare pipes in the pool right now.
    pub pipes_pooled: AtomicU64,
    /// Times a pump that was to splice copied instead.
    pub copy_fallbacks: AtomicU64,
    /// Of those, because splice refused the pump's sockets.
    pub splice_refused: AtomicU64,
    /// io_uring receive buffers made (`relay: uring`).
    pub uring_buffers: AtomicU64,
    /// Of those, holding bytes now.
    pub uring_lent: AtomicU64,
    /// Receives that found no buffer.
    pub uring_starved: AtomicU64,
    /// Milliseconds this worker spent working, not waiting for events (see `relay::load`).
    pub busy_ms: AtomicU64,
    /// `relay: auto`'s runs that tried the stage that had measured dearer.
    pub auto_explored: AtomicU64,
    /// `relay: auto`'s current estimates by size class, nanoseconds per KiB
    /// delivered, `[copy, splice]`; 0: not measured (see `relay::cost`).
    pub auto_cost: [[AtomicU64; 2]; AUTO_CLASSES],
}

impl WorkerCounters {
    /// Sets a counter the worker keeps elsewhere (pool counts) to its current value.
    pub fn set(counter: &AtomicU64, value: u64) {
        counter.store(value, Relaxed);
    }

    /// Adds one.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Reads one.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_reason_at_its_own_index() {
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r} is out of place: counters are indexed by discriminant");
        }
        let names: std::collections::HashSet<&str> = CloseReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), CloseReason::ALL.len(), "labels are unique");
    }

    #[test]
    fn refusals_and_pauses_sit_at_their_own_index() {
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} is out of place");
        }
        for (i, p) in Pause::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i, "{p:?} is out of place");
        }
        let names: std::collections::HashSet<&str> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Refusal::ALL.len(), "labels are unique");
    }
}
