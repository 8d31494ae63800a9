//! How sessions end, as a client sees it: a timeout that finds bytes still
//! in flight resets both sides (never a FIN after a truncated stream), a
//! quiet one closes cleanly, a drain lets a slow reader finish and an
//! upload that pauses go on instead of cutting them after a second of
//! stillness (closing quiet sessions early is `drain_close_idle_after`, off
//! by default), and a client whose upstream cannot be reached is reset, not
//! closed as if the answer were empty. (A reset passed on after the bytes
//! before it over a slow link is in `chaos.rs`: it needs a namespace.)

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::backends::{self, Stream, connect, read_digest};
use crate::harness::{Sluice, one_route};

both_modes! {
    an_idle_timeout_with_bytes_in_flight_resets_the_client => idle_with_bytes_in_flight;
    a_half_close_timeout_with_bytes_in_flight_resets_the_client => half_close_with_bytes_in_flight;
    a_drain_lets_a_stalled_reader_finish_instead_of_cutting_it => drain_stalled_reader;
    a_drain_lets_an_upload_that_pauses_arrive_whole => drain_paused_upload;
}

/// Reads exactly `n` bytes of stream `seed` from the start of `c`.
fn read_start(c: &mut std::net::TcpStream, seed: u64, n: usize) {
    let mut first = vec![0; n];
    c.read_exact(&mut first).expect("the transfer started");
    assert!(first == Stream::bytes(seed, n), "the first bytes differ");
}

/// A download whose client stops reading: sluice's pipe or buffer fills,
/// then the idle timeout fires with bytes in it.
fn idle_with_bytes_in_flight(mode: &str) {
    let total = 256u64 << 20;
    let up = backends::source(71, total);
    let s = Sluice::with_config(&one_route(mode, &[up], "    idle_timeout: 1s\n"), &[]);
    let mut c = connect(s.addr());
    read_start(&mut c, 71, 1 << 20);
    // The client stops reading; the session ends while it does.
    assert!(s.wait_log("reason=", Duration::from_secs(10)), "{mode}: the idle timeout never fired");
    match read_digest(&mut c, None) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Ok((n, _)) => {
            panic!("{mode}: a clean EOF after {} of {total} bytes: a cut download looked complete", n + (1 << 20))
        }
        Err(e) => panic!("{mode}: expected a reset, got {e}"),
    }
    assert!(s.log().contains("reason=idle_timeout_aborted"), "{mode}: not counted as aborted:\n{}", s.log());
}

/// A client that half-closed its request and stopped reading the answer:
/// the half-close timeout fires with the answer's bytes in flight.
fn half_close_with_bytes_in_flight(mode: &str) {
    let (up, _rx) = backends::reply_after_eof(72, 256 << 20);
    let s = Sluice::with_config(&one_route(mode, &[up], "    half_close_timeout: 1s\n"), &[]);
    let mut c = connect(s.addr());
    c.write_all(b"send me everything").expect("request");
    c.shutdown(Shutdown::Write).expect("half-close");
    read_start(&mut c, 72, 1 << 20);
    assert!(s.wait_log("reason=", Duration::from_secs(10)), "{mode}: the timeout never fired");
    match read_digest(&mut c, None) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Ok((n, _)) => panic!("{mode}: a clean EOF after {} bytes of the answer: it looked complete", n + (1 << 20)),
        Err(e) => panic!("{mode}: expected a reset, got {e}"),
    }
    assert!(s.log().contains("reason=half_close_timeout_aborted"), "{mode}: not counted as aborted:\n{}", s.log());
}

/// During a drain, a download whose reader pauses longer than the drain's
/// idle rule (1 s) is slow, not idle: it must finish, whole.
fn drain_stalled_reader(mode: &str) {
    let total = 32u64 << 20;
    let up = backends::source(73, total);
    let yaml = format!("drain_grace: 0s\ndrain_timeout: 30s\n{}", one_route(mode, &[up], ""));
    let mut s = Sluice::with_config(&yaml, &[]);
    let mut c = connect(s.addr());
    read_start(&mut c, 73, 1 << 20);
    s.signal(Signal::SIGTERM);
    assert!(s.wait_log("no new connections", Duration::from_secs(5)), "{mode}: the drain never started");
    // The stimulus, not a synchronisation: the reader stalls for a while (more than the old 1 s rule).
    std::thread::sleep(Duration::from_millis(2500));
    // (The count is the point here; byte-exactness is relay.rs's.)
    let (n, _) = read_digest(&mut c, None).unwrap_or_else(|e| panic!("{mode}: the transfer was cut: {e}"));
    assert_eq!(n + (1 << 20), total, "{mode}: a stalled reader got a clean EOF after part of the transfer");
    drop(c);
    let status = s.wait_exit(Duration::from_secs(10)).expect("exit once the transfer finished");
    assert_eq!(status.code(), Some(0));
    assert!(!s.log().contains("reason=drain_idle"), "{mode}: a session with bytes in flight was closed as idle");
}

