//! The admin HTTP port, on its own thread with its own mio loop (never on a
//! worker): `GET /metrics` (Prometheus text 0.0.4), `GET /stats` (JSON),
//! `GET /healthz` (200 while the process runs), `GET /readyz` (503 before
//! the workers run, while draining and while shedding load).
//!
//! One request per connection (`Connection: close`), parsed with httparse.
//! Requests are bounded in size (8 KiB) and time (5 s to arrive and be
//! answered) and at most 64 connections are open, so a flood of slow or
//! malformed requests costs bounded memory and cannot starve the data plane.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::metrics::build_info;
use crate::metrics::collect::{Sources, collect};
use crate::metrics::snapshot::{LimitsSnapshot, PipeSnapshot, ReloadSnapshot, Snapshot};
use crate::metrics::{Registry, WorkerMetrics, prometheus};
use crate::process::ProcessState;

const LISTENER: Token = Token(0);
/// Wakes the thread to stop (its tokens for connections start above it).
const WAKER: Token = Token(usize::MAX);
const MAX_REQUEST: usize = 8 << 10;
const MAX_CONNECTIONS: usize = 64;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin port reports on.
#[derive(Debug)]
pub struct AdminContext {
    /// Every worker's metrics.
    pub workers: Vec<Arc<WorkerMetrics>>,
    /// Route and upstream names.
    pub registry: Arc<Registry>,
    /// Readiness, reloads, pipes.
    pub shared: Arc<ProcessState>,
    /// Where /proc is (a test seam for the kernel counters).
    pub proc_root: std::path::PathBuf,
}

impl AdminContext {
    /// A second handle on the same sources (for the exit summary).
    pub fn clone_for_summary(&self) -> AdminContext {
        AdminContext {
            workers: self.workers.clone(),
            registry: Arc::clone(&self.registry),
            shared: Arc::clone(&self.shared),
            proc_root: self.proc_root.clone(),
        }
    }

    /// Everything, summed and merged, now.
    pub fn snapshot(&self) -> Snapshot {
        let sh = &self.shared;
        let base = Snapshot {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            commit: build_info::commit().to_owned(),
            relay_modes: build_info::relay_modes().to_owned(),
            start_time_secs: sh.started_unix_ms as f64 / 1000.0,
            uptime_secs: sh.started.elapsed().as_secs_f64(),
            ready: sh.running.load(Ordering::Relaxed)
                && !sh.draining.load(Ordering::Relaxed)
                && !sh.overload.is_shedding(),
            overloaded: sh.overload.is_shedding(),
            overload_episodes: sh.overload.episodes.load(Ordering::Relaxed),
            draining: sh.draining.load(Ordering::Relaxed),
            generation: sh.generation.load(Ordering::Relaxed),
            workers: self.workers.len(),
            pipes: PipeSnapshot {
                cap: sh.pipes.cap() as u64,
                bytes: sh.pipes.held_bytes() as u64,
                ..PipeSnapshot::default()
            },
            reloads: ReloadSnapshot {
                ok: sh.reloads.ok.load(Ordering::Relaxed),
                failed: sh.reloads.failed.load(Ordering::Relaxed),
                last_ok: sh.reloads.last_ok.load(Ordering::Relaxed),
                last_at_secs: sh.reloads.last_at_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            },
            limits: LimitsSnapshot {
                max_connections: sh.max_connections.load(Ordering::Relaxed) as u64,
                connections: sh.active.load(Ordering::Relaxed) as u64,
                max_fds: crate::sys::rlimit::nofile().unwrap_or(0),
                open_fds: crate::overload::open_fds(),
            },
            control_refused: sh.control_refused.load(Ordering::Relaxed),
            kernel: crate::sys::netstat::kernel_tcp_stats(&self.proc_root),
            ..Snapshot::default()
        };
        collect(Sources { workers: &self.workers, registry: &self.registry, base })
    }
}

/// The running admin port, as the control thread holds it.
#[derive(Debug)]
pub struct AdminHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A duplicate of its listening socket (for a successor).
    listener: std::os::fd::OwnedFd,
    stop: Arc<std::sync::atomic::AtomicBool>,
    waker: Arc<mio::Waker>,
}

impl AdminHandle {
    /// Another duplicate of the listening socket, to hand to a successor.
    pub fn dup(&self) -> io::Result<std::os::fd::OwnedFd> {
        self.listener.try_clone()
    }

    /// Stops serving (a successor serves the port now; the socket lives on there).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
    }
}

/// Serves the admin port on a new thread, on `listener` (bound by the
/// caller, so an address in use is reported before the proxy starts, or
/// received from a predecessor).
pub fn start(listener: std::net::TcpListener, ctx: AdminContext) -> io::Result<AdminHandle> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let dup = std::os::fd::OwnedFd::from(listener.try_clone()?);
    let mut listener = TcpListener::from_std(listener);
    let poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (flag, own_waker) = (Arc::clone(&stop), Arc::clone(&waker));
    std::thread::Builder::new().name("sluice-admin".to_owned()).spawn(move || {
        let admin = Admin {
            poll,
            listener: Some(listener),
            conns: Slab::new(),
            ctx,
            accepting: true,
            stop: flag,
            _waker: own_waker,
        };
        if let Err(e) = admin.run() {
            log::error!("admin port stopped: {e}");
        }
    })?;
    Ok(AdminHandle { addr, listener: dup, stop, waker })
}

struct Conn {
    stream: TcpStream,
    request: Vec<u8>,
    response: Vec<u8>,
    written: usize,
    deadline: Instant,
}

