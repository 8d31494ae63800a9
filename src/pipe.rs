//! Splice pipes, the per-worker pool they come from, and the process-wide
//! budget that bounds how many exist.
//!
//! A pump takes a pipe only while it has bytes to move and gives it back as
//! soon as the pipe is empty, so idle sessions hold no pipes. A pipe closed
//! with bytes in it is dropped, never pooled. When a pipe cannot be had (the
//! budget is spent, the fd limit, the per-user pipe memory limit, a pipe
//! shorter than asked) the pool says so and the pump copies instead; the
//! pool counts it. After the kernel refused a pipe, the pool does not ask it
//! again for a cool-down time (`COOL_DOWN`), read from a clock the caller
//! passes in.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::unistd::pipe2;

/// A non-blocking pipe sized for splicing.
#[derive(Debug)]
pub struct Pipe {
    /// Read end: spliced out to the destination socket.
    pub read: OwnedFd,
    /// Write end: spliced into from the source socket.
    pub write: OwnedFd,
    /// Real size reported by `F_GETPIPE_SZ`.
    pub capacity: usize,
}

impl Pipe {
    /// Makes a pipe of at least `size` bytes, or fails.
    ///
    /// Past `fs.pipe-user-pages-soft` the kernel silently hands out 2-page
    /// pipes and refuses `F_SETPIPE_SZ` with `EPERM`; such a pipe would
    /// make splicing slower than copying, so it is refused here too.
    pub fn new(size: usize) -> io::Result<Pipe> {
        let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let size_arg = i32::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let current = fcntl(&read, FcntlArg::F_GETPIPE_SZ)?;
        let capacity = if current >= size_arg { current } else { fcntl(&read, FcntlArg::F_SETPIPE_SZ(size_arg))? };
        let capacity = usize::try_from(capacity).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        if capacity < size {
            return Err(io::Error::other(format!("pipe has {capacity} bytes, {size} asked")));
        }
        Ok(Pipe { read, write, capacity })
    }
}

/// How many pipes the whole process may hold (in use and pooled), shared by
/// the workers: at most a quarter of the fd limit (two fds per pipe, and
/// sessions need the rest), and, for a process the per-user pipe memory
/// limit applies to, 90 % of `fs.pipe-user-pages-soft` (other processes of
/// the same user need some too).
#[derive(Debug)]
pub struct PipeBudget {
    total: AtomicUsize,
    cap: AtomicUsize,
    nofile: u64,
}

impl PipeBudget {
    /// The budget for a process with `nofile` fds making `pipe_size`-byte pipes.
    pub fn new(nofile: u64, pipe_size: usize) -> PipeBudget {
        let b = PipeBudget { total: AtomicUsize::new(0), cap: AtomicUsize::new(0), nofile };
        b.resize(pipe_size);
        b
    }

    /// Recomputes the cap for a new pipe size (reload).
    pub fn resize(&self, pipe_size: usize) {
        let by_fds = usize::try_from(self.nofile / 4).unwrap_or(usize::MAX);
        let soft_pages = if crate::limits::pipe_limits_apply() {
            crate::sysctl::read::<usize>("fs/pipe-user-pages-soft").filter(|&n| n > 0)
        } else {
            None
        };
        let cap = match soft_pages {
            Some(pages) => {
                let per_pipe = pipe_size.div_ceil(4096).max(1);
                let by_pages = pages / per_pipe * 9 / 10;
                log::info!(
                    "splice pipes: at most {} ({by_fds} by the fd limit, {by_pages} by fs.pipe-user-pages-soft = {pages} \
                     pages); pumps copy beyond that",
                    by_fds.min(by_pages)
                );
                by_fds.min(by_pages)
            }
            None => {
                log::info!("splice pipes: at most {by_fds} (a quarter of the fd limit); pumps copy beyond that");
                by_fds
            }
        };
        self.cap.store(cap, Ordering::Relaxed);
    }

