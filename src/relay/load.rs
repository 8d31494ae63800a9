//! How busy a worker is: the wall time of its loop not spent waiting in
//! `epoll_wait`, from the two clock readings the loop takes anyway (no
//! syscall of its own), counted in whole windows and exported as
//! `sluice_worker_busy_seconds_total`. It informs the operator only:
//! `relay: auto` chooses by measured cost per byte (`cost.rs`), not by load.

use std::time::{Duration, Instant};

/// Busy time is added up once per window of this much wall time.
const WINDOW: Duration = Duration::from_millis(100);

/// The current window and the busy time so far.
#[derive(Debug)]
pub struct LoadMeter {
    start: Instant,
    waited: Duration,
    /// Time not spent waiting for events, ever (for the metrics).
    pub busy: Duration,
}

impl LoadMeter {
    /// A meter that starts now.
    pub fn new(now: Instant) -> LoadMeter {
        LoadMeter { start: now, waited: Duration::ZERO, busy: Duration::ZERO }
    }

    /// The worker waited for events from `before` to `after` (and worked
    /// from the previous call's `after` to `before`); adds the window's busy
    /// time once it is over. `true`: a window just ended (the worker's
    /// cue for what it publishes only now and then).
    pub fn waited(&mut self, before: Instant, after: Instant) -> bool {
        self.waited += after.saturating_duration_since(before);
        let elapsed = after.saturating_duration_since(self.start);
        if elapsed < WINDOW {
            return false;
        }
        self.busy += elapsed.saturating_sub(self.waited);
        self.start = after;
        self.waited = Duration::ZERO;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_is_what_was_not_waited_in_whole_windows() {
        let t0 = Instant::now();
        let mut m = LoadMeter::new(t0);
        let mut t = t0;
        // Ten windows of ten loop turns, each busy 3 ms and waiting 7 ms.
        for _ in 0..100 {
            let before = t + Duration::from_millis(3);
            m.waited(before, before + Duration::from_millis(7));
            t = before + Duration::from_millis(7);
        }
        assert_eq!(m.busy, Duration::from_millis(300));
    }

    #[test]
    fn a_window_is_counted_only_when_it_is_over() {
        let t0 = Instant::now();
        let mut m = LoadMeter::new(t0);
        assert!(!m.waited(t0 + Duration::from_millis(90), t0 + Duration::from_millis(90)), "the window goes on");
        assert_eq!(m.busy, Duration::ZERO);
        assert!(m.waited(t0 + Duration::from_millis(101), t0 + Duration::from_millis(101)), "the window ended");
        assert_eq!(m.busy, Duration::from_millis(101));
    }
}
