//! `Type=notify` with the test playing systemd: it binds a datagram socket,
//! starts sluice with `NOTIFY_SOCKET` naming it, and reads what arrives.
//! `READY=1` comes once, with the routes serving; a SIGHUP brings
//! `RELOADING=1` (with `MONOTONIC_USEC=`) then `READY=1`, a broken file too
//! (with a status saying it failed); SIGTERM brings `STOPPING=1`. With
//! `WATCHDOG_USEC` set, `WATCHDOG=1` keeps coming (not when `WATCHDOG_PID`
//! names another process); an abstract `@name` socket works as a path
//! does. A takeover names the successor `MAINPID=`, and the old process
//! says nothing after.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::backends;
use crate::harness::{BIN, Sluice};

/// How long any one message may take on a busy machine.
const WAIT: Duration = Duration::from_secs(20);

/// The test's end of the notify socket.
struct FakeSystemd {
    socket: UnixDatagram,
    /// What `NOTIFY_SOCKET` says.
    env: String,
}

impl FakeSystemd {
    /// A socket at a path in `dir`.
    fn at(dir: &Path) -> FakeSystemd {
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        FakeSystemd { socket, env: path.to_str().expect("utf-8").to_owned() }
    }

    /// A socket in the abstract namespace.
    fn abstract_named() -> FakeSystemd {
        let name = format!("sluice-test-notify-{}-{}", std::process::id(), fastrand::u64(..));
        let addr = UnixAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
        let socket = UnixDatagram::bind_addr(&addr).expect("bind the abstract notify socket");
        FakeSystemd { socket, env: format!("@{name}") }
    }

    /// The next message, waiting at most `within`.
    fn next(&self, within: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(within)).expect("timeout");
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// The next message that is more than a status refresh (`STATUS=` alone).
    fn next_state(&self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self.next(left.max(Duration::from_millis(1))).expect("a message from sluice in time");
            if !msg.lines().all(|l| l.starts_with("STATUS=")) {
                return msg;
            }
        }
    }
}

/// `KEY=` line of `msg`, its value.
fn value<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn yaml(up: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "workers: 2\ndrain_grace: 0s\ndrain_timeout: 5s\n{extra}routes:\n  - name: web\n    listen: 127.0.0.1:0\n    \
         upstreams: [\"{up}\"]\n"
    )
}

fn spawn(path: &Path, sd: &FakeSystemd, env: &[(&str, &str)], extra: &[&str]) -> Sluice {
    let mut cmd = Command::new(BIN);
    cmd.arg("-c")
        .arg(path)
        .args(extra)
        .env("NOTIFY_SOCKET", &sd.env)
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Sluice::spawn(cmd, 1, None)
}

/// One echo round trip through `addr`.
fn echoes(addr: std::net::SocketAddr) {
    let mut c = backends::connect(addr);
    let msg = backends::Stream::bytes(5, 300);
    assert_eq!(backends::exchange(&mut c, &msg).expect("echo"), msg);
}

