//! Splice pipes, the per-worker pool they come from, and the process-wide
//! budget that bounds how many exist and how big they are.
//!
//! A pump takes a pipe only while it has bytes to move and gives it back as
//! soon as the pipe is empty, so idle sessions hold no pipes. A pump whose
//! flow keeps filling its pipe may have it doubled (`PipePool::grow`, never
//! past `fs.pipe-max-size`, within the budget; `relay/grow.rs` decides when
//! and how far); a grown pipe goes back to the pool grown. A pipe closed
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
        let current = fcntl(&read, FcntlArg::F_GETPIPE_SZ)?;
        let capacity = usize::try_from(current).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        let mut pipe = Pipe { read, write, capacity };
        if capacity < size {
            pipe.set_size(size)?;
        }
        if pipe.capacity < size {
            return Err(io::Error::other(format!("pipe has {} bytes, {size} asked", pipe.capacity)));
        }
        Ok(pipe)
    }

    /// Asks the kernel for a pipe of `size` bytes (`F_SETPIPE_SZ`); on
    /// success `capacity` is what it made (it rounds up to a power of two pages).
    fn set_size(&mut self, size: usize) -> io::Result<()> {
        let size = i32::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let made = fcntl(&self.read, FcntlArg::F_SETPIPE_SZ(size))?;
        self.capacity = usize::try_from(made).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        Ok(())
    }

    /// Pages the kernel charges to the user for this pipe.
    fn pages(&self) -> usize {
        self.capacity.div_ceil(PAGE)
    }
}

/// The page size pipes are accounted in (`fs.pipe-user-pages-soft`) and
/// filled by (one slot per page fragment).
pub const PAGE: usize = 4096;

/// How many pipes the whole process may hold (in use and pooled), shared by
/// the workers, and how much pipe memory: at most a quarter of the fd limit
/// in pipes (two fds per pipe, and sessions need the rest), and, for a
/// process the per-user pipe memory limit applies to, 90 % of
/// `fs.pipe-user-pages-soft` in pages (other processes of the same user need
/// some too). Pipes are charged by their size, so a grown pipe costs more.
#[derive(Debug)]
pub struct PipeBudget {
    total: AtomicUsize,
    pages: AtomicUsize,
    cap: AtomicUsize,
    page_cap: AtomicUsize,
    nofile: u64,
}

impl PipeBudget {
    /// The budget for a process with `nofile` fds making `pipe_size`-byte pipes.
    pub fn new(nofile: u64, pipe_size: usize) -> PipeBudget {
        let b = PipeBudget {
            total: AtomicUsize::new(0),
            pages: AtomicUsize::new(0),
            cap: AtomicUsize::new(0),
            page_cap: AtomicUsize::new(usize::MAX),
            nofile,
        };
        b.resize(pipe_size);
        b
    }

    /// Recomputes the caps for a new pipe size (reload).
    pub fn resize(&self, pipe_size: usize) {
        let by_fds = usize::try_from(self.nofile / 4).unwrap_or(usize::MAX);
        let soft_pages = if crate::sys::rlimit::pipe_limits_apply() {
            crate::sys::sysctl::read::<usize>("fs/pipe-user-pages-soft").filter(|&n| n > 0)
        } else {
            None
        };
        let cap = match soft_pages {
            Some(pages) => {
                let page_cap = pages * 9 / 10;
                let by_pages = page_cap / pipe_size.div_ceil(PAGE).max(1);
                log::info!(
                    "splice pipes: at most {} ({by_fds} by the fd limit, {by_pages} by fs.pipe-user-pages-soft = {pages} \
                     pages; fewer when flows grow theirs); pumps copy beyond that",
                    by_fds.min(by_pages)
                );
                self.page_cap.store(page_cap, Ordering::Relaxed);
                by_fds.min(by_pages)
            }
            None => {
                log::info!("splice pipes: at most {by_fds} (a quarter of the fd limit); pumps copy beyond that");
                self.page_cap.store(usize::MAX, Ordering::Relaxed);
                by_fds
            }
        };
        self.cap.store(cap, Ordering::Relaxed);
    }

