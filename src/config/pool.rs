//! The upstream-pool settings of a route: how sessions are balanced, how
//! many connect retries, active health checks, passive outlier ejection,
//! what happens when every upstream is down, DNS re-resolution, the PROXY
//! protocol both ways, and access lists. Raw shapes (as written) and their
//! validated forms with defaults.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::units::{CountIn, DurationIn, fmt_duration};
use crate::acl::Cidr;
pub use crate::proxy_protocol::Version as ProxyVersion;

/// How a route picks the upstream of a new session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Smooth weighted round robin (nginx's): exact shares, interleaved.
    #[default]
    RoundRobin,
    /// The fewest active sessions per unit of weight (all workers together).
    LeastConn,
    /// Power of two choices: two at random (by weight), the less loaded one.
    Random,
    /// Consistent hashing of the client IP (a ring with virtual nodes).
    HashClientIp,
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::Random => "random",
            Balance::HashClientIp => "hash_client_ip",
        })
    }
}

/// What to do with a client when no upstream is available.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenAllDown {
    /// Close the client at once (counted as `no_upstream`).
    #[default]
    Reject,
    /// Ignore health and ejections and try the upstreams anyway.
    TryAnyway,
}

impl fmt::Display for WhenAllDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WhenAllDown::Reject => "reject",
            WhenAllDown::TryAnyway => "try_anyway",
        })
    }
}

/// `false`, `true` (the defaults) or a map of settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Toggle<T> {
    /// Turned off.
    Off,
    /// Turned on with these settings (unset ones take defaults).
    On(T),
}

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for Toggle<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Default> Visitor<'de> for V<T> {
            type Value = Toggle<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("false, true, or a map of settings")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Toggle<T>, E> {
                Ok(if v { Toggle::On(T::default()) } else { Toggle::Off })
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Toggle<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Toggle::On)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// `interval`: 100 ms to 1 hour.
pub type CheckInterval = DurationIn<100, 3_600_000>;
/// `timeout`: 10 ms to 1 minute.
pub type CheckTimeout = DurationIn<10, 60_000>;
/// `rise` / `fall`: 1 to 100 checks.
pub type CheckCount = CountIn<1, 100>;
/// `send` / `expect`: at most 4 KiB.
pub const MAX_CHECK_BYTES: usize = 4096;

/// `health_check:` as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Time between checks of one upstream (jittered by ±10%).
    pub interval: Option<CheckInterval>,
    /// Time one check may take (connect, send, reply).
    pub timeout: Option<CheckTimeout>,
    /// Good checks in a row that bring a down upstream back.
    pub rise: Option<CheckCount>,
    /// Failed checks in a row that take an up upstream out.
    pub fall: Option<CheckCount>,
    /// Bytes to send once connected.
    pub send: Option<String>,
    /// The reply must start with these bytes.
    pub expect: Option<String>,
}

/// Active health checks of a route's upstreams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time between checks of one upstream.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Good checks in a row to come back.
    pub rise: u32,
    /// Failed checks in a row to go down.
    pub fall: u32,
    /// Sent once connected (empty: nothing).
    pub send: Vec<u8>,
    /// Expected prefix of the reply (empty: the connect is the check).
    pub expect: Vec<u8>,
}

/// Defaults of `health_check: true`, HAProxy's `inter 2s rise 2 fall 3` with a 1 s timeout.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Default check timeout.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `rise`.
pub const DEFAULT_RISE: u32 = 2;
/// Default `fall`.
pub const DEFAULT_FALL: u32 = 3;

