//! sluice as a transparent sidecar, captured by the nftables rules shipped
//! in `examples/nftables/` (loaded exactly as shipped, only their `define`s
//! given the test's values), all inside network namespaces these tests
//! create: outbound capture (`original_destination: true`, exempted by mark
//! or by uid), inbound capture to an application on loopback, routing by
//! destination behind one capture listener (with a pass-through default
//! and without one), and a capture loop refused and counted.
//!
//! The "pod" namespace (192.0.2.1/24) runs sluice and the application (this
//! test process, through `Netns::enter`); the "svc" namespace holds the real
//! services on 192.0.2.10 and 192.0.2.11. TPROXY is in `tproxy.rs`, MPTCP in
//! `multipath.rs`; both use the fixtures here.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use crate::backends::{self, Stream, read_digest, write_stream};
use crate::harness::{BIN, Sluice};
use crate::netns::{Link, Netns, shipped_rules};

/// The mark sluice's capture routes put on their upstream sockets (and the rules exempt).
const MARK: &str = "1337";
/// sluice's capture listener in the pod (namespaces are the test's own: fixed ports are free).
const CAPTURE: &str = "127.0.0.1:15001";
/// The admin port inside sluice's namespace.
pub(crate) const ADMIN: &str = "127.0.0.1:9901";

/// What a duplex service saw of one connection.
#[derive(Debug)]
pub(crate) struct Seen {
    /// Who connected (sluice's upstream socket, or the client under `source: client`).
    pub peer: SocketAddr,
    /// (bytes, digest) read up to the client's FIN, or the error that ended it.
    pub got: Result<(u64, u64), String>,
}

/// Seed of what a duplex service sends.
const DOWN_SEED: u64 = 2;

/// A service on `l`: sends `down` bytes of stream `DOWN_SEED` and a FIN while
/// reading the client's bytes to their FIN; reports each connection on the channel.
pub(crate) fn duplex_service(l: TcpListener, down: u64) -> mpsc::Receiver<Seen> {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Arc::new(std::sync::Mutex::new(tx));
    backends::serve_listener(l, move |mut s| {
        let Ok(peer) = s.peer_addr() else { return };
        let mut w = s.try_clone().expect("clone");
        let writer = std::thread::spawn(move || {
            write_stream(&mut w, DOWN_SEED, down)?;
            w.shutdown(Shutdown::Write)
        });
        let got = read_digest(&mut s, None).map_err(|e| e.to_string());
        let got = match writer.join().expect("writer") {
            Ok(()) => got,
            Err(e) => Err(format!("sending: {e}")),
        };
        let _ = tx.lock().expect("tx").send(Seen { peer, got });
    });
    rx
}

/// Sends `up` bytes of stream `seed` and a FIN on `c` while reading to the
/// peer's FIN; checks that `down` bytes of stream `DOWN_SEED` arrived.
pub(crate) fn duplex_client(c: TcpStream, seed: u64, up: u64, down: u64) -> Result<(), String> {
    let mut w = c.try_clone().map_err(|e| e.to_string())?;
    let writer = std::thread::spawn(move || -> io::Result<()> {
        write_stream(&mut w, seed, up)?;
        w.shutdown(Shutdown::Write)
    });
    let mut r = c;
    let got = read_digest(&mut r, None).map_err(|e| format!("reading: {e}"))?;
    writer.join().expect("writer").map_err(|e| format!("sending: {e}"))?;
    if got != (down, Stream::digest(DOWN_SEED, down)) {
        return Err(format!("received {} bytes, not the {down} sent (or not the same bytes)", got.0));
    }
    Ok(())
}

/// Checks what the service saw: `up` bytes of stream `seed`, to a clean FIN.
pub(crate) fn check_seen(rx: &mpsc::Receiver<Seen>, seed: u64, up: u64) -> Seen {
    let seen = rx.recv_timeout(Duration::from_secs(30)).expect("the service never finished a connection");
    assert_eq!(seen.got, Ok((up, Stream::digest(seed, up))), "what the service received");
    seen
}

