//! Running the real `sluice` binary in tests: spawn it (with a temp config
//! or flags), learn its listen addresses from its log, read its /proc
//! numbers, signal it, and always kill it on drop, printing its log if the
//! test failed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// How long sluice may take to start listening on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Log {
    text: Mutex<String>,
    changed: Condvar,
}

/// A running sluice.
pub struct Sluice {
    child: Child,
    log: Arc<Log>,
    /// The actual listen address of each route, in config order.
    pub addrs: Vec<SocketAddr>,
    _dir: Option<tempfile::TempDir>,
}

/// Raises this test process's open-file limit to its hard limit (the big
/// tests hold thousands of sockets on the client and backend side).
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
}

/// Writes `yaml` to a temp dir; returns the dir (keep it alive) and the file path.
pub fn temp_config(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, yaml).expect("write config");
    (dir, path)
}

impl Sluice {
    /// `sluice ARGS...`, waiting for `routes` listening lines.
    pub fn start(args: &[&str], routes: usize) -> Sluice {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        Sluice::spawn(cmd, routes, None)
    }

    /// `sluice -c <temp file with yaml> EXTRA...`.
    pub fn with_config(yaml: &str, extra: &[&str]) -> Sluice {
        let (dir, path) = temp_config(yaml);
        let routes = yaml.matches("- name:").count();
        let mut cmd = Command::new(BIN);
        cmd.arg("-c").arg(&path).args(extra);
        Sluice::spawn(cmd, routes, Some(dir))
    }

    /// Runs a prepared command (for wrappers such as `prlimit`).
    pub fn spawn(mut cmd: Command, routes: usize, dir: Option<tempfile::TempDir>) -> Sluice {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        Sluice::spawn_keeping_stdio(cmd, routes, dir)
    }

    /// Like `spawn`, with stdin and stdout as `cmd` has them (socket
    /// activation passes sockets there, for a shell to move).
    pub fn spawn_keeping_stdio(mut cmd: Command, routes: usize, dir: Option<tempfile::TempDir>) -> Sluice {
        cmd.stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() && !has_log_flag(&cmd) {
            cmd.env("RUST_LOG", "sluice=debug");
        }
        let mut child = cmd.spawn().expect("spawn sluice");
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut t = sink.text.lock().unwrap_or_else(|p| p.into_inner());
                t.push_str(&line);
                t.push('\n');
                sink.changed.notify_all();
            }
        });
        let mut s = Sluice { child, log, addrs: Vec::new(), _dir: dir };
        s.addrs = s.wait_listening(routes);
        s
    }

    fn wait_listening(&mut self, routes: usize) -> Vec<SocketAddr> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut text = self.log.text.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let addrs: Vec<SocketAddr> = text
                .lines()
                .filter(|l| l.contains("route "))
                .filter_map(|l| l.split("listening on ").nth(1))
                .filter_map(|rest| rest.split_whitespace().next())
                .filter_map(|a| a.parse().ok())
                .collect();
            if addrs.len() >= routes {
                return addrs;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sluice exited ({status}) before listening:\n{text}");
            }
            let now = Instant::now();
            assert!(now < deadline, "sluice did not listen within {START_TIMEOUT:?}:\n{text}");
            text = self.log.changed.wait_timeout(text, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// The first route's address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything sluice logged so far.
    pub fn log(&self) -> String {
        self.log.text.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut text = self.log.text.lock().unwrap_or_else(|p| p.into_inner());
        while !text.contains(needle) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            text = self.log.changed.wait_timeout(text, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log.text.lock().unwrap_or_else(|p| p.into_inner()).lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits (bounded) until `n` log lines contain `needle`.
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut text = self.log.text.lock().unwrap_or_else(|p| p.into_inner());
        while text.lines().filter(|l| l.contains(needle)).count() < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            text = self.log.changed.wait_timeout(text, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }

    /// The address the latest `route NAME listening on ADDR` line gives.
    pub fn route_addr(&self, name: &str) -> Option<SocketAddr> {
        let needle = format!("route {name} listening on ");
        self.log
            .text
            .lock()
            .expect("log lock")
            .lines()
            .rev()
            .filter_map(|l| l.split(&needle).nth(1))
            .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
    }

    /// The config file it was started with (when started by `with_config`).
    pub fn config_path(&self) -> Option<PathBuf> {
        self._dir.as_ref().map(|d| d.path().join("proxy.yaml"))
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("kill");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// What each open fd points at (`socket:[…]`, `pipe:[…]`, `/dev/null`, …).
    pub fn fd_targets(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    }

    /// Open fds by kind: (sockets, pipes, other).
    pub fn fds(&self) -> (usize, usize, usize) {
        let t = self.fd_targets();
        let sockets = t.iter().filter(|t| t.starts_with("socket:")).count();
        let pipes = t.iter().filter(|t| t.starts_with("pipe:")).count();
        (sockets, pipes, t.len() - sockets - pipes)
    }

    /// CPU time used so far (utime + stime), in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the ")" that ends the command name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let get = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        get(14) + get(15)
    }
}

fn has_log_flag(cmd: &Command) -> bool {
    cmd.get_args().any(|a| a == "--log")
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- sluice log (pid {}) -----\n{}-----", self.child.id(), self.log());
        }
    }
}

/// GET `path` from sluice's admin port at `addr`: (status, body).
pub fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to the admin port");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status");
    (status, body.to_owned())
}

/// Runs `sluice ARGS` to completion (bounded) and returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    run_command(cmd)
}

/// Runs a prepared command (sluice under a wrapper) like `run`.
pub fn run_command(mut cmd: Command) -> (i32, String, String) {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn sluice");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("{cmd:?} did not exit within 20 s; stderr:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A YAML config with one route to `upstreams`, `relay: MODE`, one worker,
/// and `extra` lines added to the route.
pub fn one_route(mode: &str, upstreams: &[SocketAddr], route_extra: &str) -> String {
    let ups: Vec<String> = upstreams.iter().map(|u| format!("      - {u}\n")).collect();
    format!(
        "workers: 1\nrelay: {mode}\nroutes:\n  - name: test\n    listen: 127.0.0.1:0\n    upstreams:\n{}{route_extra}",
        ups.concat()
    )
}

/// True if this test process runs with effective UID 0 (from /proc: no extra nix feature needed).
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // "Uid:\treal\teffective\tsaved\tfs"
    status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().nth(1)) == Some("0")
}
