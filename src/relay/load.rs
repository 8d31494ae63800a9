//! How loaded a worker is: the share of each window of wall time it spent
//! working rather than waiting in `epoll_wait`, from the two clock readings
//! its loop takes anyway (no syscall of its own). The worker feeds the meter
//! in its `Resources`; `relay: auto` splices big request/response messages
//! only while the load is light (`auto.rs`), and the busy time is exported
//! (`sluice_worker_busy_seconds_total`).

use std::time::{Duration, Instant};

/// How often the share is judged.
const WINDOW: Duration = Duration::from_millis(100);

/// A worker busy more than this share of a window is under heavy load.
const HEAVY_ABOVE: f64 = 0.40;

/// A heavily loaded worker is lightly loaded again below this share (apart
/// from `HEAVY_ABOVE`, so a load near the line does not flip the choice
/// every window, and so the lighter cost of splicing does not by itself
/// flip it back).
const LIGHT_BELOW: f64 = 0.20;

/// The current window and the verdict of the last one.
#[derive(Debug)]
pub struct LoadMeter {
    start: Instant,
    waited: Duration,
    light: bool,
    /// Time not spent waiting for events, ever (for the metrics).
    pub busy: Duration,
}

impl LoadMeter {
    /// A meter that starts now, lightly loaded.
    pub fn new(now: Instant) -> LoadMeter {
        LoadMeter { start: now, waited: Duration::ZERO, light: true, busy: Duration::ZERO }
    }

    /// The worker waited for events from `before` to `after` (and worked
    /// from the previous call's `after` to `before`); judges the window once
    /// it is over.
    pub fn waited(&mut self, before: Instant, after: Instant) {
        self.waited += after.saturating_duration_since(before);
        let elapsed = after.saturating_duration_since(self.start);
        if elapsed < WINDOW {
            return;
        }
        let busy = elapsed.saturating_sub(self.waited);
        self.busy += busy;
        let share = busy.as_secs_f64() / elapsed.as_secs_f64();
        if self.light && share > HEAVY_ABOVE {
            self.light = false;
        } else if !self.light && share < LIGHT_BELOW {
            self.light = true;
        }
        self.start = after;
        self.waited = Duration::ZERO;
    }

    /// The last window's verdict: the worker is lightly loaded.
    pub fn light(&self) -> bool {
        self.light
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `windows` windows of 100 ms in which the worker is busy `busy_ms`
    /// in ten loop turns, from `t`; returns the time after them.
    fn run(m: &mut LoadMeter, mut t: Instant, windows: u32, busy_ms: u64) -> Instant {
        for _ in 0..windows * 10 {
            let busy = Duration::from_millis(busy_ms / 10);
            let waited = Duration::from_millis(10 - busy_ms / 10);
            let before = t + busy;
            m.waited(before, before + waited);
            t = before + waited;
        }
        t
    }

    #[test]
    fn heavy_above_two_fifths_and_light_again_below_a_fifth() {
        let t0 = Instant::now();
        let mut m = LoadMeter::new(t0);
        let t = run(&mut m, t0, 3, 30);
        assert!(m.light(), "busy 30 %");
        let t = run(&mut m, t, 2, 50);
        assert!(!m.light(), "busy half the time");
        // In between the two lines the verdict stays as it was.
        let t = run(&mut m, t, 3, 30);
        assert!(!m.light(), "busy 30 % is not light again");
        let t = run(&mut m, t, 2, 10);
        assert!(m.light());
        run(&mut m, t, 3, 30);
        assert!(m.light(), "nor heavy again");
        assert!(m.busy >= Duration::from_millis(3 * 30 + 2 * 50 + 3 * 30 + 2 * 10), "busy {:?}", m.busy);
    }

    #[test]
    fn a_long_wait_is_light_load() {
        let t0 = Instant::now();
        let mut m = LoadMeter::new(t0);
        let t = run(&mut m, t0, 2, 100);
        assert!(!m.light());
        m.waited(t, t + Duration::from_secs(5));
        assert!(m.light());
    }

    #[test]
    fn a_verdict_needs_a_whole_window() {
        let t0 = Instant::now();
        let mut m = LoadMeter::new(t0);
        // 90 ms of work without a wait: not judged yet.
        m.waited(t0 + Duration::from_millis(90), t0 + Duration::from_millis(90));
        assert!(m.light());
        m.waited(t0 + Duration::from_millis(101), t0 + Duration::from_millis(101));
        assert!(!m.light());
        assert_eq!(m.busy, Duration::from_millis(101));
    }
}
