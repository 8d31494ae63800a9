//! A start that cannot go through touches nothing that runs: a second
//! sluice started by mistake on the same addresses (no `--takeover`) exits
//! before it joins the running one's `SO_REUSEPORT` groups, whether the
//! control socket or the admin port gives it away; a `--takeover` whose own
//! control socket cannot be made fails before it tells the old process to
//! stop accepting, so the old one keeps serving.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::backends;
use crate::harness::{BIN, Sluice, run};
use crate::observability::admin_addr;
use crate::upgrade::EchoClients;

/// One echo route on the fixed address `listen`, plus `extra` top-level lines.
fn config(listen: SocketAddr, echo: SocketAddr, extra: &str) -> String {
    format!(
        "workers: 2\ndrain_grace: 0s\n{extra}routes:\n  - name: echo\n    listen: \"{listen}\"\n    upstreams: [\"{echo}\"]\n"
    )
}

fn start(path: &Path) -> Sluice {
    let mut cmd = Command::new(BIN);
    cmd.arg("-c").arg(path);
    Sluice::spawn(cmd, 1, None)
}

/// Starts a first sluice on `yaml`, then a second on the same file while
/// clients loop on the first: the second must exit 1 with `expected` in its
/// error, never having listened, and no client may notice.
fn second_start_is_refused(yaml: &str, expected: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, yaml.replace("DIR", &dir.path().to_string_lossy())).expect("config");
    let first = start(&path);
    let clients = EchoClients::start(first.addr(), 2);
    clients.wait_served(20, Duration::from_secs(10));
    for _ in 0..3 {
        let (code, _, err) = run(&["-c", &path.to_string_lossy()]);
        assert_eq!(code, 1, "the second sluice did not fail as a runtime error:\n{err}");
        assert!(err.contains(expected), "no {expected:?} in the second sluice's error:\n{err}");
        assert!(!err.contains("listening on"), "the second sluice listened before it gave up:\n{err}");
    }
    clients.wait_served(20, Duration::from_secs(10));
    let failures = clients.finish();
    assert!(failures.is_empty(), "clients of the first sluice failed: {failures:?}");
    let mut c = backends::connect(first.addr());
    assert_eq!(backends::exchange(&mut c, b"first").expect("echo"), b"first");
}

#[test]
fn a_second_instance_on_a_live_control_socket_never_listens() {
    let (listen, echo) = (admin_addr(), backends::echo());
    second_start_is_refused(&config(listen, echo, "control_socket: DIR/c.sock\n"), "another sluice is running there");
}

#[test]
fn a_second_instance_whose_admin_port_is_taken_never_listens() {
    let (listen, echo, admin) = (admin_addr(), backends::echo(), admin_addr());
    second_start_is_refused(&config(listen, echo, &format!("admin: {{ listen: \"{admin}\" }}\n")), "admin");
}

/// `dir/<symlink to dir>/c.sock`, exactly 107 bytes long (the most a Unix
/// socket path may be): it names `dir/c.sock`, but the temporary name a new
/// control socket is bound at (`c.tmp.<pid>`) does not fit.
fn longest_path_to(dir: &Path) -> String {
    let base = dir.to_string_lossy().into_owned();
    let pad = 107 - base.len() - "/".len() - "/c.sock".len();
    let link = "l".repeat(pad);
    std::os::unix::fs::symlink(".", dir.join(&link)).expect("symlink");
    let path = format!("{base}/{link}/c.sock");
    assert_eq!(path.len(), 107);
    path
}

#[test]
fn a_takeover_that_cannot_open_its_control_socket_leaves_the_old_one_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (listen, echo, admin) = (admin_addr(), backends::echo(), admin_addr());
    let extra = |sock: &str| format!("control_socket: {sock}\nadmin: {{ listen: \"{admin}\" }}\n");
    let old_path = dir.path().join("proxy.yaml");
    std::fs::write(&old_path, config(listen, echo, &extra(&dir.path().join("c.sock").to_string_lossy())))
        .expect("config");
    let mut old = start(&old_path);
    let new_path = dir.path().join("new.yaml");
    std::fs::write(&new_path, config(listen, echo, &extra(&longest_path_to(dir.path())))).expect("config");
    let clients = EchoClients::start(old.addr(), 2);
    clients.wait_served(20, Duration::from_secs(10));
    let (code, _, err) = run(&["-c", &new_path.to_string_lossy(), "--takeover"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("control socket"), "the error does not name the control socket:\n{err}");
    assert!(old.alive(), "the old sluice stopped:\n{}", old.log());
    assert!(!old.log().contains("serves now"), "the old sluice was told to stop accepting:\n{}", old.log());
    clients.wait_served(20, Duration::from_secs(10));
    let failures = clients.finish();
    assert!(failures.is_empty(), "clients failed: {failures:?}");
    let mut c = backends::connect(old.addr());
    assert_eq!(backends::exchange(&mut c, b"old").expect("echo"), b"old");
    // (A draining session runs until both sides finish: this client is done.)
    drop(c);
    // And a takeover on the old process's own path still works after that.
    let mut cmd = Command::new(BIN);
    cmd.arg("-c").arg(&old_path).arg("--takeover");
    let new = Sluice::spawn(cmd, 1, None);
    assert!(new.wait_log("predecessor stopped accepting", Duration::from_secs(10)), "{}", new.log());
    assert_eq!(old.wait_exit(Duration::from_secs(20)).and_then(|s| s.code()), Some(0));
}
