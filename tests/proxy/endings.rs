//! How sessions end, as a client sees it: a timeout that finds bytes still
//! in flight resets both sides (never a FIN after a truncated stream), a
//! quiet one closes cleanly, and a drain lets a slow reader finish instead
//! of cutting it after a second of stillness. (A reset passed on after the
//! bytes before it over a slow link is in `chaos.rs`: it needs a namespace.)

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
    // The stimulus, not a synchronisation: the reader stalls for more than DRAIN_IDLE.
    std::thread::sleep(Duration::from_millis(2500));
    // (The count is the point here; byte-exactness is relay.rs's.)
    let (n, _) = read_digest(&mut c, None).unwrap_or_else(|e| panic!("{mode}: the transfer was cut: {e}"));
    assert_eq!(n + (1 << 20), total, "{mode}: a stalled reader got a clean EOF after part of the transfer");
    drop(c);
    let status = s.wait_exit(Duration::from_secs(10)).expect("exit once the transfer finished");
    assert_eq!(status.code(), Some(0));
    assert!(!s.log().contains("reason=drain_idle"), "{mode}: a session with bytes in flight was closed as idle");
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
