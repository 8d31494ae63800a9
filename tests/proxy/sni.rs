//! Routing TLS by server name without terminating it: real TLS end to end
//! (Python's `ssl` servers with their own self-signed certificates behind
//! one sluice address; clients that verify the certificate they got),
//! ClientHellos split at every byte and over many records, bad input that
//! must never reach an upstream, ALPN, the default route, PROXY headers
//! first, and reloads that add a name without closing the listener.
//!
//! The real-TLS test needs `openssl` (certificates) and `python3`; it says
//! SKIP where they are missing. The rest speak raw bytes: a generated
//! ClientHello is all routing looks at.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sluice::tls::hello::build::{Spec, message, records};

use crate::backends;
use crate::harness::Sluice;
use crate::observability::{get, with_admin};

/// A plain TCP upstream named `name`: reads a connection to its half-close,
/// answers "`name` `bytes` `xxh3`\n", closes; counts the connections it accepted.
fn named_upstream(name: &'static str) -> (SocketAddr, Arc<AtomicU64>) {
    let accepted = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&accepted);
    let addr = backends::serve(move |mut s| {
        count.fetch_add(1, Ordering::SeqCst);
        let mut got = Vec::new();
        if s.read_to_end(&mut got).is_ok() {
            let _ = writeln!(s, "{name} {} {}", got.len(), xxhash_rust::xxh3::xxh3_64(&got));
        }
    });
    (addr, accepted)
}

/// Sends `pieces` (pausing between them), half-closes, reads the answer.
fn send_pieces(addr: SocketAddr, pieces: &[&[u8]], pause: Duration) -> io::Result<String> {
    let mut c = backends::connect(addr);
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 && !pause.is_zero() {
            std::thread::sleep(pause);
        }
        c.write_all(p)?;
    }
    c.shutdown(Shutdown::Write)?;
    let mut out = String::new();
    c.read_to_string(&mut out)?;
    Ok(out)
}

fn route(name: &str, up: SocketAddr, extra: &str) -> String {
    format!("  - name: {name}\n    listen: 127.0.0.1:0\n    upstreams: [\"{up}\"]\n{extra}")
}

fn names(list: &str) -> String {
    format!("    server_names: [{list}]\n")
}

/// What the named upstream answers for `bytes` sent whole.
fn answer(name: &str, bytes: &[u8]) -> String {
    format!("{name} {} {}\n", bytes.len(), xxhash_rust::xxh3::xxh3_64(bytes))
}

#[test]
fn hellos_split_anywhere_and_over_many_records_reach_the_same_route() {
    let (split, _) = named_upstream("split");
    let (other, _) = named_upstream("other");
    let yaml = format!(
        "workers: 1\nroutes:\n{}{}",
        route("split", split, &names("\"split.example.com\"")),
        route("other", other, "")
    );
    let s = Sluice::with_config(&yaml, &[]);
    let mut tried = 0;
    // A small hello cut in two at every byte, with a pause between the halves.
    let small = records(&message(&Spec { sni: Some(b"split.example.com"), alpn: &[b"h2"], ..Spec::default() }), 1);
    for cut in 1..small.len() {
        let got = send_pieces(s.addr(), &[&small[..cut], &small[cut..]], Duration::from_millis(1)).expect("answer");
        assert_eq!(got, answer("split", &small), "cut at byte {cut} of {}", small.len());
        tried += 1;
    }
    // Big hellos (padded, a 1,216-byte post-quantum key share) over 1 to 17 records, cut
    // around every record boundary and in trickles of 1-7 bytes at the start.
    for (pad, n_records) in [(2048, 2), (8192, 5), (16 << 10, 17)] {
        let msg = message(&Spec { sni: Some(b"Split.Example.com."), key_share: 1216, pad_to: pad, ..Spec::default() });
        for r in [1, n_records] {
            let wire = records(&msg, r);
            let per = msg.len().div_ceil(r);
            let mut cuts: Vec<usize> =
                (1..r).flat_map(|k| [k * (per + 5) - 1, k * (per + 5), k * (per + 5) + 3]).collect();
            cuts.extend([1, 4, 5, 6, 9, wire.len() / 2, wire.len() - 1]);
            for cut in cuts.into_iter().filter(|&c| c > 0 && c < wire.len()) {
                let got =
                    send_pieces(s.addr(), &[&wire[..cut], &wire[cut..]], Duration::from_millis(2)).expect("answer");
                assert_eq!(got, answer("split", &wire), "pad {pad}, {r} records, cut at {cut}");
                tried += 1;
            }
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut at = 0;
            for step in (1..=7).cycle().take(24) {
                pieces.push(&wire[at..at + step]);
                at += step;
            }
            pieces.push(&wire[at..]);
            let got = send_pieces(s.addr(), &pieces, Duration::from_millis(1)).expect("answer");
            assert_eq!(got, answer("split", &wire), "pad {pad}, {r} records, trickled");
            tried += 1;
        }
    }
    // Anything else (no SNI) goes to the default.
    let plain = records(&message(&Spec::default()), 1);
    assert_eq!(send_pieces(s.addr(), &[&plain], Duration::ZERO).expect("answer"), answer("other", &plain));
    eprintln!("sni split: {tried} split or trickled hellos, every one to its route, byte-exact");
}