#[test]
fn notify_messages_follow_start_reload_bad_reload_and_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sd = FakeSystemd::at(dir.path());
    let up = backends::echo();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, yaml(up, "")).expect("config");
    let mut s = spawn(&path, &sd, &[], &[]);

    let ready = sd.next_state();
    assert_eq!(ready.lines().next(), Some("READY=1"), "the first message: {ready:?}");
    let status = value(&ready, "STATUS").expect("a status with READY=1");
    assert!(status.contains("serving 1 route(s) on 2 worker(s)") && status.contains("last reload: none"), "{status}");
    // Ready means serving: every worker has taken its routes.
    echoes(s.addr());

    // A good reload: RELOADING=1 with the monotonic clock, then READY=1.
    std::fs::write(&path, yaml(up, "max_connections: 500\n")).expect("config");
    s.signal(Signal::SIGHUP);
    let reloading = sd.next_state();
    assert_eq!(reloading.lines().next(), Some("RELOADING=1"), "{reloading:?}");
    let t1: u64 = value(&reloading, "MONOTONIC_USEC").expect("MONOTONIC_USEC").parse().expect("a number");
    let ready = sd.next_state();
    assert_eq!(ready.lines().next(), Some("READY=1"), "{ready:?}");
    assert!(value(&ready, "STATUS").is_some_and(|st| st.contains("last reload: ok at")), "{ready:?}");

    // A broken file: still READY=1 after RELOADING=1 (the old config serves), and the status says it failed.
    std::fs::write(&path, "routes: [ { name: web, listen: nowhere } ]\n").expect("config");
    s.signal(Signal::SIGHUP);
    let reloading = sd.next_state();
    assert_eq!(reloading.lines().next(), Some("RELOADING=1"), "{reloading:?}");
    let t2: u64 = value(&reloading, "MONOTONIC_USEC").expect("MONOTONIC_USEC").parse().expect("a number");
    assert!(t2 > t1, "MONOTONIC_USEC went from {t1} to {t2}");
    let ready = sd.next_state();
    assert_eq!(ready.lines().next(), Some("READY=1"), "{ready:?}");
    let status = value(&ready, "STATUS").expect("status");
    assert!(status.contains("last reload: FAILED at") && status.contains("proxy.yaml"), "{status}");
    echoes(s.addr());

    // SIGTERM: STOPPING=1, then nothing but status lines until the exit.
    s.signal(Signal::SIGTERM);
    let stopping = sd.next_state();
    assert_eq!(stopping.lines().next(), Some("STOPPING=1"), "{stopping:?}");
    assert!(value(&stopping, "STATUS").is_some_and(|st| st.starts_with("draining")), "{stopping:?}");
    let status = s.wait_exit(WAIT).expect("sluice exits after SIGTERM");
    assert!(status.success(), "{status}");
    while let Some(msg) = sd.next(Duration::from_millis(50)) {
        assert!(msg.lines().all(|l| l.starts_with("STATUS=")), "after STOPPING=1: {msg:?}");
    }
}

#[test]
fn the_watchdog_is_fed_on_an_abstract_socket() {
    let sd = FakeSystemd::abstract_named();
    let (dir, path) = crate::harness::temp_config(&yaml(backends::echo(), ""));
    // 400 ms: WATCHDOG=1 every 200 ms.
    let mut s = spawn(&path, &sd, &[("WATCHDOG_USEC", "400000")], &[]);
    assert_eq!(sd.next_state().lines().next(), Some("READY=1"));
    let mut fed = 0;
    let deadline = Instant::now() + WAIT;
    while fed < 5 {
        assert!(Instant::now() < deadline, "only {fed} WATCHDOG=1 in {WAIT:?}:\n{}", s.log());
        if sd.next_state() == "WATCHDOG=1" {
            fed += 1;
        }
    }
    // It goes on through the drain, while the workers answer.
    s.signal(Signal::SIGTERM);
    assert!(s.wait_exit(WAIT).expect("exits").success());
    drop(dir);
}

/// The thread of `pid` named `name` (`/proc/PID/task/*/comm`).
fn thread_named(pid: i32, name: &str) -> Option<nix::unistd::Pid> {
    std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten().find_map(|t| {
        let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
        let tid: i32 = t.file_name().to_str()?.parse().ok()?;
        (comm.trim() == name).then(|| nix::unistd::Pid::from_raw(tid))
    })
}

#[test]
fn a_hung_worker_stops_the_watchdog_and_its_return_restarts_it() {
    use nix::sys::ptrace;
    use nix::sys::wait::{WaitPidFlag, waitpid};
    let sd = FakeSystemd::abstract_named();
    let (dir, path) = crate::harness::temp_config(&yaml(backends::echo(), ""));
    let mut s = spawn(&path, &sd, &[("WATCHDOG_USEC", "400000")], &["--workers", "1"]);
    assert_eq!(sd.next_state().lines().next(), Some("READY=1"));
    let fed = |sd: &FakeSystemd, within: Duration| {
        let until = Instant::now() + within;
        let mut n = 0;
        while let Some(msg) = sd.next(until.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))) {
            n += usize::from(msg == "WATCHDOG=1");
            if Instant::now() >= until {
                break;
            }
        }
        n
    };
    assert!(fed(&sd, Duration::from_secs(1)) >= 2, "fed while the worker answers");
    // Stop the worker thread alone (the control thread runs on), as a worker stuck in a loop would be.
    let worker = thread_named(s.pid(), "sluice-w0").expect("the worker thread");
    if let Err(e) = ptrace::seize(worker, ptrace::Options::empty()) {
        eprintln!("skipped: cannot ptrace a worker thread here: {e}");
        return;
    }
    ptrace::interrupt(worker).expect("PTRACE_INTERRUPT");
    waitpid(worker, Some(WaitPidFlag::__WALL)).expect("the worker stops");
    // At most the tick already on its way, then nothing for 5 periods.
    let _ = fed(&sd, Duration::from_millis(500));
    let hung = fed(&sd, Duration::from_secs(1));
    ptrace::detach(worker, None).expect("the worker goes on");
    assert_eq!(hung, 0, "WATCHDOG=1 sent while a worker did not answer");
    assert!(s.wait_log("did not answer a ping: not feeding systemd's watchdog", WAIT), "{}", s.log());
    assert!(fed(&sd, Duration::from_secs(2)) >= 2, "fed again once the worker answers");
    s.signal(Signal::SIGTERM);
    assert!(s.wait_exit(WAIT).expect("exits").success());
    drop(dir);
}

