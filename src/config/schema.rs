//! The raw shape of `proxy.yaml`, exactly as written by the user.
//!
//! Every struct denies unknown fields, every value that can be checked alone
//! is a typed unit from `units.rs`. Optional fields stay `Option` here: the
//! defaults are filled in by `validate.rs`, in one place.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor, value::MapAccessDeserializer};

use super::net::{HostPort, ListenAddr, SourceAddr};
use super::pool::{
    Balance, ProxyHeaderTimeout, ProxyVersion, RawHealthCheck, RawOutlier, RawPool, ResolveInterval, Retries, Toggle,
    WhenAllDown,
};
use super::units::{CountIn, DurationIn, SizeIn, Workers};
use crate::acl::Cidr;

/// `connect_timeout`: 1 ms to 5 minutes.
pub type ConnectTimeout = DurationIn<1, 300_000>;
/// `idle_timeout`: 10 ms to 30 days.
pub type IdleTimeout = DurationIn<10, { 30 * 86_400_000 }>;
/// `drain_timeout`: 0 (close at once) to 1 hour.
pub type DrainTimeout = DurationIn<0, 3_600_000>;
/// `drain_grace`: 0 (stop accepting at once) to 10 minutes.
pub type DrainGrace = DurationIn<0, 600_000>;
/// `log.flush_interval`: 1 second to 1 day.
pub type FlushInterval = DurationIn<1000, 86_400_000>;
/// `client_hello_timeout`: 10 ms to 1 minute.
pub type HelloTimeout = DurationIn<10, 60_000>;
/// `pipe_size`: one page to 16 MiB (the kernel clamps further to `fs.pipe-max-size`).
pub type PipeSize = SizeIn<4096, { 16 << 20 }>;
/// `max_connections`: 1 to 10 million.
pub type MaxConnections = CountIn<1, 10_000_000>;
/// An upstream's `weight`: 1 to 256.
pub type Weight = CountIn<1, 256>;

/// `half_close_timeout`: 10 ms to 30 days.
pub type HalfCloseTimeout = DurationIn<10, { 30 * 86_400_000 }>;
/// `drain_close_idle_after`: 10 ms to 1 hour (longer than any `drain_timeout`
/// would never fire).
pub type DrainCloseIdleAfter = DurationIn<10, 3_600_000>;
/// `backlog`: the listen queue asked of the kernel (capped at `net.core.somaxconn`).
pub type Backlog = CountIn<1, 65_535>;
/// `max_pooled_pipes`: spare pipes each worker keeps.
pub type MaxPooledPipes = CountIn<0, 65_536>;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Worker threads: `auto` or a count.
    pub workers: Option<Workers>,
    /// Pin worker i to the i-th CPU this process may use.
    pub cpu_affinity: Option<bool>,
    /// Relay mode for every route without its own.
    pub relay: Option<RelayMode>,
    /// Size asked of the kernel for each splice pipe.
    pub pipe_size: Option<PipeSize>,
    /// Spare pipes each worker keeps for reuse.
    pub max_pooled_pipes: Option<MaxPooledPipes>,
    /// Sessions allowed at once, all routes together.
    pub max_connections: Option<MaxConnections>,
    /// How long running sessions may take to finish once accepting stopped.
    pub drain_timeout: Option<DrainTimeout>,
    /// How long listeners keep accepting after SIGTERM (with /readyz at 503).
    pub drain_grace: Option<DrainGrace>,
    /// Reload when the file changes (polled every second).
    pub watch: Option<bool>,
    /// A Unix socket where a successor (`--takeover`) can take the listeners over.
    pub control_socket: Option<std::path::PathBuf>,
    /// Refuse new clients above these levels of fd and memory use.
    pub overload: Option<super::admission::RawOverload>,
    /// The admin HTTP port; absent = off.
    pub admin: Option<RawAdmin>,
    /// Log output.
    #[serde(default)]
    pub log: RawLog,
    /// Settings every route inherits unless it sets its own.
    #[serde(default)]
    pub defaults: RawDefaults,
    /// The routes; at least one.
    pub routes: Option<Vec<RawRoute>>,
}