impl RawHealthCheck {
    /// Fills defaults; an error names the field that is wrong.
    pub fn resolve(&self) -> Result<HealthCheck, (&'static str, String)> {
        let interval = self.interval.map_or(DEFAULT_CHECK_INTERVAL, |d| d.get());
        let timeout = self.timeout.map_or(DEFAULT_CHECK_TIMEOUT.min(interval), |d| d.get());
        if timeout > interval {
            return Err((
                "timeout",
                format!(
                    "health check timeout {} is longer than its interval {}: a check must end before the next starts",
                    fmt_duration(timeout),
                    fmt_duration(interval)
                ),
            ));
        }
        for (field, v) in [("send", &self.send), ("expect", &self.expect)] {
            if v.as_ref().is_some_and(|s| s.len() > MAX_CHECK_BYTES) {
                return Err((field, format!("at most {MAX_CHECK_BYTES} bytes")));
            }
        }
        Ok(HealthCheck {
            interval,
            timeout,
            rise: self.rise.map_or(DEFAULT_RISE, |n| n.get() as u32),
            fall: self.fall.map_or(DEFAULT_FALL, |n| n.get() as u32),
            send: self.send.clone().unwrap_or_default().into_bytes(),
            expect: self.expect.clone().unwrap_or_default().into_bytes(),
        })
    }
}

/// `base_ejection` / `max_ejection`: 100 ms to 1 day.
pub type EjectionTime = DurationIn<100, 86_400_000>;

/// `outlier_detection:` as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// Connect failures in a row (refused, timed out, reset before the first byte) that eject.
    pub consecutive_failures: Option<CountIn<1, 1000>>,
    /// The first ejection's length; the n-th lasts n times as long.
    pub base_ejection: Option<EjectionTime>,
    /// The longest ejection.
    pub max_ejection: Option<EjectionTime>,
    /// At most this share of the route's upstreams is ejected at once (at least one may be).
    pub max_ejected_percent: Option<CountIn<0, 100>>,
}

/// Passive outlier ejection (a circuit breaker per upstream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outlier {
    /// Failures in a row that eject.
    pub consecutive_failures: u32,
    /// First ejection's length.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Share of the route's upstreams that may be ejected at once.
    pub max_ejected_percent: u32,
}

/// Envoy's defaults, except the share: Envoy's 10% ejects nothing but one
/// host of small pools; half of a pool may go while half carries the load.
pub const DEFAULT_OUTLIER: Outlier = Outlier {
    consecutive_failures: 5,
    base_ejection: Duration::from_secs(30),
    max_ejection: Duration::from_secs(300),
    max_ejected_percent: 50,
};

impl RawOutlier {
    /// Fills defaults; an error names the field that is wrong.
    pub fn resolve(&self) -> Result<Outlier, (&'static str, String)> {
        let d = DEFAULT_OUTLIER;
        let o = Outlier {
            consecutive_failures: self.consecutive_failures.map_or(d.consecutive_failures, |n| n.get() as u32),
            base_ejection: self.base_ejection.map_or(d.base_ejection, |t| t.get()),
            max_ejection: self.max_ejection.map_or(d.max_ejection, |t| t.get()),
            max_ejected_percent: self.max_ejected_percent.map_or(d.max_ejected_percent, |n| n.get() as u32),
        };
        if o.max_ejection < o.base_ejection {
            return Err((
                "max_ejection",
                format!(
                    "max_ejection {} is shorter than base_ejection {}",
                    fmt_duration(o.max_ejection),
                    fmt_duration(o.base_ejection)
                ),
            ));
        }
        Ok(o)
    }
}

/// `retries`: 0 to 10 more attempts after the first.
pub type Retries = CountIn<0, 10>;
/// Default `retries`.
pub const DEFAULT_RETRIES: u32 = 2;
/// `resolve_interval`: 0 (resolve only at start and reload) to 1 day.
pub type ResolveInterval = DurationIn<0, 86_400_000>;
/// Default `resolve_interval`.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
/// `proxy_protocol_timeout`: 10 ms to 1 minute.
pub type ProxyHeaderTimeout = DurationIn<10, 60_000>;
/// Default time a client has to send its PROXY header.
pub const DEFAULT_PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(3);

