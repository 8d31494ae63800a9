//! What this binary is and can do here (`sluice_build_info`): its version,
//! the commit it was built from (handed over by `build.rs`), and the relay
//! modes it can run on this kernel. The io_uring probe runs once, on the
//! first scrape (never on a worker); the answer is kept for the process's life.

use std::sync::OnceLock;

use crate::config::RelayMode;

/// The commit label when the build knew none (built outside git).
pub const UNKNOWN_COMMIT: &str = "unknown";

/// The git commit this binary was built from, or `unknown`.
pub fn commit() -> &'static str {
    option_env!("SLUICE_COMMIT").filter(|c| !c.is_empty()).unwrap_or(UNKNOWN_COMMIT)
}

/// The relay modes that run as configured here, comma-separated in a fixed
/// order: `splice`, `copy` and `auto` always; `uring` only where io_uring
/// may be set up (elsewhere `relay: uring` falls back to `auto`).
pub fn relay_modes() -> &'static str {
    static MODES: OnceLock<String> = OnceLock::new();
    MODES.get_or_init(|| modes(crate::relay::ring::probe().is_ok()))
}

fn modes(uring: bool) -> String {
    let mut m = vec![RelayMode::Splice, RelayMode::Copy, RelayMode::Auto];
    if uring {
        m.push(RelayMode::Uring);
    }
    m.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uring_is_listed_only_where_it_may_run() {
        assert_eq!(modes(false), "splice,copy,auto");
        assert_eq!(modes(true), "splice,copy,auto,uring");
    }

    #[test]
    fn the_commit_is_a_hash_or_unknown() {
        let c = commit();
        assert!(c == UNKNOWN_COMMIT || c.chars().all(|ch| ch.is_ascii_hexdigit()), "{c:?}");
    }
}