struct Admin {
    poll: Poll,
    /// `None` once a successor took the port over.
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    ctx: AdminContext,
    accepting: bool,
    /// A successor took the port over: stop.
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Kept while the thread runs: a waker dropped right after waking (the
    /// handle's) would take its pending wake-up with it.
    _waker: Arc<mio::Waker>,
}

impl Admin {
    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        loop {
            let now = Instant::now();
            let timeout = self.conns.iter().map(|(_, c)| c.deadline.saturating_duration_since(now)).min();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(t) => self.serve(t - 1),
                }
            }
            if self.stop.load(Ordering::Relaxed) && self.listener.is_some() {
                // Our copy of the socket closes; the successor's keeps its queue.
                // Requests already accepted are still answered.
                if let Some(mut l) = self.listener.take() {
                    let _ = self.poll.registry().deregister(&mut l);
                }
            }
            if self.listener.is_none() && self.conns.is_empty() {
                return Ok(());
            }
            // Slow or silent clients are cut at their deadline.
            let now = Instant::now();
            let late: Vec<usize> = self.conns.iter().filter(|(_, c)| c.deadline <= now).map(|(k, _)| k).collect();
            for k in late {
                self.close(k);
            }
            if !self.accepting && self.conns.len() < MAX_CONNECTIONS {
                self.accepting = true;
                self.accept();
            }
        }
    }

    fn accept(&mut self) {
        while self.accepting {
            if self.conns.len() >= MAX_CONNECTIONS {
                // The rest wait in the kernel's queue until a connection closes.
                self.accepting = false;
                return;
            }
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let entry = self.conns.vacant_entry();
                    let token = Token(entry.key() + 1);
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                        .is_ok()
                    {
                        entry.insert(Conn {
                            stream,
                            request: Vec::new(),
                            response: Vec::new(),
                            written: 0,
                            deadline: Instant::now() + REQUEST_TIMEOUT,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("admin port: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn serve(&mut self, k: usize) {
        let Some(c) = self.conns.get_mut(k) else { return };
        if c.step(&self.ctx) {
            self.close(k);
        }
    }

    fn close(&mut self, k: usize) {
        if let Some(mut c) = self.conns.try_remove(k) {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }
}

impl Conn {
    /// Reads the request, answers it, writes the answer. True when done
    /// (answered, or the client went away): the connection is closed.
    fn step(&mut self, ctx: &AdminContext) -> bool {
        if self.response.is_empty() {
            let mut buf = [0u8; 4096];
            loop {
                match self.stream.read(&mut buf) {
                    Ok(0) => return true,
                    Ok(n) => {
                        self.request.extend_from_slice(&buf[..n]);
                        if self.request.len() > MAX_REQUEST {
                            let body = b"request too large\n".to_vec();
                            self.response = response(431, "Request Header Fields Too Large", "text/plain", body, false);
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return true,
                }
            }
            if self.response.is_empty() {
                match handle(&self.request, ctx) {
                    Some(r) => self.response = r,
                    None => return false, // incomplete: wait for more
                }
            }
        }
        while self.written < self.response.len() {
            match self.stream.write(&self.response[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        true
    }
}

/// Answers a complete request; `None` while the request is still incomplete.
fn handle(raw: &[u8], ctx: &AdminContext) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let (method, path) = match req.parse(raw) {
        Ok(httparse::Status::Partial) => return None,
        Err(e) => {
            return Some(response(400, "Bad Request", "text/plain", format!("bad request: {e}\n").into_bytes(), false));
        }
        Ok(httparse::Status::Complete(_)) => (req.method.unwrap_or(""), req.path.unwrap_or("")),
    };
    let head = method == "HEAD";
    if method != "GET" && !head {
        let mut r = response(405, "Method Not Allowed", "text/plain", b"only GET and HEAD\n".to_vec(), false);
        // Allow: belongs to a 405; insert it before the blank line.
        let at = r.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
        r.splice(at..at, b"\r\nAllow: GET, HEAD".iter().copied());
        return Some(r);
    }
    let path = path.split('?').next().unwrap_or("");
    Some(match path {
        "/metrics" => {
            response(200, "OK", prometheus::CONTENT_TYPE, prometheus::render(&ctx.snapshot()).into_bytes(), head)
        }
        "/stats" => {
            let body = serde_json::to_vec_pretty(&ctx.snapshot()).unwrap_or_default();
            response(200, "OK", "application/json", body, head)
        }
        "/healthz" => response(200, "OK", "text/plain", b"ok\n".to_vec(), head),
        "/readyz" => {
            let sh = &ctx.shared;
            if sh.draining.load(Ordering::Relaxed) {
                response(503, "Service Unavailable", "text/plain", b"draining\n".to_vec(), head)
            } else if !sh.running.load(Ordering::Relaxed) {
                response(503, "Service Unavailable", "text/plain", b"starting\n".to_vec(), head)
            } else if sh.overload.is_shedding() {
                response(503, "Service Unavailable", "text/plain", b"overloaded\n".to_vec(), head)
            } else {
                response(200, "OK", "text/plain", b"ready\n".to_vec(), head)
            }
        }
        _ => response(
            404,
            "Not Found",
            "text/plain",
            b"not found: try /metrics, /stats, /healthz, /readyz\n".to_vec(),
            head,
        ),
    })
}

fn response(code: u16, reason: &str, content_type: &str, body: Vec<u8>, head_only: bool) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        r.extend_from_slice(&body);
    }
    r
}

/// A tiny HTTP/1.0 GET client for `sluice stats` and `sluice probe`: returns
/// (status, body). Bounded by `timeout` for connecting and for each read.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.take(64 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP response"))?;
    Ok((status, body.to_owned()))
}
