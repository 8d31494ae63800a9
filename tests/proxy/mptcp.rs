//! `mptcp: true` routes on loopback: an MPTCP client and a plain TCP client
//! both get byte-exact transfers both ways, ending with a clean FIN, in
//! every relay mode; `ss -M` shows that the client's connection is MPTCP
//! at both ends and so is sluice's upstream connection to an MPTCP server,
//! while toward a plain TCP server it falls back and still works; a reload
//! that turns MPTCP on makes a new (MPTCP) listener, and the drain closes
//! it without complaint (it takes no socket filter). Skips,
//! saying why, where the kernel makes no MPTCP sockets. (Several paths,
//! one taken down mid-transfer, need namespaces: `tests/proxy/multipath.rs`.)

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::backends::{self, Stream, read_digest, timeouts, write_stream};
use crate::harness::{Sluice, one_route};

both_modes! {
    mptcp_and_plain_tcp_clients_get_byte_exact_transfers => clients_both_kinds;
}

/// Bytes each way per client: enough for many pipe and buffer fills.
const LEN: u64 = 24 << 20;

/// Why MPTCP cannot be tested here, if it cannot.
fn unavailable() -> Option<String> {
    match std::fs::read_to_string("/proc/sys/net/mptcp/enabled") {
        Ok(v) if v.trim() == "1" => {}
        Ok(v) => return Some(format!("net.mptcp.enabled is {}", v.trim())),
        Err(e) => return Some(format!("no /proc/sys/net/mptcp/enabled ({e}): a kernel without MPTCP")),
    }
    Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::MPTCP))
        .err()
        .map(|e| format!("an MPTCP socket cannot be made: {e}"))
}

macro_rules! require_mptcp {
    () => {
        if let Some(why) = unavailable() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

fn mptcp_socket() -> Socket {
    Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::MPTCP)).expect("an MPTCP socket")
}

/// An MPTCP client connected to `addr`, with the test timeouts.
fn mptcp_connect(addr: SocketAddr) -> TcpStream {
    let s = mptcp_socket();
    s.connect_timeout(&addr.into(), Duration::from_secs(10)).expect("MPTCP connect to sluice");
    let s: TcpStream = s.into();
    timeouts(&s);
    s
}

/// An echo server on an MPTCP listener (plain TCP clients fall back).
fn mptcp_echo() -> SocketAddr {
    let l = mptcp_socket();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind the MPTCP backend");
    l.listen(64).expect("listen");
    backends::echo_on(l.into())
}

/// What `ss -M` says of the MPTCP socket from `local` to `peer` (either
/// may be left out): `mptcp` (keys exchanged), `fallback` (plain TCP on
/// the wire), or `None` if there is no such MPTCP socket.
fn mptcp_state(local: Option<SocketAddr>, peer: Option<SocketAddr>) -> Option<&'static str> {
    let out = Command::new("ss").args(["-HnMi"]).output().expect("ss (iproute2) lists MPTCP sockets");
    assert!(out.status.success(), "ss -HnMi: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let is =
            |want: Option<SocketAddr>, got: Option<&&str>| want.is_none_or(|w| got == Some(&w.to_string().as_str()));
        if line.starts_with(char::is_whitespace) || !is(local, f.get(3)) || !is(peer, f.get(4)) {
            continue;
        }
        let info = lines.get(i + 1).copied().unwrap_or("");
        return Some(if info.contains("fallback") {
            "fallback"
        } else if info.contains("remote_key") {
            "mptcp"
        } else {
            "unknown"
        });
    }
    None
}

/// `LEN` bytes of stream `seed` sent through `c` (half-closed after) while
/// reading the echo to its end: a reset instead of a clean FIN fails.
fn echo_both_ways(mut c: TcpStream, seed: u64, who: &str) {
    let mut w = c.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        write_stream(&mut w, seed, LEN)?;
        w.shutdown(Shutdown::Write)
    });
    let (count, digest) = read_digest(&mut c, None).unwrap_or_else(|e| panic!("{who}: reading the echo: {e}"));
    writer.join().expect("writer").unwrap_or_else(|e| panic!("{who}: sending: {e}"));
    assert_eq!(count, LEN, "{who}: {count} of {LEN} bytes came back before the FIN");
    assert_eq!(digest, Stream::digest(seed, LEN), "{who}: the echoed bytes differ");
}