/// Reads until the connection ends; returns what it ended with.
fn read_end(c: &mut TcpStream) -> io::Result<usize> {
    let mut buf = [0u8; 4096];
    let mut n = 0;
    loop {
        match c.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => n += k,
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn bad_input_is_reset_counted_and_never_reaches_an_upstream() {
    let (named, named_hits) = named_upstream("named");
    let (fallback, fallback_hits) = named_upstream("fallback");
    let yaml = format!(
        "workers: 1\nroutes:\n{}{}",
        route("named", named, &format!("{}    client_hello_timeout: 1s\n", names("\"a.example.com\""))),
        route("fallback", fallback, "    client_hello_timeout: 1s\n")
    );
    let (s, admin) = with_admin(&yaml);
    let hello = records(&message(&Spec { sni: Some(b"a.example.com"), ..Spec::default() }), 1);
    let expect_reset = |what: &str, c: &mut TcpStream| match read_end(c) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("{what}: expected a reset, got {other:?}"),
    };
    // Plain HTTP on a TLS port.
    let mut c = backends::connect(s.addr());
    c.write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n").expect("write");
    expect_reset("plain HTTP", &mut c);
    // Garbage that starts like a handshake record.
    let mut c = backends::connect(s.addr());
    c.write_all(&[22, 3, 1, 0, 0, 9, 9, 9]).expect("write");
    expect_reset("garbage", &mut c);
    // A truncated hello, then FIN.
    let mut c = backends::connect(s.addr());
    c.write_all(&hello[..hello.len() / 2]).expect("write");
    c.shutdown(Shutdown::Write).expect("fin");
    expect_reset("truncated hello", &mut c);
    // A hello that trickles a byte every 300 ms: the 1 s timeout ends it (a
    // write may be the one that meets the reset).
    let mut c = backends::connect(s.addr());
    let started = Instant::now();
    let mut write_reset = false;
    for b in &hello[..8] {
        if let Err(e) = c.write_all(&[*b]) {
            write_reset = matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe);
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    if !write_reset {
        expect_reset("trickle", &mut c);
    }
    assert!(started.elapsed() < Duration::from_secs(4), "the trickle was cut after {:?}", started.elapsed());
    // A bad host name fails closed: not "no name" (which the default would take).
    let bad = records(&message(&Spec { sni: Some(b"a..example.com"), ..Spec::default() }), 1);
    let mut c = backends::connect(s.addr());
    c.write_all(&bad).expect("write");
    expect_reset("bad name", &mut c);
    let (_, m) = get(admin, "/metrics");
    let refused = |reason: &str| {
        // Refused before a route was chosen: counted on the address's first route.
        let name = format!("sluice_refused_total{{route=\"named\",reason=\"{reason}\"}} ");
        m.lines().find_map(|l| l.strip_prefix(name.as_str())?.parse::<f64>().ok()).unwrap_or(-1.0) as i64
    };
    assert_eq!(refused("bad_client_hello"), 4, "{m}");
    assert_eq!(refused("client_hello_timeout"), 1);
    assert_eq!(named_hits.load(Ordering::SeqCst) + fallback_hits.load(Ordering::SeqCst), 0, "an upstream was reached");
    // And a good one still goes through.
    assert_eq!(send_pieces(s.addr(), &[&hello], Duration::ZERO).expect("answer"), answer("named", &hello));
    assert!(s.log().contains("route=- ") && s.log().contains("reason=bad_client_hello"), "{}", s.log());
}

#[test]
fn without_a_default_an_unclaimed_name_is_reset_as_no_route() {
    let (a, a_hits) = named_upstream("a");
    let (h2, _) = named_upstream("h2");
    let yaml = format!(
        "workers: 1\nroutes:\n{}{}",
        route("a", a, &names("\"*.example.com\"")),
        route("h2", h2, &format!("{}    alpn: [\"h2\"]\n", names("\"app.example.com\"")))
    );
    let (s, admin) = with_admin(&yaml);
    for (sni, alpn) in
        [(Some(&b"other.org"[..]), &[][..]), (None, &[]), (Some(b"app.example.com"), &[&b"http/1.1"[..]])]
    {
        let hello = records(&message(&Spec { sni, alpn, ..Spec::default() }), 1);
        let mut c = backends::connect(s.addr());
        c.write_all(&hello).expect("write");
        assert!(
            matches!(read_end(&mut c), Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{sni:?} {alpn:?} must be reset"
        );
    }
    let (_, m) = get(admin, "/metrics");
    assert!(m.contains("sluice_refused_total{route=\"a\",reason=\"no_route\"} 3"), "on the first route: {m}");
    assert!(m.contains("sluice_refused_total{route=\"h2\",reason=\"no_route\"} 0"), "{m}");
    assert_eq!(a_hits.load(Ordering::SeqCst), 0);
    // ALPN picks within a name; the wildcard takes the rest of example.com.
    let h = records(&message(&Spec { sni: Some(b"app.example.com"), alpn: &[b"h2"], ..Spec::default() }), 1);
    assert_eq!(send_pieces(s.addr(), &[&h], Duration::ZERO).unwrap(), answer("h2", &h));
    let w = records(&message(&Spec { sni: Some(b"www.example.com"), ..Spec::default() }), 1);
    assert_eq!(send_pieces(s.addr(), &[&w], Duration::ZERO).unwrap(), answer("a", &w));
    assert!(s.wait_log("sni=app.example.com alpn=h2 ech=0", Duration::from_secs(5)), "{}", s.log());
}

#[test]
fn a_proxy_header_comes_first_then_the_hello() {
    let (a, _) = named_upstream("a");
    let (b, _) = named_upstream("b");
    let pp = "    accept_proxy_protocol: true\n";
    let yaml = format!(
        "workers: 1\nroutes:\n{}{}",
        route("a", a, &format!("{}{pp}", names("\"a.example.com\""))),
        route("b", b, &format!("{}{pp}", names("\"b.example.com\"")))
    );
    let s = Sluice::with_config(&yaml, &[]);
    let hello = records(&message(&Spec { sni: Some(b"b.example.com"), ..Spec::default() }), 1);
    let header = b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 443\r\n";
    // In one write, and in two.
    let mut both = header.to_vec();
    both.extend_from_slice(&hello);
    assert_eq!(send_pieces(s.addr(), &[&both], Duration::ZERO).unwrap(), answer("b", &hello));
    assert_eq!(send_pieces(s.addr(), &[header, &hello], Duration::from_millis(5)).unwrap(), answer("b", &hello));
    assert!(s.wait_log("client=10.1.2.3:5555", Duration::from_secs(5)), "{}", s.log());
}

#[test]
fn a_reload_adds_a_name_without_closing_the_listener() {
    let (a, _) = named_upstream("a");
    let (b, _) = named_upstream("b");
    let (d, _) = named_upstream("default");
    let before =
        format!("workers: 1\nroutes:\n{}{}", route("a", a, &names("\"a.example.com\"")), route("default", d, ""));
    let s = Sluice::with_config(&before, &[]);
    let addr = s.addr();
    let hello_b = records(&message(&Spec { sni: Some(b"b.example.com"), ..Spec::default() }), 1);
    assert_eq!(send_pieces(addr, &[&hello_b], Duration::ZERO).unwrap(), answer("default", &hello_b));
    // A client connected (and queued in the same listener) across the reload is served.
    let mut waiting = backends::connect(addr);
    let after = format!(
        "workers: 1\nroutes:\n{}{}{}",
        route("a", a, &names("\"a.example.com\"")),
        route("b", b, &names("\"b.example.com\"")),
        route("default", d, "")
    );
    std::fs::write(s.config_path().expect("config file"), after).expect("rewrite");
    s.signal(Signal::SIGHUP);
    assert!(s.wait_log("reloaded", Duration::from_secs(10)), "{}", s.log());
    assert_eq!(s.route_addr("b"), Some(addr), "route b joined the same listener");
    assert_eq!(send_pieces(addr, &[&hello_b], Duration::ZERO).unwrap(), answer("b", &hello_b));
    waiting.write_all(&hello_b).expect("write");
    waiting.shutdown(Shutdown::Write).expect("fin");
    let mut got = String::new();
    waiting.read_to_string(&mut got).expect("served across the reload");
    assert!(got.starts_with("b ") || got.starts_with("default "), "{got}");
}

// ------------------------------------------------------------- real TLS

/// A self-signed certificate for `name` (its own CA), in `dir`.
fn cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let file = name.replace('*', "star");
    let (c, k) = (dir.join(format!("{file}.crt")), dir.join(format!("{file}.key")));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}"), "-addext", &format!("subjectAltName=DNS:{name}")])
        .arg("-keyout")
        .arg(&k)
        .arg("-out")
        .arg(&c)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
    (c, k)
}

/// The Python TLS servers, killed on drop.
struct TlsServers(Child);

impl Drop for TlsServers {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/tls_peer.py");

fn tls_servers(specs: &[(&str, &Path, &Path)]) -> (TlsServers, Vec<(String, SocketAddr)>) {
    let mut cmd = Command::new("python3");
    cmd.arg(PEER).arg("serve");
    for (name, c, k) in specs {
        cmd.arg(format!("{name}={},{}", c.display(), k.display()));
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("python3");
    let stdout = child.stdout.take().expect("stdout");
    let servers = TlsServers(child);
    let mut ports = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("a line from the TLS servers");
        if line == "ready" {
            break;
        }
        let (name, port) = line.split_once(' ').expect("NAME PORT");
        ports.push((name.to_owned(), SocketAddr::from(([127, 0, 0, 1], port.parse().expect("port")))));
    }
    (servers, ports)
}

/// A TLS client's verdict: `Ok(reply)` or `Err(error)`.
fn tls_client(addr: SocketAddr, sni: &str, alpn: &str, ca: &str) -> Result<String, String> {
    let out = Command::new("python3")
        .arg(PEER)
        .args(["client", &addr.to_string(), sni, alpn, ca])
        .output()
        .expect("python3 client");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("client said {:?}: {e}", String::from_utf8_lossy(&out.stdout)));
    match v["ok"].as_bool() {
        Some(true) => Ok(v["reply"].as_str().unwrap_or_default().to_owned()),
        _ => Err(v["error"].as_str().unwrap_or_default().to_owned()),
    }
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

#[test]
fn real_tls_reaches_the_upstream_whose_certificate_matches_the_name() {
    if !have("openssl", "version") || !have("python3", "--version") {
        eprintln!("SKIP: needs openssl and python3");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_names = ["api.example.com", "*.example.com", "app.example.com", "h1.app", "default.example.org"];
    let certs: Vec<(PathBuf, PathBuf)> = cert_names.iter().map(|n| cert(dir.path(), n)).collect();
    let specs: Vec<(&str, &Path, &Path)> = ["api", "wild", "h2", "h1", "default"]
        .iter()
        .zip(&certs)
        .map(|(n, (c, k))| (*n, c.as_path(), k.as_path()))
        .collect();
    // The h1 upstream serves app.example.com too (ALPN splits the name).
    let specs: Vec<(&str, &Path, &Path)> = specs
        .into_iter()
        .map(|(n, c, k)| if n == "h1" { (n, certs[2].0.as_path(), certs[2].1.as_path()) } else { (n, c, k) })
        .collect();
    let (_servers, ups) = tls_servers(&specs);
    let up = |n: &str| ups.iter().find(|(name, _)| name == n).map(|(_, a)| *a).expect("server");
    let yaml = format!(
        "workers: 2\nroutes:\n{}{}{}{}{}",
        route("api", up("api"), &names("\"api.example.com\"")),
        route("wild", up("wild"), &names("\"*.example.com\"")),
        route("h2", up("h2"), &format!("{}    alpn: [\"h2\"]\n", names("\"app.example.com\""))),
        route("h1", up("h1"), &format!("{}    alpn: [\"http/1.1\"]\n", names("\"app.example.com\""))),
        route("default", up("default"), "")
    );
    let s = Sluice::with_config(&yaml, &[]);
    let ca = |i: usize| certs[i].0.to_string_lossy().into_owned();
    let cases: [(&str, &str, String, Option<&str>); 8] = [
        ("api.example.com", "-", ca(0), Some("api alpn=-")),
        ("www.example.com", "-", ca(1), Some("wild alpn=-")),
        ("API.EXAMPLE.COM", "-", ca(0), Some("api alpn=-")),
        ("app.example.com", "h2,http/1.1", ca(2), Some("h2 alpn=h2")),
        ("app.example.com", "http/1.1", ca(2), Some("h1 alpn=http/1.1")),
        ("app.example.com", "h3", ca(2), None),
        ("x.y.example.com", "-", "-".to_owned(), Some("default alpn=-")),
        ("-", "-", "-".to_owned(), Some("default alpn=-")),
    ];
    for (sni, alpn, ca, want) in &cases {
        let got = tls_client(s.addr(), sni, alpn, ca);
        match want {
            Some(w) => assert_eq!(got.as_deref(), Ok(*w), "sni {sni} alpn {alpn}"),
            None => assert!(got.is_err(), "sni {sni} alpn {alpn}: expected no route, got {got:?}"),
        }
    }
    assert!(s.wait_log("sni=api.example.com", Duration::from_secs(5)), "{}", s.log());
    eprintln!(
        "sni real TLS: {} handshakes through one address, each to the certificate its name asked for",
        cases.len()
    );
}
