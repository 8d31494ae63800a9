//! Which relay modes the kernel allows this process, and the mode a setting
//! really gets. `uring` and `sockmap` ask the kernel for something it may
//! refuse (a seccomp filter, a missing capability, a sysctl, an older
//! kernel); where it does they fall back to `auto`, with one warning per
//! mode for the process's life (a reload that asks again says nothing new).
//! Each probe runs once and its answer is kept: the refusals it sees do not
//! change while the process runs. The probes themselves are `ring.rs`'s and
//! `sys/sockmap.rs`'s; `server`, `route` and `doctor` decide what to do with
//! the answers.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::RelayMode;

/// Sockets the probe's sockhash may hold: the fewest that make one.
const PROBE_CAPACITY: u32 = 2;

/// Why this process may not use io_uring (`relay: uring`); `None`: it may.
pub fn uring_refused() -> Option<String> {
    static ANSWER: OnceLock<Option<String>> = OnceLock::new();
    ANSWER.get_or_init(|| super::ring::probe().err()).clone()
}

/// Why this process may not relay inside the kernel (`relay: sockmap`);
/// `None`: it may.
pub fn sockmap_refused() -> Option<String> {
    static ANSWER: OnceLock<Option<String>> = OnceLock::new();
    ANSWER.get_or_init(|| crate::sys::sockmap::Sockmap::new(PROBE_CAPACITY).err().map(|e| e.to_string())).clone()
}

/// Why `mode` falls back to `auto` here; `None` for every mode that runs as
/// configured.
pub fn refused(mode: RelayMode) -> Option<String> {
    match mode {
        RelayMode::Uring => uring_refused(),
        RelayMode::Sockmap => sockmap_refused(),
        RelayMode::Splice | RelayMode::Copy | RelayMode::Auto => None,
    }
}

/// The mode a setting asking `wanted` really gets: `wanted`, or `auto`
/// where the kernel refuses it, said once per mode.
pub fn effective(wanted: RelayMode) -> RelayMode {
    static SAID_URING: AtomicBool = AtomicBool::new(false);
    static SAID_SOCKMAP: AtomicBool = AtomicBool::new(false);
    let Some(why) = refused(wanted) else {
        return wanted;
    };
    let said = if wanted == RelayMode::Uring { &SAID_URING } else { &SAID_SOCKMAP };
    if !said.swap(true, Ordering::Relaxed) {
        log::warn!("relay: {wanted} is not available here: {why}; relaying with relay: auto instead");
    }
    RelayMode::Auto
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_that_need_nothing_of_the_kernel_are_never_refused() {
        for m in [RelayMode::Splice, RelayMode::Copy, RelayMode::Auto] {
            assert_eq!(refused(m), None);
            assert_eq!(effective(m), m);
        }
    }

    #[test]
    fn a_refused_mode_falls_back_to_auto() {
        for m in [RelayMode::Uring, RelayMode::Sockmap] {
            let want = if refused(m).is_some() { RelayMode::Auto } else { m };
            assert_eq!(effective(m), want, "{m}");
        }
    }
}
