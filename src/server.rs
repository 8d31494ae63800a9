//! The control thread: starts the workers from a `Config`, then waits for
//! signals, worker exits and config file changes. SIGHUP (or a changed file
//! with `watch: true`) reloads. SIGTERM stops in steps a load balancer can
//! follow: `/readyz` says 503 at once, the listeners keep accepting for
//! `drain_grace`, then the workers serve whoever is queued and close their
//! listeners, and running sessions get `drain_timeout`. SIGINT (a terminal's
//! Ctrl-C) skips the grace; a second signal stops at once. DNS reports become
//! new route versions; the metric series of upstreams that left are
//! reclaimed here once they have been quiet long enough.
//!
//! Everything that may block (name resolution, binding, reading files and
//! /proc) happens here, never on a worker.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::admin::AdminContext;
use crate::config::{self, Config, Workers, units::fmt_size};
use crate::limits;
use crate::metrics::WorkerCounters;
use crate::metrics::{Registry, UpstreamKey, WorkerMetrics};
use crate::pipe;
use crate::reload::{self, FileWatch, HelloStates, ListenerUpdate, Running};
use crate::upstream::ResolveError;
use crate::upstream::checker::{Checker, Target};
use crate::upstream::discovery::{self, Resolved, Resolver, Watch};
use crate::worker::{self, Control, Shared, Worker, WorkerSettings, WorkerSetup};

/// Why the server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// An upstream host name did not resolve.
    #[error("route {route}: {source}")]
    Resolve {
        /// The route.
        route: String,
        /// The failure.
        #[source]
        source: ResolveError,
    },
    /// A listen address could not be bound.
    #[error("route {route}: cannot listen on {addr}: {source}{hint}")]
    Bind {
        /// The route.
        route: String,
        /// The address.
        addr: SocketAddr,
        /// What the kernel said.
        #[source]
        source: io::Error,
        /// Advice for the common causes.
        hint: &'static str,
    },
    /// Threads, polls, signals.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// A worker thread died.
    #[error("worker {0} failed: {1}")]
    Worker(usize, String),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ServerError {
    move |source| ServerError::Io { what, source }
}

