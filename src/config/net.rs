//! Network values of the config, each checking itself as units.rs's do:
//! upstream `host:port` addresses, listen and `source:` addresses, and the
//! `socket:` keys' keepalive settings and congestion control names.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::units::{CountIn, DurationIn, deserialize_from_str, fmt_duration};

/// An upstream address: an IP literal or a host name, and a port.
/// Host names are resolved when the server starts, not when the file is read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// An IP literal (without brackets) or a DNS name.
    pub host: String,
    /// Never 0.
    pub port: u16,
}

impl HostPort {
    /// The address as a socket address, if the host is an IP literal.
    pub fn as_socket_addr(&self) -> Option<SocketAddr> {
        self.host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid upstream address {s:?}: {why}");
        if let Ok(sa) = s.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(bad("port 0 cannot be connected to"));
            }
            return Ok(HostPort { host: sa.ip().to_string(), port: sa.port() });
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("expected host:port"))?;
        let port: u16 = port.parse().map_err(|_| bad("the port must be a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("port 0 cannot be connected to"));
        }
        if !is_dns_name(host) {
            return Err(bad("expected an IP address or a host name (IPv6 goes in brackets: [::1]:80)"));
        }
        Ok(HostPort { host: host.to_ascii_lowercase(), port })
    }
}

/// True for a syntactically valid DNS name (letters, digits, `-`, `_`, dots; labels ≤ 63).
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A listen address: an IP literal and a port (0 asks the kernel for a free one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenAddr(pub SocketAddr);

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.trim().parse::<SocketAddr>().map(ListenAddr).map_err(|_| {
            format!("invalid socket address {s:?}: expected IP:port, e.g. \"0.0.0.0:8080\" or \"[::]:8080\"")
        })
    }
}

/// A `source:`: the local address of upstream connections. An IP literal
/// without a port (the port is left to `connect`: IP_BIND_ADDRESS_NO_PORT),
/// or `client`: each connection leaves from its client's own IP
/// (IP_TRANSPARENT; the upstream sees the real client, as HAProxy's
/// `usesrc clientip` does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceAddr {
    /// This address.
    Ip(IpAddr),
    /// The client's IP (`source: client`).
    Client,
}

impl SourceAddr {
    /// The fixed address, if it is one (not `client`).
    pub fn ip(self) -> Option<IpAddr> {
        match self {
            SourceAddr::Ip(ip) => Some(ip),
            SourceAddr::Client => None,
        }
    }
}

impl fmt::Display for SourceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceAddr::Ip(ip) => write!(f, "{ip}"),
            SourceAddr::Client => f.write_str("client"),
        }
    }
}

impl FromStr for SourceAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid source address {s:?}: {why}");
        if s.trim() == "client" {
            return Ok(SourceAddr::Client);
        }
        let ip: IpAddr = s.trim().parse().map_err(|_| {
            bad("expected an IP address without a port or brackets, e.g. \"10.0.0.5\" or \"fd00::5\", or `client`")
        })?;
        if ip.is_unspecified() {
            return Err(bad(
                "the unspecified address lets the kernel choose, which is what leaving `source:` out does",
            ));
        }
        if ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
            return Err(bad("a connection's local address must be a unicast address"));
        }
        Ok(SourceAddr::Ip(ip))
    }
}

/// TCP keepalive: off, or probes after `idle` without traffic, every
/// `interval`, giving up after `count` unanswered probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keepalive {
    /// SO_KEEPALIVE off.
    Off,
    /// SO_KEEPALIVE on with these timings.
    On {
        /// TCP_KEEPIDLE.
        idle: Duration,
        /// TCP_KEEPINTVL.
        interval: Duration,
        /// TCP_KEEPCNT.
        count: u32,
    },
}

/// `keepalive: true` means these.
pub const DEFAULT_KEEPALIVE: Keepalive =
    Keepalive::On { idle: Duration::from_secs(60), interval: Duration::from_secs(10), count: 6 };

/// The kernel takes keepalive times in whole seconds, 1 to 32767.
type KeepaliveSecs = DurationIn<1000, 32_767_000>;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeepaliveMap {
    idle: Option<KeepaliveSecs>,
    interval: Option<KeepaliveSecs>,
    count: Option<CountIn<1, 127>>,
}

