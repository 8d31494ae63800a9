//! One worker: a thread with its own mio `Poll`, its own `SO_REUSEPORT`
//! listener per route, its sessions, timers, pipes and counters.
//!
//! Shared-nothing: no lock is taken per event. The control thread talks to
//! a worker only through its channel and `Waker` (route updates, drain,
//! stop). Tokens: 0 is the waker, `1 + key` is listener `key`, sessions use
//! `SESSION_BASE + 2 * key + side`. Sessions that close during an event
//! batch are freed at the end of that batch, so a queued event never
//! reaches a new occupant of the same slot.
//!
//! `listeners.rs` accepts (limits, fd exhaustion, reloads of routes),
//! `connect.rs` opens upstream connections; this file runs the loop and the
//! sessions.

mod connect;
mod listeners;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use slab::Slab;

use crate::limits::FdReserve;
use crate::metrics::{CloseReason, SessionRecord, WorkerCounters, WorkerMetrics};
use crate::pipe::PipeBudget;
use crate::relay::Resources;
use crate::reload::RouteUpdate;
use crate::session::{Readiness, Session, Side, Stage, Verdict};
use crate::sockets;
use crate::timer::Timers;
use crate::upstream;
use listeners::Listener;

/// Token of the control channel's waker.
pub const WAKER: Token = Token(0);
const SESSION_BASE: usize = 1 << 16;
/// At most one "out of fds"/"no upstream" warning per this interval per worker.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// A message from the control thread.
#[derive(Debug)]
pub enum Control {
    /// The routes to serve from now on (start and reload); listeners not
    /// named are closed, their sessions run to completion.
    Routes {
        /// Every route, with a socket for the new ones.
        routes: Vec<RouteUpdate>,
        /// Global settings, possibly changed.
        settings: WorkerSettings,
    },
    /// Stop accepting, let sessions finish until the deadline, then exit.
    Drain {
        /// When to cut whatever is still running.
        deadline: Instant,
    },
    /// Close everything now and exit.
    Stop,
}

/// The global settings a worker applies to new sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Splice, copy, or auto (copy until a direction is bulk).
    pub relay: crate::config::RelayMode,
    /// Bytes per pipe and per copy buffer.
    pub pipe_size: usize,
    /// Spare pipes (and buffers) the worker keeps.
    pub max_pooled_pipes: usize,
    /// Write an access line per finished session, in this format.
    pub access_log: Option<crate::config::LogFormat>,
}

/// Reloads by outcome.
#[derive(Debug, Default)]
pub struct Reloads {
    /// Applied.
    pub ok: AtomicU64,
    /// Refused (bad file, bind failure); the old config kept serving.
    pub failed: AtomicU64,
}

/// State shared by all workers and the control thread.
#[derive(Debug)]
pub struct Shared {
    /// Sessions open right now, all workers.
    pub active: AtomicUsize,
    /// `max_connections` (a reload may change it).
    pub max_connections: AtomicUsize,
    /// How many splice pipes the process may hold.
    pub pipes: Arc<PipeBudget>,
    /// Reloads by outcome.
    pub reloads: Reloads,
    /// The workers run (`/readyz`).
    pub ready: AtomicBool,
    /// A drain has started (`/readyz` says 503 from then on).
    pub draining: AtomicBool,
    /// When the process started.
    pub started: Instant,
}

