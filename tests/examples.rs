//! Smoke tests of the examples, which `cargo test` builds: the benchmark
//! runs briefly and its table and CSV parse; the sendfile file server gets
//! byte-exact files (directly and through sluice), ranges, HEAD,
//! keep-alive, 404 for missing files and traversal attempts, 400 for
//! garbage, and survives half-finished requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// target/<profile>/examples/NAME, built by `cargo test` next to the sluice binary.
fn example(name: &str) -> PathBuf {
    Path::new(SLUICE).parent().expect("target dir").join("examples").join(name)
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr")
}

/// A child killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_benchmark_prints_a_table_and_a_csv() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("bench.csv");
    let svg = dir.path().join("bench.svg");
    let out = Command::new(example("bench"))
        .args(["--sluice", SLUICE, "--duration", "300ms", "--small-conns", "8", "--medium-conns", "8"])
        .args(["--large-conns", "2", "--max-conns", "64", "--modes", "splice,copy,auto", "--workers", "1"])
        .arg("--csv")
        .arg(&csv)
        .arg("--plot")
        .arg(&svg)
        .stdin(Stdio::null())
        .output()
        .expect("run the bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("| Test | Relay | RPS | Mbps | AvgLat | P99Lat | CPU% | Memory | Errors |"), "{stdout}");
    assert_eq!(stdout.lines().count(), 2 + 4 * 3, "4 tests × 3 modes:\n{stdout}");
    let text = std::fs::read_to_string(&csv).expect("csv");
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 12);
    for row in rows {
        // "test name",mode,rps,mbps,avg,p99,cpu,mem,errors
        let (_, rest) = row.rsplit_once('"').expect("quoted test name");
        let f: Vec<&str> = rest.trim_start_matches(',').split(',').collect();
        assert_eq!(f.len(), 8, "{row}");
        assert!(["splice", "copy", "auto"].contains(&f[0]), "{row}");
        let rps: f64 = f[1].parse().expect("rps");
        assert!(rps > 0.0, "no request completed: {row}");
        assert_eq!(f[7], "0", "errors: {row}");
        let mem: f64 = f[6].parse().expect("memory");
        assert!(mem > 0.5, "the proxy's memory was read: {row}");
    }
    let plot = std::fs::read_to_string(&svg).expect("svg");
    assert!(plot.starts_with("<svg") && plot.contains("splice") && plot.contains("copy"));
}

/// Starts the file server on `root`.
fn file_server(root: &Path) -> (Running, SocketAddr) {
    let addr = free_port();
    let child = Command::new(example("file_server"))
        .arg("--root")
        .arg(root)
        .args(["--listen", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start file_server");
    let r = Running(child);
    wait_listening(addr);
    (r, addr)
}

/// A response: status, headers (lowercase names), body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Reads one response from `s` (Content-Length framed; no body for HEAD).
fn read_response(s: &mut TcpStream, head_request: bool) -> Response {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).expect("response head"), 1, "closed inside the head: {raw:?}");
        raw.push(byte[0]);
    }
    let text = String::from_utf8(raw).expect("ascii head");
    let mut lines = text.split("\r\n");
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().expect("length"));
    let mut body = vec![0u8; if head_request { 0 } else { len }];
    s.read_exact(&mut body).expect("body");
    Response { status, headers, body }
}

fn get(addr: SocketAddr, path: &str, extra: &str) -> Response {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n").expect("request");
    read_response(&mut s, false)
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

#[test]
fn the_file_server_serves_exact_bytes_directly_and_through_sluice() {
    let root = tempfile::tempdir().expect("root");
    let data = pseudo_random(3 << 20);
    std::fs::write(root.path().join("big.bin"), &data).expect("file");
    std::fs::create_dir(root.path().join("sub")).expect("dir");
    std::fs::write(root.path().join("sub/a b.txt"), b"hello\n").expect("file");
    let outside = tempfile::tempdir().expect("outside");
    std::fs::write(outside.path().join("secret"), b"no").expect("secret");
    std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link")).expect("symlink");
    let (_server, addr) = file_server(root.path());

    let r = get(addr, "/big.bin", "");
    assert_eq!(r.status, 200);
    assert!(r.body == data, "the file arrives byte-exact");
    assert_eq!(get(addr, "/sub/a%20b.txt", "").body, b"hello\n", "percent-encoded names");

    // The README's end-to-end demo: the same file through sluice, in each relay mode.
    for mode in ["splice", "copy", "auto"] {
        let listen = free_port();
        let _proxy = Running(
            Command::new(SLUICE)
                .args(["--listen", &listen.to_string(), "--upstream", &addr.to_string(), "--relay", mode])
                .args(["--workers", "1", "--log", "warn"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("sluice"),
        );
        wait_listening(listen);
        let r = get(listen, "/big.bin", "");
        assert!(r.status == 200 && r.body == data, "{mode}: through sluice, byte-exact");
    }
}

#[test]
fn the_file_server_handles_ranges_head_keep_alive_and_bad_requests() {
    let root = tempfile::tempdir().expect("root");
    let data = pseudo_random(10_000);
    std::fs::write(root.path().join("f"), &data).expect("file");
    let outside = tempfile::tempdir().expect("outside");
    std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).expect("symlink");
    std::fs::write(outside.path().join("x"), b"secret").expect("secret");
    let (_server, addr) = file_server(root.path());

    let r = get(addr, "/f", "Range: bytes=100-199\r\n");
    assert_eq!((r.status, r.header("content-range")), (206, Some("bytes 100-199/10000")));
    assert_eq!(r.body, &data[100..200]);
    assert_eq!(get(addr, "/f", "Range: bytes=-10\r\n").body, &data[9990..]);
    assert_eq!(get(addr, "/f", "Range: bytes=9000-\r\n").body, &data[9000..]);
    assert_eq!(get(addr, "/f", "Range: bytes=20000-\r\n").status, 416);

    for path in ["/missing", "/../Cargo.toml", "/%2e%2e/etc/passwd", "/sub/../../x", "/escape/x", "/"] {
        assert_eq!(get(addr, path, "").status, 404, "{path} must not be served");
    }

    // Two requests on one connection, the first a HEAD.
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "HEAD /f HTTP/1.1\r\nHost: t\r\n\r\nGET /f HTTP/1.1\r\nHost: t\r\n\r\n").expect("pipelined");
    let head = read_response(&mut s, true);
    assert_eq!((head.status, head.header("content-length")), (200, Some("10000")));
    let full = read_response(&mut s, false);
    assert!(full.body == data, "keep-alive: the second response on the same connection");

    // Garbage and unknown methods.
    let mut bad = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    bad.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    bad.write_all(b"\x16\x03\x01 not http\r\n\r\n").expect("garbage");
    assert_eq!(read_response(&mut bad, false).status, 400);
    let mut post = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    post.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    post.write_all(b"DELETE /f HTTP/1.1\r\nHost: t\r\n\r\n").expect("delete");
    assert_eq!(read_response(&mut post, false).status, 405);

    // Half-finished requests: the client leaves mid-head; the server goes on serving.
    for _ in 0..20 {
        let mut half = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        half.write_all(b"GET /f HTTP/1.1\r\nHo").expect("half");
    }
    assert_eq!(get(addr, "/f", "").body, data);
}