/// Tokens of the control thread's poll.
const SIGNALS: Token = Token(0);
/// Woken by a worker exiting or the resolver reporting (one waker per poll).
const WAKE: Token = Token(1);
/// How often a watched config file is looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// How many workers `workers:` means on this machine.
pub fn worker_count(w: Workers) -> usize {
    match w {
        Workers::Count(n) => usize::from(n),
        Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

struct WorkerHandle {
    thread: Option<JoinHandle<()>>,
    tx: Sender<Control>,
    waker: Arc<Waker>,
    metrics: Arc<WorkerMetrics>,
}

impl WorkerHandle {
    fn send(&self, msg: Control) {
        // A worker that already exited has dropped its receiver: nothing to tell it.
        if self.tx.send(msg).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// A worker's last word to the control thread.
struct Exit {
    id: usize,
    outcome: Result<(), String>,
}

/// Starts the workers for `config` and serves until a signal ends it.
pub fn run(config: Config) -> Result<(), ServerError> {
    // Signal handlers first: a SIGTERM that arrives while we bind must drain, not kill.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(io_err("installing signal handlers"))?;
    let nofile = match limits::raise_nofile() {
        Ok(n) => {
            log::info!("file descriptor limit: {n}");
            n
        }
        Err(e) => {
            log::warn!("cannot raise the file descriptor limit: {e}");
            1024
        }
    };
    let workers = worker_count(config.workers);
    let settings = settings(&config);
    let registry = Arc::new(Registry::default());
    let mut hello = HelloStates::new();
    let plan = reload::plan(&Vec::new(), &config, workers, &registry, &mut hello)?;
    let shared = Arc::new(Shared::new(config.max_connections, pipe::PipeBudget::new(nofile, settings.pipe_size)));

    // The control thread sleeps until a signal arrives, a worker exits, DNS reports, or the watch interval passes.
    let poll = Poll::new().map_err(io_err("creating the control poll"))?;
    poll.registry().register(&mut signals, SIGNALS, Interest::READABLE).map_err(io_err("registering signals"))?;
    let exit_waker = Arc::new(Waker::new(poll.registry(), WAKE).map_err(io_err("creating a waker"))?);
    let (exit_tx, exits) = mpsc::channel::<Exit>();
    let (resolved_tx, resolved) = mpsc::channel::<Resolved>();
    let resolver =
        Resolver::start(resolved_tx, Arc::clone(&exit_waker)).map_err(io_err("starting the resolver thread"))?;
    let checker = Checker::start().map_err(io_err("starting the health-check thread"))?;

    let mut handles = Vec::with_capacity(workers);
    for (id, routes) in plan.per_worker.into_iter().enumerate() {
        let worker_poll = Poll::new().map_err(io_err("creating a poll"))?;
        let waker = Arc::new(Waker::new(worker_poll.registry(), worker::WAKER).map_err(io_err("creating a waker"))?);
        let (tx, rx) = mpsc::channel();
        let metrics = Arc::new(WorkerMetrics::default());
        let setup = WorkerSetup {
            id,
            workers,
            poll: worker_poll,
            routes,
            control: rx,
            shared: Arc::clone(&shared),
            metrics: Arc::clone(&metrics),
            settings,
            cpu: config.cpu_affinity.then_some(id),
        };
        let (exit_tx, exit_waker) = (exit_tx.clone(), Arc::clone(&exit_waker));
        let thread = std::thread::Builder::new()
            .name(format!("sluice-w{id}"))
            .spawn(move || {
                // Report how the worker ended, even if it panicked (debug builds unwind).
                let run = std::panic::AssertUnwindSafe(|| Worker::new(setup).and_then(Worker::run));
                let outcome = match std::panic::catch_unwind(run) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("panicked".to_owned()),
                };
                let _ = exit_tx.send(Exit { id, outcome });
                let _ = exit_waker.wake();
            })
            .map_err(io_err("starting a worker thread"))?;
        handles.push(WorkerHandle { thread: Some(thread), tx, waker, metrics });
    }
    log::info!(
        "sluice {} running: {workers} worker(s), relay {}, pipe size {}, max {} connections{}",
        env!("CARGO_PKG_VERSION"),
        config.relay,
        fmt_size(settings.pipe_size as u64),
        config.max_connections,
        if config.watch { ", watching the config file" } else { "" }
    );
    let admin = AdminContext {
        workers: handles.iter().map(|h| Arc::clone(&h.metrics)).collect(),
        registry: Arc::clone(&registry),
        shared: Arc::clone(&shared),
        proc_root: "/proc".into(),
    };
    let snapshots = admin.clone_for_summary();
    if let Some(a) = &config.admin {
        let bound = crate::admin::start(a.listen, admin).map_err(|source| ServerError::Bind {
            route: "admin".to_owned(),
            addr: a.listen,
            hint: "",
            source,
        })?;
        log::info!("admin port listening on {bound}: /metrics /stats /healthz /readyz");
    }
    shared.ready.store(true, Ordering::Relaxed);
    let watch = config.source.as_deref().filter(|_| config.watch).map(|p| FileWatch::new(p, config.source_digest));
    let mut control = ControlThread {
        config,
        running: plan.running,
        hello,
        handles,
        shared,
        registry,
        watch,
        draining: false,
        grace_until: None,
        failure: None,
        checker,
        resolver,
        resolved,
        reclaim_at: None,
    };
    control.publish_pools();
    let result = control.run(poll, &mut signals, &exits);
    let per_worker: Vec<String> =
        control.handles.iter().map(|h| WorkerCounters::get(&h.metrics.counters.accepted).to_string()).collect();
    log::info!("stopped: {}; accepted per worker: [{}]", snapshots.snapshot().summary(), per_worker.join(", "));
    result
}

/// What workers need to know of the global settings (re-sent on reload).
fn settings(config: &Config) -> WorkerSettings {
    WorkerSettings {
        relay: config.relay,
        pipe_size: effective_pipe_size(config.pipe_size),
        max_pooled_pipes: config.max_pooled_pipes,
        access_log: config.log.access.then_some(config.log.format),
        access_flush: config.log.flush_interval,
    }
}

struct ControlThread {
    config: Config,
    running: Running,
    /// Per address routed by name, its clients still sending a ClientHello.
    hello: HelloStates,
    handles: Vec<WorkerHandle>,
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    watch: Option<FileWatch>,
    /// A stop signal arrived: no reloads from then on.
    draining: bool,
    /// The listeners stop accepting at this time (the end of `drain_grace`).
    grace_until: Option<Instant>,
    failure: Option<ServerError>,
    checker: Checker,
    resolver: Resolver,
    resolved: Receiver<Resolved>,
    /// When an upstream's metric series may next be reclaimed.
    reclaim_at: Option<Instant>,
}

impl ControlThread {
    /// Waits for signals, file changes and the workers; returns when every worker has exited.
    fn run(&mut self, mut poll: Poll, signals: &mut Signals, exits: &Receiver<Exit>) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(8);
        loop {
            let watch = self.watch.as_ref().map(|_| WATCH_EVERY);
            let reclaim = self.reclaim_at.map(|t| t.saturating_duration_since(Instant::now()));
            let mut timeout = [watch, reclaim].into_iter().flatten().min().filter(|_| !self.draining);
            if let Some(t) = self.grace_until {
                timeout = Some(t.saturating_duration_since(Instant::now()));
            }
            match poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(ServerError::Io { what: "waiting for signals", source: e });
                }
            }
            while let Ok(r) = self.resolved.try_recv() {
                self.on_resolved(r);
            }
            if events.iter().any(|e| e.token() == SIGNALS) {
                for signal in signals.pending() {
                    self.on_signal(signal);
                }
            }
            if self.grace_until.is_some_and(|t| Instant::now() >= t) {
                self.stop_accepting();
            }
            if !self.draining && self.watch.as_mut().is_some_and(FileWatch::changed) {
                log::info!("{} changed: reloading", self.config.origin());
                self.reload();
            }
            while let Ok(exit) = exits.try_recv() {
                self.on_exit(exit);
            }
            if !self.draining {
                self.reclaim(Instant::now());
            }
            if self.handles.iter().all(|h| h.thread.is_none()) {
                return self.failure.take().map_or(Ok(()), Err);
            }
        }
    }

    fn on_signal(&mut self, signal: i32) {
        match signal {
            SIGHUP if self.draining => log::info!("SIGHUP during the drain: ignored"),
            SIGHUP => {
                log::info!("SIGHUP received: reloading {}", self.config.origin());
                self.reload();
            }
            _ if self.draining => {
                log::info!("second stop signal: closing every session now");
                self.handles.iter().for_each(|h| h.send(Control::Stop));
            }
            SIGINT => {
                log::info!(
                    "SIGINT received: no new connections; running sessions get up to {:?} to finish",
                    self.config.drain_timeout
                );
                self.drain(Duration::ZERO);
            }
            _ => {
                let grace = self.config.drain_grace;
                log::info!(
                    "SIGTERM received: /readyz says 503; accepting for {:?} more (drain_grace), then running \
                     sessions get up to {:?} to finish",
                    grace,
                    self.config.drain_timeout
                );
                self.drain(grace);
            }
        }
    }

    /// Starts the shutdown: `/readyz` says 503 now; the listeners stop
    /// accepting after `grace`.
    fn drain(&mut self, grace: Duration) {
        self.draining = true;
        self.shared.draining.store(true, Ordering::Relaxed);
        self.grace_until = Some(Instant::now() + grace);
        if grace.is_zero() {
            self.stop_accepting();
        }
    }

    /// The grace is over: the workers serve what is queued, close their
    /// listeners, and give running sessions `drain_timeout`.
    fn stop_accepting(&mut self) {
        if self.grace_until.take().is_none() {
            return;
        }
        log::info!("no new connections from now on; running sessions get up to {:?}", self.config.drain_timeout);
        let deadline = Instant::now() + self.config.drain_timeout;
        self.handles.iter().for_each(|h| h.send(Control::Drain { deadline }));
    }

    fn on_exit(&mut self, Exit { id, outcome }: Exit) {
        if let Some(t) = self.handles[id].thread.take() {
            // It has sent its last word: the join is immediate.
            let _ = t.join();
        }
        let why = match outcome {
            Ok(()) if self.draining => return,
            Ok(()) => "exited unexpectedly".to_owned(),
            Err(e) => e,
        };
        log::error!("worker {id} {why}; shutting down");
        self.failure.get_or_insert(ServerError::Worker(id, why));
        if !self.draining {
            self.drain(Duration::ZERO);
        }
    }

    /// Loads the config file again and, if it is good, hands the workers
    /// their new routes. A bad file changes nothing.
    fn reload(&mut self) {
        let Some(path) = self.config.source.clone() else {
            log::warn!("reload asked, but sluice runs from the command line, not a file: nothing to reload");
            return;
        };
        match self.try_reload(&path) {
            Ok(summary) => {
                self.shared.reloads.ok.fetch_add(1, Ordering::Relaxed);
                log::info!("reloaded {}: {summary}", path.display());
            }
            Err(e) => {
                self.shared.reloads.failed.fetch_add(1, Ordering::Relaxed);
                log::error!("reload failed, the running configuration stays: {e}");
            }
        }
    }

    fn try_reload(&mut self, path: &std::path::Path) -> Result<String, String> {
        let loaded = config::load_file(path);
        if let (Some(w), Ok(c)) = (&mut self.watch, &loaded) {
            w.loaded(c.source_digest);
        }
        let mut new = loaded.map_err(|e| e.to_string())?;
        if new.workers != self.config.workers || new.cpu_affinity != self.config.cpu_affinity {
            log::warn!("workers and cpu_affinity only change with a restart; keeping the running ones");
            new.workers = self.config.workers;
            new.cpu_affinity = self.config.cpu_affinity;
        }
        let plan = reload::plan(&self.running, &new, self.handles.len(), &self.registry, &mut self.hello)
            .map_err(|e| e.to_string())?;
        let settings = settings(&new);
        self.shared.max_connections.store(new.max_connections, Ordering::Relaxed);
        self.shared.pipes.resize(settings.pipe_size);
        for (h, routes) in self.handles.iter().zip(plan.per_worker) {
            h.send(Control::Routes { routes, settings });
        }
        self.running = plan.running;
        self.publish_pools();
        if new.admin != self.config.admin {
            log::warn!("the admin port only changes with a restart; keeping the running one");
        }
        if new.watch != self.config.watch {
            self.watch = new.watch.then(|| FileWatch::new(path, new.source_digest));
        }
        self.config = new;
        Ok(plan.summary)
    }
}

