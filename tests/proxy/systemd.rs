//! systemd socket activation, with the test playing systemd: it binds the
//! listening sockets itself, then starts sluice with them at fds 3 and 4 and
//! `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` set as systemd sets them.
//! sluice serves clients and the admin port on sockets it never bound; both
//! workers accept, whether they join the socket's `SO_REUSEPORT` group or
//! share the one socket; a socket that fits nothing is an error naming it.
//! The example units under examples/systemd/ fit their config and pass
//! `systemd-analyze verify`, and their takeover helper hands the PID file to
//! the new process once it serves.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use socket2::{Domain, Socket, Type};

use crate::backends::{self, connect};
use crate::harness::{BIN, Sluice, temp_config};

/// A listening socket on 127.0.0.1 as a `.socket` unit makes one.
fn listening(reuse_port: bool) -> (SocketAddr, OwnedFd) {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_reuse_port(reuse_port).expect("SO_REUSEPORT");
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("addr").into()).expect("bind");
    s.listen(128).expect("listen");
    let addr = s.local_addr().expect("local addr").as_socket().expect("inet");
    (addr, s.into())
}

/// `sluice ARGS` started the way systemd starts a socket-activated service:
/// `fd3` and `fd4` at fds 3 and 4, `LISTEN_FDS=2`, `LISTEN_FDNAMES=names`,
/// and `LISTEN_PID` the pid of the process that runs sluice. `Command`
/// passes only stdin, stdout and stderr, so the sockets go as stdin and
/// stdout to a shell that moves them to 3 and 4 (no close-on-exec there),
/// puts /dev/null back, closes fd 5 (whatever the test process inherited
/// there), sets `LISTEN_PID` to its own pid and execs sluice, which keeps
/// that pid.
fn activated(fd3: OwnedFd, fd4: OwnedFd, names: &str, args: &[&str]) -> Command {
    activated_for("$$", fd3, fd4, names, args)
}

