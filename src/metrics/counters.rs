//! Per-worker counters: sessions by close reason, bytes by direction and
//! relay mode, connect attempts, pipe and accept trouble.
//!
//! A worker is the only writer of its own `WorkerCounters` (relaxed atomic
//! adds, no contention); anyone may read them and sum over workers.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Both sides finished and every byte was delivered.
    Clean,
    /// The client reset or failed; the upstream was reset after it.
    ClientReset,
    /// The upstream reset or failed; the client was reset after it.
    UpstreamReset,
    /// No byte either way for `idle_timeout`.
    IdleTimeout,
    /// No upstream of the route accepted the connection (refused or timed out).
    ConnectFailed,
    /// Cut at the end of `drain_timeout` during shutdown.
    Drained,
}

impl CloseReason {
    /// Every reason, in a fixed order (the counter index).
    pub const ALL: [CloseReason; 6] = [
        CloseReason::Clean,
        CloseReason::ClientReset,
        CloseReason::UpstreamReset,
        CloseReason::IdleTimeout,
        CloseReason::ConnectFailed,
        CloseReason::Drained,
    ];

    /// A stable lowercase name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Clean => "clean",
            CloseReason::ClientReset => "client_reset",
            CloseReason::UpstreamReset => "upstream_reset",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::ConnectFailed => "connect_failed",
            CloseReason::Drained => "drained",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which way bytes went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to upstream.
    ClientToUpstream,
    /// Upstream to client.
    UpstreamToClient,
}

/// One worker's counters.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Client connections accepted.
    pub accepted: AtomicU64,
    /// Sessions open right now.
    pub active: AtomicU64,
    closed: [AtomicU64; CloseReason::ALL.len()],
    /// Upstream connects started.
    pub connect_attempts: AtomicU64,
    /// Upstream connects that failed (refused, timed out, error).
    pub connect_failures: AtomicU64,
    /// `[direction][spliced=0 / copied=1]` bytes delivered.
    bytes: [[AtomicU64; 2]; 2],
    /// Times accept hit the fd limit (EMFILE/ENFILE); each sheds one client.
    pub accept_fd_exhausted: AtomicU64,
    /// Times a listener paused because the global `max_connections` was reached.
    pub accept_paused_global: AtomicU64,
    /// Times a listener paused because its route's `max_connections` was reached.
    pub accept_paused_route: AtomicU64,
    /// Clients refused by `max_connections_per_client`.
    pub refused_client_limit: AtomicU64,
    /// Splice pipes created.
    pub pipes_created: AtomicU64,
    /// Times a pipe was wanted and could not be had.
    pub pipes_refused: AtomicU64,
    /// Pipes lent to pumps right now.
    pub pipes_in_use: AtomicU64,
    /// Spare pipes in the pool right now.
    pub pipes_pooled: AtomicU64,
    /// Pumps that wanted to splice and copied instead.
    pub copy_fallbacks: AtomicU64,
}

impl WorkerCounters {
    /// Counts a closed session.
    pub fn add_closed(&self, reason: CloseReason) {
        self.closed[reason.index()].fetch_add(1, Relaxed);
    }

    /// Sessions closed for `reason` so far.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()].load(Relaxed)
    }

    /// Counts delivered bytes.
    pub fn add_bytes(&self, dir: Direction, spliced: u64, copied: u64) {
        let d = &self.bytes[dir as usize];
        if spliced > 0 {
            d[0].fetch_add(spliced, Relaxed);
        }
        if copied > 0 {
            d[1].fetch_add(copied, Relaxed);
        }
    }

    /// `(spliced, copied)` bytes delivered in `dir` so far.
    pub fn bytes(&self, dir: Direction) -> (u64, u64) {
        let d = &self.bytes[dir as usize];
        (d[0].load(Relaxed), d[1].load(Relaxed))
    }

    /// Sets a counter the worker keeps elsewhere (pool counts) to its current value.
    pub fn set(counter: &AtomicU64, value: u64) {
        counter.store(value, Relaxed);
    }

    /// Adds one.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

/// Sums of all workers' counters, for the shutdown summary (and later the admin port).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Client connections accepted.
    pub accepted: u64,
    /// Sessions closed per reason, in `CloseReason::ALL` order.
    pub closed: [u64; CloseReason::ALL.len()],
    /// `(spliced, copied)` client → upstream.
    pub up: (u64, u64),
    /// `(spliced, copied)` upstream → client.
    pub down: (u64, u64),
    /// Upstream connects that failed.
    pub connect_failures: u64,
    /// Pumps that copied because no pipe could be had.
    pub copy_fallbacks: u64,
    /// Accepts that hit the fd limit.
    pub accept_fd_exhausted: u64,
}

impl Totals {
    /// Sums `workers`.
    pub fn sum<'a>(workers: impl IntoIterator<Item = &'a WorkerCounters>) -> Totals {
        let mut t = Totals::default();
        for w in workers {
            t.accepted += w.accepted.load(Relaxed);
            for r in CloseReason::ALL {
                t.closed[r.index()] += w.closed(r);
            }
            let (s, c) = w.bytes(Direction::ClientToUpstream);
            t.up = (t.up.0 + s, t.up.1 + c);
            let (s, c) = w.bytes(Direction::UpstreamToClient);
            t.down = (t.down.0 + s, t.down.1 + c);
            t.connect_failures += w.connect_failures.load(Relaxed);
            t.copy_fallbacks += w.copy_fallbacks.load(Relaxed);
            t.accept_fd_exhausted += w.accept_fd_exhausted.load(Relaxed);
        }
        t
    }
}

impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} sessions accepted; closed:", self.accepted)?;
        for r in CloseReason::ALL {
            let n = self.closed[r.index()];
            if n > 0 {
                write!(f, " {r}={n}")?;
            }
        }
        write!(
            f,
            "; bytes client→upstream {} spliced + {} copied, upstream→client {} spliced + {} copied",
            self.up.0, self.up.1, self.down.0, self.down.1
        )?;
        if self.connect_failures > 0 {
            write!(f, "; {} upstream connects failed", self.connect_failures)?;
        }
        if self.copy_fallbacks > 0 {
            write!(f, "; {} pumps copied for want of a pipe", self.copy_fallbacks)?;
        }
        if self.accept_fd_exhausted > 0 {
            write!(f, "; {} accepts hit the fd limit", self.accept_fd_exhausted)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_workers() {
        let a = WorkerCounters::default();
        let b = WorkerCounters::default();
        WorkerCounters::inc(&a.accepted);
        WorkerCounters::inc(&b.accepted);
        a.add_closed(CloseReason::Clean);
        b.add_closed(CloseReason::IdleTimeout);
        a.add_bytes(Direction::ClientToUpstream, 10, 0);
        b.add_bytes(Direction::ClientToUpstream, 5, 7);
        b.add_bytes(Direction::UpstreamToClient, 0, 3);
        let t = Totals::sum([&a, &b]);
        assert_eq!(t.accepted, 2);
        assert_eq!(t.up, (15, 7));
        assert_eq!(t.down, (0, 3));
        let s = t.to_string();
        assert!(s.contains("clean=1") && s.contains("idle_timeout=1"), "{s}");
    }
}