    /// Takes one pipe from the budget, if any is left.
    fn take(&self) -> bool {
        let cap = self.cap.load(Ordering::Relaxed);
        self.total.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < cap).then_some(n + 1)).is_ok()
    }

    /// Returns one pipe to the budget.
    fn give_back(&self) {
        self.total.fetch_sub(1, Ordering::Relaxed);
    }

    /// Pipes held by the whole process (in use and pooled).
    pub fn held(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap.load(Ordering::Relaxed)
    }
}

/// After the kernel refused a pipe, how long a pool copies without asking
/// again. A process at a limit (fds, `fs.pipe-user-pages-soft`) must not pay
/// a failing `pipe2` and `fcntl` per session, yet must notice soon that the
/// limit has room again: a second bounds the failing calls to one per worker
/// per second, and a bulk flow worth splicing lasts longer than that.
pub const COOL_DOWN: Duration = Duration::from_secs(1);

/// What a pool has done, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// Pipes made with `pipe2`.
    pub created: u64,
    /// Pipes handed to pumps, pooled or new (`lent - created` came from the pool).
    pub lent: u64,
    /// Times a pipe was wanted and none could be had.
    pub refused: u64,
    /// Pipes lent out right now.
    pub in_use: u64,
    /// Spare pipes kept right now.
    pub pooled: u64,
}

/// One worker's spare pipes.
#[derive(Debug)]
pub struct PipePool {
    free: Vec<Pipe>,
    size: usize,
    max_pooled: usize,
    budget: Arc<PipeBudget>,
    counts: PoolCounts,
    /// After the kernel refused a pipe, don't ask it again before this time
    /// (see [`COOL_DOWN`]). By time, not by pipes coming back: lent pipes may
    /// all be discarded, or none pooled (`max_pooled_pipes: 0`).
    cool_down_until: Option<Instant>,
    last_error: Option<io::ErrorKind>,
    /// Makes a pipe: `Pipe::new`, or in tests one that counts or fails.
    make: fn(usize) -> io::Result<Pipe>,
}

impl PipePool {
    /// A pool handing out pipes of `size` bytes, keeping at most `max_pooled`
    /// spare, within the process-wide `budget`.
    pub fn new(size: usize, max_pooled: usize, budget: Arc<PipeBudget>) -> PipePool {
        PipePool {
            free: Vec::new(),
            size,
            max_pooled,
            budget,
            counts: PoolCounts::default(),
            cool_down_until: None,
            last_error: None,
            make: Pipe::new,
        }
    }

    /// New size and pool cap (reload): spare pipes of the old size are closed;
    /// lent ones are closed when they come back.
    pub fn resize(&mut self, size: usize, max_pooled: usize) {
        if size != self.size {
            for p in self.free.drain(..) {
                drop(p);
                self.budget.give_back();
            }
            self.size = size;
        }
        self.max_pooled = max_pooled;
        self.trim();
    }

    /// A pipe, pooled or new; `None` when none can be had (counted). `now`
    /// is read only when the answer depends on the time (a cool-down is on,
    /// or a new pipe was refused), so the common path costs no clock read.
    pub fn get(&mut self, now: impl Fn() -> Instant) -> Option<Pipe> {
        if let Some(p) = self.free.pop() {
            self.counts.in_use += 1;
            self.counts.lent += 1;
            return Some(p);
        }
        if let Some(until) = self.cool_down_until {
            if now() < until {
                self.counts.refused += 1;
                return None;
            }
            self.cool_down_until = None;
        }
        if !self.budget.take() {
            self.counts.refused += 1;
            return None;
        }
        match (self.make)(self.size) {
            Ok(p) => {
                self.counts.created += 1;
                self.counts.lent += 1;
                self.counts.in_use += 1;
                Some(p)
            }
            Err(e) => {
                self.budget.give_back();
                if self.last_error != Some(e.kind()) {
                    log::warn!(
                        "cannot make a {} byte splice pipe ({e}); pumps copy instead, asking again every {}",
                        self.size,
                        crate::config::units::fmt_duration(COOL_DOWN)
                    );
                    self.last_error = Some(e.kind());
                }
                self.counts.refused += 1;
                self.cool_down_until = Some(now() + COOL_DOWN);
                None
            }
        }
    }

