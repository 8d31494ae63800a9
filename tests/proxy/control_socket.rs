//! The control socket belongs to its owner: it is made 0600 whatever the
//! umask, and a peer whose uid is neither ours nor root is refused (logged,
//! counted) — a takeover attempted as `nobody` fails and the running sluice
//! keeps serving. A takeover under way never holds up the control thread:
//! SIGTERM and SIGHUP are answered at once while a successor stalls, and
//! neither breaks the takeover off nor stops the sockets the successor
//! holds; a second successor is refused meanwhile; a reload asked meanwhile
//! happens once a failed takeover ended. Messages carrying more fds than a
//! packet may leave no fd behind.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sluice::handoff::wire::{Message, Peer};
use sluice::listen::ListenKey;

use crate::backends;
use crate::harness::{BIN, Sluice, run_command};
use crate::observability::{admin_addr, get};

/// One echo route, an admin port and the control socket `dir/c.sock`.
fn config(dir: &Path, echo: SocketAddr, admin: SocketAddr) -> String {
    format!(
        "workers: 1\ncontrol_socket: {}\ndrain_grace: 0s\ndrain_timeout: 5s\nadmin: {{ listen: \"{admin}\" }}\n\
         routes:\n  - name: echo\n    listen: 127.0.0.1:0\n    upstreams: [\"{echo}\"]\n",
        dir.join("c.sock").display()
    )
}

fn served(addr: SocketAddr) -> bool {
    let mut c = backends::connect(addr);
    backends::exchange(&mut c, b"still here").is_ok_and(|got| got == b"still here")
}

/// The value of the unlabelled sample `name` in /metrics.
fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = get(admin, "/metrics");
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_takeover_as_another_user_fails_and_the_running_sluice_keeps_serving() {
    let Some(drop_privs) = crate::nonroot::as_nobody() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    // Like /tmp: anyone may make a file here (nobody's own control socket), and reach the config.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let (echo, admin) = (backends::echo(), admin_addr());
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, config(dir.path(), echo, admin)).expect("config");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "umask 000; exec \"$0\" \"$@\"", BIN, "-c"]).arg(&path);
    let mut old = Sluice::spawn(cmd, 1, None);
    assert!(old.wait_log("control socket", Duration::from_secs(10)), "{}", old.log());
    let takeover_as_nobody = || {
        let mut cmd = Command::new("setpriv");
        cmd.args(&drop_privs).arg(BIN).arg("-c").arg(&path).arg("--takeover");
        run_command(cmd)
    };
    let (code, _, err) = takeover_as_nobody();
    assert!(old.alive(), "the running sluice stopped after nobody's takeover:\n{err}\n{}", old.log());
    assert!(!old.log().contains("takes over"), "nobody got the listening sockets:\n{}", old.log());
    assert!(served(old.addr()), "the running sluice stopped serving");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    let mode = std::fs::metadata(dir.path().join("c.sock")).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the control socket's mode under umask 000 is {:o}", mode & 0o777);
    // An operator opens the socket up by mistake: the peer check still says no.
    std::fs::set_permissions(dir.path().join("c.sock"), std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let (code, _, err) = takeover_as_nobody();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refused"), "{err}");
    assert!(old.wait_log("uid 65534", Duration::from_secs(5)), "the refusal is not logged:\n{}", old.log());
    assert_eq!(metric(admin, "sluice_control_refused_total"), Some(1.0));
    assert!(old.alive() && served(old.addr()));
    assert!(!old.log().contains("takes over"), "{}", old.log());
}

/// A fake successor that asked for the sockets and took the whole offer: its
/// connection, the listener keys offered and the fds received (the admin port's last).
struct Successor {
    peer: Peer,
    keys: Vec<ListenKey>,
    fds: Vec<OwnedFd>,
}

fn ask(sock: &Path) -> Successor {
    let peer = Peer::connect(sock, Duration::from_secs(10)).expect("connect to the control socket");
    peer.send(&Message::Takeover { pid: std::process::id() }, &[]).expect("ask");
    let Ok((Message::Offer { packets, listeners, .. }, _)) = peer.recv() else { panic!("no offer") };
    let mut fds = Vec::new();
    for _ in 0..packets {
        fds.extend(peer.recv().expect("sockets").1);
    }
    Successor { peer, keys: listeners.into_iter().map(|o| o.key).collect(), fds }
}

impl Successor {
    /// Says it serves everything offered; whether the old process answered `Draining`.
    fn ready(&self) -> Result<(), String> {
        self.peer.send(&Message::Ready { taken: self.keys.clone() }, &[]).map_err(|e| format!("saying ready: {e}"))?;
        match self.peer.recv() {
            Ok((Message::Draining, _)) => Ok(()),
            other => Err(format!("the old sluice answered Ready with {other:?}")),
        }
    }
}