/// A service that writes its name to each connection and closes.
fn named_service(l: TcpListener, name: &'static str) {
    backends::serve_listener(l, move |mut s| {
        let _ = s.write_all(name.as_bytes());
    });
}

/// Everything until EOF, as text.
fn read_text(c: io::Result<TcpStream>) -> io::Result<String> {
    let mut text = String::new();
    let mut c = c?;
    c.read_to_string(&mut text)?;
    Ok(text)
}

/// True if a connection attempt ended in a reset (at connect or at the first read).
fn was_reset(c: io::Result<TcpStream>) -> bool {
    match read_text(c) {
        Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// The pod and the services' namespace, joined by a veth.
pub(crate) struct Pod {
    pub pod: Netns,
    pub svc: Netns,
    /// pod ↔ svc.
    pub link: Link,
}

impl Pod {
    /// `None` (skip) where namespaces are not to be had.
    pub(crate) fn new() -> Option<Pod> {
        let pod = Netns::new("pod")?;
        let svc = Netns::new("svc")?;
        let link = pod.link(&svc, "192.0.2.1/24", "192.0.2.10/24");
        svc.addr("192.0.2.11/24", &link.b_if);
        Some(Pod { pod, svc, link })
    }

    /// Loads the shipped outbound rules with the exemptions `mark` and `uid`.
    fn outbound_rules(&self, mark: &str, uid: &str) {
        let port = CAPTURE.rsplit(':').next().expect("port");
        self.pod.load_nft(
            &shipped_rules("outbound.nft"),
            &[("CAPTURE_PORT", port), ("PROXY_MARK", mark), ("PROXY_UID", uid)],
        );
    }
}

/// A capture route on the pod's capture listener: `original_destination: true`, marked upstreams, `extra` lines.
fn capture_route(name: &str, extra: &str) -> String {
    capture_route_on(name, CAPTURE, extra)
}

/// `capture_route` listening on `listen`.
fn capture_route_on(name: &str, listen: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    listen: \"{listen}\"\n    original_destination: true\n    socket: {{ mark: {MARK} }}\n{extra}"
    )
}

fn config(routes: &[String]) -> String {
    format!("workers: 1\nadmin: {{ listen: \"{ADMIN}\" }}\nroutes:\n{}", routes.concat())
}

fn admin() -> SocketAddr {
    ADMIN.parse().expect("admin address")
}

#[test]
fn outbound_capture_exempted_by_mark_reaches_the_real_service_byte_exact() {
    let Some(p) = Pod::new() else { return };
    p.outbound_rules(MARK, "4242");
    let service: SocketAddr = "192.0.2.10:80".parse().expect("addr");
    let seen = duplex_service(p.svc.listen(service), 48 << 20);
    let s = p.pod.sluice(&config(&[capture_route("outbound", "")]), &[]);
    // The application dials the service, knowing nothing of sluice.
    let c = p.pod.connect(service).expect("the application connects");
    duplex_client(c, 11, 64 << 20, 48 << 20).expect("the application's exchange");
    let seen = check_seen(&seen, 11, 64 << 20);
    // The service saw sluice's connection from the pod's address, not a looped one.
    assert_eq!(seen.peer.ip().to_string(), "192.0.2.1");
    assert!(s.wait_log("dst=192.0.2.10:80", Duration::from_secs(5)), "the access log names the destination");
    assert_eq!(p.pod.metric(admin(), "sluice_refused_total", &[("reason", "loop")]), 0.0);
    assert_eq!(s.log_count("reason="), 1, "one session, nothing captured twice: {}", s.log());
}

#[test]
fn outbound_capture_over_ipv6_reaches_the_real_service_byte_exact() {
    let Some(p) = Pod::new() else { return };
    p.pod.exec(&["ip", "addr", "add", "2001:db8::1/64", "dev", &p.link.a_if, "nodad"]);
    p.svc.exec(&["ip", "addr", "add", "2001:db8::10/64", "dev", &p.link.b_if, "nodad"]);
    p.outbound_rules(MARK, "4242");
    let service: SocketAddr = "[2001:db8::10]:80".parse().expect("addr");
    let seen = duplex_service(p.svc.listen(service), 8 << 20);
    // The rules send IPv6 to [::1]:CAPTURE_PORT: a second listener, the same kind of route.
    let v6 = capture_route_on("outbound6", "[::1]:15001", "");
    let s = p.pod.sluice(&config(&[capture_route("outbound", ""), v6]), &[]);
    let c = p.pod.connect(service).expect("the application connects");
    duplex_client(c, 15, 8 << 20, 8 << 20).expect("the application's exchange over IPv6");
    assert_eq!(check_seen(&seen, 15, 8 << 20).peer.ip().to_string(), "2001:db8::1");
    assert!(s.wait_log("dst=[2001:db8::10]:80", Duration::from_secs(5)), "{}", s.log());
    assert!(s.log().contains("route=outbound6"), "{}", s.log());
    assert_eq!(p.pod.metric(admin(), "sluice_refused_total", &[("reason", "loop")]), 0.0);
}

#[test]
fn outbound_capture_into_a_dual_stack_listener_reads_an_ipv4_clients_destination() {
    let Some(p) = Pod::new() else { return };
    p.outbound_rules(MARK, "4242");
    let service: SocketAddr = "192.0.2.10:80".parse().expect("addr");
    let seen = duplex_service(p.svc.listen(service), 1 << 20);
    // sluice's own `[::]` sockets are IPv6 only; a dual-stack one comes from
    // systemd (`BindIPv6Only=both`). IPv4 clients arrive on it as
    // ::ffff:a.b.c.d, and their original destination is in conntrack's
    // IPv4 table: asking the IPv6 one found nothing (a `loop` refusal).
    let listener = p.pod.enter(|| {
        let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).expect("socket");
        s.set_only_v6(false).expect("dual-stack");
        s.set_reuse_address(true).expect("SO_REUSEADDR");
        s.bind(&"[::]:15001".parse::<SocketAddr>().expect("addr").into()).expect("bind [::]:15001");
        s.listen(128).expect("listen");
        std::os::fd::OwnedFd::from(s)
    });
    let route = capture_route_on("dual", "[::]:15001", "");
    let (dir, path) = crate::harness::temp_config(&config(&[route]));
    // As systemd starts a socket-activated service: the socket at fd 3, LISTEN_PID the process's own.
    let mut cmd = p.pod.command("/bin/sh");
    cmd.arg("-c")
        .arg(r#"exec 3<&0 </dev/null; export LISTEN_PID=$$; exec "$0" "$@""#)
        .arg(BIN)
        .arg("-c")
        .arg(&path)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "dual")
        .stdin(std::process::Stdio::from(listener))
        .stdout(std::process::Stdio::null());
    let s = Sluice::spawn_keeping_stdio(cmd, 1, Some(dir));
    let c = p.pod.connect(service).expect("the application connects");
    duplex_client(c, 16, 4 << 20, 1 << 20).expect("the application's exchange through a dual-stack listener");
    check_seen(&seen, 16, 4 << 20);
    assert!(s.wait_log("dst=192.0.2.10:80", Duration::from_secs(5)), "{}", s.log());
    assert_eq!(p.pod.metric(admin(), "sluice_refused_total", &[("reason", "loop")]), 0.0);
}

