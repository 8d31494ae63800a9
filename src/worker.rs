//! One worker: a thread with its own mio `Poll`, its own `SO_REUSEPORT`
//! listener per route, its sessions, timers, pipes and counters.
//!
//! Shared-nothing: no lock is taken per event. The control thread talks to
//! a worker only through its channel and `Waker`. Tokens: 0 is the waker,
//! `1 + i` is listener `i`, sessions use `SESSION_BASE + 2 * key + side`.
//! Sessions that close during an event batch are freed at the end of that
//! batch, so a queued event never reaches a new occupant of the same slot.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::limits::FdReserve;
use crate::metrics::{CloseReason, Direction, WorkerCounters};
use crate::relay::Resources;
use crate::route::Route;
use crate::session::{Readiness, Session, Side, Stage, Verdict};
use crate::sockopt;
use crate::timer::Timers;
use crate::upstream::SmoothRoundRobin;

/// Token of the control channel's waker.
pub const WAKER: Token = Token(0);
const SESSION_BASE: usize = 1 << 16;
/// Accepts per listener per loop turn. Accepting a whole queue at once (thousands
/// after a burst) would hold up every established session's events for tens of
/// milliseconds; HAProxy's `tune.maxaccept` is 64 for the same reason.
const ACCEPT_BATCH: usize = 64;
/// How long a listener rests after accept hit the fd limit.
const FD_RETRY: Duration = Duration::from_millis(100);
/// How long a listener rests at `max_connections` before it looks again
/// (it also looks whenever one of this worker's sessions closes).
const LIMIT_RETRY: Duration = Duration::from_millis(20);
/// At most one "out of fds"/"no upstream" warning per this interval per worker.
const WARN_EVERY: Duration = Duration::from_secs(5);
/// Spare pipes and buffers a worker keeps.
const MAX_POOLED: usize = 128;

/// A message from the control thread.
#[derive(Debug)]
pub enum Control {
    /// Stop accepting, let sessions finish until the deadline, then exit.
    Drain {
        /// When to cut whatever is still running.
        deadline: Instant,
    },
    /// Close everything now and exit.
    Stop,
}

/// State shared by all workers and the control thread.
#[derive(Debug)]
pub struct Shared {
    /// Sessions open right now, all workers.
    pub active: AtomicUsize,
    /// `max_connections`.
    pub max_connections: usize,
}

/// What a worker is started with.
pub struct WorkerSetup {
    /// 0-based index, for logs.
    pub id: usize,
    /// Its poll, created on the control thread so the waker exists first.
    pub poll: Poll,
    /// One listener per route, in route order.
    pub listeners: Vec<(TcpListener, Arc<Route>)>,
    /// Messages from the control thread.
    pub control: Receiver<Control>,
    /// Cross-worker state.
    pub shared: Arc<Shared>,
    /// This worker's counters (the control thread holds a clone).
    pub counters: Arc<WorkerCounters>,
    /// Splice (true) or copy.
    pub splice: bool,
    /// Bytes per pipe and per copy buffer.
    pub pipe_size: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Session(usize),
    Accept(usize),
    Drain,
}

struct Listener {
    socket: Option<TcpListener>,
    route: Arc<Route>,
    balancer: SmoothRoundRobin,
    /// Not accepting until a retry timer or a closing session wakes it.
    paused: bool,
    /// The last accept round stopped at `ACCEPT_BATCH` with clients maybe still queued.
    backlog: bool,
}

/// A running worker's state.
pub struct Worker {
    id: usize,
    poll: Poll,
    listeners: Vec<Listener>,
    sessions: Slab<Session>,
    /// Closed during this batch; freed at its end.
    closed: Vec<usize>,
    /// Sessions with work left after hitting a pump's round cap: `(key, id)`.
    ready: Vec<(usize, u64)>,
    timers: Timers<TimerKey>,
    res: Resources,
    control: Receiver<Control>,
    shared: Arc<Shared>,
    counters: Arc<WorkerCounters>,
    reserve: FdReserve,
    splice: bool,
    next_id: u64,
    draining: bool,
    stop: bool,
    last_warn: Option<Instant>,
    fired: Vec<TimerKey>,
}

fn session_token(key: usize, side: Side) -> Token {
    Token(SESSION_BASE + 2 * key + usize::from(side == Side::Upstream))
}

