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
//! with socket activation), every step that can fail before any listener
//! listens and before a predecessor is told to stop accepting;
//! `control.rs` is the loop, stop sequence and reloads, `pools.rs` what
//! upstream pools and DNS need, `control_socket.rs` the control socket,
//! `successor.rs` the old process's side of a takeover.

mod control;
mod control_socket;
mod plan;
mod pools;
mod successor;
mod watch;
mod workers;

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use mio::{Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::admin::AdminContext;
use crate::config::{Config, Workers, units::fmt_size};
use crate::handoff::HandoffError;
use crate::limits;
use crate::listen::activation::{Activation, ActivationError};
use crate::listen::{Inherited, ListenError};
use crate::metrics::Registry;
use crate::metrics::WorkerCounters;
use crate::pipe;
use crate::upstream::checker::Checker;
use crate::upstream::discovery::{Resolved, Resolver};
use crate::worker::{Shared, WorkerSettings};
use control::{ControlParts, ControlThread};
use control_socket::ControlSocket;
use plan::HelloStates;
pub use plan::PlanError;
use watch::FileWatch;
use workers::{Exit, WorkerHandle, hand_out_surplus, start_worker};

/// Why the server could not start or stopped badly: each layer's own
/// error, or the control thread's.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The routes could not be planned (resolved, bound).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The admin port could not be bound.
    #[error(transparent)]
    Listen(#[from] ListenError),
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
    Handoff(#[from] HandoffError),
    /// The sockets systemd passed do not fit the configuration.
    #[error("{0}")]
    Activation(#[from] ActivationError),
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

/// How `run` starts.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Take the listeners over from the process on the config's `control_socket`.
    pub takeover: bool,
    /// Listening sockets from systemd (`listen::activation::from_env`, read
    /// in `main` before any thread starts). A takeover wins over them.
    pub activation: Activation,
}

/// Starts the workers for `config` and serves until a signal ends it (or a
/// successor takes over and the drain ends).
///
/// The order matters: once a socket listens in a `SO_REUSEPORT` group the
/// kernel queues clients on it, and a process that then gives up resets
/// them; once a predecessor is told `Ready` it stops accepting. So every
/// step that can fail (the control socket, the takeover, the admin port,
/// polls and threads) comes before `plan::plan` binds, and nothing after
/// `Ready` stops the service.
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
    // Another sluice answering on the control socket is refused here, and ours
    // listens at its temporary name (published once we serve).
    let control_socket = match &config.control_socket {
        Some(path) => Some(ControlSocket::bind(path, opts.takeover)?),
        None => None,
    };
    // A takeover: the running process's sockets (a bad config never got here; it still serves).
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
        _ => (None, Inherited::default()),
    };
    // Socket activation: systemd's sockets, unless a takeover brought the running process's.
    if let Some(from_systemd) = opts.activation.into_inherited(&config, workers, predecessor.is_some())? {
        inherited = from_systemd;
    }
    // The admin port: a running sluice holding it shows here, before we listen anywhere.
    let admin_listener = match &config.admin {
        Some(a) => Some(match inherited.take_admin(a.listen) {
            Some(l) => l,
            None => std::net::TcpListener::bind(a.listen).map_err(|source| {
                let in_use = source.kind() == io::ErrorKind::AddrInUse;
                let hint = if in_use { " (is another sluice running with this admin address?)" } else { "" };
                ServerError::Listen(ListenError::Bind { route: "admin".to_owned(), addr: a.listen, hint, source })
            })?,
        }),
        None => None,
    };
    let generation = inherited.generation + 1;
    let supervised = inherited.supervised();
    let registry = Arc::new(Registry::default());
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
    // The worker threads wait for their routes; if the plan fails they just end.
    let mut handles = Vec::with_capacity(workers);
    let mut routes_to = Vec::with_capacity(workers);
    for id in 0..workers {
        let (handle, routes) = start_worker(id, workers, &shared, settings, &config, &exit_tx, &exit_waker)?;
        handles.push(handle);
        routes_to.push(routes);
    }
    let admin_ctx = AdminContext {
        workers: handles.iter().map(|h| Arc::clone(&h.metrics)).collect(),
        registry: Arc::clone(&registry),
        shared: Arc::clone(&shared),
        proc_root: "/proc".into(),
    };
    let snapshots = admin_ctx.clone_for_summary();
    let admin = match admin_listener {
        Some(listener) => {
            let handle = crate::admin::start(listener, admin_ctx).map_err(io_err("starting the admin port"))?;
            log::info!("admin port listening on {}: /metrics /stats /healthz /readyz", handle.addr);
            Some(handle)
        }
        None => None,
    };

    // Binding and listening: from here clients queue on our sockets.
    let mut hello = HelloStates::new();
    let mut plan = plan::plan(&Vec::new(), &config, workers, &registry, &mut hello, &mut inherited)?;
    for (tx, routes) in routes_to.into_iter().zip(std::mem::take(&mut plan.per_worker)) {
        // A worker that is gone already reports its exit to the control loop.
        let _ = tx.send(routes);
    }
    hand_out_surplus(std::mem::take(&mut plan.retire), &handles, &shared);
    log::info!(
        "sluice {} running: generation {generation}, {workers} worker(s), relay {}, pipe size {}, max {} connections{}",
        env!("CARGO_PKG_VERSION"),
        settings.relay,
        fmt_size(settings.pipe_size as u64),
        config.max_connections,
        if config.watch { ", watching the config file" } else { "" }
    );
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
    // After Ready nothing may stop the service: a control socket that cannot be put in place is logged.
    let control_socket = control_socket.and_then(|c| c.publish(poll.registry()));
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
        waker: exit_waker,
    });
    control.publish_pools();
    let result = control.run(poll, &mut signals, &exits);
    let per_worker: Vec<String> =
        control.handles().iter().map(|h| WorkerCounters::get(&h.metrics.counters.accepted).to_string()).collect();
    log::info!("stopped: {}; accepted per worker: [{}]", snapshots.snapshot().summary(), per_worker.join(", "));
    result
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
