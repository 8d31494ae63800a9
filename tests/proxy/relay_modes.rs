//! The relay mode each route really gets (`relay: sockmap` around its
//! kernel stage, which `sockmap.rs` tests): where the kernel refuses BPF
//! sluice says so once and relays with `auto`, `sluice check`, `sluice
//! doctor` and `sluice_build_info` say what each route really gets, and a
//! route's own `relay:` wins over the global one. The refusal is real:
//! `tests/support/no_uring.py --bpf` runs sluice under a seccomp filter that
//! fails bpf(2) with EPERM, as Docker's default profile does without CAP_BPF.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::backends::{self, connect};
use crate::harness::{BIN, Sluice, admin_get, is_root, one_route, run, run_command, temp_config};
use crate::observability::{admin_addr, with_admin};

const NO_URING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/no_uring.py");

/// What `tests/support/no_uring.py`'s seccomp filter refuses (with EPERM).
#[derive(Clone, Copy)]
pub(crate) enum Refused {
    /// io_uring_setup: `relay: uring` falls back.
    IoUring,
    /// bpf(2): `relay: sockmap` falls back.
    Bpf,
}

/// `sluice ARGS...` with the kernel refusing `what`, as a container's seccomp profile does.
pub(crate) fn under_refusal(what: Refused, args: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(NO_URING);
    if let Refused::Bpf = what {
        cmd.arg("--bpf");
    }
    cmd.arg(BIN).args(args);
    cmd
}

/// `sluice ARGS...` with bpf(2) refused.
fn under_no_bpf(args: &[&str]) -> Command {
    under_refusal(Refused::Bpf, args)
}

/// `relay: MODE` where the kernel refuses what it needs (`what`): one
/// warning naming the reason, `relay auto` in the running line, byte-exact
/// relaying, and a reload asking for MODE again relays on and says nothing new.
pub(crate) fn falls_back_to_auto_and_says_so_once(mode: &str, what: Refused) {
    let (dir, path) = temp_config(&one_route(mode, &[backends::echo()], ""));
    let s = Sluice::spawn(under_refusal(what, &["-c", path.to_str().expect("utf-8 path")]), 1, Some(dir));
    let warning = format!("relay: {mode} is not available here");
    assert!(s.wait_log(&warning, Duration::from_secs(5)), "no word of the fallback: {}", s.log());
    assert!(s.log().contains("Operation not permitted"), "the reason is named: {}", s.log());
    assert!(s.log().contains("relaying with relay: auto instead"), "{}", s.log());
    assert!(s.wait_log("relay auto,", Duration::from_secs(5)), "it runs with auto: {}", s.log());
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    assert!(echoed(s.addr(), &data) == data, "the fallback relays byte-exact");
    s.signal(Signal::SIGHUP);
    assert!(s.wait_log("reloaded ", Duration::from_secs(5)), "{}", s.log());
    assert_eq!(echoed(s.addr(), b"again"), b"again", "relays after the reload");
    assert_eq!(s.log_count(&warning), 1, "said once: {}", s.log());
}

/// Sends `data` through `addr` to an echo backend, half-closes, and
/// returns what came back.
fn echoed(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut c = connect(addr);
    c.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    c.write_all(data).expect("write");
    c.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("echo");
    got
}

/// `sluice_bytes_total` client→upstream of `route` moved by `mode`.
fn bytes(metrics: &str, route: &str, mode: &str) -> u64 {
    bytes_of(metrics, route, "client_to_upstream", mode)
}

