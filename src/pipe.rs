//! Splice pipes and the per-worker pool they come from.
//!
//! A pump takes a pipe only while it has bytes to move and gives it back as
//! soon as the pipe is empty, so idle sessions hold no pipes. A pipe closed
//! with bytes in it is dropped, never pooled. When a pipe cannot be had
//! (fd limit, pipe memory limit, a pipe shorter than asked) the pool says
//! so and the pump copies instead; the pool counts it.

use std::io;
use std::os::fd::OwnedFd;

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
        let size_arg =
            i32::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let current = fcntl(&read, FcntlArg::F_GETPIPE_SZ)?;
        let capacity = if current >= size_arg {
            current
        } else {
            fcntl(&read, FcntlArg::F_SETPIPE_SZ(size_arg))?
        };
        let capacity =
            usize::try_from(capacity).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        if capacity < size {
            return Err(io::Error::other(format!(
                "pipe has {capacity} bytes, {size} asked"
            )));
        }
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

/// What a pool has done, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// Pipes made with `pipe2`.
    pub created: u64,
    /// Times a pipe was wanted and none could be made.
    pub refused: u64,
    /// Pipes lent out right now.
    pub in_use: u64,
}

/// One worker's spare pipes.
#[derive(Debug)]
pub struct PipePool {
    free: Vec<Pipe>,
    size: usize,
    max_pooled: usize,
    counts: PoolCounts,
    /// After a refusal, don't try `pipe2` again until this many pipes were returned:
    /// a process at its limit must not pay two failing syscalls per session.
    cool_down: u32,
    last_error: Option<io::ErrorKind>,
}

impl PipePool {
    /// A pool handing out pipes of `size` bytes and keeping at most `max_pooled` spare.
    pub fn new(size: usize, max_pooled: usize) -> PipePool {
        PipePool {
            free: Vec::new(),
            size,
            max_pooled,
            counts: PoolCounts::default(),
            cool_down: 0,
            last_error: None,
        }
    }

    /// A pipe, pooled or new; `None` when none can be had (counted).
    pub fn get(&mut self) -> Option<Pipe> {
        if let Some(p) = self.free.pop() {
            self.counts.in_use += 1;
            return Some(p);
        }
        if self.cool_down > 0 {
            self.counts.refused += 1;
            return None;
        }
        match Pipe::new(self.size) {
            Ok(p) => {
                self.counts.created += 1;
                self.counts.in_use += 1;
                Some(p)
            }
            Err(e) => {
                if self.last_error != Some(e.kind()) {
                    log::warn!(
                        "cannot make a {} byte splice pipe ({e}); pumps copy instead until pipes free up",
                        self.size
                    );
                    self.last_error = Some(e.kind());
                }
                self.counts.refused += 1;
                // Retry after a few pipes have come back (or right away if we hold none).
                self.cool_down = if self.counts.in_use == 0 { 0 } else { 16 };
                None
            }
        }
    }

    /// Returns an empty pipe. Pipes with bytes in them must be dropped instead.
    pub fn put(&mut self, pipe: Pipe) {
        self.counts.in_use = self.counts.in_use.saturating_sub(1);
        self.cool_down = self.cool_down.saturating_sub(1);
        if self.free.len() < self.max_pooled {
            self.free.push(pipe);
        }
    }

    /// Forgets a pipe that was dropped with bytes in it.
    pub fn discard(&mut self, pipe: Pipe) {
        self.counts.in_use = self.counts.in_use.saturating_sub(1);
        drop(pipe);
    }

    /// Counters so far.
    pub fn counts(&self) -> PoolCounts {
        self.counts
    }

    /// Spare pipes held right now.
    pub fn pooled(&self) -> usize {
        self.free.len()
    }
}

/// Reads `fs.pipe-max-size`, the largest pipe we may ask for without `CAP_SYS_RESOURCE`.
pub fn pipe_max_size() -> Option<usize> {
    crate::sysctl::read("fs/pipe-max-size")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_are_at_least_the_size_asked() {
        let p = Pipe::new(64 << 10).unwrap();
        assert!(p.capacity >= 64 << 10);
        let p = Pipe::new(128 << 10).unwrap();
        assert!(p.capacity >= 128 << 10);
    }

    #[test]
    fn pool_reuses_and_caps() {
        let mut pool = PipePool::new(64 << 10, 1);
        let a = pool.get().unwrap();
        let b = pool.get().unwrap();
        assert_eq!(pool.counts().created, 2);
        assert_eq!(pool.counts().in_use, 2);
        pool.put(a);
        pool.put(b);
        assert_eq!(pool.pooled(), 1, "only max_pooled pipes are kept");
        let _c = pool.get().unwrap();
        assert_eq!(pool.counts().created, 2, "the pooled pipe was reused");
        assert_eq!(pool.counts().in_use, 1);
    }

    #[test]
    fn an_impossible_size_is_refused_and_counted() {
        let mut pool = PipePool::new(1 << 30, 4);
        assert!(pool.get().is_none());
        assert_eq!(pool.counts().refused, 1);
    }
}
