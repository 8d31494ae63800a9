//! A session's claim on one of its route's upstreams: counted in that
//! upstream's active sessions from `Session::claim` until given back, and,
//! for the one half-open try of an ejected upstream, the probe whose verdict
//! the upstream waits for.
//!
//! A claim is a value without `Clone`: an attempt holds it
//! (`Stage::Connecting`), the stage change to relaying moves it into the
//! relaying stage and on into the wait before a reset, and whoever ends the
//! stage that holds it gets it back (`Session::drop_attempt`, `unconnect`,
//! `close`) and gives it back with `release`, which consumes it. So "given
//! back exactly once" is a fact of the types, not of flags. What the
//! upstream's health makes of the outcome (success, outlier failure, an
//! abandoned probe) is the worker's.

use crate::route::Route;

/// Upstream `index` of the session's route counts this session (see the module doc).
#[derive(Debug)]
#[must_use = "a claim is given back with `release`, or the upstream counts the session for ever"]
pub struct Claim {
    /// Index in `route.upstreams`.
    index: usize,
    /// The one half-open try of an ejected upstream, still without a verdict.
    probing: bool,
}

impl Claim {
    /// Counts the session in upstream `index` of `route` (`probing`: as its half-open try).
    pub(super) fn take(route: &Route, index: usize, probing: bool) -> Claim {
        route.upstreams.upstreams[index].health.session_started();
        Claim { index, probing }
    }

    /// The attempt connected: the claim goes on counting, no longer as a
    /// half-open try. The flag says whether it was one (the caller reports
    /// its success).
    pub(super) fn connected(self) -> (Claim, bool) {
        (Claim { probing: false, ..self }, self.probing)
    }

    /// Gives the count back to the upstream of `route` it was taken in:
    /// which upstream that was, and whether the claim was still its
    /// half-open try (whose verdict the caller gives).
    pub fn release(self, route: &Route) -> (usize, bool) {
        route.upstreams.upstreams[self.index].health.session_ended();
        (self.index, self.probing)
    }
}
