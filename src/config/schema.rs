//! The raw shape of `proxy.yaml`, exactly as written by the user.
//!
//! Every struct denies unknown fields, every value that can be checked alone
//! is a typed unit from `units.rs`. Optional fields stay `Option` here: the
//! defaults are filled in by `validate.rs`, in one place.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor, value::MapAccessDeserializer};

use super::units::{CountIn, DurationIn, HostPort, ListenAddr, SizeIn, Workers};

/// `connect_timeout`: 1 ms to 5 minutes.
pub type ConnectTimeout = DurationIn<1, 300_000>;
/// `idle_timeout`: 10 ms to 30 days.
pub type IdleTimeout = DurationIn<10, { 30 * 86_400_000 }>;
/// `drain_timeout`: 0 (close at once) to 1 hour.
pub type DrainTimeout = DurationIn<0, 3_600_000>;
/// `pipe_size`: one page to 16 MiB (the kernel clamps further to `fs.pipe-max-size`).
pub type PipeSize = SizeIn<4096, { 16 << 20 }>;
/// `max_connections`: 1 to 10 million.
pub type MaxConnections = CountIn<1, 10_000_000>;
/// An upstream's `weight`: 1 to 256.
pub type Weight = CountIn<1, 256>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Worker threads: `auto` or a count.
    pub workers: Option<Workers>,
    /// Relay mode for every route.
    pub relay: Option<RelayMode>,
    /// Size asked of the kernel for each splice pipe.
    pub pipe_size: Option<PipeSize>,
    /// Sessions allowed at once, all routes together.
    pub max_connections: Option<MaxConnections>,
    /// How long running sessions may take to finish after SIGTERM.
    pub drain_timeout: Option<DrainTimeout>,
    /// Settings every route inherits unless it sets its own.
    #[serde(default)]
    pub defaults: RawDefaults,
    /// The routes; at least one.
    pub routes: Option<Vec<RawRoute>>,
}

/// `defaults:`: the per-route settings a route inherits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// Time allowed for one upstream connect attempt.
    pub connect_timeout: Option<ConnectTimeout>,
    /// A session with no byte either way for this long is closed.
    pub idle_timeout: Option<IdleTimeout>,
}

/// One entry of `routes:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Used in logs and (later) metrics labels.
    pub name: String,
    /// Where clients connect.
    pub listen: ListenAddr,
    /// Where sessions go.
    pub upstreams: Vec<RawUpstream>,
    /// Overrides `defaults.connect_timeout`.
    pub connect_timeout: Option<ConnectTimeout>,
    /// Overrides `defaults.idle_timeout`.
    pub idle_timeout: Option<IdleTimeout>,
}

/// How bytes are moved between the two sockets of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// socket → pipe → socket with splice(2): the bytes never enter user space.
    Splice,
    /// read(2) into a buffer, write(2) out of it.
    Copy,
}

impl fmt::Display for RelayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RelayMode::Splice => "splice",
            RelayMode::Copy => "copy",
        })
    }
}

/// An upstream: `"host:port"` or `{ address: "host:port", weight: 3 }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawUpstream {
    /// Where to connect.
    pub address: HostPort,
    /// Share of new sessions relative to the route's other upstreams.
    pub weight: Option<Weight>,
}

/// The map form of an upstream, so unknown keys are still errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamMap {
    address: HostPort,
    weight: Option<Weight>,
}

impl<'de> Deserialize<'de> for RawUpstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Not `#[serde(untagged)]`: its error ("did not match any variant") hides
        // what was wrong. Visiting a string or a map by hand keeps the real error.
        struct UpstreamVisitor;

        impl<'de> Visitor<'de> for UpstreamVisitor {
            type Value = RawUpstream;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"host:port\" or { address: \"host:port\", weight: N }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawUpstream, E> {
                Ok(RawUpstream {
                    address: v.parse().map_err(E::custom)?,
                    weight: None,
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawUpstream, A::Error> {
                let m = UpstreamMap::deserialize(MapAccessDeserializer::new(map))?;
                Ok(RawUpstream {
                    address: m.address,
                    weight: m.weight,
                })
            }
        }

        d.deserialize_any(UpstreamVisitor)
    }
}
