//! Active health checks, on their own thread with their own mio loop (a
//! check never runs on a worker). Each check is a non-blocking TCP connect
//! with the route's socket options and source address, optionally followed
//! by sending `send` and reading until the reply starts with `expect` (or
//! differs, or the timeout passes). `rise` good checks in a row bring a
//! down upstream back, `fall` failed ones take an up one out; each change
//! is logged at warn and counted, and the verdict is stored in the
//! upstream's shared `UpstreamHealth`, where workers read it. A check this
//! host cannot start (out of fds or ports: `local_error`) gives no verdict.
//!
//! Intervals are jittered by ±10% and the first check of each upstream
//! falls at a random point of its first interval, so many sluice instances
//! (or many routes) do not check in lockstep.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use super::health::UpstreamHealth;
use crate::config::HealthCheck;
use crate::local_error;
use crate::sys::sockets::{self, ConnectState};
use crate::sys::sockopt::Applied;

const WAKER: Token = Token(usize::MAX);

/// One upstream of one route to check.
#[derive(Clone, Debug)]
pub struct Target {
    /// The route, for logs.
    pub route: String,
    /// The upstream's address.
    pub addr: SocketAddr,
    /// How it is shown in logs (`10.0.0.1:80 (app:80)`).
    pub display: String,
    /// Where the verdict goes.
    pub health: Arc<UpstreamHealth>,
    /// What to check.
    pub check: HealthCheck,
    /// The route's socket options and `source:` (a check must leave from
    /// where sessions do: a `mark` routes it, the source is what the upstream sees).
    pub socket: Arc<Applied>,
}

/// The running checker: give it the full list of targets whenever it changes.
pub struct Checker {
    tx: Sender<Vec<Target>>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Checker {
    /// Starts the thread (idle until it has targets).
    pub fn start() -> io::Result<Checker> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new().name("sluice-check".to_owned()).spawn(move || run(poll, rx))?;
        Ok(Checker { tx, waker, thread: Some(thread) })
    }

