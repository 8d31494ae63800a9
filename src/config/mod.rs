//! Configuration: the validated, defaults-merged `Config` the server runs
//! from, and the error type every config problem is reported with.
//!
//! # Files
//! - `schema.rs`: what the file looks like, as written;
//! - `units.rs`: single values that check themselves (durations, sizes, counts, percentages);
//! - `net.rs`: addresses and the `socket:` values (keepalive, congestion names), checking themselves too;
//! - `pool.rs`: a route's upstream-pool settings (balancing, health checks, PROXY protocol, access lists);
//! - `admission.rs`: who may connect, as written: rate limits and overload shedding;
//! - `validate.rs`: the raw file turned into a `Config`, defaults filled, cross-field rules;
//! - `shared.rs`: routes that share a listen address, and what they must agree on;
//! - `field.rs`: field paths (`routes[1].listen`) and the error that carries one;
//! - `load.rs`: every call to serde_yaml, and line and column on each error;
//! - `keys.rs`: every key the file accepts, traced from the schema, for the docs tests;
//! - `describe.rs`: a `Config` rendered back as YAML for `sluice check`.

pub(crate) mod admission;
mod describe;
mod field;
mod keys;
mod load;
mod net;
pub(crate) mod pool;
mod schema;
mod shared;
pub(crate) mod units;
mod validate;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use keys::accepted_keys;
pub use load::{digest, load_file, parse_str};
pub use net::SourceAddr as Source;
pub use net::{CongestionName, HostPort, Keepalive};
pub use pool::{Balance, HealthCheck, Outlier, Pool, ProxyVersion, WhenAllDown};
pub use schema::RawSocket as SocketOptions;
pub use schema::{LogFormat, RelayMode};
pub use shared::listen_groups;
pub use units::Workers;

/// Default `connect_timeout` of a route.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default `idle_timeout` of a route.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Default `drain_timeout`: with the default `drain_grace`, the whole
/// shutdown fits Kubernetes' default `terminationGracePeriodSeconds` (30 s),
/// so sessions end by our reset rather than by SIGKILL.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(25);
/// Default `drain_grace`: how long listeners keep accepting after SIGTERM,
/// with `/readyz` already saying 503, so load balancers and Kubernetes can
/// take this instance out before it stops accepting. Endpoint removal takes
/// a few seconds to reach every node's kube-proxy; Istio's sidecar waits
/// 5 s (`terminationDrainDuration`) for the same reason. SIGINT skips it.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Default `pipe_size`: 64 KiB, the kernel's own default pipe size.
pub const DEFAULT_PIPE_SIZE: usize = 64 << 10;
/// Default `notsent_lowat`: 1 MiB of unsent data per socket at most, set
/// while a flow splices. The kernel's own default queues up to the whole
/// (autotuned, multi-MiB) send buffer; a bound measured +20-40 % on loopback
/// streams spliced. 1 MiB moved streams at 0.9-1.0x the rate of the earlier
/// 256 KiB for 0.66-0.79x its proxy CPU per Gbit/s, at the same host CPU at
/// a fixed rate (docs/performance-log.md, runs G and H). It limits only data
/// not yet sent, never what is in flight.
pub const DEFAULT_NOTSENT_LOWAT: u32 = 1 << 20;
/// Default `max_connections`, all routes together.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Default relay mode: `auto` copies request/response traffic (measured faster
/// for 1 KiB to 1 MiB exchanges) and splices one-way bulk flows (less proxy CPU
/// per byte); docs/performance.md has the figures and the CPU it costs.
pub const DEFAULT_RELAY: RelayMode = RelayMode::Auto;
/// Default listen `backlog` (capped at `net.core.somaxconn`).
pub const DEFAULT_BACKLOG: u32 = 4096;
/// Default `client_hello_timeout`: a real client sends its ClientHello in its
/// first round trip; 5 s covers a slow mobile link while a client that
/// stalls holds a socket for less than nginx's 30 s or Envoy's 15 s would.
pub const DEFAULT_CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `max_pooled_pipes` per worker.
pub const DEFAULT_MAX_POOLED_PIPES: usize = 128;