/// The pool settings of a route, defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// How the upstream of a new session is picked.
    pub balance: Balance,
    /// More connect attempts after a failed one, each to another upstream.
    pub retries: u32,
    /// Active checks, if on.
    pub health_check: Option<HealthCheck>,
    /// Passive ejection, if on.
    pub outlier: Option<Outlier>,
    /// No upstream available: refuse, or try anyway.
    pub when_all_down: WhenAllDown,
    /// How often host names are resolved again (zero: never after start).
    pub resolve_interval: Duration,
    /// Send a PROXY header to the upstream.
    pub proxy_protocol: Option<ProxyVersion>,
    /// Read a PROXY header from the client first.
    pub accept_proxy_protocol: bool,
    /// Time the client has to send that header.
    pub proxy_protocol_timeout: Duration,
    /// Access list.
    pub acl: crate::acl::Acl,
}

impl Default for Pool {
    fn default() -> Pool {
        Pool {
            balance: Balance::default(),
            retries: DEFAULT_RETRIES,
            health_check: None,
            outlier: Some(DEFAULT_OUTLIER),
            when_all_down: WhenAllDown::default(),
            resolve_interval: DEFAULT_RESOLVE_INTERVAL,
            proxy_protocol: None,
            accept_proxy_protocol: false,
            proxy_protocol_timeout: DEFAULT_PROXY_HEADER_TIMEOUT,
            acl: crate::acl::Acl::default(),
        }
    }
}

/// The pool keys of a route or of `defaults:`, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawPool {
    /// `balance:`.
    pub balance: Option<Balance>,
    /// `retries:`.
    pub retries: Option<Retries>,
    /// `health_check:`.
    pub health_check: Option<Toggle<RawHealthCheck>>,
    /// `outlier_detection:`.
    pub outlier_detection: Option<Toggle<RawOutlier>>,
    /// `when_all_down:`.
    pub when_all_down: Option<WhenAllDown>,
    /// `resolve_interval:`.
    pub resolve_interval: Option<ResolveInterval>,
    /// `proxy_protocol:`.
    pub proxy_protocol: Option<ProxyVersion>,
    /// `accept_proxy_protocol:`.
    pub accept_proxy_protocol: Option<bool>,
    /// `proxy_protocol_timeout:`.
    pub proxy_protocol_timeout: Option<ProxyHeaderTimeout>,
    /// `allow:`.
    pub allow: Option<Vec<Cidr>>,
    /// `deny:`.
    pub deny: Option<Vec<Cidr>>,
}

impl RawPool {
    /// These settings over `defaults`, key by key, with defaults filled in.
    /// An error names the key (under this route or under `defaults`) that is wrong.
    pub fn resolve(&self, defaults: &RawPool) -> Result<Pool, PoolError> {
        let d = Pool::default();
        let pick = |mine: bool| if mine { PoolErrorAt::Route } else { PoolErrorAt::Defaults };
        let health_check = match (&self.health_check, &defaults.health_check) {
            (Some(t), _) => resolve_toggle(t, pick(true), "health_check", RawHealthCheck::resolve)?,
            (None, Some(t)) => resolve_toggle(t, pick(false), "health_check", RawHealthCheck::resolve)?,
            (None, None) => None,
        };
        let outlier = match (&self.outlier_detection, &defaults.outlier_detection) {
            (Some(t), _) => resolve_toggle(t, pick(true), "outlier_detection", RawOutlier::resolve)?,
            (None, Some(t)) => resolve_toggle(t, pick(false), "outlier_detection", RawOutlier::resolve)?,
            (None, None) => d.outlier,
        };
        Ok(Pool {
            balance: self.balance.or(defaults.balance).unwrap_or(d.balance),
            retries: self.retries.or(defaults.retries).map_or(d.retries, |n| n.get() as u32),
            health_check,
            outlier,
            when_all_down: self.when_all_down.or(defaults.when_all_down).unwrap_or(d.when_all_down),
            resolve_interval: self
                .resolve_interval
                .or(defaults.resolve_interval)
                .map_or(d.resolve_interval, |t| t.get()),
            proxy_protocol: self.proxy_protocol.or(defaults.proxy_protocol),
            accept_proxy_protocol: self.accept_proxy_protocol.or(defaults.accept_proxy_protocol).unwrap_or(false),
            proxy_protocol_timeout: self
                .proxy_protocol_timeout
                .or(defaults.proxy_protocol_timeout)
                .map_or(d.proxy_protocol_timeout, |t| t.get()),
            acl: crate::acl::Acl {
                allow: self.allow.clone().or_else(|| defaults.allow.clone()).unwrap_or_default(),
                deny: self.deny.clone().or_else(|| defaults.deny.clone()).unwrap_or_default(),
            },
        })
    }
}

