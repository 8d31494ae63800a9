//! The stages a session goes through, each with the data only it has: what
//! the client's events said while no relay holds its pumps (before
//! relaying), the ClientHello wait's frontend and its count among the
//! address's unrouted clients, a connect attempt's socket, the claim on an
//! upstream (connecting, relaying, lingering; see `claim.rs`), the
//! client→upstream pump kept between upstreams (`relay: uring`). Also what
//! the worker is told after a session handled something (`Verdict`) and
//! what a closed session gives back (`Remains`).

use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;

use super::{Claim, End, Linger, Readiness, Relay};
use crate::frontend::Frontend;
use crate::relay::Pump;

/// A connect attempt in progress.
#[derive(Debug)]
pub struct Attempt {
    /// The connecting socket.
    pub upstream: TcpStream,
    /// When it started (for its timeout).
    pub since: Instant,
    /// What its events said so far (handed to the relay once connected).
    pub(super) ready: Readiness,
    /// The upstream it connects to, counted in that upstream's sessions.
    pub(super) claim: Claim,
    /// What the client's events said so far (handed to the relay once connected).
    pub(super) client_ready: Readiness,
    /// `relay: uring`: the client→upstream pump kept from a lost upstream
    /// (see `Stage::Unconnected`), for the relay this attempt leads to.
    pub(super) kept: Option<Pump>,
}

/// Waiting for a client's TLS ClientHello, on an address whose routes
/// choose by it.
#[derive(Debug)]
pub struct HelloWait {
    /// When the wait started (for `client_hello_timeout`).
    pub since: Instant,
    /// Bytes the parser needs before it can take its next step.
    pub need: usize,
    /// The routes to choose from.
    pub frontend: Arc<Frontend>,
    /// Counted among the address's clients still sending a ClientHello
    /// (given back when the wait ends, by the stage change that ends it).
    pub(super) admitted: bool,
    /// What the client's events said so far.
    pub(super) client_ready: Readiness,
}

impl HelloWait {
    /// Starts waiting at `now`, knowing what the client's events said so far.
    pub(super) fn new(frontend: Arc<Frontend>, now: Instant, client_ready: Readiness) -> HelloWait {
        HelloWait { since: now, need: 1, frontend, admitted: false, client_ready }
    }
}

/// What a client's ClientHello said, for the access log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The server name (SNI), normalised.
    pub sni: Option<String>,
    /// The ALPN protocols offered, comma-separated, escaped.
    pub alpn: Option<String>,
    /// An `encrypted_client_hello` extension was present (the name is the outer one).
    pub ech: bool,
}

/// Where a session is in its life.
#[derive(Debug)]
pub enum Stage {
    /// Waiting for the client's PROXY protocol header (`accept_proxy_protocol`).
    Header {
        /// When the client was accepted (for the header timeout).
        since: Instant,
        /// The routes a ClientHello will choose from once the header is read
        /// (an address routed by name).
        then: Option<Arc<Frontend>>,
        /// What the client's events said so far.
        client_ready: Readiness,
    },
    /// Waiting for the client's TLS ClientHello, which picks the route.
    Hello(HelloWait),
    /// No upstream socket and no claim: before the first attempt and
    /// between attempts (a transient state inside the worker's `connect`).
    Unconnected {
        /// What the client's events said so far (for the next relay).
        client_ready: Readiness,
        /// `relay: uring`, between upstreams: the client→upstream pump of the
        /// relay whose upstream was lost before any byte moved. Its receive on
        /// the client is stopped (its completions still come here); the next
        /// relay goes on with it and what it took.
        kept: Option<Pump>,
    },
    /// Waiting for an upstream connect to finish.
    Connecting(Attempt),
    /// Both sockets connected; the pumps run. The claim is on the upstream relayed to.
    Relaying(Relay, Claim),
    /// One side failed and the survivor is receiving its last bytes; it is
    /// reset once they are acknowledged (or the wait gives up). The claim
    /// is the relay's, still counted until the close.
    Lingering(Linger, Claim),
    /// Closed; the worker frees the slot at the end of its event batch.
    Closed,
}

impl Stage {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Header { .. } => "header",
            Stage::Hello(_) => "hello",
            Stage::Unconnected { .. } => "unconnected",
            Stage::Connecting(_) => "connecting",
            Stage::Relaying(..) => "relaying",
            Stage::Lingering(..) => "lingering",
            Stage::Closed => "closed",
        }
    }

    /// What the client's events said, in the stages before relaying.
    pub(super) fn client_ready(&self) -> Option<&Readiness> {
        match self {
            Stage::Header { client_ready, .. } | Stage::Unconnected { client_ready, .. } => Some(client_ready),
            Stage::Hello(h) => Some(&h.client_ready),
            Stage::Connecting(a) => Some(&a.client_ready),
            Stage::Relaying(..) | Stage::Lingering(..) | Stage::Closed => None,
        }
    }

    /// Where the client's readiness is kept, in the stages before relaying.
    pub(super) fn client_ready_mut(&mut self) -> Option<&mut Readiness> {
        match self {
            Stage::Header { client_ready, .. } | Stage::Unconnected { client_ready, .. } => Some(client_ready),
            Stage::Hello(h) => Some(&mut h.client_ready),
            Stage::Connecting(a) => Some(&mut a.client_ready),
            Stage::Relaying(..) | Stage::Lingering(..) | Stage::Closed => None,
        }
    }

    /// The client→upstream pump kept between upstreams (`relay: uring`), if any.
    pub(super) fn kept_mut(&mut self) -> Option<&mut Pump> {
        match self {
            Stage::Unconnected { kept, .. } => kept.as_mut(),
            Stage::Connecting(a) => a.kept.as_mut(),
            _ => None,
        }
    }
}

/// What the stage of a session that was just closed held, for the worker
/// to give back and close (see `Session::close`).
#[derive(Debug, Default)]
pub struct Remains {
    /// The relay of a connected session (relaying or lingering).
    pub relay: Option<Relay>,
    /// The socket of a connect attempt in progress.
    pub attempt: Option<TcpStream>,
    /// The upstream it held (connecting, relaying, lingering).
    pub claim: Option<Claim>,
    /// `relay: uring`, between upstreams: the client→upstream pump it kept.
    pub kept: Option<Pump>,
}

/// What the worker should do after the session handled something.
#[derive(Debug)]
pub enum Verdict {
    /// Nothing more now; `more` asks to be run again before the next poll.
    Continue {
        /// A pump hit its round cap with work left.
        more: bool,
    },
    /// The connect attempt failed, or the upstream was lost before a byte
    /// moved either way: try the next upstream (or give up).
    ConnectFailed(std::io::Error),
    /// The upstream is connected: start relaying.
    Connected {
        /// And its peer reset it right after (relay what it sent, then pass the reset on).
        reset_already: bool,
    },
    /// End the session.
    End(End),
}