impl Shared {
    /// Fresh shared state.
    pub fn new(max_connections: usize, pipes: PipeBudget) -> Shared {
        Shared {
            active: AtomicUsize::new(0),
            max_connections: AtomicUsize::new(max_connections),
            pipes: Arc::new(pipes),
            reloads: Reloads::default(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            started: Instant::now(),
        }
    }
}

/// What a worker is started with.
pub struct WorkerSetup {
    /// 0-based index, for logs.
    pub id: usize,
    /// How many workers there are.
    pub workers: usize,
    /// Its poll, created on the control thread so the waker exists first.
    pub poll: Poll,
    /// The routes to serve, each with this worker's listening socket.
    pub routes: Vec<RouteUpdate>,
    /// Messages from the control thread.
    pub control: Receiver<Control>,
    /// Cross-worker state.
    pub shared: Arc<Shared>,
    /// This worker's metrics (the control thread and the admin port hold clones).
    pub metrics: Arc<WorkerMetrics>,
    /// Global settings.
    pub settings: WorkerSettings,
    /// Pin the thread to the n-th allowed CPU.
    pub cpu: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Session(usize),
    Accept(usize),
    Drain,
}

/// A running worker's state.
pub struct Worker {
    id: usize,
    poll: Poll,
    listeners: Slab<Listener>,
    sessions: Slab<Session>,
    /// Closed during this batch; freed at its end.
    closed: Vec<usize>,
    /// Sessions with work left after hitting a pump's round cap: `(key, id)`.
    ready: Vec<(usize, u64)>,
    timers: Timers<TimerKey>,
    res: Resources,
    control: Receiver<Control>,
    shared: Arc<Shared>,
    metrics: Arc<WorkerMetrics>,
    reserve: FdReserve,
    settings: WorkerSettings,
    /// Session ids: worker i of n hands out i+1, i+1+n, i+1+2n… (unique, and small in logs).
    next_id: u64,
    id_stride: u64,
    draining: bool,
    stop: bool,
    last_warn: Option<Instant>,
    fired: Vec<TimerKey>,
}

fn session_token(key: usize, side: Side) -> Token {
    Token(SESSION_BASE + 2 * key + usize::from(side == Side::Upstream))
}

impl Worker {
    /// Pins the thread if asked, registers the listeners, gets ready to run.
    pub fn new(setup: WorkerSetup) -> io::Result<Worker> {
        let WorkerSetup { id, workers, poll, routes, control, shared, metrics, settings, cpu } = setup;
        if let Some(i) = cpu {
            match crate::affinity::pin_worker(i) {
                Ok(c) => log::info!("worker {id} pinned to CPU {c}"),
                Err(e) => {
                    log::warn!("worker {id}: cannot pin to a CPU ({e}); cpu_affinity has no effect")
                }
            }
        }
        let mut w = Worker {
            id,
            poll,
            listeners: Slab::new(),
            sessions: Slab::with_capacity(1024),
            closed: Vec::new(),
            ready: Vec::new(),
            timers: Timers::new(Instant::now()),
            res: Resources::new(settings.pipe_size, settings.max_pooled_pipes, Arc::clone(&shared.pipes)),
            control,
            shared,
            metrics,
            reserve: FdReserve::new(),
            settings,
            next_id: id as u64 + 1,
            id_stride: workers.max(1) as u64,
            draining: false,
            stop: false,
            last_warn: None,
            fired: Vec::new(),
        };
        w.set_routes(routes, settings, Instant::now());
        Ok(w)
    }

