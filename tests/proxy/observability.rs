//! What sluice says about itself: /metrics and /stats after known traffic,
//! promtool's verdict on the exposition format, latency histograms against
//! a known delay, the access log in both formats, /readyz during a drain,
//! the admin port under a flood of bad requests, bytes of a running session
//! (in /metrics and periodic access lines), `sluice stats` and `sluice doctor`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::backends::{self, Stream, connect, read_digest, write_stream};
use crate::harness::{BIN, Sluice, one_route, run, temp_config};

/// A free loopback port for the admin listener (bound, read, released).
pub(crate) fn admin_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

pub(crate) use crate::harness::admin_get as get;

pub(crate) fn stats(addr: SocketAddr) -> serde_json::Value {
    let (code, body) = get(addr, "/stats");
    assert_eq!(code, 200);
    serde_json::from_str(&body).expect("/stats is JSON")
}

/// Starts sluice with an admin port and waits until it answers.
pub(crate) fn with_admin(yaml: &str) -> (Sluice, SocketAddr) {
    let admin = admin_addr();
    let s = Sluice::with_config(&format!("admin:\n  listen: {admin}\n{yaml}"), &[]);
    assert!(s.wait_log("admin port listening", Duration::from_secs(10)), "no admin port");
    (s, admin)
}