/// A validated configuration with every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where it came from (`None` for `--listen`/`--upstream`), for messages.
    pub source: Option<PathBuf>,
    /// Digest of the file content it was parsed from (0 without a file).
    pub source_digest: u64,
    /// Worker threads.
    pub workers: Workers,
    /// Pin worker i to the i-th CPU the process may use.
    pub cpu_affinity: bool,
    /// How sessions move bytes, on routes without their own `relay`.
    pub relay: RelayMode,
    /// Bytes asked of the kernel per splice pipe.
    pub pipe_size: usize,
    /// Spare pipes each worker keeps.
    pub max_pooled_pipes: usize,
    /// Sessions allowed at once, all routes together.
    pub max_connections: usize,
    /// Time running sessions get to finish once accepting stopped.
    pub drain_timeout: Duration,
    /// Time listeners keep accepting after SIGTERM (`/readyz` says 503 meanwhile).
    pub drain_grace: Duration,
    /// Reload when the file changes.
    pub watch: bool,
    /// Where a successor can take the listeners over (`--takeover`); `None`: no upgrades in place.
    pub control_socket: Option<PathBuf>,
    /// Overload shedding; `None`: off.
    pub overload: Option<admission::Overload>,
    /// The admin port, if any.
    pub admin: Option<Admin>,
    /// Log format and the access log.
    pub log: Log,
    /// At least one route; listen addresses don't collide.
    pub routes: Vec<Route>,
}

/// The admin HTTP port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admin {
    /// Where it listens.
    pub listen: SocketAddr,
    /// A non-loopback address was allowed explicitly.
    pub allow_remote: bool,
}

/// Logging settings from the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Log {
    /// Line format.
    pub format: LogFormat,
    /// Log one line per finished session.
    pub access: bool,
    /// Also log one for each session open longer than this, every this long.
    pub flush_interval: Option<Duration>,
}

/// One listen address and where its sessions go.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Unique among routes; used in logs.
    pub name: String,
    /// Where clients connect (port 0: the kernel picks).
    pub listen: SocketAddr,
    /// At least one; no address twice. Empty on a route with `original_destination`.
    pub upstreams: Vec<UpstreamSpec>,
    /// Each connection goes to the address its client dialled, not to
    /// upstreams (a transparent sidecar's pass-through; no balancing, no retries).
    pub original_destination: bool,
    /// IP_TRANSPARENT on the listener (TPROXY capture): its connections'
    /// local addresses are their original destinations.
    pub transparent: bool,
    /// The original destinations this route takes on a capture address
    /// shared by several routes (empty: the address's default route, or an
    /// address with one route).
    pub destinations: Vec<crate::destination::Destination>,
    /// Time allowed for one upstream connect attempt.
    pub connect_timeout: Duration,
    /// A session with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// Once one side has finished, the session is closed after this long
    /// without a byte. Defaults to `idle_timeout`: a client that half-closes
    /// its request and waits minutes for the answer (a report, a dump) must
    /// not be cut, and the idle timeout still bounds CLOSE-WAIT (HAProxy's
    /// `timeout client-fin` is likewise off unless set).
    pub half_close_timeout: Duration,
    /// While draining, a quiet session (nothing in flight) with no byte for
    /// this long is closed with a FIN. `None` (the default): a draining
    /// session runs until both sides finish or the drain's deadline resets
    /// it, as HAProxy's soft stop and Envoy's drain do; a layer-4 proxy
    /// cannot see a message boundary, so a pause is not an end.
    pub drain_close_idle_after: Option<Duration>,
    /// Listen queue length asked of the kernel.
    pub backlog: u32,
    /// Sessions allowed at once on this route.
    pub max_connections: Option<usize>,
    /// Sessions allowed at once from one client IP on this route.
    pub max_connections_per_client: Option<usize>,
    /// New connections per second on this route (all workers together).
    pub max_connection_rate: Option<crate::ratelimit::Rate>,
    /// New connections per second from one client prefix on this route.
    pub max_connection_rate_per_client: Option<crate::ratelimit::ClientRate>,
    /// The local address of its upstream connections (sessions and health
    /// checks); `None`: the kernel chooses by route. Never of another family
    /// than an upstream given as an IP literal. `client`: each session's
    /// connection leaves from its client's IP (health checks: the kernel's choice).
    pub source: Option<Source>,
    /// Multipath TCP: its listening sockets and its upstream connections
    /// (sessions and health checks) are `IPPROTO_MPTCP`; peers without
    /// MPTCP fall back to plain TCP, as the kernel does.
    pub mptcp: bool,
    /// Its own relay mode; `None`: the global `relay` (which a reload may change).
    pub relay: Option<RelayMode>,
    /// TLS server names this route takes (empty: not routed by name; on a
    /// shared address, the default route).
    pub server_names: Vec<crate::tls::names::Pattern>,
    /// ALPN protocols this route takes for its names (empty: any).
    pub alpn: Vec<String>,
    /// Time a client has to send its ClientHello (addresses that read them).
    pub client_hello_timeout: Duration,
    /// Socket options, `defaults.socket` merged in.
    pub socket: SocketOptions,
    /// Balancing, retries, health, discovery, PROXY protocol, access list.
    pub pool: pool::Pool,
}

