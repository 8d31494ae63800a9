//! Typed config values that carry their own validation: durations and sizes
//! with units, bounded ranges, socket and `host:port` addresses, worker counts.
//!
//! Every check that concerns one value lives here, inside `Deserialize`, so
//! serde_yaml attaches the line and column of the offending value to the
//! error for free. Cross-field rules live in `validate.rs`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A duration parsed from a string with units (`250ms`, `3s`, `10m`, `1h 30m`)
/// and checked to lie within `MIN_MS..=MAX_MS` milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationIn<const MIN_MS: u64, const MAX_MS: u64>(Duration);

impl<const MIN_MS: u64, const MAX_MS: u64> DurationIn<MIN_MS, MAX_MS> {
    /// Wraps a duration that the caller knows to be in range (defaults, CLI values).
    ///
    /// # Panics
    /// In debug builds, if the value is out of range: that is a bug in a default.
    pub const fn new_const(d: Duration) -> Self {
        debug_assert!(d.as_millis() >= MIN_MS as u128 && d.as_millis() <= MAX_MS as u128);
        Self(d)
    }

    /// The duration itself.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl<const MIN_MS: u64, const MAX_MS: u64> FromStr for DurationIn<MIN_MS, MAX_MS> {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let d = humantime::parse_duration(s.trim()).map_err(|e| {
            format!("invalid duration {s:?}: {e} (write it with a unit, e.g. \"250ms\", \"3s\", \"10m\")")
        })?;
        let (min, max) = (Duration::from_millis(MIN_MS), Duration::from_millis(MAX_MS));
        if d < min || d > max {
            return Err(format!(
                "duration {s:?} is out of range: it must be between {} and {}",
                fmt_duration(min),
                fmt_duration(max)
            ));
        }
        Ok(Self(d))
    }
}

impl<const MIN_MS: u64, const MAX_MS: u64> fmt::Display for DurationIn<MIN_MS, MAX_MS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&fmt_duration(self.0))
    }
}

/// Formats a duration the way a user would write it in the config (`3s`, `10m`, `250ms`).
pub fn fmt_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// A byte size parsed from a string with units (`64KiB`, `1MiB`, `65536`) and
/// checked to lie within `MIN..=MAX` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeIn<const MIN: u64, const MAX: u64>(u64);

impl<const MIN: u64, const MAX: u64> SizeIn<MIN, MAX> {
    /// Wraps a size the caller knows to be in range.
    pub const fn new_const(n: u64) -> Self {
        debug_assert!(n >= MIN && n <= MAX);
        Self(n)
    }

    /// The size in bytes.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<const MIN: u64, const MAX: u64> FromStr for SizeIn<MIN, MAX> {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let n = parse_size::Config::new()
            .with_binary()
            .parse_size(s.trim())
            .map_err(|e| format!("invalid size {s:?}: {e} (write it with a unit, e.g. \"64KiB\", \"1MiB\")"))?;
        if n < MIN || n > MAX {
            return Err(format!(
                "size {s:?} is out of range: it must be between {} and {}",
                fmt_size(MIN),
                fmt_size(MAX)
            ));
        }
        Ok(Self(n))
    }
}

impl<const MIN: u64, const MAX: u64> fmt::Display for SizeIn<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&fmt_size(self.0))
    }
}

/// Formats a size with the largest binary unit that divides it exactly.
pub fn fmt_size(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, scale) in UNITS {
        if n >= scale && n % scale == 0 {
            return format!("{}{unit}", n / scale);
        }
    }
    format!("{n}B")
}

/// An integer checked to lie within `MIN..=MAX` (connection limits, weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountIn<const MIN: u64, const MAX: u64>(u64);

impl<const MIN: u64, const MAX: u64> CountIn<MIN, MAX> {
    /// Wraps a count the caller knows to be in range.
    pub const fn new_const(n: u64) -> Self {
        debug_assert!(n >= MIN && n <= MAX);
        Self(n)
    }

    /// The count.
    pub fn get(self) -> u64 {
        self.0
    }

    fn check(n: u64) -> Result<Self, String> {
        if n < MIN || n > MAX {
            return Err(format!("{n} is out of range: it must be between {MIN} and {MAX}"));
        }
        Ok(Self(n))
    }
}

impl<const MIN: u64, const MAX: u64> fmt::Display for CountIn<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A share in percent, `"90%"` (or a bare `90`), 1 to 100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Percent(u8);

impl Percent {
    /// The share, 1..=100.
    pub fn get(self) -> u8 {
        self.0
    }

    /// `self` of `whole`.
    pub fn of(self, whole: u64) -> u64 {
        whole.saturating_mul(u64::from(self.0)) / 100
    }
}

impl std::str::FromStr for Percent {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let digits = s.trim().strip_suffix('%').unwrap_or(s.trim()).trim();
        match digits.parse::<u8>() {
            Ok(n @ 1..=100) => Ok(Percent(n)),
            _ => Err(format!("invalid share {s:?}: expected a percentage from 1% to 100%, e.g. \"90%\"")),
        }
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// How many worker threads to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workers {
    /// One per CPU this process may run on.
    Auto,
    /// Exactly this many (1..=1024).
    Count(u16),
}

/// The largest worker count we accept; more threads than that on one box is a typo.
pub const MAX_WORKERS: u16 = 1024;

