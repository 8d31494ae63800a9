//! The wait before a reset is passed on. When one side fails, the bytes it
//! sent before are delivered into the survivor's socket, but a reset
//! (`SO_LINGER 0`) throws away whatever that socket has not sent or not had
//! acknowledged yet: on a real link, the last bytes. So the survivor is
//! reset only once its unacknowledged bytes (`SIOCOUTQ`) are zero, looked
//! at on a timer with a growing interval, never by blocking the worker; and
//! the wait gives up (resetting anyway) when nothing was acknowledged for
//! `LINGER_STALL` or after `LINGER_MAX` in all.

use std::io;
use std::time::{Duration, Instant};

use super::Side;
use super::relay::Relay;
use crate::metrics::CloseReason;

/// The first look at the survivor's send queue after the failure was
/// delivered: about a LAN round trip.
const FIRST_INTERVAL: Duration = Duration::from_millis(2);
/// Looks are at most this far apart (the interval doubles up to it).
const MAX_INTERVAL: Duration = Duration::from_millis(100);
/// Give up when the survivor acknowledged nothing for this long: it stopped
/// reading, or the path is dead; waiting longer would only hold an fd.
pub const LINGER_STALL: Duration = Duration::from_secs(2);
/// Give up after this long in all, even while bytes trickle through.
pub const LINGER_MAX: Duration = Duration::from_secs(10);

/// A session whose failed side's last bytes are on their way to the survivor.
#[derive(Debug)]
pub struct Linger {
    /// The relay it came from (sockets and byte counts; its pumps are released).
    pub relay: Relay,
    /// The side still there, to be reset.
    pub survivor: Side,
    /// What the session will be counted under.
    pub reason: CloseReason,
    since: Instant,
    unacked: usize,
    progressed_at: Instant,
    interval: Duration,
    next: Instant,
}

/// What a look at the survivor's send queue says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LingerCheck {
    /// Everything sent has been acknowledged: reset now.
    Delivered,
    /// Waited long enough: reset now, with this many bytes unacknowledged.
    GaveUp {
        /// Bytes the survivor had not acknowledged.
        unacked: usize,
    },
    /// Look again at this time.
    Wait(Instant),
}

impl Linger {
    /// Starts waiting at `now`.
    pub fn new(relay: Relay, survivor: Side, reason: CloseReason, now: Instant) -> Linger {
        Linger {
            relay,
            survivor,
            reason,
            since: now,
            unacked: usize::MAX,
            progressed_at: now,
            interval: FIRST_INTERVAL,
            next: now,
        }
    }

    /// When to look next.
    pub fn next_check(&self) -> Instant {
        self.next
    }

    /// Decides from the survivor's unacknowledged byte count at `now`.
    pub fn check(&mut self, unacked: io::Result<usize>, now: Instant) -> LingerCheck {
        let n = match unacked {
            Ok(0) => return LingerCheck::Delivered,
            Ok(n) => n,
            // The socket can't say (it failed too): nothing to wait for.
            Err(_) => return LingerCheck::GaveUp { unacked: 0 },
        };
        if n < self.unacked {
            if self.unacked != usize::MAX {
                self.progressed_at = now;
            }
            self.unacked = n;
        }
        let waited = now.saturating_duration_since(self.since);
        if now.saturating_duration_since(self.progressed_at) >= LINGER_STALL || waited >= LINGER_MAX {
            return LingerCheck::GaveUp { unacked: n };
        }
        self.next = now + self.interval;
        self.interval = (self.interval * 2).min(MAX_INTERVAL);
        LingerCheck::Wait(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RelayMode;
    use crate::session::Readiness;

    fn linger(now: Instant) -> Linger {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let relay = Relay::new(
            mio::net::TcpStream::from_std(s),
            Relay::pumps(RelayMode::Splice, &Default::default(), (0, 1), None),
            Readiness::default(),
            Readiness::default(),
            None,
            now,
        );
        Linger::new(relay, Side::Client, CloseReason::UpstreamReset, now)
    }

    #[test]
    fn resets_as_soon_as_everything_is_acknowledged() {
        let t0 = Instant::now();
        let mut l = linger(t0);
        assert_eq!(l.check(Ok(0), t0), LingerCheck::Delivered);
        let mut l = linger(t0);
        let LingerCheck::Wait(next) = l.check(Ok(1000), t0) else { panic!("should wait") };
        assert!(next > t0);
        assert_eq!(l.check(Ok(0), next), LingerCheck::Delivered);
    }

    #[test]
    fn looks_at_growing_intervals_and_keeps_waiting_while_bytes_are_acknowledged() {
        let t0 = Instant::now();
        let mut l = linger(t0);
        let mut now = t0;
        let mut last_gap = Duration::ZERO;
        let mut unacked = 10_000_000;
        // Bytes trickle out: 1,000 acknowledged per look, for 9 s.
        while now < t0 + Duration::from_secs(9) {
            match l.check(Ok(unacked), now) {
                LingerCheck::Wait(next) => {
                    let gap = next - now;
                    assert!(gap >= last_gap && gap <= MAX_INTERVAL, "{gap:?} after {last_gap:?}");
                    last_gap = gap;
                    now = next;
                }
                other => panic!("gave up on a survivor that makes progress: {other:?}"),
            }
            unacked -= 1000;
        }
        // But not forever.
        now = t0 + LINGER_MAX;
        assert_eq!(l.check(Ok(unacked - 1000), now), LingerCheck::GaveUp { unacked: unacked - 1000 });
    }

    #[test]
    fn gives_up_when_nothing_is_acknowledged_for_the_stall_time() {
        let t0 = Instant::now();
        let mut l = linger(t0);
        assert!(matches!(l.check(Ok(5000), t0), LingerCheck::Wait(_)));
        assert!(matches!(l.check(Ok(5000), t0 + LINGER_STALL / 2), LingerCheck::Wait(_)));
        assert_eq!(l.check(Ok(5000), t0 + LINGER_STALL), LingerCheck::GaveUp { unacked: 5000 });
        assert_eq!(linger(t0).check(Err(io::ErrorKind::NotConnected.into()), t0), LingerCheck::GaveUp { unacked: 0 });
    }
}
