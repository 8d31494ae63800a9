//! Configuration: the validated, defaults-merged `Config` the server runs
//! from, and the error type every config problem is reported with.
//!
//! `schema.rs` is what the file looks like, `units.rs` checks single values,
//! `validate.rs` turns the raw file into a `Config`, `load.rs` owns every
//! call to serde_yaml and puts line and column on each error.

mod load;
mod schema;
pub mod units;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use load::{load_file, parse_str};
pub use schema::RelayMode;
pub use units::{HostPort, Workers};

/// Default `connect_timeout` of a route.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default `idle_timeout` of a route.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Default `drain_timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `pipe_size`: 64 KiB, the kernel's own default pipe size.
pub const DEFAULT_PIPE_SIZE: usize = 64 << 10;
/// Default `max_connections`, all routes together.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Default relay mode.
pub const DEFAULT_RELAY: RelayMode = RelayMode::Splice;

/// A validated configuration with every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where it came from (`None` for `--listen`/`--upstream`), for messages.
    pub source: Option<PathBuf>,
    /// Worker threads.
    pub workers: Workers,
    /// How sessions move bytes.
    pub relay: RelayMode,
    /// Bytes asked of the kernel per splice pipe.
    pub pipe_size: usize,
    /// Sessions allowed at once, all routes together.
    pub max_connections: usize,
    /// Time running sessions get to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// At least one route; listen addresses don't collide.
    pub routes: Vec<Route>,
}

/// One listen address and where its sessions go.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Unique among routes; used in logs.
    pub name: String,
    /// Where clients connect (port 0: the kernel picks).
    pub listen: SocketAddr,
    /// At least one; no address twice.
    pub upstreams: Vec<UpstreamSpec>,
    /// Time allowed for one upstream connect attempt.
    pub connect_timeout: Duration,
    /// A session with no byte either way for this long is closed.
    pub idle_timeout: Duration,
}

/// An upstream as configured (host names not resolved yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// `host:port`.
    pub address: HostPort,
    /// 1..=256; share of new sessions relative to the route's other upstreams.
    pub weight: u32,
}

impl Config {
    /// A one-route configuration from the command line (`--listen`, `--upstream`).
    pub fn single_route(
        listen: SocketAddr,
        upstreams: Vec<HostPort>,
    ) -> Result<Config, ConfigError> {
        validate::single_route(listen, upstreams).map_err(|e| ConfigError::Invalid {
            origin: "command line".to_owned(),
            location: None,
            field: e.field,
            message: e.message,
        })
    }

    /// Where the configuration came from, for log lines.
    pub fn origin(&self) -> String {
        self.source
            .as_ref()
            .map_or_else(|| "command line".to_owned(), |p| p.display().to_string())
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

fn invalid_message(
    origin: &str,
    location: &Option<Location>,
    field: &str,
    message: &str,
) -> String {
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

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route {:?} on {}", self.name, self.listen)
    }
}

impl Config {
    /// The effective configuration as YAML (defaults merged), for `sluice check`.
    /// `workers_now` is what `workers: auto` means on this machine.
    pub fn describe(&self, workers_now: usize) -> String {
        use std::fmt::Write as _;
        use units::{fmt_duration, fmt_size};
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# {}: configuration is valid; effective settings with defaults merged",
            self.origin()
        );
        match self.workers {
            Workers::Auto => {
                let _ = writeln!(s, "workers: auto  # {workers_now} on this machine");
            }
            Workers::Count(n) => {
                let _ = writeln!(s, "workers: {n}");
            }
        }
        let _ = writeln!(s, "relay: {}", self.relay);
        let _ = writeln!(s, "pipe_size: {}", fmt_size(self.pipe_size as u64));
        let _ = writeln!(s, "max_connections: {}", self.max_connections);
        let _ = writeln!(s, "drain_timeout: {}", fmt_duration(self.drain_timeout));
        let _ = writeln!(s, "routes:");
        for r in &self.routes {
            let _ = writeln!(s, "  - name: {}", r.name);
            let _ = writeln!(s, "    listen: {}", r.listen);
            let _ = writeln!(s, "    upstreams:");
            for u in &r.upstreams {
                let _ = writeln!(
                    s,
                    "      - {{ address: \"{}\", weight: {} }}",
                    u.address, u.weight
                );
            }
            let _ = writeln!(
                s,
                "    connect_timeout: {}",
                fmt_duration(r.connect_timeout)
            );
            let _ = writeln!(s, "    idle_timeout: {}", fmt_duration(r.idle_timeout));
        }
        s
    }
}
