//! The control thread: starts the workers from a `Config`, then waits for
//! signals, worker exits and config file changes. SIGHUP (or a changed file
//! with `watch: true`) reloads. SIGTERM stops in steps a load balancer can
//! follow: `/readyz` says 503 at once, the listeners keep accepting for
//! `drain_grace`, then the workers stop answering new handshakes, serve
//! whoever is queued and close their listeners, and running sessions get
//! `drain_timeout`. SIGINT (a terminal's
//! Ctrl-C) skips the grace; a second signal stops at once. DNS reports become
//! new route versions; the metric series of upstreams that left are
//! reclaimed here once they have been quiet long enough.
//!
//! Everything that may block (name resolution, binding, reading files and
//! /proc) happens here, never on a worker. This file starts everything
//! (taking a predecessor's listeners first with `--takeover`, or systemd's
//! with socket activation);
//! `control.rs` is the loop, stop sequence and reloads, `pools.rs` what
//! upstream pools and DNS need, `successor.rs` the control socket and the
//! old process's side of a takeover.

mod control;
mod pools;
mod successor;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::admin::AdminContext;
use crate::config::{Config, Workers, units::fmt_size};
use crate::limits;
use crate::metrics::WorkerCounters;
use crate::metrics::{Registry, WorkerMetrics};
use crate::pipe;
use crate::reload::{self, FileWatch, HelloStates, ListenerUpdate};
use crate::upstream::ResolveError;
use crate::upstream::checker::Checker;
use crate::upstream::discovery::{Resolved, Resolver};
use crate::worker::{self, Control, Shared, Worker, WorkerSettings, WorkerSetup};
use control::{ControlParts, ControlThread};
use successor::ControlSocket;

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
    /// Taking the listeners over from a running sluice failed (it still serves).
    #[error("{0}")]
    Handoff(#[from] crate::handoff::HandoffError),
    /// The sockets systemd passed do not fit the configuration.
    #[error("{0}")]
    Activation(#[from] crate::handoff::activation::ActivationError),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ServerError {
    move |source| ServerError::Io { what, source }
}

/// Tokens of the control thread's poll.
const SIGNALS: Token = Token(0);
/// Woken by a worker exiting or the resolver reporting (one waker per poll).
const WAKE: Token = Token(1);
/// A successor knocks on the control socket.
const CONTROL: Token = Token(2);
/// How often a watched config file is looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// How many workers `workers:` means on this machine.
pub fn worker_count(w: Workers) -> usize {
    match w {
        Workers::Count(n) => usize::from(n),
        Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// A worker as the control thread holds it.
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

/// How `run` starts.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Take the listeners over from the process on the config's `control_socket`.
    pub takeover: bool,
    /// Listening sockets from systemd (`handoff::activation::from_env`, read
    /// in `main` before any thread starts). A takeover wins over them.
    pub activation: crate::handoff::activation::Activation,
}

/// Starts the workers for `config` and serves until a signal ends it (or a
/// successor takes over and the drain ends).
pub fn run(config: Config, opts: RunOptions) -> Result<(), ServerError> {
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
    // A takeover: the running process's sockets first (a bad config never got here).
    let (predecessor, mut inherited) = match (opts.takeover, &config.control_socket) {
        (true, Some(path)) => {
            let (peer, inherited) = crate::handoff::take_over(path)?;
            log::info!(
                "took {} listening socket(s) over from pid {} (generation {}) on {}",
                inherited.len(),
                inherited.from.unwrap_or(0),
                inherited.generation,
                path.display()
            );
            (Some(peer), inherited)
        }
        _ => (None, crate::handoff::Inherited::default()),
    };
    // Socket activation: systemd's sockets, unless a takeover brought the running process's.
    if let Some(from_systemd) = opts.activation.into_inherited(&config, workers, predecessor.is_some())? {
        inherited = from_systemd;
    }
    let generation = inherited.generation + 1;
    let supervised = inherited.supervised();
    let registry = Arc::new(Registry::default());
    let mut hello = HelloStates::new();
    let mut plan = reload::plan(&Vec::new(), &config, workers, &registry, &mut hello, &mut inherited)?;
    let shared = Arc::new(
        Shared::new(config.max_connections, pipe::PipeBudget::new(nofile, settings.pipe_size))
            .with_supervised(supervised),
    );
    shared.generation.store(generation, Ordering::Relaxed);

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
    for (id, routes) in std::mem::take(&mut plan.per_worker).into_iter().enumerate() {
        handles.push(start_worker(id, workers, routes, &shared, settings, &config, &exit_tx, &exit_waker)?);
    }
    // Surplus sockets of a predecessor with more workers: emptied and closed
    // where the kernel hands what arrives meanwhile to the other sockets of the
    // group (`tcp_migrate_req`); else served for good, since closing one
    // resets the clients whose handshake is in flight to it.
    let surplus = std::mem::take(&mut plan.retire);
    if !surplus.is_empty() {
        let migrate = crate::sysctl::read::<u32>("net/ipv4/tcp_migrate_req") == Some(1);
        if migrate {
            log::info!(
                "closing {} surplus listening socket(s) once emptied (net.ipv4.tcp_migrate_req = 1)",
                surplus.len()
            );
        } else {
            log::info!(
                "keeping {} surplus listening socket(s) of the predecessor's extra workers open, served by this \
                 process's workers: closing them would reset clients whose handshake is in flight \
                 (sysctl -w net.ipv4.tcp_migrate_req=1 lets the kernel move those, and sluice closes surplus sockets)",
                surplus.len()
            );
        }
        for (i, (key, socket)) in surplus.into_iter().enumerate() {
            // A socket systemd holds too lives on after our close, its queue
            // served by no one: it is served for good.
            let retire = migrate && !shared.is_supervised(&socket);
            let msg = if retire { Control::Retire { key, socket } } else { Control::Adopt { key, socket } };
            handles[i % handles.len()].send(msg);
        }
    }
    log::info!(
        "sluice {} running: generation {generation}, {workers} worker(s), relay {}, pipe size {}, max {} connections{}",
        env!("CARGO_PKG_VERSION"),
        settings.relay,
        fmt_size(settings.pipe_size as u64),
        config.max_connections,
        if config.watch { ", watching the config file" } else { "" }
    );
    let admin_ctx = AdminContext {
        workers: handles.iter().map(|h| Arc::clone(&h.metrics)).collect(),
        registry: Arc::clone(&registry),
        shared: Arc::clone(&shared),
        proc_root: "/proc".into(),
    };
    let snapshots = admin_ctx.clone_for_summary();
    let admin = match &config.admin {
        Some(a) => {
            let bind_err = |source| ServerError::Bind { route: "admin".to_owned(), addr: a.listen, hint: "", source };
            let listener = match inherited.take_admin(a.listen) {
                Some(l) => l,
                None => std::net::TcpListener::bind(a.listen).map_err(bind_err)?,
            };
            let handle = crate::admin::start(listener, admin_ctx).map_err(io_err("starting the admin port"))?;
            log::info!("admin port listening on {}: /metrics /stats /healthz /readyz", handle.addr);
            Some(handle)
        }
        None => None,
    };
    // What the plan did not take (an address the new config dropped) the predecessor drains itself.
    drop(inherited);
    shared.overload.configure(config.overload.as_ref(), nofile, crate::overload::open_fds());
    shared.ready.store(true, Ordering::Relaxed);
    if let Some(peer) = predecessor {
        match crate::handoff::ready(&peer, std::mem::take(&mut plan.taken)) {
            Ok(()) => log::info!("the predecessor stopped accepting and drains its sessions"),
            Err(e) => log::warn!("the predecessor did not confirm it stopped accepting ({e}); serving anyway"),
        }
    }
    let control_socket = match &config.control_socket {
        Some(path) => Some(ControlSocket::open(path, opts.takeover, poll.registry())?),
        None => None,
    };
    let watch = config.source.as_deref().filter(|_| config.watch).map(|p| FileWatch::new(p, config.source_digest));
    let mut control = ControlThread::new(ControlParts {
        config,
        running: plan.running,
        hello,
        handles,
        shared,
        registry,
        watch,
        checker,
        resolver,
        resolved,
        admin,
        control_socket,
    });
    control.publish_pools();
    let result = control.run(poll, &mut signals, &exits);
    let per_worker: Vec<String> =
        control.handles().iter().map(|h| WorkerCounters::get(&h.metrics.counters.accepted).to_string()).collect();
    log::info!("stopped: {}; accepted per worker: [{}]", snapshots.snapshot().summary(), per_worker.join(", "));
    result
}

/// Starts worker thread `id` of `workers` on `routes`.
#[allow(clippy::too_many_arguments)]
fn start_worker(
    id: usize,
    workers: usize,
    routes: Vec<ListenerUpdate>,
    shared: &Arc<Shared>,
    settings: WorkerSettings,
    config: &Config,
    exit_tx: &Sender<Exit>,
    exit_waker: &Arc<Waker>,
) -> Result<WorkerHandle, ServerError> {
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
        shared: Arc::clone(shared),
        metrics: Arc::clone(&metrics),
        settings,
        cpu: config.cpu_affinity.then_some(id),
    };
    let (exit_tx, exit_waker) = (exit_tx.clone(), Arc::clone(exit_waker));
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
    Ok(WorkerHandle { thread: Some(thread), tx, waker, metrics })
}

/// What workers need to know of the global settings (re-sent on reload).
fn settings(config: &Config) -> WorkerSettings {
    WorkerSettings {
        relay: relay_mode(config.relay),
        pipe_size: effective_pipe_size(config.pipe_size),
        max_pooled_pipes: config.max_pooled_pipes,
        access_log: config.log.access.then_some(config.log.format),
        access_flush: config.log.flush_interval,
    }
}

/// The relay mode we can really have: `uring` only where io_uring can be
/// set up, else `auto`, said once per process (a reload asking again says
/// nothing new).
fn relay_mode(wanted: crate::config::RelayMode) -> crate::config::RelayMode {
    use crate::config::RelayMode;
    use std::sync::atomic::AtomicBool;
    static SAID: AtomicBool = AtomicBool::new(false);
    if wanted != RelayMode::Uring {
        return wanted;
    }
    match crate::relay::ring::probe() {
        Ok(()) => wanted,
        Err(why) => {
            if !SAID.swap(true, Ordering::Relaxed) {
                log::warn!("relay: uring is not available here: {why}; relaying with relay: auto instead");
            }
            RelayMode::Auto
        }
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