impl Worker {
    /// Registers the listeners and gets ready to run.
    pub fn new(setup: WorkerSetup) -> io::Result<Worker> {
        let WorkerSetup {
            id,
            poll,
            listeners,
            control,
            shared,
            counters,
            splice,
            pipe_size,
        } = setup;
        let mut ls = Vec::with_capacity(listeners.len());
        for (i, (mut socket, route)) in listeners.into_iter().enumerate() {
            poll.registry()
                .register(&mut socket, Token(1 + i), Interest::READABLE)?;
            let balancer =
                SmoothRoundRobin::new(route.upstreams.upstreams.iter().map(|u| u.weight));
            ls.push(Listener {
                socket: Some(socket),
                route,
                balancer,
                paused: false,
                backlog: false,
            });
        }
        Ok(Worker {
            id,
            poll,
            listeners: ls,
            sessions: Slab::with_capacity(1024),
            closed: Vec::new(),
            ready: Vec::new(),
            timers: Timers::new(Instant::now()),
            res: Resources::new(pipe_size, MAX_POOLED, MAX_POOLED),
            control,
            shared,
            counters,
            reserve: FdReserve::new(),
            splice,
            // Session ids are unique per process: the worker index in the top bits.
            next_id: (id as u64) << 48,
            draining: false,
            stop: false,
            last_warn: None,
            fired: Vec::new(),
        })
    }

