//! A zero-copy static file server: mio, non-blocking, HTTP/1.1 GET and HEAD
//! with keep-alive and single byte ranges, file bodies sent with
//! `sendfile(2)` straight from the page cache to the socket (the offset is
//! kept per connection and the call resumed on `WouldBlock`), with a
//! pread/write fallback where sendfile is refused. It is the upstream of
//! the README's end-to-end demo and of the large-file benchmark row.
//!
//! ```sh
//! cargo run --release --example file_server -- --root /var/www --listen 127.0.0.1:8000
//! ```
//!
//! Paths are resolved under `--root` only: `..` segments are refused, and a
//! symlink that leads outside the root is a 404. Bad requests get 400,
//! unknown methods 405, missing files 404, unsatisfiable ranges 416.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "Zero-copy HTTP/1.1 static file server (sendfile) for sluice demos and benchmarks")]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Directory to serve.
    #[arg(long, default_value = ".")]
    root: PathBuf,
}

/// Largest request head accepted (request line and headers).
const MAX_HEAD: usize = 16 << 10;
const LISTENER: Token = Token(usize::MAX);

/// What a connection is doing.
enum State {
    /// Collecting a request head.
    Reading,
    /// Writing a response: head first, then `remaining` bytes of `file` from `offset`.
    Sending { head: Vec<u8>, written: usize, file: Option<File>, offset: i64, remaining: u64, close: bool },
}

struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    state: State,
    /// sendfile was refused for this socket: use pread/write.
    fallback: bool,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let root = args
        .root
        .canonicalize()
        .map_err(|e| io::Error::new(e.kind(), format!("--root {}: {e}", args.root.display())))?;
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(args.listen)?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("file_server: serving {} on {}", root.display(), listener.local_addr()?);
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next = 0usize;
    let mut events = Events::with_capacity(1024);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            next = next.wrapping_add(1) % (usize::MAX - 1);
                            poll.registry().register(
                                &mut stream,
                                Token(next),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            conns.insert(
                                next,
                                Conn { stream, input: Vec::new(), state: State::Reading, fallback: false },
                            );
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            eprintln!("file_server: accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let key = ev.token().0;
            let done = match conns.get_mut(&key) {
                Some(c) => !c.drive(&root),
                None => false,
            };
            if done {
                conns.remove(&key); // dropping the stream closes it and leaves the poll
            }
        }
    }
}