    /// Checks exactly these from now on (state is kept for targets that stay).
    pub fn set_targets(&self, targets: Vec<Target>) {
        if self.tx.send(targets).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        // Closing the channel tells the thread to stop.
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A check in progress.
struct InFlight {
    stream: TcpStream,
    connected: bool,
    sent: usize,
    got: Vec<u8>,
    deadline: Instant,
}

/// One target's state in the checker.
struct Probe {
    target: Target,
    next: Instant,
    in_flight: Option<InFlight>,
    good: u32,
    bad: u32,
    /// The last check could not start for a reason of this host's (warned once per spell).
    local_trouble: bool,
}

type Key = (String, SocketAddr);

fn run(mut poll: Poll, rx: Receiver<Vec<Target>>) {
    let mut probes: Vec<Probe> = Vec::new();
    let mut events = Events::with_capacity(256);
    let mut rng = fastrand::Rng::new();
    loop {
        let now = Instant::now();
        let wake = probes.iter().map(|p| p.in_flight.as_ref().map_or(p.next, |f| f.deadline)).min();
        let timeout = wake.map(|w| w.saturating_duration_since(now));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("health checks stopped: {e}");
                return;
            }
        }
        let mut woken = false;
        for ev in events.iter() {
            match ev.token() {
                WAKER => woken = true,
                Token(i) => {
                    if let Some(p) = probes.get_mut(i) {
                        if let Some(outcome) = p.advance() {
                            p.finish(outcome, &mut rng);
                        }
                    }
                }
            }
        }
        if woken {
            loop {
                match rx.try_recv() {
                    Ok(targets) => probes = retarget(std::mem::take(&mut probes), targets, &mut rng),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
        }
        let now = Instant::now();
        for (i, p) in probes.iter_mut().enumerate() {
            match &p.in_flight {
                Some(f) if now >= f.deadline => {
                    let why = format!("no answer within {:?}", p.target.check.timeout);
                    p.finish(Err(why), &mut rng);
                }
                None if now >= p.next => p.start(poll.registry(), Token(i), now),
                _ => {}
            }
        }
    }
}

/// The new probe list: state carried over for targets that stay; targets
/// that are gone and were down are marked up again (nothing checks them now).
fn retarget(old: Vec<Probe>, targets: Vec<Target>, rng: &mut fastrand::Rng) -> Vec<Probe> {
    let mut old: HashMap<Key, Probe> = old.into_iter().map(|p| ((p.target.route.clone(), p.target.addr), p)).collect();
    let now = Instant::now();
    let probes: Vec<Probe> = targets
        .into_iter()
        .map(|t| match old.remove(&(t.route.clone(), t.addr)) {
            Some(mut p) if p.target.check == t.check => {
                p.target = t;
                // Slab positions (tokens) change with the list: restart a check in flight.
                p.in_flight = None;
                p
            }
            _ => {
                let first = t.check.interval.mul_f64(rng.f64());
                Probe { target: t, next: now + first, in_flight: None, good: 0, bad: 0, local_trouble: false }
            }
        })
        .collect();
    for (_, p) in old {
        if !probes.iter().any(|n| Arc::ptr_eq(&n.target.health, &p.target.health)) {
            p.target.health.set_up(true);
        }
    }
    probes
}

impl Probe {
    fn start(&mut self, registry: &mio::Registry, token: Token, now: Instant) {
        let deadline = now + self.target.check.timeout;
        match sockets::start_connect(self.target.addr, &self.target.socket, None) {
            Ok(mut stream) => {
                if let Err(e) = registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE) {
                    log::debug!("health check of {}: cannot register: {e}", self.target.display);
                    self.next = now + self.target.check.interval;
                    return;
                }
                self.in_flight = Some(InFlight { stream, connected: false, sent: 0, got: Vec::new(), deadline });
                self.local_trouble = false;
            }
            Err(e) => {
                self.in_flight = None;
                self.next = now + self.target.check.interval;
                if let Some(cause) = local_error::classify(&e) {
                    // Out of fds or ports here says nothing about the upstream: no verdict.
                    let t = &self.target;
                    let advice = local_error::advice(&e, cause, t.addr, t.socket.source());
                    if !std::mem::replace(&mut self.local_trouble, true) {
                        log::warn!(
                            "route {}: cannot health-check {}: {e}: {advice}; its state stays",
                            t.route,
                            t.display
                        );
                    }
                    return;
                }
                // No route to it: a failed check like any other.
                self.record(Err(format!("connect failed: {e}")));
            }
        }
    }

    /// Moves the check on after an event: `Some` once it has a verdict.
    fn advance(&mut self) -> Option<Result<(), String>> {
        let check = &self.target.check;
        let f = self.in_flight.as_mut()?;
        if !f.connected {
            match sockets::connect_result(&f.stream, false) {
                ConnectState::Pending => return None,
                ConnectState::Failed(e) => return Some(Err(format!("connect failed: {e}"))),
                ConnectState::ConnectedThenReset => return Some(Err("reset right after connecting".to_owned())),
                ConnectState::Connected => f.connected = true,
            }
        }
        while f.sent < check.send.len() {
            match (&f.stream).write(&check.send[f.sent..]) {
                Ok(n) => f.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(format!("sending the check failed: {e}"))),
            }
        }
        if check.expect.is_empty() {
            return Some(Ok(()));
        }
        let mut buf = [0u8; 512];
        loop {
            let want = check.expect.len() - f.got.len();
            match (&f.stream).read(&mut buf[..want.min(512)]) {
                Ok(0) => {
                    return Some(Err(format!(
                        "closed after {} of the {} expected bytes",
                        f.got.len(),
                        check.expect.len()
                    )));
                }
                Ok(n) => {
                    f.got.extend_from_slice(&buf[..n]);
                    if !check.expect.starts_with(&f.got) {
                        return Some(Err(format!("unexpected reply {:?}", String::from_utf8_lossy(&f.got))));
                    }
                    if f.got.len() == check.expect.len() {
                        return Some(Ok(()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(format!("reading the reply failed: {e}"))),
            }
        }
    }

    /// Ends the check in flight (dropping its socket) and schedules the next.
    fn finish(&mut self, outcome: Result<(), String>, rng: &mut fastrand::Rng) {
        self.in_flight = None;
        self.record(outcome);
        let jitter = 0.9 + 0.2 * rng.f64();
        self.next = Instant::now() + self.target.check.interval.mul_f64(jitter);
    }

    fn record(&mut self, outcome: Result<(), String>) {
        let (t, c) = (&self.target, &self.target.check);
        let counters = &t.health.counters;
        match outcome {
            Ok(()) => {
                counters.checks_ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.good = self.good.saturating_add(1);
                self.bad = 0;
                if self.good >= c.rise && !t.health.is_up() && t.health.set_up(true) {
                    log::warn!("route {}: upstream {} is UP after {} good checks", t.route, t.display, self.good);
                }
                // As Envoy does: a good active check overrides a passive ejection.
                if t.health.is_up() && t.health.is_ejected() && t.health.succeeded(super::health::now_ms()) {
                    log::warn!(
                        "route {}: upstream {} is back: a health check passed, ending its ejection",
                        t.route,
                        t.display
                    );
                }
            }
            Err(why) => {
                counters.checks_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.bad = self.bad.saturating_add(1);
                self.good = 0;
                log::debug!("route {}: health check of {} failed: {why}", t.route, t.display);
                if self.bad >= c.fall && t.health.is_up() && t.health.set_up(false) {
                    log::warn!(
                        "route {}: upstream {} is DOWN after {} failed checks (last: {why})",
                        t.route,
                        t.display,
                        self.bad
                    );
                }
            }
        }
    }
}
