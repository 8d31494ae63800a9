//! How a session ends, in one place: which timing rule fired, whether each
//! side gets a FIN or a reset, and the reason it is counted under.
//!
//! The rule a client can rely on: **a FIN means everything arrived.** A
//! session ends with a FIN only when both sides finished cleanly, or when
//! a timeout finds it truly quiet (no byte in a pipe or buffer, none unread
//! in either socket, no side failed). Everything else — a timeout with bytes
//! still in flight, a side that reset or failed, a drain that runs out of
//! time — resets, so a cut stream can never be mistaken for a complete one.
//! A side's reset is passed on only after the bytes it sent before it have
//! reached the survivor (`ResetWhenDelivered`, see `linger.rs`).

use super::Side;
use crate::metrics::CloseReason;

/// Which timing rule a session's timer stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// `proxy_protocol_timeout`: the client's PROXY header is late.
    Header,
    /// `client_hello_timeout`: the client's TLS ClientHello is late.
    Hello,
    /// `connect_timeout`: the connect attempt is late.
    Connect,
    /// `idle_timeout`: no byte either way.
    Idle,
    /// `half_close_timeout`: one direction finished, no byte since.
    HalfClose,
    /// The route's `drain_close_idle_after` while the worker drains (only
    /// where set: by default a draining session runs until it ends).
    DrainIdle,
    /// Time to look at a lingering survivor's send queue again.
    Linger,
    /// `relay: sockmap`: time to look at what the kernel moved and holds.
    Kernel,
}

/// How a session's sockets are closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Both closed quietly: each peer reads everything it was sent, then EOF.
    Fin,
    /// These sides are reset at once (`SO_LINGER 0`: their send queues are
    /// thrown away, the peer reads `ECONNRESET`); the others close quietly.
    Reset {
        /// Reset the client.
        client: bool,
        /// Reset the upstream.
        upstream: bool,
    },
    /// The other side failed: reset `survivor` once it has acknowledged
    /// every byte sent to it (bounded wait), so the bytes before the
    /// failure arrive and the failure arrives after them.
    ResetWhenDelivered {
        /// The side still there.
        survivor: Side,
    },
}

impl Ending {
    /// Reset the client (the session has no upstream to speak of).
    pub const RESET_CLIENT: Ending = Ending::Reset { client: true, upstream: false };
    /// Reset both sides at once.
    pub const RESET_BOTH: Ending = Ending::Reset { client: true, upstream: true };

    /// Reset `side` at once.
    pub fn reset(side: Side) -> Ending {
        Ending::Reset { client: side == Side::Client, upstream: side == Side::Upstream }
    }
}

/// Why and how a session ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct End {
    /// What it is counted under.
    pub reason: CloseReason,
    /// What each side gets.
    pub ending: Ending,
}

impl End {
    /// How a relaying session ends when the timer of rule `due` fires:
    /// quiet sessions with a FIN under the rule's reason, the rest reset
    /// under its `_aborted` reason. `None` for a rule that does not end a
    /// quiet-less session: `DrainIdle` never cuts bytes in flight (the
    /// session keeps its other timeouts and the drain's deadline).
    pub fn timeout(due: Due, quiet: bool) -> Option<End> {
        let (clean, aborted) = match due {
            Due::Idle => (CloseReason::IdleTimeout, CloseReason::IdleTimeoutAborted),
            Due::HalfClose => (CloseReason::HalfCloseTimeout, CloseReason::HalfCloseTimeoutAborted),
            Due::DrainIdle if quiet => (CloseReason::DrainIdle, CloseReason::DrainIdle),
            Due::DrainIdle | Due::Header | Due::Hello | Due::Connect | Due::Linger | Due::Kernel => return None,
        };
        Some(if quiet {
            End { reason: clean, ending: Ending::Fin }
        } else {
            End { reason: aborted, ending: Ending::RESET_BOTH }
        })
    }

    /// `side` failed (reset, or an error reading or writing it) and what it
    /// sent before has been delivered: pass the failure on.
    pub fn failed(side: Side) -> End {
        let reason = match side {
            Side::Client => CloseReason::ClientReset,
            Side::Upstream => CloseReason::UpstreamReset,
        };
        End { reason, ending: Ending::ResetWhenDelivered { survivor: side.other() } }
    }

    /// Both sides failed: nothing is left to deliver; `first` failed first.
    pub fn both_failed(first: Side) -> End {
        End { ending: Ending::RESET_BOTH, ..End::failed(first) }
    }

    /// Both directions finished: every byte delivered, a FIN each way.
    pub const CLEAN: End = End { reason: CloseReason::Clean, ending: Ending::Fin };

    /// Cut by the end of the drain (its deadline, or a second stop signal).
    pub const DRAINED: End = End { reason: CloseReason::Drained, ending: Ending::RESET_BOTH };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_with_bytes_in_flight_never_ends_with_a_fin() {
        for due in [Due::Idle, Due::HalfClose] {
            let quiet = End::timeout(due, true).unwrap();
            assert_eq!(quiet.ending, Ending::Fin, "{due:?}: a quiet session ends cleanly");
            let busy = End::timeout(due, false).unwrap();
            assert_eq!(busy.ending, Ending::RESET_BOTH, "{due:?}");
            assert!(busy.reason.as_str().ends_with("_aborted"), "{due:?}: {}", busy.reason);
            assert!(!quiet.reason.as_str().ends_with("_aborted"));
        }
    }

    #[test]
    fn the_drain_idle_rule_only_closes_quiet_sessions() {
        assert_eq!(
            End::timeout(Due::DrainIdle, true),
            Some(End { reason: CloseReason::DrainIdle, ending: Ending::Fin })
        );
        assert_eq!(End::timeout(Due::DrainIdle, false), None, "bytes in flight: let the drain's deadline decide");
    }

    #[test]
    fn a_failure_resets_the_survivor_after_delivery_and_two_reset_both() {
        let e = End::failed(Side::Upstream);
        assert_eq!(e.reason, CloseReason::UpstreamReset);
        assert_eq!(e.ending, Ending::ResetWhenDelivered { survivor: Side::Client });
        assert_eq!(End::failed(Side::Client).ending, Ending::ResetWhenDelivered { survivor: Side::Upstream });
        let both = End::both_failed(Side::Client);
        assert_eq!((both.reason, both.ending), (CloseReason::ClientReset, Ending::RESET_BOTH));
        assert_eq!(End::DRAINED.ending, Ending::RESET_BOTH);
        assert_eq!(Ending::reset(Side::Client), Ending::RESET_CLIENT);
    }
}