    /// Returns an empty pipe. Pipes with bytes in them must be `discard`ed instead.
    pub fn put(&mut self, pipe: Pipe) {
        self.counts.in_use = self.counts.in_use.saturating_sub(1);
        if pipe.capacity >= self.size && self.free.len() < self.max_pooled {
            self.free.push(pipe);
        } else {
            drop(pipe);
            self.budget.give_back();
        }
    }

    /// Closes a pipe that still holds bytes (its session ended).
    pub fn discard(&mut self, pipe: Pipe) {
        self.counts.in_use = self.counts.in_use.saturating_sub(1);
        drop(pipe);
        self.budget.give_back();
    }

    fn trim(&mut self) {
        while self.free.len() > self.max_pooled {
            self.free.pop();
            self.budget.give_back();
        }
    }

    /// Counters so far.
    pub fn counts(&self) -> PoolCounts {
        PoolCounts { pooled: self.free.len() as u64, ..self.counts }
    }
}

impl Drop for PipePool {
    fn drop(&mut self) {
        self.max_pooled = 0;
        self.trim();
    }
}

/// Reads `fs.pipe-max-size`, the largest pipe we may ask for without `CAP_SYS_RESOURCE`.
pub fn pipe_max_size() -> Option<usize> {
    crate::sysctl::read("fs/pipe-max-size")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(cap: usize) -> Arc<PipeBudget> {
        let b = PipeBudget::new(1 << 20, 64 << 10);
        b.cap.store(cap, Ordering::Relaxed);
        Arc::new(b)
    }

    #[test]
    fn pipes_are_at_least_the_size_asked() {
        let p = Pipe::new(64 << 10).unwrap();
        assert!(p.capacity >= 64 << 10);
        let p = Pipe::new(128 << 10).unwrap();
        assert!(p.capacity >= 128 << 10);
    }

    #[test]
    fn pool_reuses_and_caps() {
        let b = budget(100);
        let mut pool = PipePool::new(64 << 10, 1, Arc::clone(&b));
        let a = pool.get(Instant::now).unwrap();
        let c = pool.get(Instant::now).unwrap();
        assert_eq!(pool.counts().created, 2);
        assert_eq!(pool.counts().in_use, 2);
        pool.put(a);
        pool.put(c);
        assert_eq!(pool.counts().pooled, 1, "only max_pooled pipes are kept");
        assert_eq!(b.held(), 1, "the other went back to the budget");
        let _d = pool.get(Instant::now).unwrap();
        assert_eq!(pool.counts().created, 2, "the pooled pipe was reused");
        assert_eq!(pool.counts().lent, 3, "every loan counts, pooled or new");
        assert_eq!(pool.counts().in_use, 1);
    }

    #[test]
    fn the_budget_is_shared_and_bounds_every_pool() {
        let b = budget(2);
        let mut one = PipePool::new(64 << 10, 4, Arc::clone(&b));
        let mut two = PipePool::new(64 << 10, 4, Arc::clone(&b));
        let p1 = one.get(Instant::now).unwrap();
        let p2 = two.get(Instant::now).unwrap();
        assert!(one.get(Instant::now).is_none() && two.get(Instant::now).is_none(), "the cap holds across workers");
        assert_eq!(one.counts().refused + two.counts().refused, 2);
        one.discard(p1);
        assert!(two.get(Instant::now).is_some(), "a pipe given back can be had again");
        two.put(p2);
        drop(two);
        drop(one);
        assert_eq!(b.held(), 1, "dropped pools give their spare pipes back");
    }

    #[test]
    fn an_impossible_size_is_refused_and_counted() {
        let b = budget(10);
        let mut pool = PipePool::new(1 << 30, 4, Arc::clone(&b));
        assert!(pool.get(Instant::now).is_none());
        assert_eq!(pool.counts().refused, 1);
        assert_eq!(b.held(), 0, "a failed pipe2 does not spend the budget");
    }

    thread_local! {
        /// What `flaky` does on this test's thread: (fail, calls so far).
        static FLAKY: std::cell::Cell<(bool, u32)> = const { std::cell::Cell::new((false, 0)) };
    }

    /// `Pipe::new`, counted, failing like a process at its fd limit while told to.
    fn flaky(size: usize) -> io::Result<Pipe> {
        let (fail, calls) = FLAKY.get();
        FLAKY.set((fail, calls + 1));
        if fail { Err(io::Error::from_raw_os_error(24)) } else { Pipe::new(size) }
    }

    fn set_failing(fail: bool) {
        FLAKY.set((fail, FLAKY.get().1));
    }

    fn pipe2_calls() -> u32 {
        FLAKY.get().1
    }

    #[test]
    fn a_refused_pipe_cools_down_by_time_even_when_every_lent_pipe_is_discarded() {
        for max_pooled in [0, 4] {
            let b = budget(10);
            let mut pool = PipePool::new(64 << 10, max_pooled, Arc::clone(&b));
            pool.make = flaky;
            let t0 = Instant::now();
            let lent: Vec<Pipe> = (0..3).map(|_| pool.get(|| t0).expect("a pipe")).collect();
            set_failing(true);
            let calls = pipe2_calls();
            assert!(pool.get(|| t0).is_none(), "the kernel refuses");
            assert_eq!(pipe2_calls(), calls + 1);
            // Every lent pipe comes back with bytes in it: nothing is pooled.
            for p in lent {
                pool.discard(p);
            }
            set_failing(false);
            for ms in [0, 10, 999] {
                let t = t0 + Duration::from_millis(ms);
                assert!(pool.get(|| t).is_none(), "max_pooled {max_pooled}: still cooling down at {ms} ms");
            }
            assert_eq!(pipe2_calls(), calls + 1, "max_pooled {max_pooled}: no pipe2 during the cool-down");
            assert_eq!(pool.counts().refused, 4);
            let later = t0 + COOL_DOWN;
            let p = pool.get(|| later).expect("after the cool-down the pool asks again");
            assert_eq!(pipe2_calls(), calls + 2);
            pool.put(p);
            assert_eq!(b.held(), usize::from(max_pooled > 0));
        }
    }

    #[test]
    fn the_clock_is_read_only_when_the_answer_depends_on_it() {
        let b = budget(10);
        let mut pool = PipePool::new(64 << 10, 4, Arc::clone(&b));
        pool.make = flaky;
        let no_clock = || -> Instant { panic!("the clock was read on the common path") };
        let p = pool.get(no_clock).expect("a new pipe");
        pool.put(p);
        let p = pool.get(no_clock).expect("the pooled pipe");
        set_failing(true);
        let t0 = Instant::now();
        assert!(pool.get(|| t0).is_none());
        pool.put(p);
        assert!(pool.get(no_clock).is_some(), "a pooled pipe is lent even during a cool-down");
    }

    #[test]
    fn resizing_closes_spare_pipes_of_the_old_size() {
        let b = budget(10);
        let mut pool = PipePool::new(64 << 10, 4, Arc::clone(&b));
        let lent = pool.get(Instant::now).unwrap();
        let spare = pool.get(Instant::now).unwrap();
        pool.put(spare);
        pool.resize(128 << 10, 4);
        assert_eq!(pool.counts().pooled, 0);
        pool.put(lent);
        assert_eq!(pool.counts().pooled, 0, "a returned pipe of the old size is closed");
        assert_eq!(b.held(), 0);
    }
}