#[test]
fn outbound_capture_exempted_by_uid_reaches_the_real_service_byte_exact() {
    let Some(drop_privs) = crate::nonroot::as_nobody() else { return };
    let Some(p) = Pod::new() else { return };
    // sluice runs as nobody (65534) and sets no mark: only `meta skuid` exempts it.
    p.outbound_rules("4242", "65534");
    let service: SocketAddr = "192.0.2.10:80".parse().expect("addr");
    let seen = duplex_service(p.svc.listen(service), 16 << 20);
    let yaml = format!(
        "workers: 1\nadmin: {{ listen: \"{ADMIN}\" }}\nroutes:\n  - name: outbound\n    listen: {CAPTURE}\n    original_destination: true\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, yaml).expect("write");
    let mut cmd = p.pod.command("setpriv");
    cmd.args(&drop_privs).arg(BIN).arg("-c").arg(&path);
    let s = Sluice::spawn(cmd, 1, Some(dir));
    let c = p.pod.connect(service).expect("the application connects");
    duplex_client(c, 12, 16 << 20, 16 << 20).expect("the application's exchange");
    assert_eq!(check_seen(&seen, 12, 16 << 20).peer.ip().to_string(), "192.0.2.1");
    assert!(s.wait_log("dst=192.0.2.10:80", Duration::from_secs(5)), "the access log names the destination");
    assert_eq!(p.pod.metric(admin(), "sluice_refused_total", &[("reason", "loop")]), 0.0);
    assert_eq!(s.log_count("reason="), 1, "one session, nothing captured twice: {}", s.log());
}

#[test]
fn inbound_capture_reaches_the_application_on_loopback() {
    let Some(pod) = Netns::new("pod") else { return };
    let Some(outside) = Netns::new("out") else { return };
    pod.link(&outside, "198.51.100.1/24", "198.51.100.2/24");
    pod.load_nft(&shipped_rules("inbound.nft"), &[("INBOUND_PORT", "15006"), ("APP_PORTS", "{ 8080 }")]);
    // The application listens on loopback only: from outside only sluice reaches it.
    let app = duplex_service(pod.listen("127.0.0.1:8080".parse().expect("addr")), 8 << 20);
    let yaml = format!(
        "workers: 1\nadmin: {{ listen: \"{ADMIN}\" }}\nroutes:\n  - name: inbound\n    listen: 0.0.0.0:15006\n    upstreams: [\"127.0.0.1:8080\"]\n"
    );
    let s = pod.sluice(&yaml, &[]);
    let c = outside.connect("198.51.100.1:8080".parse().expect("addr")).expect("a client outside connects");
    duplex_client(c, 13, 24 << 20, 8 << 20).expect("the outside client's exchange");
    let seen = check_seen(&app, 13, 24 << 20);
    assert!(seen.peer.ip().is_loopback(), "the application was reached on loopback, from {}", seen.peer);
    assert!(s.wait_log_count("reason=clean", 1, Duration::from_secs(5)), "{}", s.log());
    // Another port of the pod is not captured (nothing listens there: refused by the kernel, not by sluice).
    let other = outside.connect("198.51.100.1:8081".parse().expect("addr"));
    assert!(matches!(&other, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused), "{other:?}");
}

/// Two services behind one capture listener by destination port, and a third destination.
fn two_services_by_port(default: bool) {
    let Some(p) = Pod::new() else { return };
    p.outbound_rules(MARK, "4242");
    let svc = |a: &str| p.svc.listen(a.parse().expect("addr"));
    named_service(svc("192.0.2.10:80"), "web");
    // The `db` route sends :5432 to a pool on .11; the direct service must not be reached.
    named_service(svc("192.0.2.10:5432"), "db-direct");
    named_service(svc("192.0.2.11:6432"), "db-pool");
    named_service(svc("192.0.2.10:7000"), "other");
    let mut routes = vec![
        capture_route("web", "    destinations: [\":80\"]\n"),
        format!(
            "  - name: db\n    listen: {CAPTURE}\n    destinations: [\":5432\"]\n    upstreams: [\"192.0.2.11:6432\"]\n    socket: {{ mark: {MARK} }}\n"
        ),
    ];
    if default {
        routes.push(capture_route("passthrough", ""));
    }
    let s = p.pod.sluice(&config(&routes), &[]);
    let dial = |a: &str| read_text(p.pod.connect(a.parse().expect("addr")));
    assert_eq!(dial("192.0.2.10:80").expect("web"), "web");
    assert_eq!(dial("192.0.2.10:5432").expect("db"), "db-pool", "the db route chose :5432");
    let no_route = p.pod.metric(admin(), "sluice_refused_total", &[("reason", "no_route")]);
    if default {
        assert_eq!(dial("192.0.2.10:7000").expect("passthrough"), "other", "the default passes through");
        assert_eq!(no_route, 0.0);
    } else {
        assert_eq!(no_route, 0.0);
        assert!(was_reset(p.pod.connect("192.0.2.10:7000".parse().expect("addr"))), "no route: a reset");
        assert_eq!(p.pod.metric(admin(), "sluice_refused_total", &[("reason", "no_route")]), 1.0);
        // And the routes that match still serve.
        assert_eq!(dial("192.0.2.10:80").expect("web again"), "web");
    }
    // Three sessions were served either way; their access lines follow their ends closely.
    assert!(s.wait_log_count("event=end", 3, Duration::from_secs(5)), "{}", s.log());
    let log = s.log();
    assert!(log.lines().any(|l| l.contains("route=db") && l.contains("dst=192.0.2.10:5432")), "{log}");
    assert!(log.lines().any(|l| l.contains("route=web") && l.contains("dst=192.0.2.10:80")), "{log}");
}

#[test]
fn two_services_behind_one_capture_listener_by_port_and_a_pass_through_default() {
    two_services_by_port(true);
}

#[test]
fn two_services_behind_one_capture_listener_by_port_and_no_default_refuses_the_rest() {
    two_services_by_port(false);
}

#[test]
fn a_capture_loop_is_refused_and_counted_not_a_connection_storm() {
    let Some(p) = Pod::new() else { return };
    // The exemptions name a mark and a uid sluice does not have: its own upstream connections are captured too.
    p.outbound_rules("4242", "4242");
    let service: SocketAddr = "192.0.2.10:80".parse().expect("addr");
    let seen = duplex_service(p.svc.listen(service), 1 << 20);
    let s = p.pod.sluice(&config(&[capture_route("outbound", "")]), &[]);
    let fds0 = s.fds().0;
    let attempts = 5u8;
    for i in 0..attempts {
        let c = p.pod.connect(service);
        assert!(was_reset(c), "attempt {i}: the looping client must get a reset");
    }
    // A client dialling the capture listener itself (no rule matched) is a loop too.
    assert!(was_reset(p.pod.connect(CAPTURE.parse().expect("addr"))), "a client of the listener itself");
    let loops = p.pod.metric(admin(), "sluice_refused_total", &[("reason", "loop")]);
    let accepted = p.pod.metric(admin(), "sluice_sessions_accepted_total", &[]);
    eprintln!(
        "capture loop: {attempts} looping clients + 1 to the listener: {loops} refused as loop, {accepted} accepted"
    );
    // Each looping client is refused once per connect attempt of its session (`retries: 2` at most: 3).
    let attempts = f64::from(attempts);
    assert!((attempts + 1.0..=3.0 * attempts + 1.0).contains(&loops), "loop refusals: {loops}");
    assert!(accepted <= 4.0 * attempts + 1.0, "a connection storm: {accepted} sessions accepted");
    // Nothing is left open and nothing reached the service.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.fds().0 > fds0 {
        assert!(std::time::Instant::now() < deadline, "sockets left open: {} (from {fds0})", s.fds().0);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(seen.try_recv().is_err(), "a looped connection reached the service");
    // With the exemption back (the same file loaded again), sluice serves on.
    p.outbound_rules(MARK, "4242");
    let c = p.pod.connect(service).expect("connect");
    duplex_client(c, 14, 4 << 20, 1 << 20).expect("after the loop, capture works");
    check_seen(&seen, 14, 4 << 20);
}
