//! Overload shedding (`overload:`): above a share of the open-file limit in
//! use (or an amount of resident memory), new clients are refused with a
//! reset and `/readyz` says 503, so load balancers move traffic elsewhere
//! before the process runs out; below a lower threshold service resumes.
//!
//! Workers decide at accept without a syscall: fds in use are estimated as
//! what was open when serving started plus two per session and two per
//! splice pipe (a session waiting for its PROXY header or ClientHello has one:
//! the estimate errs towards shedding early). Memory is read by the control
//! thread once a second (`/proc/self/statm`: one small read). Every change of
//! state is logged and counted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::config::admission::Overload;

/// The thresholds and the current state, shared by the workers, the control thread and the admin port.
#[derive(Debug, Default)]
pub struct OverloadState {
    /// Shed from this many fds in use (0: fd shedding off).
    fd_max: AtomicU64,
    /// Resume below this many.
    fd_resume: AtomicU64,
    /// fds open before any session (listeners, polls, logs).
    fd_base: AtomicU64,
    /// The open-file limit the shares are of.
    nofile: AtomicU64,
    shedding_fds: AtomicBool,
    shedding_memory: AtomicBool,
    /// Times shedding started.
    pub episodes: AtomicU64,
}

impl OverloadState {
    /// Applies `overload` (start and reload) for a process with `nofile` fds
    /// and `base` of them open before any session.
    pub fn configure(&self, overload: Option<&Overload>, nofile: u64, base: u64) {
        let (max, resume) = overload
            .map_or((0, 0), |o| (nofile * u64::from(o.max_fd_use) / 100, nofile * u64::from(o.resume_fd_use) / 100));
        self.fd_max.store(max, Relaxed);
        self.fd_resume.store(resume, Relaxed);
        self.fd_base.store(base, Relaxed);
        self.nofile.store(nofile, Relaxed);
        if max == 0 {
            self.shedding_fds.store(false, Relaxed);
        }
    }

    /// Applies a reloaded `overload` with the limit and base known from the start.
    pub fn reconfigure(&self, overload: Option<&Overload>) {
        self.configure(overload, self.nofile.load(Relaxed), self.fd_base.load(Relaxed));
    }

    /// At accept: must this new client be refused? `sessions` and `pipes`
    /// are the process's now. Starts or ends shedding as the estimate crosses
    /// the thresholds (logged once per change).
    pub fn refuse(&self, sessions: usize, pipes: usize) -> bool {
        let max = self.fd_max.load(Relaxed);
        if max > 0 {
            let used = self.fd_base.load(Relaxed) + 2 * sessions as u64 + 2 * pipes as u64;
            if self.shedding_fds.load(Relaxed) {
                if used < self.fd_resume.load(Relaxed) {
                    if self.shedding_fds.compare_exchange(true, false, Relaxed, Relaxed).is_ok() {
                        log::info!("overload over: about {used} fds in use, below resume_fd_use; accepting again");
                    }
                } else {
                    return true;
                }
            } else if used >= max && self.shedding_fds.compare_exchange(false, true, Relaxed, Relaxed).is_ok() {
                self.episodes.fetch_add(1, Relaxed);
                log::warn!(
                    "overload: about {used} fds in use of the {max} max_fd_use allows: refusing new clients, \
                     /readyz says 503, until below {}",
                    self.fd_resume.load(Relaxed)
                );
                return true;
            } else if self.shedding_fds.load(Relaxed) {
                return true;
            }
        }
        self.shedding_memory.load(Relaxed)
    }

    /// The control thread's look at resident memory (bytes) against `overload`.
    pub fn check_memory(&self, overload: Option<&Overload>, rss: u64) {
        let Some((max, resume)) = overload.and_then(|o| o.max_memory.zip(o.resume_memory)) else {
            self.shedding_memory.store(false, Relaxed);
            return;
        };
        let shedding = self.shedding_memory.load(Relaxed);
        if !shedding && rss >= max {
            self.shedding_memory.store(true, Relaxed);
            self.episodes.fetch_add(1, Relaxed);
            log::warn!("overload: {rss} bytes resident, max_memory is {max}: refusing new clients, /readyz says 503");
        } else if shedding && rss < resume {
            self.shedding_memory.store(false, Relaxed);
            log::info!("overload over: {rss} bytes resident, below resume_memory; accepting again");
        }
    }

    /// Shedding now, for either reason (`/readyz`, `/stats`).
    pub fn is_shedding(&self) -> bool {
        self.shedding_fds.load(Relaxed) || self.shedding_memory.load(Relaxed)
    }
}

/// This process's resident memory in bytes (`/proc/self/statm`, in pages of
/// this machine's size: 4 KiB on x86-64, 16 or 64 KiB on some arm64 kernels), if readable.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// The page size (`sysconf(_SC_PAGESIZE)`), read once.
fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|n| u64::try_from(n).ok())
            .filter(|&n| n > 0)
            .unwrap_or(4096)
    })
}

/// File descriptors open in this process now (`/proc/self/fd`: a readdir of
/// one entry per fd, so at start and per metrics scrape, never per connection).
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overload() -> Overload {
        Overload { max_fd_use: 90, resume_fd_use: 80, max_memory: Some(1000), resume_memory: Some(900) }
    }

    #[test]
    fn fd_use_trips_at_the_maximum_and_recovers_below_resume() {
        let o = OverloadState::default();
        o.configure(Some(&overload()), 1000, 100);
        // 100 + 2 × 399 = 898 < 900: fine.
        assert!(!o.refuse(399, 0));
        assert!(o.refuse(400, 0), "100 + 800 = 900: shedding");
        assert!(o.is_shedding());
        assert!(o.refuse(360, 0), "850: still above resume (800)");
        assert!(!o.refuse(349, 0), "798: below resume, accepting again");
        assert!(!o.is_shedding());
        assert!(o.refuse(300, 100), "pipes count too: 100 + 600 + 200");
        assert_eq!(o.episodes.load(Relaxed), 2);
    }

    #[test]
    fn off_unless_configured_and_memory_has_its_own_thresholds() {
        let o = OverloadState::default();
        o.configure(None, 1000, 100);
        assert!(!o.refuse(10_000, 10_000));
        o.check_memory(Some(&overload()), 1000);
        assert!(o.is_shedding() && o.refuse(0, 0));
        o.check_memory(Some(&overload()), 950);
        assert!(o.is_shedding(), "between resume and max: still shedding");
        o.check_memory(Some(&overload()), 899);
        assert!(!o.is_shedding());
        assert!(resident_bytes().is_some_and(|b| b > 0));
        assert!(open_fds() > 2);
    }

    #[test]
    fn resident_memory_agrees_with_the_kernels_own_figure_in_kib() {
        // VmRSS is in kB whatever the page size; statm is in pages.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        let bytes = resident_bytes().unwrap();
        // Both move while the test runs: within 10 %, not a factor of 4 or 16.
        let (a, b) = (bytes as f64, (kib * 1024) as f64);
        assert!((a - b).abs() <= 0.1 * b, "statm says {bytes} bytes, VmRSS {kib} KiB");
    }
}
