//! The stages a session goes through, each with the data only it has (a
//! connect attempt's socket, a ClientHello wait's frontend), and what the
//! worker is told after a session handled something (`Verdict`).

use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;

use super::{End, Linger, Readiness, Relay};
use crate::frontend::Frontend;

/// A connect attempt in progress.
#[derive(Debug)]
pub struct Attempt {
    /// The connecting socket.
    pub upstream: TcpStream,
    /// Attempts made before this one.
    pub number: u32,
    /// When it started (for its timeout).
    pub since: Instant,
    /// What its events said so far (handed to the relay once connected).
    pub(super) ready: Readiness,
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
}

impl HelloWait {
    /// Starts waiting at `now`.
    pub fn new(frontend: Arc<Frontend>, now: Instant) -> HelloWait {
        HelloWait { since: now, need: 1, frontend }
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
    },
    /// Waiting for the client's TLS ClientHello, which picks the route.
    Hello(HelloWait),
    /// No upstream socket: before the first attempt and between attempts
    /// (a transient state inside the worker's `connect`).
    Unconnected,
    /// Waiting for an upstream connect to finish.
    Connecting(Attempt),
    /// Both sockets connected; the pumps run.
    Relaying(Relay),
    /// One side failed and the survivor is receiving its last bytes; it is
    /// reset once they are acknowledged (or the wait gives up).
    Lingering(Linger),
    /// Closed; the worker frees the slot at the end of its event batch.
    Closed,
}

impl Stage {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Header { .. } => "header",
            Stage::Hello(_) => "hello",
            Stage::Unconnected => "unconnected",
            Stage::Connecting(_) => "connecting",
            Stage::Relaying(_) => "relaying",
            Stage::Lingering(_) => "lingering",
            Stage::Closed => "closed",
        }
    }
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
