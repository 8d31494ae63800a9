//! One worker: a thread with its own mio `Poll`, its own `SO_REUSEPORT`
//! listener per listen address, its sessions, timers, pipes and counters.
//!
//! Shared-nothing: no lock is taken per event. The control thread talks to
//! a worker only through its channel and `Waker` (route updates, drain,
//! stop). Tokens say what an event is about (`token.rs`). Sessions that
//! close during an event batch are freed at the end of that batch, so a
//! queued event never reaches a new occupant of the same slot.
//!
//! This file runs the loop and hands events and timers on. `sessions.rs`
//! drives sessions (their events, timers and verdicts); `orders.rs` is
//! what the control thread says to a worker (its messages and settings),
//! `admit.rs` takes an accepted client up to its route (PROXY header,
//! access list, limits), `capture.rs` reads a capture address's original
//! destinations (and refuses loops), `hello.rs` routes by TLS ClientHello,
//! `listeners.rs` accepts (limits, fd exhaustion, route reloads),
//! `closing.rs` closes listeners without resetting anyone (the drain,
//! removed routes, surplus sockets), `connect.rs` opens upstream
//! connections, `close.rs` ends sessions (resets, the wait before a reset,
//! accounting, access lines) and reports the bytes of running ones;
//! `uring.rs` drives the io_uring of `relay: uring`, `kernel.rs` the
//! sockhash of `relay: sockmap` and its sessions' registrations.

mod admit;
mod capture;
mod close;
mod closing;
mod connect;
mod hello;
mod kernel;
mod listeners;
mod orders;
mod sessions;
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
use crate::session::{End, Readiness, Session};
use crate::sys::rlimit::FdReserve;
use crate::timer::Timers;
use listeners::Listener;
pub use orders::{ListenerUpdate, Order, Ping, WorkerSettings, WorkerSetup};
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
    runnable: Vec<(usize, u64)>,
    timers: Timers<TimerKey>,
    res: Resources,
    orders: Receiver<Order>,
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
        let WorkerSetup { id, workers, poll, routes, orders, shared, metrics, settings, cpu } = setup;
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
            runnable: Vec::new(),
            timers: Timers::new(Instant::now()),
            res: Resources::new(settings.pipe_size, settings.max_pooled_pipes, Arc::clone(&shared.pipes)),
            orders,
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
        w.ensure_sockmap();
        w.set_routes(routes, settings, Instant::now());
        Ok(w)
    }

    /// Runs the event loop until drained or stopped.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            self.turn_ring(now);
            let timeout = if self.runnable.is_empty()
                && !self.listeners.iter().any(|(_, l)| l.backlog)
                && self.ring_may_sleep()
            {
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
            let window_over = self.res.load.waited(before, now);
            // Completions first: a timer below must see what they brought.
            self.turn_ring(now);
            for ev in events.iter() {
                match token::target(ev.token()) {
                    Target::Waker => self.on_orders(now),
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
            if self.res.costs.changed() && (window_over || self.sessions.is_empty()) {
                self.publish_auto_costs();
            }
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
        self.publish_auto_costs();
        log::debug!("worker {} stopped", self.id);
        Ok(())
    }

    fn on_orders(&mut self, now: Instant) {
        loop {
            match self.orders.try_recv() {
                Ok(Order::Routes { routes, settings }) => self.set_routes(routes, settings, now),
                Ok(Order::Drain { deadline, handed_over }) => self.drain(deadline, &handed_over, now),
                Ok(Order::Export(tx)) => {
                    let _ = tx.send(self.export_listeners());
                }
                Ok(Order::Retire { key, socket }) => self.retire(key, socket, now),
                Ok(Order::Adopt { key, socket }) => self.adopt_extra(key, socket, now),
                Ok(Order::Ping(p)) => p.answer(self.id),
                Ok(Order::Stop) | Err(TryRecvError::Disconnected) => {
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

    /// `relay: auto`'s estimates, when they changed, once per busy-meter
    /// window (100 ms) or when the last session is gone (an idle worker may
    /// sleep for good): they take a division per class, too much for every
    /// loop turn.
    fn publish_auto_costs(&mut self) {
        self.res.costs.published();
        use crate::metrics::WorkerCounters;
        let counters = &self.metrics.counters;
        WorkerCounters::set(&counters.auto_explored, self.res.costs.explored);
        for (class, copy, splice) in self.res.costs.estimates() {
            WorkerCounters::set(&counters.auto_cost[class][0], copy.unwrap_or(0));
            WorkerCounters::set(&counters.auto_cost[class][1], splice.unwrap_or(0));
        }
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
        WorkerCounters::set(&counters.splice_refused, self.res.splice_refused);
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