/// /stats once the first route has counted `n` clean closes (sessions are
/// counted when they close, a little after the client sees its last byte).
fn wait_closed_clean(admin: SocketAddr, n: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = stats(admin);
        if v["routes"][0]["sessions"]["closed"]["clean"] == n {
            return v;
        }
        assert!(Instant::now() < deadline, "sessions not all closed (want {n} clean): {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of the sample line `name` (exact, labels included).
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {name} in\n{metrics}"))
        .parse()
        .expect("a number")
}

both_modes! {
    metrics_count_exactly_the_bytes_and_sessions_relayed => exact_counts;
}

fn exact_counts(mode: &str) {
    let sink = backends::reply_after_eof(3, 5000).0;
    let (s, admin) = with_admin(&one_route(mode, &[sink], ""));
    let n = 12u64;
    let mut up_total = 0u64;
    for i in 0..n {
        // The last one is a one-way 6 MiB upload: `auto` splices it past 4 MiB.
        let len = if i == n - 1 { 6 << 20 } else { 1000 + i * 70_001 };
        up_total += len;
        let mut c = connect(s.addr());
        write_stream(&mut c, i, len).expect("upload");
        c.shutdown(Shutdown::Write).expect("half-close");
        let (got, _) = read_digest(&mut c, None).expect("answer");
        assert_eq!(got, 5000);
    }
    let v = wait_closed_clean(admin, n);
    let r = &v["routes"][0];
    assert_eq!(r["sessions"]["accepted"], n);
    assert_eq!(r["sessions"]["active"], 0);
    let moved =
        |dir: &str| ["spliced", "copied", "uring", "sockmap"].map(|m| r[dir][m].as_u64().unwrap()).iter().sum::<u64>();
    let (up, down) = (moved("client_to_upstream"), moved("upstream_to_client"));
    assert_eq!((up, down), (up_total, 5000 * n), "{mode}: bytes in /stats");
    if mode == "uring" {
        assert_eq!(r["client_to_upstream"]["uring"], up_total, "uring mode moved every byte on the ring");
        assert_eq!(r["upstream_to_client"]["uring"], 5000 * n);
    } else {
        assert_eq!(r["client_to_upstream"]["uring"], 0, "{mode}: no ring");
    }
    if mode == "copy" || mode == "uring" {
        assert_eq!(r["client_to_upstream"]["spliced"], 0);
    } else {
        assert!(r["client_to_upstream"]["spliced"].as_u64().unwrap() > 0, "{mode} mode spliced nothing");
    }
    assert_eq!(r["duration"]["count"], n, "one duration per session");
    assert_eq!(r["connect_time"]["count"], n);
    assert_eq!(r["upstreams"][0]["sessions"], n);
    assert_eq!(r["upstreams"][0]["rtt"]["count"], n, "TCP_INFO read at every close");
    let (code, m) = get(admin, "/metrics");
    assert_eq!(code, 200);
    let bytes = |dir: &str, how: &str| {
        sample(&m, &format!("sluice_bytes_total{{route=\"test\",direction=\"{dir}\",mode=\"{how}\"}}")) as u64
    };
    let all = |dir: &str| bytes(dir, "spliced") + bytes(dir, "copied") + bytes(dir, "uring") + bytes(dir, "sockmap");
    assert_eq!(all("client_to_upstream"), up_total);
    assert_eq!(all("upstream_to_client"), 5000 * n);
    assert_eq!(bytes("client_to_upstream", "uring"), if mode == "uring" { up_total } else { 0 });
    assert_eq!(sample(&m, "sluice_sessions_accepted_total{route=\"test\"}") as u64, n);
    assert_eq!(sample(&m, "sluice_sessions_closed_total{route=\"test\",reason=\"clean\"}") as u64, n);
    assert_eq!(sample(&m, "sluice_session_duration_seconds_count{route=\"test\"}") as u64, n);
    // Pipe loans: one session at a time, so after the first the pool serves them.
    // (Read again after /metrics: a worker publishes its pool counts at the end of the loop turn in
    // which the last session closed, which the first /stats read can precede.)
    let (_, again) = get(admin, "/stats");
    let v: serde_json::Value = serde_json::from_str(&again).expect("JSON");
    let (lent, created) = (v["pipes"]["lent"].as_u64().unwrap(), v["pipes"]["created"].as_u64().unwrap());
    assert_eq!(sample(&m, "sluice_pipes_lent_total") as u64, lent);
    if mode == "splice" {
        assert!(lent >= 2 * n && created <= 4, "{mode}: {lent} pipe loans, {created} created");
    } else if mode == "auto" {
        assert!(lent >= 1 && created <= lent, "{mode}: {lent} pipe loans, {created} created");
    } else {
        assert_eq!(lent, 0, "{mode} mode lent pipes");
    }
}

/// `relay: auto` picks each run's stage by what it measured on this
/// machine, so which stage moves 1 KiB or 1 MiB exchanges is the machine's
/// (the pump's unit tests script the costs and check the choice). What
/// holds everywhere: a size class new to the worker tries both stages
/// (copy first), every echo is exact, and every byte is counted once.
#[test]
fn auto_tries_both_stages_on_new_sizes_and_counts_every_byte_once() {
    let (s, admin) = with_admin(&one_route("auto", &[backends::echo()], ""));
    // One session of `count` echo exchanges of `size` bytes.
    let exchanges = |count: u64, size: usize| {
        let mut c = connect(s.addr());
        for round in 0..count {
            let msg = Stream::bytes(round, size);
            assert!(backends::exchange(&mut c, &msg).expect("echo") == msg, "round {round}: echo differs");
        }
    };
    exchanges(200, 1 << 10);
    let v = wait_closed_clean(admin, 1);
    let mut both = (0, 0);
    for dir in ["client_to_upstream", "upstream_to_client"] {
        let spliced = v["routes"][0][dir]["spliced"].as_u64().expect("spliced");
        let copied = v["routes"][0][dir]["copied"].as_u64().expect("copied");
        assert_eq!(spliced + copied, 200 << 10, "{dir}: every byte counted once: {v}");
        both = (both.0 + spliced, both.1 + copied);
    }
    assert!(both.0 >= 1 << 10 && both.1 >= 1 << 10, "both stages tried on 1 KiB messages: {v}");
    exchanges(6, 1 << 20);
    let v = wait_closed_clean(admin, 2);
    for dir in ["client_to_upstream", "upstream_to_client"] {
        let spliced = v["routes"][0][dir]["spliced"].as_u64().expect("spliced");
        let copied = v["routes"][0][dir]["copied"].as_u64().expect("copied");
        assert_eq!(spliced + copied, (200 << 10) + (6 << 20), "{dir}: every byte counted once: {v}");
    }
    // What it measured is reported (a worker publishes it when its last
    // session is gone, so it may trail the close by a loop turn): the 1 KiB
    // class has both stages' costs.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (v, kib) = loop {
        let v = stats(admin);
        let kib = v["auto"]["classes"].as_array().and_then(|cs| cs.iter().find(|c| c["from_bytes"] == 1024).cloned());
        if let Some(kib) = kib.filter(|k| k["splice_ns_per_kib"].is_u64() && k["copy_ns_per_kib"].is_u64()) {
            break (v, kib);
        }
        assert!(Instant::now() < deadline, "no 1 KiB class with both stages in /stats: {v}");
        std::thread::sleep(Duration::from_millis(20));
    };
    for stage in ["copy_ns_per_kib", "splice_ns_per_kib"] {
        assert!(kib[stage].as_u64().is_some_and(|ns| ns > 0), "{stage} of 1 KiB messages: {kib}");
    }
    assert!(v["auto"]["explored"].as_u64().is_some_and(|n| n >= 2), "explorations counted: {v}");
    let (_, metrics) = get(admin, "/metrics");
    for stage in ["copy", "splice"] {
        let series = format!("sluice_relay_auto_cost_seconds_per_byte{{size_class=\"1024\",stage=\"{stage}\"}} ");
        assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
    }
}