/// A sluice with a control socket in `dir`, and a successor that took its offer and says nothing more.
fn stalled(dir: &Path) -> (Sluice, SocketAddr, Successor) {
    let (echo, admin) = (backends::echo(), admin_addr());
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, config(dir, echo, admin)).expect("config");
    let mut cmd = Command::new(BIN);
    cmd.arg("-c").arg(&path);
    let old = Sluice::spawn(cmd, 1, None);
    // It takes the offer, then stalls (the old one would wait 60 s for its Ready).
    let successor = ask(&dir.join("c.sock"));
    assert_eq!(successor.fds.len(), 2, "one listener and the admin port");
    (old, admin, successor)
}

/// A client's handshake with `addr` completes (whoever holds the listening socket).
fn handshake(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok()
}

#[test]
fn sigterm_is_answered_while_a_successor_stalls_and_the_takeover_still_completes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut old, admin, successor) = stalled(dir.path());
    let sent = Instant::now();
    old.signal(Signal::SIGTERM);
    assert!(old.wait_log("SIGTERM received", Duration::from_secs(1)), "SIGTERM unanswered:\n{}", old.log());
    assert_eq!(get(admin, "/readyz").0, 503);
    assert!(sent.elapsed() < Duration::from_secs(1), "SIGTERM took {:?}", sent.elapsed());
    // The successor may serve on its copies already: the old one must not stop them accepting.
    assert!(served(old.addr()), "a client after the SIGTERM was not served");
    successor.ready().unwrap_or_else(|e| panic!("{e}\n{}", old.log()));
    assert!(handshake(old.addr()), "the handed-over socket no longer completes handshakes:\n{}", old.log());
    let status = old.wait_exit(Duration::from_secs(15)).expect("the old sluice exits after the handover");
    assert_eq!(status.code(), Some(0), "{}", old.log());
}

#[test]
fn sigterm_during_a_stalled_takeover_stops_once_the_successor_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut old, _admin, successor) = stalled(dir.path());
    let sent = Instant::now();
    old.signal(Signal::SIGTERM);
    assert!(old.wait_log("SIGTERM received", Duration::from_secs(1)), "SIGTERM unanswered:\n{}", old.log());
    assert!(sent.elapsed() < Duration::from_secs(1), "SIGTERM took {:?}", sent.elapsed());
    drop(successor);
    let status = old.wait_exit(Duration::from_secs(15)).expect("the old sluice exits once the successor is gone");
    assert_eq!(status.code(), Some(0), "{}", old.log());
}

#[test]
fn sighup_and_a_second_successor_are_answered_while_one_stalls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut old, _admin, successor) = stalled(dir.path());
    old.signal(Signal::SIGHUP);
    assert!(old.wait_log("SIGHUP received", Duration::from_secs(1)), "SIGHUP unanswered:\n{}", old.log());
    let second = Peer::connect(&dir.path().join("c.sock"), Duration::from_secs(5)).expect("connect");
    second.send(&Message::Takeover { pid: 1 }, &[]).expect("ask");
    match second.recv() {
        Ok((Message::Refused { reason }, _)) => assert!(reason.contains("under way"), "{reason}"),
        other => panic!("a second successor got {other:?}\n{}", old.log()),
    }
    assert!(served(old.addr()), "the old sluice stopped serving during the stalled takeover");
    // Neither broke the takeover off.
    successor.ready().unwrap_or_else(|e| panic!("{e}\n{}", old.log()));
    assert!(handshake(old.addr()));
    assert_eq!(old.wait_exit(Duration::from_secs(15)).and_then(|s| s.code()), Some(0), "{}", old.log());
}

#[test]
fn a_reload_asked_during_a_takeover_that_fails_is_done_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut old, _admin, successor) = stalled(dir.path());
    old.signal(Signal::SIGHUP);
    assert!(old.wait_log("SIGHUP received", Duration::from_secs(1)), "SIGHUP unanswered:\n{}", old.log());
    drop(successor);
    assert!(old.wait_log("still serving", Duration::from_secs(5)), "{}", old.log());
    assert!(old.wait_log("reloaded", Duration::from_secs(5)), "no reload after the takeover:\n{}", old.log());
    assert!(old.alive() && served(old.addr()));
}

#[test]
fn messages_with_too_many_fds_leave_no_fd_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (echo, admin) = (backends::echo(), admin_addr());
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, config(dir.path(), echo, admin)).expect("config");
    let mut cmd = Command::new(BIN);
    cmd.arg("-c").arg(&path);
    let old = Sluice::spawn(cmd, 1, None);
    let sock = dir.path().join("c.sock");
    let before = old.fd_targets().len();
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    // 253 (the kernel's most per message) where a packet may carry 200: the receiver's control buffer overflows.
    let fds = vec![null.as_fd(); 253];
    for i in 0..50 {
        let peer = Peer::connect(&sock, Duration::from_secs(10)).expect("connect to the control socket");
        peer.send(&Message::Takeover { pid: std::process::id() }, &fds).expect("send");
        match peer.recv() {
            Ok((Message::Refused { .. }, _)) => {}
            other => panic!("message {i}: expected a refusal, got {other:?}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut now = old.fd_targets().len();
    while now > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        now = old.fd_targets().len();
    }
    assert!(now <= before, "sluice held {before} fds before 50 truncated messages and {now} after");
    assert!(served(old.addr()));
}
