//! One worker: a thread with its own mio `Poll`, its own `SO_REUSEPORT`
//! listener per listen address, its sessions, timers, pipes and counters.
//!
//! Shared-nothing: no lock is taken per event. The control thread talks to
//! a worker only through its channel and `Waker` (route updates, drain,
//! stop). Tokens say what an event is about (`token.rs`). Sessions that
//! close during an event batch are freed at the end of that batch, so a
//! queued event never reaches a new occupant of the same slot.
//!
//! This file runs the loop, dispatches events and timers to sessions and
//! applies their verdicts. `control.rs` is what the control thread says to
//! a worker (its messages and settings), `admit.rs` takes an accepted client
//! up to its route (PROXY header, access list, limits), `hello.rs` routes
//! by TLS ClientHello, `listeners.rs` accepts (limits, fd exhaustion,
//! route reloads), `closing.rs` closes listeners without resetting anyone
//! (the drain, removed routes, surplus sockets), `connect.rs` opens upstream
//! connections, `close.rs` ends sessions (resets, the wait before a reset,
//! accounting, access lines) and reports the bytes of running ones;
//! `uring.rs` drives the io_uring of `relay: uring`.

mod admit;
mod close;
mod closing;
mod connect;
mod control;
mod hello;
mod listeners;
pub mod token;
mod uring;

use std::io;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use mio::{Events, Poll};
use slab::Slab;

use crate::metrics::WorkerMetrics;
use crate::process::ProcessState;
use crate::relay::Resources;
use crate::session::{Due, End, Readiness, Session, Side, Stage, Verdict};
use crate::sys::rlimit::FdReserve;
use crate::timer::Timers;
use crate::upstream;
pub use control::{Control, ListenerUpdate, WorkerSettings, WorkerSetup};
use listeners::Listener;
use token::Target;
pub use token::WAKER;

/// At most one "out of fds"/"no upstream" warning per this interval per worker.
const WARN_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Session(usize),
    Accept(usize),
    Drain,
    /// The drain's handshake wait is over: serve the queues, close the listeners.
    CloseListeners,
    /// A retiring listener's handshake wait is over: serve its queue, close it.
    CloseListener(usize),
    /// Report the bytes of running sessions (and their periodic access lines).
    Report,
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
    shared: Arc<ProcessState>,
    metrics: Arc<WorkerMetrics>,
    reserve: FdReserve,
    settings: WorkerSettings,
    /// Session ids: worker i of n hands out i+1, i+1+n, i+1+2n… (unique, and small in logs).
    next_id: u64,
    id_stride: u64,
    draining: bool,
    stop: bool,
    /// The report timer is armed.
    reporting: bool,
    last_warn: Option<Instant>,
    fired: Vec<TimerKey>,
    /// Where ClientHellos are peeked into (`tls::hello::MAX_WIRE`, made on first use).
    hello_buf: Vec<u8>,
}

