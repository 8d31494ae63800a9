//! One rate shared by every worker: the generic cell rate algorithm (GCRA,
//! the token bucket's exact twin) on a single atomic — the theoretical
//! arrival time of the next connection. `burst` connections may arrive at
//! once, then one per `1 / per_second` on average; a connection over that
//! is refused and changes nothing. Lock-free (one compare-and-swap per
//! admitted connection), so the limit is the same whatever the number of
//! workers. Time is passed in (nanoseconds on a process clock).

use std::sync::atomic::{AtomicU64, Ordering};

/// A rate: `per_second` on average, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Connections per second, on average.
    pub per_second: u64,
    /// Connections that may arrive at once (at least 1).
    pub burst: u64,
}

impl Rate {
    /// Nanoseconds between connections at the average rate.
    pub fn interval_ns(&self) -> u64 {
        1_000_000_000 / self.per_second.max(1)
    }

    /// How far ahead of `now` the arrival time may run: `burst - 1` intervals.
    pub fn tolerance_ns(&self) -> u64 {
        self.interval_ns().saturating_mul(self.burst.max(1) - 1)
    }
}

/// The state of one rate limit.
#[derive(Debug, Default)]
pub struct Gcra {
    /// Theoretical arrival time of the next conforming connection (ns).
    tat: AtomicU64,
}

impl Gcra {
    /// Admits a connection at `now_ns` if `rate` allows it.
    pub fn allow(&self, rate: Rate, now_ns: u64) -> bool {
        let (interval, tolerance) = (rate.interval_ns(), rate.tolerance_ns());
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now_ns);
            if start - now_ns > tolerance {
                return false;
            }
            match self.tat.compare_exchange_weak(tat, start + interval, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(actual) => tat = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_burst_then_the_average_rate() {
        let g = Gcra::default();
        let rate = Rate { per_second: 10, burst: 5 };
        let t0 = 5 * SEC;
        let admitted = (0..20).filter(|_| g.allow(rate, t0)).count();
        assert_eq!(admitted, 5, "a burst of 5 at once, no more");
        assert!(!g.allow(rate, t0 + SEC / 10 - 1), "not before the next interval");
        assert!(g.allow(rate, t0 + SEC / 10));
        // A second later: 10 more (the average), not a new burst on top.
        let later = (0..100).filter(|_| g.allow(rate, t0 + SEC + SEC / 10)).count();
        assert_eq!(later, 5, "the burst refills at the average rate: 1 s = 10 intervals, capped at the burst");
    }

    #[test]
    fn a_steady_client_at_the_rate_is_never_refused() {
        let g = Gcra::default();
        let rate = Rate { per_second: 1000, burst: 1 };
        for i in 0..10_000 {
            assert!(g.allow(rate, SEC + i * SEC / 1000), "arrival {i}");
        }
        assert!(!g.allow(rate, SEC + 9_999 * SEC / 1000 + 1), "one more in the same millisecond");
    }

    #[test]
    fn many_threads_share_one_limit_exactly() {
        let g = std::sync::Arc::new(Gcra::default());
        let rate = Rate { per_second: 1, burst: 1000 };
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = std::sync::Arc::clone(&g);
                std::thread::spawn(move || (0..1000).filter(|_| g.allow(rate, SEC)).count())
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 1000, "4 threads, one burst of 1,000 between them");
    }
}
