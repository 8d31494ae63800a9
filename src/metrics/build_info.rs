//! What this binary is and can do here (`sluice_build_info`): its version,
//! the commit it was built from (handed over by `build.rs`), and the relay
//! modes it can run on this kernel. The io_uring and sockmap probes
//! (`relay/modes.rs`) run once, at start or on the first scrape (never on a
//! worker); the answers are kept for the process's life.

use std::sync::OnceLock;

use crate::config::RelayMode;
use crate::relay;

/// The commit label when the build knew none (built outside git).
pub const UNKNOWN_COMMIT: &str = "unknown";

/// The git commit this binary was built from, or `unknown`.
pub fn commit() -> &'static str {
    option_env!("SLUICE_COMMIT").filter(|c| !c.is_empty()).unwrap_or(UNKNOWN_COMMIT)
}

/// The relay modes that run as configured here, comma-separated in a fixed
/// order: `splice`, `copy` and `auto` always; `uring` only where io_uring
/// may be set up, `sockmap` only where a BPF sockhash may be made (elsewhere
/// each falls back to `auto`).
pub fn relay_modes() -> &'static str {
    static MODES: OnceLock<String> = OnceLock::new();
    MODES.get_or_init(|| modes(relay::modes::uring_refused().is_none(), relay::modes::sockmap_refused().is_none()))
}

fn modes(uring: bool, sockmap: bool) -> String {
    let mut m = vec![RelayMode::Splice, RelayMode::Copy, RelayMode::Auto];
    if uring {
        m.push(RelayMode::Uring);
    }
    if sockmap {
        m.push(RelayMode::Sockmap);
    }
    m.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uring_and_sockmap_are_listed_only_where_they_may_run() {
        assert_eq!(modes(false, false), "splice,copy,auto");
        assert_eq!(modes(true, false), "splice,copy,auto,uring");
        assert_eq!(modes(false, true), "splice,copy,auto,sockmap");
        assert_eq!(modes(true, true), "splice,copy,auto,uring,sockmap");
    }

    #[test]
    fn the_commit_is_a_hash_or_unknown() {
        let c = commit();
        assert!(c == UNKNOWN_COMMIT || c.chars().all(|ch| ch.is_ascii_hexdigit()), "{c:?}");
    }
}
