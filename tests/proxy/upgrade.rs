//! Replacing the running process without dropping a connection: a new
//! sluice takes the listening sockets over from the old one on its
//! `control_socket` (`--takeover`), with a different worker count, under
//! traffic; the old one drains its sessions and exits 0. A bad config or a
//! new process that dies before it is ready leaves the old one serving; a
//! second upgrade can follow while the first old process still drains.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::backends::{self, Stream};
use crate::harness::{BIN, Sluice, run};
use crate::observability::get;

/// A config with one echo route and a slow-stream route, an admin port and a control socket in `dir`.
fn config(dir: &Path, workers: usize, echo: SocketAddr, slow: SocketAddr, admin: SocketAddr) -> String {
    format!(
        "workers: {workers}\ncontrol_socket: {}\ndrain_grace: 0s\ndrain_timeout: 30s\nadmin: {{ listen: \"{admin}\" }}\n\
         routes:\n  - name: echo\n    listen: 127.0.0.1:0\n    upstreams: [\"{echo}\"]\n\
         \x20 - name: slow\n    listen: 127.0.0.1:0\n    upstreams: [\"{slow}\"]\n",
        dir.join("c.sock").display()
    )
}

/// `sluice -c path --takeover`, started and waited for (its routes logged as listening).
fn take_over(path: &Path, routes: usize) -> Sluice {
    let mut cmd = Command::new(BIN);
    cmd.arg("-c").arg(path).arg("--takeover");
    Sluice::spawn(cmd, routes, None)
}

/// The generation /stats reports.
fn generation(admin: SocketAddr) -> u64 {
    let (_, body) = get(admin, "/stats");
    serde_json::from_str::<serde_json::Value>(&body).expect("json")["generation"].as_u64().expect("generation")
}

/// Echo round trips in a loop until `stop`; counts successes and records every failure.
fn echo_loop(addr: SocketAddr, stop: Arc<AtomicBool>, ok: Arc<AtomicU64>) -> Vec<String> {
    let mut failures = Vec::new();
    let msg = Stream::bytes(3, 700);
    while !stop.load(Ordering::SeqCst) {
        let r = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).and_then(|mut c| {
            backends::timeouts(&c);
            backends::exchange(&mut c, &msg)
        });
        match r {
            Ok(got) if got == msg => {
                ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok(got) => failures.push(format!("{} of {} bytes echoed", got.len(), msg.len())),
            Err(e) => failures.push(e.to_string()),
        }
    }
    failures
}