/// `activated` with `LISTEN_PID` set to the shell expression `pid`.
fn activated_for(pid: &str, fd3: OwnedFd, fd4: OwnedFd, names: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!(r#"exec 3<&0 4<&1 5<&- </dev/null >/dev/null; export LISTEN_PID={pid}; exec "$0" "$@""#))
        .arg(BIN)
        .args(args)
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", names)
        .stdin(Stdio::from(fd3))
        .stdout(Stdio::from(fd4));
    cmd
}

/// Runs `cmd` to its end (at most 20 s): exit code and stderr.
fn finish(mut cmd: Command) -> (i32, String) {
    let mut child = cmd.stderr(Stdio::piped()).spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The numbers in the final `accepted per worker: [a, b]` line.
fn accepted_per_worker(log: &str) -> Vec<u64> {
    let line = log.lines().find(|l| l.contains("accepted per worker: [")).expect("the per-worker summary");
    line.split("accepted per worker: [")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .expect("a list")
        .split(", ")
        .map(|n| n.parse().expect("a number"))
        .collect()
}

/// One route and the admin port on sockets the test bound; two workers.
fn serve_activated(route_reuse_port: bool, how: &str) {
    let up = backends::echo();
    let (web, web_fd) = listening(route_reuse_port);
    let (admin, admin_fd) = listening(false);
    let yaml = format!(
        "workers: 2\ndrain_grace: 0s\nadmin:\n  listen: {admin}\nroutes:\n  - name: web\n    listen: {web}\n    \
         upstreams: [{up}]\n"
    );
    let (dir, path) = temp_config(&yaml);
    let cmd = activated(web_fd, admin_fd, "web:admin", &["-c", path.to_str().expect("utf-8")]);
    let mut s = Sluice::spawn_keeping_stdio(cmd, 1, Some(dir));
    assert_eq!(s.addr(), web, "the route serves the address systemd bound");
    assert!(s.wait_log("admin port listening", Duration::from_secs(10)), "no admin port");
    let log = s.log();
    assert!(log.contains(&format!("fd 3 (web) from systemd: {web} for route web")), "{log}");
    assert!(log.contains(&format!("fd 4 (admin) from systemd: {admin} for the admin port")), "{log}");
    assert!(log.contains(how), "expected {how:?} in\n{log}");
    // Had sluice bound either address itself it would have failed: the
    // sockets systemd passed hold them (the route's without SO_REUSEPORT
    // refuses a second socket outright).
    let (status, body) = crate::observability::get(admin, "/stats");
    assert_eq!(status, 200, "{body}");
    let stats: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(stats["workers"], 2);
    // Clients from several threads at once, so both workers are woken.
    let clients: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let mut c = connect(web);
                    let msg = backends::Stream::bytes(t * 100 + i, 64 + (i as usize % 500));
                    c.write_all(&msg).expect("write");
                    let mut got = vec![0; msg.len()];
                    c.read_exact(&mut got).expect("read the echo");
                    assert!(got == msg, "client {t}/{i}: different bytes");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    s.signal(Signal::SIGTERM);
    let status = s.wait_exit(Duration::from_secs(20)).expect("sluice exits after SIGTERM");
    assert!(status.success(), "{status}");
    let counts = accepted_per_worker(&s.log());
    assert_eq!(counts.iter().sum::<u64>(), 200, "{counts:?}");
    assert!(counts.iter().all(|&n| n > 0), "a worker accepted nothing: {counts:?}");
}

#[test]
fn activated_sockets_serve_and_workers_share_one_without_reuseport() {
    serve_activated(
        false,
        "route web: 1 socket(s) handed over; 1 worker(s) share a duplicate of one, as it has no SO_REUSEPORT",
    );
}

#[test]
fn workers_join_an_activated_socket_with_reuseport() {
    serve_activated(true, "route web: 1 socket(s) handed over, 1 more bound into their SO_REUSEPORT group");
}

/// A restart under socket activation: systemd keeps the listening socket
/// while one sluice drains and exits and the next starts. The drain must
/// leave nothing on that socket (a SYN-dropping filter belongs to the
/// socket, not the fd): a client that connects in the gap completes its
/// handshake in the socket's queue and is served by the next process, which
/// serves new clients too, whatever filter an earlier process left on the
/// socket. With and without `SO_REUSEPORT` (two workers
/// share a duplicate of the socket, or one joins its group with a socket of
/// its own, which does get the filter before it closes).
#[test]
fn a_restart_under_socket_activation_serves_and_a_client_of_the_gap_is_served() {
    let up = backends::echo();
    for reuse_port in [false, true] {
        let (web, web_fd) = listening(reuse_port);
        let (admin, admin_fd) = listening(false);
        let yaml = format!(
            "workers: 2\ndrain_grace: 0s\nadmin:\n  listen: {admin}\nroutes:\n  - name: web\n    listen: {web}\n    \
             upstreams: [{up}]\n"
        );
        let (dir, path) = temp_config(&yaml);
        let cfg = path.to_str().expect("utf-8").to_owned();
        // systemd's copies stay here, in the test, across both processes.
        let start = || {
            let (w, a) = (web_fd.try_clone().expect("dup"), admin_fd.try_clone().expect("dup"));
            activated(w, a, "web:admin", &["-c", &cfg])
        };
        let echo_once = |msg: &[u8]| {
            let mut c = connect(web);
            c.write_all(msg).expect("write");
            let mut got = vec![0; msg.len()];
            c.read_exact(&mut got).expect("echo");
            assert_eq!(got, msg);
        };
        let mut first = Sluice::spawn_keeping_stdio(start(), 1, None);
        echo_once(b"first");
        first.signal(Signal::SIGTERM);
        let status = first.wait_exit(Duration::from_secs(20)).expect("the first sluice exits after SIGTERM");
        assert!(status.success(), "{status}");
        // The gap: no process serves, systemd's socket still listens.
        let mut gap = std::net::TcpStream::connect_timeout(&web, Duration::from_millis(2500)).unwrap_or_else(|e| {
            panic!(
                "reuse_port {reuse_port}: a client connecting between the two processes got no handshake ({e}): \
                 the drain left a filter on systemd's socket\n{}",
                first.log()
            )
        });
        gap.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        gap.write_all(b"in the gap").expect("write");
        // And whatever an earlier process (an older sluice) left on the
        // socket, the next one takes off: here a filter that drops everything.
        socket2::SockRef::from(&web_fd).attach_filter(&[socket2::SockFilter::new(0x06, 0, 0, 0)]).expect("filter");
        let second = Sluice::spawn_keeping_stdio(start(), 1, Some(dir));
        let mut got = [0; 10];
        gap.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("the client of the gap is not served: {e}\n{}", second.log()));
        assert_eq!(&got, b"in the gap");
        echo_once(b"second");
    }
}

/// A sluice that took systemd's socket over from a socket-activated one
/// (`--takeover`) knows it is systemd's too: its own drain leaves it
/// unfiltered, so a client connecting after it exited still gets its
/// handshake, for whoever systemd starts next.
#[test]
fn a_successor_of_an_activated_sluice_leaves_systemds_socket_unfiltered() {
    let up = backends::echo();
    let (web, web_fd) = listening(false);
    let (admin, admin_fd) = listening(false);
    let control = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "workers: 1\ndrain_grace: 0s\ncontrol_socket: {}\nadmin:\n  listen: {admin}\nroutes:\n  - name: web\n    \
         listen: {web}\n    upstreams: [{up}]\n",
        control.path().join("c.sock").display()
    );
    let (dir, path) = temp_config(&yaml);
    let cfg = path.to_str().expect("utf-8");
    let (w, a) = (web_fd.try_clone().expect("dup"), admin_fd.try_clone().expect("dup"));
    let mut first = Sluice::spawn_keeping_stdio(activated(w, a, "web:admin", &["-c", cfg]), 1, None);
    assert!(first.wait_log("control socket", Duration::from_secs(10)), "no control socket: {}", first.log());
    let mut cmd = Command::new(BIN);
    cmd.args(["-c", cfg, "--takeover"]);
    let mut second = Sluice::spawn(cmd, 1, Some(dir));
    let status = first.wait_exit(Duration::from_secs(20)).expect("the first sluice exits after the takeover");
    assert!(status.success(), "{status}");
    let mut c = connect(web);
    c.write_all(b"ping").expect("write");
    let mut got = [0; 4];
    c.read_exact(&mut got).expect("the successor serves");
    drop(c);
    second.signal(Signal::SIGTERM);
    let status = second.wait_exit(Duration::from_secs(20)).expect("the successor exits after SIGTERM");
    assert!(status.success(), "{status}");
    if let Err(e) = std::net::TcpStream::connect_timeout(&web, Duration::from_millis(2500)) {
        panic!("no handshake on systemd's socket after the successor's drain ({e}):\n{}", second.log());
    }
}