/// `sluice_bytes_total` of `route` in `direction` moved by `mode`.
pub(crate) fn bytes_of(metrics: &str, route: &str, direction: &str, mode: &str) -> u64 {
    let key = format!("sluice_bytes_total{{route=\"{route}\",direction=\"{direction}\",mode=\"{mode}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0) as u64
}

/// /metrics once each of `routes` counted `n` bytes client→upstream (a
/// session's bytes are counted when it closes, a little after the client's last byte).
fn counted(admin: SocketAddr, routes: &[&str], n: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = admin_get(admin, "/metrics");
        let all = |r: &str| ["spliced", "copied", "uring", "sockmap"].iter().map(|x| bytes(&m, r, x)).sum::<u64>();
        if routes.iter().all(|r| all(r) == n) {
            return m;
        }
        assert!(Instant::now() < deadline, "bytes not all counted:\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `relay_modes` label of `sluice_build_info`.
fn relay_modes(admin: SocketAddr) -> String {
    let (code, m) = admin_get(admin, "/metrics");
    assert_eq!(code, 200, "{m}");
    let info = m.lines().find(|l| l.starts_with("sluice_build_info{")).unwrap_or_else(|| panic!("no build_info:\n{m}"));
    let rest = info.split("relay_modes=\"").nth(1).unwrap_or_else(|| panic!("no relay_modes in {info}"));
    rest.split('"').next().unwrap_or_default().to_owned()
}

#[test]
fn relay_sockmap_falls_back_to_auto_where_bpf_is_refused_and_says_so_once() {
    falls_back_to_auto_and_says_so_once("sockmap", Refused::Bpf);
}

#[test]
fn a_routes_own_relay_sockmap_falls_back_alone_and_the_running_line_says_so() {
    let (echo_a, echo_b) = (backends::echo(), backends::echo());
    let yaml = format!(
        "workers: 1\nrelay: copy\nroutes:\n  - name: plain\n    listen: 127.0.0.1:0\n    upstreams: [\"{echo_a}\"]\n\
         \x20 - name: kernel\n    listen: 127.0.0.1:0\n    upstreams: [\"{echo_b}\"]\n    relay: sockmap\n"
    );
    let (dir, path) = temp_config(&yaml);
    let s = Sluice::spawn(under_no_bpf(&["-c", path.to_str().expect("utf-8 path")]), 2, Some(dir));
    assert!(s.wait_log("relay copy (route kernel: auto),", Duration::from_secs(5)), "{}", s.log());
    assert_eq!(s.log_count("relay: sockmap is not available here"), 1, "{}", s.log());
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    for route in ["plain", "kernel"] {
        let addr = s.route_addr(route).unwrap_or_else(|| panic!("no {route} address: {}", s.log()));
        assert!(echoed(addr, &data) == data, "route {route} relays byte-exact");
    }
}

#[test]
fn check_shows_a_routes_relay_and_where_sockmap_falls_back() {
    let (_dir, path) = temp_config(
        "relay: auto\nroutes:\n  - name: a\n    listen: 127.0.0.1:0\n    upstreams: [\"127.0.0.1:1\"]\n\
         \x20 - name: b\n    listen: 127.0.0.1:0\n    upstreams: [\"127.0.0.1:1\"]\n    relay: sockmap\n\
         \x20 - name: c\n    listen: 127.0.0.1:0\n    upstreams: [\"127.0.0.1:1\"]\n    relay: auto\n",
    );
    let path = path.to_str().expect("utf-8");
    let (code, out, err) = run(&["check", "-c", path]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("    relay: ").count(), 1, "only where it differs from the global one:\n{out}");
    assert!(out.contains("  - name: b\n") && out.contains("    relay: sockmap\n"), "{out}");
    let (code, out, err) = run_command(under_no_bpf(&["check", "-c", path]));
    assert_eq!(code, 0, "{err}");
    let line =
        out.lines().find(|l| l.starts_with("# relay: sockmap is refused here (")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("Operation not permitted") && line.ends_with("): route b relays with auto"), "{line}");
}

#[test]
fn doctor_says_whether_relay_sockmap_can_have_its_sockhash() {
    let (_dir, path) = temp_config(&one_route("sockmap", &[backends::echo()], ""));
    let path = path.to_str().expect("utf-8 path");
    let (_, out, _) = run_command(under_no_bpf(&["doctor", "-c", path]));
    let line = out.lines().find(|l| l.contains(" sockmap:")).unwrap_or_else(|| panic!("no sockmap line:\n{out}"));
    assert!(line.starts_with("WARN") && line.contains("refused (") && line.contains("falls back to auto"), "{line}");
    assert!(out.contains("fix: run as root or grant CAP_BPF and CAP_NET_ADMIN"), "{out}");
    assert!(out.contains("CONFIG_BPF_STREAM_PARSER"), "{out}");
    if !is_root() {
        eprintln!("not root: the available case is not checked");
        return;
    }
    let (_, out, _) = run(&["doctor", "-c", path]);
    let ok = out.lines().any(|l| l.starts_with("OK") && l.ends_with(" sockmap: available: relay: sockmap uses it"));
    assert!(ok, "root may make a sockhash:\n{out}");
}

#[test]
fn build_info_lists_sockmap_only_where_the_kernel_allows_it() {
    if is_root() {
        let (_s, admin) = with_admin(&one_route("sockmap", &[backends::echo()], ""));
        let modes = relay_modes(admin);
        assert!(modes.split(',').any(|m| m == "sockmap"), "root may make a sockhash: {modes}");
    }
    let admin = admin_addr();
    let yaml = format!("admin:\n  listen: {admin}\n{}", one_route("sockmap", &[backends::echo()], ""));
    let (dir, path) = temp_config(&yaml);
    let s = Sluice::spawn(under_no_bpf(&["-c", path.to_str().expect("utf-8 path")]), 1, Some(dir));
    assert!(s.wait_log("admin port listening", Duration::from_secs(10)), "{}", s.log());
    let modes = relay_modes(admin);
    assert!(modes.starts_with("splice,copy,auto") && !modes.contains("sockmap"), "bpf refused: {modes}");
}

/// A route's `relay: uring` under a global `auto` gets the worker's ring:
/// its bytes go through io_uring (where the kernel allows it), the other
/// route's do not.
#[test]
fn a_routes_own_relay_uring_gets_the_ring_under_a_global_auto() {
    let admin = admin_addr();
    let (echo_a, echo_b) = (backends::echo(), backends::echo());
    let yaml = format!(
        "admin:\n  listen: {admin}\nworkers: 1\nrelay: copy\nroutes:\n  - name: plain\n    listen: 127.0.0.1:0\n\
         \x20   upstreams: [\"{echo_a}\"]\n  - name: ring\n    listen: 127.0.0.1:0\n    upstreams: [\"{echo_b}\"]\n\
         \x20   relay: uring\n"
    );
    let s = Sluice::with_config(&yaml, &[]);
    assert!(s.wait_log("admin port listening", Duration::from_secs(10)), "{}", s.log());
    let uring = relay_modes(admin).split(',').any(|m| m == "uring");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    for route in ["plain", "ring"] {
        let addr = s.route_addr(route).unwrap_or_else(|| panic!("no {route} address: {}", s.log()));
        assert!(echoed(addr, &data) == data, "route {route} relays byte-exact");
    }
    let m = counted(admin, &["plain", "ring"], data.len() as u64);
    let uring_bytes = |route: &str| bytes(&m, route, "uring");
    assert_eq!(uring_bytes("plain"), 0, "the global copy route does not use the ring");
    let want = if uring { data.len() as u64 } else { 0 };
    assert_eq!(uring_bytes("ring"), want, "route ring relays on io_uring (io_uring allowed here: {uring})");
}

/// On an address routed by TLS server name a session takes the relay mode
/// of the route its ClientHello chose, not the address's first route's.
#[test]
fn a_session_takes_the_relay_mode_of_the_route_its_client_hello_chose() {
    use sluice::tls::hello::build::{Spec, message, records};
    let admin = admin_addr();
    let (echo_a, echo_b) = (backends::echo(), backends::echo());
    let yaml = format!(
        "admin:\n  listen: {admin}\nworkers: 1\nrelay: copy\nroutes:\n  - name: plain\n    listen: 127.0.0.1:0\n\
         \x20   upstreams: [\"{echo_a}\"]\n  - name: ring\n    listen: 127.0.0.1:0\n    upstreams: [\"{echo_b}\"]\n\
         \x20   server_names: [\"ring.example.com\"]\n    relay: uring\n"
    );
    let s = Sluice::with_config(&yaml, &[]);
    assert!(s.wait_log("admin port listening", Duration::from_secs(10)), "{}", s.log());
    let uring = relay_modes(admin).split(',').any(|m| m == "uring");
    let mut data = records(&message(&Spec { sni: Some(b"ring.example.com"), ..Spec::default() }), 1);
    data.extend((0..100_000u32).map(|i| (i % 239) as u8));
    assert!(echoed(s.addr(), &data) == data, "relayed byte-exact to the route the hello chose");
    let m = counted(admin, &["ring"], data.len() as u64);
    let want = if uring { data.len() as u64 } else { 0 };
    assert_eq!(bytes(&m, "ring", "uring"), want, "the chosen route's uring (io_uring allowed here: {uring})\n{m}");
}