    /// Runs the event loop until drained or stopped.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        // Listeners may already hold connections that arrived before registration.
        for i in 0..self.listeners.len() {
            self.accept(i, Instant::now());
        }
        loop {
            let now = Instant::now();
            let timeout = if self.ready.is_empty() && !self.listeners.iter().any(|l| l.backlog) {
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
                    WAKER => self.on_control(),
                    Token(t) if t < SESSION_BASE => self.accept(t - 1, now),
                    Token(t) => {
                        let key = (t - SESSION_BASE) / 2;
                        let side = if (t - SESSION_BASE) % 2 == 0 {
                            Side::Client
                        } else {
                            Side::Upstream
                        };
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

    fn on_control(&mut self) {
        loop {
            match self.control.try_recv() {
                Ok(Control::Drain { deadline }) => {
                    if !self.draining {
                        self.draining = true;
                        // Closing the listeners refuses new clients at once.
                        for l in &mut self.listeners {
                            l.socket = None;
                        }
                        self.timers.schedule(deadline, TimerKey::Drain);
                        log::debug!(
                            "worker {} draining {} sessions",
                            self.id,
                            self.sessions.len()
                        );
                    }
                }
                Ok(Control::Stop) | Err(TryRecvError::Disconnected) => {
                    self.stop = true;
                    return;
                }
                Err(TryRecvError::Empty) => return,
            }
        }
    }

    // ----------------------------------------------------------------- accept

    fn accept(&mut self, li: usize, now: Instant) {
        let Some(l) = self.listeners.get_mut(li) else {
            return;
        };
        if l.paused {
            return;
        }
        l.backlog = false;
        for _ in 0..ACCEPT_BATCH {
            if self.shared.active.load(Ordering::Relaxed) >= self.shared.max_connections {
                // At the limit we stop accepting: clients wait in the kernel's
                // queue instead of being accepted and dropped.
                WorkerCounters::inc(&self.counters.accept_limit_paused);
                self.pause(li, LIMIT_RETRY, now);
                return;
            }
            let Some(socket) = &self.listeners[li].socket else {
                return;
            };
            match socket.accept() {
                Ok((stream, addr)) => self.start_session(li, stream, addr, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) if is_fd_exhaustion(&e) => {
                    self.out_of_fds(li, &e, now);
                    return;
                }
                Err(e) => {
                    let listen = self.listeners[li].route.listen;
                    self.warn(format!("accept on {listen} failed: {e}; retrying shortly"));
                    self.pause(li, FD_RETRY, now);
                    return;
                }
            }
        }
        // More may be queued and no new edge will say so: come back after
        // the sessions that already have events have had their turn.
        self.listeners[li].backlog = true;
    }

    /// accept hit the fd limit. The connection stays queued and an
    /// edge-triggered loop would never hear of it again, so: spend the
    /// reserve fd to take one connection off the queue and close it (the
    /// client learns at once), and look again after a pause.
    fn out_of_fds(&mut self, li: usize, e: &io::Error, now: Instant) {
        WorkerCounters::inc(&self.counters.accept_fd_exhausted);
        if let Some(socket) = &self.listeners[li].socket {
            self.reserve.spend(|| drop(socket.accept()));
        }
        self.warn(format!(
            "out of file descriptors ({e}) with {} sessions: shedding one connection and pausing accept for {FD_RETRY:?}",
            self.sessions.len(),
        ));
        self.pause(li, FD_RETRY, now);
    }

    fn pause(&mut self, li: usize, retry: Duration, now: Instant) {
        let l = &mut self.listeners[li];
        if !l.paused {
            l.paused = true;
            self.timers.schedule(now + retry, TimerKey::Accept(li));
        }
    }

    fn resume_paused(&mut self, now: Instant) {
        for li in 0..self.listeners.len() {
            if self.listeners[li].paused {
                self.listeners[li].paused = false;
                self.accept(li, now);
            }
        }
    }

    fn start_session(
        &mut self,
        li: usize,
        client: TcpStream,
        client_addr: SocketAddr,
        now: Instant,
    ) {
        WorkerCounters::inc(&self.counters.accepted);
        self.counters.active.fetch_add(1, Ordering::Relaxed);
        self.shared.active.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = sockopt::set_nodelay(&client) {
            log::debug!("TCP_NODELAY on client {client_addr}: {e}");
        }
        let l = &mut self.listeners[li];
        let first = l.balancer.pick().unwrap_or(0);
        let route = Arc::clone(&l.route);
        self.next_id += 1;
        let session = Session::new(
            self.next_id,
            route,
            client,
            client_addr,
            first,
            self.splice,
            now,
        );
        let entry = self.sessions.vacant_entry();
        let key = entry.key();
        let s = entry.insert(session);
        if let Err(e) = self.poll.registry().register(
            &mut s.client,
            session_token(key, Side::Client),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("cannot register client {client_addr}: {e}");
            self.close(key, CloseReason::ConnectFailed, None, now);
            return;
        }
        log::trace!(
            "session {}: client {client_addr} on route {}",
            self.sessions[key].id,
            self.listeners[li].route.name
        );
        self.connect(key, 0, String::new(), now);
    }

    // ---------------------------------------------------------------- connect

    /// Starts connect attempt `attempt` (rotating through the route's
    /// upstreams from the first pick), skipping upstreams that fail at once.
    /// `last` says why the previous attempt failed, for the warning if none is left.
    fn connect(&mut self, key: usize, mut attempt: u32, mut last: String, now: Instant) {
        let (route, first, id) = {
            let s = &self.sessions[key];
            (Arc::clone(&s.route), s.first_upstream, s.id)
        };
        let n = route.upstreams.len();
        while (attempt as usize) < n {
            let index = (first + attempt as usize) % n;
            let addr = route.upstreams.upstreams[index].addr;
            WorkerCounters::inc(&self.counters.connect_attempts);
            let started = sockopt::start_connect(addr).and_then(|mut stream| {
                let interest = Interest::READABLE | Interest::WRITABLE;
                self.poll.registry().register(
                    &mut stream,
                    session_token(key, Side::Upstream),
                    interest,
                )?;
                Ok(stream)
            });
            match started {
                Ok(stream) => {
                    let s = &mut self.sessions[key];
                    s.attempt(attempt, index, stream, now);
                    let deadline = s.deadline();
                    self.arm(key, deadline);
                    return;
                }
                Err(e) => {
                    WorkerCounters::inc(&self.counters.connect_failures);
                    log::debug!("session {id}: connect to {addr} failed at once: {e}");
                    last = format!("{addr}: {e}");
                    attempt += 1;
                    if is_fd_exhaustion(&e) {
                        // No fd for an upstream socket: other upstreams won't do better.
                        break;
                    }
                    continue;
                }
            }
        }
        let client = self.sessions[key].client_addr;
        self.warn(format!(
            "route {}: no upstream reachable for client {client} after {attempt} attempt(s), last {last}; \
             closing it",
            route.name
        ));
        self.close(key, CloseReason::ConnectFailed, None, now);
    }

    fn connect_failed(&mut self, key: usize, e: &io::Error, now: Instant) {
        WorkerCounters::inc(&self.counters.connect_failures);
        let s = &mut self.sessions[key];
        let Stage::Connecting { attempt, .. } = s.stage else {
            return;
        };
        let upstream = &s.route.upstreams.upstreams[s.upstream_index];
        log::debug!("session {}: upstream {upstream} failed: {e}", s.id);
        let last = format!("{upstream}: {e}");
        // Dropping the socket also removes it from the poll.
        s.upstream = None;
        self.connect(key, attempt + 1, last, now);
    }

    // --------------------------------------------------------------- sessions

    fn on_session_event(&mut self, key: usize, side: Side, ready: Readiness, now: Instant) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        s.on_event(side, ready);
        match s.stage {
            Stage::Closed => {}
            Stage::Connecting { .. } if side == Side::Upstream => {
                let verdict = s.check_connect();
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
            }
            Verdict::Connected => {
                let s = &mut self.sessions[key];
                s.connected(now);
                log::trace!("session {}: connected to {}", s.id, s.upstream_addr());
                let deadline = s.deadline();
                self.arm(key, deadline);
                // The client may have sent bytes while we were connecting.
                self.relay(key, now);
            }
            Verdict::ConnectFailed(e) => self.connect_failed(key, &e, now),
            Verdict::Close { reason, reset } => self.close(key, reason, reset, now),
        }
    }

    fn run_ready(&mut self, now: Instant) {
        for li in 0..self.listeners.len() {
            if self.listeners[li].backlog {
                self.accept(li, now);
            }
        }
        if self.ready.is_empty() {
            return;
        }
        let ready = std::mem::take(&mut self.ready);
        for &(key, id) in &ready {
            let Some(s) = self.sessions.get_mut(key) else {
                continue;
            };
            if s.id != id || s.stage != Stage::Relaying {
                continue;
            }
            s.ready = false;
            self.relay(key, now);
        }
    }

    fn arm(&mut self, key: usize, at: Instant) {
        let s = &mut self.sessions[key];
        if let Some(old) = s.timer.take() {
            self.timers.cancel(old, TimerKey::Session(key));
        }
        s.timer = Some(self.timers.schedule(at, TimerKey::Session(key)));
    }

    fn fire_timers(&mut self, now: Instant) {
        let mut fired = std::mem::take(&mut self.fired);
        self.timers.expired(now, &mut fired);
        for key in fired.drain(..) {
            match key {
                TimerKey::Session(k) => self.on_session_timer(k, now),
                TimerKey::Accept(li) => {
                    if let Some(l) = self.listeners.get_mut(li) {
                        l.paused = false;
                    }
                    self.accept(li, now);
                }
                TimerKey::Drain => {
                    if !self.sessions.is_empty() {
                        log::info!(
                            "worker {}: drain timeout: cutting {} sessions",
                            self.id,
                            self.sessions.len()
                        );
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
        let deadline = s.deadline();
        if now < deadline {
            // Bytes moved since the timer was armed: sleep until the new deadline.
            self.arm(key, deadline);
            return;
        }
        match s.stage {
            Stage::Connecting { .. } => {
                let e = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", s.route.connect_timeout),
                );
                self.connect_failed(key, &e, now);
            }
            Stage::Relaying => {
                log::debug!("session {}: idle for {:?}", s.id, s.route.idle_timeout);
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
        if let Some(t) = s.timer.take() {
            self.timers.cancel(t, TimerKey::Session(key));
        }
        match reset {
            Some(Side::Client) => sockopt::reset_on_close(&s.client),
            Some(Side::Upstream) => {
                if let Some(u) = &s.upstream {
                    sockopt::reset_on_close(u);
                }
            }
            None => {}
        }
        if reason == CloseReason::Drained {
            // Cut mid-stream: neither side may mistake it for a complete transfer.
            sockopt::reset_on_close(&s.client);
            if let Some(u) = &s.upstream {
                sockopt::reset_on_close(u);
            }
        }
        s.release(&mut self.res);
        self.counters.add_closed(reason);
        self.counters
            .add_bytes(Direction::ClientToUpstream, s.c2u.spliced, s.c2u.copied);
        self.counters
            .add_bytes(Direction::UpstreamToClient, s.u2c.spliced, s.u2c.copied);
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
        log::debug!(
            "session {} closed ({reason}): route {} client {} upstream {} sent {}B ({}B spliced) received {}B ({}B spliced) in {:?}",
            s.id,
            s.route.name,
            s.client_addr,
            s.upstream
                .as_ref()
                .map_or_else(|| "-".to_owned(), |_| s.upstream_addr().to_string()),
            s.c2u.delivered(),
            s.c2u.spliced,
            s.u2c.delivered(),
            s.u2c.spliced,
            s.age(now)
        );
        self.closed.push(key);
    }

    fn free_closed(&mut self) {
        if self.closed.is_empty() {
            return;
        }
        for key in self.closed.drain(..) {
            // Dropping the session closes both sockets (which leaves the poll).
            self.sessions.try_remove(key);
        }
        if self.listeners.iter().any(|l| l.paused) {
            // A slot (and its fds) came free: paused listeners may take clients again.
            self.resume_paused(Instant::now());
        }
    }

    fn publish_pool_counts(&self) {
        let c = self.res.pipes.counts();
        WorkerCounters::set(&self.counters.pipes_created, c.created);
        WorkerCounters::set(&self.counters.pipes_refused, c.refused);
        WorkerCounters::set(&self.counters.copy_fallbacks, self.res.copy_fallbacks);
    }

    /// A warning at most once per `WARN_EVERY`, so a storm can't flood the log.
    fn warn(&mut self, msg: String) {
        let now = Instant::now();
        if self
            .last_warn
            .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
        {
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