    /// Runs the event loop until drained or stopped.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let timeout = if self.ready.is_empty() && !self.listeners.iter().any(|(_, l)| l.backlog) {
                self.timers.next_timeout(now)
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    WAKER => self.on_control(now),
                    Token(t) if t < SESSION_BASE => self.accept(t - 1, now),
                    Token(t) => {
                        let key = (t - SESSION_BASE) / 2;
                        let side = if (t - SESSION_BASE) % 2 == 0 { Side::Client } else { Side::Upstream };
                        let ready = Readiness {
                            readable: ev.is_readable(),
                            writable: ev.is_writable() || ev.is_write_closed() || ev.is_error(),
                            hup: ev.is_read_closed() || ev.is_error(),
                        };
                        self.on_session_event(key, side, ready, now);
                    }
                }
            }
            self.run_ready(now);
            self.fire_timers(now);
            self.free_closed();
            self.publish_pool_counts();
            if self.stop || (self.draining && self.sessions.is_empty()) {
                break;
            }
        }
        let cut: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in cut {
            self.close(key, CloseReason::Drained, None, Instant::now());
        }
        self.free_closed();
        self.publish_pool_counts();
        log::debug!("worker {} stopped", self.id);
        Ok(())
    }

    fn on_control(&mut self, now: Instant) {
        loop {
            match self.control.try_recv() {
                Ok(Control::Routes { routes, settings }) => self.set_routes(routes, settings, now),
                Ok(Control::Drain { deadline }) => self.drain(deadline),
                Ok(Control::Stop) | Err(TryRecvError::Disconnected) => {
                    self.stop = true;
                    return;
                }
                Err(TryRecvError::Empty) => return,
            }
        }
    }

    /// Closes the listeners (new clients are refused at once), closes sessions
    /// that are idle, and gives the rest until `deadline`.
    fn drain(&mut self, deadline: Instant) {
        if self.draining {
            return;
        }
        self.draining = true;
        self.close_listeners();
        self.timers.schedule(deadline, TimerKey::Drain);
        log::debug!("worker {} draining {} sessions", self.id, self.sessions.len());
        // Idle sessions get a short deadline now (see `Session::deadline`).
        let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.rearm_if_sooner(key);
        }
    }

    // --------------------------------------------------------------- sessions

    fn on_session_event(&mut self, key: usize, side: Side, ready: Readiness, now: Instant) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        s.on_event(side, ready);
        match s.stage {
            Stage::Closed => {}
            Stage::Header { .. } if side == Side::Client && (ready.readable || ready.hup) => self.on_header(key, now),
            Stage::Header { .. } => {}
            Stage::Connecting { .. } if side == Side::Upstream => {
                let verdict = s.check_connect(ready);
                self.apply(key, verdict, now);
            }
            Stage::Connecting { .. } => {}
            Stage::Relaying => self.relay(key, now),
        }
    }

    fn relay(&mut self, key: usize, now: Instant) {
        let s = &mut self.sessions[key];
        let verdict = s.relay(&mut self.res, now);
        self.apply(key, verdict, now);
    }

    fn apply(&mut self, key: usize, verdict: Verdict, now: Instant) {
        match verdict {
            Verdict::Continue { more } => {
                let s = &mut self.sessions[key];
                if more && !s.ready {
                    s.ready = true;
                    self.ready.push((key, s.id));
                }
                // A side just finished: the half-close timeout may be sooner.
                self.rearm_if_sooner(key);
            }
            Verdict::Connected => {
                let s = &mut self.sessions[key];
                s.connected(now);
                log::trace!("session {}: connected to {}", s.id, s.upstream_addr());
                if let Some(v) = s.route.pool().proxy_protocol {
                    s.queue_proxy_header(v);
                }
                if std::mem::take(&mut s.probing) && s.upstream().health.succeeded(upstream::health::now_ms()) {
                    log::warn!(
                        "route {}: upstream {} is back: its half-open try connected",
                        s.route.name,
                        s.upstream()
                    );
                }
                let deadline = s.deadline(self.draining);
                self.arm(key, deadline);
                // The client may have sent bytes while we were connecting.
                self.relay(key, now);
            }
            Verdict::ConnectFailed(e) => {
                let s = &mut self.sessions[key];
                if s.stage == Stage::Relaying {
                    s.unconnect(&mut self.res, now);
                }
                self.connect_failed(key, &e, now);
            }
            Verdict::Close { reason, reset } => self.close(key, reason, reset, now),
        }
    }

    fn run_ready(&mut self, now: Instant) {
        self.accept_backlogs(now);
        if self.ready.is_empty() {
            return;
        }
        let ready = std::mem::take(&mut self.ready);
        for &(key, id) in &ready {
            let Some(s) = self.sessions.get_mut(key) else {
                continue;
            };
            if s.id != id {
                continue;
            }
            // Cleared whatever the stage: a session back to connecting must be queued again later.
            s.ready = false;
            if s.stage != Stage::Relaying {
                continue;
            }
            self.relay(key, now);
        }
    }

    fn arm(&mut self, key: usize, at: Instant) {
        let s = &mut self.sessions[key];
        if let Some((old, _)) = s.timer.take() {
            self.timers.cancel(old, TimerKey::Session(key));
        }
        s.timer = Some((self.timers.schedule(at, TimerKey::Session(key)), at));
    }

    /// Re-arms a session's timer if its deadline moved earlier (half-close,
    /// drain); later deadlines are picked up lazily when the timer fires.
    fn rearm_if_sooner(&mut self, key: usize) {
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        if s.stage == Stage::Closed {
            return;
        }
        let due = s.deadline(self.draining);
        if s.timer.is_none_or(|(_, at)| due < at) {
            self.arm(key, due);
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        let mut fired = std::mem::take(&mut self.fired);
        self.timers.expired(now, &mut fired);
        for key in fired.drain(..) {
            match key {
                TimerKey::Session(k) => self.on_session_timer(k, now),
                TimerKey::Accept(li) => self.resume(li, now),
                TimerKey::Drain => {
                    if !self.sessions.is_empty() {
                        log::info!("worker {}: drain timeout: cutting {} sessions", self.id, self.sessions.len());
                    }
                    self.stop = true;
                }
            }
        }
        self.fired = fired;
    }

    fn on_session_timer(&mut self, key: usize, now: Instant) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        s.timer = None;
        let deadline = s.deadline(self.draining);
        if now < deadline {
            // Bytes moved since the timer was armed: sleep until the new deadline.
            self.arm(key, deadline);
            return;
        }
        match s.stage {
            Stage::Header { .. } => {
                WorkerCounters::inc(&self.metrics.counters.bad_proxy_header);
                log::debug!(
                    "route {}: client {}: no complete PROXY header within {:?}",
                    s.route.name,
                    s.peer_addr,
                    s.route.pool().proxy_protocol_timeout
                );
                self.close(key, CloseReason::BadProxyHeader, Some(Side::Client), now);
            }
            Stage::Connecting { .. } => {
                let e =
                    io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {:?}", s.route.connect_timeout));
                self.connect_failed(key, &e, now);
            }
            Stage::Relaying => {
                let why = if self.draining { "idle while draining" } else { "idle" };
                log::debug!("session {}: {why} since {:?}", s.id, now.saturating_duration_since(s.last_active()));
                self.close(key, CloseReason::IdleTimeout, None, now);
            }
            Stage::Closed => {}
        }
    }

    /// Ends a session: counts it, resets `reset` if asked, returns its pipes.
    /// The slot is freed at the end of the batch.
    fn close(&mut self, key: usize, reason: CloseReason, reset: Option<Side>, now: Instant) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.stage == Stage::Closed {
            return;
        }
        s.stage = Stage::Closed;
        if let Some((t, _)) = s.timer.take() {
            self.timers.cancel(t, TimerKey::Session(key));
        }
        // Cut mid-stream by the drain: neither side may mistake it for a complete transfer.
        let reset_client = reset == Some(Side::Client) || reason == CloseReason::Drained;
        let reset_upstream = reset == Some(Side::Upstream) || reason == CloseReason::Drained;
        if reset_client {
            sockets::reset_on_close(&s.client);
        }
        if let Some(u) = s.upstream.as_ref().filter(|_| reset_upstream) {
            sockets::reset_on_close(u);
        }
        s.release(&mut self.res);
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
        s.route.state.active.fetch_sub(1, Ordering::Relaxed);
        if s.client_admitted {
            s.route.state.release_client(s.client_addr.ip());
        }
        self.upstream_verdict(key, reason);
        let s = &self.sessions[key];
        let upstream = s.upstream.as_ref().filter(|_| s.connect_time.is_some());
        let record = SessionRecord {
            route: s.route.metric_id,
            upstream: upstream.map(|_| s.upstream().metric_id),
            reason,
            client_to_upstream: (s.c2u.spliced, s.c2u.copied),
            upstream_to_client: (s.u2c.spliced, s.u2c.copied),
            connect_time: s.connect_time,
            first_byte_time: s.first_byte_time,
            duration: s.age(now),
            tcp_info: upstream.and_then(|u| crate::sockopt::tcp_info(u).ok()),
        };
        self.metrics.stats().session_closed(&record);
        if let Some(format) = self.settings.access_log {
            crate::access::log(format, s, &record);
        }
        self.closed.push(key);
    }

    /// What a closing session tells its upstream's health: its load drops;
    /// a reset before the upstream's first byte counts as a connect failure
    /// (outlier detection), anything else that got connected as a success.
    fn upstream_verdict(&mut self, key: usize, reason: CloseReason) {
        let s = &mut self.sessions[key];
        if !std::mem::take(&mut s.counted) {
            return; // no attempt in flight (never connected, or its failure was booked)
        }
        let route = Arc::clone(&s.route);
        let index = s.upstream_index;
        let health = &route.upstreams.upstreams[index].health;
        health.session_ended();
        let probing = std::mem::take(&mut s.probing);
        if s.connect_time.is_none() {
            if probing {
                health.probe_abandoned(); // the client left before the try had a verdict
            }
            return;
        }
        if reason == CloseReason::UpstreamReset && s.u2c.delivered() == 0 {
            self.outlier_failure(&route, index, probing);
        } else if health.succeeded(upstream::health::now_ms()) {
            log::warn!("route {}: upstream {} is back", route.name, route.upstreams.upstreams[index]);
        }
    }

    fn free_closed(&mut self) {
        if self.closed.is_empty() {
            return;
        }
        for key in self.closed.drain(..) {
            // Dropping the session closes both sockets (which leaves the poll).
            self.sessions.try_remove(key);
        }
        // Slots (and fds) came free: paused listeners may take clients again.
        self.resume_all(Instant::now());
    }

    fn publish_pool_counts(&self) {
        let c = self.res.pipes.counts();
        WorkerCounters::set(&self.metrics.counters.pipes_created, c.created);
        WorkerCounters::set(&self.metrics.counters.pipes_lent, c.lent);
        WorkerCounters::set(&self.metrics.counters.pipes_refused, c.refused);
        WorkerCounters::set(&self.metrics.counters.pipes_in_use, c.in_use);
        WorkerCounters::set(&self.metrics.counters.pipes_pooled, c.pooled);
        WorkerCounters::set(&self.metrics.counters.copy_fallbacks, self.res.copy_fallbacks);
    }

    /// A warning at most once per `WARN_EVERY`, so a storm can't flood the log.
    fn warn(&mut self, msg: String) {
        let now = Instant::now();
        if self.last_warn.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
            self.last_warn = Some(now);
            log::warn!("worker {}: {msg}", self.id);
        } else {
            log::debug!("worker {}: {msg}", self.id);
        }
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == nix::libc::EMFILE || code == nix::libc::ENFILE)
}