/// `defaults:`: the per-route settings a route inherits. (The same keys as
/// in a route; serde can't flatten a struct and deny unknown fields at once.)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// Time allowed for one upstream connect attempt.
    pub connect_timeout: Option<ConnectTimeout>,
    /// A session with no byte either way for this long is closed.
    pub idle_timeout: Option<IdleTimeout>,
    /// A session one side of which has finished is closed after this long
    /// without a byte (unset: the idle timeout).
    pub half_close_timeout: Option<HalfCloseTimeout>,
    /// While draining, a quiet session with no byte for this long is closed
    /// with a FIN (unset: draining sessions run until they end or the drain's deadline).
    pub drain_close_idle_after: Option<DrainCloseIdleAfter>,
    /// Listen queue length.
    pub backlog: Option<Backlog>,
    /// Sessions allowed at once on the route.
    pub max_connections: Option<MaxConnections>,
    /// Sessions allowed at once from one client IP on the route.
    pub max_connections_per_client: Option<MaxConnections>,
    /// New connections per second on the route.
    pub max_connection_rate: Option<super::admission::RawRate>,
    /// New connections per second from one client prefix on the route.
    pub max_connection_rate_per_client: Option<super::admission::RawClientRate>,
    /// The local address of upstream connections (the kernel's choice if unset).
    pub source: Option<SourceAddr>,
    /// Multipath TCP (`IPPROTO_MPTCP`) listeners and upstream connections.
    pub mptcp: Option<bool>,
    /// Time a client of a route that reads ClientHellos has to send its own.
    pub client_hello_timeout: Option<HelloTimeout>,
    /// Socket options.
    #[serde(default)]
    pub socket: RawSocket,
    /// How the upstream of a new session is picked.
    pub balance: Option<Balance>,
    /// More connect attempts after a failure, each to another upstream.
    pub retries: Option<Retries>,
    /// Active health checks: `false`, `true` or settings.
    pub health_check: Option<Toggle<RawHealthCheck>>,
    /// Passive outlier ejection: `false`, `true` or settings.
    pub outlier_detection: Option<Toggle<RawOutlier>>,
    /// No upstream available: `reject` or `try_anyway`.
    pub when_all_down: Option<WhenAllDown>,
    /// How often upstream host names are resolved again.
    pub resolve_interval: Option<ResolveInterval>,
    /// Send a PROXY header (`v1` or `v2`) to the upstream.
    pub proxy_protocol: Option<ProxyVersion>,
    /// Read a PROXY header from the client before anything else.
    pub accept_proxy_protocol: Option<bool>,
    /// Time a client has to send that header.
    pub proxy_protocol_timeout: Option<ProxyHeaderTimeout>,
    /// Only these address blocks may connect.
    pub allow: Option<Vec<Cidr>>,
    /// These address blocks may not connect.
    pub deny: Option<Vec<Cidr>>,
}