/// During a drain, an upload whose client pauses mid-body (waiting on its
/// own disk, a user, a lock) is not idle but between messages a layer-4
/// proxy cannot see: it must go on, arrive whole, and the process exit 0
/// once it has. (A rule that closed sessions quiet for 1 s gave the
/// upstream a clean end after 1 MiB of 5.)
fn drain_paused_upload(mode: &str) {
    let total = 5usize << 20;
    let yaml = format!("drain_grace: 0s\ndrain_timeout: 30s\n{}", one_route(mode, &[backends::sink()], ""));
    let mut s = Sluice::with_config(&yaml, &[]);
    let mut c = connect(s.addr());
    let body = Stream::bytes(74, total);
    c.write_all(&body[..1 << 20]).expect("the first MiB");
    s.signal(Signal::SIGTERM);
    assert!(s.wait_log("no new connections", Duration::from_secs(5)), "{mode}: the drain never started");
    // The stimulus, not a synchronisation: the client pauses for 3 s.
    std::thread::sleep(Duration::from_secs(3));
    c.write_all(&body[1 << 20..]).unwrap_or_else(|e| panic!("{mode}: the upload was cut during its pause: {e}"));
    c.shutdown(Shutdown::Write).expect("half-close");
    let mut reply = [0u8; 16];
    c.read_exact(&mut reply).unwrap_or_else(|e| panic!("{mode}: no answer from the upstream: {e}\n{}", s.log()));
    let n = u64::from_be_bytes(reply[..8].try_into().expect("8 bytes"));
    let d = u64::from_be_bytes(reply[8..].try_into().expect("8 bytes"));
    assert_eq!(n, total as u64, "{mode}: the upstream got a clean end after {n} of {total} bytes");
    assert_eq!(d, Stream::digest(74, total as u64), "{mode}: the upload arrived different");
    drop(c);
    let status = s.wait_exit(Duration::from_secs(10)).expect("exit once the upload finished");
    assert_eq!(status.code(), Some(0), "{mode}");
    // The log is read from the child's stderr by a thread: its last lines may come after the exit.
    assert!(s.wait_log("reason=clean", Duration::from_secs(5)), "{mode}: not counted as clean:\n{}", s.log());
}

/// `drain_close_idle_after` (opt-in) closes a quiet session early in a
/// drain, with a FIN to each side, counted as `drain_idle`; without it the
/// same session runs on until the drain's deadline resets it.
#[test]
fn drain_close_idle_after_closes_quiet_sessions_early_only_where_set() {
    let route = one_route("auto", &[backends::echo()], "    drain_close_idle_after: 300ms\n");
    let yaml = format!("drain_grace: 0s\ndrain_timeout: 30s\n{route}");
    let mut s = Sluice::with_config(&yaml, &[]);
    let mut c = connect(s.addr());
    assert_eq!(backends::exchange(&mut c, b"ping").expect("echo"), b"ping");
    s.signal(Signal::SIGTERM);
    let mut b = [0; 1];
    assert_eq!(c.read(&mut b).expect("a clean close, not a reset"), 0, "the quiet session ends with a FIN");
    assert!(s.wait_log("reason=drain_idle aborted=false", Duration::from_secs(5)), "{}", s.log());
    let status = s.wait_exit(Duration::from_secs(10)).expect("exit once it closed");
    assert_eq!(status.code(), Some(0));

    // Not set: the same quiet session is still open when the drain's deadline resets it.
    let yaml = format!("drain_grace: 0s\ndrain_timeout: 2s\n{}", one_route("auto", &[backends::echo()], ""));
    let mut s = Sluice::with_config(&yaml, &[]);
    let mut c = connect(s.addr());
    assert_eq!(backends::exchange(&mut c, b"ping").expect("echo"), b"ping");
    s.signal(Signal::SIGTERM);
    match c.read(&mut b) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the drain's deadline to reset the session, got {other:?}\n{}", s.log()),
    }
    assert!(s.wait_log("reason=drained", Duration::from_secs(5)), "{}", s.log());
    assert!(s.wait_exit(Duration::from_secs(10)).is_some_and(|st| st.code() == Some(0)));
}

/// A client whose upstream cannot be reached (refused, `retries` spent)
/// is reset: a FIN with no byte reads as "the server answered nothing",
/// which a client may take for a complete, empty answer.
#[test]
fn a_client_whose_upstream_cannot_be_reached_is_reset_not_closed() {
    let s = Sluice::with_config(&one_route("auto", &[backends::refused()], ""), &[]);
    let mut b = [0; 1];
    // The reset may arrive before the connect has finished looking.
    match backends::connect_maybe_reset(s.addr()).and_then(|mut c| c.read(&mut b)) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected a reset, got {other:?} (Ok(0) is a FIN: an empty answer)\n{}", s.log()),
    }
    assert!(s.wait_log("reason=connect_failed aborted=true", Duration::from_secs(5)), "{}", s.log());
}

#[test]
fn a_quiet_idle_session_still_ends_with_a_fin() {
    let s = Sluice::with_config(&one_route("auto", &[backends::echo()], "    idle_timeout: 1s\n"), &[]);
    let mut c = connect(s.addr());
    let got = backends::exchange(&mut c, b"ping").expect("echo");
    assert_eq!(got, b"ping");
    let mut b = [0; 1];
    assert_eq!(c.read(&mut b).expect("a clean close, not a reset"), 0);
    assert!(s.wait_log("reason=idle_timeout aborted=false", Duration::from_secs(5)), "{}", s.log());
}