impl ControlThread {
    /// Tells the health checker and the resolver what the running routes
    /// need, and the metrics registry which upstreams are current.
    fn publish_pools(&self) {
        let mut targets = Vec::new();
        let mut watches = Vec::new();
        let mut current: Vec<UpstreamKey> = Vec::new();
        for (_, r) in &self.running {
            current.extend(r.upstreams.upstreams.iter().map(|u| u.metric_id));
            let pool = r.pool();
            if let Some(check) = &pool.health_check {
                targets.extend(r.upstreams.upstreams.iter().map(|u| Target {
                    route: r.name.clone(),
                    addr: u.addr,
                    display: u.to_string(),
                    health: Arc::clone(&u.health),
                    check: check.clone(),
                    socket: Arc::clone(&r.socket),
                }));
            }
            if !pool.resolve_interval.is_zero() && discovery::has_names(&r.config.upstreams) {
                watches.push(Watch {
                    route: r.name.clone(),
                    specs: r.config.upstreams.clone(),
                    interval: pool.resolve_interval,
                    current: r.resolved.clone(),
                });
            }
        }
        self.checker.set_targets(targets);
        self.resolver.set_watches(watches);
        self.registry.set_current(&current);
    }

    /// Drops the metric series of upstreams that left their route and have
    /// been quiet for `metrics::registry::RETENTION`, in the registry and in
    /// every worker (each worker's stats locked once, briefly).
    fn reclaim(&mut self, now: Instant) {
        let done = self.registry.reclaim(now);
        if !done.freed.is_empty() {
            for h in &self.handles {
                let mut st = h.metrics.stats();
                done.freed.iter().for_each(|&key| st.forget(key));
            }
            log::debug!("metrics: dropped the series of {} upstream(s) that left with no sessions", done.freed.len());
        }
        self.reclaim_at = done.next;
    }

