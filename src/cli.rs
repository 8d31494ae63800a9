//! The command line (clap derive): the subcommands and flags `sluice --help`
//! shows, and how its flags turn into a `Config`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, ConfigError, HostPort, RelayMode, Workers};

/// The default config file, relative to the working directory.
pub const DEFAULT_CONFIG: &str = "proxy.yaml";

/// Where the full reference is: the one line every `--help` ends with, short
/// enough that `wrap_help` never breaks it. (A macro, not a const, so
/// `concat!` can join it to the main help text.)
macro_rules! reference {
    () => {
        "Reference: docs/configuration.md, docs/observability.md, docs/operations.md (source tree)"
    };
}

/// sluice: a zero-copy TCP (layer 4) reverse proxy for Linux.
///
/// Accepts TCP connections on each route's listen address and relays them
/// byte for byte to the route's upstreams, through splice(2) pipes so the
/// bytes never enter user space (or through a plain copy with --relay copy).
#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    after_help = concat!("\
Examples:
  sluice -c proxy.yaml                      run the routes in proxy.yaml
  sluice --listen 127.0.0.1:8080 --upstream 127.0.0.1:8000
                                            one route, no file
  sluice check -c proxy.yaml                validate and print the effective routes

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
Signals: SIGTERM makes /readyz 503, accepts for drain_grace more, then lets sessions finish for drain_timeout;
SIGINT skips the grace; a second signal stops at once; SIGHUP reloads.

", reference!())
)]
pub struct Cli {
    /// What to do (default: run the proxy).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Config file [default: ./proxy.yaml].
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Run one route without a config file: accept clients on ADDR (IP:port; port 0 picks a free one).
    #[arg(long, value_name = "ADDR", conflicts_with = "config", requires = "upstream")]
    pub listen: Option<SocketAddr>,

    /// An upstream for --listen (host:port); repeat for more, used round robin.
    #[arg(long, value_name = "ADDR", requires = "listen")]
    pub upstream: Vec<HostPort>,

    /// Worker threads, each with its own event loop and SO_REUSEPORT listener [config: workers].
    #[arg(long, value_name = "N|auto", global = true)]
    pub workers: Option<Workers>,

    /// How bytes are moved [config: relay].
    #[arg(long, value_enum, global = true)]
    pub relay: Option<RelayMode>,

    /// Bytes each splice pipe starts at (bulk flows grow theirs) and per copy buffer, e.g. 64KiB [config: pipe_size].
    #[arg(long, value_name = "SIZE", global = true)]
    pub pipe_size: Option<crate::config::units::SizeIn<4096, { 16 << 20 }>>,

    /// Log level: error, warn, info, debug or trace [default: info; RUST_LOG is honoured when unset].
    #[arg(long, value_name = "LEVEL", global = true)]
    pub log: Option<log::LevelFilter>,

    /// Admin port (loopback): /metrics, /stats, /healthz, /readyz [config: admin.listen].
    /// For `stats`: where to read from [default: the config's admin.listen, else 127.0.0.1:9901].
    #[arg(long, value_name = "ADDR", global = true)]
    pub admin: Option<SocketAddr>,

    /// Keep accepting this long after SIGTERM, /readyz saying 503 meanwhile, e.g. 5s or 0s [config: drain_grace].
    #[arg(long, value_name = "DURATION", global = true)]
    pub drain_grace: Option<crate::config::units::DurationIn<0, 600_000>>,

    /// Listen on this Unix socket for a successor (`--takeover`) [config: control_socket].
    #[arg(long, value_name = "PATH", global = true)]
    pub control_socket: Option<PathBuf>,

    /// Take the listeners over from the sluice running on the control socket, then tell it to drain and exit
    /// (a new binary or worker count without dropping a connection).
    #[arg(long)]
    pub takeover: bool,

