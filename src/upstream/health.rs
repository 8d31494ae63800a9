//! What every thread knows about one upstream address of one route: whether
//! active checks say it is up, whether passive outlier detection has ejected
//! it (and whether one session is trying it again, half-open), and how many
//! sessions it has right now (for `least_conn` and `random`).
//!
//! One `UpstreamHealth` per (route name, address), kept by the metrics
//! registry, so it survives reloads and DNS updates that keep the address
//! (an address the registry has reclaimed starts afresh if it comes back).
//! Workers read it with relaxed atomic loads per pick; the health-check
//! thread and the workers write it when something changes. The mutex guards
//! only the outlier bookkeeping, taken on a connect failure or the end of an
//! ejection, never per event.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::Outlier;

/// Milliseconds since the first call in this process, never 0 (0 means "not ejected").
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
}

/// Whether an upstream may get a new session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    /// Up and not ejected.
    Up,
    /// Its ejection is over: one session may try it (claim with `try_probe`).
    Probe,
    /// Down by active checks, ejected, or being probed by another session.
    Down,
}

/// Counts for `/stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct HealthCounters {
    /// Active checks that passed.
    pub checks_ok: AtomicU64,
    /// Active checks that failed.
    pub checks_failed: AtomicU64,
    /// Times active checks took it out.
    pub went_down: AtomicU64,
    /// Times active checks brought it back.
    pub went_up: AtomicU64,
    /// Times outlier detection ejected it.
    pub ejections: AtomicU64,
}

#[derive(Debug, Default)]
struct OutlierState {
    /// Ejections in the current streak (the n-th lasts n × base).
    streak: u32,
    /// When the last ejection ended or will end (ms).
    last_end: u64,
}

/// The shared state of one upstream of one route.
#[derive(Debug)]
pub struct UpstreamHealth {
    up: AtomicBool,
    active: AtomicUsize,
    ejected_until: AtomicU64,
    probing: AtomicBool,
    consecutive_failures: AtomicU32,
    outlier: Mutex<OutlierState>,
    /// Check and ejection counts.
    pub counters: HealthCounters,
}

impl Default for UpstreamHealth {
    fn default() -> Self {
        UpstreamHealth {
            // Up until a check says otherwise: a fresh start must not refuse everyone.
            up: AtomicBool::new(true),
            active: AtomicUsize::new(0),
            ejected_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            outlier: Mutex::new(OutlierState::default()),
            counters: HealthCounters::default(),
        }
    }
}

/// What a connect failure did to an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Counted; not (yet) ejected.
    Counted(u32),
    /// Ejected for this long (the n-th ejection of a streak).
    Ejected {
        /// How long.
        period: Duration,
        /// Which ejection of the streak.
        nth: u32,
        /// Failures in a row that led to it (0 for a failed half-open try).
        failures: u32,
    },
    /// Would have been ejected, but `max_ejected_percent` of the route is out already.
    Spared(u32),
}

impl UpstreamHealth {
    /// What a new session may do with this upstream at `now` (ms).
    pub fn availability(&self, now: u64) -> Availability {
        if !self.up.load(Relaxed) {
            return Availability::Down;
        }
        match self.ejected_until.load(Relaxed) {
            0 => Availability::Up,
            until if now < until => Availability::Down,
            _ if self.probing.load(Relaxed) => Availability::Down,
            _ => Availability::Probe,
        }
    }

    /// Claims the one half-open try after an ejection; false if another session has it.
    pub fn try_probe(&self) -> bool {
        self.probing.compare_exchange(false, true, Relaxed, Relaxed).is_ok()
    }