/// Client threads running `echo_loop` against one address until finished.
pub(crate) struct EchoClients {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl EchoClients {
    pub(crate) fn start(addr: SocketAddr, n: usize) -> EchoClients {
        let (stop, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let threads = (0..n)
            .map(|_| {
                let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
                std::thread::spawn(move || echo_loop(addr, stop, ok))
            })
            .collect();
        EchoClients { stop, ok, threads }
    }

    /// Round trips that succeeded so far.
    fn served(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Waits (at most `within`) until `n` more round trips succeeded.
    pub(crate) fn wait_served(&self, n: u64, within: Duration) {
        let (before, deadline) = (self.served(), Instant::now() + within);
        while self.served() < before + n {
            assert!(Instant::now() < deadline, "the clients stopped being served ({} since)", self.served() - before);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the clients; every failure they saw.
    pub(crate) fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads.into_iter().flat_map(|c| c.join().expect("client")).collect()
    }
}

/// A source that sends `len` bytes of stream `seed` slowly (a long session).
fn slow_source(seed: u64, len: usize, pace: Duration) -> SocketAddr {
    backends::serve(move |mut s| {
        let data = Stream::bytes(seed, len);
        for chunk in data.chunks(len / 20) {
            if s.write_all(chunk).is_err() {
                return;
            }
            std::thread::sleep(pace);
        }
    })
}

fn free_admin() -> SocketAddr {
    crate::observability::admin_addr()
}

#[test]
fn upgrades_under_traffic_across_worker_counts_drop_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path: PathBuf = dir.path().join("proxy.yaml");
    let (echo, slow, admin) = (backends::echo(), slow_source(7, 2 << 20, Duration::from_millis(100)), free_admin());
    std::fs::write(&path, config(dir.path(), 1, echo, slow, admin)).expect("config");
    let mut cmd = Command::new(BIN);
    cmd.arg("-c").arg(&path);
    let mut first = Sluice::spawn(cmd, 2, None);
    let (echo_addr, slow_addr) = (first.addrs[0], first.addrs[1]);
    assert_eq!(generation(admin), 1);
    // A long session on the first process: it must finish there, whole.
    let mut long = backends::connect(slow_addr);
    let long_reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        long.read_to_end(&mut got).map(|_| got)
    });
    let clients = EchoClients::start(echo_addr, 2);
    let wait_served = |n: u64| clients.wait_served(n, Duration::from_secs(10));
    wait_served(50);
    // 1 → 4 workers.
    std::fs::write(&path, config(dir.path(), 4, echo, slow, admin)).expect("config");
    let second = take_over(&path, 2);
    assert_eq!(second.addrs, vec![echo_addr, slow_addr], "the same addresses, taken over");
    assert!(second.wait_log("predecessor stopped accepting", Duration::from_secs(10)), "{}", second.log());
    assert_eq!(generation(admin), 2, "the admin port is the new process's");
    wait_served(200);
    // 4 → 2 workers (two surplus sockets emptied and closed).
    std::fs::write(&path, config(dir.path(), 2, echo, slow, admin)).expect("config");
    let third = take_over(&path, 2);
    assert!(third.wait_log("predecessor stopped accepting", Duration::from_secs(10)), "{}", third.log());
    assert_eq!(generation(admin), 3);
    wait_served(200);
    let served = clients.served();
    let failures = clients.finish();
    assert!(failures.is_empty(), "{} failures across two upgrades: {failures:?}", failures.len());
    // The long session finished on the first process, byte-exact, and then it exited 0.
    let got = long_reader.join().expect("reader").expect("the long stream ended cleanly");
    assert!(got == Stream::bytes(7, 2 << 20), "the long stream arrived cut or corrupted ({} bytes)", got.len());
    let status = first.wait_exit(Duration::from_secs(20)).expect("the first process exits once its session ended");
    assert_eq!(status.code(), Some(0));
    assert!(first.log().contains("reason=clean") && first.log().contains("route=slow"), "{}", first.log());
    eprintln!("upgrade: {served} echoes through 1 → 4 → 2 workers, zero failures");
    drop((second, third));
}

#[test]
fn a_bad_config_or_a_successor_that_dies_before_it_is_ready_leaves_the_old_one_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("proxy.yaml");
    let (echo, slow, admin) = (backends::echo(), backends::echo(), free_admin());
    let good = config(dir.path(), 2, echo, slow, admin);
    std::fs::write(&path, &good).expect("config");
    let mut cmd = Command::new(BIN);
    cmd.arg("-c").arg(&path);
    let mut old = Sluice::spawn(cmd, 2, None);
    let echo_addr = old.addrs[0];
    let served = || {
        let mut c = backends::connect(echo_addr);
        backends::exchange(&mut c, b"still here").expect("echo") == b"still here"
    };
    // A bad config: the new process stops at it (exit 2) and never reaches the old one.
    std::fs::write(&path, good.replace("workers: 2", "workers: many")).expect("config");
    let (code, _, err) = run(&["-c", &path.to_string_lossy(), "--takeover"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("workers"), "{err}");
    assert!(served() && old.alive());
    // A new process that hangs after taking the sockets (its hosts file is a FIFO nobody
    // writes, so resolving its upstream blocks), then dies: the old one never stopped.
    let fifo = dir.path().join("hosts");
    assert!(Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    std::fs::write(&path, good.replace(&format!("\"{echo}\""), &format!("\"hang.test:{}\"", echo.port())))
        .expect("config");
    let mut doomed = Command::new(BIN)
        .arg("-c")
        .arg(&path)
        .arg("--takeover")
        .env("SLUICE_HOSTS_FILE", &fifo)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(old.wait_log("takes over: offering", Duration::from_secs(10)), "{}", old.log());
    for _ in 0..20 {
        assert!(served(), "the old process stopped serving during a takeover in progress");
    }
    doomed.kill().expect("kill");
    let _ = doomed.wait();
    assert!(old.wait_log("still serving", Duration::from_secs(10)), "{}", old.log());
    assert!(served() && old.alive());
    assert_eq!(generation(admin), 1);
    // And a good successor after all that works.
    std::fs::write(&path, &good).expect("config");
    let new = take_over(&path, 2);
    assert!(new.wait_log("predecessor stopped accepting", Duration::from_secs(10)), "{}", new.log());
    assert!(served());
    assert_eq!(generation(admin), 2);
    assert_eq!(old.wait_exit(Duration::from_secs(20)).and_then(|s| s.code()), Some(0));
}

#[test]
fn a_second_upgrade_can_follow_while_the_first_old_process_drains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("proxy.yaml");
    let (echo, slow, admin) = (backends::echo(), slow_source(9, 1 << 20, Duration::from_millis(150)), free_admin());
    std::fs::write(&path, config(dir.path(), 1, echo, slow, admin)).expect("config");
    let mut cmd = Command::new(BIN);
    cmd.arg("-c").arg(&path);
    let mut first = Sluice::spawn(cmd, 2, None);
    let slow_addr = first.addrs[1];
    let mut long = backends::connect(slow_addr);
    let mut head = [0u8; 1000];
    long.read_exact(&mut head).expect("the long stream started");
    let second = take_over(&path, 2);
    assert!(second.wait_log("predecessor stopped accepting", Duration::from_secs(10)));
    assert!(first.alive(), "the first process drains its long session");
    let mut third = take_over(&path, 2);
    assert!(third.wait_log("predecessor stopped accepting", Duration::from_secs(10)), "{}", third.log());
    assert_eq!(generation(admin), 3);
    let mut rest = Vec::new();
    long.read_to_end(&mut rest).expect("the long stream ended cleanly");
    let mut whole = head.to_vec();
    whole.extend(rest);
    assert!(whole == Stream::bytes(9, 1 << 20), "the long stream was cut: {} bytes", whole.len());
    // Its client closes too: a draining session runs until both sides finish.
    drop(long);
    assert_eq!(first.wait_exit(Duration::from_secs(20)).and_then(|s| s.code()), Some(0));
    drop(second);
    let mut c = backends::connect(third.addrs[0]);
    assert_eq!(backends::exchange(&mut c, b"third").expect("echo"), b"third");
    assert!(third.alive());
}

#[test]
fn takeover_needs_a_control_socket_and_a_second_instance_is_refused() {
    let (code, _, err) = run(&["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--takeover"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no control_socket"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("c.sock");
    let sock_arg = sock.to_string_lossy().into_owned();
    let args = ["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--control-socket", &sock_arg];
    let _first = Sluice::start(&args, 1);
    let (code, _, err) = run(&args);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("another sluice is running there"), "{err}");
}

/// Listening sockets of `pid` on `port` (from /proc/net/tcp of its namespace: state 0A).
fn listening_sockets(pid: i32, port: u16) -> usize {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *f.get(3)? == "0A").then(|| f.get(9).map(|s| (*s).to_owned()))?
        })
        .collect();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
    fds.iter()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| inodes.iter().any(|i| t.to_string_lossy() == format!("socket:[{i}]")))
        .count()
}