fn clients_both_kinds(mode: &str) {
    require_mptcp!();
    let up = mptcp_echo();
    let s = Sluice::with_config(&one_route(mode, &[up], "    mptcp: true\n"), &[]);

    let mut c = mptcp_connect(s.addr());
    assert_eq!(backends::exchange(&mut c, b"hello").expect("a first exchange"), b"hello");
    let me = c.local_addr().expect("client address");
    assert_eq!(mptcp_state(Some(me), Some(s.addr())), Some("mptcp"), "{mode}: the client's end is MPTCP");
    assert_eq!(mptcp_state(Some(s.addr()), Some(me)), Some("mptcp"), "{mode}: sluice's end of it is MPTCP");
    assert_eq!(mptcp_state(None, Some(up)), Some("mptcp"), "{mode}: sluice's upstream connection is MPTCP");
    echo_both_ways(c, 1, &format!("{mode}: MPTCP client"));

    // A plain TCP client on the same listener falls back and gets the same service.
    let mut c = backends::connect(s.addr());
    assert_eq!(backends::exchange(&mut c, b"hello").expect("a first exchange"), b"hello");
    let me = c.local_addr().expect("client address");
    assert_eq!(mptcp_state(Some(s.addr()), Some(me)), None, "{mode}: a TCP client is served by a TCP socket");
    echo_both_ways(c, 2, &format!("{mode}: TCP client"));
}

#[test]
fn an_mptcp_upstream_connection_falls_back_to_a_plain_tcp_server() {
    require_mptcp!();
    let up = backends::echo();
    let s = Sluice::with_config(&one_route("auto", &[up], "    mptcp: true\n"), &[]);
    let mut c = mptcp_connect(s.addr());
    assert_eq!(backends::exchange(&mut c, b"hello").expect("a first exchange"), b"hello");
    assert_eq!(mptcp_state(None, Some(up)), Some("fallback"), "an MPTCP socket, plain TCP on the wire");
    echo_both_ways(c, 3, "toward a TCP server");
    assert!(!s.log().contains("refused IPPROTO_MPTCP"), "{}", s.log());
}

#[test]
fn a_route_without_mptcp_stays_plain_tcp() {
    require_mptcp!();
    let up = mptcp_echo();
    let s = Sluice::with_config(&one_route("auto", &[up], ""), &[]);
    let mut c = mptcp_connect(s.addr());
    assert_eq!(backends::exchange(&mut c, b"hello").expect("a first exchange"), b"hello");
    let me = c.local_addr().expect("client address");
    assert_eq!(mptcp_state(Some(me), Some(s.addr())), Some("fallback"), "a TCP listener answers without MPTCP");
    assert_eq!(mptcp_state(None, Some(up)), None, "sluice's upstream socket is a TCP one");
}

#[test]
fn turning_mptcp_on_by_reload_rebinds_the_listener_as_mptcp() {
    require_mptcp!();
    let up = mptcp_echo();
    let config = |extra: &str| format!("drain_grace: 0s\n{}", one_route("auto", &[up], extra));
    let mut s = Sluice::with_config(&config(""), &[]);
    let path = s.config_path().expect("a config file");
    let before = s.addr();
    std::fs::write(&path, config("    mptcp: true\n")).expect("write config");
    s.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(s.wait_log_count("reloaded ", 1, Duration::from_secs(10)), "no reload:\n{}", s.log());
    // Port 0: the new MPTCP listener got a port of its own (a fixed address keeps its number).
    let after = s.route_addr("test").expect("the new listener logs its address");
    assert_ne!(after, before, "a TCP socket cannot turn into an MPTCP one: a new listener");
    let mut c = mptcp_connect(after);
    assert_eq!(backends::exchange(&mut c, b"hello").expect("an exchange"), b"hello");
    let me = c.local_addr().expect("client address");
    assert_eq!(mptcp_state(Some(after), Some(me)), Some("mptcp"), "the reloaded listener is MPTCP");
    drop(c);
    // The drain closes the MPTCP listener without a socket filter (it takes none), and says nothing of it.
    s.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(s.wait_exit(Duration::from_secs(40)).is_some_and(|st| st.success()), "{}", s.log());
    assert!(!s.log().contains("cannot stop new handshakes"), "{}", s.log());
}

#[test]
fn an_mptcp_route_where_mptcp_is_off_fails_to_start_and_says_how_to_turn_it_on() {
    require_mptcp!();
    if !crate::harness::is_root() {
        eprintln!("skipped: a network namespace of its own (where net.mptcp.enabled can be 0) needs root");
        return;
    }
    let (_dir, path) =
        crate::harness::temp_config(&one_route("auto", &["127.0.0.1:9".parse().unwrap()], "    mptcp: true\n"));
    // net.mptcp.enabled is per network namespace: off in a new one only.
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "sh", "-c", "ip link set lo up && sysctl -qw net.mptcp.enabled=0 && exec \"$0\" -c \"$1\""])
        .arg(crate::harness::BIN)
        .arg(&path);
    let (code, _, err) = crate::harness::run_command(cmd);
    if err.contains("unshare failed") || err.contains("sysctl: ") {
        eprintln!("skipped: no network namespace could be made here: {err}");
        return;
    }
    assert_ne!(code, 0, "it must not start: {err}");
    assert!(
        err.contains("route test: cannot listen on 127.0.0.1:0: cannot make an MPTCP socket")
            && err.contains("sysctl -w net.mptcp.enabled=1"),
        "{err}"
    );
}