impl<'de> Deserialize<'de> for Keepalive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Keepalive;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("false, true, or { idle: 60s, interval: 10s, count: 6 }")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Keepalive, E> {
                Ok(if v { DEFAULT_KEEPALIVE } else { Keepalive::Off })
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Keepalive, A::Error> {
                let m = KeepaliveMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let Keepalive::On { idle, interval, count } = DEFAULT_KEEPALIVE else {
                    unreachable!("the default keepalive is on")
                };
                Ok(Keepalive::On {
                    idle: m.idle.map_or(idle, |d| d.get()),
                    interval: m.interval.map_or(interval, |d| d.get()),
                    count: m.count.map_or(count, |c| c.get() as u32),
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for Keepalive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keepalive::Off => f.write_str("false"),
            Keepalive::On { idle, interval, count } => {
                write!(f, "{{ idle: {}, interval: {}, count: {count} }}", fmt_duration(*idle), fmt_duration(*interval))
            }
        }
    }
}

/// A congestion control algorithm's name (`bbr`, `cubic`): checked against
/// the kernel's list when the server starts, not here.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CongestionName(pub String);

impl FromStr for CongestionName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // TCP_CA_NAME_MAX is 16 including the terminating NUL.
        if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(format!(
                "invalid congestion control name {s:?}: expected a kernel name such as \"bbr\" or \"cubic\""
            ));
        }
        Ok(CongestionName(s.to_owned()))
    }
}

impl fmt::Display for CongestionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

deserialize_from_str!(HostPort, "an upstream address \"host:port\"");
deserialize_from_str!(ListenAddr, "a listen address \"IP:port\"");
deserialize_from_str!(SourceAddr, "a source address such as \"10.0.0.5\", or `client`");
deserialize_from_str!(CongestionName, "a congestion control name such as \"bbr\"");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_addresses() {
        let hp = "127.0.0.1:8000".parse::<HostPort>().unwrap();
        assert_eq!(hp.as_socket_addr(), Some("127.0.0.1:8000".parse().unwrap()));
        let hp = "[::1]:80".parse::<HostPort>().unwrap();
        assert_eq!(hp.to_string(), "[::1]:80");
        let hp = "App.Internal:8000".parse::<HostPort>().unwrap();
        assert_eq!((hp.host.as_str(), hp.port), ("app.internal", 8000));
        assert!("app.internal".parse::<HostPort>().is_err());
        assert!("app.internal:0".parse::<HostPort>().is_err());
        assert!("app internal:80".parse::<HostPort>().is_err());
        assert!("::1:80".parse::<HostPort>().is_err());
        assert!("0.0.0.0:80800".parse::<HostPort>().is_err());
    }

    #[test]
    fn keepalive_is_a_bool_or_a_map() {
        let k: Keepalive = serde_yaml::from_str("false").unwrap();
        assert_eq!(k, Keepalive::Off);
        let k: Keepalive = serde_yaml::from_str("true").unwrap();
        assert_eq!(k, DEFAULT_KEEPALIVE);
        let k: Keepalive = serde_yaml::from_str("{ idle: 30s, count: 3 }").unwrap();
        assert_eq!(k, Keepalive::On { idle: Duration::from_secs(30), interval: Duration::from_secs(10), count: 3 });
        assert_eq!(k.to_string(), "{ idle: 30s, interval: 10s, count: 3 }");
        assert!(serde_yaml::from_str::<Keepalive>("{ idle: 500ms }").is_err(), "whole seconds only");
        assert!(serde_yaml::from_str::<Keepalive>("{ idel: 5s }").is_err(), "unknown keys are errors");
    }

    #[test]
    fn congestion_names() {
        assert!("bbr".parse::<CongestionName>().is_ok());
        assert!("".parse::<CongestionName>().is_err());
        assert!("a very long algorithm".parse::<CongestionName>().is_err());
    }

    #[test]
    fn source_addresses_are_unicast_ip_literals_without_a_port() {
        assert_eq!("10.0.0.5".parse::<SourceAddr>().unwrap().ip(), Some(IpAddr::from([10, 0, 0, 5])));
        assert!("fd00::5".parse::<SourceAddr>().unwrap().ip().unwrap().is_ipv6());
        assert_eq!("client".parse::<SourceAddr>().unwrap(), SourceAddr::Client);
        assert_eq!(SourceAddr::Client.to_string(), "client");
        assert!("Client".parse::<SourceAddr>().is_err(), "keywords are lowercase");
        assert!("10.0.0.5:80".parse::<SourceAddr>().unwrap_err().contains("without a port"));
        assert!("[::1]".parse::<SourceAddr>().is_err());
        assert!("host.example".parse::<SourceAddr>().is_err());
        assert!("0.0.0.0".parse::<SourceAddr>().unwrap_err().contains("unspecified"));
        assert!("::".parse::<SourceAddr>().is_err());
        assert!("224.0.0.1".parse::<SourceAddr>().unwrap_err().contains("unicast"));
    }

    #[test]
    fn listen_addresses_are_ip_literals() {
        assert!("0.0.0.0:8080".parse::<ListenAddr>().is_ok());
        assert!("[::]:0".parse::<ListenAddr>().is_ok());
        assert!("localhost:8080".parse::<ListenAddr>().unwrap_err().contains("invalid socket address"));
        assert!("0.0.0.0:80800".parse::<ListenAddr>().is_err());
    }
}