/// One entry of `routes:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Used in logs and metrics labels.
    pub name: String,
    /// Where clients connect.
    pub listen: ListenAddr,
    /// Where sessions go (none on a route with `original_destination: true`).
    pub upstreams: Option<Vec<RawUpstream>>,
    /// Each connection goes to the address its client dialled (read from the
    /// socket after an nftables `redirect`/`dnat` or `tproxy`), not to upstreams.
    pub original_destination: Option<bool>,
    /// IP_TRANSPARENT on the listener: it accepts connections a `tproxy`
    /// rule steers to it, for addresses that are not this host's.
    pub transparent: Option<bool>,
    /// On a capture address shared by several routes: the original
    /// destinations this route takes (the route without them is the default).
    pub destinations: Option<Vec<crate::destination::Destination>>,
    /// Overrides `defaults.connect_timeout`.
    pub connect_timeout: Option<ConnectTimeout>,
    /// Overrides `defaults.idle_timeout`.
    pub idle_timeout: Option<IdleTimeout>,
    /// Overrides `defaults.half_close_timeout`.
    pub half_close_timeout: Option<HalfCloseTimeout>,
    /// Overrides `defaults.drain_close_idle_after`.
    pub drain_close_idle_after: Option<DrainCloseIdleAfter>,
    /// Overrides `defaults.backlog`.
    pub backlog: Option<Backlog>,
    /// Overrides `defaults.max_connections`.
    pub max_connections: Option<MaxConnections>,
    /// Overrides `defaults.max_connections_per_client`.
    pub max_connections_per_client: Option<MaxConnections>,
    /// Overrides `defaults.max_connection_rate`.
    pub max_connection_rate: Option<super::admission::RawRate>,
    /// Overrides `defaults.max_connection_rate_per_client`.
    pub max_connection_rate_per_client: Option<super::admission::RawClientRate>,
    /// Overrides `defaults.source`.
    pub source: Option<SourceAddr>,
    /// Overrides `defaults.mptcp`.
    pub mptcp: Option<bool>,
    /// This route's relay mode (absent: the global `relay`).
    pub relay: Option<RelayMode>,
    /// TLS server names (exact or `*.` wildcards) whose clients this route takes.
    pub server_names: Option<Vec<String>>,
    /// ALPN protocols this route takes for its server names.
    pub alpn: Option<Vec<String>>,
    /// Overrides `defaults.client_hello_timeout`.
    pub client_hello_timeout: Option<HelloTimeout>,
    /// Overrides `defaults.socket`, option by option.
    #[serde(default)]
    pub socket: RawSocket,
    /// How the upstream of a new session is picked.
    pub balance: Option<Balance>,
    /// More connect attempts after a failure, each to another upstream.
    pub retries: Option<Retries>,
    /// Active health checks: `false`, `true` or settings.
    pub health_check: Option<Toggle<RawHealthCheck>>,
    /// Passive outlier ejection: `false`, `true` or settings.
    pub outlier_detection: Option<Toggle<RawOutlier>>,
    /// No upstream available: `reject` or `try_anyway`.
    pub when_all_down: Option<WhenAllDown>,
    /// How often upstream host names are resolved again.
    pub resolve_interval: Option<ResolveInterval>,
    /// Send a PROXY header (`v1` or `v2`) to the upstream.
    pub proxy_protocol: Option<ProxyVersion>,
    /// Read a PROXY header from the client before anything else.
    pub accept_proxy_protocol: Option<bool>,
    /// Time a client has to send that header.
    pub proxy_protocol_timeout: Option<ProxyHeaderTimeout>,
    /// Only these address blocks may connect.
    pub allow: Option<Vec<Cidr>>,
    /// These address blocks may not connect.
    pub deny: Option<Vec<Cidr>>,
}

/// `socket:` options; every one optional (unset = the kernel's default,
/// except `nodelay` and `reuse_address`, which default to on).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawSocket {
    /// TCP_NODELAY on both sockets of a session.
    pub nodelay: Option<bool>,
    /// SO_KEEPALIVE with TCP_KEEPIDLE/KEEPINTVL/KEEPCNT, or `false`.
    pub keepalive: Option<super::net::Keepalive>,
    /// TCP_USER_TIMEOUT (0s = off).
    pub user_timeout: Option<UserTimeout>,
    /// SO_SNDBUF.
    pub send_buffer: Option<BufferSize>,
    /// SO_RCVBUF (set on the listener before listen(), so the window scale fits).
    pub recv_buffer: Option<BufferSize>,
    /// TCP_CONGESTION, checked against the kernel's available list at start.
    pub congestion: Option<super::net::CongestionName>,
    /// TCP_FASTOPEN queue length on the listener; 0 = off.
    pub fastopen: Option<FastOpenQueue>,
    /// TCP_NOTSENT_LOWAT; unset = [`super::DEFAULT_NOTSENT_LOWAT`], 0 = off (the kernel's unlimited).
    pub notsent_lowat: Option<NotSentLowat>,
    /// TCP_DEFER_ACCEPT on the listener; 0s = off. Breaks server-speaks-first protocols.
    pub defer_accept: Option<DeferAccept>,
    /// SO_MARK on the upstream socket (policy routing); needs CAP_NET_ADMIN.
    pub mark: Option<Mark>,
    /// SO_REUSEADDR on the listener.
    pub reuse_address: Option<bool>,
}

/// `user_timeout`: 0 (off) to 1 day.
pub type UserTimeout = DurationIn<0, 86_400_000>;
/// `send_buffer` / `recv_buffer`: 4 KiB to 256 MiB (the kernel caps at `net.core.{w,r}mem_max`).
pub type BufferSize = SizeIn<4096, { 256 << 20 }>;
/// `fastopen`: listener queue length, 0 = off.
pub type FastOpenQueue = CountIn<0, 65_535>;
/// `notsent_lowat`: 0 (off) to 256 MiB.
pub type NotSentLowat = SizeIn<0, { 256 << 20 }>;
/// `defer_accept`: 0 (off) to 1 hour, in seconds.
pub type DeferAccept = DurationIn<0, 3_600_000>;
/// `mark`: any 32-bit value.
pub type Mark = CountIn<0, { u32::MAX as u64 }>;