    /// Don't write the access log (one line per finished session) [config: log.access].
    #[arg(long, global = true)]
    pub no_access_log: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config file and print the effective settings (defaults merged); exit 0 or 2.
    #[command(after_help = reference!())]
    Check,
    /// Live per-route table from the admin port's /stats, with latency bars.
    #[command(after_help = reference!())]
    Stats {
        /// Redraw every SECS seconds until interrupted.
        #[arg(long, value_name = "SECS")]
        watch: Option<f64>,
        /// Show this route's latency distribution [default: the busiest route].
        #[arg(long, value_name = "NAME")]
        route: Option<String>,
    },
    /// Ask a running sluice's admin port for PATH; exit 0 on HTTP 200, else 1 (container health checks).
    #[command(after_help = reference!())]
    Probe {
        /// `/readyz` (accepting, not draining) or `/healthz` (the process runs).
        #[arg(default_value = "/readyz", value_parser = ["/readyz", "/healthz"])]
        path: String,
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 2.0)]
        timeout: f64,
    },
    /// Audit this machine's kernel settings and limits for the config; prints the fixes.
    #[command(after_help = reference!())]
    Doctor {
        /// Read kernel settings from this directory instead of /proc (for tests).
        #[arg(long, value_name = "DIR", hide = true, default_value = "/proc")]
        proc_root: PathBuf,
    },
}

impl Cli {
    /// The configuration these flags describe: `--listen`/`--upstream`, or
    /// the config file, with `--workers` and `--relay` applied on top.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let mut config = match self.listen {
            Some(listen) => Config::single_route(listen, self.upstream.clone())?,
            None => config::load_file(self.config.as_deref().unwrap_or(DEFAULT_CONFIG.as_ref()))?,
        };
        if let Some(w) = self.workers {
            config.workers = w;
        }
        if let Some(p) = self.pipe_size {
            config.pipe_size = p.get() as usize;
        }
        if let Some(r) = self.relay {
            config.relay = r;
        }
        if let Some(g) = self.drain_grace {
            config.drain_grace = g.get();
        }
        if let Some(p) = &self.control_socket {
            config.control_socket = Some(p.clone());
        }
        if self.takeover && config.control_socket.is_none() {
            return Err(ConfigError::Invalid {
                origin: config.origin(),
                location: None,
                field: "--takeover".to_owned(),
                message: "the configuration names no control_socket (nor does --control-socket): there is no \
                          running sluice to take over from"
                    .to_owned(),
            });
        }
        if let Some(listen) = self.admin {
            if !listen.ip().is_loopback() {
                return Err(ConfigError::Invalid {
                    origin: "command line".to_owned(),
                    location: None,
                    field: "--admin".to_owned(),
                    message: format!(
                        "{listen} is not loopback: the admin port has no authentication; \
                         use admin: {{ listen: ..., allow_remote: true }} in the config file to expose it"
                    ),
                });
            }
            config.admin = Some(config::Admin { listen, allow_remote: false });
        }
        if self.no_access_log {
            config.log.access = false;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn listen_and_upstreams() {
        let cli = Cli::try_parse_from([
            "sluice",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:1",
            "--upstream",
            "localhost:2",
            "--relay",
            "copy",
            "--workers",
            "2",
        ])
        .unwrap();
        let c = cli.config().unwrap();
        assert_eq!(c.routes[0].upstreams.len(), 2);
        assert_eq!(c.relay, RelayMode::Copy);
        assert_eq!(c.workers, Workers::Count(2));
    }

    #[test]
    fn usage_errors() {
        assert!(Cli::try_parse_from(["sluice", "--listen", "127.0.0.1:0"]).is_err());
        assert!(Cli::try_parse_from(["sluice", "--upstream", "127.0.0.1:1"]).is_err());
        assert!(
            Cli::try_parse_from(["sluice", "--listen", "127.0.0.1:0", "-c", "x.yaml", "--upstream", "a:1"]).is_err()
        );
        assert!(Cli::try_parse_from(["sluice", "--relay", "zerocopy"]).is_err());
        assert!(Cli::try_parse_from(["sluice", "--workers", "0"]).is_err());
    }

    #[test]
    fn check_takes_the_config_either_side() {
        let a = Cli::try_parse_from(["sluice", "check", "-c", "x.yaml"]).unwrap();
        let b = Cli::try_parse_from(["sluice", "-c", "x.yaml", "check"]).unwrap();
        assert_eq!(a.config, b.config);
        assert!(matches!(a.command, Some(Command::Check)));
    }
}