fn resolve_toggle<R, T>(
    t: &Toggle<R>,
    at: PoolErrorAt,
    key: &'static str,
    f: impl Fn(&R) -> Result<T, (&'static str, String)>,
) -> Result<Option<T>, PoolError> {
    match t {
        Toggle::Off => Ok(None),
        Toggle::On(raw) => f(raw).map(Some).map_err(|(field, message)| PoolError { at, key, field, message }),
    }
}

/// Where a pool setting that broke a rule was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolErrorAt {
    /// In the route.
    Route,
    /// In `defaults:`.
    Defaults,
}

/// A pool setting that broke a rule spanning two of its fields.
#[derive(Debug)]
pub struct PoolError {
    /// Route or defaults.
    pub at: PoolErrorAt,
    /// `health_check` or `outlier_detection`.
    pub key: &'static str,
    /// The field under it.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides_merge_key_by_key() {
        let defaults = RawPool {
            balance: Some(Balance::LeastConn),
            retries: Some(Retries::new_const(4)),
            health_check: Some(Toggle::On(RawHealthCheck::default())),
            ..RawPool::default()
        };
        let route = RawPool { retries: Some(Retries::new_const(0)), ..RawPool::default() };
        let p = route.resolve(&defaults).unwrap();
        assert_eq!((p.balance, p.retries), (Balance::LeastConn, 0));
        let hc = p.health_check.unwrap();
        assert_eq!((hc.interval, hc.timeout, hc.rise, hc.fall), (Duration::from_secs(2), Duration::from_secs(1), 2, 3));
        assert_eq!(p.outlier, Some(DEFAULT_OUTLIER), "outlier detection is on by default");
        let off =
            RawPool { health_check: Some(Toggle::Off), outlier_detection: Some(Toggle::Off), ..RawPool::default() };
        let p = off.resolve(&defaults).unwrap();
        assert_eq!((p.health_check, p.outlier), (None, None), "a route can turn off what defaults turn on");
    }

    #[test]
    fn cross_field_rules_name_the_field() {
        let hc = RawHealthCheck {
            interval: Some(CheckInterval::new_const(Duration::from_secs(1))),
            timeout: Some(CheckTimeout::new_const(Duration::from_secs(2))),
            ..RawHealthCheck::default()
        };
        let raw = RawPool { health_check: Some(Toggle::On(hc)), ..RawPool::default() };
        let e = raw.resolve(&RawPool::default()).unwrap_err();
        assert_eq!((e.at, e.key, e.field), (PoolErrorAt::Route, "health_check", "timeout"));
        let o = RawOutlier {
            base_ejection: Some(EjectionTime::new_const(Duration::from_secs(60))),
            max_ejection: Some(EjectionTime::new_const(Duration::from_secs(10))),
            ..RawOutlier::default()
        };
        let raw = RawPool { outlier_detection: Some(Toggle::On(o)), ..RawPool::default() };
        let e = RawPool::default().resolve(&raw).unwrap_err();
        assert_eq!((e.at, e.field), (PoolErrorAt::Defaults, "max_ejection"));
    }
}
