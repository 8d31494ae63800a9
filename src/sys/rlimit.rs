//! Process limits: the open-file limit raised at start, and the reserve fd
//! a worker spends to shed a connection when accept hits that limit.

use std::fs::File;
use std::io;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the new soft
/// limit. Without `CAP_SYS_RESOURCE` the hard limit can't move, so this is
/// as far as an unprivileged proxy can go.
pub fn raise_nofile() -> io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

/// The soft `RLIMIT_NOFILE` now (`sluice_max_fds`).
pub fn nofile() -> io::Result<u64> {
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

/// CAP_SYS_ADMIN and CAP_SYS_RESOURCE: either exempts a process from the
/// per-user pipe memory limits (`fs.pipe-user-pages-soft`/`-hard`).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;

/// True if the per-user pipe memory limits apply to this process (it has
/// neither CAP_SYS_RESOURCE nor CAP_SYS_ADMIN, as in most containers).
pub fn pipe_limits_apply() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    eff & (1 << CAP_SYS_ADMIN) == 0 && eff & (1 << CAP_SYS_RESOURCE) == 0
}

/// One spare file descriptor held so that, when accept fails with `EMFILE`,
/// a worker can still take one connection off the queue and close it: the
/// client learns at once instead of waiting blind, and the queue moves.
#[derive(Debug)]
pub struct FdReserve(Option<File>);

impl FdReserve {
    /// Opens the reserve (`/dev/null`).
    pub fn new() -> FdReserve {
        FdReserve(File::open("/dev/null").ok())
    }

    /// Frees the reserve fd, runs `f`, then takes the fd back. Returns `None`
    /// if there was no reserve to spend.
    pub fn spend<T>(&mut self, f: impl FnOnce() -> T) -> Option<T> {
        let fd = self.0.take()?;
        drop(fd);
        let out = f();
        self.0 = File::open("/dev/null").ok();
        Some(out)
    }
}

impl Default for FdReserve {
    fn default() -> Self {
        FdReserve::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nofile_is_raised_to_the_hard_limit() {
        let n = raise_nofile().unwrap();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((n, soft), (hard, hard));
    }

    #[test]
    fn reserve_is_spent_and_taken_back() {
        let mut r = FdReserve::new();
        assert_eq!(r.spend(|| 7), Some(7));
        assert_eq!(r.spend(|| 8), Some(8), "the reserve was re-opened");
    }
}