    /// A route's host names resolve to new addresses: new sessions get a
    /// new version of the route, running ones keep theirs.
    fn on_resolved(&mut self, r: Resolved) {
        if self.draining {
            return;
        }
        let Some(pos) =
            self.running.iter().position(|(_, route)| route.name == r.route && route.config.upstreams == r.specs)
        else {
            return; // a reload changed the route since the lookup
        };
        let old = &self.running[pos].1;
        if old.resolved == r.addrs {
            return;
        }
        let before: Vec<SocketAddr> = old.upstreams.upstreams.iter().map(|u| u.addr).collect();
        let route = Arc::new(old.with_addresses(r.addrs, &self.registry));
        let after: Vec<SocketAddr> = route.upstreams.upstreams.iter().map(|u| u.addr).collect();
        let added: Vec<String> = after.iter().filter(|a| !before.contains(a)).map(ToString::to_string).collect();
        let removed: Vec<String> = before.iter().filter(|a| !after.contains(a)).map(ToString::to_string).collect();
        log::info!(
            "route {}: DNS changed its upstreams: {} now (added [{}], removed [{}]); running sessions are kept",
            route.name,
            after.len(),
            added.join(", "),
            removed.join(", ")
        );
        self.running[pos].1 = route;
        let settings = settings(&self.config);
        let frontends = reload::frontends(&self.running, &mut self.hello);
        for h in &self.handles {
            let routes = frontends
                .iter()
                .map(|(key, frontend)| ListenerUpdate {
                    key: key.clone(),
                    frontend: Arc::clone(frontend),
                    listener: None,
                    changed: false,
                })
                .collect();
            h.send(Control::Routes { routes, settings });
        }
        self.publish_pools();
    }
}

/// The pipe size we can really have: `pipe_size` capped at `fs.pipe-max-size`
/// (going past it needs `CAP_SYS_RESOURCE`).
fn effective_pipe_size(wanted: usize) -> usize {
    match pipe::pipe_max_size() {
        Some(max) if wanted > max => {
            log::warn!(
                "pipe_size {} is above fs.pipe-max-size ({}): using {}",
                fmt_size(wanted as u64),
                fmt_size(max as u64),
                fmt_size(max as u64)
            );
            max
        }
        _ => wanted,
    }
}