/// `admin:`: the metrics and health port.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Where to listen (loopback unless `allow_remote`).
    pub listen: ListenAddr,
    /// Allow a non-loopback address (the port has no authentication).
    pub allow_remote: Option<bool>,
}

/// `log:`: how log lines look, and the access log.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `text` (default) or `json` (one JSON object per line).
    pub format: Option<LogFormat>,
    /// One line per finished session on target `sluice::access` (default on).
    pub access: Option<bool>,
    /// Also a line for each session open longer than this, every this long.
    pub flush_interval: Option<FlushInterval>,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; access records as `key=value` pairs.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How bytes are moved between the two sockets of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// socket → pipe → socket with splice(2): the bytes never enter user space.
    Splice,
    /// read(2) into a buffer, write(2) out of it.
    Copy,
    /// Decided per direction and run by measured cost: each worker times
    /// what copying and splicing cost it per byte, by message size, uses the
    /// cheaper and now and then tries the other. A stage changes only when
    /// nothing is in flight, so bytes are never in a buffer and a pipe at once.
    Auto,
    /// Receives and sends submitted to a per-worker io_uring (Linux 6.0+),
    /// its completions waking the worker's event loop: fewer syscalls per
    /// message. Falls back to `auto`, saying so once, where io_uring is
    /// unavailable (`kernel.io_uring_disabled`, a seccomp filter).
    Uring,
    /// Established sessions are relayed inside the kernel: a BPF sockhash
    /// and stream-verdict program move each arriving segment to the peer
    /// socket, so the worker is woken only for endings; falls back to
    /// `auto`, saying so once, where the kernel refuses BPF (no CAP_BPF, a
    /// seccomp filter, an older kernel).
    Sockmap,
}

impl fmt::Display for RelayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RelayMode::Splice => "splice",
            RelayMode::Copy => "copy",
            RelayMode::Auto => "auto",
            RelayMode::Uring => "uring",
            RelayMode::Sockmap => "sockmap",
        })
    }
}

/// An upstream: `"host:port"` or `{ address: "host:port", weight: 3, backup: true }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawUpstream {
    /// Where to connect.
    pub address: HostPort,
    /// Share of new sessions relative to the route's other upstreams.
    pub weight: Option<Weight>,
    /// Used only when no primary upstream is available.
    pub backup: bool,
}

/// The map form of an upstream, so unknown keys are still errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamMap {
    address: HostPort,
    weight: Option<Weight>,
    backup: Option<bool>,
}

impl<'de> Deserialize<'de> for RawUpstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Not `#[serde(untagged)]`: its error ("did not match any variant") hides
        // what was wrong. Visiting a string or a map by hand keeps the real error.
        struct UpstreamVisitor;

        impl<'de> Visitor<'de> for UpstreamVisitor {
            type Value = RawUpstream;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"host:port\" or { address: \"host:port\", weight: N, backup: true }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawUpstream, E> {
                Ok(RawUpstream { address: v.parse().map_err(E::custom)?, weight: None, backup: false })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawUpstream, A::Error> {
                let m = UpstreamMap::deserialize(MapAccessDeserializer::new(map))?;
                Ok(RawUpstream { address: m.address, weight: m.weight, backup: m.backup.unwrap_or(false) })
            }
        }

        d.deserialize_any(UpstreamVisitor)
    }
}

/// The pool keys of a route or of `defaults:` (the same field names in both).
macro_rules! pool_of {
    ($ty:ty) => {
        impl $ty {
            /// Its upstream-pool keys.
            pub fn pool(&self) -> RawPool {
                RawPool {
                    balance: self.balance,
                    retries: self.retries,
                    health_check: self.health_check.clone(),
                    outlier_detection: self.outlier_detection.clone(),
                    when_all_down: self.when_all_down,
                    resolve_interval: self.resolve_interval,
                    proxy_protocol: self.proxy_protocol,
                    accept_proxy_protocol: self.accept_proxy_protocol,
                    proxy_protocol_timeout: self.proxy_protocol_timeout,
                    allow: self.allow.clone(),
                    deny: self.deny.clone(),
                }
            }
        }
    };
}
pool_of!(RawDefaults);
pool_of!(RawRoute);