impl Worker {
    /// Pins the thread if asked, registers the listeners, gets ready to run.
    pub fn new(setup: WorkerSetup) -> io::Result<Worker> {
        let WorkerSetup { id, workers, poll, routes, control, shared, metrics, settings, cpu } = setup;
        if let Some(i) = cpu {
            match crate::sys::affinity::pin_worker(i) {
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
            reporting: false,
            last_warn: None,
            fired: Vec::new(),
            hello_buf: Vec::new(),
        };
        w.ensure_ring();
        w.set_routes(routes, settings, Instant::now());
        Ok(w)
    }

    /// Runs the event loop until drained or stopped.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            self.turn_ring(now);
            let timeout =
                if self.ready.is_empty() && !self.listeners.iter().any(|(_, l)| l.backlog) && self.ring_may_sleep() {
                    self.timers.next_timeout(now)
                } else {
                    Some(Duration::ZERO)
                };
            let polled = self.poll.poll(&mut events, timeout);
            self.ring_awake();
            if let Err(e) = polled {
                if e.kind() == io::ErrorKind::Interrupted {
                    // A completion's task work interrupts the wait: reap it.
                    continue;
                }
                return Err(e);
            }
            let before = now;
            let now = Instant::now();
            self.res.load.waited(before, now);
            // Completions first: a timer below must see what they brought.
            self.turn_ring(now);
            for ev in events.iter() {
                match token::target(ev.token()) {
                    Target::Waker => self.on_control(now),
                    Target::Ring => {} // reaped above
                    Target::Listener(li) => self.accept(li, now),
                    Target::Session { key, side, generation } => {
                        let ready = Readiness {
                            readable: ev.is_readable(),
                            writable: ev.is_writable() || ev.is_write_closed() || ev.is_error(),
                            hup: ev.is_read_closed() || ev.is_error(),
                        };
                        self.on_session_event(key, side, generation, ready, now);
                    }
                }
            }
            self.run_ready(now);
            self.fire_timers(now);
            self.free_closed();
            self.publish_pool_counts();
            if self.stop || (self.draining && self.sessions.is_empty() && self.listeners.is_empty()) {
                break;
            }
        }
        let cut: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in cut {
            self.close(key, End::DRAINED, Instant::now());
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
                Ok(Control::Drain { deadline, handed_over }) => self.drain(deadline, &handed_over, now),
                Ok(Control::Export(tx)) => {
                    let _ = tx.send(self.export_listeners());
                }
                Ok(Control::Retire { key, socket }) => self.retire(key, socket, now),
                Ok(Control::Adopt { key, socket }) => self.adopt_extra(key, socket, now),
                Ok(Control::Stop) | Err(TryRecvError::Disconnected) => {
                    self.stop = true;
                    return;
                }
                Err(TryRecvError::Empty) => return,
            }
        }
    }

    /// Stops accepting — new handshakes go unanswered, those under way get
    /// `HANDSHAKE_WAIT` to complete, then whoever is queued is served and the
    /// listeners close (those a successor took close at once: it serves their
    /// queues) — and gives running sessions until `deadline` (closing quiet
    /// ones early on routes that set `drain_close_idle_after`).
    fn drain(&mut self, deadline: Instant, handed_over: &[crate::listen::ListenKey], now: Instant) {
        if self.draining {
            return;
        }
        if self.stop_new_handshakes(handed_over, now) {
            self.timers.schedule(now + closing::HANDSHAKE_WAIT, TimerKey::CloseListeners);
        }
        self.draining = true;
        self.timers.schedule(deadline, TimerKey::Drain);
        log::debug!("worker {} draining {} sessions", self.id, self.sessions.len());
        // On routes with `drain_close_idle_after`, quiet sessions get a sooner deadline now (see `Relay::due`).
        let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.rearm_if_sooner(key);
        }
    }

    // --------------------------------------------------------------- sessions

    fn on_session_event(&mut self, key: usize, side: Side, generation: u32, ready: Readiness, now: Instant) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if !s.on_event(side, generation, ready) {
            return; // an event of an upstream socket this session no longer has
        }
        match (s.stage(), side) {
            (Stage::Header { .. }, Side::Client) if ready.readable || ready.hup => self.on_header(key, now),
            (Stage::Hello(_), Side::Client) if ready.readable || ready.hup => self.on_hello(key, now),
            (Stage::Connecting(_), Side::Upstream) => {
                let verdict = s.check_connect(ready);
                self.apply(key, verdict, now);
            }
            // A relay on the io_uring hears from its completions, not from readiness.
            (Stage::Relaying(r), _) if !r.is_uring() => self.relay(key, now),
            _ => {}
        }
    }

    fn relay(&mut self, key: usize, now: Instant) {
        let s = &mut self.sessions[key];
        let verdict = s.relay_step(&mut self.res, now);
        self.apply(key, verdict, now);
    }

    fn apply(&mut self, key: usize, verdict: Verdict, now: Instant) {
        match verdict {
            Verdict::Continue { more } => {
                let s = &mut self.sessions[key];
                if more && s.queue() {
                    self.ready.push((key, s.id()));
                }
                // A side just finished: the half-close timeout may be sooner.
                self.rearm_if_sooner(key);
            }
            Verdict::Connected { reset_already } => {
                let s = &mut self.sessions[key];
                s.connected(reset_already, key, now);
                log::trace!("session {}: connected to {}", s.id(), s.upstream_addr());
                if s.release_probe() && s.upstream().health.succeeded(upstream::health::now_ms()) {
                    log::warn!(
                        "route {}: upstream {} is back: its half-open try connected",
                        s.route().name,
                        s.upstream()
                    );
                }
                let (deadline, _) = s.due(self.draining);
                self.arm(key, deadline);
                self.ensure_reporting(now);
                // The client may have sent bytes while we were connecting.
                self.relay(key, now);
            }
            Verdict::ConnectFailed(e) => {
                let s = &mut self.sessions[key];
                if matches!(s.stage(), Stage::Relaying(_)) {
                    s.unconnect(&mut self.res);
                } else {
                    s.drop_attempt();
                }
                self.connect_failed(key, &e, now);
            }
            Verdict::End(end) => self.end(key, end, now),
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
            if s.id() != id {
                continue;
            }
            // Cleared whatever the stage: a session back to connecting must be queued again later.
            s.unqueue();
            if matches!(s.stage(), Stage::Relaying(_)) {
                self.relay(key, now);
            }
        }
    }

    fn arm(&mut self, key: usize, at: Instant) {
        if let Some(old) = self.sessions[key].take_timer() {
            self.timers.cancel(old, TimerKey::Session(key));
        }
        let deadline = self.timers.schedule(at, TimerKey::Session(key));
        self.sessions[key].set_timer(deadline, at);
    }

    /// Re-arms a session's timer if its deadline moved earlier (half-close,
    /// drain); later deadlines are picked up lazily when the timer fires.
    fn rearm_if_sooner(&mut self, key: usize) {
        let Some(s) = self.sessions.get(key) else {
            return;
        };
        if matches!(s.stage(), Stage::Closed) {
            return;
        }
        let (due, _) = s.due(self.draining);
        if s.timer_at().is_none_or(|at| due < at) {
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
                TimerKey::Report => self.report(now),
                TimerKey::CloseListeners => self.stop_accepting(now),
                TimerKey::CloseListener(li) => self.close_retired(li, now),
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
        s.take_timer();
        let (deadline, due) = s.due(self.draining);
        if now < deadline {
            // Bytes moved since the timer was armed: sleep until the new deadline.
            self.arm(key, deadline);
            return;
        }
        match due {
            Due::Linger => return self.check_linger(key, now),
            Due::Connect => {
                let e = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", s.route().connect_timeout),
                );
                s.drop_attempt();
                return self.connect_failed(key, &e, now);
            }
            Due::Hello => {
                let why = format!("no complete ClientHello within {:?}", s.route().config.client_hello_timeout);
                return self.refuse_hello(key, crate::metrics::CloseReason::ClientHelloTimeout, &why, now);
            }
            Due::Header => {
                log::debug!(
                    "route {}: client {}: no complete PROXY header within {:?}",
                    s.route().name,
                    s.peer_addr(),
                    s.route().pool().proxy_protocol_timeout
                );
                crate::metrics::WorkerCounters::inc(&self.metrics.counters.bad_proxy_header);
            }
            Due::Idle | Due::HalfClose | Due::DrainIdle => {}
        }
        match s.on_timeout(due) {
            Some(end) => {
                let idle = s.relay().map(|r| now.saturating_duration_since(r.last_active()));
                log::debug!("session {}: {} after {idle:?} without a byte", s.id(), end.reason);
                self.end(key, end, now);
            }
            // Bytes still in flight while draining: not idle, only slow. Look again later.
            None => {
                let again = s.route().config.drain_close_idle_after.unwrap_or(Duration::from_secs(1));
                self.arm(key, now + again)
            }
        }
    }

    fn free_closed(&mut self) {
        if self.closed.is_empty() {
            return;
        }
        for key in self.closed.drain(..) {
            // Dropping the session closes its client socket (which leaves the poll).
            self.sessions.try_remove(key);
        }
        // Slots (and fds) came free: paused listeners may take clients again.
        self.resume_all(Instant::now());
    }

    fn publish_pool_counts(&self) {
        use crate::metrics::WorkerCounters;
        let c = self.res.pipes.counts();
        let counters = &self.metrics.counters;
        WorkerCounters::set(&counters.pipes_created, c.created);
        WorkerCounters::set(&counters.pipes_lent, c.lent);
        WorkerCounters::set(&counters.pipes_refused, c.refused);
        WorkerCounters::set(&counters.pipes_grown, c.grown);
        WorkerCounters::set(&counters.pipes_in_use, c.in_use);
        WorkerCounters::set(&counters.pipes_pooled, c.pooled);
        WorkerCounters::set(&counters.copy_fallbacks, self.res.copy_fallbacks);
        WorkerCounters::set(&counters.busy_ms, self.res.load.busy.as_millis() as u64);
        if let Some(r) = self.res.ring.as_ref() {
            let u = r.counts();
            WorkerCounters::set(&counters.uring_buffers, u.buffers as u64);
            WorkerCounters::set(&counters.uring_lent, u.lent as u64);
            WorkerCounters::set(&counters.uring_starved, u.starved);
        }
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