/// With `net.ipv4.tcp_migrate_req = 1` (set in a network namespace of this
/// test's own), an upgrade to fewer workers empties and closes the surplus
/// sockets — the kernel moves the handshakes in flight to the others — and
/// no client notices. (Without it they stay open and served: the test above.)
#[test]
fn with_tcp_migrate_req_surplus_sockets_are_closed_and_nothing_is_dropped() {
    if !crate::harness::is_root() {
        eprintln!("SKIP: a network namespace needs root");
        return;
    }
    // This test's thread, and the threads and processes it starts, get a namespace of their own.
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        eprintln!("SKIP: cannot make a network namespace: {e}");
        return;
    }
    assert!(Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip").success());
    std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1").expect("tcp_migrate_req");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("proxy.yaml");
    let (echo, admin) = (backends::echo(), free_admin());
    std::fs::write(&path, config(dir.path(), 4, echo, echo, admin)).expect("config");
    let mut cmd = Command::new(BIN);
    cmd.arg("-c").arg(&path);
    let _first = Sluice::spawn(cmd, 2, None);
    let echo_addr = _first.addrs[0];
    let clients = EchoClients::start(echo_addr, 2);
    std::fs::write(&path, config(dir.path(), 2, echo, echo, admin)).expect("config");
    let second = take_over(&path, 2);
    assert!(
        second.wait_log("closing 4 surplus listening socket(s) once emptied", Duration::from_secs(10)),
        "{}",
        second.log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while listening_sockets(second.pid(), echo_addr.port()) != 2 {
        assert!(Instant::now() < deadline, "the surplus sockets were not closed");
        std::thread::sleep(Duration::from_millis(20));
    }
    clients.wait_served(200, Duration::from_secs(20));
    let served = clients.served();
    let failures = clients.finish();
    assert!(failures.is_empty(), "{} failures: {failures:?}", failures.len());
    eprintln!("upgrade with tcp_migrate_req: {served} echoes through 4 → 2 workers, surplus closed, zero failures");
}