impl Conn {
    /// Makes all the progress the socket allows; false when the connection is over.
    fn drive(&mut self, root: &Path) -> bool {
        loop {
            match &mut self.state {
                State::Reading => {
                    if let Some(state) = self.next_request(root) {
                        self.state = state;
                        continue;
                    }
                    let mut buf = [0u8; 4096];
                    match self.stream.read(&mut buf) {
                        Ok(0) => return false, // closed, maybe mid-request: nothing to answer
                        Ok(n) => {
                            self.input.extend_from_slice(&buf[..n]);
                            if self.input.len() > MAX_HEAD && self.next_request(root).is_none() {
                                self.state = error(431, "Request Header Fields Too Large", true);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return false,
                    }
                }
                State::Sending { .. } => match self.send() {
                    Ok(Some(close)) => {
                        if close {
                            let _ = self.stream.flush();
                            return false;
                        }
                        self.state = State::Reading; // keep-alive: the next request may be buffered already
                    }
                    Ok(None) => return true, // WouldBlock: wait for writable
                    Err(_) => return false,
                },
            }
        }
    }

    /// Parses a complete request head out of `input`, if there is one, into the response to send.
    fn next_request(&mut self, root: &Path) -> Option<State> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(&self.input) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return None,
            Err(_) => return Some(error(400, "Bad Request", true)),
        };
        let http10 = req.version == Some(0);
        let header = |name: &str| {
            req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| String::from_utf8_lossy(h.value))
        };
        let conn_hdr = header("connection").map(|v| v.to_ascii_lowercase());
        let close =
            if http10 { conn_hdr.as_deref() != Some("keep-alive") } else { conn_hdr.as_deref() == Some("close") };
        let range = header("range").map(|r| r.into_owned());
        let method = req.method.unwrap_or("").to_owned();
        let path = req.path.unwrap_or("").to_owned();
        // A request body is not expected for GET/HEAD; one we can't skip ends the connection.
        let has_body =
            header("content-length").is_some_and(|v| v.trim() != "0") || header("transfer-encoding").is_some();
        self.input.drain(..len);
        if method != "GET" && method != "HEAD" {
            return Some(error(405, "Method Not Allowed", true));
        }
        if has_body {
            return Some(error(400, "Bad Request", true));
        }
        Some(respond(root, &path, method == "HEAD", range.as_deref(), close))
    }

    /// Writes what it can. `Some(close)` when the response is complete.
    fn send(&mut self) -> io::Result<Option<bool>> {
        let State::Sending { head, written, file, offset, remaining, close } = &mut self.state else {
            return Ok(Some(false));
        };
        while *written < head.len() {
            match self.stream.write(&head[*written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        while *remaining > 0 {
            let Some(f) = file.as_ref() else { break };
            let count = usize::try_from(*remaining).unwrap_or(usize::MAX).min(1 << 30);
            let r = if self.fallback {
                copy_chunk(f, &self.stream, *offset, count)
            } else {
                let mut off = *offset;
                let r = nix::sys::sendfile::sendfile(self.stream.as_fd(), f.as_fd(), Some(&mut off), count)
                    .map_err(io::Error::from);
                match r {
                    Err(e) if matches!(e.raw_os_error(), Some(nix::libc::EINVAL | nix::libc::ENOSYS)) => {
                        self.fallback = true;
                        continue;
                    }
                    r => r,
                }
            };
            match r {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while being sent")),
                Ok(n) => {
                    *offset += n as i64;
                    *remaining -= n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(*close))
    }
}

/// One pread + write through a buffer (where sendfile is refused).
fn copy_chunk(f: &File, mut out: &TcpStream, offset: i64, count: usize) -> io::Result<usize> {
    let mut buf = vec![0u8; count.min(256 << 10)];
    let n = f.read_at(&mut buf, u64::try_from(offset).unwrap_or(0))?;
    if n == 0 {
        return Ok(0);
    }
    // Write what the socket takes; the rest is read again next time (pread keeps no position).
    out.write(&buf[..n])
}

/// An error response with a short text body.
fn error(code: u16, reason: &str, close: bool) -> State {
    let body = format!("{code} {reason}\n");
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    State::Sending { head: head.into_bytes(), written: 0, file: None, offset: 0, remaining: 0, close }
}

/// The response to `GET path` (or HEAD) under `root`.
fn respond(root: &Path, path: &str, head_only: bool, range: Option<&str>, close: bool) -> State {
    let Some(file_path) = resolve(root, path) else {
        return error(404, "Not Found", close);
    };
    let Ok(file) = File::open(&file_path) else {
        return error(404, "Not Found", close);
    };
    let size = match file.metadata() {
        Ok(m) if m.is_file() => m.len(),
        _ => return error(404, "Not Found", close),
    };
    let (status, start, len, extra) = match range.map(|r| parse_range(r, size)) {
        None => (200, 0, size, String::new()),
        Some(Some((a, b))) => (206, a, b - a + 1, format!("Content-Range: bytes {a}-{b}/{size}\r\n")),
        Some(None) => {
            let head = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{size}\r\nContent-Length: 0\r\n{}\r\n",
                if close { "Connection: close\r\n" } else { "" }
            );
            return State::Sending { head: head.into_bytes(), written: 0, file: None, offset: 0, remaining: 0, close };
        }
    };
    let reason = if status == 200 { "OK" } else { "Partial Content" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\n{extra}{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    );
    let remaining = if head_only { 0 } else { len };
    State::Sending { head: head.into_bytes(), written: 0, file: Some(file), offset: start as i64, remaining, close }
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` within `size`: the inclusive range, or `None` if unsatisfiable
/// (several ranges are not supported and are treated as unsatisfiable).
fn parse_range(spec: &str, size: u64) -> Option<(u64, u64)> {
    let r = spec.trim().strip_prefix("bytes=")?;
    if r.contains(',') || size == 0 {
        return None;
    }
    let (a, b) = r.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        (true, false) => {
            let n: u64 = b.parse().ok()?;
            (size.saturating_sub(n), size - 1)
        }
        (false, true) => (a.parse().ok()?, size - 1),
        (false, false) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(size - 1)),
        (true, true) => return None,
    };
    (start <= end && start < size).then_some((start, end))
}

/// The file a URL path names under `root`, or `None` if it would leave the root.
fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let path = url_path.split(['?', '#']).next()?;
    let decoded = percent_decode(path)?;
    let mut out = root.to_path_buf();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => return None,
            s if s.contains('\0') || s.contains('\\') => return None,
            s => out.push(s),
        }
    }
    // Symlinks may still point elsewhere: the real path must stay under the root.
    let real = out.canonicalize().ok()?;
    real.starts_with(root).then_some(real)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