#[test]
fn promtool_accepts_the_metrics() {
    let Ok(out) = Command::new("promtool").arg("--version").output() else {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_PROMTOOL").is_none_or(|v| v != "1"),
            "SLUICE_REQUIRE_PROMTOOL=1 but promtool (Debian package prometheus) does not run"
        );
        eprintln!("skipped: promtool (Debian package prometheus) is not installed");
        return;
    };
    assert!(out.status.success());
    let (s, admin) = with_admin(&one_route("splice", &[backends::echo()], ""));
    for _ in 0..3 {
        let mut c = connect(s.addr());
        c.write_all(b"x").expect("write");
        let mut b = [0; 1];
        c.read_exact(&mut b).expect("echo");
    }
    let (_, metrics) = get(admin, "/metrics");
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    p.stdin.take().expect("stdin").write_all(metrics.as_bytes()).expect("feed");
    let out = p.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn first_byte_latency_matches_a_known_delay() {
    // The upstream answers 100 ms after the connection opens.
    let up = backends::serve(|mut s| {
        std::thread::sleep(Duration::from_millis(100));
        let _ = s.write_all(b"hello");
    });
    let (s, admin) = with_admin(&one_route("splice", &[up], ""));
    let n = 8;
    for _ in 0..n {
        let mut c = connect(s.addr());
        let mut b = [0; 5];
        c.read_exact(&mut b).expect("greeting");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let v = stats(admin);
        if v["routes"][0]["first_byte_time"]["count"] == n {
            break v;
        }
        assert!(Instant::now() < deadline, "first-byte samples missing: {v}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let fb = &v["routes"][0]["first_byte_time"];
    for q in ["p50", "p99", "max"] {
        let us = fb[q].as_u64().unwrap();
        // 3 significant digits of precision, plus scheduling on a busy machine.
        assert!((99_900..250_000).contains(&us), "first byte {q} = {us}µs for a 100 ms delay");
    }
    assert!(fb["min"].as_u64().unwrap() >= 99_900);
}

#[test]
fn access_log_has_one_line_per_session_in_text_and_json() {
    for (format, probe) in [("text", "route=test"), ("json", "\"route\":\"test\"")] {
        let up = backends::echo();
        let s = Sluice::with_config(&format!("log:\n  format: {format}\n{}", one_route("copy", &[up], "")), &[]);
        for _ in 0..3 {
            let mut c = connect(s.addr());
            c.write_all(b"abc").expect("write");
            let mut b = [0; 3];
            c.read_exact(&mut b).expect("echo");
        }
        assert!(
            s.wait_log_count("sluice::access", 3, Duration::from_secs(10)),
            "{format}: access lines missing:\n{}",
            s.log()
        );
        let lines: Vec<String> = s.log().lines().filter(|l| l.contains("sluice::access")).map(str::to_owned).collect();
        assert_eq!(lines.len(), 3);
        for l in &lines {
            assert!(l.contains(probe), "{format}: {l}");
            assert!(l.contains("bytes_up") && l.contains("reason"), "{format}: {l}");
        }
        if format == "json" {
            for l in s.log().lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
                if v["target"] == "sluice::access" {
                    assert_eq!(v["access"]["bytes_up"], 3);
                    assert_eq!(v["access"]["reason"], "clean");
                }
            }
        }
    }
}

#[test]
fn readyz_turns_503_when_the_drain_starts() {
    let len = 256u64 << 20;
    let up = backends::source(5, len);
    let (mut s, admin) = with_admin(&format!("drain_timeout: 30s\n{}", one_route("splice", &[up], "")));
    assert_eq!(get(admin, "/readyz"), (200, "ready\n".to_owned()));
    assert_eq!(get(admin, "/healthz").0, 200);
    let mut c = connect(s.addr());
    let mut first = vec![0; 1 << 20];
    c.read_exact(&mut first).expect("transfer started");
    s.signal(Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(admin, "/readyz").0 != 503 {
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(get(admin, "/healthz").0, 200, "still alive while draining");
    drop(c);
    s.wait_exit(Duration::from_secs(10)).expect("exit");
}

#[test]
fn admin_port_survives_a_flood_of_bad_and_slow_requests() {
    let (s, admin) = with_admin(&one_route("splice", &[backends::echo()], ""));
    // 100 connections that send half a request and stall, more than the 64 the port serves at once.
    let slow: Vec<TcpStream> = (0..100)
        .filter_map(|_| {
            let mut c = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).ok()?;
            let _ = c.write_all(b"GET /metr");
            Some(c)
        })
        .collect();
    // Malformed, oversized and wrong-method requests get proper answers.
    let raw = |req: &[u8]| -> String {
        let mut c = TcpStream::connect_timeout(&admin, Duration::from_secs(10)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let _ = c.write_all(req);
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    };
    // The stalled ones are cut after 5 s, after which these are served.
    assert!(raw(b"\x00\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(raw(b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(raw(b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    assert!(raw(&huge).starts_with("HTTP/1.1 431"));
    // The data plane never noticed.
    let mut c = connect(s.addr());
    let msg = Stream::bytes(1, 100_000);
    let got = backends::exchange(&mut c, &msg).expect("echo during the flood");
    assert!(got == msg);
    let t0 = Instant::now();
    assert_eq!(get(admin, "/healthz").0, 200);
    assert!(t0.elapsed() < Duration::from_secs(6), "the admin port took {:?} to answer", t0.elapsed());
    drop(slow);
}

#[test]
fn admin_refuses_a_remote_address_unless_allowed() {
    let yaml = format!("admin:\n  listen: 0.0.0.0:0\n{}", one_route("splice", &[backends::echo()], ""));
    let (_dir, path) = temp_config(&yaml);
    let (code, _, err) = run(&["check", "-c", &path.to_string_lossy()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("admin.listen") && err.contains("allow_remote"), "{err}");
}

#[test]
fn sluice_stats_shows_the_routes() {
    let (s, admin) = with_admin(&one_route("splice", &[backends::echo()], ""));
    let mut c = connect(s.addr());
    c.write_all(b"hi").expect("write");
    let mut b = [0; 2];
    c.read_exact(&mut b).expect("echo");
    let (code, out, err) = run(&["stats", "--admin", &admin.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("test"), "no route row:\n{out}");
    assert!(out.contains("pool hits"), "no pipe pool line:\n{out}");
    let (code, _, err) = run(&["stats", "--admin", "127.0.0.1:1"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn doctor_reports_a_bad_machine_and_exits_1_on_failure() {
    // A fake /proc: a tiny somaxconn, a tiny fd limit, few local ports.
    let dir = tempfile::tempdir().expect("tempdir");
    let sys = |rel: &str, value: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dirs");
        std::fs::write(p, value).expect("write");
    };
    sys("sys/net/core/somaxconn", "128\n");
    sys("sys/net/ipv4/ip_local_port_range", "60000\t60999\n");
    sys("sys/net/ipv4/ip_local_reserved_ports", "60000-60099\n");
    sys(
        "self/limits",
        "Limit                     Soft Limit           Hard Limit           Units\nMax open files            64                   64                   files\n",
    );
    let yaml = format!("max_connections: 100000\n{}", one_route("splice", &[backends::echo()], ""));
    let (_d, path) = temp_config(&yaml);
    let out = Command::new(BIN)
        .args(["doctor", "-c", &path.to_string_lossy(), "--proc-root", &dir.path().to_string_lossy()])
        .output()
        .expect("doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a FAIL must exit 1:\n{text}");
    assert!(text.contains("sysctl -w net.core.somaxconn="), "{text}");
    assert!(text.contains("FAIL"), "{text}");
    let ports = "60000-60999 less 100 in ip_local_reserved_ports = 900 ports per upstream address, but route test \
                 may have 100000 sessions open at once";
    assert!(text.contains(ports), "{text}");
    // The real machine and the shipped config: runs, and says something for each check.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.yaml");
    let (code, out, err) = run(&["doctor", "-c", shipped]);
    assert!(code == 0 || code == 1, "{err}");
    assert!(out.contains("somaxconn"), "{out}");
}

/// Bytes client → upstream so far, summed over relay modes, from /metrics.
fn bytes_up(admin: SocketAddr) -> u64 {
    let (_, m) = get(admin, "/metrics");
    ["spliced", "copied"]
        .iter()
        .map(|how| {
            let name = format!("sluice_bytes_total{{route=\"test\",direction=\"client_to_upstream\",mode=\"{how}\"}}");
            m.lines().find_map(|l| l.strip_prefix(name.as_str())?.trim().parse::<f64>().ok()).unwrap_or(0.0) as u64
        })
        .sum()
}

#[test]
fn a_long_upload_shows_in_metrics_and_the_access_log_while_it_runs() {
    let yaml = format!("log:\n  flush_interval: 1s\n{}", one_route("auto", &[backends::sink()], ""));
    let (s, admin) = with_admin(&yaml);
    let mut c = connect(s.addr());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let mut c = c.try_clone().expect("clone");
        std::thread::spawn(move || {
            let chunk = vec![3u8; 64 << 10];
            while !stop.load(Ordering::SeqCst) {
                c.write_all(&chunk).expect("upload");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // Within 2 s of the first bytes, /metrics counts them, and the count grows while the session is open.
    let deadline = Instant::now() + Duration::from_secs(2);
    let first = loop {
        let n = bytes_up(admin);
        if n > 0 {
            break n;
        }
        assert!(Instant::now() < deadline, "no upload byte in /metrics 2 s into the session");
        std::thread::sleep(Duration::from_millis(50));
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while bytes_up(admin) <= first {
        assert!(Instant::now() < deadline, "the count did not grow while the upload ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(s.wait_log("event=periodic", Duration::from_secs(3)), "no periodic access line:\n{}", s.log());
    let line = s.log().lines().find(|l| l.contains("event=periodic")).expect("periodic line").to_owned();
    assert!(line.contains("reason=-") && !line.contains("bytes_up=0 "), "{line}");
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    c.shutdown(Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    // At the end the total is counted once, not twice.
    let v = wait_closed_clean(admin, 1);
    let total = v["routes"][0]["client_to_upstream"]["spliced"].as_u64().unwrap()
        + v["routes"][0]["client_to_upstream"]["copied"].as_u64().unwrap();
    assert!(s.wait_log("event=end", Duration::from_secs(5)));
    let end = s.log().lines().find(|l| l.contains("event=end")).expect("end line").to_owned();
    assert!(end.contains(&format!("bytes_up={total} ")), "metrics say {total}, the access line: {end}");
}

/// `/metrics` once `pred` holds for it (bounded).
fn metrics_when(admin: SocketAddr, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, m) = get(admin, "/metrics");
        if code == 200 && pred(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "never {what}:\n{m}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_failed_reload_flips_last_reload_successful_and_moves_its_timestamp() {
    let yaml = one_route("splice", &[backends::echo()], "");
    let (s, admin) = with_admin(&yaml);
    let m = metrics_when(admin, "scraped", |_| true);
    let started = sample(&m, "sluice_start_time_seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    assert!(started <= now && now - started < 60.0, "start time {started}, now {now}");
    assert_eq!(sample(&m, "sluice_config_last_reload_successful"), 1.0, "the load at start counts as applied");
    let t0 = sample(&m, "sluice_config_last_reload_timestamp_seconds");
    assert!((t0 - started).abs() < 5.0, "before any reload, the start's load: {t0} vs {started}");
    let info = m.lines().find(|l| l.starts_with("sluice_build_info{")).expect("sluice_build_info");
    assert!(info.contains("version=\"") && info.contains("commit=\"") && info.ends_with("} 1"), "{info}");
    assert!(info.contains("relay_modes=\"splice,copy,auto"), "{info}");

    let path = s.config_path().expect("config file");
    let good = std::fs::read_to_string(&path).expect("read config");
    std::fs::write(&path, good.replace("relay: splice", "relay: sideways")).expect("write bad config");
    // Millisecond stamps: make sure this reload ends in a later one than the start's.
    std::thread::sleep(Duration::from_millis(20));
    s.signal(Signal::SIGHUP);
    assert!(s.wait_log("reload failed", Duration::from_secs(10)), "the bad file was not refused");
    let m = metrics_when(admin, "0 after the bad reload", |m| sample(m, "sluice_config_last_reload_successful") == 0.0);
    let t1 = sample(&m, "sluice_config_last_reload_timestamp_seconds");
    assert!(t1 > t0, "the timestamp moves with a failed reload too: {t0} → {t1}");
    assert_eq!(sample(&m, "sluice_reloads_total{result=\"failed\"}"), 1.0);
    assert_eq!(sample(&m, "sluice_start_time_seconds"), started, "a reload is not a restart");

    std::fs::write(&path, &good).expect("write good config");
    std::thread::sleep(Duration::from_millis(20));
    s.signal(Signal::SIGHUP);
    assert!(s.wait_log("reloaded ", Duration::from_secs(10)), "the good file was not applied");
    let m =
        metrics_when(admin, "1 after the good reload", |m| sample(m, "sluice_config_last_reload_successful") == 1.0);
    assert!(sample(&m, "sluice_config_last_reload_timestamp_seconds") > t1);
}

#[test]
fn a_refusal_carries_its_route_label() {
    let up = backends::echo();
    let yaml = format!(
        "workers: 1\nroutes:\n  - name: open\n    listen: 127.0.0.1:0\n    upstreams: [\"{up}\"]\n  \
         - name: closed\n    listen: 127.0.0.1:0\n    upstreams: [\"{up}\"]\n    allow: [\"192.0.2.0/24\"]\n"
    );
    let (s, admin) = with_admin(&yaml);
    let closed = s.route_addr("closed").expect("route closed listens");
    for _ in 0..3 {
        // Refused: reset (or closed) without a byte; the reset may come before connect returns.
        if let Ok(mut c) = backends::connect_maybe_reset(closed) {
            let mut b = [0; 1];
            assert!(!matches!(c.read(&mut b), Ok(1)), "a denied client got an answer");
        }
    }
    let refused = "sluice_refused_total{route=\"closed\",reason=\"acl\"}";
    let m = metrics_when(admin, "3 acl refusals on route closed", |m| sample(m, refused) == 3.0);
    assert_eq!(sample(&m, "sluice_refused_total{route=\"open\",reason=\"acl\"}"), 0.0, "not on the other route");
    assert_eq!(sample(&m, "sluice_refused_total{route=\"closed\",reason=\"overload\"}"), 0.0, "every reason listed");
    assert_eq!(sample(&m, "sluice_local_errors_total{route=\"open\",cause=\"fds\"}"), 0.0);
    assert_eq!(sample(&m, "sluice_accept_paused_total{route=\"closed\",reason=\"global\"}"), 0.0);
    assert_eq!(stats(admin)["accept"]["refused_acl"], 3, "the total in /stats is the sum over routes");
}

#[test]
fn draining_shows_in_metrics_with_the_sessions_left() {
    let len = 256u64 << 20;
    let up = backends::source(6, len);
    let yaml = format!("drain_timeout: 30s\nmax_connections: 77\n{}", one_route("splice", &[up], ""));
    let (mut s, admin) = with_admin(&yaml);
    let m = metrics_when(admin, "scraped", |_| true);
    assert_eq!(sample(&m, "sluice_draining"), 0.0);
    assert_eq!(sample(&m, "sluice_max_connections"), 77.0);
    assert_eq!(sample(&m, "sluice_connections_open"), 0.0);
    assert!(sample(&m, "sluice_max_fds") >= 1024.0);
    let fds = sample(&m, "sluice_open_fds");
    assert!(fds > 3.0 && fds < sample(&m, "sluice_max_fds"), "{fds} fds open");
    let mut c = connect(s.addr());
    let mut first = vec![0; 1 << 20];
    c.read_exact(&mut first).expect("transfer started");
    s.signal(Signal::SIGTERM);
    let m = metrics_when(admin, "draining", |m| sample(m, "sluice_draining") == 1.0);
    assert_eq!(sample(&m, "sluice_connections_open"), 1.0, "the session the drain waits for");
    drop(c);
    s.wait_exit(Duration::from_secs(10)).expect("exit");
}
