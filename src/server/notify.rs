//! Talking to systemd's notify socket (`sd_notify(3)`): where `NOTIFY_SOCKET`
//! points (a path, or an abstract `@name`), whether the watchdog is ours
//! (`WATCHDOG_USEC`, `WATCHDOG_PID`), and the text of each message. When to
//! send what is the control thread's (`systemd.rs`); this file does no more
//! than the datagram.
//!
//! A few lines over a Unix datagram socket rather than the `sd-notify`
//! crate: its `notify` connects to `NOTIFY_SOCKET` as a file path, so an
//! abstract address (`@/org/freedesktop/systemd1/notify`, as systemd's user
//! instances and some container managers use) would not work.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// How long a send may wait on a full queue: systemd reads its socket
/// quickly; a stuck manager must not stop the control thread for long.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// The notify socket, ready to send to.
#[derive(Debug)]
pub(super) struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
}

impl Notifier {
    /// The socket `NOTIFY_SOCKET` names, or `None` when it is unset (a bad
    /// value is logged once and ignored: sluice serves without it).
    pub(super) fn from_env() -> Option<Notifier> {
        let value = std::env::var_os("NOTIFY_SOCKET")?;
        let made = address(&value).and_then(|to| {
            let socket = UnixDatagram::unbound()?;
            socket.set_write_timeout(Some(SEND_TIMEOUT))?;
            Ok(Notifier { socket, to })
        });
        match made {
            Ok(n) => Some(n),
            Err(e) => {
                log::warn!("NOTIFY_SOCKET={}: {e}; not telling systemd anything", value.to_string_lossy());
                None
            }
        }
    }

    /// Sends `msg` (newline-separated `KEY=value` lines). A failure is
    /// logged: systemd then acts on what it did not hear (a start or
    /// watchdog timeout), which is the operator's signal.
    pub(super) fn send(&self, msg: &str) {
        log::debug!("sd_notify: {}", msg.replace('\n', " "));
        if let Err(e) = self.socket.send_to_addr(msg.as_bytes(), &self.to) {
            log::warn!("telling systemd {:?} failed: {e}", msg.lines().next().unwrap_or_default());
        }
    }
}

/// The address `NOTIFY_SOCKET` names: an absolute path, or `@name` for the
/// abstract namespace.
pub(super) fn address(value: &OsStr) -> io::Result<SocketAddr> {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(value),
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "neither an absolute path nor an @abstract name")),
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, if it is set,
/// positive, and meant for this process (`WATCHDOG_PID` unset or `own`).
pub(super) fn watchdog_every(usec: Option<&str>, pid: Option<&str>, own: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own) {
            return None;
        }
    }
    Some(Duration::from_micros(usec) / 2)
}

/// `READY=1`, after a start or a reload, with the status line.
pub(super) fn ready(status: &str) -> String {
    format!("READY=1\nSTATUS={}", one_line(status))
}

/// A successor took the service over: `MAINPID=` first, so that systemd
/// takes `READY=1` as the new main process's.
pub(super) fn ready_as_main(pid: u32, status: &str) -> String {
    format!("MAINPID={pid}\n{}", ready(status))
}

/// A reload starts, at `monotonic_usec` (`CLOCK_MONOTONIC`, as systemd wants it).
pub(super) fn reloading(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}\nSTATUS=reloading the configuration")
}

/// The drain starts.
pub(super) fn stopping(status: &str) -> String {
    format!("STOPPING=1\nSTATUS={}", one_line(status))
}

/// Only the status line changed.
pub(super) fn status(status: &str) -> String {
    format!("STATUS={}", one_line(status))
}

/// The handover: `pid` is the service's main process from now on.
pub(super) fn main_pid(pid: u32) -> String {
    format!("MAINPID={pid}")
}

/// The workers answered: the watchdog may be fed.
pub(super) const WATCHDOG: &str = "WATCHDOG=1";

/// `CLOCK_MONOTONIC` now, in microseconds (`MONOTONIC_USEC=`).
pub(super) fn monotonic_usec() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        let micros = i128::from(t.tv_sec()) * 1_000_000 + i128::from(t.tv_nsec()) / 1_000;
        u64::try_from(micros).unwrap_or(0)
    })
}

/// A status is one line: a newline would start a new `KEY=value`.
fn one_line(s: &str) -> String {
    s.split(['\n', '\r']).map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_key_value_lines() {
        assert_eq!(ready("serving"), "READY=1\nSTATUS=serving");
        assert_eq!(ready_as_main(42, "serving"), "MAINPID=42\nREADY=1\nSTATUS=serving");
        assert_eq!(reloading(123), "RELOADING=1\nMONOTONIC_USEC=123\nSTATUS=reloading the configuration");
        assert_eq!(stopping("draining"), "STOPPING=1\nSTATUS=draining");
        assert_eq!(status("x"), "STATUS=x");
        assert_eq!(main_pid(7), "MAINPID=7");
    }

    #[test]
    fn a_status_never_spans_lines() {
        assert_eq!(
            ready("reload failed: a.yaml:3:1:\n  routes: bad\n"),
            "READY=1\nSTATUS=reload failed: a.yaml:3:1: routes: bad"
        );
        assert_eq!(status("a\r\nREADY=1"), "STATUS=a READY=1");
    }

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        let a = address(OsStr::new("@sluice-test")).expect("abstract");
        assert_eq!(a.as_abstract_name(), Some(&b"sluice-test"[..]));
        let p = address(OsStr::new("/run/systemd/notify")).expect("path");
        assert_eq!(p.as_pathname(), Some(std::path::Path::new("/run/systemd/notify")));
        assert!(address(OsStr::new("relative/notify")).is_err());
        assert!(address(OsStr::new("")).is_err());
    }

    #[test]
    fn the_watchdog_is_half_the_interval_and_only_ours() {
        let half = Some(Duration::from_secs(5));
        assert_eq!(watchdog_every(Some("10000000"), None, 9), half);
        assert_eq!(watchdog_every(Some("10000000"), Some("9"), 9), half);
        assert_eq!(watchdog_every(Some("10000000"), Some("8"), 9), None);
        assert_eq!(watchdog_every(Some("10000000"), Some("x"), 9), None);
        assert_eq!(watchdog_every(Some("0"), None, 9), None);
        assert_eq!(watchdog_every(Some("ten"), None, 9), None);
        assert_eq!(watchdog_every(None, Some("9"), 9), None);
    }

    #[test]
    fn messages_reach_a_bound_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).expect("bind");
        let n =
            Notifier { socket: UnixDatagram::unbound().expect("socket"), to: address(path.as_os_str()).expect("addr") };
        n.send(&ready("up"));
        let mut buf = [0; 256];
        let len = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up");
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(a > 0 && b >= a, "{a} {b}");
    }
}