#[test]
fn a_stray_or_unusable_fd_is_an_error_naming_it() {
    let up = backends::echo();
    let (web, web_fd) = listening(false);
    let (stray, stray_fd) = listening(false);
    let (_dir, path) = temp_config(&format!("routes:\n  - name: web\n    listen: {web}\n    upstreams: [{up}]\n"));
    let cfg = path.to_str().expect("utf-8");
    let (code, err) = finish(activated(web_fd, stray_fd, "web:stray", &["-c", cfg]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "sluice: socket activation: fd 4 (stray) is bound to {stray}, which no route or the admin port listens on"
        )),
        "{err}"
    );
    // Not a socket at all (a ListenFIFO=, say).
    let (_, web_fd) = listening(false);
    let null = OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null"));
    let (code, err) = finish(activated(null, web_fd, "fifo:web", &["-c", cfg]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("sluice: socket activation: fd 3 (fifo) is not a socket"), "{err}");
    // More fds announced than passed.
    let ((_, a), (_, b)) = (listening(false), listening(false));
    let mut cmd = activated(a, b, "a:b:c", &["-c", cfg]);
    cmd.env("LISTEN_FDS", "3");
    let (code, err) = finish(cmd);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("sluice: socket activation: fd 5 (c) is not open"), "{err}");
    // Names that do not match the count.
    let ((_, a), (_, b)) = (listening(false), listening(false));
    let (code, err) = finish(activated(a, b, "one", &["-c", cfg]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("LISTEN_FDNAMES has 1 name(s) for LISTEN_FDS=2"), "{err}");
}

#[test]
fn listen_fds_for_another_process_are_left_alone() {
    // LISTEN_PID names the shell's parent, not sluice: sluice binds its
    // route itself (port 0) and leaves fds 3 and 4 alone.
    let up = backends::echo();
    let ((_, a), (_, b)) = (listening(false), listening(false));
    let (dir, path) = temp_config(&format!("routes:\n  - name: web\n    listen: 127.0.0.1:0\n    upstreams: [{up}]\n"));
    let cmd = activated_for("$PPID", a, b, "a:b", &["-c", path.to_str().expect("utf-8")]);
    let s = Sluice::spawn_keeping_stdio(cmd, 1, Some(dir));
    assert!(s.log().contains("names another process"), "{}", s.log());
    assert!(!s.log().contains("from systemd"), "{}", s.log());
    let mut c = connect(s.addr());
    c.write_all(b"ping").expect("write");
    let mut got = [0; 4];
    c.read_exact(&mut got).expect("echo");
    assert_eq!(&got, b"ping");
}

/// A file of examples/systemd/.
fn example(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd").join(name)
}

