//! `cpu_affinity: true`: pin worker *i* to the *i*-th CPU this process may
//! run on (its `sched_getaffinity` mask, which a container's cpuset narrows).

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> nix::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0))?;
    Ok((0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect())
}

/// Pins the calling thread (worker `worker`) to the `worker`-th allowed CPU,
/// wrapping around when there are more workers than CPUs. Returns the CPU.
pub fn pin_worker(worker: usize) -> nix::Result<usize> {
    let cpus = allowed_cpus()?;
    let Some(&cpu) = cpus.get(worker % cpus.len().max(1)) else {
        return Err(nix::errno::Errno::EINVAL);
    };
    let mut set = CpuSet::new();
    set.set(cpu)?;
    // Pid 0 is the calling thread for sched_setaffinity.
    sched_setaffinity(Pid::from_raw(0), &set)?;
    Ok(cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_thread_runs_on_one_allowed_cpu() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        let cpu = std::thread::spawn(|| {
            let cpu = pin_worker(1).unwrap();
            (cpu, allowed_cpus().unwrap())
        })
        .join()
        .unwrap();
        assert!(allowed.contains(&cpu.0));
        assert_eq!(cpu.1, vec![cpu.0], "the thread may run on that CPU only");
        assert_eq!(allowed_cpus().unwrap(), allowed, "other threads are not affected");
    }
}