#[test]
fn a_watchdog_meant_for_another_process_is_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sd = FakeSystemd::at(dir.path());
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, yaml(backends::echo(), "")).expect("config");
    // WATCHDOG_PID names pid 1: the watchdog is not ours.
    let mut s = spawn(&path, &sd, &[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")], &[]);
    assert_eq!(sd.next_state().lines().next(), Some("READY=1"));
    // The log goes through a queue: wait for the line before reading it.
    assert!(s.wait_log("systemd notify socket set", WAIT), "{}", s.log());
    let log = s.log();
    assert!(!log.contains("feeding the watchdog"), "{log}");
    // Ten would-be periods: nothing but status lines.
    let until = Instant::now() + Duration::from_secs(1);
    while let Some(msg) = sd.next(until.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))) {
        assert!(!msg.contains("WATCHDOG"), "{msg:?}");
    }
    s.signal(Signal::SIGTERM);
    assert!(s.wait_exit(WAIT).expect("exits").success());
}

#[test]
fn a_takeover_hands_the_main_pid_to_the_successor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sd = FakeSystemd::at(dir.path());
    let path = dir.path().join("proxy.yaml");
    let control = format!("control_socket: {}\n", dir.path().join("c.sock").display());
    std::fs::write(&path, yaml(backends::echo(), &control)).expect("config");
    let mut old = spawn(&path, &sd, &[], &[]);
    assert_eq!(sd.next_state().lines().next(), Some("READY=1"));

    let mut new = spawn(&path, &sd, &[], &["--takeover"]);
    let pid = new.pid().to_string();
    // The old (main) process names the successor first...
    let handed = sd.next_state();
    assert_eq!(value(&handed, "MAINPID"), Some(pid.as_str()), "{handed:?}");
    assert!(!handed.contains("READY=1") && !handed.contains("STOPPING=1"), "{handed:?}");
    // ...which then says it is the main process and ready.
    let ready = sd.next_state();
    assert_eq!(ready.lines().take(2).collect::<Vec<_>>(), [format!("MAINPID={pid}").as_str(), "READY=1"], "{ready:?}");
    echoes(new.addr());
    // The old process drains and exits without a word: a STOPPING=1 from it would stop the service.
    assert!(old.wait_exit(WAIT).expect("the old process exits").success());
    while let Some(msg) = sd.next(Duration::from_millis(50)) {
        assert!(msg.lines().all(|l| l.starts_with("STATUS=")), "after the handover: {msg:?}");
    }
    new.signal(Signal::SIGTERM);
    assert_eq!(sd.next_state().lines().next(), Some("STOPPING=1"));
    assert!(new.wait_exit(WAIT).expect("the new process exits").success());
}

#[test]
fn the_example_units_are_type_notify() {
    let unit = |name: &str| {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd").join(name))
            .expect("unit file")
    };
    let lines = |text: &str| text.lines().filter(|l| !l.starts_with('#')).map(str::to_owned).collect::<Vec<_>>();
    let plain = lines(&unit("sluice.service"));
    assert!(plain.iter().any(|l| l == "Type=notify"), "{plain:?}");
    assert!(plain.iter().any(|l| l.starts_with("WatchdogSec=")), "{plain:?}");
    // A successor started by ExecReload= says MAINPID= and READY=1 itself, and
    // gets no WATCHDOG_USEC from systemd: no watchdog there.
    let upgrade = lines(&unit("sluice-upgrade.service"));
    assert!(upgrade.iter().any(|l| l == "Type=notify"), "{upgrade:?}");
    assert!(upgrade.iter().any(|l| l == "NotifyAccess=all"), "{upgrade:?}");
    assert!(!upgrade.iter().any(|l| l.starts_with("WatchdogSec=")), "{upgrade:?}");
}