#[test]
fn the_example_socket_unit_binds_what_its_config_listens_on() {
    let unit = std::fs::read_to_string(example("sluice.socket")).expect("sluice.socket");
    let mut streams: Vec<String> =
        unit.lines().filter_map(|l| l.strip_prefix("ListenStream=")).map(|a| a.trim().to_owned()).collect();
    let config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(example("proxy.yaml")).expect("proxy.yaml")).expect("YAML");
    let mut listens: Vec<String> = config["routes"]
        .as_sequence()
        .expect("routes")
        .iter()
        .map(|r| r["listen"].as_str().expect("listen").to_owned())
        .chain([config["admin"]["listen"].as_str().expect("admin.listen").to_owned()])
        .collect();
    streams.sort();
    listens.sort();
    assert_eq!(streams, listens, "sluice.socket's ListenStream= lines and proxy.yaml's addresses");
    let (code, _, err) = crate::harness::run(&["check", "-c", example("proxy.yaml").to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn the_example_units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    // verify wants every ExecStart= binary to exist: point them at this build.
    let dir = tempfile::tempdir().expect("tempdir");
    let units = ["sluice.socket", "sluice.service", "sluice-upgrade.service"];
    for unit in units {
        let text = std::fs::read_to_string(example(unit)).expect("unit file");
        let text = text
            .replace("/usr/local/lib/sluice/sluice-takeover", example("sluice-takeover").to_str().expect("utf-8"))
            .replace("/usr/local/bin/sluice", BIN);
        std::fs::write(dir.path().join(unit), text).expect("write unit");
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units.iter().map(|u| dir.path().join(u)))
        .output()
        .expect("systemd-analyze verify");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");
}

/// Kills a process this test did not start as a child (it is reparented).
struct Orphan(i32);

impl Drop for Orphan {
    fn drop(&mut self) {
        // Never 0 or less: kill(2) would signal a whole process group.
        if self.0 > 0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGKILL);
        }
    }
}

/// Runs sluice-takeover (at most 40 s): exit code and what it and the new sluice wrote.
fn takeover_helper(
    dir: &std::path::Path,
    pidfile: &std::path::Path,
    control: &std::path::Path,
    args: &[&str],
) -> (i32, String) {
    let out = dir.join("takeover.log");
    let log = std::fs::File::create(&out).expect("log file");
    // Not a pipe: the new sluice keeps the helper's stderr open after it exits.
    let mut child = Command::new("/bin/sh")
        .arg(example("sluice-takeover"))
        .arg(pidfile)
        .arg(control)
        .arg(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("spawn sluice-takeover");
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code().unwrap_or(-1), std::fs::read_to_string(&out).unwrap_or_default())
}

#[test]
fn the_takeover_helper_hands_the_pid_file_to_the_new_process_once_it_serves() {
    let up = backends::echo();
    let dir = tempfile::tempdir().expect("tempdir");
    let control = dir.path().join("control.sock");
    let pidfile = dir.path().join("sluice.pid");
    let yaml = format!(
        "workers: 1\ndrain_grace: 0s\ncontrol_socket: {}\nroutes:\n  - name: web\n    listen: 127.0.0.1:0\n    \
         upstreams: [{up}]\n",
        control.display()
    );
    let mut old = Sluice::with_config(&yaml, &[]);
    assert!(old.wait_log("control socket", Duration::from_secs(10)), "no control socket");
    let cfg = old.config_path().expect("config path");
    let cfg = cfg.to_str().expect("utf-8");

    // A new process that cannot start: the helper says so, the PID file stays untouched.
    let (code, said) = takeover_helper(dir.path(), &pidfile, &control, &["-c", "/nonexistent.yaml", "--takeover"]);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("exited before taking over"), "{said}");
    assert!(!pidfile.exists());
    assert!(old.alive(), "the running sluice still serves");

    let (code, said) = takeover_helper(dir.path(), &pidfile, &control, &["-c", cfg, "--takeover"]);
    let new: i32 = std::fs::read_to_string(&pidfile).unwrap_or_default().trim().parse().unwrap_or(0);
    let _new = Orphan(new);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains(&format!("sluice-takeover: pid {new} serves now")), "{said}");
    let cmdline = std::fs::read(format!("/proc/{new}/cmdline")).unwrap_or_default();
    assert!(String::from_utf8_lossy(&cmdline).contains("--takeover"), "pid {new} is the new sluice");
    // By then the old process had stopped accepting: it drains and exits.
    let status = old.wait_exit(Duration::from_secs(20)).expect("the old sluice exits");
    assert!(status.success(), "{status}");
    let mut c = connect(old.addr());
    c.write_all(b"ping").expect("write");
    let mut got = [0; 4];
    c.read_exact(&mut got).expect("the new process answers");
    assert_eq!(&got, b"ping");
}