    /// Ejected or being probed (for `max_ejected_percent`).
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Relaxed) != 0
    }

    /// Active checks' verdict.
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Sets the active checks' verdict; returns true if it changed.
    pub fn set_up(&self, up: bool) -> bool {
        let was = self.up.swap(up, Relaxed);
        if was != up {
            let c = if up { &self.counters.went_up } else { &self.counters.went_down };
            c.fetch_add(1, Relaxed);
        }
        was != up
    }

    /// Sessions (including connect attempts) on it now, all workers.
    pub fn active(&self) -> usize {
        self.active.load(Relaxed)
    }

    /// A session starts a connect attempt to it.
    pub fn session_started(&self) {
        self.active.fetch_add(1, Relaxed);
    }

    /// That session's attempt failed or the session ended.
    pub fn session_ended(&self) {
        self.active.fetch_sub(1, Relaxed);
    }

    /// A connect failed (refused, timed out, reset before the first byte).
    /// `others_ejected` of the route's `total` upstreams are ejected already.
    pub fn connect_failed(&self, cfg: &Outlier, others_ejected: usize, total: usize, now: u64) -> FailureOutcome {
        let failures = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        let probe_failed = self.probing.load(Relaxed);
        if !probe_failed && (failures < cfg.consecutive_failures || self.is_ejected()) {
            return FailureOutcome::Counted(failures);
        }
        // Envoy's rule: the share caps ejections, but one upstream may always go.
        let allowed = others_ejected == 0 || (others_ejected + 1) * 100 <= cfg.max_ejected_percent as usize * total;
        if !probe_failed && !allowed {
            return FailureOutcome::Spared(failures);
        }
        let mut st = self.outlier.lock().unwrap_or_else(|p| p.into_inner());
        // A long healthy spell forgives earlier ejections.
        let max_ms = u64::try_from(cfg.max_ejection.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(st.last_end) >= max_ms {
            st.streak = 0;
        }
        st.streak += 1;
        let period = cfg.base_ejection.saturating_mul(st.streak).min(cfg.max_ejection);
        let until = now + u64::try_from(period.as_millis()).unwrap_or(u64::MAX / 2);
        st.last_end = until;
        self.ejected_until.store(until, Relaxed);
        self.probing.store(false, Relaxed);
        self.consecutive_failures.store(0, Relaxed);
        self.counters.ejections.fetch_add(1, Relaxed);
        FailureOutcome::Ejected { period, nth: st.streak, failures: if probe_failed { 0 } else { failures } }
    }

    /// A session got through (a byte from the upstream, or a clean end).
    /// Returns true if this ended an ejection (the half-open try succeeded).
    pub fn succeeded(&self, now: u64) -> bool {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
        if !self.is_ejected() {
            return false;
        }
        let mut st = self.outlier.lock().unwrap_or_else(|p| p.into_inner());
        if self.ejected_until.swap(0, Relaxed) == 0 {
            return false; // another worker ended it first
        }
        st.last_end = now;
        self.probing.store(false, Relaxed);
        true
    }

    /// The half-open try ended without a verdict (the client left first):
    /// let another session try.
    pub fn probe_abandoned(&self) {
        self.probing.store(false, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: Outlier = Outlier {
        consecutive_failures: 3,
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(25),
        max_ejected_percent: 50,
    };

    #[test]
    fn ejection_after_consecutive_failures_then_half_open() {
        let h = UpstreamHealth::default();
        assert_eq!(h.connect_failed(&CFG, 0, 3, 1000), FailureOutcome::Counted(1));
        assert_eq!(h.connect_failed(&CFG, 0, 3, 1000), FailureOutcome::Counted(2));
        let nth1 = FailureOutcome::Ejected { period: Duration::from_secs(10), nth: 1, failures: 3 };
        assert_eq!(h.connect_failed(&CFG, 0, 3, 1000), nth1);
        assert_eq!(h.availability(5000), Availability::Down);
        assert_eq!(h.availability(11_000), Availability::Probe, "after the ejection: one try");
        assert!(h.try_probe());
        assert!(!h.try_probe(), "only one session probes");
        assert_eq!(h.availability(11_000), Availability::Down, "others wait while it is probed");
        // The try fails: ejected again, twice as long.
        let nth2 = FailureOutcome::Ejected { period: Duration::from_secs(20), nth: 2, failures: 0 };
        assert_eq!(h.connect_failed(&CFG, 0, 3, 11_000), nth2);
        assert_eq!(h.availability(30_000), Availability::Down);
        assert_eq!(h.availability(31_000), Availability::Probe);
        assert!(h.try_probe());
        // The third is capped at max_ejection.
        let nth3 = FailureOutcome::Ejected { period: Duration::from_secs(25), nth: 3, failures: 0 };
        assert_eq!(h.connect_failed(&CFG, 0, 3, 31_000), nth3);
        assert_eq!(h.availability(56_000), Availability::Probe);
        assert!(h.try_probe());
        assert!(h.succeeded(56_000), "a good try ends the ejection");
        assert_eq!(h.availability(56_000), Availability::Up);
        assert!(!h.succeeded(56_001));
        assert_eq!(h.counters.ejections.load(Relaxed), 3);
    }

    #[test]
    fn a_success_resets_the_count_and_a_long_spell_the_streak() {
        let h = UpstreamHealth::default();
        h.connect_failed(&CFG, 0, 3, 0);
        h.connect_failed(&CFG, 0, 3, 0);
        h.succeeded(0);
        assert_eq!(h.connect_failed(&CFG, 0, 3, 0), FailureOutcome::Counted(1), "not in a row any more");
        h.connect_failed(&CFG, 0, 3, 0);
        assert!(matches!(h.connect_failed(&CFG, 0, 3, 0), FailureOutcome::Ejected { nth: 1, .. }));
        h.try_probe();
        assert!(h.succeeded(10_000));
        for _ in 0..2 {
            h.connect_failed(&CFG, 0, 3, 100_000);
        }
        assert!(
            matches!(h.connect_failed(&CFG, 0, 3, 100_000), FailureOutcome::Ejected { nth: 1, .. }),
            "healthy for longer than max_ejection: the streak starts over"
        );
    }

    #[test]
    fn the_share_of_ejected_upstreams_is_capped_but_one_may_go() {
        let h = UpstreamHealth::default();
        for _ in 0..2 {
            h.connect_failed(&CFG, 1, 3, 0);
        }
        assert_eq!(h.connect_failed(&CFG, 1, 3, 0), FailureOutcome::Spared(3), "2 of 3 would be over 50%");
        let single = UpstreamHealth::default();
        for _ in 0..2 {
            single.connect_failed(&CFG, 0, 1, 0);
        }
        assert!(matches!(single.connect_failed(&CFG, 0, 1, 0), FailureOutcome::Ejected { .. }), "one may always go");
        let four = UpstreamHealth::default();
        for _ in 0..2 {
            four.connect_failed(&CFG, 1, 4, 0);
        }
        assert!(matches!(four.connect_failed(&CFG, 1, 4, 0), FailureOutcome::Ejected { .. }), "2 of 4 is 50%");
    }

    #[test]
    fn checks_mark_down_and_count_changes() {
        let h = UpstreamHealth::default();
        assert!(!h.set_up(true));
        assert!(h.set_up(false));
        assert_eq!(h.availability(0), Availability::Down);
        assert!(h.set_up(true));
        assert_eq!(h.counters.went_down.load(Relaxed) + h.counters.went_up.load(Relaxed), 2);
    }
}