impl FromStr for Workers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Workers::Auto);
        }
        match s.parse::<u16>() {
            Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(Workers::Count(n)),
            _ => Err(format!("invalid worker count {s:?}: expected \"auto\" or a number from 1 to {MAX_WORKERS}")),
        }
    }
}

impl fmt::Display for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workers::Auto => f.write_str("auto"),
            Workers::Count(n) => n.fmt(f),
        }
    }
}

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

/// A `source:` address: an IP literal without a port, the local address of
/// upstream connections. The port is left to `connect` (IP_BIND_ADDRESS_NO_PORT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceAddr(pub IpAddr);

impl FromStr for SourceAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid source address {s:?}: {why}");
        let ip: IpAddr = s
            .trim()
            .parse()
            .map_err(|_| bad("expected an IP address without a port or brackets, e.g. \"10.0.0.5\" or \"fd00::5\""))?;
        if ip.is_unspecified() {
            return Err(bad(
                "the unspecified address lets the kernel choose, which is what leaving `source:` out does",
            ));
        }
        if ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
            return Err(bad("a connection's local address must be a unicast address"));
        }
        Ok(SourceAddr(ip))
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

/// Deserializes any `FromStr<Err = String>` value from a YAML scalar. Numbers
/// are accepted too (`pipe_size: 65536`, `workers: 4`) and parsed from their text.
struct FromStrVisitor<T>(std::marker::PhantomData<T>, &'static str);

impl<T: FromStr<Err = String>> Visitor<'_> for FromStrVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

macro_rules! deserialize_from_str {
    ($ty:ty, $expecting:literal $(, const $c:ident)*) => {
        impl<'de $(, const $c: u64)*> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(FromStrVisitor(std::marker::PhantomData, $expecting))
            }
        }
    };
}

deserialize_from_str!(DurationIn<MIN, MAX>, "a duration with a unit, e.g. \"3s\"", const MIN, const MAX);
deserialize_from_str!(SizeIn<MIN, MAX>, "a size with a unit, e.g. \"64KiB\"", const MIN, const MAX);
deserialize_from_str!(Workers, "\"auto\" or a number of workers");
deserialize_from_str!(HostPort, "an upstream address \"host:port\"");
deserialize_from_str!(ListenAddr, "a listen address \"IP:port\"");
deserialize_from_str!(SourceAddr, "a source address such as \"10.0.0.5\"");
deserialize_from_str!(CongestionName, "a congestion control name such as \"bbr\"");
deserialize_from_str!(Percent, "a percentage such as \"90%\"");
deserialize_from_str!(crate::acl::Cidr, "an address block such as \"10.0.0.0/8\" or \"fd00::/8\"");

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for CountIn<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        Self::check(n).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Timeout = DurationIn<1, 300_000>;

    #[test]
    fn percentages() {
        assert_eq!("90%".parse::<Percent>().map(Percent::get), Ok(90));
        assert_eq!("100".parse::<Percent>().map(Percent::get), Ok(100));
        assert!(
            "0%".parse::<Percent>().is_err() && "101%".parse::<Percent>().is_err() && "x".parse::<Percent>().is_err()
        );
        assert_eq!("90%".parse::<Percent>().unwrap().of(20_000), 18_000);
    }

    #[test]
    fn durations_need_units_and_range() {
        assert_eq!("250ms".parse::<Timeout>().map(|d| d.get()), Ok(Duration::from_millis(250)));
        assert_eq!("3s".parse::<Timeout>().map(|d| d.get()), Ok(Duration::from_secs(3)));
        assert!("0s".parse::<Timeout>().unwrap_err().contains("out of range"));
        assert!("10m".parse::<Timeout>().unwrap_err().contains("between 1ms and 5m"));
        assert!("3 parsecs".parse::<Timeout>().unwrap_err().contains("invalid duration"));
        assert!("3".parse::<Timeout>().is_err());
    }

    #[test]
    fn durations_display_as_written() {
        assert_eq!(fmt_duration(Duration::from_secs(600)), "10m");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(fmt_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn sizes_are_binary() {
        type Pipe = SizeIn<4096, { 16 << 20 }>;
        assert_eq!("64KiB".parse::<Pipe>().map(|s| s.get()), Ok(65536));
        assert_eq!("64k".parse::<Pipe>().map(|s| s.get()), Ok(65536));
        assert_eq!("1MiB".parse::<Pipe>().map(|s| s.get()), Ok(1 << 20));
        assert!("1KiB".parse::<Pipe>().unwrap_err().contains("between 4KiB and 16MiB"));
        assert!("lots".parse::<Pipe>().is_err());
        assert_eq!(fmt_size(65536), "64KiB");
        assert_eq!(fmt_size(1000), "1000B");
    }

    #[test]
    fn workers_auto_or_count() {
        assert_eq!("auto".parse::<Workers>(), Ok(Workers::Auto));
        assert_eq!("4".parse::<Workers>(), Ok(Workers::Count(4)));
        assert!("0".parse::<Workers>().is_err());
        assert!("5000".parse::<Workers>().is_err());
    }

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
        assert_eq!("10.0.0.5".parse::<SourceAddr>().unwrap().0, IpAddr::from([10, 0, 0, 5]));
        assert!("fd00::5".parse::<SourceAddr>().unwrap().0.is_ipv6());
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