    /// Charges `pages` more pipe memory, if the budget has room for them.
    fn take_pages(&self, pages: usize) -> bool {
        let cap = self.page_cap.load(Ordering::Relaxed);
        self.pages
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(pages).filter(|&m| m <= cap))
            .is_ok()
    }

    /// Takes one pipe of `pages` pages from the budget, if any is left.
    fn take(&self, pages: usize) -> bool {
        let cap = self.cap.load(Ordering::Relaxed);
        if self.total.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < cap).then_some(n + 1)).is_err() {
            return false;
        }
        if !self.take_pages(pages) {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Returns `pages` pages of pipe memory to the budget.
    fn give_back_pages(&self, pages: usize) {
        self.pages.fetch_sub(pages, Ordering::Relaxed);
    }

    /// Returns one pipe of `pages` pages to the budget.
    fn give_back(&self, pages: usize) {
        self.total.fetch_sub(1, Ordering::Relaxed);
        self.give_back_pages(pages);
    }

    /// Pipes held by the whole process (in use and pooled).
    pub fn held(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Pipe capacity held by the whole process, in bytes (whole pages).
    pub fn held_bytes(&self) -> usize {
        self.pages.load(Ordering::Relaxed) * PAGE
    }

    /// The cap, in pipes of the configured size.
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
    /// Pipes a pump's flow filled so often that it was doubled.
    pub grown: u64,
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
    /// See [`PipePool::grow_limit`].
    grow_limit: usize,
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
            grow_limit: grow_limit(size),
            make: Pipe::new,
        }
    }

    /// New size and pool cap (reload): spare pipes of the old size are closed;
    /// lent ones are closed when they come back.
    pub fn resize(&mut self, size: usize, max_pooled: usize) {
        if size != self.size {
            for p in self.free.drain(..) {
                self.budget.give_back(p.pages());
            }
            self.size = size;
            self.grow_limit = grow_limit(size);
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
        if !self.budget.take(self.size.div_ceil(PAGE)) {
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
                self.budget.give_back(self.size.div_ceil(PAGE));
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
            self.budget.give_back(pipe.pages());
        }
    }

    /// The largest a pipe may grow to: `fs.pipe-max-size`, the most an
    /// unprivileged process may ask for (1 MiB by default), and never less
    /// than the configured size.
    pub fn grow_limit(&self) -> usize {
        self.grow_limit
    }

    /// Doubles `pipe` (up to [`PipePool::grow_limit`]) if the budget has the
    /// pages for it and the kernel agrees. Returns whether it grew; a pipe
    /// that could not grow is as good as before.
    pub fn grow(&mut self, pipe: &mut Pipe) -> bool {
        let to = (pipe.capacity * 2).min(self.grow_limit);
        if to <= pipe.capacity {
            return false;
        }
        let before = pipe.pages();
        let extra = to.div_ceil(PAGE) - before;
        if !self.budget.take_pages(extra) {
            return false;
        }
        if pipe.set_size(to).is_err() {
            self.budget.give_back_pages(extra);
            return false;
        }
        let made = pipe.pages() - before;
        if made != extra {
            // The kernel rounded up to a power of two pages (a `pipe_size`
            // that is not one): charge what it made, over the cap if need be.
            self.budget.pages.fetch_add(made, Ordering::Relaxed);
            self.budget.give_back_pages(extra);
        }
        self.counts.grown += 1;
        true
    }

    /// Closes a pipe that still holds bytes (its session ended).
    pub fn discard(&mut self, pipe: Pipe) {
        self.counts.in_use = self.counts.in_use.saturating_sub(1);
        self.budget.give_back(pipe.pages());
    }

    fn trim(&mut self) {
        while self.free.len() > self.max_pooled {
            if let Some(p) = self.free.pop() {
                self.budget.give_back(p.pages());
            }
        }
    }

    /// Pipe capacity the whole process holds (see [`PipeBudget::held_bytes`]).
    #[cfg(test)]
    pub fn budget_bytes(&self) -> usize {
        self.budget.held_bytes()
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

/// `fs.pipe-max-size`'s default, assumed when it cannot be read.
const DEFAULT_PIPE_MAX: usize = 1 << 20;

/// How far a pool's pipes of `size` bytes may grow: `fs.pipe-max-size`, and
/// never less than `size`.
fn grow_limit(size: usize) -> usize {
    pipe_max_size().unwrap_or(DEFAULT_PIPE_MAX).max(size)
}

/// Reads `fs.pipe-max-size`, the largest pipe we may ask for without `CAP_SYS_RESOURCE`.
pub fn pipe_max_size() -> Option<usize> {
    crate::sys::sysctl::read("fs/pipe-max-size")
}

#[cfg(test)]
mod tests;
