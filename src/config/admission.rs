//! Who may connect, as written in the file: rate limits and overload shedding,
//! `max_connection_rate` and `max_connection_rate_per_client` (route keys,
//! also under `defaults:`), and `overload` (top level).

use serde::Deserialize;

use super::units::{CountIn, Percent, SizeIn};
use crate::ratelimit::{ClientRate, Rate};

/// `per_second`: 1 to 10 million.
pub type PerSecond = CountIn<1, 10_000_000>;
/// `burst`: 1 to 10 million.
pub type Burst = CountIn<1, 10_000_000>;
/// `prefix_v4`: 0 to 32 bits.
pub type PrefixV4 = CountIn<0, 32>;
/// `prefix_v6`: 0 to 128 bits.
pub type PrefixV6 = CountIn<0, 128>;
/// `max_memory` / `resume_memory`: 1 MiB to 1 TiB.
pub type MemoryLimit = SizeIn<{ 1 << 20 }, { 1 << 40 }>;

/// Default per-client grouping of IPv4 clients: each address alone.
pub const DEFAULT_PREFIX_V4: u8 = 32;
/// Default per-client grouping of IPv6 clients: a /64, what one site usually gets.
pub const DEFAULT_PREFIX_V6: u8 = 64;

/// `max_connection_rate: { per_second, burst }`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    /// New connections per second, on average.
    pub per_second: PerSecond,
    /// New connections that may arrive at once (default: one second's worth).
    pub burst: Option<Burst>,
}

impl RawRate {
    /// The rate it describes.
    pub fn rate(&self) -> Rate {
        let per_second = self.per_second.get();
        Rate { per_second, burst: self.burst.map_or(per_second, |b| b.get()) }
    }
}

/// `max_connection_rate_per_client: { per_second, burst, prefix_v4, prefix_v6 }`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawClientRate {
    /// New connections per second from one client group, on average.
    pub per_second: PerSecond,
    /// New connections one group may open at once (default: one second's worth).
    pub burst: Option<Burst>,
    /// Group IPv4 clients by this prefix length (default 32).
    pub prefix_v4: Option<PrefixV4>,
    /// Group IPv6 clients by this prefix length (default 64).
    pub prefix_v6: Option<PrefixV6>,
}

impl RawClientRate {
    /// The limit it describes.
    pub fn limit(&self) -> ClientRate {
        let per_second = self.per_second.get();
        ClientRate {
            rate: Rate { per_second, burst: self.burst.map_or(per_second, |b| b.get()) },
            prefix_v4: self.prefix_v4.map_or(DEFAULT_PREFIX_V4, |p| p.get() as u8),
            prefix_v6: self.prefix_v6.map_or(DEFAULT_PREFIX_V6, |p| p.get() as u8),
        }
    }
}

/// `overload:` at the top level.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawOverload {
    /// Refuse new clients from this share of the open-file limit in use (default 90%).
    pub max_fd_use: Option<Percent>,
    /// Accept again below this share (default 80%).
    pub resume_fd_use: Option<Percent>,
    /// Refuse new clients from this much resident memory (off unless set).
    pub max_memory: Option<MemoryLimit>,
    /// Accept again below this much (default: 90% of `max_memory`).
    pub resume_memory: Option<MemoryLimit>,
}

/// Default `overload.max_fd_use`.
pub const DEFAULT_MAX_FD_USE: u8 = 90;
/// Default `overload.resume_fd_use`.
pub const DEFAULT_RESUME_FD_USE: u8 = 80;

/// Overload shedding, validated: thresholds above which new clients are
/// refused and `/readyz` says 503, and below which service resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overload {
    /// Refuse from this share of the fd limit in use.
    pub max_fd_use: u8,
    /// Resume below this share.
    pub resume_fd_use: u8,
    /// Refuse from this many bytes of resident memory.
    pub max_memory: Option<u64>,
    /// Resume below this many.
    pub resume_memory: Option<u64>,
}

impl RawOverload {
    /// Defaults filled in; `Err((key, message))` for a resume threshold that is not below its maximum.
    pub fn validate(&self) -> Result<Overload, (&'static str, String)> {
        let max_fd = self.max_fd_use.map_or(DEFAULT_MAX_FD_USE, Percent::get);
        let resume_fd = self.resume_fd_use.map_or(DEFAULT_RESUME_FD_USE.min(max_fd.saturating_sub(1)), Percent::get);
        if resume_fd >= max_fd {
            return Err(("resume_fd_use", format!("{resume_fd}% must be below max_fd_use ({max_fd}%)")));
        }
        let max_memory = self.max_memory.map(|m| m.get());
        let resume_memory = match (max_memory, self.resume_memory.map(|m| m.get())) {
            (None, Some(_)) => return Err(("resume_memory", "needs max_memory".to_owned())),
            (Some(max), Some(r)) if r >= max => {
                return Err(("resume_memory", format!("{r} bytes must be below max_memory ({max} bytes)")));
            }
            (Some(max), None) => Some(max / 10 * 9),
            (_, r) => r,
        };
        Ok(Overload { max_fd_use: max_fd, resume_fd_use: resume_fd, max_memory, resume_memory })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_defaults_to_a_seconds_worth_and_prefixes_to_one_host_and_a_64() {
        let r = RawRate { per_second: PerSecond::new_const(500), burst: None };
        assert_eq!(r.rate(), Rate { per_second: 500, burst: 500 });
        let c = RawClientRate { per_second: PerSecond::new_const(20), burst: None, prefix_v4: None, prefix_v6: None };
        assert_eq!(c.limit(), ClientRate { rate: Rate { per_second: 20, burst: 20 }, prefix_v4: 32, prefix_v6: 64 });
    }

    #[test]
    fn resume_thresholds_must_be_below_the_maximum() {
        let o = RawOverload::default().validate().unwrap();
        assert_eq!((o.max_fd_use, o.resume_fd_use, o.max_memory), (90, 80, None));
        let bad = RawOverload { resume_fd_use: Some("95%".parse().unwrap()), ..RawOverload::default() };
        assert_eq!(bad.validate().unwrap_err().0, "resume_fd_use");
        let mem = RawOverload { max_memory: Some("1GiB".parse().unwrap()), ..RawOverload::default() };
        assert_eq!(mem.validate().unwrap().resume_memory, Some((1 << 30) / 10 * 9));
        let orphan = RawOverload { resume_memory: Some("1GiB".parse().unwrap()), ..RawOverload::default() };
        assert_eq!(orphan.validate().unwrap_err().0, "resume_memory");
    }
}
