//! Typed config values that carry their own validation: durations and sizes
//! with units, bounded counts, percentages, worker counts; and how any value
//! that parses from a string is read from YAML (`deserialize_from_str!`).
//!
//! Every check that concerns one value lives in its type, inside
//! `Deserialize`, so serde_yaml attaches the line and column of the offending
//! value to the error for free. Addresses and the `socket:` values are
//! `net.rs`'s; cross-field rules live in `validate.rs`.

use std::fmt;
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
    #[cfg(test)]
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

/// Deserializes any `FromStr<Err = String>` value from a YAML scalar. Numbers
/// are accepted too (`pipe_size: 65536`, `workers: 4`) and parsed from their text.
pub(super) struct FromStrVisitor<T>(pub(super) std::marker::PhantomData<T>, pub(super) &'static str);

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
                d.deserialize_any($crate::config::units::FromStrVisitor(std::marker::PhantomData, $expecting))
            }
        }
    };
}
pub(super) use deserialize_from_str;

deserialize_from_str!(DurationIn<MIN, MAX>, "a duration with a unit, e.g. \"3s\"", const MIN, const MAX);
deserialize_from_str!(SizeIn<MIN, MAX>, "a size with a unit, e.g. \"64KiB\"", const MIN, const MAX);
deserialize_from_str!(Workers, "\"auto\" or a number of workers");
deserialize_from_str!(Percent, "a percentage such as \"90%\"");
deserialize_from_str!(crate::acl::Cidr, "an address block such as \"10.0.0.0/8\" or \"fd00::/8\"");
deserialize_from_str!(
    crate::destination::Destination,
    "a destination such as \"192.0.2.0/24\", \"192.0.2.10:80\" or \":80\""
);

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
}