/// An upstream as configured (host names not resolved yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// `host:port`.
    pub address: HostPort,
    /// 1..=256; share of new sessions relative to the route's other upstreams.
    pub weight: u32,
    /// Used only when no primary upstream is available.
    pub backup: bool,
}

impl Config {
    /// True if the global setting or a route asks for `mode`.
    pub fn asks(&self, mode: RelayMode) -> bool {
        self.relay == mode || self.routes.iter().any(|r| r.relay == Some(mode))
    }

    /// A one-route configuration from the command line (`--listen`, `--upstream`).
    pub fn single_route(listen: SocketAddr, upstreams: Vec<HostPort>) -> Result<Config, ConfigError> {
        validate::single_route(listen, upstreams).map_err(|e| ConfigError::Invalid {
            origin: "command line".to_owned(),
            location: None,
            field: e.field,
            message: e.message,
        })
    }

    /// Where the configuration came from, for log lines.
    pub fn origin(&self) -> String {
        self.source.as_ref().map_or_else(|| "command line".to_owned(), |p| p.display().to_string())
    }
}

/// Line and column in the config file, both 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", invalid_message(origin, location, field, message))]
    Invalid {
        /// The file name, or "command line".
        origin: String,
        /// Where in the file, when known.
        location: Option<Location>,
        /// Field path such as `routes[1].listen`; empty for syntax errors.
        field: String,
        /// What is wrong, in one line.
        message: String,
    },
}

fn invalid_message(origin: &str, location: &Option<Location>, field: &str, message: &str) -> String {
    let mut s = origin.to_owned();
    if let Some(l) = location {
        s.push_str(&format!(":{}:{}", l.line, l.column));
    }
    if !field.is_empty() {
        s.push_str(": ");
        s.push_str(field);
    }
    s.push_str(": ");
    s.push_str(message);
    s
}

impl SocketOptions {
    /// TCP_NODELAY unless turned off.
    pub fn nodelay(&self) -> bool {
        self.nodelay.unwrap_or(true)
    }

    /// The TCP_NOTSENT_LOWAT set on connections by their setup: only one
    /// configured (`0` turns it off: the kernel queues up to the send
    /// buffer). Unset, the default is the stages' business
    /// ([`SocketOptions::stage_notsent_lowat`]).
    pub fn configured_notsent_lowat(&self) -> Option<u32> {
        self.notsent_lowat.and_then(|_| self.notsent_lowat())
    }

    /// The default TCP_NOTSENT_LOWAT when none is configured: the relay
    /// sets it on a destination while splicing and takes it off while
    /// copying, where it measured dearer (docs/performance.md).
    pub fn stage_notsent_lowat(&self) -> Option<u32> {
        self.notsent_lowat.is_none().then_some(DEFAULT_NOTSENT_LOWAT)
    }

    /// The TCP_NOTSENT_LOWAT in force while splicing, if any:
    /// [`DEFAULT_NOTSENT_LOWAT`] unless configured; `0` turns it off.
    pub fn notsent_lowat(&self) -> Option<u32> {
        match self.notsent_lowat.map(|n| n.get()) {
            None => Some(DEFAULT_NOTSENT_LOWAT),
            Some(0) => None,
            Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        }
    }

    /// SO_REUSEADDR on the listener unless turned off.
    pub fn reuse_address(&self) -> bool {
        self.reuse_address.unwrap_or(true)
    }

    /// These options with every unset one taken from `defaults`.
    pub fn or(self, defaults: &SocketOptions) -> SocketOptions {
        let d = defaults.clone();
        SocketOptions {
            nodelay: self.nodelay.or(d.nodelay),
            keepalive: self.keepalive.or(d.keepalive),
            user_timeout: self.user_timeout.or(d.user_timeout),
            send_buffer: self.send_buffer.or(d.send_buffer),
            recv_buffer: self.recv_buffer.or(d.recv_buffer),
            congestion: self.congestion.or(d.congestion),
            fastopen: self.fastopen.or(d.fastopen),
            notsent_lowat: self.notsent_lowat.or(d.notsent_lowat),
            defer_accept: self.defer_accept.or(d.defer_accept),
            mark: self.mark.or(d.mark),
            reuse_address: self.reuse_address.or(d.reuse_address),
        }
    }
}

impl Route {
    /// The fixed `source:` address, if it has one (not `source: client`).
    pub fn source_ip(&self) -> Option<IpAddr> {
        self.source.and_then(Source::ip)
    }

    /// The route's listener reads each connection's original destination:
    /// it passes connections through, is transparent, or routes by destination.
    pub fn captures(&self) -> bool {
        self.original_destination || self.transparent || !self.destinations.is_empty()
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route {:?} on {}", self.name, self.listen)
    }
}
