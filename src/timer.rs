//! Deadlines of one worker: each session's one timer (PROXY header, connect,
//! idle and half-close timeouts, the drain's idle rule, the wait before a
//! reset), accept retries, the byte reports, the drain deadline.
//!
//! An ordered set of `(deadline in ms, key)`: insert and cancel are
//! O(log n), the next deadline is the first entry, and nothing stale stays
//! behind when a session closes (a heap with lazy deletion would keep every
//! closed session's idle timer for ten minutes). Time is passed in, so the
//! tests never sleep. Idle timers are not moved on every byte: a session
//! keeps its last-activity time and the timer re-arms itself when it fires
//! early (the worker's `on_session_timer` asks `Session::due` again).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// A deadline as stored: milliseconds since the queue's origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(u64);

/// Deadlines and what each one is for.
#[derive(Debug)]
pub struct Timers<K: Ord + Copy> {
    origin: Instant,
    set: BTreeSet<(Deadline, K)>,
}

impl<K: Ord + Copy> Timers<K> {
    /// An empty queue; times are measured from `origin`.
    pub fn new(origin: Instant) -> Self {
        Timers { origin, set: BTreeSet::new() }
    }

    /// Milliseconds since the origin, rounded up so a timer never fires early.
    fn ms(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.origin);
        let ms = d.as_millis() as u64;
        if d.subsec_nanos() % 1_000_000 != 0 { ms + 1 } else { ms }
    }

    /// Arms `key` to fire at `at`. Keep the returned deadline to cancel it.
    pub fn schedule(&mut self, at: Instant, key: K) -> Deadline {
        let d = Deadline(self.ms(at));
        self.set.insert((d, key));
        d
    }

    /// Disarms a timer; a timer that already fired is ignored.
    pub fn cancel(&mut self, at: Deadline, key: K) {
        self.set.remove(&(at, key));
    }

    /// How long until the next timer is due (zero if one is overdue), or `None`.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        let &(Deadline(at), _) = self.set.first()?;
        let at = self.origin + Duration::from_millis(at);
        Some(at.saturating_duration_since(now))
    }

    /// Removes every timer due at `now` and appends its key to `out`, earliest first.
    pub fn expired(&mut self, now: Instant, out: &mut Vec<K>) {
        let now = Deadline(now.saturating_duration_since(self.origin).as_millis() as u64);
        while let Some(&(at, key)) = self.set.first() {
            if at > now {
                break;
            }
            self.set.pop_first();
            out.push(key);
        }
    }

    /// Timers armed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// No timer armed.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fires_in_order_and_not_early() {
        let t0 = Instant::now();
        let mut t = Timers::new(t0);
        t.schedule(t0 + ms(300), 'c');
        t.schedule(t0 + ms(100), 'a');
        t.schedule(t0 + ms(200), 'b');
        assert_eq!(t.next_timeout(t0), Some(ms(100)));
        let mut out = vec![];
        t.expired(t0 + ms(99), &mut out);
        assert!(out.is_empty());
        t.expired(t0 + ms(200), &mut out);
        assert_eq!(out, vec!['a', 'b']);
        assert_eq!(t.next_timeout(t0 + ms(250)), Some(ms(50)));
        assert_eq!(t.next_timeout(t0 + ms(400)), Some(Duration::ZERO));
        t.expired(t0 + ms(400), &mut out);
        assert_eq!(out, vec!['a', 'b', 'c']);
        assert!(t.is_empty());
        assert_eq!(t.next_timeout(t0), None);
    }

    #[test]
    fn cancelled_timers_leave_nothing_behind() {
        let t0 = Instant::now();
        let mut t = Timers::new(t0);
        let mut keep = vec![];
        for i in 0..10_000u32 {
            let d = t.schedule(t0 + Duration::from_secs(600), i);
            keep.push((d, i));
        }
        for (d, i) in keep {
            t.cancel(d, i);
        }
        assert!(t.is_empty());
    }

    #[test]
    fn sub_millisecond_deadlines_round_up() {
        let t0 = Instant::now();
        let mut t = Timers::new(t0);
        t.schedule(t0 + Duration::from_micros(1500), 1);
        let mut out = vec![];
        t.expired(t0 + Duration::from_micros(1999), &mut out);
        assert!(out.is_empty(), "a timer must never fire before its deadline");
        t.expired(t0 + ms(2), &mut out);
        assert_eq!(out, vec![1]);
    }

    #[test]
    fn same_deadline_different_keys() {
        let t0 = Instant::now();
        let mut t = Timers::new(t0);
        let a = t.schedule(t0 + ms(5), 1);
        t.schedule(t0 + ms(5), 2);
        t.cancel(a, 1);
        assert_eq!(t.len(), 1);
        let mut out = vec![];
        t.expired(t0 + ms(5), &mut out);
        assert_eq!(out, vec![2]);
    }
}
